//! One endpoint's delivery loop (webhooks.md §4).
//!
//! - Fresh events come from `relay_fetch` in delivery order. Each gets a slot in a bounded
//!   window; the cursor written to the database only moves over a prefix of finished slots
//!   (delivered, dead-lettered, skipped, or parked in a pending row), in the same transaction as
//!   their outcomes. A relay killed at any instant loses nothing: the next fetches again from the
//!   cursor and skips the events that have a row.
//! - One request per instance at a time, in id (= version) order; up to `max_in_flight` across
//!   instances. A failed event is parked with its next attempt time, and the rest of its
//!   instance's events are parked behind it (pending rows wait for the earliest one of their
//!   instance: `relay_due`), so only that instance waits.
//! - Pending rows (retries, parked events, redeliveries, replays) come from `relay_due`.
//! - Test events of `send_test_event` come from `relay_tests` (asked at most once per poll
//!   interval), outside any instance's order, and their outcomes go to `relay_record_tests`.

use crate::config::RelayConfig;
use crate::database::{DbError, FetchedRow, Outcome, Pool};
use crate::endpoint::{EndpointConfig, Event, Position};
use crate::metrics::{EndpointMetrics, Metrics};
use crate::protection::{Gate, Transition};
use crate::retry;
use crate::sink::{Attempt, Sinks};
use crate::sockets::SocketBudget;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// Outcomes are written when this many are waiting, or when the oldest is this old.
const FLUSH_COUNT: usize = 512;
const FLUSH_AGE: Duration = Duration::from_millis(20);
/// After each notification, one more fetch this much later: with `ae_events.notify =
/// reference` a backend sends no wake-up for commits within `ae_events.notify_interval` (5 ms)
/// of its last one, so such a commit is fetched by this follow-up (docs/relays.md).
const FOLLOW_UP: Duration = Duration::from_millis(25);

/// Why a worker stopped.
#[derive(Debug)]
pub enum Stopped {
    /// The receiver answered 410 Gone: the endpoint is disabled.
    Gone,
    /// Another relay holds it now, or it was disabled or dropped.
    NotHeld,
    /// The lease was not renewed in time (the database is unreachable or slow): requests in
    /// flight were abandoned before another relay could take the endpoint.
    LeaseLapsed,
    /// The relay is shutting down.
    Shutdown,
}

/// Where an attempted event came from.
#[derive(Clone, Copy, Debug)]
enum Source {
    /// From relay_fetch: its window slot.
    Fresh(u64),
    /// A pending row from relay_due.
    Pending,
    /// A test event from relay_tests.
    Test,
}

struct Slot {
    position: Position,
    finished: bool,
}

/// A write of outcomes and the cursor on its way to the database, while the worker goes on
/// sending (one at a time, so that writes land in order).
struct Writing {
    task: tokio::task::JoinHandle<Result<bool, DbError>>,
    /// The window slots it finishes: drained once it is written.
    finished: usize,
    /// Instances with outcomes in it, and those parked in it: until it is written, relay_due
    /// and relay_fetch cannot know of them.
    unwritten: HashSet<i64>,
    parked: HashSet<i64>,
    /// It settles a pending row: the instance's next one may be due once it is written.
    pending_settled: bool,
    /// The test events whose outcomes it writes.
    tests: Vec<i64>,
}

/// A relay_fetch on its way, while the worker goes on sending (one at a time, from where the
/// previous one ended).
struct Fetching {
    /// None: the call ran into the fence it started under (and was cancelled on the server).
    task: tokio::task::JoinHandle<Result<Option<Vec<FetchedRow>>, DbError>>,
    asked: usize,
    room_bytes: usize,
    /// Woken (a notification or the poll) since it was sent: its answer may predate the news.
    woken_since: bool,
    /// Instances of writes that landed since it was sent: their parked events may be after its
    /// snapshot, so they count as parked for its rows.
    parked_since: HashSet<i64>,
}

/// What a task in flight (the fetch or the write) comes back with, or `lost` if it panicked or
/// was aborted; never, if there is none (a `select!` branch guarded by its presence).
async fn finished<T>(task: Option<&mut tokio::task::JoinHandle<T>>, lost: impl FnOnce() -> T) -> T {
    match task {
        Some(task) => task.await.unwrap_or_else(|_| lost()),
        None => std::future::pending().await,
    }
}

/// The fetch in flight's rows (None: it ran into its fence); a lost task brings no rows, and the
/// next fetch asks again from the same place.
async fn fetched(fetching: &mut Option<Fetching>) -> Result<Option<Vec<FetchedRow>>, DbError> {
    finished(fetching.as_mut().map(|f| &mut f.task), || {
        Ok(Some(Vec::new()))
    })
    .await
}

/// What a write in flight comes back with: whether the endpoint was still held (a panicked or
/// aborted task counts as not held: the worker stops and the supervisor starts a new one from
/// the database's state).
async fn written(writing: &mut Option<Writing>) -> Result<bool, DbError> {
    finished(writing.as_mut().map(|w| &mut w.task), || Ok(false)).await
}

pub struct Worker {
    db: Pool,
    /// The relay's sockets for requests: this worker's share, and permits for its requests.
    sockets: Arc<SocketBudget>,
    /// One permit per request in flight (released as requests settle).
    permits: Vec<tokio::sync::OwnedSemaphorePermit>,
    /// Payload bytes of the events this worker holds (queued, in flight): at most about
    /// `--window-bytes`.
    held_bytes: usize,
    sinks: Sinks,
    relay: RelayConfig,
    config: watch::Receiver<Arc<EndpointConfig>>,
    woken: watch::Receiver<u64>,
    shutdown: watch::Receiver<bool>,
    /// Until when this relay surely holds its endpoints (renewed by the supervisor).
    lease_valid_until: watch::Receiver<Instant>,
    metrics: EndpointMetrics,
    /// The rate limit and circuit breaker every request start asks.
    gate: Gate,
    /// Fetched through here (in memory; ahead of the database's cursor).
    fetched_through: Position,
    /// The slots of fetched events, oldest first; `first_slot` is the sequence number of the
    /// front one.
    window: VecDeque<Slot>,
    first_slot: u64,
    /// Fresh events waiting per instance (the head may be in flight), in id order.
    queues: HashMap<i64, VecDeque<(u64, Event)>>,
    /// Instances whose head may be sent now.
    ready: VecDeque<i64>,
    /// Instances with a request in flight.
    busy: HashSet<i64>,
    /// Instances parked since the last write (relay_fetch cannot know of them yet).
    parked_unwritten: HashSet<i64>,
    /// Instances with outcomes not written yet: relay_due would hand out their rows as they
    /// were before the attempt, so they wait for the write.
    unwritten: HashSet<i64>,
    /// A pending row was settled since the last write.
    pending_settled: bool,
    in_flight: JoinSet<(Source, Event, SystemTime, Duration, Attempt)>,
    /// The write in flight, if any.
    writing: Option<Writing>,
    /// The fetch in flight, if any: fetching does not hold up requests and their outcomes.
    fetching: Option<Fetching>,
    outcomes: Vec<Outcome>,
    /// Test events' outcomes (relay_record_tests), and the test events in flight or not yet
    /// written: relay_tests still hands them out as pending until they are.
    test_outcomes: Vec<Outcome>,
    tests_busy: HashSet<i64>,
    oldest_outcome: Option<Instant>,
    caught_up: bool,
    next_poll: Instant,
    next_due_check: Instant,
    next_test_check: Instant,
    gone: Option<String>,
    /// The notification or shutdown sender is gone: stop waiting on them.
    signals_closed: bool,
}

/// What every worker of a relay shares.
#[derive(Clone)]
pub struct Shared {
    pub db: Pool,
    pub sockets: Arc<SocketBudget>,
    pub sinks: Sinks,
    pub relay: RelayConfig,
    pub metrics: Arc<Metrics>,
}

/// What wakes or stops a worker: notifications, shutdown, lease renewals.
#[derive(Clone)]
pub struct Signals {
    pub woken: watch::Receiver<u64>,
    pub shutdown: watch::Receiver<bool>,
    pub lease_valid_until: watch::Receiver<Instant>,
}

impl Worker {
    pub fn new(
        shared: Shared,
        config: watch::Receiver<Arc<EndpointConfig>>,
        signals: Signals,
    ) -> Worker {
        let Shared {
            db,
            sockets,
            sinks,
            relay,
            metrics,
        } = shared;
        let Signals {
            woken,
            shutdown,
            lease_valid_until,
        } = signals;
        let cursor = config.borrow().cursor;
        let metrics = metrics.for_endpoint(&config.borrow().name);
        let gate = Gate::new(relay.breaker, config.borrow().rate_limit);
        metrics.circuit_state.set(gate.state().gauge());
        let now = Instant::now();
        Worker {
            db,
            sockets,
            permits: Vec::new(),
            held_bytes: 0,
            sinks,
            relay,
            config,
            woken,
            shutdown,
            lease_valid_until,
            metrics,
            gate,
            fetched_through: cursor,
            window: VecDeque::new(),
            first_slot: 0,
            queues: HashMap::new(),
            ready: VecDeque::new(),
            busy: HashSet::new(),
            parked_unwritten: HashSet::new(),
            unwritten: HashSet::new(),
            pending_settled: false,
            in_flight: JoinSet::new(),
            writing: None,
            fetching: None,
            outcomes: Vec::new(),
            test_outcomes: Vec::new(),
            tests_busy: HashSet::new(),
            oldest_outcome: None,
            caught_up: false,
            next_poll: now,
            next_due_check: now,
            next_test_check: now,
            gone: None,
            signals_closed: false,
        }
    }

    fn name(&self) -> String {
        self.config.borrow().name.clone()
    }

    /// The endpoint's name and id, as the relay functions take them.
    fn identity(&self) -> (String, i64) {
        let config = self.config.borrow();
        (config.name.clone(), config.endpoint_id)
    }

    /// Payload bytes this endpoint may hold: `--window-bytes`, within its share of
    /// `--total-window-bytes` (the relay's, divided by the endpoints it holds).
    fn window_bytes(&self) -> usize {
        let share = self.relay.total_window_bytes / self.sockets.endpoints();
        self.relay.window_bytes.min(share).max(1)
    }

    /// Requests in flight at most: the endpoint's max_in_flight, within its share of the
    /// relay's sockets.
    fn limit(&self) -> usize {
        self.config
            .borrow()
            .max_in_flight
            .min(self.sockets.share())
            .max(1)
    }

    /// Deliver until the endpoint is gone, no longer held, or the relay shuts down.
    pub async fn run(mut self) -> Result<Stopped, DbError> {
        loop {
            let stopping = self.gone.is_some() || *self.shutdown.borrow();
            if stopping {
                // Its rows would not be sent: the next worker fetches them again.
                self.abandon_fetch();
            }
            if self.writing.as_ref().is_some_and(|w| w.task.is_finished()) {
                let held = written(&mut self.writing).await?;
                if !self.wrote(held) {
                    return Ok(Stopped::NotHeld);
                }
            }
            if stopping {
                if self.in_flight.is_empty() {
                    let fence = self.fence();
                    match tokio::time::timeout_at(fence, self.flush()).await {
                        Ok(written) => written?,
                        Err(_) => return Ok(self.lapse()),
                    };
                    return Ok(if self.gone.is_some() {
                        Stopped::Gone
                    } else {
                        Stopped::Shutdown
                    });
                }
            } else {
                // A database call that hangs (a partition) must not keep requests in flight
                // past the fence: each is bounded by it.
                let fence = self.fence();
                self.start_fetching();
                self.dispatch_ready();
                match tokio::time::timeout_at(fence, self.dispatch_due()).await {
                    Ok(started) => started?,
                    Err(_) => return Ok(self.lapse()),
                }
                match tokio::time::timeout_at(fence, self.dispatch_tests()).await {
                    Ok(started) => started?,
                    Err(_) => return Ok(self.lapse()),
                }
            }
            // While stopping, outcomes wait for the last one: a 410 disables the endpoint with
            // that write, and nothing could be written after it.
            let flush_due = !stopping
                && self.writing.is_none()
                && self
                    .oldest_outcome
                    .map(|t| t.elapsed() >= FLUSH_AGE || self.outcomes.len() >= FLUSH_COUNT)
                    .unwrap_or(false);
            if flush_due {
                // Written by a task of its own: the worker goes on sending meanwhile.
                self.start_writing();
            }
            // Wake for what can happen then: a poll, a due check when a request could start,
            // a flush (not while stopping). A deadline already past would spin the loop.
            let mut deadline = self.next_poll;
            if !stopping && self.in_flight.len() < self.limit() {
                deadline = deadline.min(self.next_due_check).min(self.next_test_check);
            }
            if let (false, true, Some(oldest)) =
                (stopping, self.writing.is_none(), self.oldest_outcome)
            {
                deadline = deadline.min(oldest + FLUSH_AGE);
            }
            // Requests held back by the rate limit or an open circuit: wake when one may go.
            if !stopping && !self.ready.is_empty() && self.in_flight.len() < self.limit() {
                if let Some(chance) = self.gate.next_chance(Instant::now()) {
                    deadline = deadline.min(chance);
                }
            }
            let fence = self.fence();
            tokio::select! {
                Some(joined) = self.in_flight.join_next(), if !self.in_flight.is_empty() => {
                    if let Ok((source, event, at, took, attempt)) = joined {
                        self.held_bytes = self.held_bytes.saturating_sub(event.payload.len());
                        self.settle(source, event, at, took, attempt);
                    }
                    while let Some(Ok((source, event, at, took, attempt))) = self.in_flight.try_join_next() {
                        self.held_bytes = self.held_bytes.saturating_sub(event.payload.len());
                        self.settle(source, event, at, took, attempt);
                    }
                    // A socket per request in flight: the others go back to the relay's budget.
                    self.permits.truncate(self.in_flight.len());
                }
                rows = fetched(&mut self.fetching), if self.fetching.is_some() => {
                    match rows? {
                        Some(rows) => self.take_fetched(rows),
                        None => return Ok(self.lapse()),
                    }
                }
                changed = self.woken.changed(), if !self.signals_closed => {
                    match changed {
                        Ok(()) => {
                            self.wake();
                            self.next_poll = self.next_poll.min(Instant::now() + FOLLOW_UP);
                        }
                        // The connection is gone; the next database call says so.
                        Err(_) => self.signals_closed = true,
                    }
                }
                changed = self.lease_valid_until.changed(), if !self.signals_closed => {
                    if changed.is_err() {
                        self.signals_closed = true;
                    }
                }
                changed = self.shutdown.changed(), if !self.signals_closed => {
                    if changed.is_err() {
                        self.signals_closed = true;
                    }
                }
                held = written(&mut self.writing), if self.writing.is_some() => {
                    if !self.wrote(held?) {
                        return Ok(Stopped::NotHeld);
                    }
                }
                _ = tokio::time::sleep_until(fence), if !self.in_flight.is_empty() || self.writing.is_some() || self.fetching.is_some() => {
                    if Instant::now() >= self.fence() {
                        return Ok(self.lapse());
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {
                    if Instant::now() >= self.next_poll {
                        self.wake();
                        self.next_poll = Instant::now() + self.relay.poll_interval;
                    }
                }
            }
        }
    }

    /// Stop the fetch in flight, if any (its call is cancelled on the server).
    fn abandon_fetch(&mut self) {
        if let Some(fetching) = self.fetching.take() {
            fetching.task.abort();
        }
    }

    /// There may be new events: fetch again, even if a fetch in flight said it caught up.
    fn wake(&mut self) {
        self.caught_up = false;
        if let Some(fetching) = &mut self.fetching {
            fetching.woken_since = true;
        }
    }

    /// Start fetching the next events after those fetched, if there is room for them and the
    /// worker has not caught up.
    fn start_fetching(&mut self) {
        let room = self.relay.window.saturating_sub(self.window.len());
        let room_bytes = self.window_bytes().saturating_sub(self.held_bytes);
        if self.fetching.is_some() || self.caught_up || room == 0 || room_bytes == 0 {
            return;
        }
        let asked = room.min(self.relay.fetch_batch);
        let (name, endpoint_id) = self.identity();
        let (db, relay, after) = (
            self.db.clone(),
            self.relay.relay_id.clone(),
            self.fetched_through,
        );
        // Bounded by the fence it starts under, as every database call of a worker: a call
        // that hangs (a partition, a costly filter) is given up, and cancelled on the server,
        // before another relay can take the endpoint.
        let fence = self.fence();
        self.fetching = Some(Fetching {
            task: tokio::spawn(async move {
                let call = db.fetch(&name, endpoint_id, &relay, after, asked, room_bytes);
                let Ok(rows) = tokio::time::timeout_at(fence, call).await else {
                    return Ok(None);
                };
                crate::failpoint::slow_fetch().await;
                rows.map(Some)
            }),
            asked,
            room_bytes,
            woken_since: false,
            parked_since: HashSet::new(),
        });
    }

    /// The fetch in flight came back: its events join the window and their instances' queues.
    fn take_fetched(&mut self, rows: Vec<FetchedRow>) {
        let Some(fetching) = self.fetching.take() else {
            return;
        };
        let (asked, room_bytes) = (fetching.asked, fetching.room_bytes);
        // Fewer rows than asked: caught up, unless the batch ended on the byte bound. The
        // database counts every event's jsonb size, delivered here or not; the payloads' text
        // seen here is about as large, so a batch with less than half the room in payloads is
        // taken as caught up (wrongly at worst: the next fetch waits for the poll).
        let bytes: usize = rows
            .iter()
            .filter_map(|row| row.event.as_ref())
            .map(|event| event.payload.len())
            .sum();
        self.caught_up =
            !fetching.woken_since && rows.len() < asked && bytes.saturating_mul(2) < room_bytes;
        for row in rows {
            self.fetched_through = row.position;
            let sequence = self.first_slot + self.window.len() as u64;
            self.window.push_back(Slot {
                position: row.position,
                finished: row.event.is_none(),
            });
            let Some(event) = row.event else { continue };
            self.held_bytes += event.payload.len();
            let instance = event.aggregate_id;
            let parked_unwritten = self.parked_unwritten.contains(&instance)
                || fetching.parked_since.contains(&instance)
                || self
                    .writing
                    .as_ref()
                    .is_some_and(|w| w.parked.contains(&instance));
            if row.waits_behind || parked_unwritten {
                self.park(sequence, event);
                continue;
            }
            // In id (= version) order: a later version may come first in delivery order when
            // its transaction got its id earlier (relay_fetch keeps both in one batch).
            // A head in flight stays first.
            let busy = self.busy.contains(&instance);
            let queue = self.queues.entry(instance).or_default();
            let place = queue
                .iter()
                .skip(usize::from(busy))
                .position(|(_, queued)| queued.id > event.id)
                .map_or(queue.len(), |i| i + usize::from(busy));
            queue.insert(place, (sequence, event));
            if queue.len() == 1 && !busy {
                self.ready.push_back(instance);
            }
        }
    }

    /// When this worker must have stopped sending: a little before the lease may expire (by
    /// this process's clock), unless the supervisor renews it first.
    fn fence(&self) -> Instant {
        let valid_until = *self.lease_valid_until.borrow();
        valid_until - (self.relay.lease / 10).max(Duration::from_millis(100))
    }

    /// The lease may lapse: nothing may be in flight once another relay can take the endpoint.
    /// The requests are dropped (their connections closed) unrecorded, and sent again by
    /// whichever relay holds the endpoint next.
    fn lapse(&mut self) -> Stopped {
        self.in_flight.abort_all();
        self.permits.clear();
        if let Some(writing) = self.writing.take() {
            writing.task.abort();
        }
        self.abandon_fetch();
        self.metrics.in_flight.set(0);
        Stopped::LeaseLapsed
    }

    /// Whether requests may start now.
    fn lease_covers_a_request(&self) -> bool {
        Instant::now() < self.fence()
    }

    /// Start the heads of ready instances, up to max_in_flight, as the gate allows.
    fn dispatch_ready(&mut self) {
        let limit = self.limit();
        let rate_limit = self.config.borrow().rate_limit;
        self.gate.set_rate_limit(rate_limit);
        if !self.lease_covers_a_request() {
            return;
        }
        while self.in_flight.len() < limit {
            let Some(instance) = self.ready.pop_front() else {
                break;
            };
            if self.busy.contains(&instance) {
                continue; // a pending row of it is in flight; it comes back when that settles
            }
            let Some((sequence, event)) =
                self.queues.get(&instance).and_then(|q| q.front()).cloned()
            else {
                continue;
            };
            let Some(permit) = self.sockets.try_acquire() else {
                self.ready.push_front(instance);
                self.sockets.held_back();
                break;
            };
            if !self.try_pass_gate() {
                self.ready.push_front(instance);
                break;
            }
            self.permits.push(permit);
            self.start(Source::Fresh(sequence), event);
        }
    }

    /// Start pending rows that are due (retries, parked events, redeliveries).
    async fn dispatch_due(&mut self) -> Result<(), DbError> {
        let now = Instant::now();
        let limit = self.limit();
        if now < self.next_due_check
            || self.in_flight.len() >= limit
            || !self.lease_covers_a_request()
        {
            return Ok(());
        }
        // Held back by memory or sockets: looked at again at the next poll (not at once: a due
        // check in the past would spin the loop).
        let room_bytes = self.window_bytes().saturating_sub(self.held_bytes);
        let sockets = self.sockets.available();
        if room_bytes == 0 || sockets == 0 {
            if sockets == 0 {
                self.sockets.held_back();
            }
            self.next_due_check = now + self.relay.poll_interval;
            return Ok(());
        }
        let room = (limit - self.in_flight.len())
            .min(self.gate.room(now))
            .min(sockets);
        if room == 0 {
            self.next_due_check = self
                .gate
                .next_chance(now)
                .unwrap_or(now + self.relay.poll_interval);
            return Ok(());
        }
        let mut busy: Vec<i64> = self.busy.union(&self.unwritten).copied().collect();
        if let Some(writing) = &self.writing {
            busy.extend(writing.unwritten.iter().copied());
        }
        let (name, endpoint_id) = self.identity();
        let due = self
            .db
            .due(
                &name,
                endpoint_id,
                &self.relay.relay_id,
                room,
                &busy,
                room_bytes,
            )
            .await?;
        self.next_due_check = if due.len() == room {
            now
        } else {
            now + self.relay.poll_interval
        };
        for event in due {
            if self.busy.contains(&event.aggregate_id) {
                continue;
            }
            let Some(permit) = self.sockets.try_acquire() else {
                self.next_due_check = now + self.relay.poll_interval;
                break;
            };
            if !self.try_pass_gate() {
                // The rest are due still: asked for again when the gate opens.
                self.next_due_check = self.gate.next_chance(Instant::now()).unwrap_or(now);
                break;
            }
            self.permits.push(permit);
            self.held_bytes += event.payload.len();
            self.start(Source::Pending, event);
        }
        Ok(())
    }

    /// Start test events that are due, within the same limits as pending rows; asked for at most
    /// once per poll interval (or when a retry of one is due), so that an endpoint without test
    /// events costs one small query per poll.
    async fn dispatch_tests(&mut self) -> Result<(), DbError> {
        let now = Instant::now();
        let limit = self.limit();
        if now < self.next_test_check
            || self.in_flight.len() >= limit
            || !self.lease_covers_a_request()
        {
            return Ok(());
        }
        self.next_test_check = now + self.relay.poll_interval;
        let room_bytes = self.window_bytes().saturating_sub(self.held_bytes);
        let room = (limit - self.in_flight.len())
            .min(self.gate.room(now))
            .min(self.sockets.available());
        if room == 0 || room_bytes == 0 {
            return Ok(());
        }
        let (name, endpoint_id) = self.identity();
        let due = self
            .db
            .tests(
                &name,
                endpoint_id,
                &self.relay.relay_id,
                room + self.tests_busy.len(),
            )
            .await?;
        let mut started = 0;
        for event in due {
            if self.tests_busy.contains(&event.id) {
                continue;
            }
            if started == room {
                break;
            }
            let Some(permit) = self.sockets.try_acquire() else {
                break;
            };
            if !self.try_pass_gate() {
                break;
            }
            self.permits.push(permit);
            self.held_bytes += event.payload.len();
            self.tests_busy.insert(event.id);
            started += 1;
            self.start(Source::Test, event);
        }
        Ok(())
    }

    /// A permit for one request from the rate limit and the circuit breaker.
    fn try_pass_gate(&mut self) -> bool {
        let passed = self.gate.try_start(Instant::now());
        self.metrics.circuit_state.set(self.gate.state().gauge());
        passed
    }

    /// Tell the circuit breaker how an attempt went; log and count when the circuit changes.
    fn report_to_gate(&mut self, succeeded: bool) {
        match self.gate.settled(succeeded, Instant::now()) {
            Transition::Opened { cooldown } => {
                self.metrics.circuit_opened.inc();
                tracing::warn!(endpoint = %self.name(), cooldown_ms = cooldown.as_millis() as u64,
                               "circuit open: the endpoint failed every recent attempt; one probe after the cool-down");
            }
            Transition::Closed => {
                tracing::info!(endpoint = %self.name(), "circuit closed: the endpoint answered again");
            }
            Transition::None => {}
        }
        self.metrics.circuit_state.set(self.gate.state().gauge());
    }

    fn start(&mut self, source: Source, event: Event) {
        // A test event's instance is the example's: it holds up no real instance.
        if !matches!(source, Source::Test) {
            self.busy.insert(event.aggregate_id);
        }
        let sinks = self.sinks.clone();
        let config = Arc::clone(&self.config.borrow());
        self.metrics.in_flight.inc();
        self.in_flight.spawn(async move {
            let at = SystemTime::now();
            let started = Instant::now();
            // Boxed: the attempt's future is about 8 KB, which spawning would otherwise copy
            // several times per request.
            let attempt = Box::pin(sinks.deliver(&config, &event)).await;
            (source, event, at, started.elapsed(), attempt)
        });
    }

    /// Turn an attempt's result into an outcome and decide what its instance does next.
    fn settle(
        &mut self,
        source: Source,
        event: Event,
        at: SystemTime,
        took: Duration,
        attempt: Attempt,
    ) {
        let instance = event.aggregate_id;
        self.metrics.in_flight.dec();
        self.metrics.attempt_seconds.observe(took.as_secs_f64());
        let test = matches!(source, Source::Test);
        if !test {
            self.busy.remove(&instance);
        }
        let attempts = event.attempts + 1;
        let config = Arc::clone(&self.config.borrow());
        let (schedule, jitter) = (&config.retry_schedule, config.retry_jitter);
        let mut outcome = Outcome {
            outbox_id: event.id,
            aggregate_id: instance,
            status: "delivered",
            attempts,
            attempted_at: Some(at),
            http_status: None,
            error: None,
            next_attempt_at: None,
            duration_ms: Some(i32::try_from(took.as_millis()).unwrap_or(i32::MAX)),
        };
        let mut instance_waits = false;
        let succeeded = matches!(attempt, Attempt::Delivered { .. });
        if let (true, false, Ok(lag)) = (
            succeeded,
            test,
            SystemTime::now().duration_since(event.occurred_at),
        ) {
            self.metrics.lag_seconds.observe(lag.as_secs_f64());
        }
        if !matches!(attempt, Attempt::Gone { .. }) {
            self.report_to_gate(succeeded);
        }
        let counter = match attempt {
            Attempt::Delivered { status } => {
                outcome.http_status = Some(i32::from(status));
                &self.metrics.delivered
            }
            Attempt::Gone { status } => {
                // Not delivered: it is the first to go when a DBA enables the endpoint again.
                outcome.status = "pending";
                outcome.http_status = Some(i32::from(status));
                outcome.error = Some("410 Gone: endpoint disabled".to_owned());
                outcome.next_attempt_at = Some(SystemTime::now());
                instance_waits = true;
                self.gone = Some(format!(
                    "the receiver answered 410 Gone to event {} at {}",
                    event.event_id,
                    httpdate::fmt_http_date(at)
                ));
                &self.metrics.gone
            }
            Attempt::Failed {
                status,
                error,
                retry_after,
            } => {
                outcome.http_status = status.map(i32::from);
                outcome.error = Some(error);
                match retry::next_delay(schedule, jitter, attempts as usize, retry_after) {
                    Some(delay) => {
                        outcome.status = "pending";
                        outcome.next_attempt_at = Some(SystemTime::now() + delay);
                        if test {
                            self.next_test_check = self.next_test_check.min(Instant::now() + delay);
                        } else {
                            self.next_due_check = self.next_due_check.min(Instant::now() + delay);
                        }
                        instance_waits = true;
                        &self.metrics.retry
                    }
                    None => {
                        outcome.status = "dead";
                        &self.metrics.dead
                    }
                }
            }
        };
        counter.inc();
        tracing::debug!(endpoint = %self.name(), event = %event.event_id, status = outcome.status,
                        attempts, error = ?outcome.error, "attempt");
        if test {
            // Written by relay_record_tests; it is in no instance's order.
            self.test_outcomes.push(outcome);
            self.oldest_outcome.get_or_insert_with(Instant::now);
            return;
        }
        self.push_outcome(outcome);
        match source {
            Source::Fresh(sequence) => {
                self.finish_slot(sequence);
                let mut queue = self.queues.remove(&instance).unwrap_or_default();
                queue.pop_front();
                if instance_waits {
                    // Its later events wait behind it, in pending rows.
                    for (sequence, event) in queue.drain(..) {
                        self.park(sequence, event);
                    }
                    self.parked_unwritten.insert(instance);
                } else if !queue.is_empty() {
                    self.queues.insert(instance, queue);
                    self.ready.push_back(instance);
                }
            }
            Source::Test => {}
            Source::Pending => {
                // Its instance's next pending row (if any) goes once this outcome is written.
                self.pending_settled = true;
                if let Some(queue) = self.queues.get(&instance) {
                    if !queue.is_empty() {
                        self.ready.push_back(instance);
                    }
                }
            }
        }
    }

    /// A fresh event that must wait behind a pending one of its instance.
    fn park(&mut self, sequence: u64, event: Event) {
        // Not kept: relay_due hands it out again when its turn comes.
        self.held_bytes = self.held_bytes.saturating_sub(event.payload.len());
        self.push_outcome(Outcome {
            outbox_id: event.id,
            aggregate_id: event.aggregate_id,
            status: "pending",
            attempts: 0,
            attempted_at: None,
            http_status: None,
            error: None,
            next_attempt_at: Some(SystemTime::now()),
            duration_ms: None,
        });
        self.finish_slot(sequence);
    }

    fn push_outcome(&mut self, outcome: Outcome) {
        self.unwritten.insert(outcome.aggregate_id);
        self.outcomes.push(outcome);
        self.oldest_outcome.get_or_insert_with(Instant::now);
    }

    fn finish_slot(&mut self, sequence: u64) {
        if let Some(index) = sequence.checked_sub(self.first_slot) {
            if let Some(slot) = self.window.get_mut(index as usize) {
                slot.finished = true;
            }
        }
    }

    /// Start writing the outcomes and moving the cursor over the finished prefix of the window,
    /// in a task of its own (at most one at a time).
    fn start_writing(&mut self) {
        if self.writing.is_some() {
            return;
        }
        let mut finished = 0;
        while finished < self.window.len() && self.window[finished].finished {
            finished += 1;
        }
        if self.outcomes.is_empty()
            && self.test_outcomes.is_empty()
            && finished == 0
            && self.gone.is_none()
        {
            return;
        }
        let cursor = finished
            .checked_sub(1)
            .map(|last| self.window[last].position);
        let outcomes = std::mem::take(&mut self.outcomes);
        let test_outcomes = std::mem::take(&mut self.test_outcomes);
        let tests = test_outcomes.iter().map(|o| o.outbox_id).collect();
        self.oldest_outcome = None;
        let (name, endpoint_id) = self.identity();
        let (db, relay, gone) = (
            self.db.clone(),
            self.relay.relay_id.clone(),
            self.gone.clone(),
        );
        self.writing = Some(Writing {
            task: tokio::spawn(async move {
                // Test events first: a 410 to one disables the endpoint with the write below,
                // and nothing could be written after it.
                if !test_outcomes.is_empty()
                    && !db
                        .record_tests(&name, endpoint_id, &relay, &test_outcomes)
                        .await?
                {
                    return Ok(false);
                }
                if outcomes.is_empty() && cursor.is_none() && gone.is_none() {
                    return Ok(true);
                }
                db.record(
                    &name,
                    endpoint_id,
                    &relay,
                    &outcomes,
                    cursor,
                    gone.as_deref(),
                )
                .await
            }),
            finished,
            unwritten: std::mem::take(&mut self.unwritten),
            parked: std::mem::take(&mut self.parked_unwritten),
            pending_settled: std::mem::take(&mut self.pending_settled),
            tests,
        });
    }

    /// The write in flight came back: drain the slots it finished. False: the endpoint is not
    /// this relay's any more (nothing was written).
    fn wrote(&mut self, held: bool) -> bool {
        let Some(writing) = self.writing.take() else {
            return true;
        };
        if !held {
            return false;
        }
        for test in &writing.tests {
            self.tests_busy.remove(test);
        }
        if let Some(fetching) = &mut self.fetching {
            fetching.parked_since.extend(writing.parked.iter().copied());
        }
        // The next pending rows of instances whose pending row was settled may be due now.
        if writing.pending_settled {
            self.next_due_check = Instant::now();
        }
        self.window.drain(..writing.finished);
        self.first_slot += writing.finished as u64;
        true
    }

    /// Write everything now (the write in flight, then the rest): when stopping. False: the
    /// endpoint is not this relay's any more.
    async fn flush(&mut self) -> Result<bool, DbError> {
        let mut rest_started = false;
        loop {
            if self.writing.is_none() {
                if rest_started {
                    return Ok(true);
                }
                self.start_writing();
                rest_started = true;
                if self.writing.is_none() {
                    return Ok(true); // nothing to write
                }
            }
            let held = written(&mut self.writing).await?;
            if !self.wrote(held) {
                return Ok(false);
            }
        }
    }
}
