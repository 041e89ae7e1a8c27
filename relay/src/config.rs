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
    /// Payload bytes an endpoint holds in memory at most (about: a batch ends after the event
    /// that reaches the bound, and one event is always fetched).
    pub window_bytes: usize,
    /// Payload bytes all endpoints together hold at most (about): each endpoint gets an equal
    /// share of it when that is below `window_bytes`.
    pub total_window_bytes: usize,
    /// The workers' database connections (the supervisor has one more of its own).
    pub database_connections: usize,
    /// The longest a worker's statement may run on the server.
    pub statement_timeout: Duration,
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
    /// The forward proxy of HTTP endpoints without one of their own (`--proxy`): a URL that
    /// may hold a password (never shown).
    pub proxy: Option<String>,
    /// Also connect to the NATS servers a server advertises (off; never under the guard).
    pub nats_follow_discovered_servers: bool,
}

impl std::fmt::Debug for RelayConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayConfig")
            .field("database_url", &"(hidden)")
            .field("relay_id", &self.relay_id)
            .field("lease", &self.lease)
            .field("poll_interval", &self.poll_interval)
            .field("channel", &self.channel)
            .field("fetch_batch", &self.fetch_batch)
            .field("window", &self.window)
            .field("window_bytes", &self.window_bytes)
            .field("total_window_bytes", &self.total_window_bytes)
            .field("database_connections", &self.database_connections)
            .field("statement_timeout", &self.statement_timeout)
            .field("max_reconnect_delay", &self.max_reconnect_delay)
            .field("shutdown_deadline", &self.shutdown_deadline)
            .field("metrics_address", &self.metrics_address)
            .field("ca_bundle", &self.ca_bundle)
            .field("refuse_private_addresses", &self.refuse_private_addresses)
            .field("proxy", &self.proxy.as_ref().map(|_| "(hidden)"))
            .field(
                "nats_follow_discovered_servers",
                &self.nats_follow_discovered_servers,
            )
            .field("breaker", &self.breaker)
            .finish_non_exhaustive()
    }
}

impl RelayConfig {
    pub fn new(database_url: String) -> RelayConfig {
        RelayConfig {
            database_url,
            relay_id: default_relay_id(),
            // Another relay takes a dead one's endpoints within a lease and a renewal round.
            lease: Duration::from_secs(6),
            poll_interval: Duration::from_secs(2),
            channel: "ae_events".to_owned(),
            fetch_batch: 500,
            window: 2000,
            window_bytes: 64 << 20,
            total_window_bytes: 1 << 30,
            database_connections: 4,
            statement_timeout: Duration::from_secs(30),
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
            proxy: None,
            nats_follow_discovered_servers: false,
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

/// The workers' database connections: 1 to 1000 (each is a server process).
pub fn parse_connections(text: &str) -> Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(n) if (1..=1000).contains(&n) => Ok(n),
        Ok(n) => Err(format!("{n} database connections: between 1 and 1000")),
        Err(error) => Err(format!("not a count: {error}")),
    }
}

/// A size in bytes: a number with an optional unit, `kB`/`MB`/`GB` (powers of 1000) or
/// `KiB`/`MiB`/`GiB` (powers of 1024): `64MiB`, `500kB`, `1048576`.
pub fn parse_size(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("not a size: {text:?} (e.g. 64MiB)"))?;
    let unit: u64 = match unit.trim() {
        "" | "B" => 1,
        "kB" | "KB" => 1000,
        "MB" => 1000 * 1000,
        "GB" => 1000 * 1000 * 1000,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => {
            return Err(format!(
                "unknown unit in {text:?} (B, kB, MB, GB, KiB, MiB, GiB)"
            ))
        }
    };
    let bytes = number
        .checked_mul(unit)
        .and_then(|bytes| usize::try_from(bytes).ok())
        .ok_or_else(|| format!("{text:?} is too large"))?;
    if bytes == 0 {
        return Err(format!("{text:?} must be more than zero"));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("500kB"), Ok(500_000));
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        assert_eq!(parse_size("2 GiB"), Ok(2 << 30));
        assert!(parse_size("0").is_err());
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("99999999999999999999GiB").is_err());
    }
}
