//! The relay's file descriptors: it raises its soft `RLIMIT_NOFILE` to the hard limit, keeps a
//! reserve for the database connections, files and listeners, and splits the rest between the
//! metrics listener (a fixed number of connections) and the endpoints' requests. Requests are
//! bounded twice: by one semaphore for all endpoints together, and per endpoint by a fair share
//! of it (the request budget, less the idle pooled connections the HTTP client may keep per
//! host, divided by the endpoints held; at least 1), so that endpoints whose receivers hang take
//! their share and no more, and a healthy endpoint still gets sockets.

use crate::metrics::Metrics;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// Descriptors kept for everything that is not a request or a metrics connection: standard
/// streams, the runtime's epoll and wakers, the listener, the CA bundle and other files read,
/// NATS connections, DNS lookups.
const RESERVED: u64 = 64;
/// Connections the metrics listener serves at once (a scraper needs one or two); more are
/// accepted and closed at once.
pub const METRICS_CONNECTIONS: usize = 16;
/// The longest a metrics connection stays open (idle or sending its headers slowly included).
pub const METRICS_CONNECTION_LIFETIME: Duration = Duration::from_secs(10);
/// Idle pooled HTTP connections kept per host (counted in the budget): as many as an
/// endpoint's default `max_in_flight`. With 4, the connections that came back together beyond
/// the fourth were closed and the next requests connected again: at full speed about one
/// request in ten paid a TCP handshake (relay/tests/delivery.rs, a_busy_endpoint_keeps_its_connections).
pub const IDLE_PER_HOST: usize = 16;
/// Refusals are logged at most this often.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// How the file descriptors are split.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    /// The soft limit after raising it.
    pub file_limit: u64,
    /// Kept for the database connections and the rest.
    pub reserved: u64,
    pub metrics_connections: usize,
    /// For the endpoints' requests and the idle connections kept for them.
    pub requests: usize,
}

impl Plan {
    /// `database_connections`: the workers' pool; the supervisor's connection and a cancel
    /// request per pooled connection count too.
    pub fn new(file_limit: u64, database_connections: usize) -> Plan {
        let reserved = RESERVED
            .saturating_add((database_connections as u64).saturating_mul(2))
            .saturating_add(2);
        let left = file_limit.saturating_sub(reserved.saturating_add(METRICS_CONNECTIONS as u64));
        Plan {
            file_limit,
            reserved,
            metrics_connections: METRICS_CONNECTIONS,
            // A limit so low that nothing is left still lets each endpoint try one request.
            requests: usize::try_from(left).unwrap_or(usize::MAX).max(1),
        }
    }
}

/// Raise the soft limit on open files to the hard limit (where the process may); the soft
/// limit in force afterwards.
pub fn raise_file_limit() -> u64 {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(error) => {
            tracing::warn!(%error, "cannot raise the limit on open files");
            rlimit::getrlimit(rlimit::Resource::NOFILE)
                .map(|(soft, _)| soft)
                .unwrap_or(1024)
        }
    }
}

/// The sockets all endpoints' requests share.
pub struct SocketBudget {
    permits: Arc<Semaphore>,
    total: usize,
    endpoints: AtomicUsize,
    metrics: Arc<Metrics>,
    last_logged: Mutex<Option<Instant>>,
}

impl SocketBudget {
    pub fn new(plan: &Plan, metrics: Arc<Metrics>) -> Arc<SocketBudget> {
        // A tokio semaphore holds at most MAX_PERMITS.
        let total = plan.requests.min(Semaphore::MAX_PERMITS);
        metrics.socket_budget.set(total as i64);
        Arc::new(SocketBudget {
            permits: Arc::new(Semaphore::new(total)),
            total,
            endpoints: AtomicUsize::new(1),
            metrics,
            last_logged: Mutex::new(None),
        })
    }

    /// The endpoints this relay holds now: their shares (of sockets, and of
    /// `--total-window-bytes`) follow.
    pub fn set_endpoints(&self, endpoints: usize) {
        self.endpoints.store(endpoints.max(1), Ordering::Relaxed);
    }

    /// The endpoints this relay holds (at least 1).
    pub fn endpoints(&self) -> usize {
        self.endpoints.load(Ordering::Relaxed).max(1)
    }

    /// Requests in flight one endpoint may have: the budget, less the idle connections each
    /// endpoint's host may keep, divided by the endpoints; at least 1.
    pub fn share(&self) -> usize {
        let endpoints = self.endpoints.load(Ordering::Relaxed).max(1);
        (self
            .total
            .saturating_sub(endpoints.saturating_mul(IDLE_PER_HOST))
            / endpoints)
            .max(1)
    }

    /// Permits left (for sizing a due batch).
    pub fn available(&self) -> usize {
        self.permits.available_permits()
    }

    /// A socket for one request, if any is left.
    pub fn try_acquire(&self) -> Option<OwnedSemaphorePermit> {
        self.permits.clone().try_acquire_owned().ok()
    }

    /// A request could have started but every socket of the budget is in use: counted, and
    /// logged at most once per interval.
    pub fn held_back(&self) {
        self.metrics.refused("request");
        if let Ok(mut last) = self.last_logged.lock() {
            let now = Instant::now();
            if last.is_none_or(|at| now.duration_since(at) >= LOG_EVERY) {
                *last = Some(now);
                tracing::warn!(
                    sockets = self.total,
                    "every socket of the request budget is in use: requests wait (receivers that do not answer hold them until their timeout)"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_and_shares() {
        let plan = Plan::new(1024, 8);
        assert_eq!(plan.reserved, 64 + 16 + 2);
        assert_eq!(plan.requests, 1024 - 82 - 16);
        let budget = SocketBudget::new(&plan, Metrics::new());
        budget.set_endpoints(41);
        // (926 - 41 x 16) / 41
        assert_eq!(budget.share(), 6);
        budget.set_endpoints(101);
        assert_eq!(budget.share(), 1);
        budget.set_endpoints(1);
        assert_eq!(budget.share(), 910);
        budget.set_endpoints(10_000);
        assert_eq!(budget.share(), 1);
        assert_eq!(Plan::new(10, 8).requests, 1);
        assert_eq!(Plan::new(u64::MAX, usize::MAX).requests, 1);
    }
}
