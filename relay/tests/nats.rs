//! ae-relay publishing to NATS JetStream (an endpoint URL `nats://host:port/subject`) against a
//! real cluster and a real `nats-server -js` started by each test: every event in the stream
//! exactly once (de-duplicated by `Nats-Msg-Id`, across a `kill -9` of the relay too), in order
//! per instance, signed as a webhook; no stream for the subject is a failed, retried attempt.

#[path = "support/nats_server.rs"]
mod nats_server;
mod support;

use async_nats::jetstream::{self, consumer, stream};
use futures_util::StreamExt;
use nats_server::NatsServer;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};
use support::*;

const WAIT: Duration = Duration::from_secs(60);
/// For the 5,000-event bursts, on a loaded 2-core machine.
const BURST_WAIT: Duration = Duration::from_secs(300);
const SUBJECT: &str = "ae.events.test";
const STREAM: &str = "AE_EVENTS";

/// The test's side of NATS: a server, and a JetStream client on its own runtime.
struct Nats {
    server: NatsServer,
    runtime: tokio::runtime::Runtime,
    jetstream: jetstream::Context,
}

impl Nats {
    fn start() -> Nats {
        let server = NatsServer::start();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        // The context spawns its acknowledgement task: made on the runtime.
        let jetstream = runtime
            .block_on(async {
                async_nats::connect(server.address())
                    .await
                    .map(jetstream::new)
            })
            .expect("connect to nats-server");
        Nats {
            server,
            runtime,
            jetstream,
        }
    }

    /// The stream storing SUBJECT (default duplicate window: 2 minutes).
    fn create_stream(&self) {
        let deadline = Instant::now() + WAIT;
        loop {
            let created = self
                .runtime
                .block_on(self.jetstream.create_stream(stream::Config {
                    name: STREAM.to_owned(),
                    subjects: vec![SUBJECT.to_owned()],
                    ..Default::default()
                }));
            match created {
                Ok(_) => return,
                // JetStream may still be starting.
                Err(error) if Instant::now() < deadline => {
                    eprintln!("create_stream: {error}; again");
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(error) => panic!("create_stream: {error}\n{}", self.server.log()),
            }
        }
    }

    fn stored(&self) -> u64 {
        self.runtime.block_on(async {
            let mut stream = self.jetstream.get_stream(STREAM).await.expect("the stream");
            stream.info().await.expect("stream info").state.messages
        })
    }

    fn wait_for_stored(&self, what: &str, count: u64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let stored = self.stored();
            if stored >= count {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {stored} of {count} in the stream"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Every message of the stream, in stream order, as a consumer receives them (shaped like
    /// a webhook request, so that the HTTP tests' checks apply).
    fn read_stream(&self) -> Vec<Received> {
        self.runtime.block_on(async {
            let mut stream = self.jetstream.get_stream(STREAM).await.expect("the stream");
            let total = stream.info().await.expect("stream info").state.messages as usize;
            let consumer = stream
                .create_consumer(consumer::pull::Config {
                    deliver_policy: consumer::DeliverPolicy::All,
                    ack_policy: consumer::AckPolicy::None,
                    inactive_threshold: Duration::from_secs(60),
                    ..Default::default()
                })
                .await
                .expect("a consumer");
            let mut messages = consumer.messages().await.expect("the consumer's messages");
            let mut received = Vec::with_capacity(total);
            while received.len() < total {
                let message = tokio::time::timeout(WAIT, messages.next())
                    .await
                    .unwrap_or_else(|_| panic!("{} of {total} messages consumed", received.len()))
                    .expect("the consumer ended")
                    .expect("a message");
                let headers = message
                    .headers
                    .iter()
                    .flat_map(|headers| headers.iter())
                    .filter_map(|(name, values)| {
                        Some((name.to_string(), values.first()?.as_str().to_owned()))
                    })
                    .collect();
                received.push(Received {
                    method: "PUBLISH".to_owned(),
                    path: message.subject.to_string(),
                    headers,
                    body: String::from_utf8(message.payload.to_vec()).expect("UTF-8 body"),
                    at: Instant::now(),
                });
            }
            received
        })
    }
}

/// 1,000 instances, then four rounds of updates over them in several transactions: 5,000 events,
/// versions 1 to 5 of each instance.
fn write_burst(client: &mut postgres::Client) {
    client
        .batch_execute(
            "INSERT INTO ti.instance
             SELECT i, NULL, NULL, NULL, 'in_progress', 1, 1, NULL, NULL, NULL, now(), 1, now(), 1
               FROM generate_series(1, 1000) AS i;",
        )
        .unwrap();
    for round in 1..=4 {
        for part in 0..4 {
            client
                .execute(
                    "UPDATE ti.instance SET external_id = 'round ' || $1::int WHERE id % 4 = $2::int",
                    &[&round, &part],
                )
                .unwrap();
        }
    }
    assert_eq!(outbox_events(client).len(), 5000);
}

/// Every outbox event is in the stream exactly once (Nats-Msg-Id and webhook-id unique and
/// equal to the outbox's event ids), with its stored payload, signed with the endpoint's secret,
/// and each instance's versions in order.
fn assert_each_event_once_in_order(
    client: &mut postgres::Client,
    messages: &[Received],
    secret: &str,
) {
    let events = outbox_events(client);
    let message_ids: Vec<&str> = messages.iter().map(|m| m.header("Nats-Msg-Id")).collect();
    let unique: HashSet<&str> = message_ids.iter().copied().collect();
    assert_eq!(
        unique.len(),
        messages.len(),
        "a message id twice in the stream"
    );
    let expected: HashSet<&str> = events.iter().map(|(id, ..)| id.as_str()).collect();
    assert_eq!(
        unique, expected,
        "the stream holds exactly the outbox's events"
    );
    let payloads: HashMap<&str, &str> = events
        .iter()
        .map(|(id, _, _, payload)| (id.as_str(), payload.as_str()))
        .collect();
    let mut highest: HashMap<i64, i32> = HashMap::new();
    for message in messages {
        let id = message.header("Nats-Msg-Id");
        assert_eq!(message.header("webhook-id"), id);
        assert_eq!(message.body, payloads[id], "the body is the stored payload");
        assert!(svix_verifies(secret, message), "signature of {id}");
        let last = highest.entry(message.instance()).or_insert(0);
        assert_eq!(
            message.version(),
            *last + 1,
            "instance {}: version {} after {last}",
            message.instance(),
            message.version()
        );
        *last = message.version();
    }
}

#[test]
fn five_thousand_events_are_each_published_once_in_order_per_instance_and_signed() {
    let cluster = Cluster::shared();
    let nats = Nats::start();
    nats.create_stream();
    let (database, mut client) = delivery_database("nats_burst");
    let secret = create_endpoint(&mut client, "stream", &nats.server.url(SUBJECT), "{1s}");
    client
        .execute(
            "SELECT ae_events.alter_endpoint('stream', headers => '{\"x-tenant\": \"t1\"}')",
            &[],
        )
        .unwrap();
    write_burst(&mut client);
    let _relay = Relay::start(cluster, &database, &[]);

    nats.wait_for_stored("every event", 5000, BURST_WAIT);
    wait_until_sql(
        &mut client,
        "every delivery recorded",
        BURST_WAIT,
        "SELECT count(*) = 5000 FROM ae_events.delivery_status
          WHERE status = 'delivered' AND last_status = 200",
    );
    let messages = nats.read_stream();
    assert_eq!(messages.len(), 5000);
    assert_each_event_once_in_order(&mut client, &messages, &secret);

    let first = &messages[0];
    let (_, instance, version, _) = outbox_events(&mut client)
        .into_iter()
        .find(|(id, ..)| id == first.header("webhook-id"))
        .unwrap();
    assert_eq!(first.path, SUBJECT);
    assert_eq!(first.header("content-type"), "application/json");
    assert_eq!(
        first.header("ae-subscription-key"),
        "ae.test_instance.created"
    );
    assert_eq!(first.header("ae-event-type"), "ae_test_instance_created");
    assert_eq!(first.instance(), instance);
    assert_eq!(first.version(), version);
    assert_eq!(
        first.header("x-tenant"),
        "t1",
        "the endpoint's static header"
    );
    assert!(!svix_verifies(
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        first
    ));
}

#[test]
fn kill_9_of_the_relay_mid_burst_still_leaves_each_event_once_in_the_stream() {
    let cluster = Cluster::shared();
    let nats = Nats::start();
    nats.create_stream();
    let (database, mut client) = delivery_database("nats_kill");
    let secret = create_endpoint(&mut client, "stream", &nats.server.url(SUBJECT), "{1s}");
    write_burst(&mut client);

    let relay = Relay::start(cluster, &database, &[]);
    nats.wait_for_stored("a part of the burst", 1500, BURST_WAIT);
    relay.kill_9();
    let stored_at_kill = nats.stored();
    let recorded_at_kill: i64 = client
        .query_one(
            "SELECT count(*) FROM ae_events.delivery_status WHERE status = 'delivered'",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(
        stored_at_kill < 5000,
        "the kill came mid-burst ({stored_at_kill} published)"
    );
    // A new relay (another id) takes the endpoint once the dead one's lease expires, and
    // publishes again what was acknowledged but not recorded: JetStream drops those.
    let _relay = Relay::start(cluster, &database, &[]);
    wait_until_sql(
        &mut client,
        "every delivery recorded",
        BURST_WAIT,
        "SELECT count(*) = 5000 FROM ae_events.delivery_status WHERE status = 'delivered'",
    );
    let messages = nats.read_stream();
    assert_eq!(messages.len(), 5000, "nothing twice in the stream");
    assert_each_event_once_in_order(&mut client, &messages, &secret);
    eprintln!(
        "kill -9 with {stored_at_kill} in the stream and {recorded_at_kill} recorded: \
         {} published again and dropped as duplicates",
        stored_at_kill as i64 - recorded_at_kill
    );

    // A redelivery publishes an event again: still once in the stream (within the window).
    let (event_id, ..) = outbox_events(&mut client).remove(0);
    let redelivered_at: String = client
        .query_one(
            "SELECT now()::text FROM ae_events.redeliver('stream', ARRAY[$1::text::uuid])",
            &[&event_id],
        )
        .unwrap()
        .get(0);
    wait_until_sql(
        &mut client,
        "the redelivery",
        WAIT,
        &format!(
            "SELECT status = 'delivered' AND last_attempt_at > '{redelivered_at}'
               FROM ae_events.delivery_status WHERE event_id = '{event_id}'"
        ),
    );
    assert_eq!(
        nats.stored(),
        5000,
        "the redelivery was dropped as a duplicate"
    );
}

#[test]
fn without_a_stream_for_the_subject_the_attempt_fails_clearly_and_is_retried_until_one_exists() {
    let cluster = Cluster::shared();
    let nats = Nats::start();
    let (database, mut client) = delivery_database("nats_no_stream");
    // Retries every second for longer than any wait below: never dead-lettered here.
    let schedule = format!("{{500ms{}}}", ",1s".repeat(600));
    let secret = create_endpoint(&mut client, "stream", &nats.server.url(SUBJECT), &schedule);
    insert_instance(&mut client, 1);
    set_status(&mut client, 1, "completed");
    let events = outbox_events(&mut client);
    let (first, second) = (events[0].0.clone(), events[1].0.clone());
    let _relay = Relay::start(cluster, &database, &[]);

    let deadline = Instant::now() + WAIT;
    let failed = loop {
        match delivery(&mut client, "stream", &first) {
            Some(row) if row.1 >= 2 => break row,
            _ => {
                assert!(Instant::now() < deadline, "timed out waiting for retries");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    };
    let (status, _, last_status, error) = failed;
    assert_eq!((status.as_str(), last_status), ("pending", None));
    let error = error.unwrap_or_default();
    assert!(
        error.contains("no JetStream stream stores the subject ae.events.test"),
        "{error}"
    );
    let waiting = delivery(&mut client, "stream", &second).unwrap();
    assert_eq!(
        (waiting.0.as_str(), waiting.1),
        ("pending", 0),
        "version 2 waits behind version 1"
    );

    nats.create_stream();
    wait_until_sql(
        &mut client,
        "both delivered",
        WAIT,
        "SELECT count(*) = 2 FROM ae_events.delivery_status WHERE status = 'delivered'",
    );
    let (status, attempts, last_status, error) = delivery(&mut client, "stream", &first).unwrap();
    assert_eq!(
        (status.as_str(), last_status, error),
        ("delivered", Some(200), None)
    );
    assert!(attempts >= 3, "{attempts} attempts");
    let messages = nats.read_stream();
    assert_eq!(messages.len(), 2);
    assert_each_event_once_in_order(&mut client, &messages, &secret);
}

#[test]
fn an_unreachable_nats_server_is_a_failed_attempt_retried_until_the_url_names_a_running_one() {
    let cluster = Cluster::shared();
    let nats = Nats::start();
    nats.create_stream();
    let (database, mut client) = delivery_database("nats_unreachable");
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let unreachable = format!("nats://127.0.0.1:{closed_port}/{SUBJECT}");
    let schedule = format!("{{500ms{}}}", ",1s".repeat(600));
    let secret = create_endpoint(&mut client, "stream", &unreachable, &schedule);
    insert_instance(&mut client, 1);
    let (event_id, ..) = outbox_events(&mut client).remove(0);
    let _relay = Relay::start(cluster, &database, &[]);

    let deadline = Instant::now() + WAIT;
    let (status, _, last_status, error) = loop {
        match delivery(&mut client, "stream", &event_id) {
            Some(row) if row.1 >= 2 => break row,
            _ => {
                assert!(Instant::now() < deadline, "timed out waiting for retries");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    };
    assert_eq!((status.as_str(), last_status), ("pending", None));
    let error = error.unwrap_or_default();
    assert!(
        error.contains(&format!(
            "could not connect to nats://127.0.0.1:{closed_port}"
        )),
        "{error}"
    );

    // The URL changed by the DBA is used by the next attempt.
    client
        .execute(
            "SELECT ae_events.alter_endpoint('stream', url => $1)",
            &[&nats.server.url(SUBJECT)],
        )
        .unwrap();
    wait_until_sql(
        &mut client,
        "delivered",
        WAIT,
        "SELECT count(*) = 1 FROM ae_events.delivery_status WHERE status = 'delivered'",
    );
    let messages = nats.read_stream();
    assert_eq!(messages.len(), 1);
    assert_each_event_once_in_order(&mut client, &messages, &secret);
}
