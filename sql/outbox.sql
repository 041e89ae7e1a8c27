-- The append-only outbox (contract: events.md §1). Column names are fixed: relays, analysts and
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

-- Payloads are a few kB each and compressed when written: lz4 is several times faster than the
-- default pglz, to write and to read. A server built without lz4 keeps its default.
DO $$
BEGIN
    ALTER TABLE ae_events.outbox ALTER COLUMN payload SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported THEN
    NULL;
END
$$;
