//! Payload visibility rules: each action, at the top level, inside every measurement attribute
//! and inside free-form jsonb, applied before the event is stored or notified.

mod common;

use common::*;
use postgres::Client;
use serde_json::{json, Value};
use std::time::Duration;

/// The seed's instance with two attributes that have remarks and additional attributes, and a
/// candidate `cf` with a key to remove.
const SEED_WITH_DETAILS: &str = "
UPDATE can.candidate SET cf = '{\"team\": \"platform\", \"source\": \"referral\"}' WHERE id = 101;
UPDATE tcf.measurement_attribute
   SET remarks = 'Strong on loops', additional_attributes = '{\"rubric\": \"v2\"}' WHERE id = 1;
INSERT INTO tcf.measurement_attribute VALUES
    (2, 505, 10, NULL, 80, 90, 'Weak on recursion', 'second', '{\"rubric\": \"v3\"}', now(), 1, now(), 1);
";

const RULES: &str = "
INSERT INTO ae_events.payload_rules (path, action) VALUES
    ('candidate.email', 'sha256'),
    ('candidate.phone_number', 'remove'),
    ('candidate.first_name', 'null'),
    ('candidate.cf.team', 'remove'),
    ('measurement.measurement_attributes.*.remarks', 'sha256'),
    ('measurement.measurement_attributes.*.additional_attributes', 'remove'),
    ('measurement.measurement_attributes.*.percentile_score', 'null');
";

fn sha256_hex(client: &mut Client, text: &str) -> String {
    client
        .query_one(
            "SELECT encode(sha256(convert_to($1, 'UTF8')), 'hex')",
            &[&text],
        )
        .unwrap()
        .get(0)
}

fn database_with_rules(name: &str) -> (String, Client) {
    let cluster = Cluster::shared();
    let database = cluster.database(name, ForeignKeys::Without);
    let mut client = cluster.connect(&database);
    client.batch_execute(RULES).unwrap();
    (database, client)
}

#[test]
fn each_action_applies_before_the_event_is_stored_and_notified() {
    let cluster = Cluster::shared();
    let (database, mut client) = database_with_rules("rules");
    let mut listener = cluster.connect(&database);
    listener.batch_execute("LISTEN ae_events").unwrap();
    // The rules apply to what a notification carries too: with notify = full, the DBA's choice.
    client.batch_execute("SET ae_events.notify = full").unwrap();
    client
        .batch_execute(&SEED_EXAMPLE.replace("COMMIT;", &format!("{SEED_WITH_DETAILS} COMMIT;")))
        .unwrap();

    let rows = outbox_rows(&mut client);
    assert_eq!(rows.len(), 1);
    let payload = &rows[0].payload;
    let candidate = &payload["candidate"];
    assert_eq!(
        candidate["email"],
        json!(sha256_hex(&mut client, "candidate@example.com"))
    );
    assert!(candidate.get("phone_number").is_none(), "{candidate}");
    assert_eq!(candidate["first_name"], Value::Null);
    assert_eq!(
        candidate["last_name"],
        json!("Doe"),
        "other fields untouched"
    );
    assert_eq!(candidate["cf"], json!({"source": "referral"}));
    let attributes = payload["measurement"]["measurement_attributes"]
        .as_array()
        .unwrap();
    assert_eq!(attributes.len(), 2);
    for (attribute, remarks) in attributes
        .iter()
        .zip(["Strong on loops", "Weak on recursion"])
    {
        assert_eq!(
            attribute["remarks"],
            json!(sha256_hex(&mut client, remarks))
        );
        assert!(
            attribute.get("additional_attributes").is_none(),
            "{attribute}"
        );
        assert_eq!(attribute["percentile_score"], Value::Null);
        assert!(attribute.get("description").is_some());
    }
    assert_eq!(attributes[1]["numerical_score"], json!(80));

    // The notification carries the same redacted payload; no raw value anywhere.
    let received = drain_notifications(&mut listener, Duration::from_millis(1500));
    assert_eq!(received.len(), 1);
    let message: Value = serde_json::from_str(&received[0].1).unwrap();
    assert_eq!(&message["payload"], payload);
    for raw in [
        "candidate@example.com",
        "+19876543210",
        "Jane",
        "platform",
        "Strong on loops",
        "v2",
    ] {
        assert!(!received[0].1.contains(raw), "{raw} in the notification");
        let stored: bool = client
            .query_one(
                "SELECT strpos(payload::text, $1) > 0 FROM ae_events.outbox",
                &[&raw],
            )
            .unwrap()
            .get(0);
        assert!(!stored, "{raw} in the outbox");
    }

    // snapshot() applies the same rules.
    let snapshot: Value = client
        .query_one("SELECT ae_events.snapshot(789)", &[])
        .unwrap()
        .get(0);
    assert_eq!(&snapshot, payload);

    // The analysts' view reads what the rules left (a hashed number is no number: NULL).
    client
        .batch_execute("INSERT INTO ae_events.payload_rules VALUES ('candidate_id', 'sha256')")
        .unwrap();
    client
        .batch_execute("UPDATE ti.instance SET score = 12.5 WHERE id = 789")
        .unwrap();
    let view: Vec<(Option<i64>, Option<String>, i32)> = client
        .query(
            "SELECT candidate_id, candidate_name, attribute_count FROM ae_events.events ORDER BY id",
            &[],
        )
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2)))
        .collect();
    assert_eq!(
        view,
        [
            (Some(101), Some("Doe".to_owned()), 2),
            (None, Some("Doe".to_owned()), 2)
        ]
    );
}

#[test]
fn updated_events_compare_the_redacted_payload() {
    let (_, mut client) = database_with_rules("rulesupdated");
    client.batch_execute(SEED_EXAMPLE).unwrap();
    // Only a removed field changes: the stored snapshot is the same, so no event.
    client
        .batch_execute("UPDATE can.candidate SET phone_number = '+100' WHERE id = 101")
        .unwrap();
    assert_eq!(outbox_rows(&mut client).len(), 1);
    // A hashed field changes: an event with the new digest.
    client
        .batch_execute("UPDATE can.candidate SET email = 'new@example.com' WHERE id = 101")
        .unwrap();
    let rows = outbox_rows(&mut client);
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[1].snapshot_version, 2);
    assert_eq!(
        rows[1].payload["candidate"]["email"],
        json!(sha256_hex(&mut client, "new@example.com"))
    );
}

#[test]
fn a_rule_applies_from_the_next_commit_and_bad_rules_are_refused() {
    let cluster = Cluster::shared();
    let database = cluster.database("rulesnext", ForeignKeys::Without);
    let mut client = cluster.connect(&database);
    client.batch_execute(SEED_EXAMPLE).unwrap();
    client
        .batch_execute(
            "INSERT INTO ae_events.payload_rules VALUES ('candidate.email', 'remove');
             UPDATE ti.instance SET score = 1 WHERE id = 789;",
        )
        .unwrap();
    let rows = outbox_rows(&mut client);
    assert_eq!(
        rows[0].payload["candidate"]["email"],
        json!("candidate@example.com"),
        "events written before the rule keep their payload"
    );
    assert!(rows[1].payload["candidate"].get("email").is_none());

    for (rule, fragment) in [
        (
            "('candidate.emial', 'remove')",
            "names nothing in the payload",
        ),
        (
            "('measurement.measurement_attributes.0.remarks', 'null')",
            "names nothing",
        ),
        (
            "('candidate.email', 'mask')",
            "is not remove, null or sha256",
        ),
    ] {
        let error = client
            .batch_execute(&format!(
                "INSERT INTO ae_events.payload_rules VALUES {rule} ON CONFLICT (path) DO UPDATE SET action = excluded.action"
            ))
            .unwrap_err();
        assert_eq!(sqlstate(&error), "23514", "{rule}");
        let message = error_message(&error);
        assert!(
            message.starts_with("ae_events: ") && message.contains(fragment),
            "{rule}: {message}"
        );
    }

    // The application's role cannot read or change the rules.
    client
        .batch_execute("CREATE ROLE rules_app LOGIN; GRANT USAGE ON SCHEMA ae_events TO rules_app")
        .unwrap();
    let mut app = cluster.connect_as(&database, "rules_app");
    for statement in [
        "SELECT * FROM ae_events.payload_rules",
        "DELETE FROM ae_events.payload_rules",
    ] {
        let error = app.batch_execute(statement).unwrap_err();
        assert_eq!(sqlstate(&error), "42501", "{statement}");
    }
}

/// Whether the newest event of instance 789 shows the candidate's email.
fn last_event_shows_email(client: &mut Client) -> bool {
    // Earlier events were written under other rules: the last validates against those in force.
    let rows = outbox_rows_unvalidated(client);
    let last = rows.last().expect("an event");
    validate_rows(client, std::slice::from_ref(last));
    last.payload["candidate"].get("email").is_some()
}

#[test]
fn cached_rules_follow_every_change_however_it_is_made() {
    let cluster = Cluster::shared();
    let database = cluster.database("rulescache", ForeignKeys::Without);
    let mut app = cluster.connect(&database);
    let mut dba = cluster.connect(&database);
    app.batch_execute(SEED_EXAMPLE).unwrap();
    let mut score = 0;
    let mut change = |app: &mut Client| {
        score += 1;
        app.batch_execute(&format!(
            "UPDATE ti.instance SET score = {score} WHERE id = 789"
        ))
        .unwrap();
        last_event_shows_email(app)
    };
    // The app's backend reads (and caches) the rules at its first commit.
    assert!(change(&mut app));
    dba.batch_execute("INSERT INTO ae_events.payload_rules VALUES ('candidate.email', 'remove')")
        .unwrap();
    assert!(!change(&mut app), "a rule committed by another session");

    // Committed by another session after the app's statements, before its commit: applied, as
    // a query at commit would see it.
    app.batch_execute("BEGIN; UPDATE ti.instance SET score = 300 WHERE id = 789")
        .unwrap();
    dba.batch_execute("DELETE FROM ae_events.payload_rules")
        .unwrap();
    app.batch_execute("COMMIT").unwrap();
    assert!(
        last_event_shows_email(&mut app),
        "a change committed while the app's transaction was open"
    );
    dba.batch_execute("INSERT INTO ae_events.payload_rules VALUES ('candidate.email', 'remove')")
        .unwrap();
    assert!(!change(&mut app));

    // Uncommitted elsewhere: not yet; rolled back: never.
    dba.batch_execute("BEGIN; DELETE FROM ae_events.payload_rules")
        .unwrap();
    assert!(!change(&mut app), "another session's uncommitted delete");
    dba.batch_execute("ROLLBACK").unwrap();
    assert!(!change(&mut app));
    // The pass runs inside the transaction (SET CONSTRAINTS ... IMMEDIATE), reading (and
    // caching) the rules as the transaction's own delete left them; then it rolls back.
    app.batch_execute(
        "BEGIN; DELETE FROM ae_events.payload_rules;
         UPDATE ti.instance SET score = 100 WHERE id = 789; SET CONSTRAINTS ALL IMMEDIATE;",
    )
    .unwrap();
    assert!(
        last_event_shows_email(&mut app),
        "the transaction's own delete"
    );
    app.batch_execute("ROLLBACK").unwrap();
    assert!(
        !change(&mut app),
        "a change the app's own transaction rolled back is not kept"
    );

    // In the same transaction as the change that makes the event.
    app.batch_execute(
        "BEGIN; DELETE FROM ae_events.payload_rules;
         UPDATE ti.instance SET score = 200 WHERE id = 789; COMMIT;",
    )
    .unwrap();
    assert!(last_event_shows_email(&mut app), "same transaction");

    // TRUNCATE, and a session in replica mode (a logical replication apply): the trigger is ALWAYS.
    dba.batch_execute("INSERT INTO ae_events.payload_rules VALUES ('candidate.email', 'remove')")
        .unwrap();
    assert!(!change(&mut app));
    dba.batch_execute("TRUNCATE ae_events.payload_rules")
        .unwrap();
    assert!(change(&mut app), "truncated");
    dba.batch_execute(
        "SET session_replication_role = replica;
         INSERT INTO ae_events.payload_rules VALUES ('candidate.email', 'remove');
         RESET session_replication_role;",
    )
    .unwrap();
    assert!(!change(&mut app), "inserted by a replica-role session");

    // Without the invalidating trigger, nothing is cached: every commit reads the rules.
    dba.batch_execute("ALTER TABLE ae_events.payload_rules DISABLE TRIGGER payload_rules_changed")
        .unwrap();
    assert!(!change(&mut app));
    dba.batch_execute("DELETE FROM ae_events.payload_rules")
        .unwrap();
    assert!(change(&mut app), "trigger disabled: read again");
    dba.batch_execute("INSERT INTO ae_events.payload_rules VALUES ('candidate.email', 'remove')")
        .unwrap();
    assert!(!change(&mut app), "trigger disabled: read again");
}
