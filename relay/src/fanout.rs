//! Deferred fan-outs (docs/updated-events.md#large-fan-outs): a change that reaches more
//! instances than `ae_events.fanout_inline_limit` leaves their updated events to
//! `ae_events.run_fanouts()`. Every relay runs it, one step (one transaction) per call, without
//! pause while there is work and once a second otherwise; several relays share the work (a call
//! takes a fan-out no other session is running).

use crate::database::{describe, Pool};
use crate::metrics::Metrics;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// How often an idle relay looks for a new fan-out.
const IDLE: Duration = Duration::from_secs(1);
/// After a failed call (the database away, a statement timeout).
const AFTER_ERROR: Duration = Duration::from_secs(5);

/// Run fan-outs until shutdown.
pub async fn run(pool: Pool, metrics: Arc<Metrics>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let pause = match pool.run_fanouts().await {
            Ok(0) => IDLE,
            Ok(handled) => {
                metrics
                    .fanout_instances
                    .inc_by(u64::try_from(handled).unwrap_or(0));
                tracing::debug!(instances = handled, "fan-out step");
                Duration::ZERO
            }
            Err(error) => {
                metrics.fanout_errors.inc();
                tracing::warn!(error = %describe(&error), "cannot run the deferred fan-outs");
                AFTER_ERROR
            }
        };
        if *shutdown.borrow() {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = shutdown.changed() => return,
        }
    }
}
