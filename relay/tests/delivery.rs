//! ae-relay against a real cluster and a real HTTP receiver (shared/contract/webhooks.md): the
//! request, the outcomes and retries, order per instance, isolation, secrets, redelivery and
//! replay, the status views, who may do what, and bad input.

mod support;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use support::*;

const WAIT: Duration = Duration::from_secs(30);

#[test]
fn the_seed_example_arrives_as_one_signed_post_whose_body_is_the_stored_payload() {
    let cluster = Cluster::shared();
    let database = cluster.database("seed_webhook", ForeignKeys::Without);
    let mut client = cluster.connect(&database);
    let receiver = Receiver::ok();
    let secret: String = client
        .query_one(
            "SELECT ae_events.create_endpoint('proctors', $1)",
            &[&receiver.url("/hooks")],
        )
        .unwrap()
        .get(0);
    assert!(secret.starts_with("whsec_"), "{secret}");
    client.batch_execute(SEED_EXAMPLE).unwrap();
    let _relay = Relay::start(cluster, &database, &[]);

    let requests = receiver.wait_for("the seed's event", WAIT, |r| !r.is_empty());
    std::thread::sleep(Duration::from_millis(500)); // nothing else comes
    let requests_after = receiver.requests();
    assert_eq!(requests_after.len(), 1, "one request: {requests_after:?}");
    let request = &requests[0];
    let (event_id, instance, version, stored_payload) = outbox_events(&mut client).remove(0);
    assert_eq!(request.method, "POST");
    assert_eq!(request.path, "/hooks");
    assert_eq!(
        request.body, stored_payload,
        "the body is the stored jsonb's text"
    );
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&request.body).unwrap(),
        seed_example_payload()
    );
    assert_eq!(request.header("content-type"), "application/json");
    assert_eq!(request.header("webhook-id"), event_id);
    assert_eq!(
        request.header("ae-subscription-key"),
        "ae.test_instance.created"
    );
    assert_eq!(request.header("ae-event-type"), "ae_test_instance_created");
    assert_eq!(request.header("ae-aggregate-id"), instance.to_string());
    assert_eq!(request.header("ae-snapshot-version"), version.to_string());
    assert_eq!(
        request.header("user-agent"),
        format!("ae-relay/{}", env!("CARGO_PKG_VERSION"))
    );
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let timestamp: i64 = request.header("webhook-timestamp").parse().unwrap();
    assert!(
        (now - timestamp).abs() < 60,
        "timestamp {timestamp} vs now {now}"
    );
    assert!(
        svix_verifies(&secret, request),
        "the svix crate verifies the signature"
    );
    let other_secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    assert!(
        !svix_verifies(other_secret, request),
        "and rejects another secret"
    );

    wait_until_sql(
        &mut client,
        "the delivery row",
        WAIT,
        "SELECT EXISTS (SELECT FROM ae_events.delivery_status WHERE status = 'delivered')",
    );
    let row = delivery(&mut client, "proctors", &event_id).unwrap();
    assert_eq!(row, ("delivered".to_owned(), 1, Some(200), None));
}

#[test]
fn subscription_keys_and_a_jsonpath_filter_select_exactly_the_matching_events() {
    let cluster = Cluster::shared();
    let (database, mut client) = delivery_database("selection");
    let receiver = Receiver::ok();
    client
        .query_one(
            "SELECT ae_events.create_endpoint('all', $1)",
            &[&receiver.url("/all")],
        )
        .unwrap();
    client
        .query_one(
            "SELECT ae_events.create_endpoint('created', $1, ARRAY['ae.test_instance.created'])",
            &[&receiver.url("/created")],
        )
        .unwrap();
    client
        .query_one(
            "SELECT ae_events.create_endpoint('completed', $1, NULL, '$.instance_status == \"completed\"')",
            &[&receiver.url("/completed")],
        )
        .unwrap();
    for id in 1..=4 {
        insert_instance(&mut client, id);
    }
    set_status(&mut client, 2, "completed");
    set_status(&mut client, 3, "cancelled");
    set_status(&mut client, 4, "completed");
    let _relay = Relay::start(cluster, &database, &[]);

    let expected = |condition: &str| -> HashSet<String> {
        let mut client = cluster.connect(&database);
        client
            .query(
                &format!("SELECT event_id::text FROM ae_events.outbox WHERE {condition}"),
                &[],
            )
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    };
    let all = expected("true");
    let created = expected("subscription_key = 'ae.test_instance.created'");
    let completed = expected("payload->>'instance_status' = 'completed'");
    assert_eq!((all.len(), created.len(), completed.len()), (7, 4, 2));
    let total = all.len() + created.len() + completed.len();
    receiver.wait_for("every matching event", WAIT, |r| r.len() >= total);
    std::thread::sleep(Duration::from_millis(500));
    let requests = receiver.requests();
    let got = |path: &str| -> HashSet<String> {
        requests
            .iter()
            .filter(|r| r.path == path)
            .map(|r| r.header("webhook-id").to_owned())
            .collect()
    };
    assert_eq!(requests.len(), total, "nothing more, nothing twice");
    assert_eq!(got("/all"), all);
    assert_eq!(got("/created"), created);
    assert_eq!(got("/completed"), completed);
}

#[test]
fn a_failing_receiver_gets_retries_with_the_same_webhook_id_on_the_policys_schedule() {
    let cluster = Cluster::shared();
    let (database, mut client) = delivery_database("retries");
    let receiver =
        Receiver::start(|_, earlier| Answer::status(if earlier < 2 { 500 } else { 200 }));
    create_endpoint(&mut client, "flaky", &receiver.url("/"), "{400ms,800ms,5s}");
    insert_instance(&mut client, 1);
    let _relay = Relay::start(cluster, &database, &[]);

    let requests = receiver.wait_for("three attempts", WAIT, |r| r.len() >= 3);
    let ids: HashSet<&str> = requests.iter().map(|r| r.header("webhook-id")).collect();
    assert_eq!(ids.len(), 1, "every attempt carries the same webhook-id");
    let first_gap = requests[1].at - requests[0].at;
    let second_gap = requests[2].at - requests[1].at;
    assert!(
        first_gap >= Duration::from_millis(400) && first_gap < Duration::from_secs(4),
        "{first_gap:?}"
    );
    assert!(
        second_gap >= Duration::from_millis(800) && second_gap < Duration::from_secs(4),
        "{second_gap:?}"
    );
    let event_id = requests[0].header("webhook-id").to_owned();
    wait_until_sql(
        &mut client,
        "delivered",
        WAIT,
        "SELECT EXISTS (SELECT FROM ae_events.delivery_status WHERE status = 'delivered')",
    );
    assert_eq!(
        delivery(&mut client, "flaky", &event_id).unwrap(),
        ("delivered".to_owned(), 3, Some(200), None)
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(receiver.count(), 3);
}

#[test]
fn retry_after_of_a_429_is_honoured() {
    let cluster = Cluster::shared();
    let (database, mut client) = delivery_database("retry_after");
    let receiver = Receiver::start(|_, earlier| {
        if earlier == 0 {
            Answer::status(429).with_header("Retry-After", "2")
        } else {
            Answer::status(200)
        }
    });
    create_endpoint(&mut client, "busy", &receiver.url("/"), "{100ms,10s}");
    insert_instance(&mut client, 1);
    let _relay = Relay::start(cluster, &database, &[]);
    let requests = receiver.wait_for("the retry", WAIT, |r| r.len() >= 2);
    let gap = requests[1].at - requests[0].at;
    assert!(
        gap >= Duration::from_secs(2) && gap < Duration::from_secs(8),
        "Retry-After: 2 gave {gap:?}"
    );
}

#[test]
fn a_slow_receiver_hits_the_timeout_and_a_refused_connection_is_retried() {
    let cluster = Cluster::shared();
    let (database, mut client) = delivery_database("timeouts");
    let slow = Receiver::start(|_, earlier| {
        if earlier == 0 {
            Answer::status(200).after(Duration::from_secs(4))
        } else {
            Answer::status(200)
        }
    });
    create_endpoint(&mut client, "slow", &slow.url("/"), "{2s}");
    client
        .execute(
            "SELECT ae_events.alter_endpoint('slow', timeout => '500ms')",
            &[],
        )
        .unwrap();
    // A port nobody listens on (yet).
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    create_endpoint(
        &mut client,
        "refused",
        &format!("http://127.0.0.1:{closed_port}/"),
        "{2s}",
    );
    insert_instance(&mut client, 1);
    let _relay = Relay::start(cluster, &database, &[]);

    wait_until_sql(&mut client, "both first attempts failed", WAIT,
        "SELECT count(*) = 2 FROM ae_events.delivery_status WHERE status = 'pending' AND attempts = 1");
    let errors: HashMap<String, String> = client
        .query(
            "SELECT endpoint, last_error FROM ae_events.delivery_status",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert!(
        errors["slow"].contains("timed out after 500 ms"),
        "{errors:?}"
    );
    assert!(
        errors["refused"].contains("could not connect"),
        "{errors:?}"
    );
    // The receiver comes up on that port: the retry gets through.
    let late = Receiver::start_on(closed_port, |_, _| Answer::status(200));
    late.wait_for("the retry", WAIT, |r| !r.is_empty());
    wait_until_sql(&mut client, "both delivered on the second attempt", WAIT,
        "SELECT count(*) = 2 FROM ae_events.delivery_status WHERE status = 'delivered' AND attempts = 2");
}

#[test]
fn a_redirect_is_a_failed_attempt_and_is_not_followed() {
    let cluster = Cluster::shared();
    let (database, mut client) = delivery_database("redirects");
    let receiver = Receiver::start(|_, earlier| {
        if earlier == 0 {
            Answer::status(302).with_header("Location", "/elsewhere")
        } else {
            Answer::status(200)
        }
    });
    create_endpoint(&mut client, "moved", &receiver.url("/here"), "{1s}");
    insert_instance(&mut client, 1);
    let _relay = Relay::start(cluster, &database, &[]);
    wait_until_sql(&mut client, "the failed first attempt", WAIT,
        "SELECT EXISTS (SELECT FROM ae_events.delivery_status WHERE status = 'pending' AND last_status = 302)");
    let error: String = client
        .query_one("SELECT last_error FROM ae_events.delivery_status", &[])
        .unwrap()
        .get(0);
    assert!(
        error.contains("redirect to /elsewhere, not followed"),
        "{error}"
    );
    receiver.wait_for("the retry", WAIT, |r| r.len() >= 2);
    assert!(
        receiver.requests().iter().all(|r| r.path == "/here"),
        "the redirect was not followed"
    );
}

#[test]
fn a_410_disables_the_endpoint_and_enabling_it_again_resumes_where_it_stopped() {
    let cluster = Cluster::shared();
    let (database, mut client) = delivery_database("gone");
    let first = std::sync::atomic::AtomicBool::new(true);
    let gone_once = Receiver::start(move |_, _| {
        let is_first = first.swap(false, std::sync::atomic::Ordering::SeqCst);
        Answer::status(if is_first { 410 } else { 200 })
    });
    create_endpoint(&mut client, "leaving", &gone_once.url("/"), "{100ms}");
    insert_instance(&mut client, 1);
    let _relay = Relay::start(cluster, &database, &[]);
    wait_until_sql(
        &mut client,
        "the endpoint disabled",
        WAIT,
        "SELECT NOT enabled AND disabled_reason LIKE '%410 Gone%' FROM ae_events.endpoint_status",
    );
    let gone_event = gone_once.requests()[0].header("webhook-id").to_owned();
    insert_instance(&mut client, 2);
    insert_instance(&mut client, 3);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        gone_once.count(),
        1,
        "nothing is sent to a disabled endpoint"
    );

    client
        .execute("SELECT ae_events.enable_endpoint('leaving')", &[])
        .unwrap();
    let requests = gone_once.wait_for("the rest", WAIT, |r| r.len() >= 4);
    assert_eq!(requests.len(), 4, "{requests:?}");
    let resent: Vec<&Received> = requests[1..]
        .iter()
        .filter(|r| r.header("webhook-id") == gone_event)
        .collect();
    assert_eq!(
        resent.len(),
        1,
        "the 410'd event is sent again, with its webhook-id"
    );
    let instances: HashSet<i64> = requests[1..].iter().map(Received::instance).collect();
    assert_eq!(
        instances,
        HashSet::from([1, 2, 3]),
        "and the events that came meanwhile"
    );
    wait_until_sql(
        &mut client,
        "all delivered",
        WAIT,
        "SELECT count(*) = 3 FROM ae_events.delivery_status WHERE status = 'delivered'",
    );
}

#[test]
fn a_poison_event_is_dead_lettered_while_other_instances_flow_and_its_next_version_waits() {
    let cluster = Cluster::shared();
    let (database, mut client) = delivery_database("poison");
    let receiver = Receiver::start(|request, _| {
        Answer::status(if request.instance() == 1 && request.version() == 1 {
            400
        } else {
            200
        })
    });
    create_endpoint(&mut client, "strict", &receiver.url("/"), "{3s,3s}");
    insert_instance(&mut client, 1);
    set_status(&mut client, 1, "completed");
    for id in 2..=5 {
        insert_instance(&mut client, id);
    }
    let _relay = Relay::start(cluster, &database, &[]);

    let requests = receiver.wait_for("the poison's three attempts and the rest", WAIT, |r| {
        r.len() >= 3 + 1 + 4
    });
    let poison: Vec<&Received> = requests
        .iter()
        .filter(|r| r.instance() == 1 && r.version() == 1)
        .collect();
    assert_eq!(poison.len(), 3, "three attempts, then dead-lettered");
    let last_poison_attempt = poison[2].at;
    for other in requests.iter().filter(|r| r.instance() != 1) {
        assert!(
            other.at < poison[1].at,
            "instance {} was not held back by the poison",
            other.instance()
        );
    }
    let next_version = requests
        .iter()
        .find(|r| r.instance() == 1 && r.version() == 2)
        .unwrap();
    assert!(
        next_version.at > last_poison_attempt,
        "version 2 waited until version 1 was dead-lettered"
    );
    wait_until_sql(&mut client, "the dead letter", WAIT,
        "SELECT EXISTS (SELECT FROM ae_events.delivery_status WHERE status = 'dead' AND attempts = 3 AND last_status = 400)");
    let dead: i64 = client
        .query_one("SELECT dead FROM ae_events.endpoint_status", &[])
        .unwrap()
        .get(0);
    assert_eq!(dead, 1);
}

/// The relay fetches while it sends: a fetch answered before a failed attempt's pending row
/// was written, and taken up after that write landed, must still park the instance's next
/// version behind the retry. AE_RELAY_SLOW_FETCH_MS holds every fetch's answer back 600 ms, so
/// (fetching again at once when woken meanwhile) the fetch that finds version 2 asks 600 ms
/// after version 1 was sent, before its failure (900 ms) is written, and is taken up at 1200 ms.
#[test]
fn a_version_fetched_before_its_predecessor_failed_still_waits_for_the_retry() {
    let cluster = Cluster::shared();
    let (database, mut client) = delivery_database("fetch_during_write");
    let receiver = Receiver::start(|request, earlier| {
        if request.version() == 1 && earlier == 0 {
            Answer::status(500).after(Duration::from_millis(900))
        } else {
            Answer::status(200)
        }
    });
    create_endpoint(&mut client, "parked", &receiver.url("/"), "{2s}");
    let _relay = Relay::start_with_env(
        cluster,
        &database,
        &[],
        &[("AE_RELAY_SLOW_FETCH_MS", "600")],
    );
    wait_until_sql(
        &mut client,
        "the endpoint held",
        WAIT,
        "SELECT relay IS NOT NULL FROM ae_events.endpoints WHERE endpoint = 'parked'",
    );
    std::thread::sleep(Duration::from_millis(1500)); // its first fetches answered: caught up
    insert_instance(&mut client, 1);
    receiver.wait_for("version 1's first attempt", WAIT, |r| !r.is_empty());
    set_status(&mut client, 1, "completed");
    let requests = receiver.wait_for("version 2", WAIT, |r| r.iter().any(|r| r.version() == 2));
    let versions: Vec<i32> = requests.iter().map(Received::version).collect();
    assert_eq!(
        versions,
        vec![1, 1, 2],
        "version 2 came after version 1's retry"
    );
}

#[test]
fn fifty_instances_with_ten_versions_each_arrive_in_order_per_instance() {
    let cluster = Cluster::shared();
    let (database, mut client) = delivery_database("ordering");
    let receiver =
        Receiver::start(|_, _| Answer::status(200).after(Duration::from_millis(fastrand_delay())));
    create_endpoint(&mut client, "ordered", &receiver.url("/"), "{100ms}");
    client
        .execute(
            "SELECT ae_events.alter_endpoint('ordered', max_in_flight => 16)",
            &[],
        )
        .unwrap();
    let _relay = Relay::start(cluster, &database, &[]);
    // Four writers, each its own instances, so that transactions interleave.
    let writers: Vec<_> = (0..4)
        .map(|writer| {
            let database = database.clone();
            std::thread::spawn(move || {
                let mut client = Cluster::shared().connect(&database);
                let ids: Vec<i64> = (1..=50).filter(|id| id % 4 == writer).collect();
                for id in &ids {
                    insert_instance(&mut client, *id);
                }
                for round in 0..9 {
                    for id in &ids {
                        set_external_id(&mut client, *id, &format!("step_{round}"));
                    }
                }
            })
        })
        .collect();
    for writer in writers {
        writer.join().unwrap();
    }
    let events = outbox_events(&mut client);
    assert_eq!(events.len(), 500);
    let requests = receiver.wait_for("every version", Duration::from_secs(90), |r| {
        r.iter()
            .map(|x| x.header("webhook-id"))
            .collect::<HashSet<_>>()
            .len()
            >= 500
    });
    assert_in_order_per_instance(&requests);
    let mut versions: HashMap<i64, Vec<i32>> = HashMap::new();
    for request in &requests {
        versions
            .entry(request.instance())
            .or_default()
            .push(request.version());
    }
    for (instance, seen) in versions {
        let mut first_seen: Vec<i32> = Vec::new();
        for version in seen {
            if !first_seen.contains(&version) {
                first_seen.push(version);
            }
        }
        assert_eq!(
            first_seen,
            (1..=10).collect::<Vec<_>>(),
            "instance {instance}"
        );
    }
}

fn fastrand_delay() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static STATE: AtomicU64 = AtomicU64::new(0x9E37_79B9_7F4A_7C15);
    let mut x = STATE.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
    x ^= x >> 31;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    (x >> 33) % 25
}

#[test]
fn a_later_version_whose_transaction_began_first_is_still_sent_second() {
    let cluster = Cluster::shared();
    let (database, mut client) = delivery_database("inversion");
    let receiver = Receiver::ok();
    create_endpoint(&mut client, "ordered", &receiver.url("/"), "{100ms}");
    insert_instance(&mut client, 1);
    insert_instance(&mut client, 2);
    // The second transaction takes its transaction id first, then changes instance 1 after the
    // first one did: its event (version 3) sorts before version 2 in delivery order.
    let mut early = cluster.connect(&database);
    early
        .batch_execute("BEGIN; SELECT pg_current_xact_id();")
        .unwrap();
    set_external_id(&mut client, 1, "first_change");
    early
        .batch_execute("UPDATE ti.instance SET external_id = 'second_change' WHERE id = 1; COMMIT;")
        .unwrap();
    let order: Vec<i32> = client
        .query("SELECT snapshot_version FROM ae_events.outbox WHERE aggregate_id = 1 ORDER BY txid, id", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(order, [1, 3, 2], "the set-up inverts delivery order");
    // Fetching one event at a time: the batch must be extended to keep the versions in order.
    let _relay = Relay::start(cluster, &database, &["--window", "1"]);
    let requests = receiver.wait_for("every event", WAIT, |r| r.len() >= 4);
    let versions: Vec<i32> = requests
        .iter()
        .filter(|r| r.instance() == 1)
        .map(Received::version)
        .collect();
    assert_eq!(versions, [1, 2, 3]);
}

#[test]
fn a_failing_endpoint_does_not_delay_a_healthy_one() {
    let cluster = Cluster::shared();
    let (database, mut client) = delivery_database("isolation");
    // Every request to this one hangs for 20 s, then fails.
    let hanging = Receiver::start(|_, _| Answer::status(500).after(Duration::from_secs(20)));
    let healthy = Receiver::ok();
    create_endpoint(&mut client, "hanging", &hanging.url("/"), "{1s}");
    client
        .execute(
            "SELECT ae_events.alter_endpoint('hanging', timeout => '30 s')",
            &[],
        )
        .unwrap();
    create_endpoint(&mut client, "healthy", &healthy.url("/"), "{1s}");
    let _relay = Relay::start(cluster, &database, &[]);
    for id in 1..=40 {
        insert_instance(&mut client, id);
    }
    // All 40 arrive while the failing endpoint's first requests are still hanging: had the
    // healthy endpoint waited for it, they would come after 20 s.
    healthy.wait_for(
        "all 40 at the healthy endpoint",
        Duration::from_secs(15),
        |r| r.len() >= 40,
    );
    let attempted: i64 = client
        .query_one(
            "SELECT count(*) FROM ae_events.delivery_status WHERE endpoint = 'hanging'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(attempted, 0, "no answer from the hanging endpoint yet");
    // Its requests were started together with the healthy ones; the last of them may still be
    // connecting when the healthy endpoint is done (seen once: 15). Waited for, far within the
    // 20 s they hang.
    hanging.wait_for("its 16 requests", Duration::from_secs(5), |r| r.len() >= 16);
    assert_eq!(
        hanging.count(),
        16,
        "its 16 requests are in flight meanwhile"
    );
}

#[test]
fn during_a_rotation_both_secrets_sign_and_each_verifies() {
    let cluster = Cluster::shared();
    let (database, mut client) = delivery_database("rotation");
    let receiver = Receiver::ok();
    let old_secret = create_endpoint(&mut client, "rotating", &receiver.url("/"), "{1s}");
    let new_secret: String = client
        .query_one(
            "SELECT ae_events.rotate_endpoint_secret('rotating', '1 hour')",
            &[],
        )
        .unwrap()
        .get(0);
    assert_ne!(old_secret, new_secret);
    insert_instance(&mut client, 1);
    let _relay = Relay::start(cluster, &database, &[]);
    let request = receiver
        .wait_for("the event", WAIT, |r| !r.is_empty())
        .remove(0);
    let signatures: Vec<&str> = request.header("webhook-signature").split(' ').collect();
    assert_eq!(signatures.len(), 2, "{signatures:?}");
    assert!(svix_verifies(&old_secret, &request));
    assert!(svix_verifies(&new_secret, &request));
    // Each signature on its own verifies with exactly one of the secrets.
    for signature in &signatures {
        let mut alone = request.clone();
        alone
            .headers
            .insert("webhook-signature".to_owned(), signature.to_string());
        assert!(svix_verifies(&old_secret, &alone) != svix_verifies(&new_secret, &alone));
    }
    // Without a grace period the old ones stop signing (once the relay renews its lease).
    let newest: String = client
        .query_one(
            "SELECT ae_events.rotate_endpoint_secret('rotating', '0 s')",
            &[],
        )
        .unwrap()
        .get(0);
    std::thread::sleep(Duration::from_millis(1500));
    insert_instance(&mut client, 2);
    let requests = receiver.wait_for("the second event", WAIT, |r| r.len() >= 2);
    let later = &requests[1];
    assert_eq!(later.header("webhook-signature").split(' ').count(), 1);
    assert!(svix_verifies(&newest, later));
    assert!(!svix_verifies(&old_secret, later) && !svix_verifies(&new_secret, later));
}

#[test]
fn redeliver_and_replay_send_events_again_with_the_same_webhook_id() {
    let cluster = Cluster::shared();
    let (database, mut client) = delivery_database("redeliver");
    let receiver = Receiver::ok();
    create_endpoint(&mut client, "again", &receiver.url("/"), "{1s}");
    insert_instance(&mut client, 1);
    insert_instance(&mut client, 2);
    std::thread::sleep(Duration::from_millis(50));
    let between: SystemTime = client
        .query_one("SELECT clock_timestamp()", &[])
        .unwrap()
        .get(0);
    std::thread::sleep(Duration::from_millis(50));
    insert_instance(&mut client, 3);
    let _relay = Relay::start(cluster, &database, &[]);
    receiver.wait_for("the three events", WAIT, |r| r.len() >= 3);
    wait_until_sql(
        &mut client,
        "three delivered",
        WAIT,
        "SELECT count(*) = 3 FROM ae_events.delivery_status WHERE status = 'delivered'",
    );

    let second: String = client
        .query_one(
            "SELECT event_id::text FROM ae_events.outbox WHERE aggregate_id = 2",
            &[],
        )
        .unwrap()
        .get(0);
    let scheduled: i64 = client
        .query_one(
            "SELECT ae_events.redeliver('again', ARRAY[$1::text::uuid])",
            &[&second],
        )
        .unwrap()
        .get(0);
    assert_eq!(scheduled, 1);
    let requests = receiver.wait_for("the redelivery", WAIT, |r| r.len() >= 4);
    assert_eq!(requests[3].header("webhook-id"), second);

    let replayed: i64 = client
        .query_one("SELECT ae_events.replay_endpoint('again', $1)", &[&between])
        .unwrap()
        .get(0);
    assert_eq!(
        replayed, 1,
        "only instance 3's event occurred after that time"
    );
    let requests = receiver.wait_for("the replay", WAIT, |r| r.len() >= 5);
    assert_eq!(requests[4].instance(), 3);
    wait_until_sql(
        &mut client,
        "delivered again",
        WAIT,
        "SELECT count(*) = 3 FROM ae_events.delivery_status WHERE status = 'delivered'",
    );
}

#[test]
fn the_status_views_show_attempts_and_errors_and_only_the_right_roles_reach_what_they_may() {
    let cluster = Cluster::shared();
    let (database, mut client) = delivery_database("webhook_roles");
    let receiver = Receiver::start(|_, _| Answer::status(503));
    create_endpoint(&mut client, "down", &receiver.url("/"), "{300ms,300ms,10s}");
    client
        .execute("SELECT ae_events.alter_endpoint('down', headers => '{\"authorization\": \"Bearer s3cret\"}')", &[])
        .unwrap();
    insert_instance(&mut client, 1);
    let _relay = Relay::start(cluster, &database, &[]);
    wait_until_sql(
        &mut client,
        "three attempts",
        WAIT,
        "SELECT EXISTS (SELECT FROM ae_events.delivery_status WHERE attempts = 3)",
    );
    let row = client
        .query_one(
            "SELECT status, attempts, last_status, last_error, next_attempt_at > now(), first_attempt_at < last_attempt_at
               FROM ae_events.delivery_status",
            &[],
        )
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "pending");
    assert_eq!(row.get::<_, i32>(1), 3);
    assert_eq!(row.get::<_, Option<i32>>(2), Some(503));
    assert!(row.get::<_, String>(3).starts_with("HTTP 503"));
    assert!(row.get::<_, bool>(4) && row.get::<_, bool>(5));
    let header_names: Vec<String> = client
        .query_one("SELECT header_names FROM ae_events.endpoint_status", &[])
        .unwrap()
        .get(0);
    assert_eq!(header_names, ["authorization"]);

    client
        .batch_execute(
            "DO $$ BEGIN CREATE ROLE webhook_analyst LOGIN; EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$;
             GRANT ae_events_reader TO webhook_analyst;
             DO $$ BEGIN CREATE ROLE webhook_app LOGIN; EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$;
             GRANT USAGE ON SCHEMA ae_events TO webhook_app;",
        )
        .unwrap();
    let mut analyst = cluster.connect_as(&database, "webhook_analyst");
    let seen: i64 = analyst
        .query_one("SELECT count(*) FROM ae_events.delivery_status", &[])
        .unwrap()
        .get(0);
    assert_eq!(seen, 1);
    analyst
        .query_one("SELECT count(*) FROM ae_events.endpoint_status", &[])
        .unwrap();
    for query in [
        "SELECT secret FROM ae_events.endpoint_secrets",
        "SELECT headers FROM ae_events.endpoints",
        "SELECT * FROM ae_events.deliveries",
        "SELECT ae_events.redeliver('down', '{}')",
        "SELECT * FROM ae_events.relay_lease('x', '1 s')",
    ] {
        let error = analyst.query(query, &[]).unwrap_err();
        assert_eq!(sqlstate(&error), "42501", "an analyst may not: {query}");
    }
    let mut app = cluster.connect_as(&database, "webhook_app");
    for query in [
        "SELECT ae_events.create_endpoint('mine', 'http://127.0.0.1:1/')",
        "SELECT ae_events.drop_endpoint('down')",
        "SELECT ae_events.disable_endpoint('down')",
        "SELECT ae_events.rotate_endpoint_secret('down')",
        "SELECT ae_events.replay_endpoint('down', now())",
        "SELECT * FROM ae_events.delivery_status",
        "SELECT * FROM ae_events.relay_fetch('down', 'x', 0, '0', 0, 10, 1000000, 1)",
    ] {
        let error = app.query(query, &[]).unwrap_err();
        assert_eq!(
            sqlstate(&error),
            "42501",
            "the application may not: {query}"
        );
    }
    // The relay reads secrets; it cannot manage endpoints.
    ensure_relay_login(cluster);
    let mut relay = cluster.connect_as(&database, "relay_user");
    let secrets: i64 = relay
        .query_one("SELECT count(*) FROM ae_events.endpoint_secrets", &[])
        .unwrap()
        .get(0);
    assert_eq!(secrets, 1);
    let error = relay
        .query(
            "SELECT ae_events.create_endpoint('x', 'http://127.0.0.1:1/')",
            &[],
        )
        .unwrap_err();
    assert_eq!(sqlstate(&error), "42501");
}

#[test]
fn bad_input_gets_a_clear_ae_events_error() {
    let (_database, mut client) = delivery_database("webhook_input");
    client
        .query_one(
            "SELECT ae_events.create_endpoint('taken', 'http://127.0.0.1:1/')",
            &[],
        )
        .unwrap();
    let cases = [
        (
            "SELECT ae_events.create_endpoint('a', 'not a url')",
            "22023",
            "is not an http:// or https:// URL",
        ),
        (
            "SELECT ae_events.create_endpoint('a', 'ftp://example.com/')",
            "22023",
            "is not an http:// or https:// URL",
        ),
        (
            "SELECT ae_events.create_endpoint('a', 'http:///path')",
            "22023",
            "is not an http:// or https:// URL",
        ),
        (
            "SELECT ae_events.create_endpoint('a', 'http://x/', NULL, '$.a ==')",
            "22023",
            "is not a valid jsonpath",
        ),
        (
            "SELECT ae_events.create_endpoint('a', 'http://x/', NULL, '$.a')",
            "22023",
            "is not a predicate",
        ),
        (
            "SELECT ae_events.create_endpoint('a', 'http://x/', ARRAY['ae.nope'])",
            "22023",
            "unknown subscription key 'ae.nope'",
        ),
        (
            "SELECT ae_events.create_endpoint('a', 'http://x/', '{}')",
            "22023",
            "subscription_keys is empty",
        ),
        (
            "SELECT ae_events.create_endpoint('taken', 'http://x/')",
            "42710",
            "the endpoint 'taken' exists already",
        ),
        (
            "SELECT ae_events.create_endpoint(NULL, 'http://x/')",
            "22004",
            "an endpoint name is needed, not NULL",
        ),
        (
            "SELECT ae_events.create_endpoint('', 'http://x/')",
            "22023",
            "needs a non-empty name",
        ),
        (
            "SELECT ae_events.rotate_endpoint_secret('taken', '1 day', 'whsec_c2hvcnQ=')",
            "22023",
            "must be 24 to 64 bytes",
        ),
        (
            "SELECT ae_events.rotate_endpoint_secret('taken', '1 day', 'whsec_***')",
            "22023",
            "not valid base64",
        ),
        (
            "SELECT ae_events.rotate_endpoint_secret('taken', '1 day', 'secret')",
            "22023",
            "a secret is whsec_ followed by base64",
        ),
        (
            "SELECT ae_events.rotate_endpoint_secret('nope')",
            "42704",
            "there is no endpoint 'nope'",
        ),
        (
            "SELECT ae_events.alter_endpoint('taken', headers => '{\"webhook-id\": \"x\"}')",
            "22023",
            "is set by the relay",
        ),
        (
            "SELECT ae_events.alter_endpoint('taken', headers => '{\"x\": 1}')",
            "22023",
            "one-line string value",
        ),
        (
            "SELECT ae_events.alter_endpoint('taken', timeout => '0 s')",
            "22023",
            "timeout must be",
        ),
        (
            "SELECT ae_events.alter_endpoint('taken', retry_schedule => '{-1 s}')",
            "22023",
            "retry_schedule must be",
        ),
        (
            "SELECT ae_events.redeliver('taken', ARRAY[gen_random_uuid()])",
            "22023",
            "is not in the outbox",
        ),
    ];
    for (query, code, message) in cases {
        let error = client.query(query, &[]).unwrap_err();
        let text = error_message(&error);
        assert_eq!(sqlstate(&error), code, "{query}: {text}");
        assert!(
            text.starts_with("ae_events: ") && text.contains(message),
            "{query}: {text}"
        );
    }
    let endpoints: i64 = client
        .query_one("SELECT count(*) FROM ae_events.endpoints", &[])
        .unwrap()
        .get(0);
    assert_eq!(endpoints, 1, "nothing half-made");
}

#[test]
fn check_says_whether_the_relay_can_work() {
    let cluster = Cluster::shared();
    let (database, mut client) = delivery_database("relay_check");
    client
        .query_one(
            "SELECT ae_events.create_endpoint('listed', 'http://127.0.0.1:1/')",
            &[],
        )
        .unwrap();
    ensure_relay_login(cluster);
    let run = |user: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_ae-relay"))
            .args([
                "check",
                "--database-url",
                &format!("postgres://{user}@127.0.0.1:{}/{database}", cluster.port),
            ])
            .output()
            .unwrap()
    };
    let relay = run("relay_user");
    let text = String::from_utf8_lossy(&relay.stdout);
    assert!(relay.status.success(), "{text}");
    assert!(
        text.contains("1 endpoints, 1 enabled") && text.contains("listed: enabled"),
        "{text}"
    );
    client
        .batch_execute("DO $$ BEGIN CREATE ROLE not_a_relay LOGIN; EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$;")
        .unwrap();
    let other = run("not_a_relay");
    let text = String::from_utf8_lossy(&other.stdout);
    assert!(!other.status.success());
    assert!(
        text.contains("is not a member of ae_events_relay"),
        "{text}"
    );
}

#[test]
fn endpoints_secrets_and_delivery_state_survive_pg_dump_and_restore() {
    let cluster = Cluster::shared();
    let (database, mut client) = delivery_database("webhook_dump");
    let receiver = Receiver::ok();
    let secret = create_endpoint(&mut client, "kept", &receiver.url("/"), "{1s}");
    insert_instance(&mut client, 1);
    {
        let _relay = Relay::start(cluster, &database, &[]);
        receiver.wait_for("the first event", WAIT, |r| !r.is_empty());
        wait_until_sql(
            &mut client,
            "its delivery recorded",
            WAIT,
            "SELECT EXISTS (SELECT FROM ae_events.delivery_status WHERE status = 'delivered')",
        );
        let relay = _relay;
        assert!(relay.terminate().success());
    }
    let archive = dump(cluster, &database);
    let restored = cluster.empty_database("webhook_restored");
    restore(cluster, &restored, &archive);
    let mut restored_client = cluster.connect(&restored);
    let kept: (String, i64) = restored_client
        .query_one("SELECT url, (SELECT count(*) FROM ae_events.delivery_status WHERE status = 'delivered') FROM ae_events.endpoint_status", &[])
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!(kept, (receiver.url("/"), 1));
    insert_instance(&mut restored_client, 2);
    let _relay = Relay::start(cluster, &restored, &[]);
    let requests = receiver.wait_for("the restored database's new event", WAIT, |r| r.len() >= 2);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(receiver.count(), 2, "the delivered event is not sent again");
    assert_eq!(requests[1].instance(), 2);
    assert!(
        svix_verifies(&secret, &requests[1]),
        "signed with the restored secret"
    );
}

#[test]
fn an_endpoint_failing_for_longer_than_disable_after_is_disabled() {
    let cluster = Cluster::shared();
    let (database, mut client) = delivery_database("disable_after");
    let receiver = Receiver::start(|_, _| Answer::status(500));
    create_endpoint(
        &mut client,
        "broken",
        &receiver.url("/"),
        "{300ms,300ms,300ms,300ms,300ms,300ms,300ms,300ms}",
    );
    client
        .execute(
            "SELECT ae_events.alter_endpoint('broken', disable_after => '1 s')",
            &[],
        )
        .unwrap();
    insert_instance(&mut client, 1);
    let _relay = Relay::start(cluster, &database, &[]);
    wait_until_sql(&mut client, "the endpoint disabled", WAIT,
        "SELECT NOT enabled AND disabled_reason LIKE 'every attempt failed since%' FROM ae_events.endpoint_status");
    let attempts: i32 = client
        .query_one("SELECT attempts FROM ae_events.delivery_status", &[])
        .unwrap()
        .get(0);
    assert!(
        (3..=8).contains(&attempts),
        "failing for over a second took {attempts} attempts"
    );
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(
        receiver.count() as i32,
        attempts,
        "nothing more is sent once disabled"
    );
}

#[test]
fn prune_keeps_what_an_endpoint_still_needs_and_removes_delivery_records_with_their_events() {
    let cluster = Cluster::shared();
    let (database, mut client) = delivery_database("webhook_prune");
    let failing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let answers = failing.clone();
    let receiver = Receiver::start(move |request, _| {
        let fail = request.instance() == 2 && answers.load(std::sync::atomic::Ordering::SeqCst);
        Answer::status(if fail { 503 } else { 200 })
    });
    create_endpoint(&mut client, "pruned", &receiver.url("/"), "{500ms}");
    client
        .execute("SELECT ae_events.alter_endpoint('pruned', retry_schedule => '{500ms,500ms,500ms,500ms,500ms,500ms,500ms,500ms,500ms,500ms,500ms,500ms,500ms,500ms,500ms,500ms,500ms,500ms,500ms,500ms}')", &[])
        .unwrap();
    insert_instance(&mut client, 1);
    insert_instance(&mut client, 2);
    let _relay = Relay::start(cluster, &database, &[]);
    wait_until_sql(&mut client, "one delivered, one pending", WAIT,
        "SELECT count(*) FILTER (WHERE status = 'delivered') = 1 AND count(*) FILTER (WHERE status = 'pending') = 1
           FROM ae_events.delivery_status");
    let pruned: i64 = client
        .query_one("SELECT ae_events.prune('0 s')", &[])
        .unwrap()
        .get(0);
    assert_eq!(pruned, 1, "the delivered event goes, the pending one stays");
    let left: Vec<(i64, String)> = client
        .query(
            "SELECT instance_id, status FROM ae_events.delivery_status",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        left,
        [(2, "pending".to_owned())],
        "its delivery record went with it"
    );
    failing.store(false, std::sync::atomic::Ordering::SeqCst);
    wait_until_sql(
        &mut client,
        "the second delivered",
        WAIT,
        "SELECT EXISTS (SELECT FROM ae_events.delivery_status WHERE status = 'delivered')",
    );
    let pruned: i64 = client
        .query_one("SELECT ae_events.prune('0 s')", &[])
        .unwrap()
        .get(0);
    assert_eq!(pruned, 1);
    let rows: i64 = client
        .query_one("SELECT count(*) FROM ae_events.deliveries", &[])
        .unwrap()
        .get(0);
    assert_eq!(rows, 0);
}

/// The console's attempt log (sql/src/console.sql, docs/console.md): the relay reports each
/// attempt's duration; each failed one is a row with its HTTP status and time taken, a delivered
/// one writes none, and the endpoint's counts take every outcome.
#[test]
fn each_failed_attempt_is_logged_with_its_duration_and_the_counts_take_every_outcome() {
    let cluster = Cluster::shared();
    let (database, mut client) = delivery_database("attempt_log");
    // Two slow failures, then a delivery.
    let receiver = Receiver::start(|_, before| {
        if before < 2 {
            Answer::status(503)
                .with_body("busy")
                .after(Duration::from_millis(150))
        } else {
            Answer::status(204)
        }
    });
    create_endpoint(
        &mut client,
        "logged",
        &receiver.url("/"),
        "{100ms,100ms,100ms}",
    );
    insert_instance(&mut client, 1);
    let relay = Relay::start(cluster, &database, &[]);
    wait_until_sql(
        &mut client,
        "the delivery",
        WAIT,
        "SELECT EXISTS (SELECT FROM ae_events.delivery_status WHERE status = 'delivered')",
    );
    let attempts: Vec<(i32, Option<i32>, Option<i32>, String)> = client
        .query(
            "SELECT a.attempt, a.http_status, a.duration_ms, a.outcome
               FROM ae_events.outbox AS o,
                    ae_events.console_attempts(o.event_id) AS a
              ORDER BY a.attempted_at",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    assert_eq!(attempts.len(), 3, "{attempts:?}\n{}", relay.log());
    for (n, failed) in attempts[..2].iter().enumerate() {
        assert_eq!(failed.0, n as i32 + 1, "{attempts:?}");
        assert_eq!(failed.1, Some(503));
        assert!(failed.2.is_some_and(|ms| ms >= 150), "{attempts:?}");
        assert_eq!(failed.3, "failed");
    }
    assert_eq!(
        (attempts[2].0, attempts[2].1, attempts[2].3.as_str()),
        (3, Some(204), "delivered")
    );
    let counts: (i64, i64) = {
        let row = client
            .query_one(
                "SELECT delivered_last_hour, failed_last_hour FROM ae_events.console_endpoints",
                &[],
            )
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!(counts, (1, 2));
}

/// The buffers one relay_fetch of 500 events touches (shared hits and reads, the function's
/// own queries included).
fn fetch_buffers(relay: &mut postgres::Client, endpoint_id: i64) -> (usize, i64) {
    fetch_buffers_after(relay, endpoint_id, "0", 0)
}

/// The same, for a fetch after a position (txid, id) of the first epoch.
fn fetch_buffers_after(
    relay: &mut postgres::Client,
    endpoint_id: i64,
    txid: &str,
    id: i64,
) -> (usize, i64) {
    let query = format!(
        "SELECT * FROM ae_events.relay_fetch('backlog', 'fetcher', 0, '{txid}', {id}, 500, 100000000, {endpoint_id})"
    );
    let rows = relay.query(&query, &[]).unwrap().len();
    (rows, buffers_touched(relay, &query))
}

/// A database with one endpoint (its URL unused), leased through relay_lease by `relay_name`
/// connected as a new relay role: the owner's connection, the relay's, and the endpoint's id.
fn leased_endpoint(
    database_name: &str,
    role: &str,
    endpoint: &str,
    relay_name: &str,
) -> (postgres::Client, postgres::Client, i64) {
    let (database, mut client) = delivery_database(database_name);
    create_relay_role(&mut client, role);
    create_endpoint(&mut client, endpoint, "http://127.0.0.1:9/", "{1s}");
    let mut relay = Cluster::shared().connect_as(&database, role);
    let endpoint_id: i64 = relay
        .query_one(
            &format!("SELECT endpoint_id FROM ae_events.relay_lease('{relay_name}', '5 min')"),
            &[],
        )
        .unwrap()
        .get(0);
    (client, relay, endpoint_id)
}

/// First attempts are recorded with a plain INSERT; one that meets a row (the same batch
/// recorded again, the first attempt of a parked or redelivered event) updates that row.
#[test]
fn a_first_attempt_that_meets_a_row_updates_it() {
    let (mut client, mut relay, endpoint_id) =
        leased_endpoint("first_attempts", "relay_recorder", "recorded", "recorder");
    insert_instances(&mut client, 1, 2);
    let events: Vec<(i64, i64)> = client
        .query(
            "SELECT id, aggregate_id FROM ae_events.outbox ORDER BY txid, id",
            &[],
        )
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    let ids = vec![events[0].0, events[1].0];
    let instances = vec![events[0].1, events[1].1];
    let record =
        |relay: &mut postgres::Client, statuses: &[&str], ids: &[i64], instances: &[i64]| {
            let first_attempts = vec![1i32; ids.len()];
            relay
                .query_one(
                    "SELECT ae_events.relay_record('recorded', 'recorder', $1, $2, $3, $4,
                        array_fill(now(), ARRAY[cardinality($1::bigint[])]),
                        array_fill(200, ARRAY[cardinality($1::bigint[])]),
                        array_fill(NULL::text, ARRAY[cardinality($1::bigint[])]),
                        array_fill(now() + interval '1 hour', ARRAY[cardinality($1::bigint[])]),
                        NULL, NULL, NULL, NULL, $5)",
                    &[&ids, &instances, &statuses, &first_attempts, &endpoint_id],
                )
                .unwrap()
                .get::<_, bool>(0)
        };
    assert!(record(
        &mut relay,
        &["delivered", "pending"],
        &ids,
        &instances
    ));
    // The same batch again: no error, the same rows.
    assert!(record(
        &mut relay,
        &["delivered", "pending"],
        &ids,
        &instances
    ));
    // The pending event's first attempt again (as for a parked or redelivered event).
    assert!(record(
        &mut relay,
        &["delivered"],
        &ids[1..],
        &instances[1..]
    ));
    let rows: Vec<(i64, String, i32)> = client
        .query(
            "SELECT outbox_id, status, attempts FROM ae_events.deliveries
              WHERE endpoint = 'recorded' ORDER BY outbox_id",
            &[],
        )
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2)))
        .collect();
    assert_eq!(
        rows,
        vec![
            (ids[0], "delivered".to_owned(), 1),
            (ids[1], "delivered".to_owned(), 1)
        ]
    );
}

/// A relay's fetch reads its batch, not the backlog behind it: 500 events of a backlog of
/// 6,000 touch as many buffers as 500 of a backlog of 600, give or take 100 (the batch's walk
/// was once planned as a scan of every event after the cursor, then a sort: 920 more), also
/// inside one large transaction's events. And the byte bound counts a payload
/// at its uncompressed jsonb size, read from its header.
#[test]
fn a_fetch_reads_its_batch_not_the_backlog_behind_it() {
    let (mut client, mut relay, endpoint_id) =
        leased_endpoint("fetch_batch", "relay_fetcher", "backlog", "fetcher");
    insert_instances(&mut client, 1, 600);
    let (rows, small) = fetch_buffers(&mut relay, endpoint_id);
    assert_eq!(rows, 500);
    insert_instances(&mut client, 601, 6000);
    let (rows, large) = fetch_buffers(&mut relay, endpoint_id);
    assert_eq!(rows, 500);
    assert!(
        large <= small + 100,
        "a fetch of 500 touched {small} buffers behind 600 events, {large} behind 6,000"
    );
    // Nor the rest of one large transaction's events: a batch that ends inside 12,000 events
    // of one transaction reads as much as one that ends inside 600 (its statements were once
    // index scans that PostgreSQL before 18 ends only at the transaction's last event).
    insert_instances(&mut client, 6001, 18000);
    let start_of = |client: &mut postgres::Client, first: i64| -> (String, i64) {
        let row = client
            .query_one(
                "SELECT txid::text, id - 1 FROM ae_events.outbox
                  WHERE aggregate_type = 'test_instance' AND aggregate_id = $1",
                &[&first],
            )
            .unwrap();
        (row.get(0), row.get(1))
    };
    let (txid, id) = start_of(&mut client, 1);
    let (rows, in_small) = fetch_buffers_after(&mut relay, endpoint_id, &txid, id);
    assert_eq!(rows, 500);
    let (txid, id) = start_of(&mut client, 6001);
    let (rows, in_large) = fetch_buffers_after(&mut relay, endpoint_id, &txid, id);
    assert_eq!(rows, 500);
    assert!(
        in_large <= in_small + 20,
        "a fetch of 500 touched {in_small} buffers inside a transaction of 600 events, {in_large} inside one of 12,000"
    );
    let sizes_agree: bool = client
        .query_one(
            "SELECT bool_and(ae_events._payload_size(payload)
                             = pg_column_size(payload || '{}'::jsonb))
               FROM ae_events.outbox",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(sizes_agree, "a payload's size is its uncompressed jsonb's");
    // The byte bound: the batch ends with the event whose payload reaches it.
    let first_two: i64 = client
        .query_one(
            "SELECT sum(ae_events._payload_size(payload))::bigint
               FROM (SELECT payload FROM ae_events.outbox ORDER BY txid, id LIMIT 2) AS o",
            &[],
        )
        .unwrap()
        .get(0);
    let bounded = relay
        .query(
            "SELECT * FROM ae_events.relay_fetch('backlog', 'fetcher', 0, '0', 0, 10, $1, $2)",
            &[&(first_two - 1), &endpoint_id],
        )
        .unwrap();
    assert_eq!(
        bounded.len(),
        2,
        "the second payload reaches the bound: it ends the batch"
    );
    // Delivery rows among a batch's ids are still seen (probed per event only when one
    // exists): an event recorded delivered or pending is not handed out again, and a pending
    // one makes its instance's next event wait.
    let first: Vec<(i64, i64)> = client
        .query(
            "SELECT id, aggregate_id FROM ae_events.outbox ORDER BY txid, id LIMIT 2",
            &[],
        )
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    relay
        .execute(
            "SELECT ae_events.relay_record('backlog', 'fetcher', $1, $2, '{delivered,pending}', '{1,1}',
                    ARRAY[now(), now()], '{200,500}', '{NULL,HTTP 500}',
                    ARRAY[NULL, now() + interval '1 hour'], NULL, NULL, NULL, NULL, $3)",
            &[
                &vec![first[0].0, first[1].0],
                &vec![first[0].1, first[1].1],
                &endpoint_id,
            ],
        )
        .unwrap();
    let handed_out: Vec<bool> = relay
        .query(
            "SELECT deliver FROM ae_events.relay_fetch('backlog', 'fetcher', 0, '0', 0, 3, 100000000, $1)",
            &[&endpoint_id],
        )
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(handed_out, vec![false, false, true]);
    let last = client
        .query_one(
            "SELECT txid::text, id FROM ae_events.outbox ORDER BY txid DESC, id DESC LIMIT 1",
            &[],
        )
        .unwrap();
    let (last_txid, last_id): (String, i64) = (last.get(0), last.get(1));
    set_status(&mut client, first[1].1, "completed");
    let next = relay
        .query_one(
            "SELECT deliver, waits_behind
               FROM ae_events.relay_fetch('backlog', 'fetcher', 0, $1::text::xid8, $2, 10, 100000000, $3)",
            &[&last_txid, &last_id, &endpoint_id],
        )
        .unwrap();
    let (deliver, waits_behind): (bool, bool) = (next.get(0), next.get(1));
    assert!(
        deliver && waits_behind,
        "the next version waits behind the pending one"
    );
}

/// At full speed the relay keeps its connections to a receiver: 2,000 events through 16
/// requests in flight open about 16 connections, not one per request (4 idle connections per
/// host were kept once: those that came back together beyond them were closed, and the next
/// requests connected again).
#[test]
fn a_busy_endpoint_keeps_its_connections() {
    let cluster = Cluster::shared();
    let (database, mut client) = delivery_database("keep_connections");
    let receiver = Receiver::ok();
    create_endpoint(&mut client, "busy", &receiver.url("/"), "{1s}");
    insert_instances(&mut client, 1, 2000);
    let _relay = Relay::start(cluster, &database, &[]);
    receiver.wait_for("2,000 events", WAIT, |r| r.len() >= 2000);
    let connections = receiver.connections();
    assert!(
        connections <= 32,
        "{connections} connections for 2,000 requests, 16 in flight"
    );
}
