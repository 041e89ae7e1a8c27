//! Operational events (shared/contract/alerts.md, docs/alerts.md) through the real relay and
//! real receivers: a failing endpoint is announced once and its recovery once, a 410, a poison
//! event and an operator's disable each once; an alert endpoint that fails is announced to the
//! other alert endpoints only; a relay killed between the failure and its record neither loses
//! nor doubles an alert; endpoints with NULL keys receive none; every payload validates against
//! its committed schema (docs/schemas/, from the catalog's Rust types).

mod support;

use postgres::Client;
use serde_json::Value;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::*;

const OPERATIONAL_KEYS: &[&str] = &[
    "ae.endpoint.failing",
    "ae.endpoint.recovered",
    "ae.endpoint.disabled",
    "ae.delivery.dead_lettered",
];

/// An endpoint subscribed to the four operational keys, with fast retries; its secret.
fn create_alert_endpoint(client: &mut Client, name: &str, url: &str) -> String {
    let secret: String = client
        .query_one(
            "SELECT ae_events.create_endpoint($1, $2, ARRAY['ae.endpoint.failing',
                 'ae.endpoint.recovered', 'ae.endpoint.disabled', 'ae.delivery.dead_lettered'])",
            &[&name, &url],
        )
        .unwrap()
        .get(0);
    client
        .execute(
            "SELECT ae_events.alter_endpoint($1, retry_schedule => array_fill('300 ms'::interval, ARRAY[20]),
                                             retry_jitter => 0)",
            &[&name],
        )
        .unwrap();
    secret
}

fn endpoint_id(client: &mut Client, name: &str) -> i64 {
    client
        .query_one(
            "SELECT endpoint_id FROM ae_events.endpoints WHERE endpoint = $1",
            &[&name],
        )
        .unwrap()
        .get(0)
}

/// The operational events of the outbox: (key, aggregate_id, snapshot_version, payload), in id
/// order, each validated against its committed schema.
fn operational_events(client: &mut Client) -> Vec<(String, i64, i32, Value)> {
    client
        .query(
            "SELECT subscription_key, aggregate_id, snapshot_version, payload::text, event_type
               FROM ae_events.outbox WHERE aggregate_type = 'endpoint' ORDER BY id",
            &[],
        )
        .unwrap()
        .iter()
        .map(|row| {
            let (key, payload, event_type): (String, String, String) =
                (row.get(0), row.get(3), row.get(4));
            assert_valid_operational(&key, &payload);
            assert_eq!(event_type, key.replace('.', "_"));
            (
                key,
                row.get(1),
                row.get(2),
                serde_json::from_str(&payload).unwrap(),
            )
        })
        .collect()
}

fn assert_valid_operational(key: &str, body: &str) {
    assert!(
        builtin_schema(key).is_some(),
        "no committed schema for {key}"
    );
    let errors = builtin_schema_errors(key, body);
    assert!(errors.is_empty(), "{key} {body}: {errors:#?}");
}

/// The operational requests a receiver got, one per webhook-id (at least once: a retry may
/// repeat one), each body validated: (key, ae-aggregate-id, body).
fn operational_requests(receiver: &Receiver) -> Vec<(String, i64, Value)> {
    let mut seen = HashSet::new();
    receiver
        .requests()
        .iter()
        .filter(|r| OPERATIONAL_KEYS.contains(&r.header("ae-subscription-key")))
        .filter(|r| seen.insert(r.header("webhook-id").to_owned()))
        .map(|r| {
            let key = r.header("ae-subscription-key").to_owned();
            assert_valid_operational(&key, &r.body);
            (key, r.instance(), serde_json::from_str(&r.body).unwrap())
        })
        .collect()
}

fn count_of(events: &[(String, i64, Value)], key: &str, about: i64) -> usize {
    events
        .iter()
        .filter(|(k, id, _)| k == key && *id == about)
        .count()
}

fn create_instances(client: &mut Client, ids: &[i64]) {
    for id in ids {
        client
            .execute(
                "INSERT INTO ti.instance VALUES ($1, NULL, NULL, NULL, 'in_progress', 1, 1, NULL,
                                                 NULL, NULL, now(), 1, now(), 1)",
                &[id],
            )
            .unwrap();
    }
}

#[test]
fn an_endpoint_answering_500_is_announced_failing_once_then_recovered_once() {
    let cluster = Cluster::shared();
    let (database, mut client) = delivery_database("alerts_failing");
    let failing = Arc::new(AtomicBool::new(true));
    let flag = failing.clone();
    let flaky = Receiver::start(move |_, _| {
        Answer::status(if flag.load(Ordering::SeqCst) {
            500
        } else {
            200
        })
    });
    let oncall = Receiver::ok();
    // An alert endpoint that fails too: it is announced to `oncall`, never to itself.
    let broken = Receiver::start(|_, _| Answer::status(503));
    let plain = Receiver::ok();
    create_endpoint(&mut client, "flaky", &flaky.url("/"), "{300ms}");
    client
        .execute(
            "SELECT ae_events.alter_endpoint('flaky',
                 retry_schedule => array_fill('300 ms'::interval, ARRAY[30]))",
            &[],
        )
        .unwrap();
    create_alert_endpoint(&mut client, "oncall", &oncall.url("/"));
    create_alert_endpoint(&mut client, "broken", &broken.url("/"));
    create_endpoint(&mut client, "plain", &plain.url("/"), "{300ms}");
    let flaky_id = endpoint_id(&mut client, "flaky");
    let broken_id = endpoint_id(&mut client, "broken");
    let _relay = Relay::start(cluster, &database, &["--breaker-failures", "0"]);

    create_instances(&mut client, &[1]);
    // Twice the attempts that announce it: announced once, not per attempt.
    flaky.wait_for("6 failed attempts", Duration::from_secs(60), |r| {
        r.len() >= 6
    });
    oncall.wait_for("the failing event", Duration::from_secs(60), |r| {
        r.iter()
            .any(|x| x.header("ae-subscription-key") == "ae.endpoint.failing")
    });
    failing.store(false, Ordering::SeqCst);
    oncall.wait_for("the recovered event", Duration::from_secs(60), |r| {
        r.iter()
            .any(|x| x.header("ae-subscription-key") == "ae.endpoint.recovered")
    });
    // `broken` failed the alerts sent to it: announced to `oncall`.
    oncall.wait_for("broken's failing event", Duration::from_secs(60), |r| {
        r.iter().any(|x| {
            x.header("ae-subscription-key") == "ae.endpoint.failing" && x.instance() == broken_id
        })
    });
    plain.wait_for("the instance's event", Duration::from_secs(30), |r| {
        !r.is_empty()
    });
    // Further failures of `broken` (it keeps failing) announce nothing more.
    broken.wait_for("6 more attempts", Duration::from_secs(60), |r| r.len() >= 9);

    let events = operational_events(&mut client);
    let about_flaky: Vec<&(String, i64, i32, Value)> =
        events.iter().filter(|e| e.1 == flaky_id).collect();
    assert_eq!(
        about_flaky
            .iter()
            .map(|e| (e.0.as_str(), e.2))
            .collect::<Vec<_>>(),
        [("ae.endpoint.failing", 1), ("ae.endpoint.recovered", 2)],
        "{events:#?}"
    );
    let failing_payload = &about_flaky[0].3;
    assert_eq!(failing_payload["endpoint"], "flaky");
    assert_eq!(failing_payload["endpoint_id"], flaky_id);
    assert_eq!(failing_payload["url"], flaky.url("/"));
    assert_eq!(failing_payload["last_status"], 500);
    assert_eq!(failing_payload["failed_attempts"], 3);
    assert_eq!(failing_payload["reason"], "3 attempts failed in a row");
    assert_eq!(failing_payload["backlog"], 1);
    let recovered = &about_flaky[1].3;
    assert_eq!(recovered["last_status"], 200);
    assert_eq!(recovered["failing_since"], failing_payload["failing_since"]);
    assert_eq!(recovered["backlog"], 0);
    assert!(recovered["failing_seconds"].as_f64().unwrap() > 0.0);
    // broken: one failing event for its failing period, however many attempts fail.
    let about_broken: Vec<&str> = events
        .iter()
        .filter(|e| e.1 == broken_id)
        .map(|e| e.0.as_str())
        .collect();
    assert_eq!(about_broken, ["ae.endpoint.failing"]);

    let received = operational_requests(&oncall);
    assert_eq!(count_of(&received, "ae.endpoint.failing", flaky_id), 1);
    assert_eq!(count_of(&received, "ae.endpoint.recovered", flaky_id), 1);
    assert_eq!(count_of(&received, "ae.endpoint.failing", broken_id), 1);
    let order: Vec<&str> = received
        .iter()
        .filter(|e| e.1 == flaky_id)
        .map(|e| e.0.as_str())
        .collect();
    assert_eq!(order, ["ae.endpoint.failing", "ae.endpoint.recovered"]);
    // Never an alert about itself.
    assert!(broken.requests().iter().all(|r| r.instance() != broken_id));
    // NULL keys: the instance events, no operational one.
    assert!(plain.requests().iter().all(|r| r
        .header("ae-subscription-key")
        .starts_with("ae.test_instance.")));
    assert!(flaky.requests().iter().all(|r| r
        .header("ae-subscription-key")
        .starts_with("ae.test_instance.")));
}

#[test]
fn a_410_a_dead_letter_and_an_operators_disable_are_each_announced_once() {
    let cluster = Cluster::shared();
    let (database, mut client) = delivery_database("alerts_disabled");
    let gone = Receiver::start(|_, _| Answer::status(410));
    // Instance 2's events are poison: refused every time.
    let picky = Receiver::start(|request, _| {
        Answer::status(if request.instance() == 2 { 422 } else { 200 })
    });
    let oncall = Receiver::ok();
    let spare = Receiver::ok();
    create_endpoint(&mut client, "gone", &gone.url("/"), "{300ms}");
    create_endpoint(&mut client, "picky", &picky.url("/"), "{100ms,100ms}");
    // Not announced as failing before its dead letter (3 attempts would be enough).
    client
        .execute(
            "SELECT ae_events.alter_endpoint('picky', alert_after_attempts => 1000)",
            &[],
        )
        .unwrap();
    create_endpoint(&mut client, "spare", &spare.url("/"), "{300ms}");
    create_alert_endpoint(&mut client, "oncall", &oncall.url("/"));
    let gone_id = endpoint_id(&mut client, "gone");
    let picky_id = endpoint_id(&mut client, "picky");
    let spare_id = endpoint_id(&mut client, "spare");
    let _relay = Relay::start(cluster, &database, &["--breaker-failures", "0"]);

    create_instances(&mut client, &[1, 2]);
    client
        .execute("SELECT ae_events.disable_endpoint('spare')", &[])
        .unwrap();
    // Disabling a disabled endpoint again is no new disabling.
    client
        .execute(
            "SELECT ae_events.disable_endpoint('spare', 'still off')",
            &[],
        )
        .unwrap();
    oncall.wait_for("three alerts", Duration::from_secs(60), |r| {
        let keys: HashSet<(String, i64)> = r
            .iter()
            .map(|x| (x.header("ae-subscription-key").to_owned(), x.instance()))
            .collect();
        keys.contains(&("ae.endpoint.disabled".to_owned(), gone_id))
            && keys.contains(&("ae.endpoint.disabled".to_owned(), spare_id))
            && keys.contains(&("ae.delivery.dead_lettered".to_owned(), picky_id))
    });
    // After the 410 the endpoint stays disabled: a DBA's disable_endpoint announces nothing.
    client
        .execute("SELECT ae_events.disable_endpoint('gone')", &[])
        .unwrap();
    picky.wait_for("instance 1's event", Duration::from_secs(30), |r| {
        r.iter().any(|x| x.instance() == 1)
    });

    let events = operational_events(&mut client);
    let keys: Vec<(&str, i64)> = events.iter().map(|e| (e.0.as_str(), e.1)).collect();
    assert_eq!(
        keys.iter()
            .filter(|k| **k == ("ae.endpoint.disabled", gone_id))
            .count(),
        1,
        "{keys:?}"
    );
    assert_eq!(
        keys.iter()
            .filter(|k| **k == ("ae.endpoint.disabled", spare_id))
            .count(),
        1,
        "{keys:?}"
    );
    assert_eq!(
        keys.iter()
            .filter(|k| **k == ("ae.delivery.dead_lettered", picky_id))
            .count(),
        1,
        "{keys:?}"
    );
    assert!(
        !keys.contains(&("ae.endpoint.failing", picky_id)),
        "{keys:?}"
    );
    let payload = |key: &str, about: i64| {
        events
            .iter()
            .find(|e| e.0 == key && e.1 == about)
            .map(|e| e.3.clone())
            .unwrap()
    };
    let disabled = payload("ae.endpoint.disabled", gone_id);
    assert_eq!(disabled["cause"], "gone");
    assert_eq!(disabled["last_status"], 410);
    assert_eq!(
        payload("ae.endpoint.disabled", spare_id)["cause"],
        "operator"
    );
    let dead = payload("ae.delivery.dead_lettered", picky_id);
    let poison_event: String = client
        .query_one(
            "SELECT event_id::text FROM ae_events.outbox WHERE aggregate_type = 'test_instance'
                AND aggregate_id = 2",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(dead["event_id"], poison_event.as_str());
    assert_eq!(dead["instance_id"], 2);
    assert_eq!(dead["subscription_key"], "ae.test_instance.created");
    assert_eq!(dead["attempts"], 3);
    assert_eq!(dead["last_status"], 422);
    let received = operational_requests(&oncall);
    assert_eq!(count_of(&received, "ae.endpoint.disabled", gone_id), 1);
    assert_eq!(count_of(&received, "ae.endpoint.disabled", spare_id), 1);
    assert_eq!(
        count_of(&received, "ae.delivery.dead_lettered", picky_id),
        1
    );
}

/// The failing event is written by relay_record in the transaction that records the failure: a
/// relay killed after the announcing attempt but before its record leaves neither the record
/// nor the event, and the next relay's attempt announces it once.
#[test]
fn a_relay_killed_between_the_failure_and_its_record_neither_loses_nor_doubles_the_alert() {
    let cluster = Cluster::shared();
    let (database, mut client) = delivery_database("alerts_kill");
    let relay_pid = Arc::new(AtomicU32::new(0));
    let to_kill = relay_pid.clone();
    // The third attempt, the one that makes the endpoint failing, kills the relay sending it
    // (once) before it is answered, so that it is never recorded.
    let flaky = Receiver::start(move |_, earlier| {
        if earlier == 2 {
            let pid = to_kill.swap(0, Ordering::SeqCst);
            if pid != 0 {
                let _ = std::process::Command::new("kill")
                    .args(["-9", &pid.to_string()])
                    .status();
            }
        }
        Answer::status(500)
    });
    let oncall = Receiver::ok();
    create_endpoint(&mut client, "flaky", &flaky.url("/"), "{300ms}");
    client
        .execute(
            "SELECT ae_events.alter_endpoint('flaky',
                 retry_schedule => array_fill('300 ms'::interval, ARRAY[30]))",
            &[],
        )
        .unwrap();
    create_alert_endpoint(&mut client, "oncall", &oncall.url("/"));
    let flaky_id = endpoint_id(&mut client, "flaky");
    let first = Relay::start(cluster, &database, &["--breaker-failures", "0"]);
    relay_pid.store(first.pid(), Ordering::SeqCst);

    create_instances(&mut client, &[1]);
    flaky.wait_for("the third attempt", Duration::from_secs(60), |r| {
        r.len() >= 3
    });
    within(
        Duration::from_secs(10),
        || relay_pid.load(Ordering::SeqCst),
        |pid| *pid == 0,
    );
    std::thread::sleep(Duration::from_millis(500));
    // The killed attempt left nothing: two attempts recorded, no alert.
    let (attempts, alerts): (i32, i64) = {
        let row = client
            .query_one(
                "SELECT (SELECT attempts FROM ae_events.deliveries WHERE endpoint = 'flaky'),
                        (SELECT count(*) FROM ae_events.outbox WHERE aggregate_type = 'endpoint')",
                &[],
            )
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!((attempts, alerts), (2, 0));
    first.kill_9();

    let _second = Relay::start(cluster, &database, &["--breaker-failures", "0"]);
    oncall.wait_for("the failing event", Duration::from_secs(60), |r| {
        r.iter()
            .any(|x| x.header("ae-subscription-key") == "ae.endpoint.failing")
    });
    flaky.wait_for("more attempts", Duration::from_secs(60), |r| r.len() >= 8);
    let events = operational_events(&mut client);
    assert_eq!(
        events
            .iter()
            .map(|e| (e.0.as_str(), e.1, e.2))
            .collect::<Vec<_>>(),
        [("ae.endpoint.failing", flaky_id, 1)]
    );
    assert_eq!(events[0].3["failed_attempts"], 3);
    let received = operational_requests(&oncall);
    assert_eq!(count_of(&received, "ae.endpoint.failing", flaky_id), 1);
}

#[test]
fn bad_alert_settings_and_mixed_keys_are_refused() {
    let (_, mut client) = delivery_database("alerts_settings");
    create_endpoint(&mut client, "target", "http://127.0.0.1:9/", "{1s}");
    for call in [
        "alert_after => '0'",
        "alert_after => '-1 minute'",
        "alert_after => '367 days'",
        "alert_after_attempts => 0",
        "alert_after_attempts => 1001",
        "alert_after_attempts => -3",
        "subscription_keys => '{ae.test_instance.created,ae.endpoint.failing}'",
        "subscription_keys => '{ae.endpoint.failed}'",
    ] {
        let error = client
            .execute(
                &format!("SELECT ae_events.alter_endpoint('target', {call})"),
                &[],
            )
            .unwrap_err();
        let db_error = error.as_db_error().unwrap();
        assert_eq!(db_error.code().code(), "22023", "{call}: {db_error:?}");
        assert!(
            db_error.message().starts_with("ae_events: "),
            "{call}: {db_error:?}"
        );
    }
    // NULL keys: no operational event, not even a test one.
    let error = client
        .query_one(
            "SELECT ae_events.send_test_event('target', 'ae.endpoint.failing')",
            &[],
        )
        .unwrap_err();
    assert_eq!(error.code().unwrap().code(), "22023", "{error:?}");
    // Nothing half-changed; good values are taken.
    client
        .execute(
            "SELECT ae_events.alter_endpoint('target', alert_after => '30 seconds',
                                             alert_after_attempts => 5)",
            &[],
        )
        .unwrap();
    let row = client
        .query_one(
            "SELECT alert_after::text, alert_after_attempts, subscription_keys IS NULL
               FROM ae_events.endpoint_status WHERE endpoint = 'target'",
            &[],
        )
        .unwrap();
    let settings: (String, i32, bool) = (row.get(0), row.get(1), row.get(2));
    assert_eq!(settings, ("00:00:30".to_owned(), 5, true));
}

/// docs/alerts/chat_adapter.py (PyPI's standardwebhooks from .receivers/python, installed by
/// scripts/setup.sh) as an alert endpoint: it verifies the relay's request and posts one line
/// to a chat's incoming webhook (a receiver here).
#[test]
fn the_chat_adapter_of_the_docs_posts_an_alert_to_the_chat() {
    let cluster = Cluster::shared();
    let (database, mut client) = delivery_database("alerts_chat");
    let chat = Receiver::ok();
    let gone = Receiver::start(|_, _| Answer::status(410));
    let root = repository_root();
    let library = root.join(".receivers/python");
    assert!(
        library.join("standardwebhooks").exists(),
        "PyPI's standardwebhooks is not in .receivers/python: run scripts/setup.sh"
    );
    let port = free_port();
    let secret = create_alert_endpoint(
        &mut client,
        "chat",
        &format!("http://127.0.0.1:{port}/alerts"),
    );
    // Killed when the test ends, whichever way.
    struct Adapter(std::process::Child);
    impl Drop for Adapter {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _adapter = Adapter(
        std::process::Command::new("python3")
            .arg(root.join("docs/alerts/chat_adapter.py"))
            .env("PYTHONPATH", library)
            .env("WEBHOOK_SECRET", &secret)
            .env("CHAT_WEBHOOK_URL", chat.url("/chat"))
            .env("PORT", port.to_string())
            .stdin(std::process::Stdio::null())
            .spawn()
            .expect("python3 (run scripts/setup.sh)"),
    );
    create_endpoint(&mut client, "gone", &gone.url("/"), "{300ms}");
    let _relay = Relay::start(cluster, &database, &[]);
    create_instances(&mut client, &[1]);
    let posted = chat.wait_for("the chat message", Duration::from_secs(60), |r| {
        !r.is_empty()
    });
    let message: Value = serde_json::from_str(&posted[0].body).unwrap();
    let text = message["text"].as_str().unwrap();
    assert!(
        text.starts_with(&format!(
            ":no_entry: gone ({}) was disabled (gone)",
            gone.url("/")
        )),
        "{text}"
    );
    assert!(text.contains("last status 410"), "{text}");
    // A test event of an operational key: the catalog's example, to this endpoint only.
    client
        .query_one(
            "SELECT ae_events.send_test_event('chat', 'ae.endpoint.failing')",
            &[],
        )
        .unwrap();
    let posted = chat.wait_for("the test event's message", Duration::from_secs(60), |r| {
        r.len() >= 2
    });
    let message: Value = serde_json::from_str(&posted[1].body).unwrap();
    let text = message["text"].as_str().unwrap();
    assert!(
        text.starts_with(
            ":red_circle: proctoring (https://proctor.example.com/hooks/ae) is failing"
        ),
        "{text}"
    );
}

/// An endpoint whose next attempt is far away is announced by the clock: relay_lease (every
/// third of the lease) checks alert_after for the endpoints its relay holds. Then its
/// disable_after disables it (announced), and once enabled again its first delivery ends the
/// failing period announced before (recovered). The relay's calls are made here by hand.
#[test]
fn the_clock_announces_a_failing_endpoint_then_disable_after_and_recovery_after_enabling() {
    let (_, mut client) = delivery_database("alerts_clock");
    create_endpoint(&mut client, "slow", "http://127.0.0.1:9/", "{1h}");
    client
        .execute(
            "SELECT ae_events.alter_endpoint('slow', alert_after => '1 second')",
            &[],
        )
        .unwrap();
    client
        .execute("SELECT ae_events.create_consumer('analytics')", &[])
        .unwrap();
    create_instances(&mut client, &[1]);
    // The relay's calls, made here as the DBA: one failed attempt, the next in an hour.
    let record = "SELECT ae_events.relay_record('slow', 'clock', ARRAY[o.id], ARRAY[o.aggregate_id],
                      '{pending}', '{1}', ARRAY[now()], '{503}', '{\"HTTP 503 Service Unavailable\"}',
                      ARRAY[now() + interval '1 hour'], NULL, NULL, NULL, NULL, e.endpoint_id)
                    FROM ae_events.outbox AS o, ae_events.endpoints AS e
                   WHERE o.aggregate_type = 'test_instance' AND e.endpoint = 'slow'";
    let lease = "SELECT count(*) FROM ae_events.relay_lease('clock', '1 minute')";
    client.query_one(lease, &[]).unwrap();
    assert!(client.query_one(record, &[]).unwrap().get::<_, bool>(0));
    client.query_one(lease, &[]).unwrap();
    assert!(operational_events(&mut client).is_empty());
    std::thread::sleep(Duration::from_millis(1200));
    client.query_one(lease, &[]).unwrap();
    client.query_one(lease, &[]).unwrap();
    let events = operational_events(&mut client);
    assert_eq!(events.len(), 1, "{events:#?}");
    let (key, _, version, payload) = &events[0];
    assert_eq!((key.as_str(), *version), ("ae.endpoint.failing", 1));
    assert!(
        payload["reason"]
            .as_str()
            .unwrap()
            .starts_with("every attempt failed for 00:00:0"),
        "{payload}"
    );
    assert_eq!(payload["last_status"], 503);
    assert_eq!(payload["last_error"], "HTTP 503 Service Unavailable");
    assert_eq!(payload["failed_attempts"], 1);
    // Consumers read them like any event.
    let polled: Vec<String> = client
        .query(
            "SELECT subscription_key FROM ae_events.poll('analytics', 100) ORDER BY id",
            &[],
        )
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(polled, ["ae.test_instance.created", "ae.endpoint.failing"]);

    // Failing for longer than disable_after: disabled (cause disable_after) by the next record.
    client
        .execute(
            "SELECT ae_events.alter_endpoint('slow', disable_after => '1 second')",
            &[],
        )
        .unwrap();
    let record_at = |attempt: i32, status: &str, http: i32| {
        format!(
            "SELECT ae_events.relay_record('slow', 'clock', ARRAY[o.id], ARRAY[o.aggregate_id],
                 '{{{status}}}', '{{{attempt}}}', ARRAY[now()], '{{{http}}}', '{{NULL}}',
                 ARRAY[CASE WHEN '{status}' = 'pending' THEN now() + interval '1 hour' END],
                 NULL, NULL, NULL, NULL, e.endpoint_id)
               FROM ae_events.outbox AS o, ae_events.endpoints AS e
              WHERE o.aggregate_type = 'test_instance' AND e.endpoint = 'slow'"
        )
    };
    client.query_one(lease, &[]).unwrap();
    assert!(client
        .query_one(&record_at(2, "pending", 503), &[])
        .unwrap()
        .get::<_, bool>(0));
    // Enabled again, it delivers: the failing period announced before the disabling ends.
    client
        .execute("SELECT ae_events.enable_endpoint('slow')", &[])
        .unwrap();
    client.query_one(lease, &[]).unwrap();
    assert!(client
        .query_one(&record_at(3, "delivered", 200), &[])
        .unwrap()
        .get::<_, bool>(0));
    let events = operational_events(&mut client);
    let keys: Vec<(&str, i32)> = events.iter().map(|e| (e.0.as_str(), e.2)).collect();
    assert_eq!(
        keys,
        [
            ("ae.endpoint.failing", 1),
            ("ae.endpoint.disabled", 2),
            ("ae.endpoint.recovered", 3)
        ]
    );
    assert_eq!(events[1].3["cause"], "disable_after");
    assert_eq!(events[1].3["last_status"], 503);
    assert_eq!(events[2].3["failing_since"], events[0].3["failing_since"]);
}
