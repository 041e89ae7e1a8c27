//! Install and attach: the triggers on `ti.instance` and the other source tables, and
//! `attach()` / `detach()` (shared/contract/events.md §6).
//!
//! Two kinds of trigger: immediate row triggers record each change (cheap: no query;
//! `capture.rs`), and deferred constraint triggers build and write every recorded change of the
//! transaction at commit, in one set-based pass (`emitter.rs`), so that rows written after the
//! change in the same transaction are in the snapshot.

use crate::isolation;
use crate::settings;
use crate::sources::{self, Source, SOURCES};
use pgrx::prelude::*;

/// On `ti.instance`: records inserts, and emits at commit (created events).
const CAPTURE_CREATED_TRIGGER: &str = "ae_events_capture_created";
const EMIT_CREATED_TRIGGER: &str = "ae_events_emit";
/// On every source table: records changes, and emits at commit (updated events).
const CAPTURE_CHANGED_TRIGGER: &str = "ae_events_capture_changed";
const EMIT_CHANGED_TRIGGER: &str = "ae_events_emit_changed";

/// A yes/no question to the catalog (no answer counts as no).
fn catalog_says(query: &str, arguments: &[pgrx::datum::DatumWithOid<'_>]) -> bool {
    Spi::get_one_with_args::<bool>(query, arguments)
        .ok()
        .flatten()
        .unwrap_or(false)
}

fn table_exists(name: &str) -> bool {
    catalog_says(
        "SELECT pg_catalog.to_regclass($1) IS NOT NULL",
        &[name.into()],
    )
}

fn function_exists(signature: &str) -> bool {
    catalog_says(
        "SELECT pg_catalog.to_regprocedure($1) IS NOT NULL",
        &[signature.into()],
    )
}

fn trigger_exists(table: &str, trigger: &str) -> bool {
    catalog_says(
        "SELECT EXISTS (SELECT FROM pg_catalog.pg_trigger AS t
                         WHERE t.tgrelid OPERATOR(pg_catalog.=) pg_catalog.to_regclass($1)
                           AND t.tgname OPERATOR(pg_catalog.=) $2)",
        &[table.into(), trigger.into()],
    )
}

/// CREATE EXTENSION runs its script with `client_min_messages = warning`; the NOTICE that the
/// contract promises is raised with the client's threshold lowered to `notice` for that moment.
fn notice_even_during_create_extension(message: &str) {
    let message = crate::errors::prefixed(message);
    // SAFETY: reads a backend global.
    if unsafe { pg_sys::creating_extension } {
        let lowered = settings::ScopedSetting::set(c"client_min_messages", c"notice");
        ereport!(
            PgLogLevel::NOTICE,
            PgSqlErrorCode::ERRCODE_SUCCESSFUL_COMPLETION,
            message.as_str()
        );
        lowered.end();
    } else {
        ereport!(
            PgLogLevel::NOTICE,
            PgSqlErrorCode::ERRCODE_SUCCESSFUL_COMPLETION,
            message.as_str()
        );
    }
}

fn run_ddl(table: &str, statement: &str) {
    if let Err(error) = Spi::run(statement) {
        crate::errors::raise(
            PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
            format!("cannot change the triggers of {table}: {error}"),
            Some(statement.to_owned()),
        );
    }
}

/// Create a trigger unless one of that name is on the table.
fn ensure_trigger(table: &str, name: &str, definition: impl FnOnce() -> String) {
    if !trigger_exists(table, name) {
        run_ddl(table, &definition());
    }
}

/// The commit-time triggers queue one deferred event per statement, not one per row
/// (`capture::_emit_needed`). The install script of an earlier release (run with this library)
/// has no such function: its triggers get the condition with the update
/// (sql/upgrade/ae_events--0.7.0--0.7.1.sql).
fn emit_condition() -> &'static str {
    if function_exists("ae_events._emit_needed()") {
        "WHEN (ae_events._emit_needed()) "
    } else {
        ""
    }
}

/// Attach the triggers to `ti.instance` and to every other source table that exists.
/// Idempotent. When `ti.instance` does not exist yet, a NOTICE says so and nothing changes;
/// returns whether the triggers are attached to it. A NOTICE names other source tables that do
/// not exist (their changes emit nothing until `attach()` runs again after they are created).
#[pg_extern(volatile, parallel_unsafe)]
fn attach() -> bool {
    if !table_exists("ti.instance") {
        notice_even_during_create_extension(
            "table ti.instance does not exist yet; no events until SELECT ae_events.attach(); is run after it is created",
        );
        return false;
    }
    ensure_trigger("ti.instance", CAPTURE_CREATED_TRIGGER, || {
        format!(
            "CREATE TRIGGER {CAPTURE_CREATED_TRIGGER} AFTER INSERT ON ti.instance
                 FOR EACH ROW EXECUTE FUNCTION ae_events.capture_instance_insert()"
        )
    });
    let when = emit_condition();
    ensure_trigger("ti.instance", EMIT_CREATED_TRIGGER, || {
        format!(
            "CREATE CONSTRAINT TRIGGER {EMIT_CREATED_TRIGGER} AFTER INSERT ON ti.instance
                 DEFERRABLE INITIALLY DEFERRED
                 FOR EACH ROW {when}EXECUTE FUNCTION ae_events.emit_pending_events()"
        )
    });
    // The install script of an earlier release (run with this library by CREATE EXTENSION ...
    // VERSION or an update path) has no capture_change(): its triggers come with the update.
    if !function_exists("ae_events.capture_change()") {
        return true;
    }
    let mut missing = Vec::new();
    for source in SOURCES {
        let table = source.table();
        if !table_exists(table) {
            missing.push(table);
            continue;
        }
        // Deleting an instance drops its version state, so ti.instance also reports DELETEs.
        let operations = match source {
            Source::Instance => "UPDATE OR DELETE",
            _ => source.operations(),
        };
        ensure_trigger(table, CAPTURE_CHANGED_TRIGGER, || {
            format!(
                "CREATE TRIGGER {CAPTURE_CHANGED_TRIGGER} AFTER {operations} ON {table}
                     FOR EACH ROW EXECUTE FUNCTION ae_events.capture_change('{table}')"
            )
        });
        ensure_trigger(table, EMIT_CHANGED_TRIGGER, || {
            format!(
                "CREATE CONSTRAINT TRIGGER {EMIT_CHANGED_TRIGGER} AFTER {operations} ON {table}
                     DEFERRABLE INITIALLY DEFERRED
                     FOR EACH ROW {when}EXECUTE FUNCTION ae_events.emit_pending_events()"
            )
        });
    }
    grant_reads_to_snapshot_role(true);
    notice_owners_other_than_the_dba();
    if !missing.is_empty() {
        notice_even_during_create_extension(&format!(
            "source tables {} do not exist; their changes emit no updated events until SELECT ae_events.attach(); is run after they are created",
            missing.join(", ")
        ));
    }
    true
}

/// The role the pass reads the source tables as (`privileges.rs`) gets SELECT on each that exists
/// and USAGE on its schema (`grant`), or loses them again (detach).
fn grant_reads_to_snapshot_role(grant: bool) {
    if !catalog_says(
        "SELECT pg_catalog.to_regrole('ae_events_snapshot') IS NOT NULL",
        &[],
    ) {
        return; // the install script of an earlier release: its update creates the role
    }
    // GRANTs run by an extension script are recorded as the extension's initial privileges,
    // which pg_dump leaves out; these are ordinary grants on the application's tables, to be
    // dumped with them (pg_restore runs CREATE EXTENSION before the tables exist).
    // SAFETY: a backend global, restored below; an error aborts the script, which resets it.
    let creating_extension = unsafe { pg_sys::creating_extension };
    unsafe { pg_sys::creating_extension = false };
    for source in SOURCES {
        let table = source.table();
        if !table_exists(table) {
            continue;
        }
        let schema = table.split('.').next().unwrap_or(table);
        let statement = if grant {
            format!(
                "GRANT USAGE ON SCHEMA {schema} TO ae_events_snapshot;
                 GRANT SELECT ON {table} TO ae_events_snapshot"
            )
        } else {
            format!(
                "REVOKE SELECT ON {table} FROM ae_events_snapshot;
                 REVOKE USAGE ON SCHEMA {schema} FROM ae_events_snapshot"
            )
        };
        run_ddl(table, &statement);
    }
    // SAFETY: as above.
    unsafe { pg_sys::creating_extension = creating_extension };
}

/// Remove the triggers from `ti.instance` and the other source tables (no events from then on),
/// and the snapshot role's SELECT on them. Idempotent; returns whether `ti.instance` exists.
#[pg_extern(volatile, parallel_unsafe)]
fn detach() -> bool {
    for source in SOURCES {
        let table = source.table();
        if !table_exists(table) {
            continue;
        }
        let mut names = vec![CAPTURE_CHANGED_TRIGGER, EMIT_CHANGED_TRIGGER];
        if source == Source::Instance {
            names.extend([CAPTURE_CREATED_TRIGGER, EMIT_CREATED_TRIGGER]);
        }
        for name in names {
            run_ddl(table, &format!("DROP TRIGGER IF EXISTS {name} ON {table}"));
        }
    }
    grant_reads_to_snapshot_role(false);
    table_exists("ti.instance")
}

/// A source table as `source_owners()` describes it.
struct SourceOwner {
    table: &'static str,
    owner: Option<pg_sys::Oid>,
    owner_is_dba: bool,
    can_read_all_sources: bool,
    meaning: &'static str,
}

fn source_owner(source: Source) -> SourceOwner {
    let table = source.table();
    let relation = sources::table_oid(source);
    let owner = isolation::table_owner(relation);
    let Some(role) = owner else {
        return SourceOwner {
            table,
            owner: None,
            owner_is_dba: false,
            can_read_all_sources: false,
            meaning: "does not exist: changes to it emit nothing until it is created and SELECT ae_events.attach(); runs",
        };
    };
    let owner_is_dba = isolation::is_dba(role);
    let can_read_all_sources = isolation::can_read_all_sources(role);
    let meaning = if owner_is_dba {
        "owned by the DBA: functions in its index predicates and expressions run inside the pass, as ae_events_snapshot"
    } else if can_read_all_sources {
        "its owner can read every source table: its functions run inside the pass, as ae_events_snapshot, and learn nothing new; its row security policies do not apply to the pass"
    } else {
        "its owner cannot read every source table: the pass refuses to run its owner's functions (a write whose pass would run one fails with 42501) and ignores its row security policies"
    };
    SourceOwner {
        table,
        owner,
        owner_is_dba,
        can_read_all_sources,
        meaning,
    }
}

/// One row per source table: its owner, whether that is the DBA (a superuser or the extension's
/// owner), whether the owner can read every source table, and what that means for code the
/// owner puts on it (docs/security.md, section 1). NULL owner: the table does not exist.
#[pg_extern(stable, parallel_safe)]
#[allow(clippy::type_complexity)]
fn source_owners() -> TableIterator<
    'static,
    (
        name!(source_table, String),
        name!(owner, Option<String>),
        name!(owner_is_dba, Option<bool>),
        name!(can_read_all_sources, Option<bool>),
        name!(meaning, String),
    ),
> {
    let rows: Vec<_> = SOURCES
        .into_iter()
        .map(|source| {
            let row = source_owner(source);
            let exists = row.owner.is_some();
            (
                row.table.to_owned(),
                row.owner.map(isolation::role_name),
                exists.then_some(row.owner_is_dba),
                exists.then_some(row.can_read_all_sources),
                row.meaning.to_owned(),
            )
        })
        .collect();
    TableIterator::new(rows)
}

/// attach() names the source tables whose owner is not the DBA, and what the pass does with
/// their owners' code.
fn notice_owners_other_than_the_dba() {
    let (readers, others): (Vec<SourceOwner>, Vec<SourceOwner>) = SOURCES
        .into_iter()
        .map(source_owner)
        .filter(|row| row.owner.is_some() && !row.owner_is_dba)
        .partition(|row| row.can_read_all_sources);
    let describe = |rows: &[SourceOwner]| {
        rows.iter()
            .map(|row| {
                let owner = row.owner.map(isolation::role_name).unwrap_or_default();
                format!("{} (owner {owner})", row.table)
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    if !others.is_empty() {
        notice_even_during_create_extension(&format!(
            "source tables {} belong to roles that cannot read every source table: the commit-time pass refuses to run their functions (a write whose pass would run one fails with 42501) and does not apply their row security policies; see SELECT * FROM ae_events.source_owners(); and docs/security.md",
            describe(&others)
        ));
    }
    if !readers.is_empty() {
        notice_even_during_create_extension(&format!(
            "source tables {} belong to roles other than the DBA that can read every source table: their functions run inside the commit-time pass (they learn nothing new) and their row security policies do not apply to it; see SELECT * FROM ae_events.source_owners(); and docs/security.md",
            describe(&readers)
        ));
    }
}
