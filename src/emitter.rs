//! The commit-time pass: builds the snapshots of every instance recorded in the transaction and
//! writes their events, chunk by chunk so that memory stays bounded however many instances one
//! transaction inserts.
//!
//! The pass runs as the extension's owner, with `search_path` set to `pg_catalog, pg_temp`: the
//! application's role needs no privilege on `ae_events`, and nothing the caller defines can change
//! what the extension reads or writes.

use crate::errors::{self, EventError};
use crate::outbox::{self, Event, EventKind, WriteContext};
use crate::settings::ScopedSetting;
use crate::{pending, settings, snapshot};
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use std::cell::Cell;
use std::panic::AssertUnwindSafe;

/// Instances built and written per set-based pass.
const CHUNK_SIZE: usize = 1000;

/// Emit the events of every instance recorded and not yet emitted in this transaction.
pub fn emit_pending() {
    if !pending::has_unemitted() {
        return;
    }
    let catalog = ExtensionCatalog::current();
    let _privileges = OwnerPrivileges::enter(catalog.owner);
    Spi::connect_mut(|client| {
        // A DBA's trigger on the outbox could insert instances: loop until none is left.
        loop {
            let instance_ids = pending::take_unemitted();
            if instance_ids.is_empty() {
                break;
            }
            for chunk in instance_ids.chunks(CHUNK_SIZE) {
                PgTryBuilder::new(AssertUnwindSafe(|| {
                    if let Err(error) = emit_chunk(client, &catalog, chunk) {
                        error.report();
                    }
                }))
                .catch_others(|caught| {
                    let what = match outbox::event_being_written() {
                        Some((kind, instance_id)) => {
                            format!("the {} event of ti.instance {instance_id}", kind.noun())
                        }
                        None => {
                            format!("the created events of ti.instance {}", describe_ids(chunk))
                        }
                    };
                    errors::raise_naming(caught, &what)
                })
                .execute();
            }
        }
    });
}

fn emit_chunk(
    client: &SpiClient<'_>,
    catalog: &ExtensionCatalog,
    instance_ids: &[i64],
) -> Result<(), EventError> {
    let snapshots = snapshot::build(instance_ids)?;
    if snapshots.is_empty() {
        return Ok(());
    }
    let context = WriteContext {
        id_sequence: catalog.id_sequence,
        // SAFETY: reads the clock.
        occurred_at: unsafe { pg_sys::GetCurrentTimestamp() },
        notify: settings::notify_mode(),
        channel: settings::channel(),
        notify_payload_budget: settings::notify_payload_budget(),
    };
    let events = snapshots
        .into_iter()
        .map(|snapshot| Event {
            kind: EventKind::Created,
            snapshot_version: 1,
            snapshot,
        })
        .collect();
    outbox::write(client, context, events)
}

/// What the pass needs to know of the installed extension: looked up in the system caches and
/// kept per backend, keyed by the outbox's oid (which changes if the extension is re-created).
#[derive(Clone, Copy)]
struct ExtensionCatalog {
    outbox: pg_sys::Oid,
    id_sequence: pg_sys::Oid,
    owner: pg_sys::Oid,
}

thread_local! {
    static CATALOG: Cell<Option<ExtensionCatalog>> = const { Cell::new(None) };
}

impl ExtensionCatalog {
    fn current() -> ExtensionCatalog {
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

/// "789" or "1, 2, 3", or "1, 2, 3, ... (1000 instances)" for long lists.
fn describe_ids(ids: &[i64]) -> String {
    const SHOWN: usize = 5;
    let shown: Vec<String> = ids.iter().take(SHOWN).map(i64::to_string).collect();
    if ids.len() > SHOWN {
        format!("{}, ... ({} instances)", shown.join(", "), ids.len())
    } else {
        shown.join(", ")
    }
}

/// Runs the pass as the extension's owner with a safe `search_path`; restores both on drop.
/// (On error, PostgreSQL's transaction abort restores them.)
struct OwnerPrivileges {
    saved_user: pg_sys::Oid,
    saved_security_context: i32,
    search_path: Option<ScopedSetting>,
}

impl OwnerPrivileges {
    fn enter(owner: pg_sys::Oid) -> Self {
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
