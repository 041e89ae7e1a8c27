-- Versioned snapshots: per instance, the version of its last event and the SHA-256 of that
-- event's payload (to tell an unchanged snapshot). Its rows are locked while a transaction writes
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
