//! The event catalog on the relay's side (issue 23): `ae-relay schema` prints the webhooks'
//! OpenAPI document from the database or the built-in one, and the test receivers validate
//! every ae.test_instance.* body they get against the built-in schema.

mod support;

use serde_json::Value;
use std::process::Command;
use std::time::Duration;
use support::*;

const WAIT: Duration = Duration::from_secs(30);

fn committed(path: &str) -> Value {
    let text = std::fs::read_to_string(repository_root().join(path)).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// `ae-relay schema ARGS` without DATABASE_URL in the environment: (success, stdout, stderr).
fn schema(args: &[&str]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_ae-relay"))
        .arg("schema")
        .args(args)
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[test]
fn schema_prints_the_built_in_document_without_a_database() {
    let (ok, out, err) = schema(&[]);
    assert!(ok, "{err}");
    assert_eq!(json(&out), committed("docs/openapi.json"));
    let (ok, out, err) = schema(&["--key", "ae.test_instance.created"]);
    assert!(ok, "{err}");
    assert_eq!(
        json(&out),
        committed("docs/schemas/ae.test_instance.created.json")
    );
    let (ok, _, err) = schema(&["--key", "ae.test_instance.deleted"]);
    assert!(!ok);
    assert!(
        err.contains("ae.test_instance.created, ae.test_instance.updated"),
        "{err}"
    );
}

#[test]
fn schema_prints_the_databases_document_with_its_rules() {
    let cluster = Cluster::shared();
    // After the extension made its roles.
    let database = cluster.database("schema_command", ForeignKeys::Without);
    ensure_relay_login(cluster);
    let mut client = cluster.connect(&database);
    client
        .batch_execute("INSERT INTO ae_events.payload_rules VALUES ('candidate.email', 'remove')")
        .unwrap();
    let url = format!(
        "postgres://relay_user@127.0.0.1:{}/{database}",
        cluster.port
    );
    let (ok, out, err) = schema(&["--database-url", &url]);
    assert!(ok, "{err}");
    let expected: Value = client
        .query_one("SELECT ae_events.openapi()", &[])
        .unwrap()
        .get(0);
    assert_eq!(json(&out), expected);
    // The rule shows: not the built-in document.
    assert_ne!(json(&out), committed("docs/openapi.json"));
    let (ok, out, err) = schema(&["--database-url", &url, "--key", "ae.test_instance.updated"]);
    assert!(ok, "{err}");
    let schema_value = json(&out);
    let required = schema_value["properties"]["candidate"]["required"]
        .as_array()
        .unwrap();
    assert!(!required.contains(&Value::from("email")));
    let (ok, _, err) = schema(&["--database-url", &url, "--key", "nope"]);
    assert!(!ok);
    assert!(err.contains("ae.test_instance.created"), "{err}");
}

/// Real deliveries validate; a body that does not (a row planted by hand) fails the test that
/// receives it.
#[test]
fn the_receivers_validate_every_test_instance_body() {
    let (database, mut client) = delivery_database("schema_receiver");
    let cluster = Cluster::shared();
    let receiver = Receiver::ok();
    create_endpoint(&mut client, "validated", &receiver.url("/"), "{100ms}");
    let _relay = Relay::start(cluster, &database, &[]);
    insert_instance(&mut client, 1);
    client
        .batch_execute("UPDATE ti.instance SET score = 'NaN' WHERE id = 1")
        .unwrap();
    let requests = receiver.wait_for("two events", WAIT, |r| r.len() >= 2);
    assert_eq!(
        requests[1].header("ae-subscription-key"),
        "ae.test_instance.updated"
    );
    assert!(
        requests[1].body.contains("\"score\": \"NaN\""),
        "{}",
        requests[1].body
    );
    client
        .batch_execute(
            "INSERT INTO ae_events.outbox (event_id, subscription_key, event_type, aggregate_type,
                                           aggregate_id, snapshot_version, payload, occurred_at, txid)
             VALUES (gen_random_uuid(), 'ae.test_instance.created', 'ae_test_instance_created',
                     'test_instance', 2, 1, '{\"id\": 2}', now(), pg_current_xact_id())",
        )
        .unwrap();
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        receiver.wait_for("the planted event", WAIT, |r| r.len() >= 3)
    }));
    let message = caught
        .err()
        .and_then(|panic| panic.downcast::<String>().ok())
        .map(|message| *message)
        .unwrap_or_default();
    assert!(
        message.contains("do not validate") && message.contains("instance_status"),
        "{message}"
    );
    // The receiver would fail this test again when dropped: forget it (its runtime ends with
    // the process).
    std::mem::forget(receiver);
}
