-- ae_events 0.3.0 -> 0.4.0: payload visibility rules (ae_events.payload_rules), applied before
-- events are stored or notified; the gap-free consumer API for relays and its roles; the
-- analysts' view, retention (prune) and stats.
\echo Use "ALTER EXTENSION ae_events UPDATE TO '0.4.0'" to load this file. \quit

CREATE FUNCTION ae_events.check_payload_rule(path text, action text) RETURNS boolean
IMMUTABLE STRICT PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'check_payload_rule_wrapper';

-- Payload visibility rules: each a path into the payload ('candidate.email',
-- 'measurement.measurement_attributes.*.remarks', 'candidate.cf.ssn') and what to do with the
-- value there: 'remove' it, set it to 'null', or replace it by the hex SHA-256 of its text
-- ('sha256', the text that payload #>> path shows). Applied before an event is stored or
-- notified, from the next commit on. A path must name a field of the payload (or a key path
-- inside candidate.cf or an attribute's additional_attributes): a misspelt one is refused.
CREATE TABLE ae_events.payload_rules (
    path text PRIMARY KEY,
    action text NOT NULL,
    CHECK (ae_events.check_payload_rule(path, action))
);

COMMENT ON TABLE ae_events.payload_rules IS
    'ae_events: payload visibility rules (path, remove | null | sha256), applied before events are stored or notified';

SELECT pg_catalog.pg_extension_config_dump('ae_events.payload_rules', '');

-- Gap-free consumption for relays: create_consumer / poll / ack / drop_consumer.
--
-- Outbox ids are drawn before commit, so "ids after the last one I saw" skips a row whose
-- transaction commits late. Delivery order is therefore (txid, id), and poll returns only rows
-- whose transaction is finished: txid below the xmin of the current snapshot. A transaction
-- that commits later has a txid at or above that horizon, so it sorts after everything already
-- delivered: nothing is skipped, whatever order transactions commit in. (The horizon leaves out
-- transactions known to run in other databases: _delivery_horizon.)
--
-- Transaction ids belong to a cluster: after pg_restore into another cluster they start over,
-- below the restored rows' txids. So ids are split into epochs, one per cluster the outbox was
-- written in (ae_events.epochs: the first id of each); delivery is by epoch, then (txid, id).
-- Only the latest epoch, when it is this cluster's, can still receive rows; the rows of earlier
-- epochs are all final. The writer starts a new epoch (_ensure_epoch) before it draws ids in a
-- cluster that is not the latest epoch's.

CREATE TABLE ae_events.epochs (
    first_id bigint PRIMARY KEY,
    system_identifier bigint NOT NULL,
    started_at timestamptz NOT NULL DEFAULT pg_catalog.now()
);

COMMENT ON TABLE ae_events.epochs IS
    'ae_events: the first outbox id written in each cluster (pg_control_system().system_identifier); delivery order is epoch, txid, id';

CREATE TABLE ae_events.consumers (
    consumer text PRIMARY KEY CHECK (consumer OPERATOR(pg_catalog.<>) ''),
    -- The position of the last acknowledged event: epoch (its first_id; -1 before everything),
    -- then txid and id.
    cursor_epoch bigint NOT NULL,
    cursor_txid xid8 NOT NULL,
    cursor_id bigint NOT NULL,
    created_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    acked_at timestamptz
);

COMMENT ON TABLE ae_events.consumers IS
    'ae_events: relay cursors (create_consumer / poll / ack / drop_consumer)';

-- Delivery order within an epoch.
CREATE INDEX outbox_delivery_idx ON ae_events.outbox (txid, id);

-- This cluster's first epoch covers everything written from now on. pg_restore runs CREATE
-- EXTENSION (which inserts it) before it restores the dumped epochs: a restored epoch with the
-- same first id replaces it, and the first write in this cluster then starts a new one.
INSERT INTO ae_events.epochs (first_id, system_identifier)
SELECT 0, c.system_identifier FROM pg_catalog.pg_control_system() AS c;

CREATE FUNCTION ae_events._epoch_insert_replaces() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    UPDATE ae_events.epochs AS e
       SET system_identifier = NEW.system_identifier, started_at = NEW.started_at
     WHERE e.first_id OPERATOR(pg_catalog.=) NEW.first_id;
    IF FOUND THEN
        RETURN NULL;
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER insert_replaces_existing BEFORE INSERT ON ae_events.epochs
    FOR EACH ROW EXECUTE FUNCTION ae_events._epoch_insert_replaces();

SELECT pg_catalog.pg_extension_config_dump('ae_events.epochs', '');
SELECT pg_catalog.pg_extension_config_dump('ae_events.consumers', '');

-- Called by the extension before it draws outbox ids in a backend: makes sure the latest epoch
-- is this cluster's. Returns whether it already was (the caller may then stop asking).
CREATE FUNCTION ae_events._ensure_epoch() RETURNS boolean
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    this_cluster bigint := (SELECT c.system_identifier FROM pg_catalog.pg_control_system() AS c);
    latest_cluster bigint;
    any_epoch boolean;
BEGIN
    SELECT e.system_identifier INTO latest_cluster
      FROM ae_events.epochs AS e ORDER BY e.first_id DESC LIMIT 1;
    IF latest_cluster OPERATOR(pg_catalog.=) this_cluster THEN
        RETURN true;
    END IF;
    -- One writer starts the epoch; the others wait for it here, then see it.
    LOCK TABLE ae_events.epochs IN SHARE ROW EXCLUSIVE MODE;
    SELECT e.system_identifier INTO latest_cluster
      FROM ae_events.epochs AS e ORDER BY e.first_id DESC LIMIT 1;
    any_epoch := FOUND;
    IF latest_cluster OPERATOR(pg_catalog.=) this_cluster THEN
        RETURN true;
    END IF;
    -- The first epoch covers every row already there (written in this cluster); a later one
    -- starts after every id drawn so far.
    INSERT INTO ae_events.epochs (first_id, system_identifier)
    VALUES (CASE WHEN any_epoch THEN pg_catalog.nextval('ae_events.outbox_id_seq') ELSE 0 END,
            this_cluster);
    RETURN false;
END
$$;

-- The epochs with their id ranges, and whether rows can still arrive in them (only the latest,
-- when it is this cluster's).
CREATE FUNCTION ae_events._epochs()
RETURNS TABLE (first_id bigint, next_first_id bigint, open boolean)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT e.first_id,
           lead(e.first_id) OVER (ORDER BY e.first_id),
           lead(e.first_id) OVER (ORDER BY e.first_id) IS NULL
               AND e.system_identifier OPERATOR(pg_catalog.=)
                   (SELECT c.system_identifier FROM pg_catalog.pg_control_system() AS c)
      FROM ae_events.epochs AS e
$$;

-- Rows whose txid is below this are final: the oldest transaction of the current snapshot that
-- is still running, not counting transactions known to run in other databases (they cannot
-- write this outbox, and a long one elsewhere would otherwise hold delivery back). A
-- transaction that ended since the snapshot was taken is still counted: conservative.
CREATE FUNCTION ae_events._delivery_horizon() RETURNS xid8
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    snapshot pg_snapshot := pg_catalog.pg_current_snapshot();
    horizon xid8;
BEGIN
    SELECT min(running) INTO horizon
      FROM pg_catalog.pg_snapshot_xip(snapshot) AS running
     WHERE NOT EXISTS (
               SELECT FROM pg_catalog.pg_stat_activity AS a
                WHERE a.backend_xid OPERATOR(pg_catalog.=) pg_catalog.xid(running)
                  AND a.datname IS DISTINCT FROM pg_catalog.current_database());
    RETURN coalesce(horizon, pg_catalog.pg_snapshot_xmax(snapshot));
END
$$;

CREATE FUNCTION ae_events._consumer(consumer text) RETURNS ae_events.consumers
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    found_consumer ae_events.consumers;
BEGIN
    SELECT * INTO found_consumer FROM ae_events.consumers AS c
     WHERE c.consumer OPERATOR(pg_catalog.=) _consumer.consumer;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'ae_events: there is no consumer "%"', consumer
            USING ERRCODE = 'undefined_object',
                  HINT = 'Create it with SELECT ae_events.create_consumer(''' || consumer || ''');';
    END IF;
    RETURN found_consumer;
END
$$;

-- A new consumer. from_start: deliver every event in the outbox; otherwise only events whose
-- transactions finish after this call (those still running are included).
CREATE FUNCTION ae_events.create_consumer(consumer text, from_start boolean DEFAULT false)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    horizon xid8 := ae_events._delivery_horizon();
    epoch_first_id bigint := -1;
    epoch_open boolean;
    last_txid xid8;
    last_id bigint;
BEGIN
    IF consumer IS NULL OR consumer OPERATOR(pg_catalog.=) '' THEN
        RAISE EXCEPTION 'ae_events: a consumer needs a non-empty name'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF NOT from_start THEN
        SELECT e.first_id, e.open INTO epoch_first_id, epoch_open
          FROM ae_events._epochs() AS e ORDER BY e.first_id DESC LIMIT 1;
        IF NOT FOUND THEN
            epoch_first_id := -1;  -- nothing written yet: every event is new
        ELSE
            SELECT o.txid, o.id INTO last_txid, last_id
              FROM ae_events.outbox AS o
             WHERE o.txid OPERATOR(pg_catalog.<)
                   CASE WHEN epoch_open THEN horizon ELSE '18446744073709551615'::xid8 END
               AND o.id OPERATOR(pg_catalog.>=) epoch_first_id
             ORDER BY o.txid DESC, o.id DESC
             LIMIT 1;
        END IF;
    END IF;
    INSERT INTO ae_events.consumers (consumer, cursor_epoch, cursor_txid, cursor_id)
    VALUES (consumer, epoch_first_id, coalesce(last_txid, '0'), coalesce(last_id, 0));
EXCEPTION WHEN unique_violation THEN
    RAISE EXCEPTION 'ae_events: the consumer "%" exists already', consumer
        USING ERRCODE = 'duplicate_object';
END
$$;

-- The consumer's next events after its cursor, in delivery order, at most max_events; only
-- events whose transactions are finished. The same events come again until they are acked.
-- A plain read: it takes no lock that blocks writers or other consumers.
CREATE FUNCTION ae_events.poll(consumer text, max_events integer DEFAULT 100)
RETURNS SETOF ae_events.outbox
LANGUAGE plpgsql STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    cursor_row ae_events.consumers := ae_events._consumer(consumer);
    horizon xid8 := ae_events._delivery_horizon();
    epoch record;
    after_txid xid8;
    after_id bigint;
    below_txid xid8;
    remaining integer := max_events;
    returned integer;
BEGIN
    IF max_events IS NULL OR max_events OPERATOR(pg_catalog.<) 1 THEN
        RAISE EXCEPTION 'ae_events: max_events must be at least 1, not %', max_events
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    FOR epoch IN SELECT * FROM ae_events._epochs() AS e
                  WHERE e.first_id OPERATOR(pg_catalog.>=) cursor_row.cursor_epoch
                     OR e.next_first_id IS NULL
                     OR e.next_first_id OPERATOR(pg_catalog.>) cursor_row.cursor_epoch
                  ORDER BY e.first_id LOOP
        -- Bounds as plain comparisons, so that the scan of outbox_delivery_idx starts at the
        -- cursor and stops at the horizon.
        IF epoch.first_id OPERATOR(pg_catalog.<=) cursor_row.cursor_epoch THEN
            after_txid := cursor_row.cursor_txid;
            after_id := cursor_row.cursor_id;
        ELSE
            after_txid := '0';
            after_id := -1;
        END IF;
        below_txid := CASE WHEN epoch.open THEN horizon ELSE '18446744073709551615'::xid8 END;
        RETURN QUERY
            SELECT o.*
              FROM ae_events.outbox AS o
             WHERE (o.txid, o.id) OPERATOR(pg_catalog.>) (after_txid, after_id)
               AND o.txid OPERATOR(pg_catalog.<) below_txid
               AND o.id OPERATOR(pg_catalog.>=) epoch.first_id
               AND o.id OPERATOR(pg_catalog.<)
                   coalesce(epoch.next_first_id, 9223372036854775807)
             ORDER BY o.txid, o.id
             LIMIT remaining;
        GET DIAGNOSTICS returned = ROW_COUNT;
        remaining := remaining OPERATOR(pg_catalog.-) returned;
        EXIT WHEN remaining OPERATOR(pg_catalog.<=) 0;
    END LOOP;
END
$$;

-- Move the consumer's cursor through the event with this id (and every event before it in
-- delivery order). Acking an event at or before the cursor changes nothing; an event that poll
-- could not have returned yet (its transaction is still running, or no such event) is refused.
-- Returns whether the cursor moved.
CREATE FUNCTION ae_events.ack(consumer text, through_id bigint)
RETURNS boolean
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    cursor_row ae_events.consumers := ae_events._consumer(consumer);
    horizon xid8 := ae_events._delivery_horizon();
    event_txid xid8;
    epoch_first_id bigint := -1;
    epoch_open boolean := false;
BEGIN
    SELECT o.txid INTO event_txid FROM ae_events.outbox AS o
     WHERE o.id OPERATOR(pg_catalog.=) through_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'ae_events: there is no event % to acknowledge', through_id
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT e.first_id, e.open INTO epoch_first_id, epoch_open FROM ae_events._epochs() AS e
     WHERE e.first_id OPERATOR(pg_catalog.<=) through_id
     ORDER BY e.first_id DESC LIMIT 1;
    epoch_first_id := coalesce(epoch_first_id, -1);
    epoch_open := coalesce(epoch_open, false);
    IF epoch_open AND event_txid OPERATOR(pg_catalog.>=) horizon THEN
        RAISE EXCEPTION 'ae_events: event % cannot be acknowledged yet: poll has not delivered it', through_id
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    IF (epoch_first_id, event_txid, through_id) OPERATOR(pg_catalog.<=)
       (cursor_row.cursor_epoch, cursor_row.cursor_txid, cursor_row.cursor_id) THEN
        RETURN false;
    END IF;
    UPDATE ae_events.consumers AS c
       SET cursor_epoch = epoch_first_id, cursor_txid = event_txid, cursor_id = through_id,
           acked_at = pg_catalog.now()
     WHERE c.consumer OPERATOR(pg_catalog.=) ack.consumer;
    RETURN true;
END
$$;

CREATE FUNCTION ae_events.drop_consumer(consumer text)
RETURNS boolean
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    DELETE FROM ae_events.consumers AS c WHERE c.consumer OPERATOR(pg_catalog.=) drop_consumer.consumer;
    RETURN FOUND;
END
$$;

-- Roles (cluster-wide: created once, kept when the extension is dropped). Another database may
-- be creating them at the same moment.
DO $$
BEGIN
    BEGIN
        CREATE ROLE ae_events_relay NOLOGIN;
    EXCEPTION WHEN duplicate_object OR unique_violation THEN
        NULL;
    END;
    BEGIN
        CREATE ROLE ae_events_reader NOLOGIN;
    EXCEPTION WHEN duplicate_object OR unique_violation THEN
        NULL;
    END;
END
$$;

REVOKE ALL ON FUNCTION ae_events._ensure_epoch() FROM PUBLIC;
REVOKE ALL ON FUNCTION ae_events._epoch_insert_replaces() FROM PUBLIC;
REVOKE ALL ON FUNCTION ae_events._epochs() FROM PUBLIC;
REVOKE ALL ON FUNCTION ae_events._delivery_horizon() FROM PUBLIC;
REVOKE ALL ON FUNCTION ae_events._consumer(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION ae_events.create_consumer(text, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION ae_events.poll(text, integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION ae_events.ack(text, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION ae_events.drop_consumer(text) FROM PUBLIC;
GRANT USAGE ON SCHEMA ae_events TO ae_events_relay, ae_events_reader;
GRANT SELECT ON ae_events.outbox TO ae_events_relay, ae_events_reader;
GRANT EXECUTE ON FUNCTION ae_events.create_consumer(text, boolean), ae_events.poll(text, integer),
    ae_events.ack(text, bigint), ae_events.drop_consumer(text) TO ae_events_relay;

-- For analysts: one row per event with the columns they filter on, an index for time ranges;
-- for DBAs: retention (prune) and stats.

-- occurred_at grows with the outbox (append-only), so a BRIN index finds a time range in a
-- million-row outbox with a few index pages and costs writers almost nothing; one instance's
-- history uses outbox_aggregate_idx.
CREATE INDEX outbox_occurred_at_idx ON ae_events.outbox USING brin (occurred_at)
    WITH (pages_per_range = 32, autosummarize = on);

-- Numbers are read only where the payload has a number (a payload rule may have hashed or
-- removed the field: the column is NULL then, not an error).
CREATE VIEW ae_events.events AS
SELECT o.id,
       o.event_id,
       o.subscription_key AS event,
       o.aggregate_id AS instance_id,
       o.snapshot_version,
       o.occurred_at,
       o.payload OPERATOR(pg_catalog.->>) 'instance_status' AS instance_status,
       CASE WHEN pg_catalog.jsonb_typeof(o.payload OPERATOR(pg_catalog.->) 'candidate_id') OPERATOR(pg_catalog.=) 'number'
            THEN (o.payload OPERATOR(pg_catalog.->>) 'candidate_id')::bigint END AS candidate_id,
       pg_catalog.concat_ws(' ',
           o.payload OPERATOR(pg_catalog.#>>) '{candidate,first_name}',
           o.payload OPERATOR(pg_catalog.#>>) '{candidate,last_name}') AS candidate_name,
       CASE WHEN pg_catalog.jsonb_typeof(o.payload OPERATOR(pg_catalog.->) 'catalog_assessment_id') OPERATOR(pg_catalog.=) 'number'
            THEN (o.payload OPERATOR(pg_catalog.->>) 'catalog_assessment_id')::bigint END AS catalog_assessment_id,
       o.payload OPERATOR(pg_catalog.#>>) '{catalog_assessment,assessment,name}' AS assessment_name,
       o.payload OPERATOR(pg_catalog.#>>) '{catalog_assessment,assessment,status}' AS assessment_status,
       o.payload OPERATOR(pg_catalog.#>>) '{catalog_assessment,catalog,name}' AS catalog_name,
       CASE WHEN pg_catalog.jsonb_typeof(o.payload OPERATOR(pg_catalog.->) 'measurement_id') OPERATOR(pg_catalog.=) 'number'
            THEN (o.payload OPERATOR(pg_catalog.->>) 'measurement_id')::bigint END AS measurement_id,
       o.payload OPERATOR(pg_catalog.#>>) '{measurement,status}' AS measurement_status,
       pg_catalog.jsonb_array_length(coalesce(
           o.payload OPERATOR(pg_catalog.#>) '{measurement,measurement_attributes}',
           '[]'::jsonb)) AS attribute_count,
       CASE WHEN pg_catalog.jsonb_typeof(o.payload OPERATOR(pg_catalog.->) 'score') OPERATOR(pg_catalog.=) 'number'
            THEN (o.payload OPERATOR(pg_catalog.->>) 'score')::numeric END AS score,
       o.txid
  FROM ae_events.outbox AS o
 WHERE o.aggregate_type OPERATOR(pg_catalog.=) 'test_instance';

COMMENT ON VIEW ae_events.events IS
    'ae_events: one row per event with the columns analysts filter on (payload fields as columns)';

-- Events after a consumer's cursor (not yet acknowledged), in delivery order.
CREATE FUNCTION ae_events._unacked(consumer ae_events.consumers)
RETURNS SETOF ae_events.outbox
LANGUAGE sql STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT o.*
      FROM ae_events._epochs() AS e
      JOIN ae_events.outbox AS o
        ON o.id OPERATOR(pg_catalog.>=) e.first_id
       AND (e.next_first_id IS NULL OR o.id OPERATOR(pg_catalog.<) e.next_first_id)
     WHERE (e.first_id, o.txid, o.id) OPERATOR(pg_catalog.>)
           (consumer.cursor_epoch, consumer.cursor_txid, consumer.cursor_id)
$$;

-- Delete events older than older_than, batch_size at a time, never one that a consumer has not
-- acknowledged. Returns how many were deleted.
CREATE FUNCTION ae_events.prune(older_than interval, batch_size integer DEFAULT 10000)
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    cutoff timestamptz := pg_catalog.now() OPERATOR(pg_catalog.-) older_than;
    deleted bigint := 0;
    batch bigint;
BEGIN
    IF older_than IS NULL OR older_than OPERATOR(pg_catalog.<) interval '0' THEN
        RAISE EXCEPTION 'ae_events: prune needs an age of zero or more, not %', older_than
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF batch_size IS NULL OR batch_size OPERATOR(pg_catalog.<) 1 THEN
        RAISE EXCEPTION 'ae_events: batch_size must be at least 1, not %', batch_size
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    LOOP
        DELETE FROM ae_events.outbox AS d
         WHERE d.id OPERATOR(pg_catalog.=) ANY (ARRAY(
                   SELECT o.id
                     FROM ae_events._epochs() AS e
                     JOIN ae_events.outbox AS o
                       ON o.id OPERATOR(pg_catalog.>=) e.first_id
                      AND (e.next_first_id IS NULL OR o.id OPERATOR(pg_catalog.<) e.next_first_id)
                    WHERE o.occurred_at OPERATOR(pg_catalog.<) cutoff
                      AND NOT EXISTS (
                              SELECT FROM ae_events.consumers AS c
                               WHERE (e.first_id, o.txid, o.id) OPERATOR(pg_catalog.>)
                                     (c.cursor_epoch, c.cursor_txid, c.cursor_id))
                    ORDER BY o.id
                    LIMIT batch_size));
        GET DIAGNOSTICS batch = ROW_COUNT;
        deleted := deleted OPERATOR(pg_catalog.+) batch;
        EXIT WHEN batch OPERATOR(pg_catalog.<) batch_size;
    END LOOP;
    RETURN deleted;
END
$$;

CREATE VIEW ae_events.stats AS
SELECT 'subscription'::text AS kind,
       o.subscription_key AS name,
       pg_catalog.count(*) AS events,
       pg_catalog.max(o.occurred_at) AS newest_event_at,
       NULL::bigint AS lag_events,
       NULL::interval AS lag_age,
       NULL::timestamptz AS last_ack_at,
       pg_catalog.pg_notification_queue_usage() AS notification_queue_usage
  FROM ae_events.outbox AS o
 GROUP BY o.subscription_key
UNION ALL
SELECT 'consumer'::text,
       c.consumer,
       NULL::bigint,
       NULL::timestamptz,
       lag.events,
       pg_catalog.now() OPERATOR(pg_catalog.-) lag.oldest,
       c.acked_at,
       pg_catalog.pg_notification_queue_usage()
  FROM ae_events.consumers AS c
 CROSS JOIN LATERAL (SELECT pg_catalog.count(*) AS events, pg_catalog.min(u.occurred_at) AS oldest
                       FROM ae_events._unacked(c) AS u) AS lag;

COMMENT ON VIEW ae_events.stats IS
    'ae_events: per subscription key its events and the newest one''s time; per consumer its unacknowledged events (lag_events), the age of the oldest (lag_age) and its last ack; the notification queue''s usage';

REVOKE ALL ON FUNCTION ae_events._unacked(ae_events.consumers) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION ae_events._unacked(ae_events.consumers) TO ae_events_reader;
REVOKE ALL ON FUNCTION ae_events.prune(interval, integer) FROM PUBLIC;
GRANT SELECT ON ae_events.events, ae_events.stats TO ae_events_reader;
