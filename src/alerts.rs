//! The payloads of the operational events (shared/contract/alerts.md, docs/alerts.md):
//! `ae.endpoint.failing`, `ae.endpoint.recovered`, `ae.endpoint.disabled` and
//! `ae.delivery.dead_lettered`. SQL writes them (sql/src/alerts.sql, `_write_alert`); these types
//! are their definition for the catalog (`catalog.rs` derives each key's JSON Schema from them),
//! and the tests validate what the SQL writes against those schemas, so neither can drift.

// The values are built by SQL, not here: the types are read for their schemas (and built by
// the catalog's unit tests).
#![allow(dead_code)]

use crate::payload::UtcTimestamp;
use schemars::JsonSchema;
use serde::Serialize;

/// What every operational event says about the endpoint it is about.
#[derive(Serialize, JsonSchema)]
pub struct EndpointState {
    /// The endpoint's name.
    pub endpoint: String,
    /// Its endpoint_id (new each time an endpoint is created): the event's aggregate id.
    pub endpoint_id: i64,
    /// Its URL without user info, query or fragment.
    pub url: String,
    /// When it happened (the transaction that changed the endpoint's state).
    pub at: UtcTimestamp,
    /// Why, in words.
    pub reason: String,
    /// The HTTP status of the attempt that says why (the latest failed one; for a recovery the
    /// delivered one); null when there was none (a timeout, a refused connection, NATS).
    pub last_status: Option<i32>,
    /// That attempt's error text (receivers' echoes of the endpoint's header values masked), cut
    /// to 512 bytes.
    pub last_error: Option<String>,
    /// The first failed attempt of the failing period; null when the endpoint was not failing.
    pub failing_since: Option<UtcTimestamp>,
    /// Seconds from `failing_since` to `at`.
    pub failing_seconds: Option<f64>,
    /// Attempts failed in a row now (0 once it delivered).
    pub failed_attempts: i32,
    /// Deliveries waiting for the endpoint (pending: failed ones and those parked behind them).
    pub backlog: i64,
}

/// `ae.endpoint.failing`: the endpoint has failed for its `alert_after`.
#[derive(Serialize, JsonSchema)]
pub struct EndpointFailing {
    #[serde(flatten)]
    pub state: EndpointState,
}

/// `ae.endpoint.recovered`: a failing endpoint delivered again.
#[derive(Serialize, JsonSchema)]
pub struct EndpointRecovered {
    #[serde(flatten)]
    pub state: EndpointState,
}

/// What disabled an endpoint.
#[derive(Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DisableCause {
    /// The receiver answered 410 Gone.
    Gone,
    /// Every attempt failed for the endpoint's disable_after.
    DisableAfter,
    /// A DBA or operator (disable_endpoint).
    Operator,
}

/// `ae.endpoint.disabled`: the endpoint was disabled.
#[derive(Serialize, JsonSchema)]
pub struct EndpointDisabled {
    #[serde(flatten)]
    pub state: EndpointState,
    /// What disabled it.
    pub cause: DisableCause,
}

/// `ae.delivery.dead_lettered`: an event was dead-lettered for the endpoint.
#[derive(Serialize, JsonSchema)]
pub struct DeliveryDeadLettered {
    #[serde(flatten)]
    pub state: EndpointState,
    /// The event's event_id (its webhook-id).
    #[schemars(extend("format" = "uuid"))]
    pub event_id: String,
    /// The event's subscription key.
    pub subscription_key: String,
    /// The instance the event is about (its aggregate id).
    pub instance_id: i64,
    /// The attempts made.
    pub attempts: i32,
}

pub const FAILING_EXAMPLE: &str = r#"{
    "endpoint": "proctoring",
    "endpoint_id": 7,
    "url": "https://proctor.example.com/hooks/ae",
    "at": "2026-12-05T09:41:07.120311Z",
    "reason": "3 attempts failed in a row",
    "last_status": 500,
    "last_error": "HTTP 500 Internal Server Error",
    "failing_since": "2026-12-05T09:36:01.904112Z",
    "failing_seconds": 305.216,
    "failed_attempts": 3,
    "backlog": 42
}"#;

pub const RECOVERED_EXAMPLE: &str = r#"{
    "endpoint": "proctoring",
    "endpoint_id": 7,
    "url": "https://proctor.example.com/hooks/ae",
    "at": "2026-12-05T10:02:55.000417Z",
    "reason": "delivered again",
    "last_status": 200,
    "last_error": null,
    "failing_since": "2026-12-05T09:36:01.904112Z",
    "failing_seconds": 1613.096,
    "failed_attempts": 0,
    "backlog": 41
}"#;

pub const DISABLED_EXAMPLE: &str = r#"{
    "endpoint": "proctoring",
    "endpoint_id": 7,
    "url": "https://proctor.example.com/hooks/ae",
    "at": "2026-12-05T09:50:12.331990Z",
    "reason": "the receiver answered 410 Gone",
    "last_status": 410,
    "last_error": "HTTP 410 Gone",
    "failing_since": "2026-12-05T09:50:12.310520Z",
    "failing_seconds": 0.021,
    "failed_attempts": 1,
    "backlog": 1,
    "cause": "gone"
}"#;

pub const DEAD_LETTERED_EXAMPLE: &str = r#"{
    "endpoint": "proctoring",
    "endpoint_id": 7,
    "url": "https://proctor.example.com/hooks/ae",
    "at": "2026-12-06T17:12:40.552018Z",
    "reason": "event 01938f52-7a3e-7c41-9d2a-5b8e0f6c1d24 failed 8 attempts: dead-lettered",
    "last_status": 422,
    "last_error": "HTTP 422 Unprocessable Entity",
    "failing_since": "2026-12-05T09:36:01.904112Z",
    "failing_seconds": 113798.648,
    "failed_attempts": 8,
    "backlog": 3,
    "event_id": "01938f52-7a3e-7c41-9d2a-5b8e0f6c1d24",
    "subscription_key": "ae.test_instance.updated",
    "instance_id": 789,
    "attempts": 8
}"#;
