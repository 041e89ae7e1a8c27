-- ae_events 0.4.0 -> 0.5.0: security. The pass reads the application's tables as the NOLOGIN
-- role ae_events_snapshot (SELECT on the source tables, granted by attach()) instead of the
-- extension's owner; the trigger functions are not executable by PUBLIC and refuse other tables;
-- notification settings are the superuser's; consumers belong to the role that created them
-- (existing ones to ae_events_relay, as before: every relay may use them); NULL arguments get
-- clear errors; ae_events.delivery_blockers() shows what holds consumers back.
\echo Use "ALTER EXTENSION ae_events UPDATE TO '0.5.0'" to load this file. \quit

ALTER TABLE ae_events.consumers ADD COLUMN owner name;
UPDATE ae_events.consumers SET owner = 'ae_events_relay';
ALTER TABLE ae_events.consumers ALTER COLUMN owner SET NOT NULL;

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
CREATE OR REPLACE FUNCTION ae_events._consumer(consumer text) RETURNS ae_events.consumers
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

-- A new consumer. from_start: deliver every event in the outbox; otherwise only events whose
-- transactions finish after this call (those still running are included).
CREATE OR REPLACE FUNCTION ae_events.create_consumer(consumer text, from_start boolean DEFAULT false)
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
    INSERT INTO ae_events.consumers (consumer, owner, cursor_epoch, cursor_txid, cursor_id)
    VALUES (consumer, ae_events._calling_role(), epoch_first_id, coalesce(last_txid, '0'),
            coalesce(last_id, 0));
EXCEPTION WHEN unique_violation THEN
    RAISE EXCEPTION 'ae_events: the consumer % exists already', pg_catalog.quote_literal(consumer)
        USING ERRCODE = 'duplicate_object';
END
$$;

-- Move the consumer's cursor through the event with this id (and every event before it in
-- delivery order). Acking an event at or before the cursor changes nothing; an event that poll
-- could not have returned yet (its transaction is still running, or no such event) is refused.
-- Returns whether the cursor moved.
CREATE OR REPLACE FUNCTION ae_events.ack(consumer text, through_id bigint)
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

CREATE OR REPLACE FUNCTION ae_events.drop_consumer(consumer text)
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

REVOKE ALL ON FUNCTION ae_events._calling_role() FROM PUBLIC;
REVOKE ALL ON FUNCTION ae_events._require_consumer_name(text) FROM PUBLIC;

-- The transactions of this database that hold delivery back: poll returns only events of
-- transactions older than every transaction still running here that has a transaction id
-- (_delivery_horizon), so one left open (idle in transaction) stalls every consumer. Oldest
-- first; holds_horizon marks the one at the horizon now. SECURITY DEFINER so that a relay or a
-- reader sees other roles' sessions; it shows no query text.
CREATE FUNCTION ae_events.delivery_blockers()
RETURNS TABLE (pid integer, role name, application_name text, backend_xid xid,
               transaction_started_at timestamptz, transaction_age interval, state text,
               holds_horizon boolean)
LANGUAGE sql STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT a.pid, a.usename, a.application_name, a.backend_xid, a.xact_start,
           pg_catalog.now() OPERATOR(pg_catalog.-) a.xact_start, a.state,
           pg_catalog.row_number() OVER (ORDER BY pg_catalog.age(a.backend_xid) DESC)
               OPERATOR(pg_catalog.=) 1
      FROM pg_catalog.pg_stat_activity AS a
     WHERE a.datname OPERATOR(pg_catalog.=) pg_catalog.current_database()
       AND a.backend_xid IS NOT NULL
       AND a.pid OPERATOR(pg_catalog.<>) pg_catalog.pg_backend_pid()
     ORDER BY pg_catalog.age(a.backend_xid) DESC
$$;

COMMENT ON FUNCTION ae_events.delivery_blockers() IS
    'ae_events: transactions of this database that hold consumers back (oldest first); set idle_in_transaction_session_timeout so that none stays open for long';

REVOKE ALL ON FUNCTION ae_events.delivery_blockers() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION ae_events.delivery_blockers() TO ae_events_reader, ae_events_relay;

-- The trigger functions record changes that the pass turns into events as the extension's owner:
-- only attach() may put them on a table (it runs as the DBA). Each also refuses to run on a table
-- other than its own (src/sources.rs, require_trigger_on).
REVOKE ALL ON FUNCTION ae_events.capture_instance_insert() FROM PUBLIC;
REVOKE ALL ON FUNCTION ae_events.capture_change() FROM PUBLIC;
REVOKE ALL ON FUNCTION ae_events.emit_pending_events() FROM PUBLIC;

-- The role the pass reads the application's tables as (src/privileges.rs): NOLOGIN, no
-- attributes, no members; attach() grants it SELECT on the source tables and nothing else holds
-- it. Cluster-wide like the other roles: created once, kept when the extension is dropped.
DO $$
BEGIN
    BEGIN
        CREATE ROLE ae_events_snapshot NOLOGIN NOINHERIT;
    EXCEPTION WHEN duplicate_object OR unique_violation THEN
        NULL;
    END;
END
$$;
-- A role of that name made by someone else before: stripped of what it must not have. (Only
-- when needed: installs in other databases may run at the same moment.)
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_catalog.pg_authid AS a
                WHERE a.rolname OPERATOR(pg_catalog.=) 'ae_events_snapshot'
                  AND (a.rolcanlogin OR a.rolsuper OR a.rolcreatedb OR a.rolcreaterole
                       OR a.rolinherit OR a.rolreplication OR a.rolbypassrls
                       OR a.rolpassword IS NOT NULL)) THEN
        ALTER ROLE ae_events_snapshot NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT
            NOREPLICATION NOBYPASSRLS PASSWORD NULL;
    END IF;
    IF EXISTS (SELECT FROM pg_catalog.pg_auth_members AS m
                WHERE m.roleid OPERATOR(pg_catalog.=) 'ae_events_snapshot'::pg_catalog.regrole) THEN
        RAISE EXCEPTION 'ae_events: the role ae_events_snapshot has members'
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'The extension reads the application''s tables as this role; no other role may hold it. REVOKE ae_events_snapshot FROM each member, then try again.';
    END IF;
END
$$;

-- Grants the snapshot role SELECT on the source tables.
SELECT ae_events.attach();
