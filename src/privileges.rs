//! Who the extension's own work runs as: the installed extension's catalog facts (outbox,
//! its id sequence, the owner, the snapshot role) and guards that switch the current role.
//!
//! - The pass writes the extension's own tables as the owner (`OwnerPrivileges`), with a safe
//!   `search_path`, so that the application's role needs no privilege on `ae_events`. No code a
//!   non-superuser controls is reachable there: the outbox, its indexes and the state tables
//!   belong to the owner.
//! - Every read of the application's tables (snapshots, bubble-up lookups) runs as
//!   `ae_events_snapshot` (`SnapshotReader`): a NOLOGIN role that holds SELECT on the source
//!   tables (granted by `attach()`) and nothing else but BYPASSRLS. A source table's owner
//!   controls code that runs while those tables are planned and read (index predicates and
//!   expressions, operators); since that role reads every source table, such code runs only if
//!   its owner could read them all itself (`isolation.rs`).

use crate::errors::{self, EventError};
use crate::settings::ScopedSetting;
use pgrx::prelude::*;
use std::cell::Cell;

/// What the pass needs to know of the installed extension: looked up in the system caches and
/// kept per backend, keyed by the outbox's oid (which changes if the extension is re-created).
#[derive(Clone, Copy)]
pub struct ExtensionCatalog {
    outbox: pg_sys::Oid,
    pub id_sequence: pg_sys::Oid,
    pub owner: pg_sys::Oid,
    /// `ae_events_snapshot`: the role the application's tables are read as.
    pub snapshot_role: pg_sys::Oid,
}

/// The oid of the extension's table `ae_events.<name>`, or InvalidOid when there is none.
pub fn extension_table(name: &std::ffi::CStr) -> pg_sys::Oid {
    // SAFETY: syscache lookups by name; missing_ok returns InvalidOid instead of raising.
    unsafe {
        let namespace = pg_sys::get_namespace_oid(c"ae_events".as_ptr(), true);
        pg_sys::get_relname_relid(name.as_ptr(), namespace)
    }
}

/// The sequence behind the outbox's identity column "id".
fn identity_sequence(outbox: pg_sys::Oid) -> pg_sys::Oid {
    // SAFETY: the outbox exists; its column "id" is an identity column (outbox.sql).
    let id_column = unsafe { pg_sys::get_attnum(outbox, c"id".as_ptr()) };
    // Up to PostgreSQL 16, getIdentitySequence takes the table's oid.
    #[cfg(any(feature = "pg15", feature = "pg16"))]
    // SAFETY: as above.
    let sequence = unsafe { pg_sys::getIdentitySequence(outbox, id_column, false) };
    // From 17 on it takes the open relation (partitions look up their parent's sequence), so the
    // outbox is opened for the lookup.
    #[cfg(any(feature = "pg17", feature = "pg18"))]
    // SAFETY: as above; the relation is closed again at once, the lock kept until the
    // transaction ends (as every table lock).
    let sequence = unsafe {
        let relation = pg_sys::relation_open(outbox, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
        let sequence = pg_sys::getIdentitySequence(relation, id_column, false);
        pg_sys::relation_close(relation, pg_sys::NoLock as pg_sys::LOCKMODE);
        sequence
    };
    sequence
}

thread_local! {
    static CATALOG: Cell<Option<ExtensionCatalog>> = const { Cell::new(None) };
}

impl ExtensionCatalog {
    /// The class of the interlock's lock tags (`interlock.rs`): the outbox's oid.
    pub fn lock_class(&self) -> pg_sys::Oid {
        self.outbox
    }

    /// `ae_events.outbox`.
    pub fn outbox(&self) -> pg_sys::Oid {
        self.outbox
    }

    pub fn current() -> ExtensionCatalog {
        let outbox = extension_table(c"outbox");
        if outbox == pg_sys::InvalidOid {
            errors::raise(
                PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE,
                "the table ae_events.outbox is missing".to_owned(),
                None,
            );
        }
        if let Some(cached) = CATALOG.get().filter(|cached| cached.outbox == outbox) {
            return cached;
        }
        let id_sequence = identity_sequence(outbox);
        let catalog = ExtensionCatalog {
            outbox,
            id_sequence,
            owner: extension_owner(),
            snapshot_role: snapshot_role(),
        };
        CATALOG.set(Some(catalog));
        catalog
    }
}

/// Runs the pass as the extension's owner with a safe `search_path`; restores both on drop.
/// (On error, PostgreSQL's transaction abort restores them.)
pub struct OwnerPrivileges {
    _switch: RoleSwitch,
}

impl OwnerPrivileges {
    pub fn enter(owner: pg_sys::Oid) -> Self {
        OwnerPrivileges {
            _switch: RoleSwitch::enter(owner),
        }
    }
}

/// Reads the application's tables as `ae_events_snapshot` (see the module's comment), each
/// statement with the latest committed state (`rows::LatestSnapshots`); restores the previous
/// role on drop. While one is alive, `reading_sources()` is true: the fmgr hook
/// (`isolation.rs`) then refuses functions of owners that cannot read every source table.
pub struct SnapshotReader {
    _latest: crate::rows::LatestSnapshots,
    _switch: RoleSwitch,
    _reading: Reading,
}

impl SnapshotReader {
    pub fn enter(catalog: &ExtensionCatalog) -> Self {
        SnapshotReader {
            _latest: crate::rows::LatestSnapshots::enter(),
            _switch: RoleSwitch::enter(catalog.snapshot_role),
            _reading: Reading::enter(),
        }
    }
}

thread_local! {
    /// How many `SnapshotReader`s are alive (nested readers are possible).
    static READERS: Cell<u32> = const { Cell::new(0) };
    /// Counts the outermost readers entered: caches that hold for one read (`isolation.rs`'s
    /// trusted functions) are keyed by it.
    static READS: Cell<u64> = const { Cell::new(0) };
}

/// Whether the pass is reading the application's tables now (a `SnapshotReader` is alive).
/// One thread-local load: the fmgr hook asks on every lookup of a non-builtin function.
pub fn reading_sources() -> bool {
    READERS.get() != 0
}

/// The number of the current outermost read (see `READS`).
pub fn current_read() -> u64 {
    READS.get()
}

/// At a transaction's end no reader is alive: forget any count an abort left behind (the guards'
/// drops run while a Rust panic unwinds; this also covers an error that bypassed them).
pub fn forget_readers() {
    READERS.set(0);
}

/// The counted part of a `SnapshotReader`. Its drop runs also while a panic unwinds (an error
/// inside the read): the count must not outlive the read.
struct Reading;

impl Reading {
    fn enter() -> Reading {
        if READERS.get() == 0 {
            READS.set(READS.get().wrapping_add(1));
        }
        READERS.set(READERS.get().saturating_add(1));
        Reading
    }
}

impl Drop for Reading {
    fn drop(&mut self) {
        READERS.set(READERS.get().saturating_sub(1));
    }
}

/// The current role switched to `role` for a scope, as a security-restricted operation, with
/// `search_path` set to `pg_catalog, pg_temp`.
struct RoleSwitch {
    saved_user: pg_sys::Oid,
    saved_security_context: i32,
    search_path: Option<ScopedSetting>,
}

impl RoleSwitch {
    fn enter(role: pg_sys::Oid) -> Self {
        let mut saved_user = pg_sys::InvalidOid;
        let mut saved_security_context = 0;
        // SAFETY: the documented way to run code as another role inside a transaction, as
        // PostgreSQL does for REFRESH MATERIALIZED VIEW and maintenance commands.
        unsafe {
            pg_sys::GetUserIdAndSecContext(&mut saved_user, &mut saved_security_context);
            pg_sys::SetUserIdAndSecContext(
                role,
                saved_security_context
                    | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32
                    | pg_sys::SECURITY_RESTRICTED_OPERATION as i32,
            );
        }
        let search_path = ScopedSetting::set(c"search_path", c"pg_catalog, pg_temp");
        RoleSwitch {
            saved_user,
            saved_security_context,
            search_path: Some(search_path),
        }
    }
}

impl Drop for RoleSwitch {
    fn drop(&mut self) {
        if std::thread::panicking() {
            return; // the transaction is aborting; PostgreSQL restores user and settings
        }
        if let Some(search_path) = self.search_path.take() {
            search_path.end();
        }
        // SAFETY: restores what `enter` saved.
        unsafe { pg_sys::SetUserIdAndSecContext(self.saved_user, self.saved_security_context) };
    }
}

/// The role that owns the extension (its installer); the pass runs with its privileges.
fn extension_owner() -> pg_sys::Oid {
    let owner = Spi::get_one::<pg_sys::Oid>(
        "SELECT e.extowner FROM pg_catalog.pg_extension AS e WHERE e.extname OPERATOR(pg_catalog.=) 'ae_events'",
    );
    match owner {
        Ok(Some(owner)) => owner,
        _ => errors::raise(
            PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
            "the extension's catalog entry is missing".to_owned(),
            None,
        ),
    }
}

/// The oid of `ae_events_snapshot` (created by the install or update script).
fn snapshot_role() -> pg_sys::Oid {
    // SAFETY: a syscache lookup by name; missing_ok returns InvalidOid instead of raising.
    let role = unsafe { pg_sys::get_role_oid(c"ae_events_snapshot".as_ptr(), true) };
    if role == pg_sys::InvalidOid {
        sql_objects_out_of_date().report();
    }
    role
}

thread_local! {
    /// Whether the extension's SQL objects were found current in this session.
    static SQL_OBJECTS_CURRENT: Cell<bool> = const { Cell::new(false) };
}

/// The newest SQL objects the library needs (the row source of 0.2.0, the state of 0.3.0, the
/// payload rules and delivery epochs of 0.4.0).
const CURRENT_OBJECTS_EXIST: &str =
    "SELECT pg_catalog.to_regprocedure('ae_events._pending_outbox_rows()') IS NOT NULL
        AND pg_catalog.to_regclass('ae_events.instance_state') IS NOT NULL
        AND pg_catalog.to_regclass('ae_events.payload_rules') IS NOT NULL
        AND pg_catalog.to_regprocedure('ae_events._ensure_epoch()') IS NOT NULL
        AND pg_catalog.to_regprocedure('ae_events.delivery_blockers()') IS NOT NULL
        AND pg_catalog.to_regrole('ae_events_snapshot') IS NOT NULL";

/// The library may be newer than the extension's SQL objects until the DBA runs the update:
/// refuse to write events then. Asked by each set of plans before it is prepared; checked once
/// per session.
pub fn ensure_current_sql_objects() -> Result<(), EventError> {
    if SQL_OBJECTS_CURRENT.get() {
        return Ok(());
    }
    let objects_exist = Spi::get_one::<bool>(CURRENT_OBJECTS_EXIST).map_err(EventError::spi(
        "cannot look up the extension's SQL objects",
    ))?;
    if objects_exist != Some(true) {
        return Err(sql_objects_out_of_date());
    }
    SQL_OBJECTS_CURRENT.set(true);
    Ok(())
}

pub fn sql_objects_out_of_date() -> EventError {
    EventError::Prerequisite {
        what: "the extension's SQL objects are older than its library: run ALTER EXTENSION ae_events UPDATE".to_owned(),
    }
}
