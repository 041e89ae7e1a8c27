//! An endpoint's settings as `ae_events.relay_lease` hands them to the relay holding it, and the
//! events it delivers.

use crate::signing::SigningKey;
use std::time::Duration;

#[derive(Clone, Debug, PartialEq)]
pub struct EndpointConfig {
    pub name: String,
    pub url: String,
    /// The URL parsed once (None: it cannot be parsed; every attempt fails saying so).
    pub request_url: Option<reqwest::Url>,
    /// Static headers (as the DBA gave them), ready to send.
    pub headers: reqwest::header::HeaderMap,
    pub timeout: Duration,
    pub retry_schedule: Vec<Duration>,
    pub retry_jitter: f64,
    pub max_in_flight: usize,
    /// Every active secret's key, newest first; a rotated-out one until its grace period ends.
    pub keys: Vec<SigningKey>,
    /// Where delivery stands in the database (the worker starts there).
    pub cursor: Position,
    /// Requests per second at most (None: no limit).
    pub rate_limit: Option<f64>,
    /// Which endpoint of this name (one dropped and created again gets a new id): the relay
    /// functions refuse calls for another.
    pub endpoint_id: i64,
}

/// A place in the outbox's delivery order: epoch (first id of the cluster's range), transaction
/// id, outbox id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Position {
    pub epoch: i64,
    pub txid: u64,
    pub id: i64,
}

/// One event to send (from the outbox, through relay_fetch or relay_due), or a test event of
/// `send_test_event` (through relay_tests).
#[derive(Clone, Debug)]
pub struct Event {
    pub id: i64,
    pub event_id: String,
    pub subscription_key: String,
    pub event_type: String,
    pub aggregate_id: i64,
    pub snapshot_version: i32,
    /// Exactly the stored jsonb's JSON text: the request's body (shared, not copied, by
    /// attempts).
    pub payload: bytes::Bytes,
    /// Attempts made before this one.
    pub attempts: i32,
    /// The event's time (its transaction's), for the commit-to-delivery lag metric.
    pub occurred_at: std::time::SystemTime,
    /// A test event: sent with `ae-test: true`, outside its instance's order, its outcome
    /// recorded by relay_record_tests (`id` is its test_events id).
    pub test: bool,
}
