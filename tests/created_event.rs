//! The created event end to end: payload, notification, formatting rules, transactions.

mod common;

use common::*;
use postgres::Client;
use serde_json::{json, Value};
use std::time::Duration;

const WAIT: Duration = Duration::from_millis(1500);

/// A test database whose notifications carry payloads: these tests are about `notify = full`
/// (the DBA's choice; 0.5.0's default is `reference`, tests/security.rs).
fn database_notifying_full(cluster: &Cluster, name: &str, foreign_keys: ForeignKeys) -> String {
    let database = cluster.database(name, foreign_keys);
    cluster
        .connect(&database)
        .batch_execute(&format!(
            "ALTER DATABASE {database} SET ae_events.notify = full"
        ))
        .unwrap();
    database
}

fn listen(cluster: &Cluster, database: &str, channel: &str) -> Client {
    let mut listener = cluster.connect(database);
    listener
        .batch_execute(&format!("LISTEN \"{channel}\""))
        .unwrap();
    listener
}

fn notification_messages(listener: &mut Client) -> Vec<Value> {
    drain_notifications(listener, WAIT)
        .into_iter()
        .map(|(_, text)| serde_json::from_str(&text).unwrap())
        .collect()
}

/// The seed's example in one transaction, the measurement attribute inserted after the
/// instance, in a session with the given settings: outbox payload and notification payload
/// both equal the seed's example JSON.
fn assert_seed_example_round_trip(session_settings: &str, foreign_keys: ForeignKeys) {
    let cluster = Cluster::shared();
    let database = database_notifying_full(cluster, "seed", foreign_keys);
    let mut listener = listen(cluster, &database, "ae_events");
    let mut app = cluster.connect(&database);
    app.batch_execute(session_settings).unwrap();
    app.batch_execute(SEED_EXAMPLE).unwrap();

    let rows = outbox_rows(&mut app);
    assert_eq!(rows.len(), 1);
    let row = &rows[0];
    assert_eq!(row.payload, seed_example_payload());
    assert_eq!(row.subscription_key, "ae.test_instance.created");
    assert_eq!(row.event_type, "ae_test_instance_created");
    assert_eq!(row.aggregate_type, "test_instance");
    assert_eq!(row.aggregate_id, 789);
    assert_eq!(row.snapshot_version, 1);

    let messages = notification_messages(&mut listener);
    assert_eq!(messages.len(), 1, "{messages:?}");
    let message = &messages[0];
    assert_eq!(message["payload"], seed_example_payload());
    assert_eq!(message["id"], json!(row.id));
    assert_eq!(message["event_id"], json!(row.event_id));
    assert_eq!(message["aggregate_id"], json!(789));
    assert_eq!(message["snapshot_version"], json!(1));
    assert_eq!(
        message["subscription_key"],
        json!("ae.test_instance.created")
    );
}

#[test]
fn seed_example_gives_its_payload_in_outbox_and_notification() {
    assert_seed_example_round_trip("", ForeignKeys::With);
}

#[test]
fn seed_example_payload_is_independent_of_session_date_and_interval_settings() {
    assert_seed_example_round_trip(
        "SET TimeZone = 'Asia/Kolkata'; SET DateStyle = 'SQL, DMY'; SET IntervalStyle = 'iso_8601';",
        ForeignKeys::With,
    );
}

#[test]
fn seed_example_without_cross_service_foreign_keys() {
    assert_seed_example_round_trip("", ForeignKeys::Without);
}

#[test]
fn notification_keys_are_in_contract_order_and_arrive_only_after_commit() {
    let cluster = Cluster::shared();
    let database = database_notifying_full(cluster, "order", ForeignKeys::With);
    let mut listener = listen(cluster, &database, "ae_events");
    let mut app = cluster.connect(&database);
    let seed_without_commit = SEED_EXAMPLE.replace("COMMIT;", "");
    app.batch_execute(&seed_without_commit).unwrap();
    assert!(drain_notifications(&mut listener, Duration::from_millis(500)).is_empty());
    app.batch_execute("COMMIT").unwrap();
    let received = drain_notifications(&mut listener, WAIT);
    assert_eq!(received.len(), 1);
    let text = &received[0].1;
    let keys = [
        "id",
        "event_id",
        "subscription_key",
        "event_type",
        "aggregate_type",
        "aggregate_id",
        "snapshot_version",
        "occurred_at",
        "payload",
    ];
    let positions: Vec<usize> = keys
        .iter()
        .map(|key| text.find(&format!("\"{key}\":")).expect(key))
        .collect();
    assert!(positions.windows(2).all(|pair| pair[0] < pair[1]), "{text}");
    let message: Value = serde_json::from_str(text).unwrap();
    let occurred_at = message["occurred_at"].as_str().unwrap();
    assert!(
        occurred_at.ends_with('Z') && occurred_at.contains('T'),
        "{occurred_at}"
    );
}

// --- Edge values --------------------------------------------------------------------------

/// Reference data shared by the edge-value tests: two skills' worth of attributes, one ordinal.
const EDGE_REFERENCE_DATA: &str = "
INSERT INTO ae.assessment VALUES (1, 'A', 'basic', 'published', '2024-01-01 00:00:00.5+00', '2024-01-02 03:04:05.123456+00');
INSERT INTO ae.catalog VALUES (1, 'C', NULL);
INSERT INTO ae.catalog_assessment VALUES (1, 1, 1);
INSERT INTO tcf.skill VALUES (1, 'Skill');
INSERT INTO tcf.attribute VALUES (1, 'With skill', 'skill', true, 0, 100, 1),
                                 (2, 'No skill', 'trait', false, 0.5, 9.75, NULL);
INSERT INTO tcf.section_configuration_attribute VALUES (1, 'numerical', 85.50, NULL, 1),
                                                       (2, 'ordinal', NULL, 1, 2);
INSERT INTO tcf.ordinal VALUES (1, 'High', 'high', 3, 66.6, NULL);
INSERT INTO can.candidate VALUES (1, NULL, 7, 'ünïcødé@example.com', 'Zoë', NULL, NULL, NULL, 'Ελλάδα',
    false, NULL, NULL, NULL,
    '{\"nested\": {\"list\": [1, 2.50, {\"deep\": \"naïve ☃\"}], \"null\": null}, \"emoji\": \"🎉\", \"quote\": \"\\\"q\\\"\"}');
";

fn payload_of(app: &mut Client, instance_id: i64) -> Value {
    let payload: Value = app
        .query_one(
            "SELECT payload FROM ae_events.outbox WHERE aggregate_id = $1",
            &[&instance_id],
        )
        .unwrap()
        .get(0);
    validate_payload(app, "ae.test_instance.created", &payload);
    payload
}

fn edge_database(foreign_keys: ForeignKeys) -> (String, Client) {
    let cluster = Cluster::shared();
    let database = database_notifying_full(cluster, "edge", foreign_keys);
    let mut app = cluster.connect(&database);
    app.batch_execute(EDGE_REFERENCE_DATA).unwrap();
    (database, app)
}

#[test]
fn edge_values_timestamps_numerics_json_and_attributes() {
    let (_database, mut app) = edge_database(ForeignKeys::With);
    app.batch_execute(
        "BEGIN;
         INSERT INTO tcf.measurement VALUES (1, 'scored', '1 day 02:03:04.5', 'https://r/1', 9, '2024-05-06 07:08:09.000100+02', 3, 4);
         INSERT INTO ti.instance VALUES (10, NULL, NULL, 'NaN', 'completed', 1, 1, 1, NULL, NULL,
             '2024-05-06 07:08:09.25+00', 1, '2024-05-06 07:08:09.999999+00', 2);
         -- inserted out of id order: the payload lists them by id
         INSERT INTO tcf.measurement_attribute VALUES
             (12, 1, 2, 1, 85.50, 'NaN', 'r', NULL, NULL, '2024-01-01', 1, '2024-01-01', 1),
             (11, 1, 1, NULL, 70, 99.125, NULL, 'd', '{\"weights\": [0.25, 0.75], \"名前\": \"値\"}', '2024-01-01', 1, '2024-01-01', 1);
         COMMIT;",
    )
    .unwrap();
    let payload = payload_of(&mut app, 10);

    assert_eq!(payload["score"], json!("NaN"));
    assert_eq!(payload["external_id"], Value::Null);
    assert_eq!(payload["created_at"], json!("2024-05-06T07:08:09.25Z"));
    assert_eq!(payload["updated_at"], json!("2024-05-06T07:08:09.999999Z"));
    assert_eq!(payload["instance_status"], json!("completed"));
    assert_eq!(
        payload["catalog_assessment"]["assessment"]["created_at"],
        json!("2024-01-01T00:00:00.5Z")
    );
    assert_eq!(
        payload["catalog_assessment"]["assessment"]["updated_at"],
        json!("2024-01-02T03:04:05.123456Z")
    );
    assert_eq!(
        payload["catalog_assessment"]["catalog"]["description"],
        Value::Null
    );

    let candidate = &payload["candidate"];
    assert_eq!(candidate["email"], json!("ünïcødé@example.com"));
    assert_eq!(candidate["country"], json!("Ελλάδα"));
    assert_eq!(candidate["is_recording_consent_accepted"], Value::Null);
    assert_eq!(
        candidate["cf"],
        json!({"nested": {"list": [1, 2.50, {"deep": "naïve ☃"}], "null": null}, "emoji": "🎉", "quote": "\"q\""})
    );

    let measurement = &payload["measurement"];
    assert_eq!(measurement["time_taken"], json!("1 day 02:03:04.5"));
    assert_eq!(
        measurement["measured_at"],
        json!("2024-05-06T05:08:09.0001Z")
    );
    let attributes = measurement["measurement_attributes"].as_array().unwrap();
    let ids: Vec<i64> = attributes
        .iter()
        .map(|a| a["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, vec![11, 12]);

    let with_skill = &attributes[0];
    assert_eq!(with_skill["numerical_score"], json!(70));
    assert_eq!(with_skill["percentile_score"].to_string(), "99.125");
    assert_eq!(
        with_skill["additional_attributes"],
        json!({"weights": [0.25, 0.75], "名前": "値"})
    );
    assert_eq!(with_skill["ordinal"], Value::Null);
    assert_eq!(
        with_skill["section_configuration_attribute"]["attribute"]["skill"],
        json!({"id": 1, "name": "Skill"})
    );

    let with_ordinal = &attributes[1];
    assert_eq!(with_ordinal["additional_attributes"], Value::Null);
    assert_eq!(with_ordinal["percentile_score"], json!("NaN"));
    assert_eq!(
        with_ordinal["ordinal"],
        json!({"id": 1, "label": "High", "value": "high", "sort_key": 3, "min_value": 66.6, "max_value": null})
    );
    let sca = &with_ordinal["section_configuration_attribute"];
    assert_eq!(sca["type"], json!("ordinal"));
    assert_eq!(sca["recommended_value"], Value::Null);
    assert_eq!(sca["recommended_ordinal_id"], json!(1));
    assert_eq!(sca["attribute"]["skill"], Value::Null);
    assert_eq!(sca["attribute"]["min_value"].to_string(), "0.5");
    assert_eq!(sca["attribute"]["max_value"].to_string(), "9.75");
}

/// Numeric scale survives into the stored jsonb and the notification text: `85.50`, not `85.5`.
#[test]
fn numeric_scale_is_kept_digit_for_digit() {
    let cluster = Cluster::shared();
    let (database, mut app) = edge_database(ForeignKeys::With);
    let mut listener = listen(cluster, &database, "ae_events");
    app.batch_execute(
        "INSERT INTO ti.instance VALUES (20, 'x', 5, 85.50, 'in_progress', 1, 1, NULL, 1, 2, now(), 1, now(), 1)",
    )
    .unwrap();
    let stored: String = app
        .query_one(
            "SELECT (payload->'score')::text FROM ae_events.outbox WHERE aggregate_id = 20",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(stored, "85.50");
    let received = drain_notifications(&mut listener, WAIT);
    assert_eq!(received.len(), 1);
    assert!(
        received[0].1.contains("\"score\": 85.50,"),
        "{}",
        received[0].1
    );
}

#[test]
fn measurement_null_and_measurement_without_attributes() {
    let (_database, mut app) = edge_database(ForeignKeys::With);
    app.batch_execute(
        "INSERT INTO tcf.measurement VALUES (2, 'pending', NULL, NULL, NULL, '2024-01-01', NULL, NULL);
         INSERT INTO ti.instance VALUES
             (30, NULL, NULL, NULL, 'in_progress', 1, 1, NULL, NULL, NULL, now(), 1, now(), 1),
             (31, NULL, NULL, NULL, 'in_progress', 1, 1, 2, NULL, NULL, now(), 1, now(), 1);",
    )
    .unwrap();
    let without_measurement = payload_of(&mut app, 30);
    assert_eq!(without_measurement["measurement_id"], Value::Null);
    assert_eq!(without_measurement["measurement"], Value::Null);
    let empty_measurement = payload_of(&mut app, 31);
    assert_eq!(empty_measurement["measurement"]["time_taken"], Value::Null);
    assert_eq!(
        empty_measurement["measurement"]["measurement_attributes"],
        json!([])
    );
}

#[test]
fn missing_candidate_without_foreign_keys_warns_and_still_writes_the_event() {
    let (database, mut app) = edge_database(ForeignKeys::Without);
    let (mut app_with_notices, notices) = connect_collecting_notices(Cluster::shared(), &database);
    app_with_notices
        .batch_execute(
            "INSERT INTO ti.instance VALUES (40, NULL, NULL, NULL, 'in_progress', 999, 1, NULL, NULL, NULL, now(), 1, now(), 1)",
        )
        .unwrap();
    let payload = payload_of(&mut app, 40);
    assert_eq!(payload["candidate"], Value::Null);
    assert_eq!(payload["candidate_id"], json!(999));
    assert_eq!(payload["catalog_assessment"]["id"], json!(1));
    let notices = notices.lock().unwrap();
    assert!(
        notices.iter().any(|n| n.starts_with("WARNING ae_events:")
            && n.contains("ti.instance 40")
            && n.contains("can.candidate 999")),
        "{notices:?}"
    );
}

// --- Transactions -------------------------------------------------------------------------

#[test]
fn rollback_leaves_no_event_and_no_notification() {
    let cluster = Cluster::shared();
    let (database, mut app) = edge_database(ForeignKeys::With);
    let mut listener = listen(cluster, &database, "ae_events");
    app.batch_execute(
        "BEGIN;
         INSERT INTO ti.instance VALUES (50, NULL, NULL, NULL, 'in_progress', 1, 1, NULL, NULL, NULL, now(), 1, now(), 1);
         ROLLBACK;",
    )
    .unwrap();
    assert!(outbox_rows(&mut app).is_empty());
    assert!(drain_notifications(&mut listener, WAIT).is_empty());
}

#[test]
fn rolled_back_savepoint_leaves_no_event_for_its_inserts() {
    let cluster = Cluster::shared();
    let (database, mut app) = edge_database(ForeignKeys::With);
    let mut listener = listen(cluster, &database, "ae_events");
    app.batch_execute(
        "BEGIN;
         INSERT INTO ti.instance VALUES (60, NULL, NULL, NULL, 'in_progress', 1, 1, NULL, NULL, NULL, now(), 1, now(), 1);
         SAVEPOINT s;
         INSERT INTO ti.instance VALUES (61, NULL, NULL, NULL, 'in_progress', 1, 1, NULL, NULL, NULL, now(), 1, now(), 1);
         ROLLBACK TO SAVEPOINT s;
         SAVEPOINT t;
         INSERT INTO ti.instance VALUES (62, NULL, NULL, NULL, 'in_progress', 1, 1, NULL, NULL, NULL, now(), 1, now(), 1);
         RELEASE SAVEPOINT t;
         COMMIT;",
    )
    .unwrap();
    let ids: Vec<i64> = outbox_rows(&mut app)
        .iter()
        .map(|r| r.aggregate_id)
        .collect();
    assert_eq!(ids, vec![60, 62]);
    let notified: Vec<i64> = notification_messages(&mut listener)
        .iter()
        .map(|m| m["aggregate_id"].as_i64().unwrap())
        .collect();
    assert_eq!(notified, vec![60, 62]);
}

/// Events emitted early (SET CONSTRAINTS ALL IMMEDIATE) inside a savepoint that rolls back are
/// emitted again at commit: the instance that survives still gets exactly one event.
#[test]
fn events_emitted_inside_a_rolled_back_savepoint_are_emitted_again_at_commit() {
    let (_database, mut app) = edge_database(ForeignKeys::With);
    app.batch_execute(
        "BEGIN;
         INSERT INTO ti.instance VALUES (70, NULL, NULL, NULL, 'in_progress', 1, 1, NULL, NULL, NULL, now(), 1, now(), 1);
         SAVEPOINT s;
         SET CONSTRAINTS ALL IMMEDIATE;
         ROLLBACK TO SAVEPOINT s;
         COMMIT;",
    )
    .unwrap();
    let rows = outbox_rows(&mut app);
    assert_eq!(
        rows.iter().map(|r| r.aggregate_id).collect::<Vec<_>>(),
        vec![70]
    );
}

/// Inserting `first..=last` in one statement.
fn insert_range(first: i64, last: i64) -> String {
    format!(
        "INSERT INTO ti.instance
         SELECT g, NULL, NULL, g, 'in_progress', 1, 1, NULL, NULL, NULL, now(), 1, now(), 1
           FROM generate_series({first}, {last}) AS g;"
    )
}

fn event_ids(app: &mut Client) -> Vec<i64> {
    outbox_rows(app).iter().map(|r| r.aggregate_id).collect()
}

/// The commit-time trigger queues one deferred event per statement (its WHEN condition,
/// `ae_events._emit_needed()`), not one per row; every inserted row still gets its event, with
/// savepoints rolled back around and between the statements.
#[test]
fn one_commit_time_trigger_event_per_statement_keeps_every_event_across_savepoints() {
    let (_database, mut app) = edge_database(ForeignKeys::With);
    // The library is loaded before these transactions (its first transaction queues one event
    // per row: it cannot know whether SET CONSTRAINTS ran before it was loaded).
    app.batch_execute("LOAD 'ae_events'; SET track_functions = 'all'")
        .unwrap();
    // Only the statement in a rolled-back savepoint queued an event: the statement after it
    // queues its own.
    app.batch_execute(&format!(
        "BEGIN; SAVEPOINT s; {} ROLLBACK TO SAVEPOINT s; {} COMMIT;",
        insert_range(101, 103),
        insert_range(104, 106)
    ))
    .unwrap();
    assert_eq!(event_ids(&mut app), vec![104, 105, 106]);
    // Inserts only inside a rolled-back savepoint: no event.
    app.batch_execute(&format!(
        "BEGIN; SAVEPOINT s; {} ROLLBACK TO SAVEPOINT s; COMMIT;",
        insert_range(111, 113)
    ))
    .unwrap();
    assert_eq!(event_ids(&mut app), vec![104, 105, 106]);
    // A savepoint rolled back after a statement keeps that statement's event; a released one
    // keeps its own.
    app.batch_execute(&format!(
        "BEGIN; {} SAVEPOINT s; {} ROLLBACK TO SAVEPOINT s; SAVEPOINT t; {} RELEASE SAVEPOINT t; COMMIT;",
        insert_range(121, 123),
        insert_range(124, 126),
        insert_range(127, 129)
    ))
    .unwrap();
    assert_eq!(
        event_ids(&mut app),
        vec![104, 105, 106, 121, 122, 123, 127, 128, 129]
    );
    // 300 rows in one statement: the trigger function runs once at commit, not 300 times.
    app.batch_execute("SELECT pg_stat_force_next_flush()")
        .unwrap();
    let calls = |app: &mut Client| -> i64 {
        app.query_one(
            "SELECT coalesce(sum(calls), 0)::int8 FROM pg_stat_user_functions
              WHERE schemaname = 'ae_events' AND funcname = 'emit_pending_events'",
            &[],
        )
        .unwrap()
        .get(0)
    };
    let before = calls(&mut app);
    app.batch_execute(&insert_range(1001, 1300)).unwrap();
    app.batch_execute("SELECT pg_stat_force_next_flush()")
        .unwrap();
    assert_eq!(calls(&mut app) - before, 1);
    assert_eq!(event_ids(&mut app).len(), 9 + 300);
}

/// With the commit-time trigger made immediate (SET CONSTRAINTS), it fires at the end of each
/// statement, row by row between the capture triggers: every row then queues its event, so the
/// rows recorded after the first one's firing are emitted too. Also when SET CONSTRAINTS ran in
/// a function, and when it ran before the session loaded the library.
#[test]
fn immediate_commit_time_triggers_emit_every_row_of_a_statement() {
    let cluster = Cluster::shared();
    let (database, mut app) = edge_database(ForeignKeys::With);
    app.batch_execute("LOAD 'ae_events'").unwrap();
    app.batch_execute(&format!(
        "BEGIN; {} SET CONSTRAINTS ALL IMMEDIATE; {} COMMIT;",
        insert_range(201, 203),
        insert_range(204, 210)
    ))
    .unwrap();
    assert_eq!(event_ids(&mut app), (201..=210).collect::<Vec<_>>());
    app.batch_execute(&format!(
        "BEGIN;
         DO $$ BEGIN SET CONSTRAINTS ti.ae_events_emit IMMEDIATE; {} END $$;
         COMMIT;",
        insert_range(211, 220)
    ))
    .unwrap();
    assert_eq!(event_ids(&mut app), (201..=220).collect::<Vec<_>>());
    // A new session: SET CONSTRAINTS runs before anything loads the library.
    let mut fresh = cluster.connect(&database);
    fresh
        .batch_execute(&format!(
            "BEGIN; SET CONSTRAINTS ALL IMMEDIATE; {} COMMIT;",
            insert_range(221, 230)
        ))
        .unwrap();
    assert_eq!(event_ids(&mut app), (201..=230).collect::<Vec<_>>());
}

/// The version rows of many created instances are written in batches, without `ON CONFLICT`,
/// unless one of them already has a row (an id used again, a row left while detached): then
/// they all go through `ON CONFLICT`. A CHECK constraint on `ae_events.instance_state` is
/// enforced on the batched rows as an INSERT enforces it.
#[test]
fn version_rows_of_created_instances_with_and_without_existing_rows() {
    let (_database, mut app) = edge_database(ForeignKeys::With);
    let states = |app: &mut Client| -> Vec<(i64, i32, i32)> {
        app.query(
            "SELECT instance_id, snapshot_version, length(snapshot_digest)
               FROM ae_events.instance_state ORDER BY instance_id",
            &[],
        )
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2)))
        .collect()
    };
    let created = |ids: std::ops::RangeInclusive<i64>| -> Vec<(i64, i32, i32)> {
        ids.map(|id| (id, 1, 17)).collect()
    };
    // 305 has a row left over: the 40 rows go through ON CONFLICT.
    app.batch_execute("INSERT INTO ae_events.instance_state VALUES (305, 7, NULL)")
        .unwrap();
    app.batch_execute(&insert_range(301, 340)).unwrap();
    assert_eq!(states(&mut app), created(301..=340));
    // None has a row: batched.
    app.batch_execute(&insert_range(341, 380)).unwrap();
    assert_eq!(states(&mut app), created(301..=380));
    assert_eq!(event_ids(&mut app), (301..=380).collect::<Vec<_>>());
    app.batch_execute(
        "ALTER TABLE ae_events.instance_state ADD CONSTRAINT below_400 CHECK (instance_id < 400)",
    )
    .unwrap();
    let error = app.batch_execute(&insert_range(390, 420)).unwrap_err();
    assert_eq!(sqlstate(&error), "23514", "{error:?}");
    assert!(error_message(&error).contains("below_400"), "{error:?}");
    assert_eq!(states(&mut app), created(301..=380));
    assert_eq!(event_ids(&mut app), (301..=380).collect::<Vec<_>>());
}

/// Event ids are UUIDs of version 7 (time-ordered): within a transaction they increase with the
/// outbox id, whether the rows were written one by one (few) or in batches (many), and their
/// time is the write's.
#[test]
fn event_ids_are_time_ordered_uuids_version_7() {
    let (_database, mut app) = edge_database(ForeignKeys::With);
    app.batch_execute(
        "INSERT INTO ti.instance
         SELECT 3000 + g, NULL, NULL, g, 'in_progress', 1, 1, NULL, NULL, NULL, now(), 1, now(), 1
           FROM generate_series(1, 2) AS g",
    )
    .unwrap();
    app.batch_execute(
        "INSERT INTO ti.instance
         SELECT 4000 + g, NULL, NULL, g, 'in_progress', 1, 1, NULL, NULL, NULL, now(), 1, now(), 1
           FROM generate_series(1, 300) AS g",
    )
    .unwrap();
    let row = app
        .query_one(
            "SELECT count(*),
                    count(*) FILTER (WHERE substr(event_id::text, 15, 1) = '7'
                                       AND substr(event_id::text, 20, 1) IN ('8', '9', 'a', 'b')),
                    bool_and(increasing),
                    bool_and(abs(extract(epoch FROM occurred_at) * 1000
                                 - ('x' || lpad(replace(left(event_id::text, 13), '-', ''), 16, '0'))::bit(64)::int8)
                             < 5000)
               FROM (SELECT event_id, occurred_at,
                            coalesce(event_id > lag(event_id) OVER (ORDER BY id), true) AS increasing
                       FROM ae_events.outbox) AS o",
            &[],
        )
        .unwrap();
    let (events, version_7, increasing, timed): (i64, i64, bool, bool) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    assert_eq!(events, 302);
    assert_eq!(
        version_7, 302,
        "every event id is a version 7, variant 2 uuid"
    );
    assert!(increasing, "event ids increase with the outbox id");
    assert!(timed, "an event id's time is within seconds of occurred_at");
}

#[test]
fn insert_select_of_1000_instances_gives_1000_events_and_notifications() {
    let cluster = Cluster::shared();
    let (database, mut app) = edge_database(ForeignKeys::With);
    let mut listener = listen(cluster, &database, "ae_events");
    app.batch_execute(
        "INSERT INTO ti.instance
         SELECT 1000 + g, NULL, NULL, g, 'in_progress', 1, 1, NULL, NULL, NULL, now(), 1, now(), 1
           FROM generate_series(1, 1000) AS g",
    )
    .unwrap();
    let rows = outbox_rows(&mut app);
    assert_eq!(rows.len(), 1000);
    let distinct_event_ids: std::collections::HashSet<&str> =
        rows.iter().map(|r| r.event_id.as_str()).collect();
    assert_eq!(distinct_event_ids.len(), 1000);
    let instances: std::collections::HashSet<i64> = rows.iter().map(|r| r.aggregate_id).collect();
    assert_eq!(instances.len(), 1000);
    assert!(rows
        .iter()
        .all(|r| r.payload["score"].as_i64() == Some(r.aggregate_id - 1000)));
    assert_eq!(
        rows.iter()
            .map(|r| &r.txid)
            .collect::<std::collections::HashSet<_>>()
            .len(),
        1
    );

    let messages = notification_messages(&mut listener);
    assert_eq!(messages.len(), 1000);
    let notified: std::collections::HashSet<i64> = messages
        .iter()
        .map(|m| m["aggregate_id"].as_i64().unwrap())
        .collect();
    assert_eq!(notified, instances);
}

#[test]
fn large_cf_is_stored_whole_and_the_notification_omits_the_payload() {
    let cluster = Cluster::shared();
    let (database, mut app) = edge_database(ForeignKeys::With);
    let mut listener = listen(cluster, &database, "ae_events");
    let big = "x".repeat(20_000);
    app.execute(
        "INSERT INTO can.candidate VALUES (2, NULL, 8, 'big@example.com', NULL, NULL, NULL, NULL, NULL, true, NULL, NULL, NULL, jsonb_build_object('blob', $1::text))",
        &[&big],
    )
    .unwrap();
    app.batch_execute(
        "INSERT INTO ti.instance VALUES (80, NULL, NULL, NULL, 'in_progress', 2, 1, NULL, NULL, NULL, now(), 1, now(), 1)",
    )
    .unwrap();
    let payload = payload_of(&mut app, 80);
    assert_eq!(
        payload["candidate"]["cf"]["blob"].as_str().unwrap().len(),
        20_000
    );

    let received = drain_notifications(&mut listener, WAIT);
    assert_eq!(received.len(), 1);
    let text = &received[0].1;
    assert!(text.len() < 8000, "{} bytes", text.len());
    let message: Value = serde_json::from_str(text).unwrap();
    assert_eq!(message["payload_omitted"], json!(true));
    assert!(message.get("payload").is_none());
    assert_eq!(message["aggregate_id"], json!(80));
    let id = message["id"].as_i64().unwrap();
    let stored_id: i64 = app
        .query_one(
            "SELECT id FROM ae_events.outbox WHERE aggregate_id = 80",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(id, stored_id);
}

/// The payload is written as binary jsonb by the extension: PostgreSQL must read it as the same
/// value it builds from the payload's own text (equality, containment and hashing all walk the
/// binary structure), and the notification carries exactly the text of the stored value.
#[test]
fn stored_binary_payload_is_what_postgres_parses_from_its_text() {
    let cluster = Cluster::shared();
    let (database, mut app) = edge_database(ForeignKeys::With);
    let mut listener = listen(cluster, &database, "ae_events");
    app.batch_execute(
        "BEGIN;
         INSERT INTO tcf.measurement VALUES (1, 'scored', '1 day 02:03:04.5', 'https://r/1', 9, '2024-05-06', 3, 4);
         INSERT INTO ti.instance VALUES (10, 'ext', -9223372036854775807, 'NaN', 'completed', 1, 1, 1, 0, 10000,
             '2024-05-06 07:08:09.25+00', 1, '2024-05-06 07:08:09.999999+00', 2);
         INSERT INTO tcf.measurement_attribute VALUES
             (12, 1, 2, 1, 85.50, '-Infinity', 'r', NULL, '[1, \"two\", {\"3\": null}]', '2024-01-01', 1, '2024-01-01', 1),
             (11, 1, 1, NULL, 0.000001, 100, NULL, 'd', '\"just a string\"', '2024-01-01', 1, '2024-01-01', 1),
             (13, 1, 1, NULL, -123456789.123456789, 1e20, NULL, NULL, '12.5', '2024-01-01', 1, '2024-01-01', 1);
         INSERT INTO ti.instance
         SELECT 100 + g, repeat('x', g), g * 10007, g / 7.0, 'in_progress', 1, 1, 1, NULL, NULL, now(), 1, now(), 1
           FROM generate_series(1, 40) AS g;
         COMMIT;",
    )
    .unwrap();
    let row = app
        .query_one(
            "SELECT count(*),
                    count(*) FILTER (WHERE payload = payload::text::jsonb
                                       AND payload @> payload::text::jsonb
                                       AND payload::text::jsonb @> payload
                                       AND jsonb_hash(payload) = jsonb_hash(payload::text::jsonb)
                                       AND jsonb_hash_extended(payload, 7) = jsonb_hash_extended(payload::text::jsonb, 7)),
                    count(*) FILTER (WHERE jsonb_path_query_array(payload, '$.measurement.measurement_attributes[*].id')
                                           = '[11, 12, 13]'::jsonb)
               FROM ae_events.outbox",
            &[],
        )
        .unwrap();
    let (events, same_value, attributes_in_order): (i64, i64, i64) =
        (row.get(0), row.get(1), row.get(2));
    assert_eq!(events, 41);
    assert_eq!(same_value, 41);
    assert_eq!(attributes_in_order, 41);

    let payload = payload_of(&mut app, 10);
    let attributes = &payload["measurement"]["measurement_attributes"];
    assert_eq!(
        attributes[0]["additional_attributes"],
        json!("just a string")
    );
    assert_eq!(attributes[1]["percentile_score"], json!("-Infinity"));
    assert_eq!(
        attributes[1]["additional_attributes"],
        json!([1, "two", {"3": null}])
    );
    assert_eq!(attributes[2]["additional_attributes"], json!(12.5));
    assert_eq!(payload["old_id"], json!(-9223372036854775807i64));
    assert_eq!(payload["session_instance_id"], json!(0));
    let texts: Vec<String> = app
        .query(
            "SELECT attributes::text FROM ae_events.outbox,
                    jsonb_path_query(payload, '$.measurement.measurement_attributes[*].numerical_score') AS attributes
              WHERE aggregate_id = 10",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(texts, ["0.000001", "85.50", "-123456789.123456789"]);

    // The notification's payload is the stored value's own text, byte for byte.
    let stored: Vec<(i64, String)> = app
        .query(
            "SELECT aggregate_id, payload::text FROM ae_events.outbox ORDER BY id",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let received = drain_notifications(&mut listener, WAIT);
    assert_eq!(received.len(), stored.len());
    for ((_, message), (instance, text)) in received.iter().zip(&stored) {
        assert!(
            message.ends_with(&format!(",\"payload\":{text}}}")),
            "instance {instance}: {message}"
        );
    }
}

/// `ae_events.notify_payload_budget`: a transaction's notifications carry payloads until that
/// many bytes are used; the rest say `payload_omitted` (every event is still notified and
/// stored); the next transaction starts with a full budget; -1 removes the limit.
#[test]
fn notification_payload_budget_per_transaction() {
    let cluster = Cluster::shared();
    let (database, mut app) = edge_database(ForeignKeys::With);
    let mut listener = listen(cluster, &database, "ae_events");
    let insert = |app: &mut Client, first: i64| {
        app.batch_execute(&format!(
            "INSERT INTO ti.instance
             SELECT g, NULL, NULL, NULL, 'in_progress', 1, 1, NULL, NULL, NULL, now(), 1, now(), 1
               FROM generate_series({first}, {first} + 9) AS g"
        ))
        .unwrap();
    };
    let payload_size = |app: &mut Client| -> usize {
        let size: i32 = app
            .query_one(
                "SELECT octet_length(payload::text) FROM ae_events.outbox ORDER BY id DESC LIMIT 1",
                &[],
            )
            .unwrap()
            .get(0);
        size as usize
    };
    let carried = |messages: &[Value]| -> Vec<bool> {
        messages
            .iter()
            .map(|m| {
                assert!(m.get("payload").is_some() != (m["payload_omitted"] == json!(true)));
                m.get("payload").is_some()
            })
            .collect()
    };

    // Default (1 MB): ten small payloads all fit.
    insert(&mut app, 1);
    assert_eq!(carried(&notification_messages(&mut listener)), [true; 10]);

    // A budget of 1 kB: payloads are carried while less than that was used, then omitted.
    app.batch_execute("SET ae_events.notify_payload_budget = '1kB'")
        .unwrap();
    insert(&mut app, 11);
    let size = payload_size(&mut app);
    let expected_with_payload = 1024_usize.div_ceil(size);
    let expected: Vec<bool> = (0..10).map(|i| i < expected_with_payload).collect();
    assert!(expected_with_payload < 10, "payloads of {size} bytes");
    assert_eq!(carried(&notification_messages(&mut listener)), expected);
    // The next transaction has the whole budget again.
    insert(&mut app, 21);
    assert_eq!(carried(&notification_messages(&mut listener)), expected);

    // 0: never a payload; -1: no limit.
    app.batch_execute("SET ae_events.notify_payload_budget = 0")
        .unwrap();
    insert(&mut app, 31);
    assert_eq!(carried(&notification_messages(&mut listener)), [false; 10]);
    app.batch_execute("SET ae_events.notify_payload_budget = -1")
        .unwrap();
    insert(&mut app, 41);
    assert_eq!(carried(&notification_messages(&mut listener)), [true; 10]);
    assert_eq!(outbox_rows(&mut app).len(), 50);
}

/// Few instances are read with one joined query, many table by table: both give the same
/// payloads, with the same nulls and warnings for rows that do not exist.
#[test]
fn few_and_many_instances_read_alike_including_missing_rows() {
    let cluster = Cluster::shared();
    let mut payloads_by_size = Vec::new();
    for count in [3_i64, 40] {
        let (database, _app) = edge_database(ForeignKeys::Without);
        let (mut app, notices) = connect_collecting_notices(cluster, &database);
        app.batch_execute(&format!(
            "ALTER TABLE tcf.measurement_attribute
                 DROP CONSTRAINT measurement_attribute_section_configuration_attribute_id_fkey,
                 DROP CONSTRAINT measurement_attribute_ordinal_id_fkey;
             BEGIN;
             INSERT INTO tcf.measurement VALUES (1, 'scored', NULL, NULL, NULL, '2024-01-01', NULL, NULL);
             INSERT INTO tcf.measurement_attribute VALUES
                 (1, 1, 1, NULL, 1, NULL, NULL, NULL, NULL, '2024-01-01', 1, '2024-01-01', 1),
                 (2, 1, 77, 88, 2, NULL, NULL, NULL, NULL, '2024-01-01', 1, '2024-01-01', 1);
             -- instance 1 is whole; 2 has a missing candidate, catalog assessment and measurement;
             -- the rest alternate between the two
             INSERT INTO ti.instance
             SELECT g, NULL, NULL, NULL, 'in_progress',
                    CASE WHEN g % 2 = 0 THEN 999 ELSE 1 END, CASE WHEN g % 2 = 0 THEN 998 ELSE 1 END,
                    CASE WHEN g % 2 = 0 THEN 997 ELSE 1 END, NULL, NULL,
                    '2024-01-01', 1, '2024-01-01', 1
               FROM generate_series(1, {count}) AS g;
             COMMIT;"
        ))
        .unwrap();
        let whole = payload_of(&mut app, 1);
        let missing = payload_of(&mut app, 2);
        assert_eq!(whole["candidate"]["id"], json!(1), "{count}");
        assert_eq!(whole["catalog_assessment"]["catalog"]["id"], json!(1));
        let attributes = &whole["measurement"]["measurement_attributes"];
        assert_eq!(
            attributes[0]["section_configuration_attribute"]["id"],
            json!(1)
        );
        assert_eq!(
            attributes[1]["section_configuration_attribute"],
            Value::Null
        );
        assert_eq!(attributes[1]["ordinal"], Value::Null);
        for key in ["candidate", "catalog_assessment", "measurement"] {
            assert_eq!(missing[key], Value::Null, "{count} instances: {key}");
        }
        let notices = notices.lock().unwrap();
        for expected in [
            "ti.instance 2 refers to can.candidate 999",
            "ti.instance 2 refers to ae.catalog_assessment 998",
            "ti.instance 2 refers to tcf.measurement 997",
            "tcf.measurement_attribute 2 refers to tcf.section_configuration_attribute 77",
            "tcf.measurement_attribute 2 refers to tcf.ordinal 88",
        ] {
            assert!(
                notices
                    .iter()
                    .any(|n| n.starts_with("WARNING ae_events:") && n.contains(expected)),
                "{count} instances: {expected}: {notices:?}"
            );
        }
        payloads_by_size.push((whole, missing));
    }
    assert_eq!(payloads_by_size[0], payloads_by_size[1]);
}

/// A chunk is built within 20,000 attributes (each counted once per instance that shows it):
/// a transaction beyond that is built again in smaller groups, an instance with more on its own.
/// Every instance gets its event with all its attributes, created and updated alike.
#[test]
fn instances_beyond_a_chunks_attribute_budget_are_built_in_smaller_groups() {
    let cluster = Cluster::shared();
    let database = cluster.database("attrbudget", ForeignKeys::Without);
    let mut client = cluster.connect(&database);
    client.batch_execute(SEED_EXAMPLE).unwrap();
    // Measurements 601-604 with 7,000, 7,000, 25,000 and 3,000 attributes; instances 801-805,
    // 805 sharing 604 with 804 (so 604's attributes count twice): 49,000 in all.
    let attributes = [(601, 7_000), (602, 7_000), (603, 25_000), (604, 3_000)];
    let mut setup = String::from("BEGIN;");
    let mut next_id = 1_000;
    for (measurement, count) in attributes {
        setup.push_str(&format!(
            "INSERT INTO tcf.measurement (id, status, time_taken, measured_at)
                 VALUES ({measurement}, 'done', '00:10:00', now());
             INSERT INTO tcf.measurement_attribute (id, measurement_id,
                 section_configuration_attribute_id, numerical_score, created_at, created_by,
                 updated_at, updated_by)
             SELECT {next_id} + g, {measurement}, 10, g, now(), 1, now(), 1
               FROM generate_series(1, {count}) AS g;"
        ));
        next_id += count + 1;
    }
    for (instance, measurement) in [(801, 601), (802, 602), (803, 603), (804, 604), (805, 604)] {
        setup.push_str(&format!(
            "INSERT INTO ti.instance VALUES ({instance}, NULL, NULL, NULL, 'in_progress', 101, \
             202, {measurement}, NULL, NULL, now(), 1, now(), 1);"
        ));
    }
    setup.push_str("COMMIT;");
    client.batch_execute(&setup).unwrap();

    let shown = |client: &mut Client, key: &str| -> Vec<(i64, i64, i32)> {
        client
            .query(
                "SELECT aggregate_id, jsonb_array_length(payload -> 'measurement' -> 'measurement_attributes'),
                        snapshot_version
                   FROM ae_events.outbox WHERE subscription_key = $1 AND aggregate_id > 800
                  ORDER BY aggregate_id",
                &[&key],
            )
            .unwrap()
            .iter()
            .map(|row| (row.get(0), row.get::<_, i32>(1) as i64, row.get(2)))
            .collect()
    };
    let expected = |version: i32| {
        vec![
            (801, 7_000, version),
            (802, 7_000, version),
            (803, 25_000, version),
            (804, 3_000, version),
            (805, 3_000, version),
        ]
    };
    assert_eq!(shown(&mut client, "ae.test_instance.created"), expected(1));

    client
        .batch_execute("UPDATE ti.instance SET score = 1 WHERE id > 800")
        .unwrap();
    assert_eq!(shown(&mut client, "ae.test_instance.updated"), expected(2));
}

/// A chunk of many instances whose ids are dense is read with one range scan of each key
/// (`snapshot::for_each_row_by_key`): the rows between its ids (instances, candidates and
/// measurements of other instances) are skipped. Created: the odd instances, after the even ones,
/// each with its own candidate and measurement between the even instances' ones; updated: three
/// instances of every four.
#[test]
fn a_chunk_read_as_a_range_gives_events_to_its_own_instances_only() {
    let (_database, mut app) = edge_database(ForeignKeys::With);
    app.batch_execute(
        "INSERT INTO can.candidate
         SELECT g, NULL, g, 'c' || g || '@example.com', 'C', NULL, NULL, NULL, NULL, true, NULL,
                NULL, NULL, '{}'
           FROM generate_series(5000, 5079) AS g;
         INSERT INTO tcf.measurement
         SELECT g, 'done', '01:00:00', NULL, NULL, '2024-05-06 07:08:09+00', NULL, NULL
           FROM generate_series(5000, 5079) AS g;
         INSERT INTO ti.instance
         SELECT g, NULL, NULL, g, 'in_progress', g, 1, g, NULL, NULL, now(), 1, now(), 1
           FROM generate_series(5000, 5078, 2) AS g",
    )
    .unwrap();
    let before = outbox_rows(&mut app).len();
    app.batch_execute(
        "INSERT INTO ti.instance
         SELECT g, NULL, NULL, g, 'in_progress', g, 1, g, NULL, NULL, now(), 1, now(), 1
           FROM generate_series(5001, 5079, 2) AS g",
    )
    .unwrap();
    let created: Vec<(i64, Value, Value)> = outbox_rows(&mut app)[before..]
        .iter()
        .map(|row| {
            (
                row.aggregate_id,
                row.payload["candidate"]["id"].clone(),
                row.payload["measurement"]["id"].clone(),
            )
        })
        .collect();
    let expected: Vec<(i64, Value, Value)> = (5001..=5079)
        .step_by(2)
        .map(|id| (id, json!(id), json!(id)))
        .collect();
    assert_eq!(created, expected);
    let before = outbox_rows(&mut app).len();
    app.batch_execute(
        "UPDATE ti.instance SET score = 1 WHERE id BETWEEN 5000 AND 5079 AND id % 4 <> 0",
    )
    .unwrap();
    let updated: Vec<(i64, i32)> = outbox_rows(&mut app)[before..]
        .iter()
        .map(|row| (row.aggregate_id, row.snapshot_version))
        .collect();
    let expected: Vec<(i64, i32)> = (5000..=5079)
        .filter(|id| id % 4 != 0)
        .map(|id| (id, 2))
        .collect();
    assert_eq!(updated.len(), 60);
    assert_eq!(updated, expected);
}
