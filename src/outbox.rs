//! Writing events to `ae_events.outbox` (events.md §1) and announcing them (§4).
//!
//! One prepared `INSERT ... SELECT` per chunk pulls its rows from `ae_events._drain_events()`,
//! a set-returning function fed from this backend's memory. It runs in the SELECT list, so the
//! executor streams: each payload is serialized only when its row is inserted, and at any
//! moment the extension knows which instance is being written, to name it if the row is refused
//! (a DBA's CHECK constraint, say). Ids come from the outbox's identity sequence here so that
//! the notification can carry them.

use crate::errors::EventError;
use crate::notification::{self, Envelope};
use crate::payload::TestInstance;
use crate::settings::NotifyMode;
use crate::timefmt::rfc3339_utc;
use pgrx::datum::TimestampWithTimeZone;
use pgrx::prelude::*;
use pgrx::spi::{OwnedPreparedStatement, SpiClient};
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;

pub const AGGREGATE_TYPE: &str = "test_instance";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Created,
}

impl EventKind {
    pub fn subscription_key(self) -> &'static str {
        match self {
            EventKind::Created => "ae.test_instance.created",
        }
    }

    pub fn event_type(self) -> &'static str {
        match self {
            EventKind::Created => "ae_test_instance_created",
        }
    }

    pub fn noun(self) -> &'static str {
        match self {
            EventKind::Created => "created",
        }
    }
}

pub struct Event {
    pub kind: EventKind,
    pub snapshot_version: i32,
    pub snapshot: TestInstance,
}

/// What the draining function needs besides the events: fixed for one write.
pub struct WriteContext {
    pub id_sequence: pg_sys::Oid,
    pub occurred_at: pg_sys::TimestampTz,
    pub notify: NotifyMode,
    pub channel: String,
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
    static INSERT: RefCell<Option<Rc<OwnedPreparedStatement>>> = const { RefCell::new(None) };
}

const INSERT_EVENTS: &str = "
INSERT INTO ae_events.outbox (id, event_id, subscription_key, event_type, aggregate_type,
                              aggregate_id, snapshot_version, payload, occurred_at, txid)
OVERRIDING SYSTEM VALUE
SELECT (e).id, (e).event_id, (e).subscription_key, (e).event_type, (e).aggregate_type,
       (e).aggregate_id, (e).snapshot_version, (e).payload::pg_catalog.jsonb, (e).occurred_at,
       pg_catalog.pg_current_xact_id()
  FROM (SELECT ae_events._drain_events() AS e OFFSET 0) AS pending";

fn insert_plan(client: &SpiClient<'_>) -> Result<Rc<OwnedPreparedStatement>, EventError> {
    if let Some(plan) = INSERT.with_borrow(|plan| plan.clone()) {
        return Ok(plan);
    }
    let plan = Rc::new(
        client
            .prepare_mut(INSERT_EVENTS, &[])
            .map_err(EventError::spi("cannot prepare the outbox insert"))?
            .keep(),
    );
    INSERT.with_borrow_mut(|slot| *slot = Some(Rc::clone(&plan)));
    Ok(plan)
}

/// The event being written when an error interrupts `write`.
pub fn event_being_written() -> Option<(EventKind, i64)> {
    WRITING.get()
}

/// Write the events (and queue their notifications) with one INSERT.
pub fn write(
    client: &mut SpiClient<'_>,
    context: WriteContext,
    events: Vec<Event>,
) -> Result<(), EventError> {
    let plan = insert_plan(client)?;
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
    let result = client.update(&*plan, None, &[]).map(|_| ());
    DRAIN.with_borrow_mut(|drain| *drain = None);
    WRITING.set(None);
    result.map_err(EventError::spi("cannot insert into ae_events.outbox"))
}

type DrainedRow = (
    i64,
    pgrx::Uuid,
    &'static str,
    &'static str,
    &'static str,
    i64,
    i32,
    String,
    TimestampWithTimeZone,
);

/// Internal: the rows of the write under way, one per call; empty outside of it.
#[pg_extern(volatile, parallel_unsafe)]
#[allow(clippy::type_complexity)]
fn _drain_events() -> TableIterator<
    'static,
    (
        name!(id, i64),
        name!(event_id, pgrx::Uuid),
        name!(subscription_key, &'static str),
        name!(event_type, &'static str),
        name!(aggregate_type, &'static str),
        name!(aggregate_id, i64),
        name!(snapshot_version, i32),
        name!(payload, String),
        name!(occurred_at, TimestampWithTimeZone),
    ),
> {
    TableIterator::new(std::iter::from_fn(next_row))
}

fn next_row() -> Option<DrainedRow> {
    DRAIN.with_borrow_mut(|drain| {
        let drain = drain.as_mut()?;
        let event = drain.events.pop_front()?;
        let instance_id = event.snapshot.id;
        WRITING.set(Some((event.kind, instance_id)));
        let payload = match serde_json::to_string(&event.snapshot) {
            Ok(payload) => payload,
            Err(error) => EventError::BadValue {
                what: format!("the payload of ti.instance {instance_id}: {error}"),
            }
            .report(),
        };
        // SAFETY: nextval_oid takes the sequence's regclass; gen_random_uuid takes no argument.
        let (id, event_id) = unsafe {
            (
                pgrx::fcinfo::direct_function_call::<i64>(
                    pg_sys::nextval_oid,
                    &[drain.context.id_sequence.into_datum()],
                ),
                pgrx::fcinfo::direct_function_call::<pgrx::Uuid>(pg_sys::gen_random_uuid, &[]),
            )
        };
        let (Some(id), Some(event_id)) = (id, event_id) else {
            EventError::BadValue {
                what: "the outbox id or event_id (null)".to_owned(),
            }
            .report()
        };
        if drain.context.notify != NotifyMode::Off {
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
            let message = notification::message(&envelope, &payload, drain.context.notify);
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
