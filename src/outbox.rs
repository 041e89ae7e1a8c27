//! Writing events to `ae_events.outbox` (shared/contract/events.md §1) and announcing them (§4).
//!
//! One prepared `INSERT ... SELECT` per chunk pulls its rows from
//! `ae_events._pending_outbox_rows()`, a set-returning function fed from this backend's memory.
//! It runs in the SELECT list, so the executor streams: each payload (already encoded as binary
//! jsonb, `jsonb.rs`) is copied into a datum only when its row is inserted, and at any moment
//! the extension knows which instance is being written, to name it if the row is refused (a DBA's
//! CHECK constraint, say). Ids come from the outbox's identity sequence here so that the
//! notification can carry them; the notification's payload text is PostgreSQL's own rendering of
//! the stored jsonb, so it is exactly what `payload::text` shows.

use crate::errors::EventError;
use crate::eventid;
use crate::jsonb::StoredJsonb;
use crate::notification::{self, Envelope};
use crate::rows::{Connection, KeptPlan};
use crate::settings::NotifyMode;
use crate::timefmt::rfc3339_utc;
use pgrx::datum::TimestampWithTimeZone;
use pgrx::prelude::*;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;

pub(crate) mod direct;

pub const AGGREGATE_TYPE: &str = "test_instance";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Created,
    Updated,
}

impl EventKind {
    pub fn subscription_key(self) -> &'static str {
        match self {
            EventKind::Created => "ae.test_instance.created",
            EventKind::Updated => "ae.test_instance.updated",
        }
    }

    pub fn event_type(self) -> &'static str {
        match self {
            EventKind::Created => "ae_test_instance_created",
            EventKind::Updated => "ae_test_instance_updated",
        }
    }

    pub fn noun(self) -> &'static str {
        match self {
            EventKind::Created => "created",
            EventKind::Updated => "updated",
        }
    }
}

pub struct Event {
    pub kind: EventKind,
    pub instance_id: i64,
    pub snapshot_version: i32,
    /// The payload, encoded as the root container of a jsonb value (`jsonb.rs`).
    pub payload: Vec<u8>,
}

/// What the draining function needs besides the events: fixed for one write.
pub struct WriteContext {
    pub outbox: pg_sys::Oid,
    pub id_sequence: pg_sys::Oid,
    pub occurred_at: pg_sys::TimestampTz,
    pub notify: NotifyMode,
    pub channel: String,
    /// Bytes of payload a transaction's notifications may carry (None: no limit).
    pub notify_payload_budget: Option<u64>,
    /// With `notify = reference`: no wake-up within this long of the backend's last one.
    pub notify_interval: std::time::Duration,
}

struct Drain {
    context: WriteContext,
    occurred_at: TimestampWithTimeZone,
    occurred_at_text: String,
    events: VecDeque<Event>,
}

thread_local! {
    static DRAIN: RefCell<Option<Drain>> = const { RefCell::new(None) };
    /// The instance whose row is being inserted, to name it in an error.
    static WRITING: Cell<Option<(EventKind, i64)>> = const { Cell::new(None) };
    static INSERTS: RefCell<Option<Rc<InsertPlans>>> = const { RefCell::new(None) };
    /// The id sequence whose outbox is known to be in this cluster's delivery epoch.
    static EPOCH_CONFIRMED: Cell<Option<pg_sys::Oid>> = const { Cell::new(None) };
}

/// The backend's two outbox inserts, prepared together once per session.
struct InsertPlans {
    /// `INSERT_EVENTS`: the chunk's rows streamed from `_pending_outbox_rows()`.
    streaming: KeptPlan,
    /// `INSERT_EVENT`: one row from parameters.
    one: KeptPlan,
}

/// Up to this many events, rows are inserted one by one with a plain `INSERT ... VALUES`: it
/// starts faster than the streaming `INSERT ... SELECT`, which pays off in single-row
/// transactions.
const FEW_EVENTS: usize = 16;

const INSERT_EVENT: &str = "
INSERT INTO ae_events.outbox (id, event_id, subscription_key, event_type, aggregate_type,
                              aggregate_id, snapshot_version, payload, occurred_at, txid)
OVERRIDING SYSTEM VALUE
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, pg_catalog.pg_current_xact_id())";

const INSERT_EVENTS: &str = "
INSERT INTO ae_events.outbox (id, event_id, subscription_key, event_type, aggregate_type,
                              aggregate_id, snapshot_version, payload, occurred_at, txid)
OVERRIDING SYSTEM VALUE
SELECT (e).id, (e).event_id, (e).subscription_key, (e).event_type, (e).aggregate_type,
       (e).aggregate_id, (e).snapshot_version, (e).payload, (e).occurred_at,
       pg_catalog.pg_current_xact_id()
  FROM (SELECT ae_events._pending_outbox_rows() AS e OFFSET 0) AS pending";

fn insert_plans(connection: Connection<'_>) -> Result<Rc<InsertPlans>, EventError> {
    if let Some(plans) = INSERTS.with_borrow(|plans| plans.clone()) {
        return Ok(plans);
    }
    crate::privileges::ensure_current_sql_objects()?;
    let one_types = [
        pg_sys::INT8OID,
        pg_sys::UUIDOID,
        pg_sys::TEXTOID,
        pg_sys::TEXTOID,
        pg_sys::TEXTOID,
        pg_sys::INT8OID,
        pg_sys::INT4OID,
        pg_sys::JSONBOID,
        pg_sys::TIMESTAMPTZOID,
    ];
    let context = |error: EventError| error.context("cannot prepare the outbox insert");
    let plans = Rc::new(InsertPlans {
        streaming: KeptPlan::prepare(connection, INSERT_EVENTS, &[]).map_err(context)?,
        one: KeptPlan::prepare(connection, INSERT_EVENT, &one_types).map_err(context)?,
    });
    INSERTS.with_borrow_mut(|slot| *slot = Some(Rc::clone(&plans)));
    Ok(plans)
}

/// The event being written when an error interrupts `write`.
pub fn event_being_written() -> Option<(EventKind, i64)> {
    WRITING.get()
}

/// Before this backend draws outbox ids for the first time, make sure the latest delivery epoch
/// is this cluster's (`ae_events._ensure_epoch()`, sql/src/consumers.sql): after `pg_restore` into
/// another cluster, transaction ids start over, and relays order events by epoch first.
/// Remembered per id sequence once the epoch was there before this transaction (an epoch this
/// transaction creates is asked for again until it has committed).
fn ensure_epoch(id_sequence: pg_sys::Oid) -> Result<(), EventError> {
    if EPOCH_CONFIRMED.get() == Some(id_sequence) {
        return Ok(());
    }
    let existed = Spi::get_one::<bool>("SELECT ae_events._ensure_epoch()")
        .map_err(EventError::spi("cannot start the delivery epoch"))?;
    if existed == Some(true) {
        EPOCH_CONFIRMED.set(Some(id_sequence));
    }
    Ok(())
}

/// Write the events (and queue their notifications): one streaming INSERT, or for a few
/// events one plain INSERT each.
pub fn write(
    connection: Connection<'_>,
    context: WriteContext,
    events: Vec<Event>,
) -> Result<(), EventError> {
    let plans = insert_plans(connection)?;
    ensure_epoch(context.id_sequence)?;
    let few = events.len() <= FEW_EVENTS;
    let outbox = context.outbox;
    let occurred_at_text = rfc3339_utc(context.occurred_at);
    let occurred_at = TimestampWithTimeZone::try_from(context.occurred_at).map_err(|error| {
        EventError::BadValue {
            what: format!("occurred_at {occurred_at_text}: {error}"),
        }
    })?;
    DRAIN.with_borrow_mut(|drain| {
        *drain = Some(Drain {
            context,
            occurred_at,
            occurred_at_text,
            events: events.into(),
        });
    });
    let result = if few {
        insert_one_by_one(connection, &plans.one)
    } else if let Some(target) = direct::DirectTarget::open(outbox) {
        target.insert_all(next_row)
    } else {
        plans.streaming.run(connection, &mut []).map(drop)
    }
    .map_err(|error| error.context("cannot insert into ae_events.outbox"));
    DRAIN.with_borrow_mut(|drain| *drain = None);
    WRITING.set(None);
    result
}

fn insert_one_by_one(connection: Connection<'_>, plan: &KeptPlan) -> Result<(), EventError> {
    while let Some(row) = next_row() {
        plan.run(connection, &mut row_datums(row)?)?;
    }
    Ok(())
}

/// A row's values as datums, in the outbox's column order without `txid` (the INSERTs compute
/// it, the direct writer adds it).
pub(crate) fn row_datums(row: OutboxRow) -> Result<[pg_sys::Datum; 9], EventError> {
    let (
        id,
        event_id,
        subscription_key,
        event_type,
        aggregate_type,
        aggregate_id,
        version,
        payload,
        occurred_at,
    ) = row;
    let datum = |value: Option<pg_sys::Datum>| {
        value.ok_or_else(|| EventError::internal("a null outbox value"))
    };
    Ok([
        datum(id.into_datum())?,
        datum(event_id.into_datum())?,
        datum(subscription_key.into_datum())?,
        datum(event_type.into_datum())?,
        datum(aggregate_type.into_datum())?,
        datum(aggregate_id.into_datum())?,
        datum(version.into_datum())?,
        payload.datum(),
        datum(occurred_at.into_datum())?,
    ])
}

pub(crate) type OutboxRow = (
    i64,
    pgrx::Uuid,
    &'static str,
    &'static str,
    &'static str,
    i64,
    i32,
    StoredJsonb,
    TimestampWithTimeZone,
);

/// Internal: the rows of the write under way, one per call; empty outside of it.
#[pg_extern(volatile, parallel_unsafe)]
#[allow(clippy::type_complexity)]
fn _pending_outbox_rows() -> TableIterator<
    'static,
    (
        name!(id, i64),
        name!(event_id, pgrx::Uuid),
        name!(subscription_key, &'static str),
        name!(event_type, &'static str),
        name!(aggregate_type, &'static str),
        name!(aggregate_id, i64),
        name!(snapshot_version, i32),
        name!(payload, StoredJsonb),
        name!(occurred_at, TimestampWithTimeZone),
    ),
> {
    TableIterator::new(std::iter::from_fn(next_row))
}

fn next_row() -> Option<OutboxRow> {
    DRAIN.with_borrow_mut(|drain| {
        let drain = drain.as_mut()?;
        let Some(event) = drain.events.pop_front() else {
            // Every row is produced; what fails now (the statement's AFTER triggers on the
            // outbox) belongs to the whole chunk, not to the last row.
            WRITING.set(None);
            return None;
        };
        let instance_id = event.instance_id;
        WRITING.set(Some((event.kind, instance_id)));
        let payload = StoredJsonb::from_container(&event.payload);
        // SAFETY: nextval_oid takes the sequence's regclass.
        let id = unsafe {
            pgrx::fcinfo::direct_function_call::<i64>(
                pg_sys::nextval_oid,
                &[drain.context.id_sequence.into_datum()],
            )
        };
        let Some(id) = id else {
            EventError::BadValue {
                what: "the outbox id (null)".to_owned(),
            }
            .report()
        };
        let event_id = eventid::next().unwrap_or_else(|error| error.report());
        let announce = match drain.context.notify {
            NotifyMode::Full => true,
            NotifyMode::Reference => notification::wake_up_due(drain.context.notify_interval),
            NotifyMode::Off => false,
        };
        if announce {
            let event_id_text = event_id.to_string();
            let envelope = Envelope {
                id,
                event_id: &event_id_text,
                subscription_key: event.kind.subscription_key(),
                event_type: event.kind.event_type(),
                aggregate_type: AGGREGATE_TYPE,
                aggregate_id: instance_id,
                snapshot_version: event.snapshot_version,
                occurred_at: &drain.occurred_at_text,
            };
            let embed = drain.context.notify == NotifyMode::Full
                && notification::budget_allows(drain.context.notify_payload_budget);
            let payload_text = embed.then(|| payload.to_text());
            let message = notification::message(&envelope, payload_text.as_deref());
            notification::send(&drain.context.channel, &message);
        }
        Some((
            id,
            event_id,
            event.kind.subscription_key(),
            event.kind.event_type(),
            AGGREGATE_TYPE,
            instance_id,
            event.snapshot_version,
            payload,
            drain.occurred_at,
        ))
    })
}

/// The library of 0.1.0 had `_drain_events`; its install script still names the symbol, so it
/// stays loadable (for `CREATE EXTENSION ae_events VERSION '0.1.0'` and the upgrade from it).
/// Nothing calls it: 0.2.0 drops the function.
#[pg_guard]
#[no_mangle]
pub unsafe extern "C-unwind" fn _drain_events_wrapper(
    _fcinfo: pg_sys::FunctionCallInfo,
) -> pg_sys::Datum {
    crate::privileges::sql_objects_out_of_date().report()
}

#[no_mangle]
pub extern "C" fn pg_finfo__drain_events_wrapper() -> &'static pg_sys::Pg_finfo_record {
    const V1: pg_sys::Pg_finfo_record = pg_sys::Pg_finfo_record { api_version: 1 };
    &V1
}
