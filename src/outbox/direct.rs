//! Writing many rows as `COPY` does: `table_multi_insert` of a batch of rows (one WAL
//! record and one buffer lock per page instead of per row, no executor per row), then each
//! row's index entries with `ExecInsertIndexTuples` (so unique indexes are checked as for an
//! `INSERT`). Used for the outbox rows and for the version rows of created instances
//! (`versions.rs`).
//!
//! Only when an `INSERT` would do nothing more: the table is a plain table with no triggers, no
//! rules, no row security and no generated columns, its columns are the ones written (any column
//! a DBA added could have a default to fill), and the current role (the extension's owner, during
//! the pass) may insert into it. CHECK and NOT NULL constraints are refused (the outbox) or
//! evaluated for each row as an `INSERT` does (`Constraints`). Otherwise the rows go through an
//! `INSERT`, which does all of that.

use super::OutboxRow;
use crate::errors::EventError;
use pgrx::prelude::*;
use std::ffi::CStr;

/// Rows per `table_multi_insert`: enough to fill pages (a few kB per outbox row after
/// compression), few enough that a batch's rows and their copies stay small.
const BATCH: usize = 64;

/// What the direct writer does with a table's CHECK and NOT NULL constraints.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Constraints {
    /// A table with CHECK constraints is left to `INSERT` (NOT NULL columns always get values).
    Refuse,
    /// Each row is checked as an `INSERT` checks it (`ExecConstraints`).
    Check,
}

/// The outbox's columns, in the order of `OutboxRow`.
const COLUMNS: [&CStr; 10] = [
    c"id",
    c"event_id",
    c"subscription_key",
    c"event_type",
    c"aggregate_type",
    c"aggregate_id",
    c"snapshot_version",
    c"payload",
    c"occurred_at",
    c"txid",
];

/// The outbox, open for direct inserts.
pub struct DirectTarget {
    table: DirectTable<10>,
}

impl DirectTarget {
    /// Open the outbox for direct inserts, or None if an `INSERT` would do more than they do.
    pub fn open(outbox: pg_sys::Oid) -> Option<DirectTarget> {
        DirectTable::open(outbox, &COLUMNS, Constraints::Refuse).map(|table| DirectTarget { table })
    }

    /// Insert every row `next` gives, in batches; closes the outbox (its lock is kept).
    pub fn insert_all(self, mut next: impl FnMut() -> Option<OutboxRow>) -> Result<(), EventError> {
        // SAFETY: reads the transaction state.
        let txid = unsafe { pg_sys::GetTopFullTransactionId().value as i64 };
        self.table.insert_all(
            || {
                next().map(|row| {
                    // The nine values an INSERT passes, then the txid (pg_current_xact_id()
                    // there).
                    let values = super::row_datums(row)?;
                    let mut all = [pg_sys::Datum::from(txid); 10];
                    all[..9].copy_from_slice(&values);
                    Ok(all)
                })
            },
            // An error from here on (a duplicate event_id, say) belongs to the batch, not to the
            // last row produced: the error names the chunk.
            || super::WRITING.set(None),
        )
    }
}

/// A table open for direct inserts of `N` columns.
pub struct DirectTable<const N: usize> {
    relation: pg_sys::Relation,
    /// Attribute index (0-based) of each column written.
    positions: [usize; N],
    natts: usize,
    /// Whether each row is checked with `ExecConstraints` (`Constraints::Check` on a table that
    /// has constraints).
    check_rows: bool,
}

impl<const N: usize> DirectTable<N> {
    /// Open the table for direct inserts of `columns`, or None if an `INSERT` would do more than
    /// they do.
    pub fn open(
        table: pg_sys::Oid,
        columns: &[&CStr; N],
        constraints: Constraints,
    ) -> Option<DirectTable<N>> {
        // SAFETY: the table exists (the pass found it in the catalog); the lock is what an
        // INSERT takes, held to the end of the transaction.
        unsafe {
            let relation = pg_sys::table_open(table, pg_sys::RowExclusiveLock as i32);
            let target = Self::check(relation, columns, constraints);
            if target.is_none() {
                pg_sys::table_close(relation, pg_sys::NoLock as i32);
            }
            target
        }
    }

    unsafe fn check(
        relation: pg_sys::Relation,
        columns: &[&CStr; N],
        constraints: Constraints,
    ) -> Option<DirectTable<N>> {
        let form = &*(*relation).rd_rel;
        let plain = form.relkind == pg_sys::RELKIND_RELATION as std::ffi::c_char
            && (*relation).trigdesc.is_null()
            && (*relation).rd_rules.is_null()
            && !form.relrowsecurity;
        if !plain {
            return None;
        }
        let descriptor = (*relation).rd_att;
        let table_constraints = (*descriptor).constr;
        if !table_constraints.is_null()
            && ((constraints == Constraints::Refuse && (*table_constraints).num_check > 0)
                || (*table_constraints).has_generated_stored)
        {
            return None;
        }
        let may_insert = pg_sys::pg_class_aclcheck(
            form.oid,
            pg_sys::GetUserId(),
            pg_sys::ACL_INSERT as pg_sys::AclMode,
        ) == pg_sys::AclResult::ACLCHECK_OK;
        if !may_insert {
            return None;
        }
        let natts = (*descriptor).natts as usize;
        let mut positions = [usize::MAX; N];
        // pgrx's descriptor wrapper finds the attributes on every major (PostgreSQL 18 moved
        // them behind the compact ones); unchecked: the descriptor belongs to the relation.
        let attributes = pgrx::PgTupleDesc::from_pg_unchecked(descriptor);
        for (index, attribute) in attributes.iter().enumerate() {
            if attribute.attisdropped {
                continue;
            }
            let name = CStr::from_ptr(attribute.attname.data.as_ptr());
            let column = columns.iter().position(|column| *column == name)?;
            if positions[column] != usize::MAX {
                return None;
            }
            positions[column] = index;
        }
        if positions.contains(&usize::MAX) {
            return None;
        }
        Some(DirectTable {
            relation,
            positions,
            natts,
            check_rows: constraints == Constraints::Check && !table_constraints.is_null(),
        })
    }

    /// Insert every row `next` gives (its values, made in the batch's memory), in batches;
    /// `before_insert` runs before each batch is written. Closes the table (its lock is kept).
    pub fn insert_all(
        self,
        mut next: impl FnMut() -> Option<Result<[pg_sys::Datum; N], EventError>>,
        mut before_insert: impl FnMut(),
    ) -> Result<(), EventError> {
        // SAFETY: the relation is open and locked; the executor state, result relation, slots
        // and batch memory are made here and freed below (or with the transaction on an ERROR).
        unsafe {
            let estate = pg_sys::CreateExecutorState();
            let result_relation = pg_sys::palloc0(std::mem::size_of::<pg_sys::ResultRelInfo>())
                .cast::<pg_sys::ResultRelInfo>();
            (*result_relation).type_ = pg_sys::NodeTag::T_ResultRelInfo;
            // No range table: a failed constraint check (ExecConstraints) describes the row
            // from the relation's privileges, as for a relation the executor made internally.
            let range_table_index = if self.check_rows { 0 } else { 1 };
            pg_sys::InitResultRelInfo(
                result_relation,
                self.relation,
                range_table_index,
                std::ptr::null_mut(),
                0,
            );
            pg_sys::ExecOpenIndices(result_relation, false);
            let slots: Vec<*mut pg_sys::TupleTableSlot> = (0..BATCH)
                .map(|_| pg_sys::table_slot_create(self.relation, std::ptr::null_mut()))
                .collect();
            let batch_memory = pg_sys::AllocSetContextCreateExtended(
                pg_sys::CurrentMemoryContext,
                c"ae_events outbox batch".as_ptr(),
                pg_sys::ALLOCSET_DEFAULT_MINSIZE as usize,
                pg_sys::ALLOCSET_DEFAULT_INITSIZE as usize,
                pg_sys::ALLOCSET_DEFAULT_MAXSIZE as usize,
            );
            let command = pg_sys::GetCurrentCommandId(true);
            let mut result = Ok(());
            loop {
                let outer = pg_sys::MemoryContextSwitchTo(batch_memory);
                let mut filled = 0;
                while filled < BATCH {
                    let Some(row) = next() else { break };
                    match row {
                        Ok(values) => self.fill(slots[filled], values),
                        Err(error) => {
                            result = Err(error);
                            break;
                        }
                    }
                    if self.check_rows {
                        pg_sys::ExecConstraints(result_relation, slots[filled], estate);
                    }
                    filled += 1;
                }
                // The insert's own allocations (each row's compressed copy, the WAL record's
                // array) go to the batch's memory too, freed with it below.
                if filled > 0 && result.is_ok() {
                    before_insert();
                    let mut batch = slots[..filled].to_vec();
                    pg_sys::table_multi_insert(
                        self.relation,
                        batch.as_mut_ptr(),
                        filled as i32,
                        command,
                        0,
                        std::ptr::null_mut(),
                    );
                    for &slot in &slots[..filled] {
                        let recheck = insert_index_entries(result_relation, slot, estate);
                        if !recheck.is_null() {
                            pg_sys::list_free(recheck);
                        }
                    }
                }
                for &slot in &slots[..filled] {
                    pg_sys::ExecClearTuple(slot);
                }
                pg_sys::MemoryContextSwitchTo(outer);
                pg_sys::MemoryContextReset(batch_memory);
                if filled < BATCH || result.is_err() {
                    break;
                }
            }
            pg_sys::MemoryContextDelete(batch_memory);
            for slot in slots {
                pg_sys::ExecDropSingleTupleTableSlot(slot);
            }
            pg_sys::ExecCloseIndices(result_relation);
            pg_sys::FreeExecutorState(estate);
            pg_sys::table_close(self.relation, pg_sys::NoLock as i32);
            result
        }
    }

    /// Store one row's values in a virtual slot (allocated in the batch's memory).
    unsafe fn fill(&self, slot: *mut pg_sys::TupleTableSlot, values: [pg_sys::Datum; N]) {
        pg_sys::ExecClearTuple(slot);
        let slot_values = std::slice::from_raw_parts_mut((*slot).tts_values, self.natts);
        let slot_nulls = std::slice::from_raw_parts_mut((*slot).tts_isnull, self.natts);
        slot_nulls.fill(true);
        for (column, value) in values.into_iter().enumerate() {
            let position = self.positions[column];
            slot_values[position] = value;
            slot_nulls[position] = false;
        }
        pg_sys::ExecStoreVirtualTuple(slot);
    }
}

/// A row's entries in every index of the outbox, unique ones checked (duplicates raise the
/// unique violation an INSERT would).
unsafe fn insert_index_entries(
    result_relation: *mut pg_sys::ResultRelInfo,
    slot: *mut pg_sys::TupleTableSlot,
    estate: *mut pg_sys::EState,
) -> *mut pg_sys::List {
    // Up to PostgreSQL 15: (update, noDupErr, specConflict, arbiterIndexes).
    #[cfg(feature = "pg15")]
    return pg_sys::ExecInsertIndexTuples(
        result_relation,
        slot,
        estate,
        false,
        false,
        std::ptr::null_mut(),
        std::ptr::null_mut(),
    );
    // From 16 on also onlySummarizing (false: a new row needs every index's entry).
    #[cfg(any(feature = "pg16", feature = "pg17", feature = "pg18"))]
    return pg_sys::ExecInsertIndexTuples(
        result_relation,
        slot,
        estate,
        false,
        false,
        std::ptr::null_mut(),
        std::ptr::null_mut(),
        false,
    );
}
