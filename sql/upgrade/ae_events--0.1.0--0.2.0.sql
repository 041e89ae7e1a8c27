-- ae_events 0.1.0 -> 0.2.0: payloads are written as binary jsonb by the library (the internal
-- row source returns jsonb instead of text), and the outbox compresses payloads with lz4.
\echo Use "ALTER EXTENSION ae_events UPDATE TO '0.2.0'" to load this file. \quit

DROP FUNCTION ae_events._drain_events();

CREATE FUNCTION ae_events._pending_outbox_rows() RETURNS TABLE (
    id bigint,
    event_id uuid,
    subscription_key text,
    event_type text,
    aggregate_type text,
    aggregate_id bigint,
    snapshot_version integer,
    payload jsonb,
    occurred_at timestamptz
)
STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', '_pending_outbox_rows_wrapper';

REVOKE ALL ON FUNCTION ae_events._pending_outbox_rows() FROM PUBLIC;

-- Rows written from now on stay in the row and are compressed with lz4; existing rows keep
-- their storage until rewritten.
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
