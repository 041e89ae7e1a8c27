-- Bubble-up settings: which source tables' changes emit ae.test_instance.updated events for the
-- instances whose snapshots they are part of. Instance-specific tables are on, reference data is
-- off (a renamed catalog would otherwise reach every instance ever taken). Read once per
-- transaction, when it first changes a source table (from a per-backend cache that a change
-- here invalidates, src/config_cache.rs); the triggers stay attached either way.
CREATE TABLE ae_events.bubble_up (
    source_table text PRIMARY KEY CHECK (source_table IN (
        'ti.instance', 'can.candidate', 'tcf.measurement', 'tcf.measurement_attribute',
        'ae.catalog_assessment', 'ae.assessment', 'ae.catalog',
        'tcf.section_configuration_attribute', 'tcf.attribute', 'tcf.skill', 'tcf.ordinal')),
    enabled boolean NOT NULL
);

COMMENT ON TABLE ae_events.bubble_up IS
    'ae_events: per source table, whether its changes emit updated events (applies from the next transaction)';

INSERT INTO ae_events.bubble_up (source_table, enabled) VALUES
    ('ti.instance', true),
    ('can.candidate', true),
    ('tcf.measurement', true),
    ('tcf.measurement_attribute', true),
    ('ae.catalog_assessment', false),
    ('ae.assessment', false),
    ('ae.catalog', false),
    ('tcf.section_configuration_attribute', false),
    ('tcf.attribute', false),
    ('tcf.skill', false),
    ('tcf.ordinal', false);

-- pg_restore runs CREATE EXTENSION (which inserts the rows above) and then restores the dumped
-- rows: an INSERT of a table that has a row sets its setting instead of failing.
CREATE FUNCTION ae_events._bubble_up_insert_sets() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    UPDATE ae_events.bubble_up AS b
       SET enabled = NEW.enabled
     WHERE b.source_table OPERATOR(pg_catalog.=) NEW.source_table;
    IF FOUND THEN
        RETURN NULL;
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER insert_sets_existing BEFORE INSERT ON ae_events.bubble_up
    FOR EACH ROW EXECUTE FUNCTION ae_events._bubble_up_insert_sets();

SELECT pg_catalog.pg_extension_config_dump('ae_events.bubble_up', '');

-- Backends cache the settings (src/config_cache.rs); ALWAYS, as payload_rules_changed.
CREATE TRIGGER bubble_up_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON ae_events.bubble_up
    FOR EACH STATEMENT EXECUTE FUNCTION ae_events.configuration_changed();
ALTER TABLE ae_events.bubble_up ENABLE ALWAYS TRIGGER bubble_up_changed;
