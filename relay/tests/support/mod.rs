//! Real parts for the relay's tests: a throwaway cluster (tests/common), an HTTP receiver on
//! 127.0.0.1 whose answers a test scripts, and the `ae-relay` binary as a child process.
#![allow(dead_code)]

#[path = "../../../tests/common/mod.rs"]
pub mod common;

pub use common::*;
use postgres::Client;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One request as the receiver got it.
#[derive(Clone, Debug)]
pub struct Received {
    pub method: String,
    pub path: String,
    pub headers: HashMap<String, String>,
    pub body: String,
    pub at: Instant,
}

impl Received {
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).map(String::as_str).unwrap_or("")
    }
    pub fn instance(&self) -> i64 {
        self.header("ae-aggregate-id").parse().unwrap_or(-1)
    }
    pub fn version(&self) -> i32 {
        self.header("ae-snapshot-version").parse().unwrap_or(-1)
    }
}

/// How the receiver answers one request.
#[derive(Clone, Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub delay: Duration,
    /// The body ("answer" when None).
    pub body: Option<String>,
}

impl Answer {
    pub fn status(status: u16) -> Answer {
        Answer {
            status,
            headers: Vec::new(),
            delay: Duration::ZERO,
            body: None,
        }
    }
    pub fn with_body(mut self, body: &str) -> Answer {
        self.body = Some(body.to_owned());
        self
    }
    pub fn with_header(mut self, name: &str, value: &str) -> Answer {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }
    pub fn after(mut self, delay: Duration) -> Answer {
        self.delay = delay;
        self
    }
}

type Behaviour = dyn Fn(&Received, usize) -> Answer + Send + Sync;

/// Requests dropped unanswered: webhook-id and when.
type CancelLog = Arc<Mutex<Vec<(String, Instant)>>>;

/// Requests in flight per (path, instance), and the requests that came while another for the
/// same path and instance was still in flight (one request per instance at a time, whichever
/// relay sends it).
#[derive(Default)]
struct Overlaps {
    in_flight: HashMap<(String, i64), usize>,
    seen: Vec<String>,
}

struct ReceiverState {
    requests: Arc<Mutex<Vec<Received>>>,
    overlaps: Arc<Mutex<Overlaps>>,
    /// Requests whose connection closed before they were answered: webhook-id and when.
    cancelled: CancelLog,
    behaviour: Arc<Behaviour>,
    /// ae.test_instance.* bodies that do not validate against the built-in schema.
    invalid: Arc<Mutex<Vec<String>>>,
}

/// An HTTP server on 127.0.0.1 (axum, on its own runtime). `behaviour` gets the request and how
/// many requests with the same webhook-id came before it, and says how to answer.
pub struct Receiver {
    pub port: u16,
    requests: Arc<Mutex<Vec<Received>>>,
    overlaps: Arc<Mutex<Overlaps>>,
    cancelled: CancelLog,
    invalid: Arc<Mutex<Vec<String>>>,
    /// Connections accepted so far.
    connections: Arc<std::sync::atomic::AtomicUsize>,
    _runtime: tokio::runtime::Runtime,
}

async fn receive(
    axum::extract::State(state): axum::extract::State<Arc<ReceiverState>>,
    method: axum::http::Method,
    uri: axum::http::Uri,
    headers: axum::http::HeaderMap,
    body: String,
) -> axum::response::Response {
    let received = Received {
        method: method.as_str().to_owned(),
        path: uri.path().to_owned(),
        headers: headers
            .iter()
            .map(|(name, value)| {
                (
                    name.as_str().to_owned(),
                    value.to_str().unwrap_or("").to_owned(),
                )
            })
            .collect(),
        body,
        at: Instant::now(),
    };
    // Every ae.test_instance.* body is validated against the built-in schema (docs/schemas/,
    // no payload rules: the relay's tests set none); `requests()` fails the test on one.
    let key = received.header("ae-subscription-key");
    if key.starts_with("ae.test_instance.") {
        let errors = builtin_schema_errors(key, &received.body);
        if !errors.is_empty() {
            state.invalid.lock().unwrap().push(format!(
                "{key} {}: {errors:#?}",
                received.header("webhook-id")
            ));
        }
    }
    let earlier = {
        let mut log = state.requests.lock().unwrap();
        let earlier = log
            .iter()
            .filter(|r| r.header("webhook-id") == received.header("webhook-id"))
            .count();
        log.push(received.clone());
        earlier
    };
    let key = (received.path.clone(), received.instance());
    {
        let mut overlaps = state.overlaps.lock().unwrap();
        let count = overlaps.in_flight.entry(key.clone()).or_insert(0);
        *count += 1;
        if *count > 1 {
            let seen = format!(
                "{} instance {} version {} while another request for it was in flight",
                key.0,
                key.1,
                received.version()
            );
            overlaps.seen.push(seen);
        }
    }
    struct Finished(Arc<Mutex<Overlaps>>, (String, i64));
    impl Drop for Finished {
        fn drop(&mut self) {
            if let Some(count) = self.0.lock().unwrap().in_flight.get_mut(&self.1) {
                *count -= 1;
            }
        }
    }
    let _finished = Finished(state.overlaps.clone(), key);
    let answer = (state.behaviour)(&received, earlier);
    // Dropped unanswered (the client closed the connection): recorded as cancelled.
    struct Unanswered(Option<(String, CancelLog)>);
    impl Drop for Unanswered {
        fn drop(&mut self) {
            if let Some((id, log)) = self.0.take() {
                log.lock().unwrap().push((id, Instant::now()));
            }
        }
    }
    let mut guard = Unanswered(Some((
        received.header("webhook-id").to_owned(),
        state.cancelled.clone(),
    )));
    tokio::time::sleep(answer.delay).await;
    guard.0 = None;
    let body = answer.body.clone().unwrap_or_else(|| "answer".to_owned());
    let mut response = axum::response::Response::new(axum::body::Body::from(body));
    *response.status_mut() = axum::http::StatusCode::from_u16(answer.status).unwrap();
    for (name, value) in &answer.headers {
        response.headers_mut().insert(
            axum::http::HeaderName::try_from(name.as_str()).unwrap(),
            axum::http::HeaderValue::try_from(value.as_str()).unwrap(),
        );
    }
    response
}

impl Receiver {
    pub fn start(
        behaviour: impl Fn(&Received, usize) -> Answer + Send + Sync + 'static,
    ) -> Receiver {
        Receiver::start_on(0, behaviour)
    }

    /// The same on a given port (0: any free one).
    pub fn start_on(
        port: u16,
        behaviour: impl Fn(&Received, usize) -> Answer + Send + Sync + 'static,
    ) -> Receiver {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(("127.0.0.1", port)))
            .expect("bind receiver");
        let port = listener.local_addr().unwrap().port();
        let requests: Arc<Mutex<Vec<Received>>> = Arc::default();
        let overlaps: Arc<Mutex<Overlaps>> = Arc::default();
        let cancelled: CancelLog = Arc::default();
        let invalid: Arc<Mutex<Vec<String>>> = Arc::default();
        let state = Arc::new(ReceiverState {
            requests: requests.clone(),
            overlaps: overlaps.clone(),
            cancelled: cancelled.clone(),
            behaviour: Arc::new(behaviour),
            invalid: invalid.clone(),
        });
        let app = axum::Router::new().fallback(receive).with_state(state);
        let connections: Arc<std::sync::atomic::AtomicUsize> = Arc::default();
        let counted = connections.clone();
        let listener = axum::serve::ListenerExt::tap_io(listener, move |_| {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        });
        runtime.spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver {
            port,
            requests,
            overlaps,
            cancelled,
            invalid,
            connections,
            _runtime: runtime,
        }
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// A receiver that answers 200 at once.
    pub fn ok() -> Receiver {
        Receiver::start(|_, _| Answer::status(200))
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// The requests so far; fails the test if a body did not validate against its schema.
    pub fn requests(&self) -> Vec<Received> {
        self.assert_valid_bodies();
        self.requests.lock().unwrap().clone()
    }

    /// Fails the test if an ae.test_instance.* body did not validate against the built-in
    /// schema.
    pub fn assert_valid_bodies(&self) {
        let invalid = self.invalid.lock().unwrap().clone();
        assert!(
            invalid.is_empty(),
            "webhook bodies that do not validate against their schema: {invalid:#?}"
        );
    }

    /// Requests that came while another one for the same path and instance was in flight.
    pub fn overlaps(&self) -> Vec<String> {
        self.overlaps.lock().unwrap().seen.clone()
    }

    /// Requests the client gave up before they were answered: webhook-id and when.
    pub fn cancelled(&self) -> Vec<(String, Instant)> {
        self.cancelled.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }

    /// Wait until `condition` holds for the requests so far.
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        condition: impl Fn(&[Received]) -> bool,
    ) -> Vec<Received> {
        let requests = within(timeout, || self.requests(), |requests| condition(requests));
        assert!(
            condition(&requests),
            "timed out waiting for {what}; {} requests so far",
            requests.len()
        );
        requests
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        // A test that never looked at the requests still fails on an invalid body.
        if !std::thread::panicking() {
            self.assert_valid_bodies();
        }
    }
}

/// The `ae-relay` binary running as a child process; killed (SIGKILL) when dropped.
pub struct Relay {
    child: Child,
    pub log_path: std::path::PathBuf,
}

impl Relay {
    /// `ae-relay run` against the database as the login role `relay_user`, with a short lease
    /// and poll interval so that tests need not wait for the defaults.
    pub fn start(cluster: &Cluster, database: &str, extra: &[&str]) -> Relay {
        ensure_relay_login(cluster);
        Relay::start_as(cluster, database, "relay_user", extra)
    }

    /// The same as another login role (a member of ae_events_relay).
    pub fn start_as(cluster: &Cluster, database: &str, user: &str, extra: &[&str]) -> Relay {
        Relay::start_as_with_env(cluster, database, user, extra, &[])
    }

    /// The same with environment variables of its own (the failpoints of debug builds).
    pub fn start_with_env(
        cluster: &Cluster,
        database: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Relay {
        ensure_relay_login(cluster);
        Relay::start_as_with_env(cluster, database, "relay_user", extra, env)
    }

    fn start_as_with_env(
        cluster: &Cluster,
        database: &str,
        user: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Relay {
        let url = format!("postgres://{user}@127.0.0.1:{}/{database}", cluster.port);
        let log_path = std::env::temp_dir().join(format!(
            "ae-relay-{database}-{}-{}.log",
            std::process::id(),
            fastrand_suffix()
        ));
        let log = std::fs::File::create(&log_path).expect("relay log");
        let mut command = Command::new(env!("CARGO_BIN_EXE_ae-relay"));
        command
            .arg("run")
            .args(if extra.contains(&"--lease") {
                &[][..]
            } else {
                &["--lease", "2s"][..]
            })
            .args(if extra.contains(&"--poll-interval") {
                &[][..]
            } else {
                &["--poll-interval", "250ms"][..]
            })
            .args(extra)
            .env("DATABASE_URL", url)
            .env("AE_RELAY_LOG", "info,ae_relay=debug")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        let child = command.spawn().expect("start ae-relay");
        Relay { child, log_path }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: no chance to finish or write anything.
    pub fn kill_9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait for it to exit; its exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "ae-relay did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn fastrand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::SeqCst)
}

/// The relay's login role (cluster-wide; tests running at once may both create it).
pub fn ensure_relay_login(cluster: &Cluster) {
    cluster
        .connect("postgres")
        .batch_execute(
            "DO $$ BEGIN
                 CREATE ROLE relay_user LOGIN;
             EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
             END $$;
             DO $$ BEGIN
                 GRANT ae_events_relay TO relay_user;
             EXCEPTION WHEN undefined_object OR unique_violation THEN NULL;
             END $$;",
        )
        .unwrap();
}

/// A login role of its own that is a member of ae_events_relay (roles are cluster-wide: it may
/// exist from an earlier test).
pub fn create_relay_role(client: &mut Client, role: &str) {
    client
        .batch_execute(&format!(
            "DO $$ BEGIN CREATE ROLE {role} LOGIN; EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$;
             GRANT ae_events_relay TO {role};"
        ))
        .unwrap();
}

/// A database with the reference schema, minimal reference data and the extension.
pub fn delivery_database(name: &str) -> (String, Client) {
    let cluster = Cluster::shared();
    let database = cluster.database(name, ForeignKeys::Without);
    let mut client = cluster.connect(&database);
    client.batch_execute(MINIMAL_REFERENCE_DATA).unwrap();
    (database, client)
}

/// Create an endpoint whose retries come fast (the schedule given), returning its secret.
pub fn create_endpoint(client: &mut Client, name: &str, url: &str, schedule: &str) -> String {
    let secret: String = client
        .query_one("SELECT ae_events.create_endpoint($1, $2)", &[&name, &url])
        .unwrap()
        .get(0);
    client
        .execute(
            "SELECT ae_events.alter_endpoint($1, retry_schedule => $2::text::interval[], retry_jitter => 0)",
            &[&name, &schedule],
        )
        .unwrap();
    secret
}

/// Set the status of an instance, making an updated event.
pub fn set_status(client: &mut Client, instance: i64, status: &str) {
    client
        .execute(
            "UPDATE ti.instance SET instance_status = $2::text::ti.instance_status WHERE id = $1",
            &[&instance, &status],
        )
        .unwrap();
}

/// Change an instance's external id, making an updated event.
pub fn set_external_id(client: &mut Client, instance: i64, external_id: &str) {
    client
        .execute(
            "UPDATE ti.instance SET external_id = $2 WHERE id = $1",
            &[&instance, &external_id],
        )
        .unwrap();
}

/// One delivery row: status, attempts, last HTTP status, last error.
pub fn delivery(
    client: &mut Client,
    endpoint: &str,
    event_id: &str,
) -> Option<(String, i32, Option<i32>, Option<String>)> {
    client
        .query_opt(
            "SELECT status, attempts, last_status, last_error FROM ae_events.delivery_status
              WHERE endpoint = $1 AND event_id = $2::text::uuid",
            &[&endpoint, &event_id],
        )
        .unwrap()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
}

/// The events of the outbox: (event_id, instance, version, payload text), in id order. Each
/// ae.test_instance.* payload is validated against the built-in schema (the relay's tests set
/// no payload rules).
pub fn outbox_events(client: &mut Client) -> Vec<(String, i64, i32, String)> {
    client
        .query(
            "SELECT event_id::text, aggregate_id, snapshot_version, payload::text, subscription_key
               FROM ae_events.outbox ORDER BY id",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| {
            let (key, payload): (String, String) = (r.get(4), r.get(3));
            let errors = builtin_schema_errors(&key, &payload);
            assert!(
                errors.is_empty(),
                "a {key} payload does not validate against its schema: {errors:#?}\n{payload}"
            );
            (r.get(0), r.get(1), r.get(2), payload)
        })
        .collect()
}

/// Per instance, the versions in the order the receiver first saw them must be increasing (and
/// duplicates only repeat what came before).
pub fn assert_in_order_per_instance(requests: &[Received]) {
    let mut highest: HashMap<i64, i32> = HashMap::new();
    for request in requests {
        let version = request.version();
        let seen = highest.entry(request.instance()).or_insert(0);
        assert!(
            version <= *seen || version == *seen + 1 || *seen == 0,
            "instance {} version {version} arrived after version {seen}",
            request.instance()
        );
        *seen = (*seen).max(version);
    }
}

/// Verify a request's signature with the `svix` crate's Standard Webhooks verifier (an
/// implementation this project did not write).
pub fn svix_verifies(secret: &str, request: &Received) -> bool {
    let mut headers = http::HeaderMap::new();
    for name in ["webhook-id", "webhook-timestamp", "webhook-signature"] {
        headers.insert(
            name,
            http::HeaderValue::from_str(request.header(name)).unwrap(),
        );
    }
    svix::webhooks::Webhook::new(secret)
        .unwrap()
        .verify(request.body.as_bytes(), &headers)
        .is_ok()
}

/// GET a path over plain HTTP/1.0: (status, body).
pub fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Some((status, body))
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The value of one sample, by name and labels.
pub fn sample(
    scrape: &prometheus_parse::Scrape,
    name: &str,
    labels: &[(&str, &str)],
) -> Option<f64> {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .and_then(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => Some(v),
            _ => None,
        })
}
