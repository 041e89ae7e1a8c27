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
