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
    -- The role that created it: it and its members may poll, ack and drop it (and superusers).
    -- A name, not an oid, so that it survives pg_restore into another cluster.
    owner name NOT NULL,
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

-- The role that called the API: the role set by SET ROLE, else the session's user. (Inside a
-- SECURITY DEFINER function current_user is the definer; SET ROLE is checked by PostgreSQL.)
CREATE FUNCTION ae_events._calling_role() RETURNS name
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce(NULLIF(pg_catalog.current_setting('role'), 'none')::name,
                    SESSION_USER)
$$;

-- A consumer name given to the API: NULL is refused with a clear error.
CREATE FUNCTION ae_events._require_consumer_name(consumer text) RETURNS void
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF consumer IS NULL THEN
        RAISE EXCEPTION 'ae_events: a consumer name is needed, not NULL'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
END
$$;

-- The consumer, if the calling role may act on it: its owner, a member of its owner, or a
-- superuser. Others get 42501 (they learn that the name is taken, nothing more).
CREATE FUNCTION ae_events._consumer(consumer text) RETURNS ae_events.consumers
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    found_consumer ae_events.consumers;
    caller name := ae_events._calling_role();
BEGIN
    PERFORM ae_events._require_consumer_name(consumer);
    SELECT * INTO found_consumer FROM ae_events.consumers AS c
     WHERE c.consumer OPERATOR(pg_catalog.=) _consumer.consumer;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'ae_events: there is no consumer %', pg_catalog.quote_literal(consumer)
            USING ERRCODE = 'undefined_object',
                  HINT = pg_catalog.format('Create it with SELECT ae_events.create_consumer(%L);',
                                           consumer);
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles AS r
                    WHERE r.rolname OPERATOR(pg_catalog.=) caller AND r.rolsuper)
       AND NOT (EXISTS (SELECT FROM pg_catalog.pg_roles AS r
                         WHERE r.rolname OPERATOR(pg_catalog.=) found_consumer.owner)
                AND pg_catalog.pg_has_role(caller, found_consumer.owner, 'MEMBER')) THEN
        RAISE EXCEPTION 'ae_events: the consumer % belongs to role %, not to %',
                pg_catalog.quote_literal(consumer), pg_catalog.quote_ident(found_consumer.owner),
                pg_catalog.quote_ident(caller)
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'Its owner, a member of its owner or a superuser may use it.';
    END IF;
    RETURN found_consumer;
END
$$;

-- Where a cursor that starts "now" stands: after every event that is final now (before every
-- event when there is none). create_consumer and create_endpoint start there.
CREATE FUNCTION ae_events._position_now(OUT position_epoch bigint, OUT position_txid xid8,
                                        OUT position_id bigint)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    horizon xid8 := ae_events._delivery_horizon();
    epoch_open boolean;
BEGIN
    position_epoch := -1;  -- nothing written yet: every event is new
    position_txid := '0';
    position_id := 0;
    SELECT e.first_id, e.open INTO position_epoch, epoch_open
      FROM ae_events._epochs() AS e ORDER BY e.first_id DESC LIMIT 1;
    IF NOT FOUND THEN
        position_epoch := -1;
        RETURN;
    END IF;
    SELECT o.txid, o.id INTO position_txid, position_id
      FROM ae_events.outbox AS o
     WHERE o.txid OPERATOR(pg_catalog.<)
           CASE WHEN epoch_open THEN horizon ELSE '18446744073709551615'::xid8 END
       AND o.id OPERATOR(pg_catalog.>=) position_epoch
     ORDER BY o.txid DESC, o.id DESC
     LIMIT 1;
    IF NOT FOUND THEN
        position_txid := '0';
        position_id := 0;
    END IF;
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
    start_epoch bigint := -1;
    start_txid xid8 := '0';
    start_id bigint := 0;
BEGIN
    PERFORM ae_events._require_consumer_name(consumer);
    IF consumer OPERATOR(pg_catalog.=) '' THEN
        RAISE EXCEPTION 'ae_events: a consumer needs a non-empty name'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF from_start IS NULL THEN
        RAISE EXCEPTION 'ae_events: from_start must be true or false, not NULL'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF NOT from_start THEN
        SELECT p.position_epoch, p.position_txid, p.position_id
          INTO start_epoch, start_txid, start_id
          FROM ae_events._position_now() AS p;
    END IF;
    INSERT INTO ae_events.consumers (consumer, owner, cursor_epoch, cursor_txid, cursor_id)
    VALUES (consumer, ae_events._calling_role(), start_epoch, start_txid, start_id);
EXCEPTION WHEN unique_violation THEN
    RAISE EXCEPTION 'ae_events: the consumer % exists already', pg_catalog.quote_literal(consumer)
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
    IF through_id IS NULL THEN
        RAISE EXCEPTION 'ae_events: ack needs the id of an event, not NULL'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
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
    PERFORM ae_events._require_consumer_name(consumer);
    IF NOT EXISTS (SELECT FROM ae_events.consumers AS c
                    WHERE c.consumer OPERATOR(pg_catalog.=) drop_consumer.consumer) THEN
        RETURN false;
    END IF;
    PERFORM ae_events._consumer(consumer);  -- refuses a role that may not act on it
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
REVOKE ALL ON FUNCTION ae_events._calling_role() FROM PUBLIC;
REVOKE ALL ON FUNCTION ae_events._position_now() FROM PUBLIC;
REVOKE ALL ON FUNCTION ae_events._require_consumer_name(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION ae_events.create_consumer(text, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION ae_events.poll(text, integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION ae_events.ack(text, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION ae_events.drop_consumer(text) FROM PUBLIC;
GRANT USAGE ON SCHEMA ae_events TO ae_events_relay, ae_events_reader;
GRANT SELECT ON ae_events.outbox TO ae_events_relay, ae_events_reader;
GRANT EXECUTE ON FUNCTION ae_events.create_consumer(text, boolean), ae_events.poll(text, integer),
    ae_events.ack(text, bigint), ae_events.drop_consumer(text) TO ae_events_relay;
