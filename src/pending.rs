//! The changes that await their events in the current transaction.
//!
//! The capture triggers record each change here as it happens (an inserted instance, a deleted
//! one, or the key of a changed source row); the deferred trigger then turns all of them into
//! events in one set-based pass at commit. Entries remember the subtransaction that recorded (and
//! emitted) them, so that a rolled-back savepoint forgets its changes and, if it had already
//! emitted events (`SET CONSTRAINTS ... IMMEDIATE`), makes the surviving changes pending again:
//! PostgreSQL re-fires their deferred trigger events at commit.

use crate::rows::sorted_unique;
use crate::sources::{EnabledSources, Key};
use pgrx::pg_sys;
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;

/// The subtransaction id of the top-level transaction.
const TOP_SUBTRANSACTION: pg_sys::SubTransactionId = 1;

/// One recorded change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// A row inserted into `ti.instance`.
    Created(i64),
    /// A row deleted from `ti.instance`.
    Deleted(i64),
    /// A row that is part of the snapshots of some instances changed; the key says which.
    Touched(Key, i64),
}

/// What a `Change` is, without its id: one byte (`Key` is a fieldless enum).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ChangeKind {
    Created,
    Deleted,
    Touched(Key),
}

/// One change as recorded: 16 bytes (a `Change` beside the subtransaction id would take 24), as
/// a transaction records one per changed row.
#[derive(Clone, Copy, Debug)]
struct Captured {
    id: i64,
    captured_in: pg_sys::SubTransactionId,
    kind: ChangeKind,
}

const _: () = assert!(std::mem::size_of::<Captured>() == 16);

impl Captured {
    fn new(change: Change, captured_in: pg_sys::SubTransactionId) -> Captured {
        let (kind, id) = match change {
            Change::Created(id) => (ChangeKind::Created, id),
            Change::Deleted(id) => (ChangeKind::Deleted, id),
            Change::Touched(key, id) => (ChangeKind::Touched(key), id),
        };
        Captured {
            id,
            captured_in,
            kind,
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Emitted {
    captured: Captured,
    emitted_in: pg_sys::SubTransactionId,
}

#[derive(Default, Debug)]
struct TransactionEvents {
    /// Recorded and not yet emitted.
    unemitted: Vec<Captured>,
    /// Emitted inside a subtransaction that may still roll back; emissions at top level are
    /// final and not kept.
    emitted_in_subtransactions: Vec<Emitted>,
    /// The bubble-up settings, read once per transaction (when it first changes a source).
    enabled_sources: Option<EnabledSources>,
}

thread_local! {
    static CURRENT: RefCell<TransactionEvents> = RefCell::new(TransactionEvents::default());
    /// Whether this transaction may have run `SET CONSTRAINTS` (`capture::_emit_needed`). True in
    /// the transaction that loads the library: it may have run one before.
    static CONSTRAINTS_MAY_BE_SET: Cell<bool> = const { Cell::new(true) };
}

/// Called for every `SET CONSTRAINTS` (`capture.rs`'s utility hook).
pub fn constraints_set() {
    CONSTRAINTS_MAY_BE_SET.set(true);
}

/// Whether the commit-time triggers may be immediate in this transaction: `SET CONSTRAINTS`
/// ran, or may have run before the library was loaded.
pub fn constraints_may_be_set() -> bool {
    CONSTRAINTS_MAY_BE_SET.get()
}

/// Record a change; called by the capture triggers.
pub fn capture(change: Change) {
    // SAFETY: plain read of the transaction state.
    let captured_in = unsafe { pg_sys::GetCurrentSubTransactionId() };
    CURRENT.with_borrow_mut(|events| events.unemitted.push(Captured::new(change, captured_in)));
}

pub fn has_unemitted() -> bool {
    CURRENT.with_borrow(|events| !events.unemitted.is_empty())
}

/// The transaction's bubble-up settings, read with `load` the first time they are needed.
pub fn enabled_sources(load: impl FnOnce() -> EnabledSources) -> EnabledSources {
    if let Some(sources) = CURRENT.with_borrow(|events| events.enabled_sources) {
        return sources;
    }
    let sources = load();
    CURRENT.with_borrow_mut(|events| events.enabled_sources = Some(sources));
    sources
}

/// The changes taken for one pass, each list ascending and without duplicates (an id inserted,
/// deleted and inserted again in one transaction has one row at commit, so one event).
#[derive(Debug, Default)]
pub struct Changes {
    pub created: Vec<i64>,
    pub deleted: Vec<i64>,
    pub touched: BTreeMap<Key, Vec<i64>>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.created.is_empty() && self.deleted.is_empty() && self.touched.is_empty()
    }
}

/// Take the changes to emit now.
pub fn take_unemitted() -> Changes {
    // SAFETY: plain read of the transaction state.
    let emitted_in = unsafe { pg_sys::GetCurrentSubTransactionId() };
    let taken = CURRENT.with_borrow_mut(|events| {
        let taken = std::mem::take(&mut events.unemitted);
        if emitted_in != TOP_SUBTRANSACTION {
            events
                .emitted_in_subtransactions
                .extend(taken.iter().map(|&captured| Emitted {
                    captured,
                    emitted_in,
                }));
        }
        taken
    });
    // Exact capacities: a bulk transaction's list is as long as its rows.
    let created = taken
        .iter()
        .filter(|captured| captured.kind == ChangeKind::Created)
        .count();
    let mut changes = Changes {
        created: Vec::with_capacity(created),
        ..Changes::default()
    };
    for captured in taken {
        let id = captured.id;
        match captured.kind {
            ChangeKind::Created => changes.created.push(id),
            ChangeKind::Deleted => changes.deleted.push(id),
            ChangeKind::Touched(key) => changes.touched.entry(key).or_default().push(id),
        }
    }
    changes.created = sorted_unique(changes.created);
    changes.deleted = sorted_unique(changes.deleted);
    for ids in changes.touched.values_mut() {
        *ids = sorted_unique(std::mem::take(ids));
    }
    changes
}

/// Called when a subtransaction rolls back (`lib.rs`): its changes are forgotten, and those it
/// had emitted are pending again.
pub fn forget_subtransaction(aborted: pg_sys::SubTransactionId) {
    // Subtransaction ids grow within a transaction, and when `aborted` ends every subtransaction
    // started after it is its descendant: all ids >= aborted are rolled back with it.
    CURRENT.with_borrow_mut(|events| {
        events
            .unemitted
            .retain(|captured| captured.captured_in < aborted);
        let mut kept = Vec::with_capacity(events.emitted_in_subtransactions.len());
        for emitted in events.emitted_in_subtransactions.drain(..) {
            if emitted.captured.captured_in >= aborted {
                continue;
            }
            if emitted.emitted_in >= aborted {
                events.unemitted.push(emitted.captured);
            } else {
                kept.push(emitted);
            }
        }
        events.emitted_in_subtransactions = kept;
    });
}

/// Called when the transaction ends (`lib.rs`): nothing recorded outlives it.
pub fn forget_transaction() {
    CURRENT.with_borrow_mut(|events| *events = TransactionEvents::default());
    CONSTRAINTS_MAY_BE_SET.set(false);
}
