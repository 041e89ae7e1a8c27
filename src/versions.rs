//! Versioned snapshots: `ae_events.instance_state` keeps, per instance, the version of its last
//! event and a digest of that event's payload. The digest tells a change that leaves the snapshot
//! identical (no event); the row lock taken on it before a snapshot is read orders the events of
//! one instance: a second transaction waits for the first to commit, then reads the newer rows
//! and takes the next version, so versions grow by one, without gaps, in commit order.
//! The table is in `pg_extension_config_dump`, so the state survives `pg_dump`/`pg_restore`.

use crate::errors::EventError;
use crate::outbox::direct::{Constraints, DirectTable};
use crate::rows::{int8_array, Connection, KeptPlan};
use crate::settings::ScopedSetting;
use pgrx::prelude::*;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

/// The last event of an instance, as recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct State {
    /// 0: no event yet (an instance that existed before the extension was installed).
    pub version: i32,
    pub digest: Option<Vec<u8>>,
}

/// A new event's state, to record once it is written.
pub struct NewState {
    pub instance_id: i64,
    pub version: i32,
    pub digest: Vec<u8>,
}

const LOCK_STATES: &str = "
SELECT s.instance_id::pg_catalog.int8, s.snapshot_version::pg_catalog.int4,
       s.snapshot_digest::pg_catalog.bytea
  FROM ae_events.instance_state AS s
 WHERE s.instance_id OPERATOR(pg_catalog.=) ANY ($1)
 ORDER BY s.instance_id
   FOR UPDATE";

/// Rows for instances without one, so that there is a row to lock; a concurrent transaction
/// adding the same row makes this wait for it and then do nothing.
const ADD_MISSING_STATES: &str = "
INSERT INTO ae_events.instance_state (instance_id, snapshot_version, snapshot_digest)
SELECT m.id, 0, NULL FROM pg_catalog.unnest($1) AS m(id) ORDER BY m.id
    ON CONFLICT (instance_id) DO NOTHING";

const RECORD_STATES: &str = "
INSERT INTO ae_events.instance_state (instance_id, snapshot_version, snapshot_digest)
SELECT n.id, n.version, n.digest
  FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2), pg_catalog.unnest($3))
       AS n(id, version, digest)
    ON CONFLICT (instance_id) DO UPDATE
   SET snapshot_version = excluded.snapshot_version, snapshot_digest = excluded.snapshot_digest";

/// The same for instances whose rows this transaction has locked (`lock`): a plain update, which
/// does not lock each row a second time as `ON CONFLICT DO UPDATE` does.
const UPDATE_LOCKED_STATES: &str = "
UPDATE ae_events.instance_state AS s
   SET snapshot_version = n.version, snapshot_digest = n.digest
  FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2), pg_catalog.unnest($3))
       AS n(id, version, digest)
 WHERE s.instance_id OPERATOR(pg_catalog.=) n.id";

/// Whether any of these instances has a state row (created instances seldom do: an id used
/// again, or rows left from while the triggers were detached).
const ANY_STATE: &str = "
SELECT EXISTS (SELECT FROM ae_events.instance_state AS s
                WHERE s.instance_id OPERATOR(pg_catalog.=) ANY ($1))";

/// `instance_state`'s columns, in the order `record` writes them directly.
const STATE_COLUMNS: [&std::ffi::CStr; 3] =
    [c"instance_id", c"snapshot_version", c"snapshot_digest"];

/// Fewer created instances than this record their versions with `RECORD_STATES` alone.
const FEW_STATES: usize = 16;

const FORGET_STATES: &str = "
DELETE FROM ae_events.instance_state AS s WHERE s.instance_id OPERATOR(pg_catalog.=) ANY ($1)";

struct Plans {
    lock: KeptPlan,
    add_missing: KeptPlan,
    record: KeptPlan,
    update_locked: KeptPlan,
    any: KeptPlan,
    forget: KeptPlan,
}

thread_local! {
    static PLANS: RefCell<Option<Rc<Plans>>> = const { RefCell::new(None) };
}

fn plans(connection: Connection<'_>) -> Result<Rc<Plans>, EventError> {
    if let Some(plans) = PLANS.with_borrow(|plans| plans.clone()) {
        return Ok(plans);
    }
    crate::privileges::ensure_current_sql_objects()?;
    let ids = [pg_sys::INT8ARRAYOID];
    let context = |error: EventError| error.context("cannot prepare the instance state queries");
    let plans = Rc::new(Plans {
        lock: KeptPlan::prepare(connection, LOCK_STATES, &ids).map_err(context)?,
        add_missing: KeptPlan::prepare(connection, ADD_MISSING_STATES, &ids).map_err(context)?,
        record: KeptPlan::prepare(
            connection,
            RECORD_STATES,
            &[
                pg_sys::INT8ARRAYOID,
                pg_sys::INT4ARRAYOID,
                pg_sys::BYTEAARRAYOID,
            ],
        )
        .map_err(context)?,
        update_locked: KeptPlan::prepare(
            connection,
            UPDATE_LOCKED_STATES,
            &[
                pg_sys::INT8ARRAYOID,
                pg_sys::INT4ARRAYOID,
                pg_sys::BYTEAARRAYOID,
            ],
        )
        .map_err(context)?,
        any: KeptPlan::prepare(connection, ANY_STATE, &ids).map_err(context)?,
        forget: KeptPlan::prepare(connection, FORGET_STATES, &ids).map_err(context)?,
    });
    PLANS.with_borrow_mut(|slot| *slot = Some(Rc::clone(&plans)));
    Ok(plans)
}

fn read_locked(
    connection: Connection<'_>,
    plan: &KeptPlan,
    instance_ids: &[i64],
    states: &mut HashMap<i64, State>,
) -> Result<(), EventError> {
    plan.run_freeing(connection, vec![int8_array(instance_ids)?])?
        .for_each(|row| {
            let id = row.get::<i64>(1).map_err(EventError::internal)?;
            let version = row.get::<i32>(2).map_err(EventError::internal)?;
            let digest = row.get::<Vec<u8>>(3).map_err(EventError::internal)?;
            if let (Some(id), Some(version)) = (id, version) {
                states.insert(id, State { version, digest });
            }
            Ok(())
        })
}

/// Lock the state rows of these instances (ascending, so that two passes cannot deadlock) and
/// return them; instances without a row get one at version 0. Under READ COMMITTED a lock held
/// by a concurrent transaction makes this wait until it commits, and the rows returned are the
/// newest; the snapshots read after this see that transaction's changes.
pub fn lock(
    connection: Connection<'_>,
    instance_ids: &[i64],
) -> Result<HashMap<i64, State>, EventError> {
    by_key(|| lock_by_key(connection, instance_ids))
}

/// Run `work` (its plans are prepared, and re-planned, then) with lookups by instance id planned
/// on the primary key. The plans are generic and kept for the session: one made while
/// `instance_state` was small (a new database, a new extension) would otherwise scan the whole
/// table at every use once it has grown (the pages of a deferred fan-out of 100,000 instances
/// took 65 s instead of 8, each `lock` scanning every row).
fn by_key<T>(work: impl FnOnce() -> T) -> T {
    ScopedSetting::around(&[(c"enable_seqscan", c"off")], work)
}

fn lock_by_key(
    connection: Connection<'_>,
    instance_ids: &[i64],
) -> Result<HashMap<i64, State>, EventError> {
    let plans = plans(connection)?;
    let context = |error: EventError| error.context("cannot lock ae_events.instance_state");
    let mut states = HashMap::with_capacity(instance_ids.len());
    read_locked(connection, &plans.lock, instance_ids, &mut states).map_err(context)?;
    let missing: Vec<i64> = instance_ids
        .iter()
        .copied()
        .filter(|id| !states.contains_key(id))
        .collect();
    if !missing.is_empty() {
        plans
            .add_missing
            .run_freeing(connection, vec![int8_array(&missing)?])
            .map_err(context)?;
        read_locked(connection, &plans.lock, &missing, &mut states).map_err(context)?;
    }
    Ok(states)
}

/// Whose state rows `record` writes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Rows {
    /// Created instances: their rows may not exist yet.
    MaybeMissing,
    /// Instances whose rows `lock` returned in this transaction.
    Locked,
}

/// Record the versions and digests of the events just written.
pub fn record(
    connection: Connection<'_>,
    new_states: &[NewState],
    rows: Rows,
) -> Result<(), EventError> {
    if new_states.is_empty() {
        return Ok(());
    }
    by_key(|| record_by_key(connection, new_states, rows))
}

fn record_by_key(
    connection: Connection<'_>,
    new_states: &[NewState],
    rows: Rows,
) -> Result<(), EventError> {
    let plans = plans(connection)?;
    let plan = match rows {
        Rows::MaybeMissing => &plans.record,
        Rows::Locked => &plans.update_locked,
    };
    let ids: Vec<i64> = new_states.iter().map(|state| state.instance_id).collect();
    if rows == Rows::MaybeMissing
        && new_states.len() >= FEW_STATES
        && insert_new_rows(connection, &plans, &ids, new_states)?
    {
        return Ok(());
    }
    let versions: Vec<i32> = new_states.iter().map(|state| state.version).collect();
    let digests: Vec<&[u8]> = new_states
        .iter()
        .map(|state| state.digest.as_slice())
        .collect();
    let arguments = [versions.into_datum(), digests.into_datum()];
    let [Some(versions), Some(digests)] = arguments else {
        return Err(EventError::internal("a null state argument"));
    };
    plan.run_freeing(connection, vec![int8_array(&ids)?, versions, digests])
        .map(drop)
        .map_err(|error| error.context("cannot record the versions in ae_events.instance_state"))
}

/// The rows of created instances, when none of them has one yet, written in batches as the
/// outbox rows are (`outbox::direct`): without `ON CONFLICT`'s speculative insertion, which costs
/// an executor row, a speculative lock and an extra WAL record per row. The unique index is
/// checked as for an `INSERT` (a concurrent transaction adding one of these rows makes it wait,
/// then fail if that row stayed). Returns false, having written nothing, when a row exists or
/// the table is not plain (then `RECORD_STATES` writes them all).
fn insert_new_rows(
    connection: Connection<'_>,
    plans: &Plans,
    ids: &[i64],
    new_states: &[NewState],
) -> Result<bool, EventError> {
    let context =
        |error: EventError| error.context("cannot record the versions in ae_events.instance_state");
    let mut any = false;
    plans
        .any
        .run_freeing(connection, vec![int8_array(ids)?])
        .map_err(context)?
        .for_each(|row| {
            any = row.get::<bool>(1).map_err(EventError::internal)? == Some(true);
            Ok(())
        })?;
    if any {
        return Ok(false);
    }
    let table = crate::privileges::extension_table(c"instance_state");
    if table == pg_sys::InvalidOid {
        return Ok(false);
    }
    let Some(target) = DirectTable::open(table, &STATE_COLUMNS, Constraints::Check) else {
        return Ok(false);
    };
    let mut states = new_states.iter();
    target
        .insert_all(
            || {
                states.next().map(|state| {
                    let digest = state
                        .digest
                        .as_slice()
                        .into_datum()
                        .ok_or_else(|| EventError::internal("a null digest"))?;
                    Ok([
                        pg_sys::Datum::from(state.instance_id),
                        pg_sys::Datum::from(state.version),
                        digest,
                    ])
                })
            },
            || {},
        )
        .map_err(context)?;
    Ok(true)
}

/// Drop the state of instances that no longer exist.
pub fn forget(connection: Connection<'_>, instance_ids: &[i64]) -> Result<(), EventError> {
    if instance_ids.is_empty() {
        return Ok(());
    }
    by_key(|| {
        plans(connection)?
            .forget
            .run_freeing(connection, vec![int8_array(instance_ids)?])
            .map(drop)
    })
    .map_err(|error| error.context("cannot drop states from ae_events.instance_state"))
}
