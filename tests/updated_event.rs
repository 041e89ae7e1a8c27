//! The updated event: bubble-up from each source table, one event per instance per transaction,
//! no event for an unchanged snapshot, versions in commit order, delete, snapshot() and resend().

mod common;

use common::*;
use postgres::Client;
use serde_json::{json, Value};
use std::time::Duration;

/// Beside the seed's instance 789 (candidate 101, catalog assessment 202 = assessment 303 +
/// catalog 404, measurement 505 with attribute 1 -> configuration 10 -> attribute 10 -> skill 5):
/// instance 790 (candidate 102, the same catalog assessment, measurement 506 with attribute 2,
/// configuration 10, ordinal 7) and instance 791 (candidate 101 again, catalog assessment 203 =
/// assessment 304 + catalog 405, no measurement).
const MORE_INSTANCES: &str = "
BEGIN;
INSERT INTO can.candidate VALUES (102, NULL, 8, 'b@example.com', 'Bo', NULL, NULL, NULL, NULL, true, NULL, NULL, NULL, '{}');
INSERT INTO ae.assessment VALUES (304, 'Go', 'senior', 'published', '2023-11-01T10:00:00Z', '2023-11-01T10:00:00Z');
INSERT INTO ae.catalog VALUES (405, 'Other', NULL);
INSERT INTO ae.catalog_assessment VALUES (203, 304, 405);
INSERT INTO tcf.ordinal VALUES (7, 'High', 'high', 3, 70, 100);
INSERT INTO tcf.measurement VALUES (506, 'done', '01:00:00', NULL, NULL, '2023-11-05T10:00:00Z', NULL, NULL);
INSERT INTO ti.instance VALUES (790, NULL, NULL, NULL, 'in_progress', 102, 202, 506, NULL, NULL, now(), 1, now(), 1);
INSERT INTO ti.instance VALUES (791, NULL, NULL, NULL, 'in_progress', 101, 203, NULL, NULL, NULL, now(), 1, now(), 1);
INSERT INTO tcf.measurement_attribute VALUES (2, 506, 10, 7, 80, 90, NULL, NULL, NULL, now(), 1, now(), 1);
COMMIT;
";

/// A database with the three instances and their created events.
fn three_instances(name: &str) -> (String, Client) {
    let cluster = Cluster::shared();
    let database = cluster.database(name, ForeignKeys::Without);
    let mut client = cluster.connect(&database);
    client.batch_execute(SEED_EXAMPLE).unwrap();
    client.batch_execute(MORE_INSTANCES).unwrap();
    assert_eq!(outbox_instances(&mut client), vec![789, 790, 791]);
    (database, client)
}

fn last_id(client: &mut Client) -> i64 {
    client
        .query_one("SELECT coalesce(max(id), 0) FROM ae_events.outbox", &[])
        .unwrap()
        .get(0)
}

/// The outbox rows written after `after`.
fn events_after(client: &mut Client, after: i64) -> Vec<OutboxRow> {
    outbox_rows(client)
        .into_iter()
        .filter(|row| row.id > after)
        .collect()
}

fn set_bubble_up(client: &mut Client, table: &str, enabled: bool) {
    let changed = client
        .execute(
            "UPDATE ae_events.bubble_up SET enabled = $2 WHERE source_table = $1",
            &[&table, &enabled],
        )
        .unwrap();
    assert_eq!(changed, 1, "{table} is a row of ae_events.bubble_up");
}

fn current_snapshot(client: &mut Client, instance_id: i64) -> Value {
    client
        .query_one("SELECT ae_events.snapshot($1)", &[&instance_id])
        .unwrap()
        .get(0)
}

fn state_version(client: &mut Client, instance_id: i64) -> Option<i32> {
    client
        .query_opt(
            "SELECT snapshot_version FROM ae_events.instance_state WHERE instance_id = $1",
            &[&instance_id],
        )
        .unwrap()
        .map(|row| row.get(0))
}

struct SourceCase {
    source_table: &'static str,
    /// Reference data: off by default, so the change is made once with it off (no event), then
    /// again with it on.
    reference_data: bool,
    change: &'static str,
    instances: &'static [i64],
    /// A JSON pointer into the payload of the first instance and its value after the change.
    pointer: &'static str,
    value: Value,
}

fn source_cases() -> Vec<SourceCase> {
    vec![
        SourceCase {
            source_table: "ti.instance",
            reference_data: false,
            change: "UPDATE ti.instance SET score = 42.5 WHERE id = 789",
            instances: &[789],
            pointer: "/score",
            value: json!(42.5),
        },
        SourceCase {
            source_table: "can.candidate",
            reference_data: false,
            change: "UPDATE can.candidate SET first_name = 'Janet' WHERE id = 101",
            instances: &[789, 791],
            pointer: "/candidate/first_name",
            value: json!("Janet"),
        },
        SourceCase {
            source_table: "tcf.measurement",
            reference_data: false,
            change: "UPDATE tcf.measurement SET status = 'completed' WHERE id = 505",
            instances: &[789],
            pointer: "/measurement/status",
            value: json!("completed"),
        },
        SourceCase {
            source_table: "tcf.measurement_attribute",
            reference_data: false,
            change: "INSERT INTO tcf.measurement_attribute VALUES (3, 505, 10, NULL, 50, NULL, NULL, NULL, NULL, now(), 1, now(), 1)",
            instances: &[789],
            pointer: "/measurement/measurement_attributes/1/id",
            value: json!(3),
        },
        SourceCase {
            source_table: "tcf.measurement_attribute",
            reference_data: false,
            change: "UPDATE tcf.measurement_attribute SET remarks = 'good' WHERE id = 2",
            instances: &[790],
            pointer: "/measurement/measurement_attributes/0/remarks",
            value: json!("good"),
        },
        SourceCase {
            source_table: "tcf.measurement_attribute",
            reference_data: false,
            change: "DELETE FROM tcf.measurement_attribute WHERE id = 2",
            instances: &[790],
            pointer: "/measurement/measurement_attributes",
            value: json!([]),
        },
        SourceCase {
            source_table: "tcf.measurement_attribute",
            reference_data: false,
            // Moved to another measurement: both instances change.
            change: "UPDATE tcf.measurement_attribute SET measurement_id = 506 WHERE id = 1",
            instances: &[789, 790],
            pointer: "/measurement/measurement_attributes",
            value: json!([]),
        },
        SourceCase {
            source_table: "ae.catalog_assessment",
            reference_data: true,
            change: "UPDATE ae.catalog_assessment SET catalog_id = 405 WHERE id = 202",
            instances: &[789, 790],
            pointer: "/catalog_assessment/catalog/name",
            value: json!("Other"),
        },
        SourceCase {
            source_table: "ae.assessment",
            reference_data: true,
            change: "UPDATE ae.assessment SET name = 'Python 3' WHERE id = 303",
            instances: &[789, 790],
            pointer: "/catalog_assessment/assessment/name",
            value: json!("Python 3"),
        },
        SourceCase {
            source_table: "ae.catalog",
            reference_data: true,
            change: "UPDATE ae.catalog SET description = 'new' WHERE id = 405",
            instances: &[791],
            pointer: "/catalog_assessment/catalog/description",
            value: json!("new"),
        },
        SourceCase {
            source_table: "tcf.section_configuration_attribute",
            reference_data: true,
            change: "UPDATE tcf.section_configuration_attribute SET recommended_value = 75 WHERE id = 10",
            instances: &[789, 790],
            pointer: "/measurement/measurement_attributes/0/section_configuration_attribute/recommended_value",
            value: json!(75),
        },
        SourceCase {
            source_table: "tcf.attribute",
            reference_data: true,
            change: "UPDATE tcf.attribute SET name = 'Reasoning' WHERE id = 10",
            instances: &[789, 790],
            pointer: "/measurement/measurement_attributes/0/section_configuration_attribute/attribute/name",
            value: json!("Reasoning"),
        },
        SourceCase {
            source_table: "tcf.skill",
            reference_data: true,
            change: "UPDATE tcf.skill SET name = 'Logic II' WHERE id = 5",
            instances: &[789, 790],
            pointer: "/measurement/measurement_attributes/0/section_configuration_attribute/attribute/skill/name",
            value: json!("Logic II"),
        },
        SourceCase {
            source_table: "tcf.ordinal",
            reference_data: true,
            change: "UPDATE tcf.ordinal SET label = 'Very high' WHERE id = 7",
            instances: &[790],
            pointer: "/measurement/measurement_attributes/0/ordinal/label",
            value: json!("Very high"),
        },
    ]
}

/// Check that the events after `before` are exactly one updated event, version 2, per expected
/// instance, each carrying the current snapshot.
fn assert_updated_events(client: &mut Client, before: i64, case: &SourceCase) {
    let what = case.change;
    let events = events_after(client, before);
    let instances: Vec<i64> = events.iter().map(|event| event.aggregate_id).collect();
    assert_eq!(instances, case.instances, "{what}");
    for event in &events {
        assert_eq!(event.subscription_key, "ae.test_instance.updated", "{what}");
        assert_eq!(event.event_type, "ae_test_instance_updated", "{what}");
        assert_eq!(event.aggregate_type, "test_instance", "{what}");
        assert_eq!(event.snapshot_version, 2, "{what}");
        assert_eq!(
            event.payload,
            current_snapshot(client, event.aggregate_id),
            "{what}"
        );
    }
    assert_eq!(
        events[0].payload.pointer(case.pointer),
        Some(&case.value),
        "{what}"
    );
}

#[test]
fn each_source_table_yields_exactly_the_expected_updated_events() {
    for (number, case) in source_cases().iter().enumerate() {
        let (_, mut client) = three_instances(&format!("source{number}"));
        if case.reference_data {
            let before = last_id(&mut client);
            client.batch_execute(case.change).unwrap();
            assert!(
                events_after(&mut client, before).is_empty(),
                "{} is off by default",
                case.source_table
            );
            // Again in a fresh database, with bubble-up on.
            client = three_instances(&format!("source{number}on")).1;
            set_bubble_up(&mut client, case.source_table, true);
        }
        let before = last_id(&mut client);
        client.batch_execute(case.change).unwrap();
        assert_updated_events(&mut client, before, case);
    }
}

#[test]
fn changes_through_four_tables_in_one_transaction_give_one_event() {
    let (_, mut client) = three_instances("four");
    let before = last_id(&mut client);
    client
        .batch_execute(
            "BEGIN;
             UPDATE ti.instance SET instance_status = 'completed' WHERE id = 789;
             UPDATE can.candidate SET last_name = 'Roe' WHERE id = 101;
             UPDATE tcf.measurement SET status = 'scored' WHERE id = 505;
             UPDATE tcf.measurement_attribute SET numerical_score = 91 WHERE id = 1;
             INSERT INTO tcf.measurement_attribute VALUES (4, 505, 10, NULL, 60, NULL, NULL, NULL, NULL, now(), 1, now(), 1);
             COMMIT;",
        )
        .unwrap();
    let events = events_after(&mut client, before);
    // 789 through all four tables; 791 through its candidate.
    assert_eq!(
        events.iter().map(|e| e.aggregate_id).collect::<Vec<_>>(),
        vec![789, 791]
    );
    let payload = &events[0].payload;
    assert_eq!(events[0].snapshot_version, 2);
    assert_eq!(payload["instance_status"], json!("completed"));
    assert_eq!(payload["candidate"]["last_name"], json!("Roe"));
    assert_eq!(payload["measurement"]["status"], json!("scored"));
    let attributes = payload["measurement"]["measurement_attributes"]
        .as_array()
        .unwrap();
    assert_eq!(attributes.len(), 2);
    assert_eq!(attributes[0]["numerical_score"], json!(91));
}

#[test]
fn an_instance_created_and_changed_in_one_transaction_gets_only_its_created_event() {
    let cluster = Cluster::shared();
    let database = cluster.database("createdupdated", ForeignKeys::Without);
    let mut client = cluster.connect(&database);
    client
        .batch_execute(&SEED_EXAMPLE.replace(
            "COMMIT;",
            "UPDATE ti.instance SET score = 12 WHERE id = 789;
             UPDATE can.candidate SET first_name = 'Final' WHERE id = 101;
             UPDATE tcf.measurement_attribute SET remarks = 'final' WHERE id = 1;
             COMMIT;",
        ))
        .unwrap();
    let rows = outbox_rows(&mut client);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].subscription_key, "ae.test_instance.created");
    assert_eq!(rows[0].snapshot_version, 1);
    assert_eq!(rows[0].payload["score"], json!(12));
    assert_eq!(rows[0].payload["candidate"]["first_name"], json!("Final"));
    assert_eq!(
        rows[0].payload["measurement"]["measurement_attributes"][0]["remarks"],
        json!("final")
    );
    // The next change is version 2.
    client
        .batch_execute("UPDATE ti.instance SET score = 13 WHERE id = 789")
        .unwrap();
    let rows = outbox_rows(&mut client);
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[1].snapshot_version, 2);
}

#[test]
fn changes_that_leave_the_snapshot_identical_give_no_event() {
    let (_, mut client) = three_instances("noop");
    set_bubble_up(&mut client, "ae.catalog", true);
    client
        .batch_execute("ALTER TABLE can.candidate ADD COLUMN notes text")
        .unwrap();
    let before = last_id(&mut client);
    client
        .batch_execute(
            "UPDATE ti.instance SET score = score, updated_by = updated_by;
             UPDATE can.candidate SET email = email;
             UPDATE can.candidate SET notes = 'not in the payload';
             UPDATE tcf.measurement SET status = status;
             UPDATE tcf.measurement_attribute SET remarks = remarks;
             UPDATE ae.catalog SET name = name;
             BEGIN;
             UPDATE ti.instance SET score = 1 WHERE id = 789;
             UPDATE ti.instance SET score = NULL WHERE id = 789;
             COMMIT;",
        )
        .unwrap();
    assert!(events_after(&mut client, before).is_empty());
}

#[test]
fn the_bubble_up_setting_switches_a_table_on_and_off_from_the_next_transaction() {
    let cluster = Cluster::shared();
    let (database, mut client) = three_instances("setting");
    let defaults: Vec<(String, bool)> = client
        .query(
            "SELECT source_table, enabled FROM ae_events.bubble_up ORDER BY source_table",
            &[],
        )
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    let on: Vec<&str> = defaults
        .iter()
        .filter(|(_, enabled)| *enabled)
        .map(|(table, _)| table.as_str())
        .collect();
    assert_eq!(
        on,
        [
            "can.candidate",
            "tcf.measurement",
            "tcf.measurement_attribute",
            "ti.instance"
        ]
    );
    assert_eq!(defaults.len(), 11);

    set_bubble_up(&mut client, "can.candidate", false);
    let before = last_id(&mut client);
    client
        .batch_execute("UPDATE can.candidate SET first_name = 'Off' WHERE id = 101")
        .unwrap();
    assert!(events_after(&mut client, before).is_empty());

    // A transaction keeps the setting it read first: switched on by another session meanwhile,
    // it still emits nothing; the next transaction does.
    client
        .batch_execute("BEGIN; UPDATE can.candidate SET first_name = 'Still off' WHERE id = 101")
        .unwrap();
    let mut dba = cluster.connect(&database);
    set_bubble_up(&mut dba, "can.candidate", true);
    client
        .batch_execute("UPDATE can.candidate SET last_name = 'Still off' WHERE id = 101; COMMIT")
        .unwrap();
    assert!(events_after(&mut client, before).is_empty());
    client
        .batch_execute("UPDATE can.candidate SET first_name = 'On' WHERE id = 101")
        .unwrap();
    let events = events_after(&mut client, before);
    assert_eq!(
        events.iter().map(|e| e.aggregate_id).collect::<Vec<_>>(),
        vec![789, 791]
    );
    assert_eq!(events[0].payload["candidate"]["first_name"], json!("On"));
    assert_eq!(
        events[0].payload["candidate"]["last_name"],
        json!("Still off")
    );

    // Bad rows are refused.
    let error = client
        .batch_execute("INSERT INTO ae_events.bubble_up VALUES ('public.other', true)")
        .unwrap_err();
    assert_eq!(sqlstate(&error), "23514");
}

#[test]
fn concurrent_changes_of_one_instance_get_versions_in_commit_order_and_the_later_snapshot_wins() {
    let cluster = Cluster::shared();
    let (database, mut first) = three_instances("concurrent");
    let before = last_id(&mut first);
    // The first transaction writes its event now (SET CONSTRAINTS ... IMMEDIATE) and holds the
    // instance's version until it commits.
    first
        .batch_execute(
            "BEGIN;
             UPDATE can.candidate SET first_name = 'First' WHERE id = 101;
             SET CONSTRAINTS ALL IMMEDIATE;",
        )
        .unwrap();
    let second_database = database.clone();
    let second = std::thread::spawn(move || {
        let mut second = Cluster::shared().connect(&second_database);
        second
            .batch_execute("UPDATE tcf.measurement SET status = 'second' WHERE id = 505")
            .unwrap();
    });
    wait_until_a_session_waits_for_a_lock(cluster, &database);
    first.batch_execute("COMMIT").unwrap();
    second.join().unwrap();

    let events: Vec<OutboxRow> = events_after(&mut first, before)
        .into_iter()
        .filter(|event| event.aggregate_id == 789)
        .collect();
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[0].snapshot_version, 2);
    assert_eq!(events[0].payload["candidate"]["first_name"], json!("First"));
    assert_eq!(events[0].payload["measurement"]["status"], json!("pending"));
    assert_eq!(events[1].snapshot_version, 3);
    // The later snapshot holds both changes: it was read after the first committed.
    assert_eq!(events[1].payload["candidate"]["first_name"], json!("First"));
    assert_eq!(events[1].payload["measurement"]["status"], json!("second"));
    assert_eq!(events[1].payload, current_snapshot(&mut first, 789));
    assert_eq!(state_version(&mut first, 789), Some(3));
}

#[test]
fn snapshot_returns_what_an_event_carries_and_resend_replays_it() {
    let cluster = Cluster::shared();
    let (database, mut client) = three_instances("resend");
    client
        .batch_execute("UPDATE ti.instance SET score = 7 WHERE id = 789")
        .unwrap();
    // The same jsonb as the last event's payload: equal, the same text, the same hashes.
    let same: bool = client
        .query_one(
            "SELECT s = o.payload AND s::text = o.payload::text
                    AND jsonb_hash_extended(s, 3) = jsonb_hash_extended(o.payload, 3)
               FROM ae_events.snapshot(789) AS s,
                    (SELECT payload FROM ae_events.outbox WHERE aggregate_id = 789
                      ORDER BY id DESC LIMIT 1) AS o",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(same);
    let missing: Option<Value> = client
        .query_one("SELECT ae_events.snapshot(123456)", &[])
        .unwrap()
        .get(0);
    assert_eq!(missing, None);

    let mut listener = cluster.connect(&database);
    listener.batch_execute("LISTEN ae_events").unwrap();
    let before = last_id(&mut client);
    let written: i64 = client
        .query_one("SELECT ae_events.resend(ARRAY[791, 789, 789, 123456])", &[])
        .unwrap()
        .get(0);
    assert_eq!(written, 2, "one event per existing instance");
    let events = events_after(&mut client, before);
    assert_eq!(
        events
            .iter()
            .map(|e| (e.aggregate_id, e.snapshot_version))
            .collect::<Vec<_>>(),
        vec![(789, 3), (791, 2)],
        "unchanged snapshots, sent again with the next versions"
    );
    for event in &events {
        assert_eq!(event.subscription_key, "ae.test_instance.updated");
        assert_eq!(
            event.payload,
            current_snapshot(&mut client, event.aggregate_id)
        );
    }
    // One wake-up for the transaction's two events (notify = reference).
    assert_eq!(
        drain_notifications(&mut listener, Duration::from_millis(1500)).len(),
        1
    );

    // resend is for the DBA: not executable by other roles; NULL ids are refused.
    client
        .batch_execute(
            "CREATE ROLE resend_app LOGIN; GRANT USAGE ON SCHEMA ae_events TO resend_app",
        )
        .unwrap();
    let mut app = cluster.connect_as(&database, "resend_app");
    let error = app
        .batch_execute("SELECT ae_events.resend(ARRAY[789])")
        .unwrap_err();
    assert_eq!(sqlstate(&error), "42501");
    // snapshot() reads with the caller's privileges: a role that cannot read the application's
    // tables gets a clear error, not a payload.
    let error = app
        .batch_execute("SELECT ae_events.snapshot(789)")
        .unwrap_err();
    assert_eq!(sqlstate(&error), "42501");
    assert!(
        error_message(&error)
            .starts_with("ae_events: cannot build the snapshot of ti.instance 789"),
        "{error:?}"
    );
    let error = client
        .batch_execute("SELECT ae_events.resend(ARRAY[789, NULL])")
        .unwrap_err();
    assert_eq!(sqlstate(&error), "22004");
    assert!(error_message(&error).starts_with("ae_events:"));
}

#[test]
fn deleting_an_instance_emits_nothing_and_drops_its_state() {
    let (_, mut client) = three_instances("delete");
    client
        .batch_execute("UPDATE ti.instance SET score = 1 WHERE id = 789")
        .unwrap();
    assert_eq!(state_version(&mut client, 789), Some(2));
    let before = last_id(&mut client);
    client
        .batch_execute(
            "BEGIN;
             UPDATE can.candidate SET first_name = 'Gone' WHERE id = 101;
             DELETE FROM ti.instance WHERE id IN (789, 791);
             COMMIT;",
        )
        .unwrap();
    assert!(events_after(&mut client, before).is_empty());
    assert_eq!(state_version(&mut client, 789), None);
    assert_eq!(state_version(&mut client, 791), None);
    assert_eq!(state_version(&mut client, 790), Some(1));

    // The id inserted again starts over with a created event.
    client
        .batch_execute(
            "INSERT INTO ti.instance VALUES (789, NULL, NULL, NULL, 'in_progress', 101, 202, NULL, NULL, NULL, now(), 1, now(), 1)",
        )
        .unwrap();
    let events = events_after(&mut client, before);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].subscription_key, "ae.test_instance.created");
    assert_eq!(events[0].snapshot_version, 1);
    assert_eq!(state_version(&mut client, 789), Some(1));
}

#[test]
fn instances_older_than_the_extension_start_at_version_1() {
    let cluster = Cluster::shared();
    let database = cluster.empty_database("older");
    let mut client = cluster.connect(&database);
    load_schema(&mut client, ForeignKeys::Without);
    client.batch_execute(SEED_EXAMPLE).unwrap();
    client.batch_execute("CREATE EXTENSION ae_events").unwrap();
    client
        .batch_execute("UPDATE tcf.measurement SET status = 'done' WHERE id = 505")
        .unwrap();
    let rows = outbox_rows(&mut client);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].subscription_key, "ae.test_instance.updated");
    assert_eq!(rows[0].snapshot_version, 1);
    client
        .batch_execute("UPDATE tcf.measurement SET status = 'final' WHERE id = 505")
        .unwrap();
    assert_eq!(outbox_rows(&mut client)[1].snapshot_version, 2);
}

#[test]
fn a_rolled_back_change_or_savepoint_leaves_no_updated_event() {
    let (_, mut client) = three_instances("rollback");
    let before = last_id(&mut client);
    client
        .batch_execute(
            "BEGIN; UPDATE ti.instance SET score = 1 WHERE id = 789; ROLLBACK;
             BEGIN;
             SAVEPOINT s;
             UPDATE can.candidate SET first_name = 'Never' WHERE id = 101;
             ROLLBACK TO SAVEPOINT s;
             UPDATE ti.instance SET score = 2 WHERE id = 790;
             COMMIT;",
        )
        .unwrap();
    let events = events_after(&mut client, before);
    assert_eq!(
        events.iter().map(|e| e.aggregate_id).collect::<Vec<_>>(),
        vec![790]
    );
}

/// A reference-data change that reaches more instances than one chunk (1,000), written in its
/// own transaction (`ae_events.fanout_inline_limit` raised above them): every instance gets its
/// event (the benchmark scales this to 50,000 and measures memory). Deferred fan-outs:
/// tests/fanout.rs.
#[test]
fn a_reference_data_change_fans_out_to_every_instance_in_chunks() {
    const INSTANCES: i64 = 2500;
    let cluster = Cluster::shared();
    let database = cluster.database("fanout", ForeignKeys::Without);
    let mut client = cluster.connect(&database);
    client.batch_execute(MINIMAL_REFERENCE_DATA).unwrap();
    client
        .execute(
            "INSERT INTO ti.instance
             SELECT g, NULL, NULL, NULL, 'in_progress', 1, 1, NULL, NULL, NULL, now(), 1, now(), 1
               FROM generate_series(1, $1::bigint) AS g",
            &[&INSTANCES],
        )
        .unwrap();
    set_bubble_up(&mut client, "ae.catalog", true);
    let before = last_id(&mut client);
    client
        .batch_execute(
            "SET ae_events.fanout_inline_limit = 10000;
             UPDATE ae.catalog SET name = 'Renamed' WHERE id = 1",
        )
        .unwrap();
    let summary = client
        .query_one(
            "SELECT count(*), count(DISTINCT aggregate_id), min(snapshot_version), max(snapshot_version),
                    bool_and(payload #>> '{catalog_assessment,catalog,name}' = 'Renamed'),
                    bool_and(subscription_key = 'ae.test_instance.updated')
               FROM ae_events.outbox WHERE id > $1",
            &[&before],
        )
        .unwrap();
    assert_eq!(summary.get::<_, i64>(0), INSTANCES);
    assert_eq!(summary.get::<_, i64>(1), INSTANCES);
    assert_eq!(summary.get::<_, i32>(2), 2);
    assert_eq!(summary.get::<_, i32>(3), 2);
    assert!(summary.get::<_, bool>(4));
    assert!(summary.get::<_, bool>(5));
}

#[test]
fn under_repeatable_read_a_concurrent_change_of_the_same_instance_fails_with_40001() {
    let cluster = Cluster::shared();
    let (database, mut first) = three_instances("repeatable");
    first
        .batch_execute(
            "BEGIN ISOLATION LEVEL REPEATABLE READ;
             UPDATE can.candidate SET first_name = 'First' WHERE id = 101;
             SET CONSTRAINTS ALL IMMEDIATE;",
        )
        .unwrap();
    let mut second = cluster.connect(&database);
    second
        .batch_execute(
            "BEGIN ISOLATION LEVEL REPEATABLE READ;
             UPDATE tcf.measurement SET status = 'second' WHERE id = 505;",
        )
        .unwrap();
    let committing = std::thread::spawn(move || second.batch_execute("COMMIT"));
    wait_until_a_session_waits_for_a_lock(cluster, &database);
    first.batch_execute("COMMIT").unwrap();
    let error = committing.join().unwrap().unwrap_err();
    assert_eq!(sqlstate(&error), "40001", "{error:?}");
    assert!(error_message(&error).starts_with("ae_events:"));
    let status: String = first
        .query_one("SELECT status FROM tcf.measurement WHERE id = 505", &[])
        .unwrap()
        .get(0);
    assert_eq!(
        status, "pending",
        "the failed transaction's change is not committed"
    );
    assert_eq!(state_version(&mut first, 789), Some(2));
}

fn recorded_digest(client: &mut Client, instance_id: i64) -> Vec<u8> {
    client
        .query_one(
            "SELECT snapshot_digest FROM ae_events.instance_state WHERE instance_id = $1",
            &[&instance_id],
        )
        .unwrap()
        .get(0)
}

/// Payload digests are keyed per database (src/digest.rs): the same snapshot records another
/// digest in another database, no role of the extension reads the key, and pg_restore keeps the
/// dumped key in use, so that a restored instance's unchanged snapshot still gives no event.
#[test]
fn digests_are_keyed_per_database_and_the_key_survives_pg_restore() {
    let cluster = Cluster::shared();
    let (database, mut client) = three_instances("keyed");
    let (_, mut other) = three_instances("keyed_other");
    let original = recorded_digest(&mut client, 789);
    assert_eq!((original.len(), original[0]), (17, 2), "{original:?}");
    assert_eq!(
        current_snapshot(&mut client, 789),
        current_snapshot(&mut other, 789)
    );
    assert_ne!(recorded_digest(&mut other, 789), original, "another key");

    let role = "keyed_everything";
    client
        .batch_execute(&format!(
            "CREATE ROLE {role} LOGIN IN ROLE ae_events_reader, ae_events_relay, ae_events_operator"
        ))
        .unwrap();
    let mut reader = cluster.connect_as(&database, role);
    let error = reader
        .query("SELECT key FROM ae_events.digest_keys", &[])
        .unwrap_err();
    assert_eq!(sqlstate(&error), "42501", "{error}");

    let archive = dump(cluster, &database);
    let target = cluster.empty_database("keyed_restored");
    restore(cluster, &target, &archive);
    let mut restored = cluster.connect(&target);
    let keys: i64 = restored
        .query_one("SELECT count(*) FROM ae_events.digest_keys", &[])
        .unwrap()
        .get(0);
    assert_eq!(
        keys, 2,
        "the dumped key beside the one CREATE EXTENSION made"
    );
    let before = last_id(&mut restored);
    restored
        .batch_execute("UPDATE ti.instance SET updated_by = updated_by WHERE id = 789")
        .unwrap();
    assert!(
        events_after(&mut restored, before).is_empty(),
        "the restored digest still compares"
    );
    restored
        .batch_execute("UPDATE ti.instance SET score = 7 WHERE id = 789")
        .unwrap();
    let events = events_after(&mut restored, before);
    assert_eq!(
        events
            .iter()
            .map(|event| (event.aggregate_id, event.snapshot_version))
            .collect::<Vec<_>>(),
        [(789, 2)]
    );
}

/// Without a key (a DBA emptied ae_events.digest_keys, in another session: the key this one
/// cached is dropped too), a transaction that would write an event fails with a message saying
/// what to do, and writes nothing; with a key added, events resume.
#[test]
fn without_a_digest_key_an_event_is_refused_not_written_unkeyed() {
    let (database, mut client) = three_instances("keyless");
    client
        .batch_execute("UPDATE ti.instance SET score = 2 WHERE id = 789")
        .unwrap();
    let before = last_id(&mut client);
    Cluster::shared()
        .connect(&database)
        .batch_execute("DELETE FROM ae_events.digest_keys")
        .unwrap();
    let error = client
        .batch_execute("UPDATE ti.instance SET score = 3 WHERE id = 789")
        .unwrap_err();
    assert_eq!(sqlstate(&error), "55000", "{error}");
    let message = error_message(&error);
    assert!(
        message.starts_with("ae_events:") && message.contains("ae_events.digest_keys holds no key"),
        "{message}"
    );
    assert!(events_after(&mut client, before).is_empty());
    client
        .batch_execute(
            "INSERT INTO ae_events.digest_keys (key) SELECT ae_events._strong_random_bytes(32);
             UPDATE ti.instance SET score = 3 WHERE id = 789",
        )
        .unwrap();
    assert_eq!(events_after(&mut client, before).len(), 1);
}

/// The pass's lookups of version rows (`ae_events.instance_state`) use its primary key even when
/// the session planned them while the table was small: the plans are kept for the session, and
/// one that scanned the table whole would do so at every commit once it has grown.
#[test]
fn version_rows_are_looked_up_by_key_however_small_the_table_was_when_planned() {
    // This session's first pass planned them; statistics of the table with its three rows (as
    // autovacuum takes them early on) make PostgreSQL plan them again, and no new statistics
    // come while it grows.
    let (database, mut client) = three_instances("state_plans");
    client
        .batch_execute(
            "ALTER TABLE ae_events.instance_state SET (autovacuum_enabled = false);
             ANALYZE ae_events.instance_state",
        )
        .unwrap();
    Cluster::shared()
        .connect(&database)
        .batch_execute(
            "INSERT INTO ti.instance
             SELECT g, NULL, NULL, NULL, 'in_progress', 101, 202, NULL, NULL, NULL, now(), 1, now(), 1
               FROM generate_series(10000, 14999) AS g",
        )
        .unwrap();
    client
        .batch_execute(
            "BEGIN; SET CONSTRAINTS ALL IMMEDIATE;
             UPDATE ti.instance SET score = 9 WHERE id BETWEEN 10000 AND 10019",
        )
        .unwrap();
    let scans: i64 = client
        .query_one(
            "SELECT pg_stat_get_xact_numscans('ae_events.instance_state'::regclass)",
            &[],
        )
        .unwrap()
        .get(0);
    let events: i64 = client
        .query_one(
            "SELECT count(*) FROM ae_events.outbox
              WHERE event_type = 'ae_test_instance_updated' AND aggregate_id BETWEEN 10000 AND 10019",
            &[],
        )
        .unwrap()
        .get(0);
    client.batch_execute("COMMIT").unwrap();
    assert_eq!(events, 20);
    assert_eq!(scans, 0, "sequential scans of ae_events.instance_state");
}
