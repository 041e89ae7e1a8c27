//! Deferred fan-outs: the updated events of a change that reaches many instances (renaming an
//! assessment taken by 100,000 candidates) are written after the change's commit, a page of
//! instances per transaction, instead of inside it.
//!
//! Why it is safe: at its commit the changing transaction still takes the interlock's exclusive
//! lock (`interlock.rs`), but holds it only while it records the fan-out in `ae_events.fanouts`.
//! A creation that read the old row therefore committed before that record did; the instances
//! are looked up later (`run_fanouts`), with a snapshot taken after the record committed, so the
//! lookup finds every such instance. A creation that comes after the change reads the new row.
//! Each page locks its instances' versions and reads their snapshots with the latest committed
//! state, as any pass does, so an instance whose last event already shows the change (its own
//! update, a later fan-out) gets no second event: every instance's last event equals
//! `ae_events.snapshot(id)` once the fan-outs recorded so far have run.
//!
//! This module records them (in the pass); `fanout_runner.rs` runs them.

use crate::errors::EventError;
use crate::rows::{int8_array, with_kept_plan, Connection, KeptPlan};
use crate::sources::Key;
use pgrx::prelude::*;
use std::cell::RefCell;
use std::collections::BTreeMap;

const RECORD: &str = "
INSERT INTO ae_events.fanouts (source_table, row_ids, recorded_by)
VALUES ($1, $2, pg_catalog.pg_current_xact_id())";

thread_local! {
    static RECORD_PLAN: RefCell<Option<KeptPlan>> = const { RefCell::new(None) };
}

/// Record the changes of `touched` that reach other instances (all but the instances' own) as
/// deferred fan-outs, one row per table. Runs in the pass, as the extension's owner.
pub fn record(
    connection: Connection<'_>,
    touched: &BTreeMap<Key, Vec<i64>>,
) -> Result<(), EventError> {
    for (&key, ids) in touched.iter().filter(|(key, _)| **key != Key::Instance) {
        let table = key.describe().into_datum();
        with_kept_plan(
            connection,
            &RECORD_PLAN,
            RECORD,
            &[pg_sys::TEXTOID, pg_sys::INT8ARRAYOID],
            |plan| {
                let arguments = vec![
                    table.ok_or_else(|| EventError::internal("a null table name"))?,
                    int8_array(ids)?,
                ];
                plan.run_freeing(connection, arguments).map(drop)
            },
        )
        .map_err(|error| error.context("cannot record a deferred fan-out"))?;
    }
    Ok(())
}
