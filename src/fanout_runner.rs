//! Running deferred fan-outs (`fanout.rs` records them): `ae_events.run_fanouts()` takes the
//! oldest recorded fan-out no other session is running, finds its instances with the latest
//! committed state (the first step) and stores them in pages of 1,000, then gives one page per
//! call its updated events through the commit-time pass's own code (`emitter.rs`).

use crate::errors::EventError;
use crate::lookup;
use crate::privileges::{ExtensionCatalog, OwnerPrivileges, SnapshotReader};
use crate::rows::{int8_array, with_kept_plan, Connection, KeptPlan};
use crate::sources::Key;
use crate::{emitter, isolation};
use pgrx::prelude::*;
use std::cell::RefCell;

/// Instances per page: one call of `run_fanouts`, one transaction of the caller's.
const PAGE_SIZE: usize = 1000;

const NEXT_FANOUT: &str = "
SELECT f.id, f.source_table, f.row_ids, f.instances_found
  FROM ae_events.fanouts AS f
 ORDER BY f.id
 LIMIT 1
   FOR UPDATE SKIP LOCKED";

const ADD_PAGE: &str = "
INSERT INTO ae_events.fanout_pages (fanout_id, page, instance_ids) VALUES ($1, $2, $3)";

const FOUND: &str = "
UPDATE ae_events.fanouts SET instances_found = $2 WHERE id OPERATOR(pg_catalog.=) $1";

const TAKE_PAGE: &str = "
DELETE FROM ae_events.fanout_pages AS p
 WHERE p.fanout_id OPERATOR(pg_catalog.=) $1
   AND p.page OPERATOR(pg_catalog.=) (SELECT min(q.page) FROM ae_events.fanout_pages AS q
                                       WHERE q.fanout_id OPERATOR(pg_catalog.=) $1)
RETURNING p.instance_ids";

const DONE: &str = "
UPDATE ae_events.fanouts
   SET instances_done = instances_done OPERATOR(pg_catalog.+) $2
 WHERE id OPERATOR(pg_catalog.=) $1";

const FINISH: &str = "
DELETE FROM ae_events.fanouts AS f
 WHERE f.id OPERATOR(pg_catalog.=) $1
   AND NOT EXISTS (SELECT FROM ae_events.fanout_pages AS p
                    WHERE p.fanout_id OPERATOR(pg_catalog.=) $1)";

thread_local! {
    static NEXT_PLAN: RefCell<Option<KeptPlan>> = const { RefCell::new(None) };
    static ADD_PAGE_PLAN: RefCell<Option<KeptPlan>> = const { RefCell::new(None) };
    static FOUND_PLAN: RefCell<Option<KeptPlan>> = const { RefCell::new(None) };
    static TAKE_PAGE_PLAN: RefCell<Option<KeptPlan>> = const { RefCell::new(None) };
    static DONE_PLAN: RefCell<Option<KeptPlan>> = const { RefCell::new(None) };
    static FINISH_PLAN: RefCell<Option<KeptPlan>> = const { RefCell::new(None) };
}

/// A recorded fan-out, locked by this transaction.
struct Fanout {
    id: i64,
    key: Key,
    row_ids: Vec<i64>,
    expanded: bool,
}

/// What one step did.
enum Step {
    /// No fan-out waits (or every one is being run by another session).
    Idle,
    /// A fan-out's instances were found and paged (how many).
    Expanded(i64),
    /// A page was taken: these instances get their events now.
    Page(Vec<i64>),
}

/// Run the next step of the oldest deferred fan-out that no other session is running: find its
/// instances (the first time), or give the next page of up to 1,000 instances their updated
/// events. Returns how many instances the step found or handled; 0 when no fan-out waits. The
/// events commit with the calling transaction, so call it in a loop, one transaction per call,
/// until it returns 0 (the relays do).
#[pg_extern(volatile, parallel_unsafe)]
fn run_fanouts() -> i64 {
    let catalog = ExtensionCatalog::current();
    let _privileges = OwnerPrivileges::enter(catalog.owner);
    isolation::require_tables();
    loop {
        let step = Spi::connect_mut(|client| step(Connection::of(client), &catalog));
        match step {
            Ok(Step::Idle) => return 0,
            // A fan-out that reaches no instance any more is gone: try the next one.
            Ok(Step::Expanded(0)) => continue,
            Ok(Step::Expanded(found)) => return found,
            Ok(Step::Page(instances)) => {
                emitter::update_instances(&instances);
                return i64::try_from(instances.len()).unwrap_or(i64::MAX);
            }
            Err(error) => error.report(),
        }
    }
}

fn step(connection: Connection<'_>, catalog: &ExtensionCatalog) -> Result<Step, EventError> {
    let Some(fanout) = next_fanout(connection)? else {
        return Ok(Step::Idle);
    };
    if !fanout.expanded {
        return expand(connection, catalog, &fanout).map(Step::Expanded);
    }
    let instances = take_page(connection, &fanout)?;
    Ok(Step::Page(instances))
}

fn next_fanout(connection: Connection<'_>) -> Result<Option<Fanout>, EventError> {
    with_kept_plan(connection, &NEXT_PLAN, NEXT_FANOUT, &[], |plan| {
        let mut fanout = None;
        plan.run(connection, &mut [])?.for_each(|row| {
            let id: Option<i64> = row.get(1).map_err(EventError::internal)?;
            let table: Option<String> = row.get(2).map_err(EventError::internal)?;
            let row_ids = read_int8_array(row, 3)?;
            let found: Option<i64> = row.get(4).map_err(EventError::internal)?;
            let (Some(id), Some(table)) = (id, table) else {
                return Err(EventError::internal("a fan-out without id or table"));
            };
            let key = Key::from_table(&table)
                .filter(|key| *key != Key::Instance)
                .ok_or_else(|| {
                    EventError::internal(format!(
                        "ae_events.fanouts {id} names \"{table}\", which is no source table"
                    ))
                })?;
            fanout = Some(Fanout {
                id,
                key,
                row_ids,
                expanded: found.is_some(),
            });
            Ok(())
        })?;
        Ok(fanout)
    })
    .map_err(|error| error.context("cannot read ae_events.fanouts"))
}

/// Find the fan-out's instances with the latest committed state, as `ae_events_snapshot`, and
/// store them in pages (a page in memory at a time). Returns how many there are; a fan-out with
/// none is removed.
fn expand(
    connection: Connection<'_>,
    catalog: &ExtensionCatalog,
    fanout: &Fanout,
) -> Result<i64, EventError> {
    let mut cursor = {
        let _reader = SnapshotReader::enter(catalog);
        lookup::open_affected_instances(connection, fanout.key, &fanout.row_ids)?
    };
    let mut found = 0i64;
    let mut page_number = 0i32;
    loop {
        let mut page = Vec::with_capacity(PAGE_SIZE);
        {
            // Fetched as the reader too: any code a row's fetch could run is the pass's.
            let _reader = SnapshotReader::enter(catalog);
            cursor.fetch(PAGE_SIZE).for_each(|row| {
                if let Some(id) = row.get::<i64>(1).map_err(EventError::internal)? {
                    page.push(id);
                }
                Ok(())
            })?;
        }
        if page.is_empty() {
            break;
        }
        found += page.len() as i64;
        page_number += 1;
        with_kept_plan(
            connection,
            &ADD_PAGE_PLAN,
            ADD_PAGE,
            &[pg_sys::INT8OID, pg_sys::INT4OID, pg_sys::INT8ARRAYOID],
            |plan| {
                let mut arguments = vec![
                    pg_sys::Datum::from(fanout.id),
                    pg_sys::Datum::from(page_number),
                    int8_array(&page)?,
                ];
                let result = plan.run(connection, &mut arguments);
                // SAFETY: the array was palloc'd for this run.
                unsafe { pg_sys::pfree(arguments[2].cast_mut_ptr()) };
                result.map(drop)
            },
        )?;
    }
    drop(cursor);
    run_bookkeeping(connection, &FOUND_PLAN, FOUND, &[fanout.id, found])?;
    if found == 0 {
        run_bookkeeping(connection, &FINISH_PLAN, FINISH, &[fanout.id])?;
    }
    Ok(found)
}

/// Take the fan-out's next page (and remove the fan-out with its last page).
fn take_page(connection: Connection<'_>, fanout: &Fanout) -> Result<Vec<i64>, EventError> {
    let mut instances = Vec::new();
    with_kept_plan(
        connection,
        &TAKE_PAGE_PLAN,
        TAKE_PAGE,
        &[pg_sys::INT8OID],
        |plan| {
            plan.run(connection, &mut [pg_sys::Datum::from(fanout.id)])?
                .for_each(|row| {
                    instances = read_int8_array(row, 1)?;
                    Ok(())
                })
        },
    )?;
    let done = i64::try_from(instances.len()).unwrap_or(i64::MAX);
    run_bookkeeping(connection, &DONE_PLAN, DONE, &[fanout.id, done])?;
    run_bookkeeping(connection, &FINISH_PLAN, FINISH, &[fanout.id])?;
    Ok(instances)
}

/// Run one of the bookkeeping statements, whose parameters are all `int8` (the fan-out's id
/// first).
fn run_bookkeeping(
    connection: Connection<'_>,
    slot: &'static std::thread::LocalKey<RefCell<Option<KeptPlan>>>,
    sql: &str,
    arguments: &[i64],
) -> Result<(), EventError> {
    let types = vec![pg_sys::INT8OID; arguments.len()];
    with_kept_plan(connection, slot, sql, &types, |plan| {
        let mut arguments: Vec<pg_sys::Datum> = arguments
            .iter()
            .map(|&value| pg_sys::Datum::from(value))
            .collect();
        plan.run(connection, &mut arguments).map(drop)
    })
}

/// An `int8[]` column without NULL elements.
fn read_int8_array(row: &crate::rows::Row, ordinal: usize) -> Result<Vec<i64>, EventError> {
    let datum: Option<crate::rows::Int8Array> = row.get(ordinal).map_err(EventError::internal)?;
    let Some(crate::rows::Int8Array(ids)) = datum else {
        return Ok(Vec::new());
    };
    ids.into_iter()
        .map(|id| id.ok_or_else(|| EventError::internal("a NULL id in a fan-out")))
        .collect()
}
