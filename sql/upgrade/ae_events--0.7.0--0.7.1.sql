-- ae_events 0.7.0 -> 0.7.1. The library changed (performance round 2): outbox rows of large
-- transactions written in batches, event ids of UUID version 7, payload digests (the
-- unchanged-snapshot check) in BLAKE3, with 0.7.0's SHA-256 digests still recognized, and the
-- payload rules and bubble-up settings cached per backend. For the caches, a statement trigger
-- on each of ae_events.payload_rules and ae_events.bubble_up invalidates the table's relcache
-- entry on any change (until they exist, the library reads both tables as 0.7.0 did).

\echo Use "ALTER EXTENSION ae_events UPDATE TO '0.7.1'" to load this file. \quit

CREATE FUNCTION ae_events.configuration_changed() RETURNS trigger
LANGUAGE c
AS 'MODULE_PATHNAME', 'configuration_changed_wrapper';

CREATE TRIGGER payload_rules_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON ae_events.payload_rules
    FOR EACH STATEMENT EXECUTE FUNCTION ae_events.configuration_changed();
ALTER TABLE ae_events.payload_rules ENABLE ALWAYS TRIGGER payload_rules_changed;
REVOKE ALL ON FUNCTION ae_events.configuration_changed() FROM PUBLIC;

CREATE TRIGGER bubble_up_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON ae_events.bubble_up
    FOR EACH STATEMENT EXECUTE FUNCTION ae_events.configuration_changed();
ALTER TABLE ae_events.bubble_up ENABLE ALWAYS TRIGGER bubble_up_changed;
