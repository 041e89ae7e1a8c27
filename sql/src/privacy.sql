-- Personal data (shared/contract/privacy.md, docs/privacy.md): erasing a candidate from the
-- stored events. Retention (ae_events.payload_retention) is in prune() (analytics.sql).
--
-- The outbox is append-only except here and in retention: erase_candidate rewrites the payloads
-- of a candidate's events in place (same row, ids, keys, versions, txid), so cursors, delivery
-- order and delivery records are untouched and a pending delivery is sent with the erased payload
-- under the same webhook-id.

-- A payload's candidate, as the payload names it: candidate_id, else candidate.id (a payload rule
-- may have removed or nulled either; 'sha256' leaves the hex hash of the id's text), and the
-- event's id, for batches in id order. Events of other aggregates have NULL. Costs writers one
-- small btree entry per event (docs/privacy.md has the figure). The expression is written out
-- the same in every query that must use this index.
CREATE INDEX outbox_candidate_idx ON ae_events.outbox
    ((coalesce(NULLIF(payload OPERATOR(pg_catalog.->) 'candidate_id', 'null'::jsonb),
               NULLIF(payload OPERATOR(pg_catalog.#>) '{candidate,id}', 'null'::jsonb))),
     id);

-- One row per erase_candidate call: when, by which role, which candidate, how many events were
-- rewritten. Readable by the DBA only (the candidate id is personal data's key). Dumped with the
-- database: it is the evidence that a request was answered, and later error texts are masked by it.
CREATE TABLE ae_events.erasures (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    erased_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    erased_by name NOT NULL,
    candidate_id bigint NOT NULL,
    events bigint NOT NULL
);

COMMENT ON TABLE ae_events.erasures IS
    'ae_events: erasures of candidates from the stored events (erase_candidate): when, by whom, which candidate, how many events';

CREATE INDEX erasures_candidate_idx ON ae_events.erasures (candidate_id);

SELECT pg_catalog.pg_extension_config_dump('ae_events.erasures', '');
SELECT pg_catalog.pg_extension_config_dump('ae_events.erasures_id_seq', '');

-- The values a payload may name a candidate by: its id, and the hex SHA-256 of the id's text (a
-- 'sha256' payload rule on candidate_id or candidate.id).
CREATE FUNCTION ae_events._candidate_keys(candidate_id bigint) RETURNS jsonb[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT ARRAY[pg_catalog.to_jsonb(candidate_id),
                 pg_catalog.to_jsonb(pg_catalog.encode(
                     pg_catalog.sha256(pg_catalog.convert_to(candidate_id::text, 'UTF8')), 'hex'))]
$$;

-- The payload with every field of candidate except id set to null (fields a rule removed stay
-- absent; a hashed one becomes null too). A payload without a candidate object is returned as it
-- is.
CREATE FUNCTION ae_events._erased_payload(payload jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE
        WHEN pg_catalog.jsonb_typeof(payload OPERATOR(pg_catalog.->) 'candidate') OPERATOR(pg_catalog.=) 'object'
             AND EXISTS (SELECT FROM pg_catalog.jsonb_each(payload OPERATOR(pg_catalog.->) 'candidate') AS c
                          WHERE c.key OPERATOR(pg_catalog.<>) 'id'
                            AND c.value OPERATOR(pg_catalog.<>) 'null'::jsonb)
        THEN payload OPERATOR(pg_catalog.||) pg_catalog.jsonb_build_object('candidate',
                 (SELECT pg_catalog.jsonb_object_agg(c.key,
                             CASE WHEN c.key OPERATOR(pg_catalog.=) 'id' THEN c.value ELSE 'null'::jsonb END)
                    FROM pg_catalog.jsonb_each(payload OPERATOR(pg_catalog.->) 'candidate') AS c))
        ELSE payload
    END
$$;

-- Erase these events: rewrite their payloads, and replace the error texts of their delivery
-- records by '[erased]' (a receiver may echo the payload in its answer, in any encoding: JSON
-- escapes, URL encoding, cut at 2000 characters; searching for the values could miss one, so
-- every error text of an erased event goes). Returns how many payloads changed.
CREATE FUNCTION ae_events._erase_events(ids bigint[]) RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    rewritten bigint;
BEGIN
    UPDATE ae_events.outbox AS o
       SET payload = ae_events._erased_payload(o.payload)
     WHERE o.id OPERATOR(pg_catalog.=) ANY (ids)
       AND ae_events._erased_payload(o.payload) OPERATOR(pg_catalog.<>) o.payload;
    GET DIAGNOSTICS rewritten = ROW_COUNT;
    -- Through each endpoint's primary key (endpoint, outbox_id), as prune() does.
    UPDATE ae_events.deliveries AS d
       SET last_error = '[erased]'
      FROM ae_events.endpoints AS p
     WHERE d.endpoint OPERATOR(pg_catalog.=) p.endpoint
       AND d.outbox_id OPERATOR(pg_catalog.=) ANY (ids)
       AND d.last_error IS NOT NULL
       AND d.last_error OPERATOR(pg_catalog.<>) '[erased]';
    -- The attempt log (console.sql) keeps each failed attempt's error text: the same.
    UPDATE ae_events.delivery_attempts AS a
       SET error = '[erased]'
      FROM ae_events.endpoints AS p
     WHERE a.endpoint OPERATOR(pg_catalog.=) p.endpoint
       AND a.outbox_id OPERATOR(pg_catalog.=) ANY (ids)
       AND a.error IS NOT NULL
       AND a.error OPERATOR(pg_catalog.<>) '[erased]';
    -- Operational events (alerts.sql) carry an attempt's error text too, and a failing or
    -- disabled one does not say which event's: the error texts of every operational event about
    -- an endpoint that attempted one of these events, since its first attempt, go as well.
    UPDATE ae_events.outbox AS a
       SET payload = pg_catalog.jsonb_set(a.payload, '{last_error}', '"[erased]"')
      FROM (SELECT p.endpoint_id, pg_catalog.min(d.first_attempt_at) AS since
              FROM ae_events.endpoints AS p
              JOIN ae_events.deliveries AS d
                ON d.endpoint OPERATOR(pg_catalog.=) p.endpoint
               AND d.outbox_id OPERATOR(pg_catalog.=) ANY (ids)
             WHERE d.first_attempt_at IS NOT NULL
             GROUP BY p.endpoint_id) AS t
     WHERE a.aggregate_type OPERATOR(pg_catalog.=) 'endpoint'
       AND a.aggregate_id OPERATOR(pg_catalog.=) t.endpoint_id
       AND a.occurred_at OPERATOR(pg_catalog.>=) t.since
       AND pg_catalog.jsonb_typeof(a.payload OPERATOR(pg_catalog.->) 'last_error') OPERATOR(pg_catalog.=) 'string'
       AND a.payload OPERATOR(pg_catalog.->>) 'last_error' OPERATOR(pg_catalog.<>) '[erased]';
    RETURN rewritten;
END
$$;

-- Erase a candidate from every stored event (shared/contract/privacy.md §1); returns how many
-- events were rewritten. The candidate's events are those whose payload names the candidate
-- (candidate_id or candidate.id, plain or hashed: also events of instances deleted since), and,
-- where a payload rule removed or nulled both, those of the instances ti.instance gives the
-- candidate now. A batch of 1000 events at a time (bounded memory), all in the caller's
-- transaction: relays see every event of the candidate erased at once when it commits, or none.
CREATE FUNCTION ae_events.erase_candidate(candidate_id bigint) RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    batch_size constant integer := 1000;
    candidate_key jsonb;
    instance_id bigint;
    last_id bigint;
    ids bigint[];
    erased bigint := 0;
    busy text;
BEGIN
    IF candidate_id IS NULL THEN
        RAISE EXCEPTION 'ae_events: erase_candidate needs a candidate id, not NULL'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    -- relay_record, redeliver and replay_endpoint lock their endpoint's row before they write
    -- delivery records: with a share lock on every endpoint's row, taken before any delivery
    -- record is touched, none of them is writing one of those this clears. Relays go on fetching
    -- and sending meanwhile; their records wait for this transaction's end. The locks are taken
    -- without waiting while holding others (relay_lease updates several rows in no set order, and
    -- could otherwise deadlock with this): on a busy one, those taken are let go, the busy one is
    -- waited for holding nothing, and all are tried again.
    LOOP
        BEGIN
            FOR busy IN SELECT p.endpoint FROM ae_events.endpoints AS p ORDER BY p.endpoint LOOP
                PERFORM FROM ae_events.endpoints AS p
                 WHERE p.endpoint OPERATOR(pg_catalog.=) busy
                   FOR SHARE NOWAIT;
            END LOOP;
            EXIT;
        EXCEPTION WHEN lock_not_available THEN
            NULL;  -- the block's locks are released with it
        END;
        -- Wait until the busy one is free, holding nothing, then try all again.
        BEGIN
            PERFORM FROM ae_events.endpoints AS p
             WHERE p.endpoint OPERATOR(pg_catalog.=) busy
               FOR SHARE;
            RAISE EXCEPTION USING ERRCODE = 'lock_not_available';  -- lets it go again
        EXCEPTION WHEN lock_not_available THEN
            NULL;
        END;
    END LOOP;
    FOREACH candidate_key IN ARRAY ae_events._candidate_keys(candidate_id) LOOP
        last_id := -1;
        LOOP
            ids := ARRAY(
                SELECT o.id FROM ae_events.outbox AS o
                 WHERE coalesce(NULLIF(o.payload OPERATOR(pg_catalog.->) 'candidate_id', 'null'::jsonb),
                                NULLIF(o.payload OPERATOR(pg_catalog.#>) '{candidate,id}', 'null'::jsonb))
                       OPERATOR(pg_catalog.=) candidate_key
                   AND o.id OPERATOR(pg_catalog.>) last_id
                 ORDER BY 1
                 LIMIT batch_size);
            EXIT WHEN pg_catalog.cardinality(ids) OPERATOR(pg_catalog.=) 0;
            last_id := ids[pg_catalog.cardinality(ids)];
            erased := erased OPERATOR(pg_catalog.+) ae_events._erase_events(ids);
        END LOOP;
    END LOOP;
    -- Payloads that name no candidate (both fields removed or nulled by rules): the instances
    -- the source table gives the candidate now.
    IF pg_catalog.to_regclass('ti.instance') IS NOT NULL THEN
        FOR instance_id IN EXECUTE
            'SELECT i.id FROM ti.instance AS i WHERE i.candidate_id OPERATOR(pg_catalog.=) $1'
            USING candidate_id LOOP
            last_id := -1;
            LOOP
                ids := ARRAY(
                    SELECT o.id FROM ae_events.outbox AS o
                     WHERE o.aggregate_type OPERATOR(pg_catalog.=) 'test_instance'
                       AND o.aggregate_id OPERATOR(pg_catalog.=) instance_id
                       AND o.id OPERATOR(pg_catalog.>) last_id
                       AND coalesce(NULLIF(o.payload OPERATOR(pg_catalog.->) 'candidate_id', 'null'::jsonb),
                                    NULLIF(o.payload OPERATOR(pg_catalog.#>) '{candidate,id}', 'null'::jsonb)) IS NULL
                     ORDER BY o.id
                     LIMIT batch_size);
                EXIT WHEN pg_catalog.cardinality(ids) OPERATOR(pg_catalog.=) 0;
                last_id := ids[pg_catalog.cardinality(ids)];
                erased := erased OPERATOR(pg_catalog.+) ae_events._erase_events(ids);
            END LOOP;
        END LOOP;
    END IF;
    INSERT INTO ae_events.erasures (erased_by, candidate_id, events)
    VALUES (ae_events._calling_role(), candidate_id, erased);
    RETURN erased;
END
$$;

COMMENT ON FUNCTION ae_events.erase_candidate(bigint) IS
    'ae_events: sets every field of candidate except id to null in the stored events of that candidate, clears their delivery error texts, records it in ae_events.erasures; returns the number of events rewritten';

-- An error text recorded for an erased candidate's event becomes '[erased]': an attempt in
-- flight when the erasure committed had read the payload before it, and the receiver's answer
-- (which may echo the values) is recorded after it. Only rows with an error text fire it (a
-- delivered batch has none), and it stops at one probe of an empty table while no candidate was
-- ever erased.
CREATE FUNCTION ae_events._erased_delivery_error() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    candidate_key jsonb;
BEGIN
    IF NOT EXISTS (SELECT FROM ae_events.erasures) THEN
        RETURN NEW;
    END IF;
    SELECT coalesce(NULLIF(o.payload OPERATOR(pg_catalog.->) 'candidate_id', 'null'::jsonb),
                    NULLIF(o.payload OPERATOR(pg_catalog.#>) '{candidate,id}', 'null'::jsonb))
      INTO candidate_key
      FROM ae_events.outbox AS o WHERE o.id OPERATOR(pg_catalog.=) NEW.outbox_id;
    IF candidate_key IS NOT NULL
       AND EXISTS (SELECT FROM ae_events.erasures AS er
                    WHERE candidate_key OPERATOR(pg_catalog.=) ANY (ae_events._candidate_keys(er.candidate_id))) THEN
        NEW.last_error := '[erased]';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER erased_candidate_errors
    BEFORE INSERT OR UPDATE OF last_error ON ae_events.deliveries
    FOR EACH ROW
    WHEN (NEW.last_error IS NOT NULL AND NEW.last_error OPERATOR(pg_catalog.<>) '[erased]')
    EXECUTE FUNCTION ae_events._erased_delivery_error();

REVOKE ALL ON ae_events.erasures FROM PUBLIC;
REVOKE ALL ON FUNCTION ae_events._candidate_keys(bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION ae_events._erased_payload(jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION ae_events._erase_events(bigint[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION ae_events.erase_candidate(bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION ae_events._erased_delivery_error() FROM PUBLIC;
-- prune()'s reading of ae_events.payload_retention (src/settings.rs).
REVOKE ALL ON FUNCTION ae_events._payload_retention() FROM PUBLIC;
