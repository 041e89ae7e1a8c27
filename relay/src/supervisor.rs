//! `ae-relay run`: connect, hold endpoints by lease, run one worker per endpoint held, and
//! start over with backoff when the database goes away. Stops on SIGINT/SIGTERM, letting
//! in-flight requests finish and giving its endpoints back.

use crate::config::RelayConfig;
use crate::database::{describe, Database, DbError};
use crate::endpoint::EndpointConfig;
use crate::http_sink;
use crate::metrics::Metrics;
use crate::scheduling::{Shared, Signals, Stopped, Worker};
use crate::sink::Sinks;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

struct RunningWorker {
    config: watch::Sender<Arc<EndpointConfig>>,
    /// Until when its endpoint's lease surely holds; renewed only while the endpoint is held,
    /// so a worker that is handing its endpoint over stops sending before the lease runs out.
    lease_valid_until: watch::Sender<Instant>,
    /// Asks it to stop: finish requests in flight (within the lease), record, end.
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<Stopped, DbError>>,
}

/// Why one connection's service ended.
enum Ended {
    Shutdown,
    Lost(String),
}

/// Run until SIGINT/SIGTERM.
pub async fn run(config: RelayConfig) -> Result<(), Box<dyn std::error::Error>> {
    crate::database::check_url(&config.database_url)?;
    let sinks = Sinks::new(http_sink::HttpClient::new(&config)?);
    let (shutdown_tx, shutdown) = watch::channel(false);
    // Registered before anything else (not when the task first runs): a SIGTERM that comes
    // while the relay starts is a stop, not the default death.
    let mut signals = StopSignals::install();
    tokio::spawn(async move {
        signals.next().await;
        tracing::info!(
            "stopping: no new requests; those in flight may finish (a second signal exits at once)"
        );
        let _ = shutdown_tx.send(true);
        signals.next().await;
        tracing::warn!("second signal: exiting at once (unrecorded requests are sent again later)");
        std::process::exit(0);
    });
    tracing::info!(relay = %config.relay_id, "ae-relay starting");
    let metrics = Metrics::new();
    if let Some(address) = config.metrics_address {
        let metrics = metrics.clone();
        // Bind now, so that a bad address stops the relay at start.
        let server = tokio::spawn(crate::metrics::serve(address, metrics));
        tokio::task::yield_now().await;
        if server.is_finished() {
            if let Ok(Err(error)) = server.await {
                return Err(format!("cannot serve metrics on {address}: {error}").into());
            }
        }
    }
    let mut delay = Duration::from_millis(250);
    loop {
        if *shutdown.borrow() {
            return Ok(());
        }
        match Database::connect(&config.database_url, &config.channel).await {
            Ok((db, woken)) => {
                delay = Duration::from_millis(250);
                match serve(
                    &config,
                    db,
                    woken,
                    sinks.clone(),
                    shutdown.clone(),
                    metrics.clone(),
                )
                .await
                {
                    Ended::Shutdown => return Ok(()),
                    Ended::Lost(why) => {
                        tracing::warn!(error = %why, "database connection lost; reconnecting")
                    }
                }
            }
            Err(error) => {
                tracing::warn!(error = %describe(&error), retry_in_ms = delay.as_millis() as u64, "cannot connect")
            }
        }
        let mut shutdown_wait = shutdown.clone();
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown_wait.changed() => return Ok(()),
        }
        delay = (delay * 2).min(config.max_reconnect_delay);
    }
}

async fn serve(
    config: &RelayConfig,
    db: Arc<Database>,
    woken: watch::Receiver<u64>,
    sinks: Sinks,
    mut shutdown: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
) -> Ended {
    let mut workers: HashMap<String, RunningWorker> = HashMap::new();
    // Workers of endpoints this relay gave up (its fair share shrank): they finish and end.
    let mut handing_over: HashMap<String, RunningWorker> = HashMap::new();
    let renew_every = config.lease / 3;
    let ended = loop {
        if db.connection.is_finished() || db.is_closed() {
            break Ended::Lost("connection closed".to_owned());
        }
        let asked_at = Instant::now();
        // A call that hangs (a partition) counts as a lost connection: reconnect.
        let leased =
            match tokio::time::timeout(renew_every, db.lease(&config.relay_id, config.lease)).await
            {
                Ok(leased) => leased,
                Err(_) => {
                    metrics.set_ready(false);
                    break Ended::Lost("the lease call did not answer in time".to_owned());
                }
            };
        match leased {
            Ok(held) => {
                // Until when the leases surely hold, by this process's clock: the lease call's
                // start plus the lease. Workers start no request that could outlive it (no two
                // relays send for one endpoint).
                let valid_until = asked_at + config.lease;
                metrics.set_ready(true);
                metrics.endpoints_held.set(held.len() as i64);
                // The backlog gauges cost a query per round (counting events after each
                // cursor): only when /metrics is served. Bounded like the lease call: a hanging
                // one means the connection is lost.
                if config.metrics_address.is_some() {
                    let status = match tokio::time::timeout(
                        renew_every,
                        db.status(&config.relay_id),
                    )
                    .await
                    {
                        Ok(status) => status,
                        Err(_) => {
                            metrics.set_ready(false);
                            break Ended::Lost("a query did not answer in time".to_owned());
                        }
                    };
                    match status {
                        Ok(status) => metrics.record_status(&status),
                        Err(error) => {
                            tracing::warn!(error = %describe(&error), "cannot read the endpoints' backlog")
                        }
                    }
                }
                let names: Vec<String> = held.iter().map(|e| e.name.clone()).collect();
                for endpoint in held {
                    if let Some(worker) = workers.get(&endpoint.name) {
                        if !worker.task.is_finished() {
                            let _ = worker.lease_valid_until.send(valid_until);
                            worker.config.send_if_modified(|current| {
                                // The cursor is the worker's own business once it runs.
                                let latest = EndpointConfig {
                                    cursor: current.cursor,
                                    ..endpoint.clone()
                                };
                                let changed = latest != **current;
                                if changed {
                                    *current = Arc::new(latest);
                                }
                                changed
                            });
                            continue;
                        }
                    }
                    if let Some(old) = workers.remove(&endpoint.name) {
                        report(&endpoint.name, old.task.await);
                    }
                    tracing::info!(endpoint = %endpoint.name, url = %endpoint.url, "serving endpoint");
                    let name = endpoint.name.clone();
                    let (config_tx, config_rx) = watch::channel(Arc::new(endpoint));
                    let (lease_tx, lease_rx) = watch::channel(valid_until);
                    let (stop_tx, stop_rx) = watch::channel(*shutdown.borrow());
                    let worker = Worker::new(
                        Shared {
                            db: db.clone(),
                            sinks: sinks.clone(),
                            relay: config.clone(),
                            metrics: metrics.clone(),
                        },
                        config_rx,
                        Signals {
                            woken: woken.clone(),
                            shutdown: stop_rx,
                            lease_valid_until: lease_rx,
                        },
                    );
                    workers.insert(
                        name,
                        RunningWorker {
                            config: config_tx,
                            lease_valid_until: lease_tx,
                            stop: stop_tx,
                            task: tokio::spawn(worker.run()),
                        },
                    );
                }
                // Endpoints no longer held (disabled, dropped, taken over): stop their workers.
                let dropped: Vec<String> = workers
                    .keys()
                    .filter(|n| !names.contains(n))
                    .cloned()
                    .collect();
                for name in dropped {
                    // Handed over to another relay (fair share), disabled or dropped: it stops
                    // starting requests; those in flight finish and are recorded while its lease
                    // lasts (no longer renewed).
                    if let Some(worker) = workers.remove(&name) {
                        let _ = worker.stop.send(true);
                        tracing::info!(endpoint = %name, "no longer serving endpoint");
                        // One handed over earlier has ended by now (within its lease, before
                        // the endpoint could come back): say how.
                        if let Some(earlier) = handing_over.insert(name.clone(), worker) {
                            report(&name, earlier.task.await);
                        }
                    }
                }
            }
            Err(error) => {
                metrics.set_ready(false);
                break Ended::Lost(describe(&error));
            }
        }
        // A worker that ended: say why; the next lease round starts a new one if still held.
        report_ended(&mut workers).await;
        report_ended(&mut handing_over).await;
        tokio::select! {
            _ = tokio::time::sleep(renew_every) => {}
            _ = shutdown.changed() => break Ended::Shutdown,
        }
    };
    match ended {
        Ended::Shutdown => {
            // Workers stop dispatching, let in-flight requests finish and write their outcomes,
            // within the deadline; past it they are stopped (their events are sent again later).
            let deadline = tokio::time::Instant::now() + config.shutdown_deadline;
            for worker in workers.values().chain(handing_over.values()) {
                let _ = worker.stop.send(true);
            }
            for (name, mut worker) in workers.drain().chain(handing_over.drain()) {
                match tokio::time::timeout_at(deadline, &mut worker.task).await {
                    Ok(result) => report(&name, result),
                    Err(_) => {
                        worker.task.abort();
                        tracing::warn!(endpoint = %name, "shutdown deadline passed; requests in flight abandoned");
                    }
                }
            }
            if let Err(error) = db.release(&config.relay_id).await {
                tracing::warn!(error = %describe(&error), "could not give the endpoints back; their leases expire");
            }
            tracing::info!("ae-relay stopped");
            Ended::Shutdown
        }
        lost => {
            metrics.set_ready(false);
            metrics.endpoints_held.set(0);
            for (_, worker) in workers.drain().chain(handing_over.drain()) {
                worker.task.abort();
            }
            lost
        }
    }
}

/// Remove the workers that ended and say why each did.
async fn report_ended(workers: &mut HashMap<String, RunningWorker>) {
    let ended: Vec<String> = workers
        .iter()
        .filter(|(_, worker)| worker.task.is_finished())
        .map(|(name, _)| name.clone())
        .collect();
    for name in ended {
        if let Some(worker) = workers.remove(&name) {
            report(&name, worker.task.await);
        }
    }
}

fn report(name: &str, result: Result<Result<Stopped, DbError>, tokio::task::JoinError>) {
    match result {
        Ok(Ok(Stopped::Gone)) => {
            tracing::warn!(endpoint = %name, "receiver answered 410 Gone: endpoint disabled")
        }
        Ok(Ok(Stopped::NotHeld)) => {
            tracing::info!(endpoint = %name, "endpoint no longer held by this relay")
        }
        Ok(Ok(Stopped::LeaseLapsed)) => tracing::warn!(
            endpoint = %name,
            "lease not renewed in time: stopped sending, requests in flight abandoned"
        ),
        Ok(Ok(Stopped::Shutdown)) => {}
        Ok(Err(error)) => {
            tracing::warn!(endpoint = %name, error = %describe(&error), "endpoint worker failed; restarting it")
        }
        Err(error) if error.is_cancelled() => {}
        Err(error) => {
            tracing::error!(endpoint = %name, %error, "endpoint worker panicked; restarting it")
        }
    }
}

/// SIGTERM and SIGINT.
struct StopSignals {
    terminate: Option<tokio::signal::unix::Signal>,
    interrupt: Option<tokio::signal::unix::Signal>,
}

impl StopSignals {
    fn install() -> StopSignals {
        use tokio::signal::unix::{signal, SignalKind};
        StopSignals {
            terminate: signal(SignalKind::terminate()).ok(),
            interrupt: signal(SignalKind::interrupt()).ok(),
        }
    }

    /// The next one (never, for one that could not be registered).
    async fn next(&mut self) {
        async fn one(signal: &mut Option<tokio::signal::unix::Signal>) {
            match signal {
                Some(signal) => {
                    signal.recv().await;
                }
                None => std::future::pending().await,
            }
        }
        tokio::select! {
            _ = one(&mut self.terminate) => {}
            _ = one(&mut self.interrupt) => {}
        }
    }
}
