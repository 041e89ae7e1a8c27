//! What the command line sets for `ae-relay run`.

use crate::protection::BreakerSettings;
use std::path::PathBuf;
use std::time::Duration;

/// Debug shows no database URL (it holds the password): see the impl below.
#[derive(Clone)]
pub struct RelayConfig {
    pub database_url: String,
    /// This relay's id in the endpoints' leases; unique per process.
    pub relay_id: String,
    /// How long an endpoint stays this relay's without a renewal; another relay takes it over
    /// after that when this one died (renewed every third of it).
    pub lease: Duration,
    /// How often each endpoint looks for new events without a notification (notifications are
    /// lost while the relay is disconnected, and a relay may not be allowed to LISTEN).
    pub poll_interval: Duration,
    /// The channel the extension notifies on (the `ae_events.channel` setting).
    pub channel: String,
    /// Events fetched per query.
    pub fetch_batch: usize,
    /// Events an endpoint holds in memory at most, fetched but not finished: the bound on the
    /// relay's memory per endpoint.
    pub window: usize,
    /// The longest wait before reconnecting to a database that went away.
    pub max_reconnect_delay: Duration,
    /// On SIGTERM/SIGINT, how long requests in flight may take to finish (and be recorded)
    /// before the relay exits anyway.
    pub shutdown_deadline: Duration,
    /// Where to serve /metrics, /healthz and /readyz (off when None).
    pub metrics_address: Option<std::net::SocketAddr>,
    /// When an endpoint's circuit opens and how long it stays open.
    pub breaker: BreakerSettings,
    /// PEM certificates trusted for HTTPS endpoints besides the system's roots.
    pub ca_bundle: Option<PathBuf>,
    /// Connect to public addresses only (address_guard), over HTTP and NATS.
    pub refuse_private_addresses: bool,
}

impl std::fmt::Debug for RelayConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayConfig")
            .field("database_url", &"(hidden)")
            .field("relay_id", &self.relay_id)
    /// Also connect to the NATS servers a server advertises (off; never under the guard).
    pub nats_follow_discovered_servers: bool,
            .field("lease", &self.lease)
            .field("poll_interval", &self.poll_interval)
            .field("channel", &self.channel)
            .field("fetch_batch", &self.fetch_batch)
            .field("window", &self.window)
            .field("max_reconnect_delay", &self.max_reconnect_delay)
            .field("shutdown_deadline", &self.shutdown_deadline)
            .field("metrics_address", &self.metrics_address)
            .field("ca_bundle", &self.ca_bundle)
            .field("refuse_private_addresses", &self.refuse_private_addresses)
            .field("breaker", &self.breaker)
            .finish_non_exhaustive()
    }
}

impl RelayConfig {
    pub fn new(database_url: String) -> RelayConfig {
        RelayConfig {
            database_url,
            relay_id: default_relay_id(),
            .field(
                "nats_follow_discovered_servers",
                &self.nats_follow_discovered_servers,
            )
            // Another relay takes a dead one's endpoints within a lease and a renewal round.
            lease: Duration::from_secs(6),
            poll_interval: Duration::from_secs(2),
            channel: "ae_events".to_owned(),
            fetch_batch: 500,
            window: 2000,
            max_reconnect_delay: Duration::from_secs(30),
            shutdown_deadline: Duration::from_secs(30),
            metrics_address: None,
            breaker: BreakerSettings {
                failures: 10,
                cooldown: Duration::from_secs(5),
                max_cooldown: Duration::from_secs(300),
            },
            ca_bundle: None,
            refuse_private_addresses: false,
        }
    }
}

/// Host name, process id and a random suffix: unique even when a restarted relay gets the pid
/// of a dead one.
pub fn default_relay_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "relay".to_owned());
    format!("{host}:{}:{:08x}", std::process::id(), fastrand::u32(..))
}
            nats_follow_discovered_servers: false,
