-- What many users run instead of an enriched outbox: a row trigger, in the style of Hasura's
-- event triggers, writing row_to_json(NEW) of the instance alone (no candidate, assessment or
-- measurement, no versions) into an event table with a uuid key and a pending-events index.
-- No notification (Hasura polls). The benchmark's "Hasura-style" comparator.
CREATE SCHEMA bench;

CREATE TABLE bench.event_log (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    schema_name text NOT NULL,
    table_name text NOT NULL,
    trigger_name text NOT NULL,
    payload jsonb NOT NULL,
    delivered boolean NOT NULL DEFAULT false,
    error boolean NOT NULL DEFAULT false,
    tries integer NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now(),
    locked timestamptz,
    next_retry_at timestamptz
);
CREATE INDEX ON bench.event_log (created_at) WHERE delivered = false AND error = false;

CREATE FUNCTION bench.notify_instance_insert() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO bench.event_log (schema_name, table_name, trigger_name, payload)
    VALUES (TG_TABLE_SCHEMA, TG_TABLE_NAME, 'instance_insert',
            jsonb_build_object('op', TG_OP, 'data',
                               jsonb_build_object('old', NULL, 'new', row_to_json(NEW))));
    RETURN NULL;
END
$$;

CREATE TRIGGER bench_instance_insert AFTER INSERT ON ti.instance
FOR EACH ROW EXECUTE FUNCTION bench.notify_instance_insert();
