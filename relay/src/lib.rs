//! ae-relay: delivers the events of `ae_events.outbox` to the webhook endpoints kept in the
//! database (shared/contract/webhooks.md), signed the Standard Webhooks way, at least once, in
//! order per instance.
//!
//! Modules by concern: `config` (what the command line sets), `config_file` (`--config`: the
//! TOML file below flags and environment), `address_guard` (`--refuse-private-addresses`), `database` (the connection, its
//! notifications and the extension's relay functions), `endpoint` (an endpoint's settings and
//! secrets as the database hands them out), `signing`, `retry` (the schedule and `Retry-After`),
//! `http_sink` (one attempt over HTTP), `scheduling` (one endpoint's delivery loop), and
//! `supervisor` (leases, workers, reconnects), `metrics` (/metrics, /healthz, /readyz).

pub mod address_guard;
pub mod config;
pub mod config_file;
pub mod database;
pub mod endpoint;
pub mod http_sink;
pub mod metrics;
pub mod protection;
pub mod retry;
pub mod scheduling;
pub mod signing;
pub mod supervisor;

/// The `user-agent` of every request (webhooks.md §2).
pub const USER_AGENT: &str = concat!("ae-relay/", env!("CARGO_PKG_VERSION"));
