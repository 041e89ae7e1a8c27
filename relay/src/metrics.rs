//! `/metrics` (Prometheus text format, prometheus-client), `/healthz` and `/readyz`, served on
//! `--metrics-address` when given. No label or value carries a secret or a header.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabel {
    pub endpoint: String,
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
    pub in_flight: Gauge,
}

fn attempt_histogram() -> Histogram {
    // 1 ms to about 33 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

pub struct Metrics {
    registry: Registry,
    pub deliveries: Family<OutcomeLabels, Counter>,
    pub attempt_seconds: Family<EndpointLabel, Histogram, fn() -> Histogram>,
    pub in_flight: Family<EndpointLabel, Gauge>,
    pub pending_retries: Family<EndpointLabel, Gauge>,
    pub dead_letters: Family<EndpointLabel, Gauge>,
    pub endpoints_held: Gauge,
    /// Connected, and the last lease round succeeded.
    pub ready: AtomicBool,
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let mut registry = Registry::with_prefix("ae_relay");
        let deliveries = Family::<OutcomeLabels, Counter>::default();
        let attempt_seconds =
            Family::<EndpointLabel, Histogram, fn() -> Histogram>::new_with_constructor(
                attempt_histogram,
            );
        let in_flight = Family::<EndpointLabel, Gauge>::default();
        let pending_retries = Family::<EndpointLabel, Gauge>::default();
        let dead_letters = Family::<EndpointLabel, Gauge>::default();
        let endpoints_held = Gauge::default();
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
            in_flight,
            pending_retries,
            dead_letters,
            endpoints_held,
            ready: AtomicBool::new(false),
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
            in_flight: self.in_flight.get_or_create(&label).clone(),
        }
    }

    pub fn render(&self) -> String {
        let mut text = String::new();
        match prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            Ok(()) => text,
            Err(_) => String::new(),
        }
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }
}

/// Serve /metrics, /healthz and /readyz until the process ends.
pub async fn serve(address: std::net::SocketAddr, metrics: Arc<Metrics>) -> std::io::Result<()> {
    use axum::http::{header, StatusCode};
    use axum::routing::get;
    let listener = tokio::net::TcpListener::bind(address).await?;
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
