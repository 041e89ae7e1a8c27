//! `ALTER EXTENSION ae_events UPDATE` from every earlier release (shared/contract/events.md §6): the upgraded
//! database has the same objects as a fresh install, keeps its events, and events keep flowing.

mod common;

use common::*;
use postgres::Client;
use std::sync::{Mutex, MutexGuard};

const EARLIER_RELEASES: &[&str] = &[
    "0.1.0", "0.2.0", "0.3.0", "0.4.0", "0.5.0", "0.6.0", "0.7.0",
];

/// Releases whose SQL objects this library writes events with (0.6.0 and 0.7.0 added webhook
/// delivery and its relays, which the write path does not use; 0.7.1 changed only the library);
/// with the others it refuses until the update.
const LIBRARY_WRITES_WITH: &[&str] = &["0.5.0", "0.6.0", "0.7.0"];

/// The scripts of earlier releases change the cluster-wide role `ae_events_snapshot` without a
/// lock (0.7.1's take one): the tests that run them in this shared cluster take turns.
fn earlier_release_scripts() -> MutexGuard<'static, ()> {
    static TURN: Mutex<()> = Mutex::new(());
    TURN.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The extension's objects as the catalog describes them, for comparing two databases.
fn extension_objects(client: &mut Client) -> Vec<String> {
    client
        .query(
            "SELECT pg_describe_object(classid, objid, 0) ||
                    CASE WHEN classid = 'pg_proc'::regclass
                         THEN ' returns ' || pg_get_function_result(objid) ELSE '' END
               FROM pg_depend
              WHERE refclassid = 'pg_extension'::regclass AND deptype = 'e'
                AND refobjid = (SELECT oid FROM pg_extension WHERE extname = 'ae_events')
             UNION ALL
             SELECT 'column ' || attrelid::regclass::text || '.' || attname || ' ' ||
                    format_type(atttypid, atttypmod) || ' not null ' || attnotnull::text ||
                    ' compression ' || attcompression::text || ' storage ' || attstorage::text
               FROM pg_attribute
              WHERE attrelid IN (SELECT oid FROM pg_class
                                  WHERE relnamespace = 'ae_events'::regnamespace AND relkind = 'r')
                AND attnum > 0 AND NOT attisdropped
             UNION ALL
             SELECT 'constraint ' || conrelid::regclass::text || ' ' || pg_get_constraintdef(oid)
               FROM pg_constraint WHERE connamespace = 'ae_events'::regnamespace
             UNION ALL
             -- Not a foreign key's internal triggers (named by oid; the constraint is compared).
             SELECT 'trigger ' || pg_get_triggerdef(oid) || ' enabled ' || tgenabled::text FROM pg_trigger
              WHERE NOT tgisinternal
                AND (tgname LIKE 'ae_events%'
                     OR tgrelid IN (SELECT oid FROM pg_class WHERE relnamespace = 'ae_events'::regnamespace))
             UNION ALL
             SELECT 'bubble_up ' || source_table || ' ' || enabled::text FROM ae_events.bubble_up
             UNION ALL
             SELECT 'grant ' || p.oid::regprocedure::text || ' ' || coalesce(p.proacl::text, 'default')
               FROM pg_proc AS p WHERE p.pronamespace = 'ae_events'::regnamespace
             UNION ALL
             -- The upgrade scripts repeat the sources' definitions: they must stay the same.
             SELECT 'definition ' || p.oid::regprocedure::text || ' ' || md5(p.prosrc) || ' '
                    || p.prosecdef::text || ' ' || coalesce(p.proconfig::text, '')
               FROM pg_proc AS p WHERE p.pronamespace = 'ae_events'::regnamespace
             UNION ALL
             -- The whole definition: language, volatility, strictness, parallel safety, body.
             SELECT 'function ' || pg_get_functiondef(p.oid)
               FROM pg_proc AS p WHERE p.pronamespace = 'ae_events'::regnamespace AND p.prokind = 'f'
             UNION ALL
             SELECT 'view ' || c.oid::regclass::text || ' ' || pg_get_viewdef(c.oid)
               FROM pg_class AS c WHERE c.relnamespace = 'ae_events'::regnamespace AND c.relkind = 'v'
             UNION ALL
             SELECT 'index ' || pg_get_indexdef(i.indexrelid)
               FROM pg_index AS i JOIN pg_class AS c ON c.oid = i.indrelid
              WHERE c.relnamespace = 'ae_events'::regnamespace
             UNION ALL
             SELECT 'table grant ' || c.oid::regclass::text || ' ' || coalesce(c.relacl::text, 'default')
               FROM pg_class AS c
              WHERE c.relnamespace IN ('ae_events'::regnamespace, 'ti'::regnamespace,
                                       'can'::regnamespace, 'ae'::regnamespace, 'tcf'::regnamespace)
                AND c.relkind IN ('r', 'v')
             UNION ALL
             -- What pg_dump includes of the extension's own tables and sequences.
             SELECT 'dumped ' || dumped::regclass::text
               FROM pg_extension AS e, unnest(e.extconfig) AS dumped
              WHERE e.extname = 'ae_events'
             ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|row| row.get::<_, Option<String>>(0).unwrap_or_default())
        .collect()
}

#[test]
fn update_from_each_earlier_release_matches_a_fresh_install_and_keeps_events() {
    let _turn = earlier_release_scripts();
    let cluster = Cluster::shared();
    let fresh_database = cluster.database("fresh", ForeignKeys::With);
    let mut fresh = cluster.connect(&fresh_database);
    let expected_objects = extension_objects(&mut fresh);
    let newest = extension_version(&mut fresh);

    for release in EARLIER_RELEASES {
        let database = cluster.empty_database("upgrade");
        let mut client = cluster.connect(&database);
        load_schema(&mut client, ForeignKeys::With);
        client
            .batch_execute(&format!("CREATE EXTENSION ae_events VERSION '{release}'"))
            .unwrap();
        client.batch_execute(MINIMAL_REFERENCE_DATA).unwrap();
        // Events the earlier release wrote (rows as it stored them).
        client
            .batch_execute(
                "INSERT INTO ae_events.outbox (event_id, subscription_key, event_type, aggregate_type,
                                               aggregate_id, snapshot_version, payload, occurred_at, txid)
                 VALUES (gen_random_uuid(), 'ae.test_instance.created', 'ae_test_instance_created',
                         'test_instance', 1, 1, '{\"id\": 1}', now(), pg_current_xact_id())",
            )
            .unwrap();

        if LIBRARY_WRITES_WITH.contains(release) {
            // The new library needs nothing the update adds to write events: the application
            // keeps working between the package upgrade and ALTER EXTENSION ... UPDATE. Without
            // a digest key yet, it records the SHA-256 digest the release recorded.
            insert_instance(&mut client, 3);
            let digest_length: i32 = client
                .query_one(
                    "SELECT length(snapshot_digest) FROM ae_events.instance_state
                      WHERE instance_id = 3",
                    &[],
                )
                .unwrap()
                .get(0);
            assert_eq!(digest_length, 32, "with {release}'s objects");
        } else {
            // Installed package newer than the catalog: an insert fails loudly, nothing is committed.
            let error = client
                .batch_execute(
                    "INSERT INTO ti.instance VALUES (2, NULL, NULL, NULL, 'in_progress', 1, 1, NULL, NULL, NULL, now(), 1, now(), 1)",
                )
                .unwrap_err();
            assert!(
                error_message(&error).contains("ALTER EXTENSION ae_events UPDATE"),
                "{error:?}"
            );
            assert_eq!(sqlstate(&error), "55000");
            let committed: i64 = client
                .query_one("SELECT count(*) FROM ti.instance", &[])
                .unwrap()
                .get(0);
            assert_eq!(committed, 0);
        }

        client
            .batch_execute("ALTER EXTENSION ae_events UPDATE")
            .unwrap();
        assert_eq!(extension_version(&mut client), newest, "from {release}");
        assert_eq!(
            extension_objects(&mut client),
            expected_objects,
            "objects after the update from {release}"
        );

        if LIBRARY_WRITES_WITH.contains(release) {
            // Its digest still compares: an update that changes nothing in it gives no event.
            let before = outbox_rows_unvalidated(&mut client).len();
            client
                .batch_execute("UPDATE ti.instance SET updated_by = updated_by WHERE id = 3")
                .unwrap();
            assert_eq!(outbox_rows_unvalidated(&mut client).len(), before);
        }
        insert_instance(&mut client, 2);
        // The first row was planted by hand: the others validate against their schema. (Instance
        // 3 is the one written before the update, if any.)
        let not_3 = |client: &mut Client| {
            outbox_rows_unvalidated(client)
                .into_iter()
                .filter(|row| row.aggregate_id != 3)
                .collect::<Vec<_>>()
        };
        let rows = not_3(&mut client);
        validate_rows(&mut client, &rows[1..]);
        assert_eq!(rows.len(), 2, "from {release}");
        assert_eq!(rows[0].payload, serde_json::json!({"id": 1}));
        assert_eq!(rows[1].aggregate_id, 2);
        assert!(rows[1].id > rows[0].id);
        assert_eq!(rows[1].payload["candidate"]["id"], serde_json::json!(1));

        // Updated events flow after the update, continuing the created event's version.
        client
            .batch_execute("UPDATE ti.instance SET score = 5 WHERE id = 2")
            .unwrap();
        let rows = not_3(&mut client);
        validate_rows(&mut client, &rows[1..]);
        assert_eq!(rows.len(), 3, "from {release}");
        assert_eq!(rows[2].subscription_key, "ae.test_instance.updated");
        assert_eq!(rows[2].snapshot_version, 2);
        assert_eq!(rows[2].payload["score"], serde_json::json!(5));
    }
}

/// 0.4.0's consumers had no owner and every relay could use any of them: after the update they
/// belong to `ae_events_relay`, so every relay keeps its access; new ones belong to their creator.
#[test]
fn update_from_0_4_0_gives_existing_consumers_to_every_relay() {
    let _turn = earlier_release_scripts();
    let cluster = Cluster::shared();
    let database = cluster.empty_database("upgrade_consumers");
    let mut client = cluster.connect(&database);
    load_schema(&mut client, ForeignKeys::With);
    let relay = format!("{database}_relay");
    client
        .batch_execute(&format!(
            "CREATE EXTENSION ae_events VERSION '0.4.0';
             SELECT ae_events.create_consumer('old', true);
             ALTER EXTENSION ae_events UPDATE;
             CREATE ROLE {relay} LOGIN IN ROLE ae_events_relay;"
        ))
        .unwrap();
    let owner: String = client
        .query_one(
            "SELECT owner::text FROM ae_events.consumers WHERE consumer = 'old'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(owner, "ae_events_relay");
    let mut relay_client = cluster.connect_as(&database, &relay);
    relay_client
        .batch_execute("SELECT * FROM ae_events.poll('old')")
        .unwrap();
    relay_client
        .batch_execute("SELECT ae_events.create_consumer('new')")
        .unwrap();
    let owner: String = client
        .query_one(
            "SELECT owner::text FROM ae_events.consumers WHERE consumer = 'new'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(owner, relay);
}

/// A DBA updating every database of a cluster at once: the role the pass reads as is the
/// cluster's, and the second update used to fail with "tuple concurrently updated" once the
/// first committed its change of that role.
#[test]
fn databases_of_one_cluster_can_be_updated_at_the_same_moment() {
    let _turn = earlier_release_scripts();
    let cluster = Cluster::shared();
    let mut clients: Vec<Client> = ["concurrent_a", "concurrent_b"]
        .into_iter()
        .map(|name| {
            let database = cluster.empty_database(name);
            let mut client = cluster.connect(&database);
            load_schema(&mut client, ForeignKeys::With);
            // 0.7.0 leaves the role without BYPASSRLS, which the update to 0.7.1 gives it.
            client
                .batch_execute("CREATE EXTENSION ae_events VERSION '0.7.0'")
                .unwrap();
            client
        })
        .collect();
    let mut second = clients.pop().unwrap();
    let mut first = clients.pop().unwrap();
    first
        .batch_execute("BEGIN; ALTER EXTENSION ae_events UPDATE")
        .unwrap();
    let second_pid: i32 = second
        .query_one("SELECT pg_backend_pid()", &[])
        .unwrap()
        .get(0);
    let second_update = std::thread::spawn(move || {
        let outcome = second.batch_execute("ALTER EXTENSION ae_events UPDATE");
        (second, outcome)
    });
    // The second update is waiting on the first before the first commits.
    let mut waiting = false;
    for _ in 0..500 {
        let waits: bool = first
            .query_one(
                "SELECT count(*) > 0 FROM pg_stat_activity WHERE pid = $1 AND wait_event_type = 'Lock'",
                &[&second_pid],
            )
            .unwrap()
            .get(0);
        if waits {
            waiting = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(waiting, "the second update never waited on the first");
    first.batch_execute("COMMIT").unwrap();
    let (mut second, outcome) = second_update.join().unwrap();
    outcome.unwrap_or_else(|error| panic!("the second update failed: {error:?}"));
    for client in [&mut first, &mut second] {
        let bypasses: bool = client
            .query_one(
                "SELECT rolbypassrls FROM pg_authid WHERE rolname = 'ae_events_snapshot'",
                &[],
            )
            .unwrap()
            .get(0);
        assert!(bypasses);
        let (installed, newest): (String, String) = client
            .query_one(
                "SELECT e.extversion, a.default_version FROM pg_extension AS e
                   JOIN pg_available_extensions AS a ON a.name = e.extname
                  WHERE e.extname = 'ae_events'",
                &[],
            )
            .map(|row| (row.get(0), row.get(1)))
            .unwrap();
        assert_eq!(installed, newest);
    }
}
