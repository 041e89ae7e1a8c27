-- ae_events 0.7.0 -> 0.7.1. The library changed (performance round 2): outbox rows of large
-- transactions written in batches, event ids of UUID version 7, payload digests (the
-- unchanged-snapshot check) in BLAKE3, with 0.7.0's SHA-256 digests still recognized, and the
-- payload rules cached per backend. For the cache, a statement trigger on
-- ae_events.payload_rules invalidates the table's relcache entry on any change (until it exists,
-- the library reads the rules for every commit, as 0.7.0 did).

\echo Use "ALTER EXTENSION ae_events UPDATE TO '0.7.1'" to load this file. \quit

CREATE FUNCTION ae_events.payload_rules_changed() RETURNS trigger
LANGUAGE c
AS 'MODULE_PATHNAME', 'payload_rules_changed_wrapper';

CREATE TRIGGER payload_rules_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON ae_events.payload_rules
    FOR EACH STATEMENT EXECUTE FUNCTION ae_events.payload_rules_changed();
ALTER TABLE ae_events.payload_rules ENABLE ALWAYS TRIGGER payload_rules_changed;
REVOKE ALL ON FUNCTION ae_events.payload_rules_changed() FROM PUBLIC;
