//! Capture: the immediate row triggers on the application's tables. Each records what a change
//! touches (an inserted instance, a deleted one, or the key of a changed source row) in the
//! transaction's memory (`pending.rs`), without a query; the commit-time pass (`emitter.rs`)
//! turns them into events. Each trigger function runs only on the table `attach()` put it on.

use crate::config_cache::{self, ConfigTable};
use crate::errors::{self, EventError};
use crate::pending::{self, Change};
use crate::privileges::{ExtensionCatalog, OwnerPrivileges};
use crate::rows::{with_kept_plan, Connection, KeptPlan};
use crate::settings;
use crate::sources::{EnabledSources, Key, Source};
use pgrx::heap_tuple::PgHeapTuple;
use pgrx::pgbox::AllocatedByPostgres;
use pgrx::prelude::*;
use std::cell::RefCell;
use std::ffi::CStr;

/// AFTER INSERT ... FOR EACH ROW: record the new instance for the commit-time pass.
#[pg_trigger]
fn capture_instance_insert<'a>(trigger: &'a PgTrigger<'a>) -> TriggerResult<'a> {
    if !settings::enabled() {
        return Ok(None);
    }
    require_trigger_on(
        trigger,
        "ae_events.capture_instance_insert()",
        &[Source::Instance],
    );
    match key_of(Source::Instance, trigger.new()) {
        Some(instance_id) => pending::capture(Change::Created(instance_id)),
        None => errors::raise(
            PgSqlErrorCode::ERRCODE_TRIGGERED_ACTION_EXCEPTION,
            "the inserted ti.instance row has no bigint \"id\"".to_owned(),
            None,
        ),
    }
    Ok(None)
}

/// Whether `relation` is the source table: its name, then its schema (one syscache lookup, only
/// when the name matches: this runs for every row a trigger sees).
fn is_table(relation: &pgrx::PgRelation, source: Source) -> bool {
    let Some((schema, name)) = source.table().split_once('.') else {
        return false;
    };
    if relation.name() != name {
        return false;
    }
    let Ok(schema) = std::ffi::CString::new(schema) else {
        return false;
    };
    // SAFETY: rd_rel is the open relation's pg_class row; a syscache lookup by name, missing_ok.
    unsafe { (*relation.rd_rel).relnamespace == pg_sys::get_namespace_oid(schema.as_ptr(), true) }
}

/// The extension's trigger functions record changes for the pass, which writes events as the
/// extension's owner: each runs only on the table `attach()` attached it to (`allowed`), so that
/// nobody can forge a change by attaching it to a table of their own (42501 otherwise).
pub fn require_trigger_on(trigger: &PgTrigger<'_>, function: &str, allowed: &[Source]) {
    let relation = match trigger.relation() {
        Ok(relation) => relation,
        Err(error) => errors::raise(
            PgSqlErrorCode::ERRCODE_TRIGGERED_ACTION_EXCEPTION,
            format!("{function} cannot read its trigger's table: {error}"),
            None,
        ),
    };
    if allowed.iter().any(|source| is_table(&relation, *source)) {
        return;
    }
    let expected: Vec<&str> = allowed.iter().map(|source| source.table()).collect();
    errors::raise(
        PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
        format!(
            "{function} runs only on {}, where ae_events.attach() puts it, not on \"{}\"",
            expected.join(", "),
            relation.name()
        ),
        None,
    )
}

/// The key of a trigger's row (`None` without a row, or for a NULL key); an error if the column
/// is missing or not a bigint.
pub fn key_of(source: Source, row: Option<PgHeapTuple<'_, AllocatedByPostgres>>) -> Option<i64> {
    let row = row?;
    match row.get_by_name::<i64>(source.key_column()) {
        Ok(key) => key,
        Err(error) => errors::raise(
            PgSqlErrorCode::ERRCODE_TRIGGERED_ACTION_EXCEPTION,
            format!(
                "cannot read the bigint \"{}\" of a {} row: {error}",
                source.key_column(),
                source.table()
            ),
            None,
        ),
    }
}

/// AFTER ... FOR EACH ROW on each source table (argument: the table's name): record what the
/// change touches, for the commit-time pass. Deleting an instance is always recorded (its
/// version state is dropped); other changes only when the table bubbles up in this transaction.
#[pg_trigger]
fn capture_change<'a>(trigger: &'a PgTrigger<'a>) -> TriggerResult<'a> {
    if !settings::enabled() {
        return Ok(None);
    }
    let source = trigger_source(trigger);
    require_trigger_on(trigger, "ae_events.capture_change()", &[source]);
    let old_key = key_of(source, trigger.old());
    let new_key = key_of(source, trigger.new());
    if source == Source::Instance {
        // An instance whose id disappears (DELETE, or an UPDATE of the id) loses its state.
        if let Some(old) = old_key.filter(|old| Some(*old) != new_key) {
            pending::capture(Change::Deleted(old));
        }
        if let Some(new) = new_key.filter(|_| bubbles_up(source)) {
            pending::capture(Change::Touched(Key::Instance, new));
        }
        return Ok(None);
    }
    if !bubbles_up(source) {
        return Ok(None);
    }
    let key = source.key();
    for id in [old_key, new_key.filter(|new| Some(*new) != old_key)]
        .into_iter()
        .flatten()
    {
        pending::capture(Change::Touched(key, id));
    }
    Ok(None)
}

const BUBBLE_UP_SETTINGS: &str = "
SELECT b.source_table::pg_catalog.text, b.enabled::pg_catalog.bool FROM ae_events.bubble_up AS b";

thread_local! {
    static SETTINGS_QUERY: RefCell<Option<KeptPlan>> = const { RefCell::new(None) };
    static CACHED: RefCell<Option<config_cache::Entry<EnabledSources>>> =
        const { RefCell::new(None) };
}

/// The bubble-up settings: read once per backend and again after any change to
/// `ae_events.bubble_up` (`config_cache.rs`).
fn read_enabled_sources() -> Result<EnabledSources, EventError> {
    config_cache::get_or_read(&CACHED, ConfigTable::BubbleUp, || {
        let catalog = ExtensionCatalog::current();
        let _privileges = OwnerPrivileges::enter(catalog.owner);
        Spi::connect(|client| read_bubble_up(Connection::of(client)))
    })
    .map(|enabled| *enabled)
}

/// Read `ae_events.bubble_up` (as the extension's owner: the application's role has no
/// privilege on it). Rows for tables it does not know are ignored; a missing row means the
/// table's default.
fn read_bubble_up(connection: Connection<'_>) -> Result<EnabledSources, EventError> {
    let mut enabled = EnabledSources::defaults();
    with_kept_plan(
        connection,
        &SETTINGS_QUERY,
        BUBBLE_UP_SETTINGS,
        &[],
        |query| {
            query.run(connection, &mut [])?.for_each(|row| {
                let table: Option<String> = row.get(1).map_err(EventError::internal)?;
                let on: Option<bool> = row.get(2).map_err(EventError::internal)?;
                if let (Some(source), Some(on)) =
                    (table.and_then(|t| Source::from_table(t.as_bytes())), on)
                {
                    enabled.set(source, on);
                }
                Ok(())
            })
        },
    )
    .map_err(|error| error.context("cannot read ae_events.bubble_up"))?;
    Ok(enabled)
}

/// The bubble-up settings of this transaction (read once, when first needed).
pub fn enabled_sources() -> EnabledSources {
    pending::enabled_sources(|| match read_enabled_sources() {
        Ok(enabled) => enabled,
        Err(error) => error.report(),
    })
}

fn bubbles_up(source: Source) -> bool {
    enabled_sources().contains(source)
}

/// What the extension's row triggers return: nothing (they are AFTER triggers).
pub type TriggerResult<'a> =
    Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, std::convert::Infallible>;

/// The source table named by the trigger's argument.
fn trigger_source(trigger: &PgTrigger<'_>) -> Source {
    let definition = trigger.trigger();
    let argument = (definition.tgnargs >= 1)
        // SAFETY: tgargs holds tgnargs NUL-terminated strings.
        .then(|| unsafe { CStr::from_ptr(*definition.tgargs) });
    match argument.and_then(|table| Source::from_table(table.to_bytes())) {
        Some(source) => source,
        None => errors::raise(
            PgSqlErrorCode::ERRCODE_TRIGGERED_ACTION_EXCEPTION,
            "capture_change() needs the name of a source table as its argument".to_owned(),
            None,
        ),
    }
}

/// The `WHEN` condition of the commit-time constraint triggers (`attach.rs`): whether this row
/// queues a deferred trigger event. The first firing at commit emits every change the
/// transaction recorded, so one event per statement and trigger is enough: true for the first
/// row of each statement (its expression's `fn_extra`, which lives as long as the statement's
/// executor state, remembers it), false for the others. True for every row once the transaction
/// may have made the triggers immediate (`SET CONSTRAINTS`): an immediate trigger fires at the end
/// of the statement, interleaved row by row with the capture triggers, so the first row's event
/// would run before the later rows are recorded. A rolled-back savepoint discards the events and
/// the recorded changes it queued together, and a statement's rows are all in one savepoint.
/// Anyone may call it (the inserting role evaluates the condition); a call elsewhere answers for
/// its own statement only.
#[pg_extern(volatile, parallel_unsafe)]
fn _emit_needed(fcinfo: pg_sys::FunctionCallInfo) -> bool {
    if pending::constraints_may_be_set() {
        return true;
    }
    /// What `fn_extra` points at once the statement has queued its event (never dereferenced).
    static QUEUED: u8 = 0;
    // SAFETY: PostgreSQL passes a valid fcinfo; its flinfo (when set) is the expression's own,
    // and nothing else uses this function's fn_extra.
    unsafe {
        let flinfo = if fcinfo.is_null() {
            std::ptr::null_mut()
        } else {
            (*fcinfo).flinfo
        };
        if flinfo.is_null() {
            return true;
        }
        if !(*flinfo).fn_extra.is_null() {
            return false;
        }
        (*flinfo).fn_extra = std::ptr::addr_of!(QUEUED).cast_mut().cast();
    }
    true
}

static PREVIOUS_UTILITY_HOOK: std::sync::OnceLock<pg_sys::ProcessUtility_hook_type> =
    std::sync::OnceLock::new();

/// Install the utility hook that notices `SET CONSTRAINTS` (from `_PG_init`, once per backend).
pub fn register_utility_hook() {
    // SAFETY: _PG_init runs once per process, before any query of this library; the previous
    // hook is kept and chained.
    unsafe {
        if PREVIOUS_UTILITY_HOOK
            .set(pg_sys::ProcessUtility_hook)
            .is_err()
        {
            return;
        }
        pg_sys::ProcessUtility_hook = Some(process_utility);
    }
}

/// Every utility statement (top level, or run by a function): `SET CONSTRAINTS` is noted for
/// `_emit_needed`, before it runs; then the statement runs as it would without the hook.
#[pg_guard]
#[allow(clippy::too_many_arguments)]
unsafe extern "C-unwind" fn process_utility(
    statement: *mut pg_sys::PlannedStmt,
    query: *const std::ffi::c_char,
    read_only_tree: bool,
    context: pg_sys::ProcessUtilityContext::Type,
    params: pg_sys::ParamListInfo,
    environment: *mut pg_sys::QueryEnvironment,
    destination: *mut pg_sys::DestReceiver,
    completion: *mut pg_sys::QueryCompletion,
) {
    // SAFETY: PostgreSQL passes a planned utility statement.
    unsafe {
        if !statement.is_null()
            && !(*statement).utilityStmt.is_null()
            && (*(*statement).utilityStmt).type_ == pg_sys::NodeTag::T_ConstraintsSetStmt
        {
            pending::constraints_set();
        }
        match PREVIOUS_UTILITY_HOOK.get().copied().flatten() {
            Some(previous) => previous(
                statement,
                query,
                read_only_tree,
                context,
                params,
                environment,
                destination,
                completion,
            ),
            None => pg_sys::standard_ProcessUtility(
                statement,
                query,
                read_only_tree,
                context,
                params,
                environment,
                destination,
                completion,
            ),
        }
    }
}
