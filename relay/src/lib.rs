//! ae-relay: delivers the events of `ae_events.outbox` to the webhook endpoints kept in the
//! database (shared/contract/webhooks.md), signed the Standard Webhooks way, at least once, in
//! order per instance.
//!
//! Modules by concern: `config` (what the command line sets), `config_file` (`--config`: the
//! TOML file below flags and environment), `database` (the connection, its notifications and
//! the extension's relay functions), `endpoint` (an endpoint's settings and secrets as the
//! database hands them out), `signing`, `retry` (the schedule and `Retry-After`), `protection`
//! (rate limit, circuit breaker), `fanout` (running the database's deferred fan-outs),
//! `address_guard` (`--refuse-private-addresses`), `http_sink`
//! (one attempt over HTTP), `oauth2` (endpoints' Bearer tokens), `nats_sink` (one publish to NATS JetStream), `sink` (which of the two
//! an endpoint's URL names), `scheduling` (one endpoint's delivery loop), `supervisor` (leases
//! and fair shares, workers, reconnects), `sockets` (the file descriptor limit and the socket
//! budget), `metrics` (/metrics, /healthz, /readyz), `console` (`ae-relay console`: the
//! operator console's pages, sessions and actions).

pub mod address_guard;
pub mod config;
pub mod config_file;
pub mod console;
pub mod database;
pub mod endpoint;
pub mod failpoint;
pub mod fanout;
pub mod http_sink;
pub mod logging;
pub mod metrics;
pub mod nats_sink;
pub mod oauth2;
pub mod protection;
pub mod retry;
pub mod scheduling;
pub mod signing;
pub mod sink;
pub mod sockets;
pub mod supervisor;
pub mod transport;

/// The `user-agent` of every request (webhooks.md §2).
pub const USER_AGENT: &str = concat!("ae-relay/", env!("CARGO_PKG_VERSION"));
