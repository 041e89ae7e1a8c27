-- Versioned snapshots: per instance, the version of its last event and a digest of that event's
-- payload (to tell an unchanged snapshot; keyed with ae_events.digest_keys below). Its rows are locked while a transaction writes
-- an instance's event, which orders versions by commit. Dumped with the database, so versions
-- continue after pg_restore.
CREATE TABLE ae_events.instance_state (
    instance_id bigint PRIMARY KEY,
    snapshot_version integer NOT NULL CHECK (snapshot_version >= 0),
    snapshot_digest bytea
);

COMMENT ON TABLE ae_events.instance_state IS
    'ae_events: per instance, the snapshot_version and payload digest of its last event (0/NULL: none yet)';

SELECT pg_catalog.pg_extension_config_dump('ae_events.instance_state', '');

-- The key of the payload digests in instance_state (src/digest.rs): a digest is a keyed function
-- of the payload (AES-256-GCM-SIV's tag), so that it tells nothing about a payload and nobody
-- without the key can make two payloads of one digest (an updated event left out). One random
-- key per database, made here, readable by the extension's owner only. Dumped with the database:
-- pg_restore adds the dumped key beside the one CREATE EXTENSION made, and the oldest one is in
-- use, so that the digests restored with instance_state still compare.
CREATE TABLE ae_events.digest_keys (
    key bytea NOT NULL CHECK (pg_catalog.octet_length(key) OPERATOR(pg_catalog.=) 32),
    created_at timestamptz NOT NULL DEFAULT pg_catalog.now()
);

COMMENT ON TABLE ae_events.digest_keys IS
    'ae_events: the key of the payload digests in instance_state (the oldest row is in use); secret';

INSERT INTO ae_events.digest_keys (key) VALUES (ae_events._strong_random_bytes(32));
SELECT pg_catalog.pg_extension_config_dump('ae_events.digest_keys', '');
REVOKE ALL ON ae_events.digest_keys FROM PUBLIC;
-- Backends cache the key (src/config_cache.rs); ALWAYS, as payload_rules_changed.
CREATE TRIGGER digest_keys_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON ae_events.digest_keys
    FOR EACH STATEMENT EXECUTE FUNCTION ae_events.configuration_changed();
ALTER TABLE ae_events.digest_keys ENABLE ALWAYS TRIGGER digest_keys_changed;
