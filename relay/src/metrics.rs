//! `/metrics` (Prometheus text format, prometheus-client), `/healthz` and `/readyz`, served on
//! `--metrics-address` when given. No label or value carries a secret or a header.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::collections::HashSet;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabel {
    pub endpoint: String,
}

/// What the relay refused or held back for want of file descriptors.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusedLabel {
    /// request (waited for a socket), metrics_connection (closed at once).
    pub what: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub endpoint: String,
    /// delivered, retry, dead, gone.
    pub outcome: String,
}

/// The series of one endpoint (handles sharing their values with the registry's).
pub struct EndpointMetrics {
    pub delivered: Counter,
    pub retry: Counter,
    pub dead: Counter,
    pub gone: Counter,
    pub attempt_seconds: Histogram,
    pub lag_seconds: Histogram,
    pub in_flight: Gauge,
    /// 0 closed, 1 open, 2 half-open (one probe).
    pub circuit_state: Gauge,
    pub circuit_opened: Counter,
}

fn attempt_histogram() -> Histogram {
    // 1 ms to about 33 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

fn lag_histogram() -> Histogram {
    // 1 ms to about 36 hours: retries stretch it far.
    Histogram::new(exponential_buckets(0.001, 3.0, 19))
}

pub struct Metrics {
    registry: Registry,
    pub deliveries: Family<OutcomeLabels, Counter>,
    pub attempt_seconds: Family<EndpointLabel, Histogram, fn() -> Histogram>,
    pub lag_seconds: Family<EndpointLabel, Histogram, fn() -> Histogram>,
    pub in_flight: Family<EndpointLabel, Gauge>,
    pub pending_retries: Family<EndpointLabel, Gauge>,
    pub dead_letters: Family<EndpointLabel, Gauge>,
    pub backlog_events: Family<EndpointLabel, Gauge>,
    pub backlog_oldest_seconds: Family<EndpointLabel, Gauge<f64, std::sync::atomic::AtomicU64>>,
    pub circuit_state: Family<EndpointLabel, Gauge>,
    pub circuit_opened: Family<EndpointLabel, Counter>,
    pub endpoints_held: Gauge,
    /// Sockets for all endpoints' requests together (sockets::Plan).
    pub socket_budget: Gauge,
    pub refused: Family<RefusedLabel, Counter>,
    /// Instances the deferred fan-out steps found or gave their updated events (`fanout.rs`).
    pub fanout_instances: Counter,
    pub fanout_errors: Counter,
    /// When a refused metrics connection was last logged.
    metrics_refusal_logged: Mutex<Option<std::time::Instant>>,
    /// Connected, and the last lease round succeeded.
    pub ready: AtomicBool,
    /// The endpoints whose backlog series were set last (removed when no longer held).
    status_reported: Mutex<HashSet<String>>,
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let mut registry = Registry::with_prefix("ae_relay");
        let deliveries = Family::<OutcomeLabels, Counter>::default();
        let attempt_seconds =
            Family::<EndpointLabel, Histogram, fn() -> Histogram>::new_with_constructor(
                attempt_histogram,
            );
        let lag_seconds =
            Family::<EndpointLabel, Histogram, fn() -> Histogram>::new_with_constructor(
                lag_histogram,
            );
        let in_flight = Family::<EndpointLabel, Gauge>::default();
        let pending_retries = Family::<EndpointLabel, Gauge>::default();
        let dead_letters = Family::<EndpointLabel, Gauge>::default();
        let backlog_events = Family::<EndpointLabel, Gauge>::default();
        let backlog_oldest_seconds =
            Family::<EndpointLabel, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        let circuit_state = Family::<EndpointLabel, Gauge>::default();
        let circuit_opened = Family::<EndpointLabel, Counter>::default();
        let endpoints_held = Gauge::default();
        let socket_budget = Gauge::default();
        let refused = Family::<RefusedLabel, Counter>::default();
        let fanout_instances = Counter::default();
        let fanout_errors = Counter::default();
        registry.register(
            "fanout_instances",
            "Instances this relay's steps of the deferred fan-outs (ae_events.run_fanouts) found or gave their updated events",
            fanout_instances.clone(),
        );
        registry.register(
            "fanout_errors",
            "Steps of the deferred fan-outs that failed (logged; tried again 5 s later)",
            fanout_errors.clone(),
        );
        registry.register(
            "socket_budget",
            "Sockets all endpoints' requests may hold together (below the limit on open files)",
            socket_budget.clone(),
        );
        registry.register(
            "refused",
            "Requests held back because every socket of the budget was in use, and metrics connections closed because all were taken",
            refused.clone(),
        );
        registry.register(
            "attempts",
            "Attempts by endpoint and outcome",
            deliveries.clone(),
        );
        registry.register(
            "attempt_duration_seconds",
            "Time from sending a request to its answer",
            attempt_seconds.clone(),
        );
        registry.register(
            "delivery_lag_seconds",
            "Time from the event (its transaction) to its delivery",
            lag_seconds.clone(),
        );
        registry.register(
            "backlog_events",
            "Events after the endpoint's cursor for its subscription keys, not finished yet (counted up to 100000)",
            backlog_events.clone(),
        );
        registry.register(
            "backlog_oldest_age_seconds",
            "Age of the oldest event the endpoint still has to deliver (backlog or retry), 0 when none",
            backlog_oldest_seconds.clone(),
        );
        registry.register(
            "circuit_state",
            "Circuit breaker per endpoint: 0 closed, 1 open (no requests), 2 half-open (one probe)",
            circuit_state.clone(),
        );
        registry.register(
            "circuit_opened",
            "Times the endpoint's circuit breaker opened",
            circuit_opened.clone(),
        );
        registry.register(
            "requests_in_flight",
            "Requests sent and not answered yet",
            in_flight.clone(),
        );
        registry.register(
            "pending_retries",
            "Events waiting for a retry (pending deliveries), per endpoint",
            pending_retries.clone(),
        );
        registry.register(
            "dead_letters",
            "Dead-lettered events, per endpoint",
            dead_letters.clone(),
        );
        registry.register(
            "endpoints_held",
            "Endpoints this relay serves",
            endpoints_held.clone(),
        );
        Arc::new(Metrics {
            registry,
            deliveries,
            attempt_seconds,
            lag_seconds,
            in_flight,
            pending_retries,
            dead_letters,
            backlog_events,
            backlog_oldest_seconds,
            circuit_state,
            circuit_opened,
            endpoints_held,
            socket_budget,
            refused,
            fanout_instances,
            fanout_errors,
            metrics_refusal_logged: Mutex::new(None),
            ready: AtomicBool::new(false),
            status_reported: Mutex::new(HashSet::new()),
        })
    }

    pub fn label(endpoint: &str) -> EndpointLabel {
        EndpointLabel {
            endpoint: endpoint.to_owned(),
        }
    }

    /// One endpoint's series, looked up once: a worker updates them per request without
    /// building labels or hashing them again.
    pub fn for_endpoint(&self, endpoint: &str) -> EndpointMetrics {
        let label = Metrics::label(endpoint);
        let outcome = |outcome: &str| {
            self.deliveries
                .get_or_create(&OutcomeLabels {
                    endpoint: endpoint.to_owned(),
                    outcome: outcome.to_owned(),
                })
                .clone()
        };
        EndpointMetrics {
            delivered: outcome("delivered"),
            retry: outcome("retry"),
            dead: outcome("dead"),
            gone: outcome("gone"),
            attempt_seconds: self.attempt_seconds.get_or_create(&label).clone(),
            lag_seconds: self.lag_seconds.get_or_create(&label).clone(),
            in_flight: self.in_flight.get_or_create(&label).clone(),
            circuit_state: self.circuit_state.get_or_create(&label).clone(),
            circuit_opened: self.circuit_opened.get_or_create(&label).clone(),
        }
    }

    pub fn render(&self) -> String {
        let mut text = String::new();
        match prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            Ok(()) => text,
            Err(_) => String::new(),
        }
    }

    /// The backlog gauges of the endpoints this relay holds, from relay_status. Endpoints it
    /// no longer holds lose their series (another relay reports them).
    pub fn record_status(&self, status: &[crate::database::EndpointStatus]) {
        let held: HashSet<String> = status.iter().map(|s| s.endpoint.clone()).collect();
        if let Ok(mut reported) = self.status_reported.lock() {
            for gone in reported.difference(&held) {
                let label = Metrics::label(gone);
                self.pending_retries.remove(&label);
                self.dead_letters.remove(&label);
                self.backlog_events.remove(&label);
                self.backlog_oldest_seconds.remove(&label);
            }
            *reported = held;
        }
        let now = std::time::SystemTime::now();
        for endpoint in status {
            let label = Metrics::label(&endpoint.endpoint);
            self.pending_retries
                .get_or_create(&label)
                .set(endpoint.pending);
            self.dead_letters.get_or_create(&label).set(endpoint.dead);
            self.backlog_events
                .get_or_create(&label)
                .set(endpoint.backlog);
            let age = endpoint
                .oldest_waiting_at
                .and_then(|at| now.duration_since(at).ok())
                .map_or(0.0, |age| age.as_secs_f64());
            self.backlog_oldest_seconds.get_or_create(&label).set(age);
        }
    }

    /// Count one refusal (`request`, `metrics_connection`).
    pub fn refused(&self, what: &str) {
        self.refused
            .get_or_create(&RefusedLabel {
                what: what.to_owned(),
            })
            .inc();
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }
}

/// The metrics listener: at most `slots` connections at once, each for at most `lifetime`;
/// one more is accepted and closed at once (counted, logged at most every 10 s), so that idle
/// or slow clients cannot use up the relay's file descriptors.
struct BoundedListener {
    listener: tokio::net::TcpListener,
    slots: Arc<tokio::sync::Semaphore>,
    connections: usize,
    lifetime: std::time::Duration,
    metrics: Arc<Metrics>,
}

impl axum::serve::Listener for BoundedListener {
    type Io = BoundedConnection;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (BoundedConnection, std::net::SocketAddr) {
        loop {
            match self.listener.accept().await {
                Ok((stream, peer)) => match self.slots.clone().try_acquire_owned() {
                    Ok(slot) => {
                        let deadline = Box::pin(tokio::time::sleep(self.lifetime));
                        return (
                            BoundedConnection {
                                stream,
                                _slot: slot,
                                deadline,
                            },
                            peer,
                        );
                    }
                    Err(_) => {
                        drop(stream);
                        self.metrics.refused("metrics_connection");
                        self.log_refusal();
                    }
                },
                // Out of descriptors, or the peer gave up: wait a little and go on.
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.listener.local_addr()
    }
}

impl BoundedListener {
    fn log_refusal(&self) {
        if let Ok(mut last) = self.metrics.metrics_refusal_logged.lock() {
            let now = std::time::Instant::now();
            if last.is_none_or(|at| now.duration_since(at) >= std::time::Duration::from_secs(10)) {
                *last = Some(now);
                tracing::warn!(
                    connections = self.slots_total(),
                    "metrics listener: every connection slot is taken; further connections are closed"
                );
            }
        }
    }

    fn slots_total(&self) -> usize {
        self.connections
    }
}

/// An accepted metrics connection: holds its slot; reads and writes fail once its lifetime is
/// over, which closes it.
struct BoundedConnection {
    stream: tokio::net::TcpStream,
    _slot: tokio::sync::OwnedSemaphorePermit,
    deadline: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl BoundedConnection {
    fn expired(&mut self, cx: &mut std::task::Context<'_>) -> bool {
        self.deadline.as_mut().poll(cx).is_ready()
    }
}

fn lifetime_over() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "metrics connection open too long",
    )
}

impl tokio::io::AsyncRead for BoundedConnection {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.expired(cx) {
            return std::task::Poll::Ready(Err(lifetime_over()));
        }
        std::pin::Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for BoundedConnection {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if self.expired(cx) {
            return std::task::Poll::Ready(Err(lifetime_over()));
        }
        std::pin::Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Serve /metrics, /healthz and /readyz until the process ends, on at most `connections`
/// connections at once.
pub async fn serve(
    address: std::net::SocketAddr,
    metrics: Arc<Metrics>,
    connections: usize,
) -> std::io::Result<()> {
    use axum::http::{header, StatusCode};
    use axum::routing::get;
    let listener = BoundedListener {
        listener: tokio::net::TcpListener::bind(address).await?,
        slots: Arc::new(tokio::sync::Semaphore::new(connections.max(1))),
        connections: connections.max(1),
        lifetime: crate::sockets::METRICS_CONNECTION_LIFETIME,
        metrics: metrics.clone(),
    };
    let app = axum::Router::new()
        .route(
            "/metrics",
            get({
                let metrics = metrics.clone();
                move || async move {
                    (
                        [(
                            header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        metrics.render(),
                    )
                }
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || async move {
                if metrics.ready.load(Ordering::Relaxed) {
                    (StatusCode::OK, "ready")
                } else {
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "not connected to the database or not serving",
                    )
                }
            }),
        );
    axum::serve(listener, app).await
}
