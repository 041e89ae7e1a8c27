//! The instances that await their event in the current transaction.
//!
//! The capture trigger records each inserted instance here as the statement ends; the deferred
//! trigger then builds all of them in one set-based pass at commit. Entries remember the
//! subtransaction that recorded (and emitted) them, so that a rolled-back savepoint forgets its
//! inserts and, if it had already emitted events (`SET CONSTRAINTS ... IMMEDIATE`), makes the
//! surviving instances pending again: PostgreSQL re-fires their deferred trigger events at commit.

use pgrx::pg_sys;
use pgrx::prelude::*;
use std::cell::RefCell;

/// The subtransaction id of the top-level transaction.
const TOP_SUBTRANSACTION: pg_sys::SubTransactionId = 1;

#[derive(Clone, Copy, Debug)]
struct Captured {
    instance_id: i64,
    captured_in: pg_sys::SubTransactionId,
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
}

thread_local! {
    static CURRENT: RefCell<TransactionEvents> = RefCell::new(TransactionEvents::default());
}

/// Record an inserted instance; called by the capture trigger.
pub fn capture_created(instance_id: i64) {
    // SAFETY: plain read of the transaction state.
    let captured_in = unsafe { pg_sys::GetCurrentSubTransactionId() };
    CURRENT.with_borrow_mut(|events| {
        events.unemitted.push(Captured {
            instance_id,
            captured_in,
        })
    });
}

pub fn has_unemitted() -> bool {
    CURRENT.with_borrow(|events| !events.unemitted.is_empty())
}

/// Take the instances to emit now, ascending and without duplicates (an id inserted, deleted and
/// inserted again in one transaction has one row at commit, so one event).
pub fn take_unemitted() -> Vec<i64> {
    // SAFETY: plain read of the transaction state.
    let emitted_in = unsafe { pg_sys::GetCurrentSubTransactionId() };
    CURRENT.with_borrow_mut(|events| {
        let taken = std::mem::take(&mut events.unemitted);
        if emitted_in != TOP_SUBTRANSACTION {
            events
                .emitted_in_subtransactions
                .extend(taken.iter().map(|&captured| Emitted {
                    captured,
                    emitted_in,
                }));
        }
        let mut ids: Vec<i64> = taken
            .into_iter()
            .map(|captured| captured.instance_id)
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    })
}

fn forget_subtransaction(aborted: pg_sys::SubTransactionId) {
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

fn forget_transaction() {
    CURRENT.with_borrow_mut(|events| *events = TransactionEvents::default());
}

#[pg_guard]
unsafe extern "C-unwind" fn on_transaction_event(
    event: pg_sys::XactEvent::Type,
    _arg: *mut std::ffi::c_void,
) {
    use pg_sys::XactEvent::*;
    if matches!(
        event,
        XACT_EVENT_COMMIT | XACT_EVENT_ABORT | XACT_EVENT_PREPARE
    ) {
        forget_transaction();
        crate::notification::transaction_ended();
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn on_subtransaction_event(
    event: pg_sys::SubXactEvent::Type,
    my_subid: pg_sys::SubTransactionId,
    _parent_subid: pg_sys::SubTransactionId,
    _arg: *mut std::ffi::c_void,
) {
    if event == pg_sys::SubXactEvent::SUBXACT_EVENT_ABORT_SUB {
        forget_subtransaction(my_subid);
    }
}

/// Called once per backend, from `_PG_init`.
pub fn register_transaction_callbacks() {
    // SAFETY: the callbacks are plain functions that live as long as the library.
    unsafe {
        pg_sys::RegisterXactCallback(Some(on_transaction_event), std::ptr::null_mut());
        pg_sys::RegisterSubXactCallback(Some(on_subtransaction_event), std::ptr::null_mut());
    }
}
