-- ae_events 0.6.0 -> 0.7.0: ae-relay in production. Endpoints spread over the running relays
-- (ae_events.relays, a fair share each in relay_lease), a per-endpoint rate limit, nats:// URLs
-- (NATS JetStream), relay_status for the relay's backlog metrics and the event time in
-- relay_fetch and relay_due for its lag metric. The source is sql/src/endpoints.sql, repeated
-- here as released.

\echo Use "ALTER EXTENSION ae_events UPDATE TO '0.7.0'" to load this file. \quit

ALTER TABLE ae_events.endpoints ADD COLUMN rate_limit double precision;

CREATE TABLE ae_events.relays (
    relay text PRIMARY KEY,
    started_at timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    seen_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL
);

COMMENT ON TABLE ae_events.relays IS
    'ae_events: the ae-relay processes that renewed their leases lately; endpoints are shared among them';

DROP FUNCTION ae_events._check_endpoint_settings(text, text[], jsonpath, jsonb, interval, interval[], double precision, interval, integer);
CREATE FUNCTION ae_events._check_endpoint_settings(
    url text, subscription_keys text[], filter jsonpath, headers jsonb, timeout interval,
    retry_schedule interval[], retry_jitter double precision, disable_after interval,
    max_in_flight integer, rate_limit double precision)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    unknown_key text;
    header record;
BEGIN
    -- http(s)://host[:port][/path]; nats://host[:port]/subject publishes to NATS JetStream
    -- (a subject of tokens, no wildcards: events are published to it).
    IF url IS NULL
       OR (url !~ '^https?://[^/?#@[:space:]]+(:[0-9]{1,5})?([/?#][^[:space:]]*)?$'
           AND url !~ '^nats://[^/?#@[:space:]]+(:[0-9]{1,5})?/[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$')
       OR url ~ '^(https?|nats)://:' THEN
        RAISE EXCEPTION 'ae_events: % is not an http:// or https:// URL with a host, nor nats://host:port/subject',
                coalesce(pg_catalog.quote_literal(url), 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF subscription_keys IS NOT NULL THEN
        IF pg_catalog.cardinality(subscription_keys) OPERATOR(pg_catalog.=) 0 THEN
            RAISE EXCEPTION 'ae_events: subscription_keys is empty: the endpoint would receive nothing'
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'NULL subscribes to every key.';
        END IF;
        SELECT k INTO unknown_key FROM pg_catalog.unnest(subscription_keys) AS k
         WHERE k IS NULL OR k NOT IN ('ae.test_instance.created', 'ae.test_instance.updated')
         LIMIT 1;
        IF FOUND THEN
            RAISE EXCEPTION 'ae_events: unknown subscription key %',
                    coalesce(pg_catalog.quote_literal(unknown_key), 'NULL')
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'The keys are ae.test_instance.created and ae.test_instance.updated.';
        END IF;
    END IF;
    IF filter IS NOT NULL THEN
        -- A predicate gives true or false on any payload; a plain path gives values (22038).
        BEGIN
            PERFORM pg_catalog.jsonb_path_match('{}'::jsonb, filter);
        EXCEPTION WHEN singleton_sql_json_item_required OR sql_json_scalar_required THEN
            RAISE EXCEPTION 'ae_events: the filter % is not a predicate',
                    pg_catalog.quote_literal(filter::text)
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'Write a condition, e.g. $.catalog_assessment.catalog.id == 404.';
        WHEN OTHERS THEN
            NULL;  -- a predicate that fails on {} (e.g. arithmetic) is evaluated silently later
        END;
    END IF;
    IF headers IS NULL OR pg_catalog.jsonb_typeof(headers) OPERATOR(pg_catalog.<>) 'object' THEN
        RAISE EXCEPTION 'ae_events: headers must be a JSON object of names and string values'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    FOR header IN SELECT h.key, h.value FROM pg_catalog.jsonb_each(headers) AS h LOOP
        IF pg_catalog.jsonb_typeof(header.value) OPERATOR(pg_catalog.<>) 'string'
           OR header.key !~ '^[!#$%&''*+.^_`|~0-9A-Za-z-]+$'
           OR (header.value OPERATOR(pg_catalog.#>>) '{}') ~ '[\r\n]' THEN
            RAISE EXCEPTION 'ae_events: header % needs a token name and a one-line string value',
                    pg_catalog.quote_literal(header.key)
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        IF pg_catalog.lower(header.key) IN ('content-type', 'content-length', 'host', 'user-agent',
                                             'transfer-encoding', 'connection')
           OR pg_catalog.lower(header.key) LIKE 'webhook-%'
           OR pg_catalog.lower(header.key) LIKE 'ae-%' THEN
            RAISE EXCEPTION 'ae_events: header % is set by the relay', pg_catalog.quote_literal(header.key)
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
    END LOOP;
    IF timeout IS NULL OR timeout OPERATOR(pg_catalog.<=) interval '0'
       OR timeout OPERATOR(pg_catalog.>) interval '5 minutes' THEN
        RAISE EXCEPTION 'ae_events: timeout must be more than 0 and at most 5 minutes, not %', timeout
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF retry_schedule IS NULL OR pg_catalog.array_position(retry_schedule, NULL) IS NOT NULL
       OR EXISTS (SELECT FROM pg_catalog.unnest(retry_schedule) AS d
                   WHERE d OPERATOR(pg_catalog.<) interval '0'
                      OR d OPERATOR(pg_catalog.>) interval '7 days') THEN
        RAISE EXCEPTION 'ae_events: retry_schedule must be delays between 0 and 7 days, not %',
                coalesce(retry_schedule::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF retry_jitter IS NULL OR retry_jitter NOT BETWEEN 0 AND 1 THEN
        RAISE EXCEPTION 'ae_events: retry_jitter must be between 0 and 1, not %', retry_jitter
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF disable_after IS NULL OR disable_after OPERATOR(pg_catalog.<=) interval '0' THEN
        RAISE EXCEPTION 'ae_events: disable_after must be more than 0, not %', disable_after
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF max_in_flight IS NULL OR max_in_flight NOT BETWEEN 1 AND 256 THEN
        RAISE EXCEPTION 'ae_events: max_in_flight must be between 1 and 256, not %', max_in_flight
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF rate_limit IS NOT NULL AND NOT (rate_limit OPERATOR(pg_catalog.>) 0
                                       AND rate_limit OPERATOR(pg_catalog.<=) 100000) THEN
        RAISE EXCEPTION 'ae_events: rate_limit must be more than 0 and at most 100000 requests per second, not %', rate_limit
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'rate_limit => 0 removes the limit.';
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION ae_events.create_endpoint(endpoint text, url text,
                                          subscription_keys text[] DEFAULT NULL,
                                          filter jsonpath DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    new_secret text := ae_events._new_secret();
    start record := ae_events._position_now();
BEGIN
    IF endpoint IS NULL THEN
        RAISE EXCEPTION 'ae_events: an endpoint name is needed, not NULL'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF endpoint OPERATOR(pg_catalog.=) '' THEN
        RAISE EXCEPTION 'ae_events: an endpoint needs a non-empty name'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM ae_events._check_endpoint_settings(url, subscription_keys, filter, '{}', '15 seconds',
                                               '{5 seconds}', 0.2, '5 days', 16, NULL);
    BEGIN
        INSERT INTO ae_events.endpoints (endpoint, url, subscription_keys, filter,
                                         cursor_epoch, cursor_txid, cursor_id)
        VALUES (endpoint, url, subscription_keys, filter, start.position_epoch,
                start.position_txid, start.position_id);
    EXCEPTION WHEN unique_violation THEN
        RAISE EXCEPTION 'ae_events: the endpoint % exists already', pg_catalog.quote_literal(endpoint)
            USING ERRCODE = 'duplicate_object',
                  HINT = 'Change it with ae_events.alter_endpoint, or drop it first.';
    END;
    INSERT INTO ae_events.endpoint_secrets (endpoint, secret) VALUES (endpoint, new_secret);
    RETURN new_secret;
END
$$;

DROP FUNCTION ae_events.alter_endpoint(text, text, text[], jsonpath, jsonb, interval, interval[], double precision, interval, integer, boolean);
CREATE FUNCTION ae_events.alter_endpoint(endpoint text,
                                         url text DEFAULT NULL,
                                         subscription_keys text[] DEFAULT NULL,
                                         filter jsonpath DEFAULT NULL,
                                         headers jsonb DEFAULT NULL,
                                         timeout interval DEFAULT NULL,
                                         retry_schedule interval[] DEFAULT NULL,
                                         retry_jitter double precision DEFAULT NULL,
                                         disable_after interval DEFAULT NULL,
                                         max_in_flight integer DEFAULT NULL,
                                         clear_filter boolean DEFAULT false,
                                         rate_limit double precision DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    current ae_events.endpoints := ae_events._endpoint_for_update(endpoint);
    new_keys text[] := CASE WHEN subscription_keys OPERATOR(pg_catalog.=) '{*}' THEN NULL
                            ELSE coalesce(subscription_keys, current.subscription_keys) END;
    new_filter jsonpath := CASE WHEN clear_filter THEN NULL
                                ELSE coalesce(filter, current.filter) END;
    -- 0 removes the limit.
    new_rate_limit double precision := CASE WHEN rate_limit OPERATOR(pg_catalog.=) 0 THEN NULL
                                            ELSE coalesce(rate_limit, current.rate_limit) END;
BEGIN
    PERFORM ae_events._check_endpoint_settings(
        coalesce(url, current.url), new_keys, new_filter, coalesce(headers, current.headers),
        coalesce(timeout, current.timeout), coalesce(retry_schedule, current.retry_schedule),
        coalesce(retry_jitter, current.retry_jitter), coalesce(disable_after, current.disable_after),
        coalesce(max_in_flight, current.max_in_flight), new_rate_limit);
    UPDATE ae_events.endpoints AS e
       SET url = coalesce(alter_endpoint.url, e.url),
           subscription_keys = new_keys,
           filter = new_filter,
           headers = coalesce(alter_endpoint.headers, e.headers),
           timeout = coalesce(alter_endpoint.timeout, e.timeout),
           retry_schedule = coalesce(alter_endpoint.retry_schedule, e.retry_schedule),
           retry_jitter = coalesce(alter_endpoint.retry_jitter, e.retry_jitter),
           disable_after = coalesce(alter_endpoint.disable_after, e.disable_after),
           max_in_flight = coalesce(alter_endpoint.max_in_flight, e.max_in_flight),
           rate_limit = new_rate_limit
     WHERE e.endpoint OPERATOR(pg_catalog.=) alter_endpoint.endpoint;
END
$$;

CREATE OR REPLACE VIEW ae_events.endpoint_status AS
SELECT e.endpoint, e.url, e.subscription_keys, e.filter::text AS filter,
       ARRAY(SELECT k FROM pg_catalog.jsonb_object_keys(e.headers) AS k ORDER BY k) AS header_names,
       e.timeout, e.retry_schedule, e.retry_jitter, e.disable_after, e.max_in_flight,
       e.enabled, e.disabled_reason, e.disabled_at, e.failing_since,
       e.relay, e.lease_expires_at,
       (SELECT pg_catalog.count(*) FROM ae_events.deliveries AS d
         WHERE d.endpoint OPERATOR(pg_catalog.=) e.endpoint AND d.status OPERATOR(pg_catalog.=) 'pending') AS pending,
       (SELECT pg_catalog.min(d.next_attempt_at) FROM ae_events.deliveries AS d
         WHERE d.endpoint OPERATOR(pg_catalog.=) e.endpoint AND d.status OPERATOR(pg_catalog.=) 'pending') AS next_attempt_at,
       (SELECT pg_catalog.count(*) FROM ae_events.deliveries AS d
         WHERE d.endpoint OPERATOR(pg_catalog.=) e.endpoint AND d.status OPERATOR(pg_catalog.=) 'dead') AS dead,
       e.cursor_id AS cursor_event,
       e.created_at,
       e.rate_limit
  FROM ae_events.endpoints AS e;

DROP FUNCTION ae_events.relay_lease(text, interval);
CREATE FUNCTION ae_events.relay_lease(relay text, lease interval)
RETURNS TABLE (endpoint text, url text, headers jsonb, timeout_ms bigint,
               retry_schedule_ms bigint[], retry_jitter double precision, max_in_flight integer,
               secrets text[], cursor_epoch bigint, cursor_txid xid8, cursor_id bigint,
               rate_limit double precision)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    now_at timestamptz := pg_catalog.clock_timestamp();
    live_relays bigint;
    enabled_endpoints bigint;
    fair_share bigint;
    kept text[];
    taken text[];
BEGIN
    IF relay IS NULL OR relay OPERATOR(pg_catalog.=) '' OR lease IS NULL
       OR lease OPERATOR(pg_catalog.<=) interval '0' THEN
        RAISE EXCEPTION 'ae_events: relay_lease needs a relay id and a positive lease'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    INSERT INTO ae_events.relays AS r (relay, seen_at, expires_at)
    VALUES (relay_lease.relay, now_at, now_at OPERATOR(pg_catalog.+) lease)
    ON CONFLICT ON CONSTRAINT relays_pkey
    DO UPDATE SET seen_at = excluded.seen_at, expires_at = excluded.expires_at;
    DELETE FROM ae_events.relays AS r WHERE r.expires_at OPERATOR(pg_catalog.<) now_at;
    UPDATE ae_events.endpoints AS e SET relay = NULL, lease_expires_at = NULL
     WHERE e.relay OPERATOR(pg_catalog.=) relay_lease.relay AND NOT e.enabled;
    SELECT pg_catalog.count(*) INTO live_relays FROM ae_events.relays;
    SELECT pg_catalog.count(*) INTO enabled_endpoints FROM ae_events.endpoints AS e WHERE e.enabled;
    fair_share := (enabled_endpoints OPERATOR(pg_catalog.+) live_relays OPERATOR(pg_catalog.-) 1)
                  OPERATOR(pg_catalog./) GREATEST(live_relays, 1);
    WITH renewed AS (
        UPDATE ae_events.endpoints AS e
           SET lease_expires_at = now_at OPERATOR(pg_catalog.+) lease
         WHERE e.endpoint IN (
               SELECT h.endpoint FROM ae_events.endpoints AS h
                WHERE h.relay OPERATOR(pg_catalog.=) relay_lease.relay AND h.enabled
                  AND h.lease_expires_at OPERATOR(pg_catalog.>=) now_at
                ORDER BY h.endpoint
                LIMIT fair_share)
        RETURNING e.endpoint)
    SELECT coalesce(pg_catalog.array_agg(r.endpoint), '{}') INTO kept FROM renewed AS r;
    WITH took AS (
        UPDATE ae_events.endpoints AS e
           SET relay = relay_lease.relay,
               lease_expires_at = now_at OPERATOR(pg_catalog.+) lease
         WHERE e.endpoint IN (
               SELECT f.endpoint FROM ae_events.endpoints AS f
                WHERE f.enabled
                  AND (f.relay IS NULL OR f.lease_expires_at IS NULL
                       OR f.lease_expires_at OPERATOR(pg_catalog.<) now_at)
                ORDER BY f.endpoint
                LIMIT GREATEST(fair_share OPERATOR(pg_catalog.-) pg_catalog.cardinality(kept), 0)
                FOR UPDATE SKIP LOCKED)
        RETURNING e.endpoint)
    SELECT coalesce(pg_catalog.array_agg(t.endpoint), '{}') INTO taken FROM took AS t;
    RETURN QUERY
    SELECT h.endpoint, h.url, h.headers,
           (EXTRACT(epoch FROM h.timeout) OPERATOR(pg_catalog.*) 1000)::bigint,
           ARRAY(SELECT (EXTRACT(epoch FROM d) OPERATOR(pg_catalog.*) 1000)::bigint
                   FROM pg_catalog.unnest(h.retry_schedule) WITH ORDINALITY AS s (d, n) ORDER BY n),
           h.retry_jitter, h.max_in_flight,
           ARRAY(SELECT s.secret FROM ae_events.endpoint_secrets AS s
                  WHERE s.endpoint OPERATOR(pg_catalog.=) h.endpoint
                    AND (s.expires_at IS NULL OR s.expires_at OPERATOR(pg_catalog.>) pg_catalog.clock_timestamp())
                  ORDER BY s.created_at DESC, s.secret),
           h.cursor_epoch, h.cursor_txid, h.cursor_id, h.rate_limit
      FROM ae_events.endpoints AS h
     WHERE h.endpoint OPERATOR(pg_catalog.=) ANY (kept OPERATOR(pg_catalog.||) taken)
     ORDER BY h.endpoint;
END
$$;

CREATE OR REPLACE FUNCTION ae_events.relay_release(relay text) RETURNS void
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    DELETE FROM ae_events.relays AS r WHERE r.relay OPERATOR(pg_catalog.=) relay_release.relay;
    UPDATE ae_events.endpoints AS e SET relay = NULL, lease_expires_at = NULL
     WHERE e.relay OPERATOR(pg_catalog.=) relay_release.relay;
$$;

CREATE FUNCTION ae_events.relay_status(relay text)
RETURNS TABLE (endpoint text, backlog bigint, oldest_waiting_at timestamptz, pending bigint,
               dead bigint)
LANGUAGE sql STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT e.endpoint, ahead.events,
           CASE WHEN ahead.oldest IS NULL THEN waiting.oldest
                WHEN waiting.oldest IS NULL THEN ahead.oldest
                ELSE LEAST(ahead.oldest, waiting.oldest) END,
           (SELECT pg_catalog.count(*) FROM ae_events.deliveries AS d
             WHERE d.endpoint OPERATOR(pg_catalog.=) e.endpoint AND d.status OPERATOR(pg_catalog.=) 'pending'),
           (SELECT pg_catalog.count(*) FROM ae_events.deliveries AS d
             WHERE d.endpoint OPERATOR(pg_catalog.=) e.endpoint AND d.status OPERATOR(pg_catalog.=) 'dead')
      FROM ae_events.endpoints AS e
     CROSS JOIN LATERAL (
           SELECT pg_catalog.count(*) AS events, pg_catalog.min(o.occurred_at) AS oldest
             FROM (SELECT o.occurred_at FROM ae_events.outbox AS o
                    WHERE (o.id OPERATOR(pg_catalog.>=) e.cursor_epoch
                           AND (o.txid, o.id) OPERATOR(pg_catalog.>) (e.cursor_txid, e.cursor_id)
                           AND o.txid OPERATOR(pg_catalog.>=) e.cursor_txid
                           OR o.id OPERATOR(pg_catalog.>=) (
                               SELECT pg_catalog.min(n.first_id) FROM ae_events.epochs AS n
                                WHERE n.first_id OPERATOR(pg_catalog.>) e.cursor_epoch))
                      AND (e.subscription_keys IS NULL
                           OR o.subscription_key OPERATOR(pg_catalog.=) ANY (e.subscription_keys))
                    LIMIT 100000) AS o) AS ahead
     CROSS JOIN LATERAL (
           SELECT pg_catalog.min(o.occurred_at) AS oldest
             FROM ae_events.deliveries AS d
             JOIN ae_events.outbox AS o ON o.id OPERATOR(pg_catalog.=) d.outbox_id
            WHERE d.endpoint OPERATOR(pg_catalog.=) e.endpoint
              AND d.status OPERATOR(pg_catalog.=) 'pending') AS waiting
     WHERE e.relay OPERATOR(pg_catalog.=) relay_status.relay
       AND e.lease_expires_at OPERATOR(pg_catalog.>) pg_catalog.clock_timestamp()
     ORDER BY e.endpoint
$$;

DROP FUNCTION ae_events.relay_due(text, text, integer, bigint[]);
CREATE FUNCTION ae_events.relay_due(endpoint text, relay text, max_events integer,
                                    busy_instances bigint[])
RETURNS TABLE (id bigint, event_id uuid, subscription_key text, event_type text,
               aggregate_id bigint, snapshot_version integer, payload text, attempts integer,
               occurred_at timestamptz)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    target ae_events.endpoints := ae_events._require_lease(endpoint, relay);
BEGIN
    RETURN QUERY
        SELECT o.id, o.event_id, o.subscription_key, o.event_type, o.aggregate_id,
               o.snapshot_version, o.payload::text, d.attempts, o.occurred_at
          FROM ae_events.deliveries AS d
          JOIN ae_events.outbox AS o ON o.id OPERATOR(pg_catalog.=) d.outbox_id
         WHERE d.endpoint OPERATOR(pg_catalog.=) target.endpoint
           AND d.status OPERATOR(pg_catalog.=) 'pending'
           AND d.next_attempt_at OPERATOR(pg_catalog.<=) pg_catalog.clock_timestamp()
           AND NOT (d.aggregate_id OPERATOR(pg_catalog.=) ANY (coalesce(busy_instances, '{}')))
           AND NOT EXISTS (
                   SELECT FROM ae_events.deliveries AS w
                    WHERE w.endpoint OPERATOR(pg_catalog.=) d.endpoint
                      AND w.aggregate_id OPERATOR(pg_catalog.=) d.aggregate_id
                      AND w.status OPERATOR(pg_catalog.=) 'pending'
                      AND w.outbox_id OPERATOR(pg_catalog.<) d.outbox_id)
         ORDER BY d.next_attempt_at, d.outbox_id
         LIMIT max_events;
    -- Pending rows whose event was pruned meanwhile cannot be sent: nothing to do for them.
    DELETE FROM ae_events.deliveries AS d
     WHERE d.endpoint OPERATOR(pg_catalog.=) target.endpoint
       AND d.status OPERATOR(pg_catalog.=) 'pending'
       AND d.next_attempt_at OPERATOR(pg_catalog.<=) pg_catalog.clock_timestamp()
       AND NOT EXISTS (SELECT FROM ae_events.outbox AS o WHERE o.id OPERATOR(pg_catalog.=) d.outbox_id);
END
$$;

DROP FUNCTION ae_events.relay_fetch(text, text, bigint, xid8, bigint, integer);
CREATE FUNCTION ae_events.relay_fetch(endpoint text, relay text, after_epoch bigint,
                                      after_txid xid8, after_id bigint, max_events integer)
RETURNS TABLE (epoch bigint, txid xid8, id bigint, event_id uuid, subscription_key text,
               event_type text, aggregate_id bigint, snapshot_version integer,
               payload text, deliver boolean, waits_behind boolean, occurred_at timestamptz)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    target ae_events.endpoints := ae_events._require_lease(endpoint, relay);
    horizon xid8 := ae_events._delivery_horizon();
    epoch_row record;
    from_txid xid8;
    from_id bigint;
    below_txid xid8;
    end_txid xid8;
    end_id bigint;
    cap_txid xid8;
    cap_id bigint;
    ahead record;
    changed boolean;
    remaining integer := max_events;
    returned integer;
BEGIN
    IF max_events IS NULL OR max_events OPERATOR(pg_catalog.<) 1 THEN
        RAISE EXCEPTION 'ae_events: max_events must be at least 1, not %', max_events
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    FOR epoch_row IN SELECT * FROM ae_events._epochs() AS e
                      WHERE e.next_first_id IS NULL
                         OR e.next_first_id OPERATOR(pg_catalog.>) after_epoch
                      ORDER BY e.first_id LOOP
        IF epoch_row.first_id OPERATOR(pg_catalog.<=) after_epoch THEN
            from_txid := after_txid;
            from_id := after_id;
        ELSE
            from_txid := '0';
            from_id := -1;
        END IF;
        below_txid := CASE WHEN epoch_row.open THEN horizon ELSE '18446744073709551615'::xid8 END;
        -- The batch: up to the remaining-th final event.
        SELECT o.txid, o.id INTO end_txid, end_id
          FROM (SELECT o.txid, o.id FROM ae_events.outbox AS o
                 WHERE (o.txid, o.id) OPERATOR(pg_catalog.>) (from_txid, from_id)
                   AND o.txid OPERATOR(pg_catalog.<) below_txid
                   AND o.id OPERATOR(pg_catalog.>=) epoch_row.first_id
                   AND o.id OPERATOR(pg_catalog.<) coalesce(epoch_row.next_first_id, 9223372036854775807)
                 ORDER BY o.txid, o.id
                 LIMIT remaining) AS o
         ORDER BY o.txid DESC, o.id DESC
         LIMIT 1;
        CONTINUE WHEN end_id IS NULL;
        cap_txid := NULL;
        cap_id := NULL;
        -- An event of the batch whose instance's previous event lies after the batch: extend
        -- the batch to it if it is final, else end the batch before that event (cap).
        LOOP
            changed := false;
            FOR ahead IN
                SELECT b.txid AS b_txid, b.id AS b_id, p.txid AS p_txid, p.id AS p_id
                  FROM ae_events.outbox AS b
                 CROSS JOIN LATERAL (
                       SELECT p.txid, p.id FROM ae_events.outbox AS p
                        WHERE p.aggregate_type OPERATOR(pg_catalog.=) b.aggregate_type
                          AND p.aggregate_id OPERATOR(pg_catalog.=) b.aggregate_id
                          AND p.id OPERATOR(pg_catalog.<) b.id
                          AND p.id OPERATOR(pg_catalog.>=) epoch_row.first_id
                        ORDER BY p.id DESC
                        LIMIT 1) AS p
                 WHERE (b.txid, b.id) OPERATOR(pg_catalog.>) (from_txid, from_id)
                   AND (b.txid, b.id) OPERATOR(pg_catalog.<=) (end_txid, end_id)
                   -- Plain bounds too: the planner estimates these (not the row comparisons)
                   -- and so scans the index range, not the outbox.
                   AND b.txid OPERATOR(pg_catalog.>=) from_txid
                   AND b.txid OPERATOR(pg_catalog.<=) end_txid
                   AND b.txid OPERATOR(pg_catalog.<) below_txid
                   AND b.id OPERATOR(pg_catalog.>=) epoch_row.first_id
                   AND b.id OPERATOR(pg_catalog.<) coalesce(epoch_row.next_first_id, 9223372036854775807)
                   AND (p.txid, p.id) OPERATOR(pg_catalog.>) (end_txid, end_id)
                 ORDER BY b.txid, b.id
            LOOP
                IF ahead.p_txid OPERATOR(pg_catalog.<) below_txid
                   AND (cap_id IS NULL
                        OR (ahead.p_txid, ahead.p_id) OPERATOR(pg_catalog.<) (cap_txid, cap_id)) THEN
                    end_txid := ahead.p_txid;
                    end_id := ahead.p_id;
                ELSE
                    cap_txid := ahead.b_txid;
                    cap_id := ahead.b_id;
                    -- The batch ends just before the capped event.
                    SELECT o.txid, o.id INTO end_txid, end_id FROM ae_events.outbox AS o
                     WHERE (o.txid, o.id) OPERATOR(pg_catalog.>) (from_txid, from_id)
                       AND (o.txid, o.id) OPERATOR(pg_catalog.<) (cap_txid, cap_id)
                       AND o.txid OPERATOR(pg_catalog.>=) from_txid
                       AND o.txid OPERATOR(pg_catalog.<=) cap_txid
                       AND o.id OPERATOR(pg_catalog.>=) epoch_row.first_id
                       AND o.id OPERATOR(pg_catalog.<) coalesce(epoch_row.next_first_id, 9223372036854775807)
                     ORDER BY o.txid DESC, o.id DESC LIMIT 1;
                    IF NOT FOUND THEN
                        end_txid := from_txid;
                        end_id := from_id;
                    END IF;
                END IF;
                changed := true;
                EXIT;
            END LOOP;
            EXIT WHEN NOT changed;
        END LOOP;
        -- The probes of deliveries are LATERAL ... LIMIT 1 so that each is one index lookup
        -- (a sublink may be planned as a hash of all the endpoint's delivery rows).
        RETURN QUERY
            SELECT epoch_row.first_id, o.txid, o.id, o.event_id, o.subscription_key, o.event_type,
                   o.aggregate_id, o.snapshot_version,
                   CASE WHEN m.deliver THEN o.payload::text END,
                   m.deliver,
                   m.deliver AND w.waiting IS NOT NULL,
                   o.occurred_at
              FROM ae_events.outbox AS o
              LEFT JOIN LATERAL (
                   SELECT true AS done FROM ae_events.deliveries AS d
                    WHERE d.endpoint OPERATOR(pg_catalog.=) target.endpoint
                      AND d.outbox_id OPERATOR(pg_catalog.=) o.id
                    LIMIT 1) AS r ON true
             CROSS JOIN LATERAL (
                   -- ae_events._endpoint_matches, written out: a call per row costs more
                   -- than the test.
                   SELECT r.done IS NULL
                          AND (target.subscription_keys IS NULL
                               OR o.subscription_key OPERATOR(pg_catalog.=) ANY (target.subscription_keys))
                          AND (target.filter IS NULL
                               OR coalesce(pg_catalog.jsonb_path_match(o.payload, target.filter, '{}', true), false))
                          AS deliver) AS m
              LEFT JOIN LATERAL (
                   SELECT true AS waiting FROM ae_events.deliveries AS w
                    WHERE m.deliver
                      AND w.endpoint OPERATOR(pg_catalog.=) target.endpoint
                      AND w.aggregate_id OPERATOR(pg_catalog.=) o.aggregate_id
                      AND w.status OPERATOR(pg_catalog.=) 'pending'
                    LIMIT 1) AS w ON true
             WHERE (o.txid, o.id) OPERATOR(pg_catalog.>) (from_txid, from_id)
               AND (o.txid, o.id) OPERATOR(pg_catalog.<=) (end_txid, end_id)
               AND o.txid OPERATOR(pg_catalog.>=) from_txid
               AND o.txid OPERATOR(pg_catalog.<=) end_txid
               AND o.id OPERATOR(pg_catalog.>=) epoch_row.first_id
               AND o.id OPERATOR(pg_catalog.<) coalesce(epoch_row.next_first_id, 9223372036854775807)
             ORDER BY o.txid, o.id;
        GET DIAGNOSTICS returned = ROW_COUNT;
        remaining := remaining OPERATOR(pg_catalog.-) returned;
        -- A capped epoch stops here: what follows waits for the capped event.
        EXIT WHEN remaining OPERATOR(pg_catalog.<=) 0 OR cap_id IS NOT NULL;
    END LOOP;
END
$$;

REVOKE ALL ON FUNCTION ae_events._check_endpoint_settings(text, text[], jsonpath, jsonb, interval, interval[], double precision, interval, integer, double precision) FROM PUBLIC;
REVOKE ALL ON FUNCTION ae_events.alter_endpoint(text, text, text[], jsonpath, jsonb, interval, interval[], double precision, interval, integer, boolean, double precision) FROM PUBLIC;
REVOKE ALL ON FUNCTION ae_events.relay_lease(text, interval) FROM PUBLIC;
REVOKE ALL ON FUNCTION ae_events.relay_status(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION ae_events.relay_fetch(text, text, bigint, xid8, bigint, integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION ae_events.relay_due(text, text, integer, bigint[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION ae_events.relay_lease(text, interval), ae_events.relay_release(text),
    ae_events.relay_status(text),
    ae_events.relay_fetch(text, text, bigint, xid8, bigint, integer),
    ae_events.relay_due(text, text, integer, bigint[]),
    ae_events.relay_record(text, text, bigint[], bigint[], text[], integer[], timestamptz[], integer[], text[], timestamptz[], bigint, xid8, bigint, text)
    TO ae_events_relay;
GRANT SELECT ON ae_events.relays TO ae_events_reader, ae_events_relay;
