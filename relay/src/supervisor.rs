//! `ae-relay run`: connect, hold endpoints by lease, run one worker per endpoint held, and
//! start over with backoff when the database goes away. Stops on SIGINT/SIGTERM, letting
//! in-flight requests finish and giving its endpoints back.

use crate::config::RelayConfig;
use crate::database::{describe, Database, DbError, Pool};
use crate::endpoint::EndpointConfig;
use crate::failpoint::At;
use crate::metrics::Metrics;
use crate::scheduling::{Shared, Signals, Stopped, Worker};
use crate::sink::Sinks;
use crate::sockets::{self, SocketBudget};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

struct RunningWorker {
    /// Which endpoint of its name it serves.
    endpoint_id: i64,
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
    // Before any socket is opened: what the relay may open, and how it is split.
    let plan = sockets::Plan::new(sockets::raise_file_limit(), config.database_connections);
    tracing::info!(
        open_files = plan.file_limit,
        reserved = plan.reserved,
        metrics_connections = plan.metrics_connections,
        request_sockets = plan.requests,
        "file descriptors"
    );
    let pool = Pool::new(
        &config.database_url,
        config.database_connections,
        config.statement_timeout,
    )?;
    let sinks = Sinks::new(&config)?;
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
    let sockets = SocketBudget::new(&plan, metrics.clone());
    if let Some(address) = config.metrics_address {
        let metrics = metrics.clone();
        // Bind now, so that a bad address stops the relay at start.
        let server = tokio::spawn(crate::metrics::serve(
            address,
            metrics,
            plan.metrics_connections,
        ));
        tokio::task::yield_now().await;
        if server.is_finished() {
            if let Ok(Err(error)) = server.await {
                return Err(format!("cannot serve metrics on {address}: {error}").into());
            }
        }
    }
    // Deferred fan-outs run beside delivery, on a connection of the pool.
    tokio::spawn(crate::fanout::run(
        pool.clone(),
        metrics.clone(),
        shutdown.clone(),
    ));
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
                    Shared {
                        db: pool.clone(),
                        sockets: sockets.clone(),
                        sinks: sinks.clone(),
                        relay: config.clone(),
                        metrics: metrics.clone(),
                    },
                    shutdown.clone(),
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
    shared: Shared,
    mut shutdown: watch::Receiver<bool>,
) -> Ended {
    let metrics: Arc<Metrics> = shared.metrics.clone();
    let mut workers: HashMap<String, RunningWorker> = HashMap::new();
    // Workers of endpoints this relay gave up (its fair share shrank, or the endpoint was
    // dropped and created again under its name): they finish and end. By name and id.
    let mut handing_over: HashMap<(String, i64), RunningWorker> = HashMap::new();
    // Endpoints whose worker panicked: not restarted before the time, which doubles with each
    // panic in a row, so that one that panics every time does not spin.
    let mut restart_after: HashMap<String, (Instant, Duration)> = HashMap::new();
    let renew_every = config.lease / 3;
    // A lease call the supervisor gives up on (it reconnects) does not go on on the server.
    if let Err(error) = db.set_statement_timeout(renew_every).await {
        return Ended::Lost(describe(&error));
    }
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
                shared.sockets.set_endpoints(held.len());
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
                    // The name now names another endpoint (dropped and created again): the old
                    // one's worker stops (its requests in flight finish; the database refuses
                    // its outcomes) and a new one starts from the new endpoint's cursor.
                    if workers
                        .get(&endpoint.name)
                        .is_some_and(|worker| worker.endpoint_id != endpoint.endpoint_id)
                    {
                        if let Some(old) = workers.remove(&endpoint.name) {
                            let _ = old.stop.send(true);
                            tracing::info!(endpoint = %endpoint.name, "endpoint created again: its old worker stops");
                            handing_over.insert((endpoint.name.clone(), old.endpoint_id), old);
                        }
                    }
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
                        if report(&endpoint.name, old.task.await) {
                            pause_after_panic(&mut restart_after, &endpoint.name);
                        }
                    }
                    if restart_after
                        .get(&endpoint.name)
                        .is_some_and(|(after, _)| Instant::now() < *after)
                    {
                        continue;
                    }
                    tracing::info!(endpoint = %endpoint.name, url = %endpoint.url, "serving endpoint");
                    let name = endpoint.name.clone();
                    let endpoint_id = endpoint.endpoint_id;
                    let (config_tx, config_rx) = watch::channel(Arc::new(endpoint));
                    let (lease_tx, lease_rx) = watch::channel(valid_until);
                    let (stop_tx, stop_rx) = watch::channel(*shutdown.borrow());
                    let shared = shared.clone();
                    let signals = Signals {
                        woken: woken.clone(),
                        shutdown: stop_rx,
                        lease_valid_until: lease_rx,
                    };
                    // Built inside its task: a panic there (an endpoint setting the worker
                    // cannot take) ends that task only, not the relay (reported as a JoinError).
                    let task = tokio::spawn(async move {
                        let name = config_rx.borrow().name.clone();
                        crate::failpoint::check(At::WorkerStart, &name);
                        Worker::new(shared, config_rx, signals).run().await
                    });
                    workers.insert(
                        name,
                        RunningWorker {
                            endpoint_id,
                            config: config_tx,
                            lease_valid_until: lease_tx,
                            stop: stop_tx,
                            task,
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
                        let key = (name.clone(), worker.endpoint_id);
                        if let Some(earlier) = handing_over.insert(key, worker) {
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
        for name in report_ended(&mut workers).await {
            pause_after_panic(&mut restart_after, &name);
        }
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
            let all = workers.drain().chain(
                handing_over
                    .drain()
                    .map(|((name, _), worker)| (name, worker)),
            );
            for (name, mut worker) in all {
                match tokio::time::timeout_at(deadline, &mut worker.task).await {
                    Ok(result) => {
                        report(&name, result);
                    }
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
            for worker in workers.into_values().chain(handing_over.into_values()) {
                worker.task.abort();
            }
            lost
        }
    }
}

/// The pause before restarting a worker that panicked, doubled for each panic in a row.
const PANIC_BACKOFF_FIRST: Duration = Duration::from_secs(1);
const PANIC_BACKOFF_MAX: Duration = Duration::from_secs(60);

/// A worker of the endpoint panicked: no new one before a pause, twice the last one.
fn pause_after_panic(restart_after: &mut HashMap<String, (Instant, Duration)>, name: &str) {
    let delay = restart_after
        .get(name)
        .map_or(PANIC_BACKOFF_FIRST, |(_, last)| {
            (*last * 2).min(PANIC_BACKOFF_MAX)
        });
    tracing::warn!(endpoint = %name, retry_in_ms = delay.as_millis() as u64, "endpoint worker restarts after a pause");
    restart_after.insert(name.to_owned(), (Instant::now() + delay, delay));
}

/// Remove the workers that ended and say why each did; the names of those that panicked.
async fn report_ended<K: Clone + Eq + std::hash::Hash + EndpointKey>(
    workers: &mut HashMap<K, RunningWorker>,
) -> Vec<String> {
    let mut panicked = Vec::new();
    let ended: Vec<K> = workers
        .iter()
        .filter(|(_, worker)| worker.task.is_finished())
        .map(|(key, _)| key.clone())
        .collect();
    for key in ended {
        if let Some(worker) = workers.remove(&key) {
            if report(key.name(), worker.task.await) {
                panicked.push(key.name().to_owned());
            }
        }
    }
    panicked
}

/// The endpoint name of a worker's key (workers by name, those handed over by name and id).
trait EndpointKey {
    fn name(&self) -> &str;
}

impl EndpointKey for String {
    fn name(&self) -> &str {
        self
    }
}

impl EndpointKey for (String, i64) {
    fn name(&self) -> &str {
        &self.0
    }
}

/// Log how a worker ended; true when it panicked.
fn report(name: &str, result: Result<Result<Stopped, DbError>, tokio::task::JoinError>) -> bool {
    if matches!(&result, Err(error) if error.is_panic()) {
        tracing::error!(endpoint = %name, "endpoint worker panicked; restarting it");
        return true;
    }
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
        Err(_) => {}
    }
    false
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
