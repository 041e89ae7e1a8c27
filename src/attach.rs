//! Install and attach: the triggers on `ti.instance`, and `attach()` / `detach()` (events.md §6).
//!
//! Two triggers per table: an immediate row trigger records each inserted instance (cheap: no
//! query), and a deferred constraint trigger builds and writes every recorded instance of the
//! transaction at commit, in one set-based pass, so that rows written after the instance in the
//! same transaction are in its snapshot.

use crate::{emitter, pending, settings};
use pgrx::heap_tuple::PgHeapTuple;
use pgrx::pgbox::AllocatedByPostgres;
use pgrx::prelude::*;

const CAPTURE_TRIGGER: &str = "ae_events_capture_created";
const EMIT_TRIGGER: &str = "ae_events_emit";

type TriggerResult<'a> =
    Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, std::convert::Infallible>;

/// AFTER INSERT ... FOR EACH ROW: record the new instance for the commit-time pass.
#[pg_trigger]
fn capture_instance_insert<'a>(trigger: &'a PgTrigger<'a>) -> TriggerResult<'a> {
    if !settings::enabled() {
        return Ok(None);
    }
    let instance_id = trigger
        .new()
        .and_then(|row| row.get_by_name::<i64>("id").ok().flatten());
    match instance_id {
        Some(instance_id) => pending::capture_created(instance_id),
        None => crate::errors::raise(
            PgSqlErrorCode::ERRCODE_TRIGGERED_ACTION_EXCEPTION,
            "ae_events: the inserted ti.instance row has no bigint \"id\"".to_owned(),
            None,
        ),
    }
    Ok(None)
}

/// Deferred constraint trigger: at commit, the first firing emits the events of every instance
/// recorded in the transaction; the later firings find nothing left to do.
#[pg_trigger]
fn emit_pending_events<'a>(_trigger: &'a PgTrigger<'a>) -> TriggerResult<'a> {
    emitter::emit_pending();
    Ok(None)
}

fn table_exists(name: &str) -> bool {
    Spi::get_one_with_args::<bool>(
        "SELECT pg_catalog.to_regclass($1) IS NOT NULL",
        &[name.into()],
    )
    .ok()
    .flatten()
    .unwrap_or(false)
}

fn trigger_exists(table: &str, trigger: &str) -> bool {
    Spi::get_one_with_args::<bool>(
        "SELECT EXISTS (SELECT FROM pg_catalog.pg_trigger AS t
                         WHERE t.tgrelid OPERATOR(pg_catalog.=) pg_catalog.to_regclass($1)
                           AND t.tgname OPERATOR(pg_catalog.=) $2)",
        &[table.into(), trigger.into()],
    )
    .ok()
    .flatten()
    .unwrap_or(false)
}

/// CREATE EXTENSION runs its script with `client_min_messages = warning`; the NOTICE that the
/// contract promises is raised with the client's threshold lowered to `notice` for that moment.
fn notice_even_during_create_extension(message: &str) {
    // SAFETY: reads a backend global.
    if unsafe { pg_sys::creating_extension } {
        let lowered = settings::ScopedSetting::set(c"client_min_messages", c"notice");
        ereport!(
            PgLogLevel::NOTICE,
            PgSqlErrorCode::ERRCODE_SUCCESSFUL_COMPLETION,
            message
        );
        lowered.end();
    } else {
        ereport!(
            PgLogLevel::NOTICE,
            PgSqlErrorCode::ERRCODE_SUCCESSFUL_COMPLETION,
            message
        );
    }
}

fn run_ddl(statement: &str) {
    if let Err(error) = Spi::run(statement) {
        crate::errors::raise(
            PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
            format!("ae_events: cannot change the triggers of ti.instance: {error}"),
            Some(statement.to_owned()),
        );
    }
}

/// Attach the triggers to `ti.instance`. Idempotent. When the table does not exist yet, a NOTICE
/// says so and nothing changes; returns whether the triggers are attached.
#[pg_extern(volatile, parallel_unsafe)]
fn attach() -> bool {
    if !table_exists("ti.instance") {
        notice_even_during_create_extension(
            "ae_events: table ti.instance does not exist yet; no events until SELECT ae_events.attach(); is run after it is created",
        );
        return false;
    }
    if !trigger_exists("ti.instance", CAPTURE_TRIGGER) {
        run_ddl(&format!(
            "CREATE TRIGGER {CAPTURE_TRIGGER} AFTER INSERT ON ti.instance
                 FOR EACH ROW EXECUTE FUNCTION ae_events.capture_instance_insert()"
        ));
    }
    if !trigger_exists("ti.instance", EMIT_TRIGGER) {
        run_ddl(&format!(
            "CREATE CONSTRAINT TRIGGER {EMIT_TRIGGER} AFTER INSERT ON ti.instance
                 DEFERRABLE INITIALLY DEFERRED
                 FOR EACH ROW EXECUTE FUNCTION ae_events.emit_pending_events()"
        ));
    }
    true
}

/// Remove the triggers from `ti.instance` (no events from then on). Idempotent.
#[pg_extern(volatile, parallel_unsafe)]
fn detach() -> bool {
    if !table_exists("ti.instance") {
        return false;
    }
    run_ddl(&format!(
        "DROP TRIGGER IF EXISTS {CAPTURE_TRIGGER} ON ti.instance"
    ));
    run_ddl(&format!(
        "DROP TRIGGER IF EXISTS {EMIT_TRIGGER} ON ti.instance"
    ));
    true
}
