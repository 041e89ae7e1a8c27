//! Cross-owner isolation of the commit-time pass (docs/security.md, section 1).
//!
//! The pass reads every source table as `ae_events_snapshot` (`privileges::SnapshotReader`).
//! Reading a table runs code its owner controls (functions in index predicates and expressions
//! that the planner folds, constraints, operators); the owner of one table could use it to
//! pass on rows of the others (notices, errors, NOTIFY, settings, sequences, ...). So, while the
//! pass reads:
//! - an fmgr hook refuses every function that is not built in unless its owner is trusted: a
//!   superuser, the extension's owner, or a role that can read every source table anyway (it
//!   learns nothing new). PostgreSQL asks `needs_fmgr_hook` whenever it looks a function up
//!   (`fmgr_info`), and does not inline a SQL function the hook claims, so SQL bodies are
//!   checked too; built-in functions never reach the hook;
//! - the relations the pass names must be tables (`require_tables`): a view in a source table's
//!   place would run its code, built-in functions included, with the pass's rights; and so must
//!   every relation a query of the pass reads, checked as the executor starts it
//!   (`check_permissions`);
//! - row security policies do not apply (the role has BYPASSRLS, install.sql): a policy can leak
//!   with built-in functions alone, which the hook does not see.

use crate::privileges::{self, ExtensionCatalog};
use crate::sources::{self, Source, SOURCES};
use pgrx::pg_sys;
use pgrx::prelude::*;
use std::cell::RefCell;
use std::ffi::{CStr, CString};
use std::sync::OnceLock;

/// The hooks that were installed before ours, called after ours.
struct PreviousHooks {
    needs: pg_sys::needs_fmgr_hook_type,
    fmgr: pg_sys::fmgr_hook_type,
    check_permissions: pg_sys::ExecutorCheckPerms_hook_type,
}

static PREVIOUS: OnceLock<PreviousHooks> = OnceLock::new();

/// Install the fmgr hooks and the executor's permission-check hook (from `_PG_init`, once per
/// backend).
pub fn register_hooks() {
    // SAFETY: _PG_init runs once per process, before any query of this library; the previous
    // hooks are kept and chained.
    unsafe {
        let previous = PreviousHooks {
            needs: pg_sys::needs_fmgr_hook,
            fmgr: pg_sys::fmgr_hook,
            check_permissions: pg_sys::ExecutorCheckPerms_hook,
        };
        if PREVIOUS.set(previous).is_err() {
            return;
        }
        pg_sys::needs_fmgr_hook = Some(needs_fmgr_hook);
        pg_sys::fmgr_hook = Some(fmgr_hook);
        pg_sys::ExecutorCheckPerms_hook = Some(check_permissions);
    }
}

/// Functions created at initdb (oids below FirstNormalObjectId) belong to the bootstrap
/// superuser: trusted without looking.
fn is_user_defined(function: pg_sys::Oid) -> bool {
    u32::from(function) >= pg_sys::FirstNormalObjectId
}

/// Asked on every lookup of a function that is not built in, in every backend that loaded the
/// library: outside the pass, one flag check.
#[pg_guard]
unsafe extern "C-unwind" fn needs_fmgr_hook(function: pg_sys::Oid) -> bool {
    if privileges::reading_sources() && is_user_defined(function) {
        return true;
    }
    match PREVIOUS.get().and_then(|previous| previous.needs) {
        // SAFETY: the hook installed before ours, with its own arguments.
        Some(previous) => unsafe { previous(function) },
        None => false,
    }
}

/// Called around each call of a hooked function (and of SECURITY DEFINER functions and
/// functions with SET clauses). A FmgrInfo made during the pass may be kept and used after it:
/// outside the pass this does nothing but chain.
#[pg_guard]
unsafe extern "C-unwind" fn fmgr_hook(
    event: pg_sys::FmgrHookEventType::Type,
    flinfo: *mut pg_sys::FmgrInfo,
    arg: *mut pg_sys::Datum,
) {
    // Before the previous hook's START: when we refuse, it has nothing to undo.
    if event == pg_sys::FmgrHookEventType::FHET_START
        && privileges::reading_sources()
        && !flinfo.is_null()
    {
        // SAFETY: PostgreSQL passes the function's FmgrInfo.
        let function = unsafe { (*flinfo).fn_oid };
        if is_user_defined(function) {
            require_trusted(function);
        }
    }
    if let Some(previous) = PREVIOUS.get().and_then(|previous| previous.fmgr) {
        // SAFETY: the hook installed before ours, with the same arguments.
        unsafe { previous(event, flinfo, arg) };
    }
}

thread_local! {
    /// Functions found trusted during the current read (`privileges::current_read`).
    static TRUSTED: RefCell<(u64, Vec<pg_sys::Oid>)> = const { RefCell::new((0, Vec::new())) };
}

/// Raise 42501 unless the function's owner is trusted (see the module's comment). The message
/// names the function and its owner, nothing the function could have seen.
fn require_trusted(function: pg_sys::Oid) {
    let read = privileges::current_read();
    let known = TRUSTED.with_borrow(|(at, trusted)| *at == read && trusted.contains(&function));
    if known {
        return;
    }
    let Some(owner) = function_owner(function) else {
        return; // gone: fmgr reports it
    };
    if !is_trusted(owner) {
        crate::errors::raise_with_hint(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!(
                "the commit-time pass refuses to run function {} (owned by {}): its owner cannot read every source table, and the pass reads them all",
                function_name(function),
                role_name(owner)
            ),
            "Functions in a source table's index predicates, index expressions or constraints, or in operators and casts the pass uses, run inside the pass only if their owner is a superuser, the extension's owner, or can read every source table; SELECT * FROM ae_events.source_owners() lists the tables' owners. See docs/security.md, section 1.".to_owned(),
        );
    }
    TRUSTED.with_borrow_mut(|(at, trusted)| {
        if *at != read {
            *at = read;
            trusted.clear();
        }
        trusted.push(function);
    });
}

/// Whether code of `role` may run inside the pass.
pub fn is_trusted(role: pg_sys::Oid) -> bool {
    is_dba(role) || can_read_all_sources(role)
}

/// A superuser or the extension's owner.
pub fn is_dba(role: pg_sys::Oid) -> bool {
    // SAFETY: a cached catalog lookup by oid.
    let superuser = unsafe { pg_sys::superuser_arg(role) };
    superuser || role == ExtensionCatalog::current().owner
}

/// Whether `role` can read every row of every source table that exists: USAGE on its schema,
/// SELECT on the table (directly, through a role it belongs to, or pg_read_all_data) and no row
/// security policy that applies to it, unless it owns the table (an owner can drop its
/// policies). Such a role learns nothing from what the pass reads.
pub fn can_read_all_sources(role: pg_sys::Oid) -> bool {
    SOURCES.into_iter().all(|source| {
        let table = sources::table_oid(source);
        if table == pg_sys::InvalidOid {
            return true;
        }
        // SAFETY: catalog lookups by oid; noError: an unexpected state reads as "not allowed".
        unsafe {
            may_use_schema(pg_sys::get_rel_namespace(table), role)
                && pg_sys::pg_class_aclcheck(table, role, pg_sys::ACL_SELECT as pg_sys::AclMode)
                    == pg_sys::AclResult::ACLCHECK_OK
                && (pg_sys::check_enable_rls(table, role, true)
                    != pg_sys::CheckEnableRlsResult::RLS_ENABLED as i32
                    || table_owner(table)
                        .is_some_and(|owner| pg_sys::has_privs_of_role(role, owner)))
        }
    })
}

/// USAGE on a schema (PostgreSQL 16 made the per-kind ACL checks one function).
fn may_use_schema(schema: pg_sys::Oid, role: pg_sys::Oid) -> bool {
    let usage = pg_sys::ACL_USAGE as pg_sys::AclMode;
    #[cfg(feature = "pg15")]
    // SAFETY: a catalog lookup by oid.
    let result = unsafe { pg_sys::pg_namespace_aclcheck(schema, role, usage) };
    #[cfg(not(feature = "pg15"))]
    // SAFETY: as above.
    let result =
        unsafe { pg_sys::object_aclcheck(pg_sys::NamespaceRelationId, schema, role, usage) };
    result == pg_sys::AclResult::ACLCHECK_OK
}

/// The owner of a relation, from the system caches.
pub fn table_owner(table: pg_sys::Oid) -> Option<pg_sys::Oid> {
    // SAFETY: a syscache lookup by oid, released before returning.
    unsafe {
        let tuple = pg_sys::SearchSysCache1(
            pg_sys::SysCacheIdentifier::RELOID as i32,
            pg_sys::Datum::from(table),
        );
        if tuple.is_null() {
            return None;
        }
        let form = pg_sys::heap_tuple_get_struct::<pg_sys::FormData_pg_class>(tuple);
        let owner = (*form).relowner;
        pg_sys::ReleaseSysCache(tuple);
        Some(owner)
    }
}

fn function_owner(function: pg_sys::Oid) -> Option<pg_sys::Oid> {
    // SAFETY: a syscache lookup by oid, released before returning.
    unsafe {
        let tuple = pg_sys::SearchSysCache1(
            pg_sys::SysCacheIdentifier::PROCOID as i32,
            pg_sys::Datum::from(function),
        );
        if tuple.is_null() {
            return None;
        }
        let form = pg_sys::heap_tuple_get_struct::<pg_sys::FormData_pg_proc>(tuple);
        let owner = (*form).proowner;
        pg_sys::ReleaseSysCache(tuple);
        Some(owner)
    }
}

/// `schema.name(argument types)`.
fn function_name(function: pg_sys::Oid) -> String {
    // SAFETY: returns a palloc'd string (or raises for a missing function, looked up above).
    unsafe { owned_text(pg_sys::format_procedure_qualified(function)) }
}

pub fn role_name(role: pg_sys::Oid) -> String {
    // SAFETY: noerr: NULL for a dropped role.
    let name = unsafe { owned_text(pg_sys::GetUserNameFromId(role, true)) };
    if name.is_empty() {
        format!("role {}", u32::from(role))
    } else {
        name
    }
}

/// # Safety
/// `text` is NULL or a NUL-terminated string.
unsafe fn owned_text(text: *const std::ffi::c_char) -> String {
    if text.is_null() {
        return String::new();
    }
    // SAFETY: as promised by the caller.
    unsafe { CStr::from_ptr(text) }
        .to_string_lossy()
        .into_owned()
}

/// What the relation a source table's name resolves to is, if not a table.
fn not_a_table(kind: u8) -> Option<&'static str> {
    match kind {
        pg_sys::RELKIND_RELATION | pg_sys::RELKIND_PARTITIONED_TABLE => None,
        pg_sys::RELKIND_VIEW => Some("a view"),
        pg_sys::RELKIND_MATVIEW => Some("a materialized view"),
        pg_sys::RELKIND_FOREIGN_TABLE => Some("a foreign table"),
        0 => None, // gone (dropped meanwhile): the executor reports it
        _ => Some("not a table"),
    }
}

/// Called as the executor starts each query, with the relations it reads (a view there too,
/// expanded, for its permission check). While the pass reads, every one must be a table: should
/// a query of the pass be planned again after `require_tables` and find a view under a source
/// table's name (its schema renamed and another made in its place), it fails here, before the
/// view's code runs.
#[cfg(feature = "pg15")]
#[pg_guard]
unsafe extern "C-unwind" fn check_permissions(
    range_table: *mut pg_sys::List,
    ereport_on_violation: bool,
) -> bool {
    if privileges::reading_sources() {
        require_tables_among(range_table);
    }
    match PREVIOUS
        .get()
        .and_then(|previous| previous.check_permissions)
    {
        // SAFETY: the hook installed before ours, with the same arguments.
        Some(previous) => unsafe { previous(range_table, ereport_on_violation) },
        None => true,
    }
}

/// As above (PostgreSQL 16 added the permission infos).
#[cfg(not(feature = "pg15"))]
#[pg_guard]
unsafe extern "C-unwind" fn check_permissions(
    range_table: *mut pg_sys::List,
    permission_infos: *mut pg_sys::List,
    ereport_on_violation: bool,
) -> bool {
    if privileges::reading_sources() {
        require_tables_among(range_table);
    }
    match PREVIOUS
        .get()
        .and_then(|previous| previous.check_permissions)
    {
        // SAFETY: the hook installed before ours, with the same arguments.
        Some(previous) => unsafe { previous(range_table, permission_infos, ereport_on_violation) },
        None => true,
    }
}

/// Refuse (42809) unless every relation of a range table is a table. (PostgreSQL 15 keeps a
/// view's own entry, with its oid, among the expanded view's; 16 keeps the oid on the view's
/// subquery entry.)
fn require_tables_among(range_table: *mut pg_sys::List) {
    // SAFETY: the executor passes its range table, a List of RangeTblEntry pointers.
    let entries = unsafe { pgrx::PgList::<pg_sys::RangeTblEntry>::from_pg(range_table) };
    for entry in entries.iter_ptr() {
        // SAFETY: a valid entry of that list.
        let relation = unsafe { (*entry).relid };
        if relation == pg_sys::InvalidOid {
            continue;
        }
        // SAFETY: a syscache lookup by oid ('\0' for a relation that is gone).
        let kind = unsafe { pg_sys::get_rel_relkind(relation) } as u8;
        if let Some(what) = not_a_table(kind) {
            let name = relation_name(relation);
            crate::errors::raise_with_hint(
                PgSqlErrorCode::ERRCODE_WRONG_OBJECT_TYPE,
                format!("{name} is {what}; the pass reads tables only"),
                format!(
                    "A relation in a source table's place would run its own code with the rights of the role that reads every source table. Make {name} a table again (or SELECT ae_events.detach() to stop events). See docs/security.md, section 1."
                ),
            );
        }
    }
}

/// `schema.name` of a relation.
fn relation_name(relation: pg_sys::Oid) -> String {
    // SAFETY: syscache lookups by oid; NULL for what is gone.
    unsafe {
        let schema = owned_text(pg_sys::get_namespace_name(pg_sys::get_rel_namespace(
            relation,
        )));
        let name = owned_text(pg_sys::get_rel_name(relation));
        format!("{schema}.{name}")
    }
}

/// Lock each source relation that exists by its name (as the pass's queries name it) and refuse
/// unless it is a table: a view would run its code, built-in functions included, with the rights
/// of a role that reads every source table. Once locked, the relation cannot be renamed or
/// dropped until the transaction ends. Called at the start of each pass, before it reads.
pub fn require_tables() {
    for source in SOURCES {
        let relation = lock_by_name(source);
        if relation == pg_sys::InvalidOid {
            continue;
        }
        // SAFETY: a syscache lookup of a relation we hold a lock on.
        let kind = unsafe { pg_sys::get_rel_relkind(relation) } as u8;
        if let Some(what) = not_a_table(kind) {
            crate::errors::raise_with_hint(
                PgSqlErrorCode::ERRCODE_WRONG_OBJECT_TYPE,
                format!("{} is {what}; the pass reads tables only", source.table()),
                format!(
                    "A relation in a source table's place would run its own code with the rights of the role that reads every source table. Make {} a table again (or SELECT ae_events.detach() to stop events). See docs/security.md, section 1.",
                    source.table()
                ),
            );
        }
    }
}

/// The oid of the relation `source.table()` names, locked in AccessShareLock (what reading it
/// takes anyway); InvalidOid when there is none.
fn lock_by_name(source: Source) -> pg_sys::Oid {
    let Some((schema, name)) = source.table().split_once('.') else {
        return pg_sys::InvalidOid;
    };
    let (Ok(schema), Ok(name)) = (CString::new(schema), CString::new(name)) else {
        return pg_sys::InvalidOid;
    };
    // SAFETY: the RangeVar points at the CStrings, which outlive the call; missing_ok returns
    // InvalidOid for a missing schema or relation.
    unsafe {
        let range_var =
            pg_sys::makeRangeVar(schema.as_ptr().cast_mut(), name.as_ptr().cast_mut(), -1);
        pg_sys::RangeVarGetRelidExtended(
            range_var,
            pg_sys::AccessShareLock as pg_sys::LOCKMODE,
            pg_sys::RVROption::RVR_MISSING_OK,
            None,
            std::ptr::null_mut(),
        )
    }
}
