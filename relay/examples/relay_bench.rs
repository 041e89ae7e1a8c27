//! The relay's benchmark (issue 10), one run on a throwaway cluster, ratios from that run:
//!
//! - throughput: a backlog of events (half created, half updated: two versions per instance)
//!   delivered to a local receiver that answers 200 at once, with 1 and with 10 endpoints, beside
//!   a plain HTTP client loop that POSTs the same requests (bodies and headers, signed
//!   beforehand) at the same concurrency to the same receiver (no database, no signing, no
//!   bookkeeping: the ceiling on this machine). Both rates run from the first request's arrival
//!   to the last's, the medians of 3 interleaved rounds; the relay's start (process,
//!   connections, lease, first fetch) is shown apart;
//! - latency: commit to receipt, p50/p99, at a steady 200 events/s;
//! - and, for each, events lost and versions out of order at the receiver (must be 0);
//! - NATS JetStream: the same kind of backlog published by the relay to a stream on a local
//!   `nats-server -js`, beside a plain async-nats loop publishing the same payloads to the same
//!   kind of stream and awaiting each ack (what a user would write: one at a time), and the same
//!   loop with 16 publishes in flight (the relay's concurrency).
//!
//! - several relays: a backlog delivered to 12 endpoints by 1 and by 3 relays (fair shares), and
//!   under a steady load the longest wait at a relay's endpoints after it was `kill -9`ed (with
//!   leases of 6 s and 3 s).
//!
//! `--only delivery` (HTTP throughput and latency), `--only fleet` or `--only nats` runs one part. `--smoke` runs
//! it at a tiny size (part of the test command, so that it cannot rot).

#[path = "../../tests/common/mod.rs"]
mod common;
#[path = "../tests/support/nats_server.rs"]
mod nats_server;

use common::*;
use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Requests in flight per endpoint: the relay's default max_in_flight.
const IN_FLIGHT: usize = 16;

struct Arrival {
    endpoint: String,
    webhook_id: String,
    instance: i64,
    version: i32,
    at: Instant,
}

/// A receiver answering 200 at once (axum on its own tokio runtime); it records every arrival.
struct Receiver {
    port: u16,
    arrivals: Arc<Mutex<Vec<Arrival>>>,
    _runtime: tokio::runtime::Runtime,
}

impl Receiver {
    fn start() -> Receiver {
        use axum::extract::{Path, State};
        use axum::http::HeaderMap;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let arrivals: Arc<Mutex<Vec<Arrival>>> = Arc::default();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind");
        let port = listener.local_addr().unwrap().port();
        async fn receive(
            State(arrivals): State<Arc<Mutex<Vec<Arrival>>>>,
            Path(endpoint): Path<String>,
            headers: HeaderMap,
            _body: axum::body::Bytes,
        ) -> axum::http::StatusCode {
            let header = |name: &str| {
                headers
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned()
            };
            let arrival = Arrival {
                endpoint,
                webhook_id: header("webhook-id"),
                instance: header("ae-aggregate-id").parse().unwrap_or(-1),
                version: header("ae-snapshot-version").parse().unwrap_or(-1),
                at: Instant::now(),
            };
            arrivals.lock().unwrap().push(arrival);
            axum::http::StatusCode::OK
        }
        let app = axum::Router::new()
            .route("/{endpoint}", axum::routing::post(receive))
            .with_state(arrivals.clone());
        runtime.spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver {
            port,
            arrivals,
            _runtime: runtime,
        }
    }

    fn count(&self) -> usize {
        self.arrivals.lock().unwrap().len()
    }

    fn take(&self) -> Vec<Arrival> {
        std::mem::take(&mut *self.arrivals.lock().unwrap())
    }

    /// Wait until every expected event has arrived once (duplicates not counted), or until the
    /// timeout (the check that follows then reports what is missing).
    fn wait_for_every_event(&self, expected: &HashMap<String, usize>, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline && check(&self.arrivals.lock().unwrap(), expected).0 > 0 {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn wait_for(&self, count: usize, timeout: Duration) -> Instant {
        let deadline = Instant::now() + timeout;
        loop {
            {
                let arrivals = self.arrivals.lock().unwrap();
                if arrivals.len() >= count {
                    return arrivals
                        .iter()
                        .map(|a| a.at)
                        .max()
                        .unwrap_or_else(Instant::now);
                }
            }
            assert!(
                Instant::now() < deadline,
                "timed out: {} of {count} arrived",
                self.count()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// Lost events and versions out of order per (endpoint, instance), from the arrivals.
fn check(arrivals: &[Arrival], expected_per_endpoint: &HashMap<String, usize>) -> (usize, usize) {
    let mut seen: HashMap<&str, std::collections::HashSet<&str>> = HashMap::new();
    let mut highest: HashMap<(&str, i64), i32> = HashMap::new();
    let mut out_of_order = 0;
    for arrival in arrivals {
        if seen
            .entry(&arrival.endpoint)
            .or_default()
            .insert(&arrival.webhook_id)
        {
            let last = highest
                .entry((&arrival.endpoint, arrival.instance))
                .or_insert(0);
            if arrival.version != *last + 1 {
                out_of_order += 1;
            }
            *last = (*last).max(arrival.version);
        }
    }
    let lost = expected_per_endpoint
        .iter()
        .map(|(endpoint, expected)| {
            expected.saturating_sub(seen.get(endpoint.as_str()).map_or(0, |s| s.len()))
        })
        .sum();
    (lost, out_of_order)
}

fn relay_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/examples/relay_bench -> target/<profile>/ae-relay
    exe.parent()
        .and_then(|p| p.parent())
        .expect("target dir")
        .join("ae-relay")
}

struct RelayProcess(Child);

/// CPU seconds (user + system) a process has used, from /proc.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks: f64 = fields
        .get(11)
        .and_then(|u| u.parse::<f64>().ok())
        .unwrap_or(0.0)
        + fields
            .get(12)
            .and_then(|s| s.parse::<f64>().ok())
            .unwrap_or(0.0);
    ticks / 100.0
}

/// CPU seconds used by every process of the `postgres` OS user (the cluster's backends).
fn database_cpu_seconds() -> f64 {
    let mut total = 0.0;
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let is_postgres = std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .is_ok_and(|c| c.starts_with("postgres"));
        if is_postgres && status.contains("Uid:") {
            total += cpu_seconds(pid);
        }
    }
    total
}

impl RelayProcess {
    fn start(cluster: &Cluster, database: &str) -> RelayProcess {
        RelayProcess::start_with(cluster, database, &[])
    }

    fn start_with(cluster: &Cluster, database: &str, extra: &[&str]) -> RelayProcess {
        let lease: &[&str] = if extra.contains(&"--lease") {
            &[]
        } else {
            &["--lease", "5s"]
        };
        let child = Command::new(relay_binary())
            .args(["run", "--poll-interval", "1s"])
            .args(lease)
            .args(extra)
            .env(
                "DATABASE_URL",
                format!(
                    "postgres://relay_user@127.0.0.1:{}/{database}",
                    cluster.port
                ),
            )
            .env(
                "AE_RELAY_LOG",
                std::env::var("AE_RELAY_LOG").unwrap_or_else(|_| "warn".to_owned()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("start ae-relay (build it first: cargo build --release -p ae-relay)");
        RelayProcess(child)
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn create_relay_login(cluster: &Cluster) {
    cluster
        .connect("postgres")
        .batch_execute(
            "DO $$ BEGIN CREATE ROLE relay_user LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$;
             GRANT ae_events_relay TO relay_user;",
        )
        .unwrap();
}

fn database_with_endpoints(
    cluster: &Cluster,
    name: &str,
    receiver: &Receiver,
    endpoints: usize,
) -> (String, postgres::Client) {
    let database = cluster.database(name, ForeignKeys::Without);
    let mut client = cluster.connect(&database);
    client.batch_execute(MINIMAL_REFERENCE_DATA).unwrap();
    create_relay_login(cluster);
    for n in 0..endpoints {
        client
            .query_one(
                "SELECT ae_events.create_endpoint($1, $2)",
                &[
                    &format!("e{n}"),
                    &format!("http://127.0.0.1:{}/e{n}", receiver.port),
                ],
            )
            .unwrap();
    }
    (database, client)
}

/// A backlog of `events`: half created, then half updated (version 2 of each instance).
fn write_backlog(client: &mut postgres::Client, events: usize) {
    insert_instances(client, 1, (events / 2) as i64);
    client
        .execute("UPDATE ti.instance SET external_id = 'changed'", &[])
        .unwrap();
}

/// What one throughput run measured.
struct Throughput {
    /// From the first delivery's arrival to the last's.
    per_second: f64,
    /// From starting the relay's process to the first delivery's arrival.
    start_ms: f64,
    lost: usize,
    out_of_order: usize,
    relay_cpu_us: f64,
    database_cpu_us: f64,
}

/// One request as the relay sends it: its body and headers (signed for the first endpoint).
struct PlainRequest {
    body: String,
    headers: reqwest::header::HeaderMap,
}

/// The relay delivering a backlog to `endpoints` endpoints; and its requests, for the plain loop.
fn relay_throughput(
    cluster: &Cluster,
    events: usize,
    endpoints: usize,
    round: usize,
) -> (Throughput, Vec<PlainRequest>) {
    let receiver = Receiver::start();
    let (database, mut client) = database_with_endpoints(
        cluster,
        &format!("relay_bench_{endpoints}_{round}"),
        &receiver,
        endpoints,
    );
    write_backlog(&mut client, events);
    // Vacuumed and analyzed now, as autovacuum would soon: not in the middle of the run.
    client
        .batch_execute("VACUUM (ANALYZE) ae_events.outbox, ti.instance")
        .unwrap();
    let requests = requests_as_sent(&mut client);
    let start = Instant::now();
    let database_cpu_before = database_cpu_seconds();
    let relay = RelayProcess::start(cluster, &database);
    let last = receiver.wait_for(events * endpoints, Duration::from_secs(900));
    let relay_cpu = cpu_seconds(relay.0.id());
    let database_cpu = database_cpu_seconds() - database_cpu_before;
    drop(relay);
    let expected: HashMap<String, usize> =
        (0..endpoints).map(|n| (format!("e{n}"), events)).collect();
    let arrivals = receiver.take();
    let first = arrivals.iter().map(|a| a.at).min().unwrap_or(last);
    let (lost, out_of_order) = check(&arrivals, &expected);
    let deliveries = (events * endpoints) as f64;
    let measured = Throughput {
        per_second: (deliveries - 1.0) / (last - first).as_secs_f64(),
        start_ms: (first - start).as_secs_f64() * 1000.0,
        lost,
        out_of_order,
        relay_cpu_us: relay_cpu * 1e6 / deliveries,
        database_cpu_us: database_cpu * 1e6 / deliveries,
    };
    // Dropped, so that no autovacuum of its deliveries runs beside the plain loop or the next
    // round.
    drop(client);
    cluster
        .connect("postgres")
        .batch_execute(&format!("DROP DATABASE {database} WITH (FORCE)"))
        .unwrap();
    (measured, requests)
}

/// The relay's requests to the first endpoint, with the headers http_sink.rs gives them (signed
/// with the endpoint's secret), in outbox order.
fn requests_as_sent(client: &mut postgres::Client) -> Vec<PlainRequest> {
    let secret: String = client
        .query_one(
            "SELECT secret FROM ae_events.endpoint_secrets WHERE endpoint = 'e0'",
            &[],
        )
        .unwrap()
        .get(0);
    let keys =
        [ae_relay::signing::SigningKey::from_secret(&secret).expect("the endpoint's secret")];
    let now = std::time::SystemTime::now();
    let timestamp = now.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    client
        .query(
            "SELECT id, event_id::text, subscription_key, event_type, aggregate_id,
                    snapshot_version, payload::text
               FROM ae_events.outbox ORDER BY id",
            &[],
        )
        .unwrap()
        .iter()
        .map(|row| {
            let body: String = row.get(6);
            let event = ae_relay::endpoint::Event {
                id: row.get(0),
                event_id: row.get(1),
                subscription_key: row.get(2),
                event_type: row.get(3),
                aggregate_id: row.get(4),
                snapshot_version: row.get(5),
                payload: bytes::Bytes::from(body.clone()),
                attempts: 0,
                occurred_at: now,
                test: false,
            };
            let mut headers = reqwest::header::HeaderMap::new();
            ae_relay::http_sink::insert_event_headers(&mut headers, &keys, &event, timestamp);
            PlainRequest { body, headers }
        })
        .collect()
}

/// The ceiling: the same requests POSTed by a plain reqwest loop, `IN_FLIGHT` at a time per
/// endpoint; deliveries per second from the first arrival to the last.
fn plain_loop(requests: Vec<PlainRequest>, endpoints: usize) -> f64 {
    let receiver = Receiver::start();
    let port = receiver.port;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let count = requests.len();
    let requests: Arc<Vec<PlainRequest>> = Arc::new(requests);
    runtime.block_on(async {
        let client = reqwest::Client::new();
        let mut tasks = Vec::new();
        for endpoint in 0..endpoints {
            for lane in 0..IN_FLIGHT {
                let (client, requests) = (client.clone(), requests.clone());
                let url = format!("http://127.0.0.1:{port}/e{endpoint}");
                tasks.push(tokio::spawn(async move {
                    for request in requests.iter().skip(lane).step_by(IN_FLIGHT) {
                        let response = client
                            .post(&url)
                            .headers(request.headers.clone())
                            .body(request.body.clone())
                            .send()
                            .await
                            .expect("post");
                        assert!(response.status().is_success());
                    }
                }));
            }
        }
        for task in tasks {
            task.await.unwrap();
        }
    });
    let last = receiver.wait_for(count * endpoints, Duration::from_secs(60));
    let first = receiver.take().iter().map(|a| a.at).min().unwrap_or(last);
    (count * endpoints - 1) as f64 / (last - first).as_secs_f64()
}

/// Commit-to-receipt latency at a steady rate: p50, p99 (ms), lost, out of order.
fn latency(cluster: &Cluster, rate: u32, seconds: u32) -> (f64, f64, usize, usize) {
    latency_of(cluster, 1, 1, rate, seconds)
}

/// The same with `endpoints` endpoints served by `relays` relays (each event goes to every
/// endpoint: the percentiles are over every delivery).
fn latency_of(
    cluster: &Cluster,
    endpoints: usize,
    relays: usize,
    rate: u32,
    seconds: u32,
) -> (f64, f64, usize, usize) {
    let receiver = Receiver::start();
    let (database, mut client) = database_with_endpoints(
        cluster,
        &format!("relay_latency_{endpoints}_{relays}"),
        &receiver,
        endpoints,
    );
    let _relays: Vec<RelayProcess> = (0..relays)
        .map(|_| RelayProcess::start(cluster, &database))
        .collect();
    // The relays take their fair shares and listen.
    wait_until_sql(
        &mut client,
        "the relays' fair shares",
        Duration::from_secs(60),
        &format!(
            "SELECT (SELECT count(*) FROM ae_events.relays) = {relays}
               AND (SELECT count(*) FROM ae_events.endpoints WHERE lease_expires_at > now()) = {endpoints}
               AND (SELECT max(n) FROM (SELECT count(*) AS n FROM ae_events.endpoints GROUP BY relay) AS h)
                   <= ceil({endpoints}::float8 / {relays})"
        ),
    );
    let total = (rate * seconds) as i64;
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate));
    let mut committed: HashMap<i64, Instant> = HashMap::new();
    let start = Instant::now();
    for id in 1..=total {
        let due = start + interval * (id as u32 - 1);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        insert_instance(&mut client, id);
        committed.insert(id, Instant::now());
    }
    receiver.wait_for(total as usize * endpoints, Duration::from_secs(120));
    let arrivals = receiver.take();
    let mut latencies: Vec<f64> = arrivals
        .iter()
        .filter_map(|a| {
            committed
                .get(&a.instance)
                .map(|c| a.at.saturating_duration_since(*c).as_secs_f64() * 1000.0)
        })
        .collect();
    latencies.sort_by(|a, b| a.total_cmp(b));
    let percentile = |p: f64| latencies[((latencies.len() as f64 - 1.0) * p).round() as usize];
    let expected: HashMap<String, usize> = (0..endpoints)
        .map(|n| (format!("e{n}"), total as usize))
        .collect();
    let (lost, out_of_order) = check(&arrivals, &expected);
    (percentile(0.5), percentile(0.99), lost, out_of_order)
}

/// What the NATS run measured: the relay's and the plain loops' publishes per second.
struct NatsThroughput {
    relay_per_second: f64,
    relay_cpu_us: f64,
    database_cpu_us: f64,
    nats_cpu_us: f64,
    sequential_per_second: f64,
    concurrent_per_second: f64,
    lost: usize,
    out_of_order: usize,
}

/// A JetStream stream storing one subject (file storage, the default duplicate window).
async fn create_stream(jetstream: &async_nats::jetstream::Context, name: &str, subject: &str) {
    jetstream
        .create_stream(async_nats::jetstream::stream::Config {
            name: name.to_owned(),
            subjects: vec![subject.to_owned()],
            ..Default::default()
        })
        .await
        .expect("create stream");
}

async fn stored(jetstream: &async_nats::jetstream::Context, name: &str) -> u64 {
    let mut stream = jetstream.get_stream(name).await.expect("the stream");
    stream.info().await.expect("stream info").state.messages
}

/// Every message of a stream, as arrivals (for the lost and out-of-order counts).
async fn read_stream(jetstream: &async_nats::jetstream::Context, name: &str) -> Vec<Arrival> {
    use async_nats::jetstream::consumer;
    use futures_util::StreamExt;
    let total = stored(jetstream, name).await as usize;
    let stream = jetstream.get_stream(name).await.expect("the stream");
    let consumer = stream
        .create_consumer(consumer::pull::Config {
            ack_policy: consumer::AckPolicy::None,
            ..Default::default()
        })
        .await
        .expect("a consumer");
    let mut messages = consumer.messages().await.expect("messages");
    let mut arrivals = Vec::with_capacity(total);
    while arrivals.len() < total {
        let message = tokio::time::timeout(Duration::from_secs(60), messages.next())
            .await
            .expect("a message in time")
            .expect("the consumer ended")
            .expect("a message");
        let header = |name: &str| {
            message
                .headers
                .as_ref()
                .and_then(|h| h.get(name))
                .map(|v| v.as_str().to_owned())
                .unwrap_or_default()
        };
        arrivals.push(Arrival {
            endpoint: "nats".to_owned(),
            webhook_id: header("webhook-id"),
            instance: header("ae-aggregate-id").parse().unwrap_or(-1),
            version: header("ae-snapshot-version").parse().unwrap_or(-1),
            at: Instant::now(),
        });
    }
    arrivals
}

/// The relay publishing a backlog of `events` to JetStream, then plain loops publishing the same
/// payloads (with the event id as Nats-Msg-Id) to a stream of their own.
fn nats_throughput(cluster: &Cluster, events: usize) -> NatsThroughput {
    let server = nats_server::NatsServer::start();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let jetstream = runtime.block_on(async {
        let client = async_nats::connect(server.address())
            .await
            .expect("connect");
        let jetstream = async_nats::jetstream::new(client);
        create_stream(&jetstream, "RELAY", "ae.relay").await;
        create_stream(&jetstream, "SEQUENTIAL", "ae.sequential").await;
        create_stream(&jetstream, "CONCURRENT", "ae.concurrent").await;
        jetstream
    });
    let database = cluster.database("relay_bench_nats", ForeignKeys::Without);
    let mut client = cluster.connect(&database);
    client.batch_execute(MINIMAL_REFERENCE_DATA).unwrap();
    create_relay_login(cluster);
    client
        .query_one(
            "SELECT ae_events.create_endpoint('nats', $1)",
            &[&server.url("ae.relay")],
        )
        .unwrap();
    write_backlog(&mut client, events);
    let messages: Vec<(String, bytes::Bytes)> = client
        .query(
            "SELECT event_id::text, payload::text FROM ae_events.outbox ORDER BY id",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), bytes::Bytes::from(r.get::<_, String>(1))))
        .collect();

    let start = Instant::now();
    let database_cpu_before = database_cpu_seconds();
    let nats_cpu_before = cpu_seconds(server.pid());
    let relay = RelayProcess::start(cluster, &database);
    let deadline = start + Duration::from_secs(900);
    while runtime.block_on(stored(&jetstream, "RELAY")) < events as u64 {
        assert!(
            Instant::now() < deadline,
            "timed out publishing through the relay"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let elapsed = start.elapsed();
    let relay_cpu = cpu_seconds(relay.0.id());
    let database_cpu = database_cpu_seconds() - database_cpu_before;
    let nats_cpu = cpu_seconds(server.pid()) - nats_cpu_before;
    drop(relay);
    let expected = HashMap::from([("nats".to_owned(), events)]);
    let (lost, out_of_order) = check(
        &runtime.block_on(read_stream(&jetstream, "RELAY")),
        &expected,
    );

    let publish_all = |subject: &'static str, lanes: usize| -> f64 {
        let messages = Arc::new(messages.clone());
        let start = Instant::now();
        runtime.block_on(async {
            let mut tasks = Vec::new();
            for lane in 0..lanes {
                let (jetstream, messages) = (jetstream.clone(), messages.clone());
                tasks.push(tokio::spawn(async move {
                    for (event_id, payload) in messages.iter().skip(lane).step_by(lanes) {
                        let mut headers = async_nats::HeaderMap::new();
                        headers.insert("Nats-Msg-Id", event_id.as_str());
                        jetstream
                            .publish_with_headers(subject, headers, payload.clone())
                            .await
                            .expect("publish")
                            .await
                            .expect("ack");
                    }
                }));
            }
            for task in tasks {
                task.await.unwrap();
            }
        });
        messages.len() as f64 / start.elapsed().as_secs_f64()
    };
    let sequential_per_second = publish_all("ae.sequential", 1);
    let concurrent_per_second = publish_all("ae.concurrent", IN_FLIGHT);
    NatsThroughput {
        relay_per_second: events as f64 / elapsed.as_secs_f64(),
        relay_cpu_us: relay_cpu * 1e6 / events as f64,
        database_cpu_us: database_cpu * 1e6 / events as f64,
        nats_cpu_us: nats_cpu * 1e6 / events as f64,
        sequential_per_second,
        concurrent_per_second,
        lost,
        out_of_order,
    }
}

/// `relays` relays sharing `endpoints` endpoints deliver a backlog: deliveries per second, lost,
/// out of order. The endpoints are enabled once every relay runs, so each takes its fair share
/// from the start.
fn fleet_throughput(
    cluster: &Cluster,
    events: usize,
    endpoints: usize,
    relays: usize,
) -> (f64, usize, usize) {
    let receiver = Receiver::start();
    let (database, mut client) = database_with_endpoints(
        cluster,
        &format!("relay_fleet_{relays}"),
        &receiver,
        endpoints,
    );
    client
        .batch_execute("SELECT ae_events.disable_endpoint(endpoint) FROM ae_events.endpoints")
        .unwrap();
    write_backlog(&mut client, events);
    let running: Vec<RelayProcess> = (0..relays)
        .map(|_| RelayProcess::start(cluster, &database))
        .collect();
    wait_until_sql(
        &mut client,
        "every relay registered",
        Duration::from_secs(60),
        &format!("SELECT count(*) = {relays} FROM ae_events.relays"),
    );
    let start = Instant::now();
    client
        .batch_execute("SELECT ae_events.enable_endpoint(endpoint) FROM ae_events.endpoints")
        .unwrap();
    let last = receiver.wait_for(events * endpoints, Duration::from_secs(900));
    drop(running);
    let expected: HashMap<String, usize> =
        (0..endpoints).map(|n| (format!("e{n}"), events)).collect();
    let (lost, out_of_order) = check(&receiver.take(), &expected);
    (
        (events * endpoints) as f64 / (last - start).as_secs_f64(),
        lost,
        out_of_order,
    )
}

/// Three relays, twelve endpoints, a steady load; one relay is killed (`kill -9`): the longest
/// time without a delivery at any of its endpoints (the takeover gap), lost, out of order.
fn failover_gap(
    cluster: &Cluster,
    lease: &str,
    rate: u32,
    seconds: u32,
) -> (Duration, usize, usize) {
    let receiver = Receiver::start();
    let endpoints = 12;
    let (database, mut client) = database_with_endpoints(
        cluster,
        &format!(
            "relay_failover_{}",
            lease.replace(|c: char| !c.is_ascii_alphanumeric(), "")
        ),
        &receiver,
        endpoints,
    );
    let ids = ["a", "b", "c"];
    let mut relays: Vec<Option<RelayProcess>> = ids
        .iter()
        .map(|id| {
            Some(RelayProcess::start_with(
                cluster,
                &database,
                &["--lease", lease, "--relay-id", id],
            ))
        })
        .collect();
    wait_until_sql(
        &mut client,
        "four endpoints for relays a and b",
        Duration::from_secs(120),
        "SELECT count(*) FILTER (WHERE relay = 'a') = 4 AND count(*) FILTER (WHERE relay = 'b') = 4
            FROM ae_events.endpoints",
    );
    let killed: Vec<String> = client
        .query(
            "SELECT endpoint FROM ae_events.endpoints WHERE relay = 'a'",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate));
    let start = Instant::now();
    let total = i64::from(rate * seconds);
    let mut killed_at = None;
    for id in 1..=total {
        let due = start + interval * (id as u32 - 1);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        insert_instance(&mut client, id);
        if id == total / 4 {
            relays[0].take();
            killed_at = Some(Instant::now());
        }
    }
    let expected: HashMap<String, usize> = (0..endpoints)
        .map(|n| (format!("e{n}"), total as usize))
        .collect();
    // Not as many arrivals but every event: the killed relay's requests in flight arrive again
    // from its successor, so duplicates could make up the count while events are on their way.
    receiver.wait_for_every_event(&expected, Duration::from_secs(300));
    drop(relays);
    let arrivals = receiver.take();
    let killed_at = killed_at.unwrap_or(start);
    let mut gap = Duration::ZERO;
    for endpoint in &killed {
        let mut times: Vec<Instant> = arrivals
            .iter()
            .filter(|a| &a.endpoint == endpoint)
            .map(|a| a.at)
            .collect();
        times.sort();
        // The first arrival after the kill, against the kill itself.
        if let Some(first_after) = times.iter().find(|at| **at > killed_at) {
            gap = gap.max(*first_after - killed_at);
        }
    }
    let (lost, out_of_order) = check(&arrivals, &expected);
    (gap, lost, out_of_order)
}

fn main() {
    let smoke = std::env::args().any(|a| a == "--smoke");
    let (mut events, rate_seconds) = if smoke { (400, 1) } else { (20_000, 10) };
    if let Some(given) = std::env::args().skip_while(|a| a != "--events").nth(1) {
        events = given.parse().expect("--events N");
    }
    // `--only delivery`, `--only fleet`, `--only nats` (comma-separated), or all (the default).
    let only = std::env::args().skip_while(|a| a != "--only").nth(1);
    let wanted = |part: &str| {
        only.as_deref()
            .is_none_or(|only| only.split(',').any(|w| w == part))
    };
    let cluster = Cluster::start(&[]);
    let mut failures = 0;
    if wanted("delivery") {
        failures += delivery(&cluster, events, rate_seconds, if smoke { 1 } else { 3 });
    }
    if wanted("fleet") {
        failures += fleet(&cluster, events, smoke);
    }
    if wanted("nats") {
        let nats = nats_throughput(&cluster, events);
        println!();
        println!("NATS JetStream: {events} events in the backlog, one endpoint, {IN_FLIGHT} publishes in flight");
        println!();
        println!("| ae-relay events/s | plain loop, one publish at a time, events/s | ratio | plain loop, {IN_FLIGHT} in flight, events/s | ratio | relay CPU per event | database CPU per event | nats-server CPU per event | lost | out of order |");
        println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        println!(
            "| {:.0} | {:.0} | {:.2}x | {:.0} | {:.2}x | {:.0} µs | {:.0} µs | {:.0} µs | {} | {} |",
            nats.relay_per_second,
            nats.sequential_per_second,
            nats.relay_per_second / nats.sequential_per_second,
            nats.concurrent_per_second,
            nats.relay_per_second / nats.concurrent_per_second,
            nats.relay_cpu_us,
            nats.database_cpu_us,
            nats.nats_cpu_us,
            nats.lost,
            nats.out_of_order
        );
        failures += nats.lost + nats.out_of_order;
    }
    if smoke {
        println!("\n(smoke run: sizes too small for the figures to mean anything)");
    }
    assert_eq!(failures, 0, "events lost or out of order");
}

/// Several relays: 1 vs 3 relays sharing 12 endpoints, and the failover gap. Events lost or out
/// of order.
fn fleet(cluster: &Cluster, events: usize, smoke: bool) -> usize {
    let mut failures = 0;
    println!();
    println!(
        "| 12 endpoints, {} deliveries | deliveries/s | vs 1 relay | lost | out of order |",
        events * 12
    );
    println!("|---|---:|---:|---:|---:|");
    let mut one_relay = 0.0;
    for relays in [1usize, 3] {
        let (per_second, lost, out_of_order) = fleet_throughput(cluster, events, 12, relays);
        if relays == 1 {
            one_relay = per_second;
        }
        println!(
            "| {relays} relay{} | {per_second:.0} | {:.2}x | {lost} | {out_of_order} |",
            if relays == 1 { "" } else { "s" },
            per_second / one_relay
        );
        failures += lost + out_of_order;
    }
    println!();
    let (rate, seconds) = if smoke { (20, 2) } else { (100, 10) };
    println!("| 12 endpoints, {rate} events/s for {seconds} s | commit-to-receipt p50 | p99 | lost | out of order |");
    println!("|---|---:|---:|---:|---:|");
    for relays in [1usize, 3] {
        let (p50, p99, lost, out_of_order) = latency_of(cluster, 12, relays, rate, seconds);
        println!(
            "| {relays} relay{} | {p50:.1} ms | {p99:.1} ms | {lost} | {out_of_order} |",
            if relays == 1 { "" } else { "s" }
        );
        failures += lost + out_of_order;
    }
    println!();
    println!("| failover: 3 relays, 12 endpoints, kill -9 of one | lease | longest wait at its endpoints | lost | out of order |");
    println!("|---|---:|---:|---:|---:|");
    let leases: &[&str] = if smoke { &["3s"] } else { &["6s", "3s"] };
    for lease in leases {
        let (gap, lost, out_of_order) = if smoke {
            failover_gap(cluster, lease, 20, 8)
        } else {
            failover_gap(cluster, lease, 50, 20)
        };
        println!(
            "| steady load | {lease} | {:.1} s | {lost} | {out_of_order} |",
            gap.as_secs_f64()
        );
        failures += lost + out_of_order;
    }
    failures
}

/// The HTTP part: throughput with 1 and 10 endpoints, latency at a steady rate. Events lost or
/// out of order.
fn delivery(cluster: &Cluster, events: usize, rate_seconds: u32, rounds: usize) -> usize {
    println!("ae-relay benchmark: {events} events in the backlog, {IN_FLIGHT} requests in flight per endpoint, median of {rounds} rounds");
    println!();
    println!("| endpoints | ae-relay deliveries/s | plain HTTP loop deliveries/s | ratio | relay's start | relay CPU per delivery | database CPU per delivery | lost | out of order |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut failures = 0;
    for endpoints in [1usize, 10] {
        let backlog = events;
        // Rounds of the relay then the plain loop, interleaved: the medians (the plain loop
        // alone moved by a fifth between runs on this machine).
        let mut relays = Vec::new();
        let mut plain_rates = Vec::new();
        for round in 0..rounds {
            let (relay, requests) = relay_throughput(cluster, backlog, endpoints, round);
            failures += relay.lost + relay.out_of_order;
            relays.push(relay);
            plain_rates.push(plain_loop(requests, endpoints));
        }
        relays.sort_by(|a, b| a.per_second.total_cmp(&b.per_second));
        plain_rates.sort_by(|a, b| a.total_cmp(b));
        let relay = &relays[relays.len() / 2];
        let plain_rate = plain_rates[plain_rates.len() / 2];
        println!(
            "| {endpoints} ({} deliveries) | {:.0} | {plain_rate:.0} | {:.2}x | {:.0} ms | {:.0} µs | {:.0} µs | {} | {} |",
            backlog * endpoints,
            relay.per_second,
            relay.per_second / plain_rate,
            relay.start_ms,
            relay.relay_cpu_us,
            relay.database_cpu_us,
            relays.iter().map(|r| r.lost).sum::<usize>(),
            relays.iter().map(|r| r.out_of_order).sum::<usize>()
        );
    }
    let rate = 200;
    let (p50, p99, lost, out_of_order) = latency(cluster, rate, rate_seconds);
    println!();
    println!("| steady rate | commit-to-receipt p50 | p99 | lost | out of order |");
    println!("|---:|---:|---:|---:|---:|");
    println!("| {rate} events/s for {rate_seconds} s | {p50:.1} ms | {p99:.1} ms | {lost} | {out_of_order} |");
    failures + lost + out_of_order
}
