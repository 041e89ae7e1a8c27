//! Install, attach, detach, dump/restore and removal (shared/contract/events.md §6).

mod common;

use common::*;
use postgres::Client;

/// The triggers attach() puts on ti.instance.
const EXTENSION_TRIGGERS: [&str; 4] = [
    "ae_events_capture_changed",
    "ae_events_capture_created",
    "ae_events_emit",
    "ae_events_emit_changed",
];

fn extension_triggers(client: &mut Client) -> Vec<String> {
    client
        .query(
            "SELECT tgname::text FROM pg_trigger WHERE tgrelid = 'ti.instance'::regclass AND tgname LIKE 'ae_events%' ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect()
}

#[test]
fn create_extension_before_the_tables_then_attach() {
    let cluster = Cluster::shared();
    let database = cluster.empty_database("early");
    let (mut client, notices) = connect_collecting_notices(cluster, &database);
    client.batch_execute("CREATE EXTENSION ae_events").unwrap();
    assert!(
        notices
            .lock()
            .unwrap()
            .iter()
            .any(|n| n.starts_with("NOTICE ae_events:") && n.contains("ti.instance")),
        "{notices:?}"
    );

    load_schema(&mut client, ForeignKeys::With);
    client.batch_execute(MINIMAL_REFERENCE_DATA).unwrap();
    insert_instance(&mut client, 1); // not attached yet: no event
    assert!(outbox_instances(&mut client).is_empty());

    let attached: bool = client
        .query_one("SELECT ae_events.attach()", &[])
        .unwrap()
        .get(0);
    let attached_again: bool = client
        .query_one("SELECT ae_events.attach()", &[])
        .unwrap()
        .get(0);
    assert!(attached && attached_again);
    assert_eq!(extension_triggers(&mut client), EXTENSION_TRIGGERS);
    insert_instance(&mut client, 2);
    assert_eq!(
        outbox_instances(&mut client),
        vec![2],
        "one event: attaching twice added nothing"
    );
}

#[test]
fn detach_stops_events_and_attach_resumes_them() {
    let cluster = Cluster::shared();
    let database = cluster.database("detach", ForeignKeys::With);
    let mut client = cluster.connect(&database);
    client.batch_execute(MINIMAL_REFERENCE_DATA).unwrap();
    client.batch_execute("SELECT ae_events.detach()").unwrap();
    assert!(extension_triggers(&mut client).is_empty());
    insert_instance(&mut client, 1);
    client.batch_execute("SELECT ae_events.attach()").unwrap();
    insert_instance(&mut client, 2);
    assert_eq!(outbox_instances(&mut client), vec![2]);
}

#[test]
fn dump_and_restore_bring_back_triggers_and_outbox_and_events_keep_flowing() {
    let cluster = Cluster::shared();
    let source = cluster.database("dumped", ForeignKeys::With);
    let mut client = cluster.connect(&source);
    client.batch_execute(SEED_EXAMPLE).unwrap();
    client.batch_execute(MINIMAL_REFERENCE_DATA).unwrap();
    insert_instance(&mut client, 2);
    // Versions and the bubble-up choice are state that must survive too.
    client
        .batch_execute(
            "UPDATE ti.instance SET score = 1 WHERE id = 789;
             UPDATE ae_events.bubble_up SET enabled = true WHERE source_table = 'ae.catalog';
             UPDATE ae_events.bubble_up SET enabled = false WHERE source_table = 'can.candidate';
             INSERT INTO ae_events.payload_rules VALUES ('candidate.email', 'remove');",
        )
        .unwrap();
    let before = outbox_rows(&mut client);
    assert_eq!(before.len(), 3);

    let archive = dump(cluster, &source);
    let target = cluster.empty_database("restored");
    restore(cluster, &target, &archive);

    let mut restored = cluster.connect(&target);
    assert_eq!(extension_triggers(&mut restored), EXTENSION_TRIGGERS);
    let after = outbox_rows(&mut restored);
    assert_eq!(after.len(), 3, "restoring the rows emitted no new events");
    for (old, new) in before.iter().zip(&after) {
        assert_eq!(
            (old.id, &old.event_id, &old.payload, &old.txid),
            (new.id, &new.event_id, &new.payload, &new.txid)
        );
    }
    let settings: Vec<(String, bool)> = restored
        .query(
            "SELECT source_table, enabled FROM ae_events.bubble_up
              WHERE source_table IN ('ae.catalog', 'can.candidate', 'ti.instance') ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    assert_eq!(
        settings,
        [
            ("ae.catalog".to_owned(), true),
            ("can.candidate".to_owned(), false),
            ("ti.instance".to_owned(), true)
        ]
    );
    let settings_rows: i64 = restored
        .query_one("SELECT count(*) FROM ae_events.bubble_up", &[])
        .unwrap()
        .get(0);
    assert_eq!(settings_rows, 11);
    insert_instance(&mut restored, 3);
    restored
        .batch_execute(
            "UPDATE ti.instance SET score = 2 WHERE id = 789;
             UPDATE can.candidate SET first_name = 'Not bubbled' WHERE id = 101;",
        )
        .unwrap();
    let rows = outbox_rows(&mut restored);
    assert_eq!(
        rows.iter()
            .map(|r| (r.aggregate_id, r.snapshot_version))
            .collect::<Vec<_>>(),
        vec![(789, 1), (2, 1), (789, 2), (3, 1), (789, 3)],
        "versions continue after the restored state; can.candidate stays off"
    );
    assert!(
        rows[3].id > rows[2].id,
        "new ids continue after the restored ones"
    );
    assert!(
        rows[3].payload["candidate"].get("email").is_none(),
        "the payload rules were restored"
    );
}

#[test]
fn drop_extension_needs_detach_or_cascade_and_never_touches_the_application_tables() {
    let cluster = Cluster::shared();
    let database = cluster.database("dropped", ForeignKeys::With);
    let mut client = cluster.connect(&database);
    client.batch_execute(MINIMAL_REFERENCE_DATA).unwrap();
    insert_instance(&mut client, 1);

    let refused = client
        .batch_execute("DROP EXTENSION ae_events")
        .unwrap_err();
    assert_eq!(refused.code().unwrap().code(), "2BP01", "{refused:?}");

    client
        .batch_execute("SELECT ae_events.detach(); DROP EXTENSION ae_events")
        .unwrap();
    insert_instance(&mut client, 2);
    let count: i64 = client
        .query_one("SELECT count(*) FROM ti.instance", &[])
        .unwrap()
        .get(0);
    assert_eq!(count, 2);

    client
        .batch_execute("CREATE EXTENSION ae_events; DROP EXTENSION ae_events CASCADE")
        .unwrap();
    assert!(extension_triggers(&mut client).is_empty());
    insert_instance(&mut client, 3);
    let count: i64 = client
        .query_one("SELECT count(*) FROM ti.instance", &[])
        .unwrap()
        .get(0);
    assert_eq!(count, 3);
    // The extension's objects are gone; its schema stays, empty, for `DROP SCHEMA ae_events`.
    let outbox_gone: bool = client
        .query_one("SELECT to_regclass('ae_events.outbox') IS NULL", &[])
        .unwrap()
        .get(0);
    assert!(outbox_gone);
    client.batch_execute("DROP SCHEMA ae_events").unwrap();
}

/// outbox.sql compresses payloads with lz4 where the server was built with it and keeps the
/// default (pglz) where it was not (PostgreSQL 18 from PyPI has no lz4; Debian's 15 has it):
/// either way events are written and read back whole. Each CI major covers one side.
#[test]
fn outbox_payloads_use_lz4_exactly_when_the_server_has_it() {
    let (_database, mut client) = seeded_database("lz4");
    let server_has_lz4 =
        match client.batch_execute("CREATE TEMP TABLE lz4_probe (x text COMPRESSION lz4)") {
            Ok(()) => true,
            Err(error) if sqlstate(&error) == "0A000" => false,
            Err(error) => panic!("probe for lz4: {error}"),
        };
    let column_method: String = client
        .query_one(
            "SELECT attcompression::text FROM pg_attribute \
             WHERE attrelid = 'ae_events.outbox'::regclass AND attname = 'payload'",
            &[],
        )
        .unwrap()
        .get(0);
    // 'l' is lz4; '' is the server's default_toast_compression (pglz).
    assert_eq!(column_method, if server_has_lz4 { "l" } else { "" });

    // A payload well over the 2 kB at which PostgreSQL compresses a row.
    let blob = "ae_events compresses this. ".repeat(1000);
    client
        .execute(
            "UPDATE can.candidate SET cf = jsonb_build_object('blob', $1::text) WHERE id = 101",
            &[&blob],
        )
        .unwrap();
    client
        .batch_execute(
            "INSERT INTO ti.instance VALUES (790, NULL, NULL, NULL, 'in_progress', 101, 202, NULL, NULL, NULL, now(), 1, now(), 1)",
        )
        .unwrap();
    let row = client
        .query_one(
            "SELECT pg_column_compression(payload), payload -> 'candidate' -> 'cf' ->> 'blob' \
             FROM ae_events.outbox WHERE aggregate_id = 790 AND event_type = 'ae_test_instance_created'",
            &[],
        )
        .unwrap();
    let stored_method: Option<String> = row.get(0);
    let read_back: String = row.get(1);
    assert_eq!(
        stored_method.as_deref(),
        Some(if server_has_lz4 { "lz4" } else { "pglz" })
    );
    assert_eq!(read_back, blob);
}
