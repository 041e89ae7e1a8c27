//! `ae_events.send_test_event` in SQL (shared/contract/catalog.md §2): what it queues, what it
//! refuses, and its bound. Delivery through ae-relay, the `ae-test` header, who may call it and
//! what other endpoints and consumers see: relay/tests/receivers.rs.

mod common;

use common::*;

fn refused(client: &mut postgres::Client, call: &str) -> (String, String) {
    let error = client
        .query_one(&format!("SELECT ae_events.send_test_event({call})"), &[])
        .unwrap_err();
    (sqlstate(&error), error_message(&error))
}

#[test]
fn send_test_event_queues_the_seeds_example_for_one_endpoint_and_refuses_what_it_cannot_send() {
    let cluster = Cluster::shared();
    let database = cluster.database("send_test_event", ForeignKeys::Without);
    let mut client = cluster.connect(&database);
    client
        .batch_execute(
            "SELECT ae_events.create_endpoint('all', 'http://127.0.0.1:9/all');
             SELECT ae_events.create_endpoint('created', 'http://127.0.0.1:9/c',
                                              ARRAY['ae.test_instance.created']);
             SELECT ae_events.create_endpoint('off', 'http://127.0.0.1:9/off');
             SELECT ae_events.disable_endpoint('off', 'maintenance');",
        )
        .unwrap();

    let id: String = client
        .query_one("SELECT ae_events.send_test_event('all')::text", &[])
        .unwrap()
        .get(0);
    let (key, event_type, instance, version, payload): (String, String, i64, i32, String) = {
        let r = client
            .query_one(
                "SELECT t.subscription_key, t.event_type, t.aggregate_id, t.snapshot_version,
                        t.payload::text
                   FROM ae_events.test_events AS t JOIN ae_events.endpoints AS e USING (endpoint_id)
                  WHERE e.endpoint = 'all' AND t.webhook_id = $1::text::uuid",
                &[&id],
            )
            .unwrap();
        (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4))
    };
    assert_eq!(
        (key.as_str(), event_type.as_str(), instance, version),
        (
            "ae.test_instance.created",
            "ae_test_instance_created",
            789,
            1
        )
    );
    let payload: serde_json::Value = serde_json::from_str(&payload).unwrap();
    assert_eq!(
        payload,
        seed_example_payload(),
        "exactly the seed's example"
    );
    let outbox: i64 = client
        .query_one(
            "SELECT count(*) FROM ae_events.outbox WHERE event_id = $1::text::uuid",
            &[&id],
        )
        .unwrap()
        .get(0);
    assert_eq!(outbox, 0, "a test event is no event of the outbox");

    // Refused: each with its SQLSTATE.
    for (call, state) in [
        ("'nowhere'", "42704"),
        ("NULL", "22004"),
        ("'all', 'ae.test_instance.deleted'", "22023"),
        ("'all', NULL", "22023"),
        ("'created', 'ae.test_instance.updated'", "22023"),
        ("'off'", "55000"),
    ] {
        let (got, message) = refused(&mut client, call);
        assert_eq!(got, state, "{call}: {message}");
        assert!(message.starts_with("ae_events: "), "{message}");
    }

    // At most 10 waiting per endpoint; another endpoint has its own 10.
    for _ in 1..10 {
        client
            .query_one(
                "SELECT ae_events.send_test_event('all', 'ae.test_instance.updated')",
                &[],
            )
            .unwrap();
    }
    let (state, message) = refused(&mut client, "'all'");
    assert_eq!(state, "54000", "{message}");
    client
        .query_one("SELECT ae_events.send_test_event('created')", &[])
        .unwrap();
    let waiting: i64 = client
        .query_one(
            "SELECT count(*) FROM ae_events.delivery_status
              WHERE is_test AND status = 'pending' AND endpoint = 'all'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(waiting, 10);

    // prune() deletes finished test events of before its cutoff, never a waiting one.
    client
        .batch_execute(
            "UPDATE ae_events.test_events SET requested_at = now() - interval '2 days';
             UPDATE ae_events.test_events SET status = 'delivered', next_attempt_at = NULL
              WHERE id IN (SELECT id FROM ae_events.test_events ORDER BY id LIMIT 3);
             SELECT ae_events.prune('1 day');",
        )
        .unwrap();
    let left: i64 = client
        .query_one("SELECT count(*) FROM ae_events.test_events", &[])
        .unwrap()
        .get(0);
    assert_eq!(left, 8);

    // A dropped endpoint's test events are shown nowhere, and prune() deletes them.
    client
        .batch_execute("SELECT ae_events.drop_endpoint('all')")
        .unwrap();
    let shown: i64 = client
        .query_one(
            "SELECT count(*) FROM ae_events.delivery_status WHERE endpoint = 'all'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(shown, 0);
    client
        .batch_execute("SELECT ae_events.prune('1 day')")
        .unwrap();
    let left: i64 = client
        .query_one("SELECT count(*) FROM ae_events.test_events", &[])
        .unwrap()
        .get(0);
    assert_eq!(left, 1, "the other endpoint's");
}
