-- Roles are the cluster's and installs or updates in other databases of it may run at the same
-- moment: taken first, this lock (pg_authid is shared, so it is cluster-wide) lets one script at a
-- time create or change the extension's roles; a later lock, after a CREATE ROLE, could deadlock
-- with a second script waiting on that role. Logins are not blocked (they read pg_authid only).
LOCK TABLE pg_catalog.pg_authid IN SHARE ROW EXCLUSIVE MODE;

-- The append-only outbox (shared/contract/events.md §1). Column names are fixed: relays, analysts and
-- Debezium's outbox event router depend on them.
CREATE TABLE ae_events.outbox (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id uuid NOT NULL UNIQUE,
    subscription_key text NOT NULL,
    event_type text NOT NULL,
    aggregate_type text NOT NULL,
    aggregate_id bigint NOT NULL,
    snapshot_version integer NOT NULL,
    payload jsonb NOT NULL,
    occurred_at timestamptz NOT NULL,
    txid xid8 NOT NULL
);

COMMENT ON TABLE ae_events.outbox IS
    'ae_events: one row per event, append-only; written in the transaction that caused the event';

CREATE INDEX outbox_aggregate_idx ON ae_events.outbox (aggregate_type, aggregate_id, id);

-- Dump the rows and the position of the id sequence with the database, so that pg_restore brings
-- the log back and new events continue after the restored ids.
SELECT pg_catalog.pg_extension_config_dump('ae_events.outbox', '');
SELECT pg_catalog.pg_extension_config_dump('ae_events.outbox_id_seq', '');

-- Payloads are a few kB each. They stay in the row (MAIN: compressed, moved to the TOAST table
-- only if the row would not fit a page, so most events are one heap tuple) and are compressed
-- with lz4, several times faster than the default pglz, to write and to read. A server built
-- without lz4 keeps its default method.
-- The short text columns are MAIN too: otherwise PostgreSQL, shrinking a row over its 2 kB
-- target, moves them (24 bytes and more) to the TOAST table, one TOAST row and index entry each.
ALTER TABLE ae_events.outbox
    ALTER COLUMN payload SET STORAGE MAIN,
    ALTER COLUMN subscription_key SET STORAGE MAIN,
    ALTER COLUMN event_type SET STORAGE MAIN,
    ALTER COLUMN aggregate_type SET STORAGE MAIN;
DO $$
BEGIN
    ALTER TABLE ae_events.outbox ALTER COLUMN payload SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported THEN
    NULL;
END
$$;
