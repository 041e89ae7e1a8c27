//! erase_candidate while ae-relay delivers (shared/contract/privacy.md §1): a pending delivery is
//! sent with the erased payload under the same webhook-id, and an erasure racing a relay under
//! load loses, doubles and half-erases nothing. The SQL side: tests/privacy.rs.

mod support;

use serde_json::Value;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::*;

const WAIT: Duration = Duration::from_secs(60);

/// The seed's candidate 101 as its events carry it.
const EMAIL: &str = "candidate@example.com";

/// Whether a body's candidate 101 is erased (every field but id null), as stored (the seed's
/// values), or neither (half-erased: a failure); "other" for another candidate.
fn candidate_state(body: &str) -> &'static str {
    let payload: Value = serde_json::from_str(body).unwrap();
    let Some(candidate) = payload["candidate"].as_object() else {
        return "other";
    };
    if candidate.get("id") != Some(&Value::from(101)) {
        return "other";
    }
    let others: Vec<&Value> = candidate
        .iter()
        .filter(|(name, _)| name.as_str() != "id")
        .map(|(_, value)| value)
        .collect();
    if others.iter().all(|v| v.is_null()) {
        "erased"
    } else if candidate["email"] == EMAIL
        && candidate["first_name"] == "Jane"
        && candidate["phone_number"] == "+19876543210"
        && others.iter().all(|v| !v.is_null())
    {
        "stored"
    } else {
        "half"
    }
}

#[test]
fn a_pending_delivery_is_sent_with_the_erased_payload_and_the_same_webhook_id() {
    let cluster = Cluster::shared();
    let database = cluster.database("erase_pending", ForeignKeys::Without);
    let mut client = cluster.connect(&database);
    // The receiver refuses the candidate's personal data until it is erased.
    let receiver = Receiver::start(|request, _| {
        if candidate_state(&request.body) == "erased" {
            Answer::status(200)
        } else {
            Answer::status(500)
        }
    });
    create_endpoint(
        &mut client,
        "hook",
        &receiver.url("/"),
        "{1s,1s,1s,1s,1s,1s,1s,1s}",
    );
    client.batch_execute(SEED_EXAMPLE).unwrap();
    let _relay = Relay::start(cluster, &database, &[]);

    let first = receiver.wait_for("the first attempt", WAIT, |r| !r.is_empty())[0].clone();
    assert_eq!(candidate_state(&first.body), "stored");
    let webhook_id = first.header("webhook-id").to_owned();
    wait_until_sql(
        &mut client,
        "the failed attempt recorded",
        WAIT,
        "SELECT EXISTS (SELECT FROM ae_events.deliveries WHERE status = 'pending' AND attempts >= 1)",
    );
    let erased: i64 = client
        .query_one("SELECT ae_events.erase_candidate(101)", &[])
        .unwrap()
        .get(0);
    assert_eq!(erased, 1);

    let requests = receiver.wait_for("the erased payload", WAIT, |r| {
        r.iter().any(|r| candidate_state(&r.body) == "erased")
    });
    assert!(
        requests
            .iter()
            .all(|r| r.header("webhook-id") == webhook_id),
        "one event, one webhook-id"
    );
    let sent = requests
        .iter()
        .find(|r| candidate_state(&r.body) == "erased")
        .unwrap();
    let payload: Value = serde_json::from_str(&sent.body).unwrap();
    assert_eq!(payload["candidate"]["id"], 101);
    assert_eq!(payload["id"], 789, "the rest of the payload as it was");
    wait_until_sql(
        &mut client,
        "the delivery recorded",
        WAIT,
        "SELECT status = 'delivered' AND last_error IS NULL FROM ae_events.deliveries",
    );
    assert!(requests.iter().all(|r| candidate_state(&r.body) != "half"));
}

#[test]
fn an_erasure_racing_a_relay_under_load_loses_doubles_and_half_erases_nothing() {
    let cluster = Cluster::shared();
    let (database, mut client) = delivery_database("erase_load");
    client.batch_execute(SEED_EXAMPLE).unwrap();
    let receiver = Receiver::ok();
    create_endpoint(&mut client, "hook", &receiver.url("/"), "{1s,1s,1s,1s,1s}");
    let _relay = Relay::start(cluster, &database, &[]);

    // Writers: instances of candidates 101 and 1, each created then updated, while erasures of
    // 101 run one after another.
    let writing = Arc::new(AtomicBool::new(true));
    let writer = {
        let url = cluster.url(&database);
        let writing = writing.clone();
        std::thread::spawn(move || {
            let mut writer = postgres::Client::connect(&url, postgres::NoTls).unwrap();
            for i in 0..150_i64 {
                let candidate: i64 = if i % 2 == 0 { 101 } else { 1 };
                writer
                    .execute(
                        "INSERT INTO ti.instance VALUES ($1, NULL, NULL, NULL, 'in_progress', $2, 1,
                                                        NULL, NULL, NULL, now(), 1, now(), 1)",
                        &[&(1000 + i), &candidate],
                    )
                    .unwrap();
                if i % 3 == 0 {
                    writer
                        .execute(
                            "UPDATE ti.instance SET instance_status = 'completed' WHERE id = $1",
                            &[&(1000 + i)],
                        )
                        .unwrap();
                }
            }
            writing.store(false, Ordering::SeqCst);
        })
    };
    let mut erasures = 0;
    let mut erased_total = 0_i64;
    while writing.load(Ordering::SeqCst) || erasures == 0 {
        erased_total += client
            .query_one("SELECT ae_events.erase_candidate(101)", &[])
            .unwrap()
            .get::<_, i64>(0);
        erasures += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
    writer.join().unwrap();
    assert!(
        erasures >= 2 && erased_total > 0,
        "{erasures} erasures, {erased_total} events"
    );

    let events: Vec<String> = client
        .query(
            "SELECT event_id::text FROM ae_events.outbox
              WHERE aggregate_type = 'test_instance' AND aggregate_id >= 1000",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let requests = receiver.wait_for("every event", WAIT, |r| r.len() >= events.len());
    let mut sent: HashMap<&str, usize> = HashMap::new();
    for request in &requests {
        *sent.entry(request.header("webhook-id")).or_default() += 1;
    }
    assert!(
        events.iter().all(|e| sent.get(e.as_str()) == Some(&1)),
        "every event exactly once: {} events, {} requests, {} distinct",
        events.len(),
        requests.len(),
        sent.len()
    );
    assert_eq!(requests.len(), events.len(), "nothing else sent");
    let states: HashMap<&str, usize> = requests.iter().fold(HashMap::new(), |mut m, r| {
        *m.entry(candidate_state(&r.body)).or_default() += 1;
        m
    });
    assert_eq!(states.get("half"), None, "{states:?}");
    assert!(
        states.get("erased").is_some_and(|n| *n > 0),
        "some went out erased: {states:?}"
    );
    // What the last erasure did not see it erases now; then every event of 101 is erased.
    client
        .batch_execute("SELECT ae_events.erase_candidate(101)")
        .unwrap();
    let left: i64 = client
        .query_one(
            "SELECT count(*) FROM ae_events.outbox
              WHERE payload->>'candidate_id' = '101' AND payload#>>'{candidate,email}' IS NOT NULL",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
}
