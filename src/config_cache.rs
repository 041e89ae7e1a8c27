//! Per-backend caches of the extension's configuration tables (`ae_events.payload_rules`,
//! `ae_events.bubble_up`, `ae_events.digest_keys`), so that a commit does not query them each time.
//!
//! PostgreSQL's relcache invalidations keep them right: a statement trigger on each table
//! (`ae_events.configuration_changed()`, enabled ALWAYS so that a replica-role session fires it
//! too) invalidates the table's relcache entry on any change. The message reaches the changing
//! backend at its next command (and again if the change rolls back) and every other backend once
//! the change commits; the callback registered here then counts it, and entries read before no
//! longer count as valid. A table is read with a snapshot of the latest committed state taken
//! after this backend has processed the messages sent so far: a change that snapshot does not
//! show commits later, and its message comes later. Without the trigger (a DBA disabled it; the
//! library is newer than the SQL objects until `ALTER EXTENSION ... UPDATE`) nothing is cached.

use pgrx::prelude::*;
use std::cell::{Cell, RefCell};
use std::ffi::CStr;
use std::rc::Rc;
use std::thread::LocalKey;

/// A configuration table with its invalidating trigger.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigTable {
    PayloadRules,
    BubbleUp,
    DigestKeys,
}

impl ConfigTable {
    fn index(self) -> usize {
        self as usize
    }

    fn name(self) -> &'static CStr {
        match self {
            ConfigTable::PayloadRules => c"payload_rules",
            ConfigTable::BubbleUp => c"bubble_up",
            ConfigTable::DigestKeys => c"digest_keys",
        }
    }

    fn trigger(self) -> &'static CStr {
        match self {
            ConfigTable::PayloadRules => c"payload_rules_changed",
            ConfigTable::BubbleUp => c"bubble_up_changed",
            ConfigTable::DigestKeys => c"digest_keys_changed",
        }
    }
}

/// A cached value and the invalidation count it was read at.
pub struct Entry<T> {
    read_at: u64,
    value: Rc<T>,
}

/// Where a cache keeps its entry (a `thread_local!` of the module that reads the table).
pub type Slot<T> = LocalKey<RefCell<Option<Entry<T>>>>;

thread_local! {
    /// Invalidations of a watched table (or resets of the whole relcache) seen by this backend.
    static INVALIDATIONS: Cell<u64> = const { Cell::new(0) };
    /// The watched tables' oids, by `ConfigTable::index` (InvalidOid until first read).
    static WATCHED: [Cell<pg_sys::Oid>; 3] = const {
        [
            Cell::new(pg_sys::InvalidOid),
            Cell::new(pg_sys::InvalidOid),
            Cell::new(pg_sys::InvalidOid),
        ]
    };
}

/// Let PostgreSQL tell this backend about changes to the configuration tables. Called once, at
/// load.
pub fn register_invalidation_callback() {
    // SAFETY: the callback is a plain function that lives as long as the library; it only
    // bumps a counter.
    unsafe {
        pg_sys::CacheRegisterRelcacheCallback(Some(relation_invalidated), pg_sys::Datum::from(0))
    };
}

#[pg_guard]
unsafe extern "C-unwind" fn relation_invalidated(_argument: pg_sys::Datum, relation: pg_sys::Oid) {
    let watched = WATCHED.with(|watched| watched.iter().any(|oid| oid.get() == relation));
    if relation == pg_sys::InvalidOid || watched {
        INVALIDATIONS.set(INVALIDATIONS.get().wrapping_add(1));
    }
}

/// The statement trigger on each configuration table (see the module's comment).
#[pg_trigger]
fn configuration_changed<'a>(
    trigger: &'a PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, std::convert::Infallible> {
    if let Ok(relation) = trigger.relation() {
        // SAFETY: queues an invalidation message for a relation that exists (it fired this).
        unsafe { pg_sys::CacheInvalidateRelcacheByRelid(relation.oid()) };
    }
    Ok(None)
}

/// The cached value, if nothing has invalidated it since it was read. Processes the
/// invalidations sent so far first: a change committed before this call is seen, as a query
/// under READ COMMITTED would (otherwise a transaction whose statements are done would still use
/// what it read before a change committed meanwhile).
fn cached<T>(slot: &'static Slot<T>) -> Option<Rc<T>> {
    // SAFETY: what every lock acquisition does; cheap when no message is waiting.
    unsafe { pg_sys::AcceptInvalidationMessages() };
    slot.with_borrow(|entry| {
        entry
            .as_ref()
            .filter(|entry| entry.read_at == INVALIDATIONS.get())
            .map(|entry| Rc::clone(&entry.value))
    })
}

/// The cached value, or `read` it (with a snapshot of the latest committed state) and keep it
/// when the table's invalidating trigger is in place. `read` runs only on a miss, so it is where
/// a caller opens its SPI connection and takes the role it reads as.
pub fn get_or_read<T, E>(
    slot: &'static Slot<T>,
    table: ConfigTable,
    read: impl FnOnce() -> Result<T, E>,
) -> Result<Rc<T>, E> {
    if let Some(value) = cached(slot) {
        return Ok(value);
    }
    slot.set(None);
    let oid = crate::privileges::extension_table(table.name());
    WATCHED.with(|watched| watched[table.index()].set(oid));
    // Locking the table processes the invalidation messages sent so far.
    let cacheable =
        oid != pg_sys::InvalidOid && unsafe { invalidating_trigger_in_place(oid, table) };
    let read_at = INVALIDATIONS.get();
    let value = {
        let _latest = crate::rows::LatestSnapshots::enter();
        Rc::new(read()?)
    };
    if cacheable {
        slot.set(Some(Entry {
            read_at,
            value: Rc::clone(&value),
        }));
    }
    Ok(value)
}

/// Whether the table has its invalidating trigger, enabled ALWAYS. Takes an AccessShareLock on
/// the table until the transaction ends, as reading it does.
///
/// # Safety
/// `oid` names an existing relation; called inside a transaction.
unsafe fn invalidating_trigger_in_place(oid: pg_sys::Oid, table: ConfigTable) -> bool {
    let relation = pg_sys::relation_open(oid, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
    let triggers = (*relation).trigdesc;
    let mut in_place = false;
    if !triggers.is_null() {
        for index in 0..(*triggers).numtriggers as usize {
            let trigger = &*(*triggers).triggers.add(index);
            if CStr::from_ptr(trigger.tgname) == table.trigger()
                && trigger.tgenabled as u8 == pg_sys::TRIGGER_FIRES_ALWAYS
            {
                in_place = true;
            }
        }
    }
    pg_sys::relation_close(relation, pg_sys::NoLock as pg_sys::LOCKMODE);
    in_place
}
