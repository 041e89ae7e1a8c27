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

-- Backends cache the rules (src/config_cache.rs): any change to them invalidates the table's
-- relcache entry, which empties every backend's cache once the change commits. ALWAYS, so that a
-- session with session_replication_role = replica (a logical replication apply) fires it too.
CREATE TRIGGER payload_rules_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON ae_events.payload_rules
    FOR EACH STATEMENT EXECUTE FUNCTION ae_events.configuration_changed();
ALTER TABLE ae_events.payload_rules ENABLE ALWAYS TRIGGER payload_rules_changed;
REVOKE ALL ON FUNCTION ae_events.configuration_changed() FROM PUBLIC;
