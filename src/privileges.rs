//! Who the extension's own work runs as: the installed extension's catalog facts (outbox,
//! its id sequence, the owner) and a guard that runs code as the owner with a safe
//! `search_path`, so that the application's role needs no privilege on `ae_events` and nothing
//! a caller defines can change what the extension reads or writes.

use crate::errors;
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
}

thread_local! {
    static CATALOG: Cell<Option<ExtensionCatalog>> = const { Cell::new(None) };
}

impl ExtensionCatalog {
    pub fn current() -> ExtensionCatalog {
        // SAFETY: syscache lookups by name; missing_ok returns InvalidOid instead of raising.
        let outbox = unsafe {
            let namespace = pg_sys::get_namespace_oid(c"ae_events".as_ptr(), true);
            pg_sys::get_relname_relid(c"outbox".as_ptr(), namespace)
        };
        if outbox == pg_sys::InvalidOid {
            errors::raise(
                PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE,
                "ae_events: the table ae_events.outbox is missing".to_owned(),
                None,
            );
        }
        if let Some(cached) = CATALOG.get().filter(|cached| cached.outbox == outbox) {
            return cached;
        }
        // SAFETY: the outbox exists; its column "id" is an identity column (outbox.sql).
        let id_sequence = unsafe {
            let id_column = pg_sys::get_attnum(outbox, c"id".as_ptr());
            pg_sys::getIdentitySequence(outbox, id_column, false)
        };
        let catalog = ExtensionCatalog {
            outbox,
            id_sequence,
            owner: extension_owner(),
        };
        CATALOG.set(Some(catalog));
        catalog
    }
}

/// Runs the pass as the extension's owner with a safe `search_path`; restores both on drop.
/// (On error, PostgreSQL's transaction abort restores them.)
pub struct OwnerPrivileges {
    saved_user: pg_sys::Oid,
    saved_security_context: i32,
    search_path: Option<ScopedSetting>,
}

impl OwnerPrivileges {
    pub fn enter(owner: pg_sys::Oid) -> Self {
        let mut saved_user = pg_sys::InvalidOid;
        let mut saved_security_context = 0;
        // SAFETY: the documented way to run code as another role inside a transaction, as
        // PostgreSQL does for REFRESH MATERIALIZED VIEW and maintenance commands.
        unsafe {
            pg_sys::GetUserIdAndSecContext(&mut saved_user, &mut saved_security_context);
            pg_sys::SetUserIdAndSecContext(
                owner,
                saved_security_context
                    | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32
                    | pg_sys::SECURITY_RESTRICTED_OPERATION as i32,
            );
        }
        let search_path = ScopedSetting::set(c"search_path", c"pg_catalog, pg_temp");
        OwnerPrivileges {
            saved_user,
            saved_security_context,
            search_path: Some(search_path),
        }
    }
}

impl Drop for OwnerPrivileges {
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
            "ae_events: the extension's catalog entry is missing".to_owned(),
            None,
        ),
    }
}
