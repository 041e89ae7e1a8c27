//! The extension's SPI plans and typed access to their result rows.
//!
//! Plans are prepared once per backend as generic plans (`CURSOR_OPT_GENERIC_PLAN`): the
//! queries run at every commit with different id arrays, and PostgreSQL's default would re-plan
//! them for every execution because a custom plan for a one-element array looks cheaper. Result
//! rows are deformed once each (`heap_deform_tuple`) rather than column by column, or handed
//! over straight from the executor's slot (`for_each_streamed`), and values are read as the
//! types the queries cast them to, checked once per result.

use crate::errors::EventError;
use pgrx::prelude::*;
use std::ffi::CString;
use std::marker::PhantomData;
use std::ptr::NonNull;

/// An open SPI connection, as a value: what needs one takes it as an argument (instead of a
/// comment saying "inside an SPI connection"), and the rows a query returns borrow it, so that
/// they cannot outlive the connection whose memory holds them.
#[derive(Clone, Copy)]
pub struct Connection<'conn> {
    _open: PhantomData<&'conn ()>,
}

impl<'conn> Connection<'conn> {
    /// The connection pgrx opened (`Spi::connect`).
    pub fn of(_client: &'conn pgrx::spi::SpiClient<'_>) -> Connection<'conn> {
        Connection { _open: PhantomData }
    }
}

/// A plan kept for the life of the backend (PostgreSQL's plan cache re-plans it after DDL).
pub struct KeptPlan {
    plan: NonNull<pg_sys::_SPI_plan>,
}

impl KeptPlan {
    /// Prepare `sql` as a generic plan and keep it.
    pub fn prepare(
        _connection: Connection<'_>,
        sql: &str,
        argument_types: &[pg_sys::Oid],
    ) -> Result<KeptPlan, EventError> {
        Self::prepare_with(sql, argument_types, pg_sys::CURSOR_OPT_GENERIC_PLAN as i32)
    }

    /// Prepare and keep `sql`, letting PostgreSQL's plan cache choose custom or generic plans
    /// (for queries whose best plan depends on how many ids they get, such as bubble-up lookups
    /// that fan out from one reference row to thousands of instances).
    pub fn prepare_planned_per_call(
        _connection: Connection<'_>,
        sql: &str,
        argument_types: &[pg_sys::Oid],
    ) -> Result<KeptPlan, EventError> {
        Self::prepare_with(sql, argument_types, 0)
    }

    fn prepare_with(
        sql: &str,
        argument_types: &[pg_sys::Oid],
        cursor_options: i32,
    ) -> Result<KeptPlan, EventError> {
        let sql =
            CString::new(sql).map_err(|_| EventError::internal("a query holds a NUL byte"))?;
        let mut types = argument_types.to_vec();
        // SAFETY: callers hold a `Connection`; PostgreSQL raises an ERROR on a bad query.
        let plan = unsafe {
            pg_sys::SPI_prepare_cursor(
                sql.as_ptr(),
                types.len() as i32,
                types.as_mut_ptr(),
                cursor_options,
            )
        };
        let plan = NonNull::new(plan).ok_or_else(|| {
            // SAFETY: reads SPI's last result code.
            EventError::internal(format!("SPI_prepare failed ({})", unsafe {
                pg_sys::SPI_result
            }))
        })?;
        // SAFETY: the plan was just prepared in this SPI connection.
        let kept = unsafe { pg_sys::SPI_keepplan(plan.as_ptr()) };
        if kept != 0 {
            return Err(EventError::internal(format!(
                "SPI_keepplan failed ({kept})"
            )));
        }
        Ok(KeptPlan { plan })
    }

    /// Run the plan with the given (non-null) arguments; a SELECT's rows, or none.
    pub fn run<'conn>(
        &self,
        _connection: Connection<'conn>,
        arguments: &mut [pg_sys::Datum],
    ) -> Result<ResultRows<'conn>, EventError> {
        let nulls = vec![b' ' as std::ffi::c_char; arguments.len()];
        // SAFETY: inside an SPI connection; the plan is kept; arguments match its types.
        let status = LatestSnapshots::reading(|read_only| unsafe {
            pg_sys::SPI_tuptable = std::ptr::null_mut();
            pg_sys::SPI_execute_plan(
                self.plan.as_ptr(),
                arguments.as_mut_ptr(),
                nulls.as_ptr(),
                read_only,
                0,
            )
        });
        if status < 0 {
            return Err(EventError::internal(format!(
                "SPI_execute_plan failed ({status})"
            )));
        }
        // SAFETY: SPI sets these after every execution.
        let (table, count) = unsafe { (pg_sys::SPI_tuptable, pg_sys::SPI_processed as usize) };
        Ok(ResultRows {
            table,
            count,
            _connection: PhantomData,
        })
    }

    /// Run with argument values palloc'd for this run (arrays, bytea), freed right after it so
    /// that a pass over many chunks does not accumulate them.
    pub fn run_freeing<'conn>(
        &self,
        connection: Connection<'conn>,
        mut arguments: Vec<pg_sys::Datum>,
    ) -> Result<ResultRows<'conn>, EventError> {
        let result = self.run(connection, &mut arguments);
        for argument in arguments {
            // SAFETY: each argument was palloc'd by the caller for this run only.
            unsafe { pg_sys::pfree(argument.cast_mut_ptr()) };
        }
        result
    }

    /// Run the plan and hand each result row to `read` as the executor produces it, without
    /// copying the rows into a tuple table first (SPI's default: a `heap_form_tuple` per row,
    /// then deformed again): the memory the rows take stays bounded however many match. The
    /// first error `read` returns stops the query and is the inner result; the outer one is
    /// the execution's. Frees the arguments.
    pub fn for_each_streamed(
        &self,
        _connection: Connection<'_>,
        arguments: Vec<pg_sys::Datum>,
        mut read: impl FnMut(&Row) -> Result<(), EventError>,
    ) -> Result<Result<(), EventError>, EventError> {
        let mut receiver = Receiver {
            base: pg_sys::DestReceiver {
                receiveSlot: Some(receive_slot),
                rStartup: Some(receiver_startup),
                rShutdown: Some(receiver_shutdown),
                rDestroy: Some(receiver_shutdown),
                mydest: pg_sys::CommandDest::DestNone,
            },
            read: &mut read,
            row: None,
            error: None,
        };
        // SAFETY: a kept plan and arguments of its parameter types, in a parameter list
        // palloc'd here and freed below with them; the receiver outlives the execution.
        let status = unsafe {
            let count = arguments.len();
            let params = pg_sys::makeParamList(count as i32);
            let slots = (*params).params.as_mut_slice(count);
            for (index, (slot, value)) in slots.iter_mut().zip(&arguments).enumerate() {
                slot.value = *value;
                slot.isnull = false;
                slot.pflags = pg_sys::PARAM_FLAG_CONST as u16;
                slot.ptype = pg_sys::SPI_getargtypeid(self.plan.as_ptr(), index as i32);
            }
            let status = LatestSnapshots::reading(|read_only| {
                let options = pg_sys::SPIExecuteOptions {
                    params,
                    read_only,
                    dest: std::ptr::addr_of_mut!(receiver.base),
                    ..Default::default()
                };
                pg_sys::SPI_execute_plan_extended(self.plan.as_ptr(), &options)
            });
            pg_sys::pfree(params.cast());
            for argument in arguments {
                pg_sys::pfree(argument.cast_mut_ptr());
            }
            status
        };
        if let Some(error) = receiver.error {
            return Ok(Err(error));
        }
        if status < 0 {
            return Err(EventError::internal(format!(
                "SPI_execute_plan_extended failed ({status})"
            )));
        }
        Ok(Ok(()))
    }

    /// Open a cursor on the plan (with the latest committed state while a `LatestSnapshots` is
    /// alive, as `run` reads); its rows are fetched a batch at a time with `Cursor::fetch`, which
    /// may run under another role (permissions are checked when it opens). Frees the arguments.
    pub fn open_cursor<'conn>(
        &self,
        _connection: Connection<'conn>,
        mut arguments: Vec<pg_sys::Datum>,
    ) -> Result<Cursor<'conn>, EventError> {
        let nulls = vec![b' ' as std::ffi::c_char; arguments.len()];
        // SAFETY: a kept plan and arguments of its parameter types; the portal copies them.
        let portal = LatestSnapshots::reading(|read_only| unsafe {
            pg_sys::SPI_cursor_open(
                std::ptr::null(),
                self.plan.as_ptr(),
                arguments.as_mut_ptr(),
                nulls.as_ptr(),
                read_only,
            )
        });
        for argument in arguments {
            // SAFETY: palloc'd by the caller for this call.
            unsafe { pg_sys::pfree(argument.cast_mut_ptr()) };
        }
        NonNull::new(portal)
            .map(|portal| Cursor {
                portal,
                _connection: PhantomData,
            })
            .ok_or_else(|| EventError::internal("SPI_cursor_open failed"))
    }
}

/// An open cursor of a kept plan; closed when dropped.
pub struct Cursor<'conn> {
    portal: NonNull<pg_sys::PortalData>,
    _connection: PhantomData<Connection<'conn>>,
}

impl<'conn> Cursor<'conn> {
    /// The next `batch` rows (none at the end).
    pub fn fetch(&mut self, batch: usize) -> ResultRows<'conn> {
        // SAFETY: an open portal; the fetched rows are in SPI_tuptable, freed with the result.
        unsafe {
            pg_sys::SPI_tuptable = std::ptr::null_mut();
            pg_sys::SPI_cursor_fetch(self.portal.as_ptr(), true, batch as std::ffi::c_long);
            ResultRows {
                table: pg_sys::SPI_tuptable,
                count: pg_sys::SPI_processed as usize,
                _connection: PhantomData,
            }
        }
    }
}

impl Drop for Cursor<'_> {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            // SAFETY: the portal was opened by `open_cursor` and is closed once.
            unsafe { pg_sys::SPI_cursor_close(self.portal.as_ptr()) };
        }
    }
}

thread_local! {
    static READ_LATEST: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// While one is alive, kept plans read (they must be plain SELECTs) with a snapshot of the latest
/// committed state taken just before each statement, whatever the transaction's isolation level:
/// what READ COMMITTED does anyway. The commit-time pass reads the application's tables so
/// (`privileges::SnapshotReader`): an event shows the rows as they are when it is written, and
/// the interlock (`interlock.rs`) relies on reads that follow its waits seeing what committed
/// meanwhile.
pub struct LatestSnapshots {
    previous: bool,
}

impl LatestSnapshots {
    pub fn enter() -> LatestSnapshots {
        LatestSnapshots {
            previous: READ_LATEST.replace(true),
        }
    }

    /// Run an SPI call that reads: while a `LatestSnapshots` is alive, with a snapshot of the
    /// latest committed state pushed and `read_only` true (SPI then uses that snapshot);
    /// otherwise as SPI does by default (`read_only` false).
    fn reading<T>(call: impl FnOnce(bool) -> T) -> T {
        if !READ_LATEST.get() {
            return call(false);
        }
        // SAFETY: pushes a copy of a fresh snapshot and pops it after the call (an error aborts
        // the transaction, which resets the active snapshot stack).
        unsafe { pg_sys::PushActiveSnapshot(pg_sys::GetLatestSnapshot()) };
        let result = call(true);
        // SAFETY: pops what was pushed above.
        unsafe { pg_sys::PopActiveSnapshot() };
        result
    }
}

impl Drop for LatestSnapshots {
    fn drop(&mut self) {
        READ_LATEST.set(self.previous);
    }
}

/// Run `use_plan` with the plan kept in `slot`, preparing `sql` (with parameters of
/// `argument_types`) there on first use in the session.
pub fn with_kept_plan<R>(
    connection: Connection<'_>,
    slot: &'static std::thread::LocalKey<std::cell::RefCell<Option<KeptPlan>>>,
    sql: &str,
    argument_types: &[pg_sys::Oid],
    use_plan: impl FnOnce(&KeptPlan) -> Result<R, EventError>,
) -> Result<R, EventError> {
    slot.with_borrow_mut(|slot| {
        let plan = match slot {
            Some(plan) => plan,
            None => slot.insert(KeptPlan::prepare(connection, sql, argument_types)?),
        };
        use_plan(plan)
    })
}

/// Ids ascending and without duplicates, as every id list the extension queries with.
pub fn sorted_unique(mut ids: Vec<i64>) -> Vec<i64> {
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// An `int8[]` argument (palloc'd; pass it to `run_freeing`).
pub fn int8_array(ids: &[i64]) -> Result<pg_sys::Datum, EventError> {
    ids.to_vec()
        .into_datum()
        .ok_or_else(|| EventError::internal("an int8[] argument is null"))
}

/// The rows of one execution, in the memory of the SPI connection they borrow; freed when
/// dropped.
pub struct ResultRows<'conn> {
    table: *mut pg_sys::SPITupleTable,
    count: usize,
    _connection: PhantomData<Connection<'conn>>,
}

impl Drop for ResultRows<'_> {
    fn drop(&mut self) {
        if !self.table.is_null() && !std::thread::panicking() {
            // SAFETY: the table came from the last SPI execution and is freed once.
            unsafe { pg_sys::SPI_freetuptable(self.table) };
        }
    }
}

impl ResultRows<'_> {
    /// Hand each row to `read`.
    pub fn for_each(
        &self,
        mut read: impl FnMut(&Row) -> Result<(), EventError>,
    ) -> Result<(), EventError> {
        if self.table.is_null() || self.count == 0 {
            return Ok(());
        }
        // SAFETY: a tuple table of `count` rows with its descriptor, valid until dropped.
        let (tupdesc, tuples) = unsafe { ((*self.table).tupdesc, (*self.table).vals) };
        // SAFETY: as above.
        let natts = unsafe { (*tupdesc).natts } as usize;
        // pgrx's descriptor wrapper finds the attributes on every major (PostgreSQL 18 moved
        // them behind the compact ones); unchecked: the descriptor belongs to the tuple table.
        // SAFETY: tupdesc is the table's valid descriptor, not reference counted by us.
        let descriptor = unsafe { pgrx::PgTupleDesc::from_pg_unchecked(tupdesc) };
        let types = descriptor
            .iter()
            .map(|attribute| attribute.atttypid)
            .collect();
        let mut row = Row {
            values: vec![pg_sys::Datum::from(0); natts],
            nulls: vec![false; natts],
            types,
        };
        for i in 0..self.count {
            // SAFETY: i < count; the tuple matches tupdesc; the arrays hold natts entries.
            unsafe {
                pg_sys::heap_deform_tuple(
                    *tuples.add(i),
                    tupdesc,
                    row.values.as_mut_ptr(),
                    row.nulls.as_mut_ptr(),
                );
            }
            read(&row)?;
        }
        Ok(())
    }
}

/// The destination of `for_each_streamed`: PostgreSQL calls `receive_slot` with each row.
#[repr(C)]
struct Receiver<'a> {
    /// First, so that a pointer to it is a pointer to the receiver.
    base: pg_sys::DestReceiver,
    read: &'a mut dyn FnMut(&Row) -> Result<(), EventError>,
    /// The row handed to `read`, reused (made at the first slot, from its descriptor).
    row: Option<Row>,
    /// The first error `read` returned: the query stops there.
    error: Option<EventError>,
}

#[pg_guard]
unsafe extern "C-unwind" fn receive_slot(
    slot: *mut pg_sys::TupleTableSlot,
    receiver: *mut pg_sys::DestReceiver,
) -> bool {
    // SAFETY: `receiver` is the `Receiver` that `for_each_streamed` passed as the destination
    // (its first field); the slot is the executor's, valid during this call.
    unsafe {
        let receiver = &mut *receiver.cast::<Receiver<'_>>();
        if receiver.error.is_some() {
            return false;
        }
        let descriptor = (*slot).tts_tupleDescriptor;
        let natts = (*descriptor).natts as usize;
        if ((*slot).tts_nvalid as usize) < natts {
            pg_sys::slot_getsomeattrs_int(slot, natts as i32);
        }
        let row = receiver.row.get_or_insert_with(|| {
            // pgrx's descriptor wrapper finds the attributes on every major; unchecked: the
            // descriptor belongs to the slot.
            let attributes = pgrx::PgTupleDesc::from_pg_unchecked(descriptor);
            Row {
                values: vec![pg_sys::Datum::from(0); natts],
                nulls: vec![false; natts],
                types: attributes
                    .iter()
                    .map(|attribute| attribute.atttypid)
                    .collect(),
            }
        });
        row.values
            .copy_from_slice(std::slice::from_raw_parts((*slot).tts_values, natts));
        row.nulls
            .copy_from_slice(std::slice::from_raw_parts((*slot).tts_isnull, natts));
        match (receiver.read)(row) {
            Ok(()) => true,
            Err(error) => {
                receiver.error = Some(error);
                false
            }
        }
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn receiver_startup(
    _receiver: *mut pg_sys::DestReceiver,
    _operation: std::ffi::c_int,
    _descriptor: pg_sys::TupleDesc,
) {
}

#[pg_guard]
unsafe extern "C-unwind" fn receiver_shutdown(_receiver: *mut pg_sys::DestReceiver) {}

/// One deformed result row; columns are numbered from 1 as in SQL.
pub struct Row {
    values: Vec<pg_sys::Datum>,
    nulls: Vec<bool>,
    types: Vec<pg_sys::Oid>,
}

impl Row {
    /// The value of a column, or an error message if the column is not of `T`'s SQL type (the
    /// queries cast every column, so that is a bug, reported rather than misread).
    pub fn get<T: ColumnValue>(&self, ordinal: usize) -> Result<Option<T>, String> {
        let index = ordinal - 1;
        match self.types.get(index) {
            Some(actual) if *actual == T::TYPE => {}
            actual => {
                return Err(format!(
                    "column {ordinal} has type {actual:?}, expected {:?}",
                    T::TYPE
                ))
            }
        }
        if self.nulls[index] {
            return Ok(None);
        }
        // SAFETY: a non-null value of T's type.
        unsafe { T::from_datum(self.values[index]) }.map(Some)
    }
}

/// A Rust value read from a column of one SQL type.
pub trait ColumnValue: Sized {
    /// The SQL type (pg_type oid) this reads.
    const TYPE: pg_sys::Oid;
    /// # Safety
    /// `datum` must be a non-null value of the type this reads.
    unsafe fn from_datum(datum: pg_sys::Datum) -> Result<Self, String>;
}

impl ColumnValue for i64 {
    const TYPE: pg_sys::Oid = pg_sys::INT8OID;

    unsafe fn from_datum(datum: pg_sys::Datum) -> Result<Self, String> {
        Ok(datum.value() as i64)
    }
}

impl ColumnValue for i32 {
    const TYPE: pg_sys::Oid = pg_sys::INT4OID;

    unsafe fn from_datum(datum: pg_sys::Datum) -> Result<Self, String> {
        Ok(datum.value() as i32)
    }
}

impl ColumnValue for bool {
    const TYPE: pg_sys::Oid = pg_sys::BOOLOID;

    unsafe fn from_datum(datum: pg_sys::Datum) -> Result<Self, String> {
        Ok(datum.value() & 0xFF != 0)
    }
}

impl ColumnValue for String {
    const TYPE: pg_sys::Oid = pg_sys::TEXTOID;

    unsafe fn from_datum(datum: pg_sys::Datum) -> Result<Self, String> {
        // SAFETY: a text datum (caller's contract).
        let bytes = unsafe { varlena_bytes(datum, false) };
        String::from_utf8(bytes)
            .map_err(|_| "text that is not UTF-8 (the database must use UTF8)".to_owned())
    }
}

/// An `int8[]` value, elements that are NULL as `None`.
pub struct Int8Array(pub Vec<Option<i64>>);

impl ColumnValue for Int8Array {
    const TYPE: pg_sys::Oid = pg_sys::INT8ARRAYOID;

    unsafe fn from_datum(datum: pg_sys::Datum) -> Result<Self, String> {
        // SAFETY: a non-null int8[] datum (caller's contract); pgrx detoasts and copies it.
        unsafe { <Vec<Option<i64>> as FromDatum>::from_datum(datum, false) }
            .map(Int8Array)
            .ok_or_else(|| "a NULL int8[]".to_owned())
    }
}

impl ColumnValue for Vec<u8> {
    const TYPE: pg_sys::Oid = pg_sys::BYTEAOID;

    unsafe fn from_datum(datum: pg_sys::Datum) -> Result<Self, String> {
        // SAFETY: a bytea datum (caller's contract).
        Ok(unsafe { varlena_bytes(datum, false) })
    }
}

/// A varlena value's bytes: its data after the header (`with_header` false) or the whole
/// value with a 4-byte header (`with_header` true), detoasted and copied; the detoasted copy is
/// freed at once so that memory does not grow with the number of rows read.
///
/// # Safety
/// `datum` must be a non-null varlena datum.
pub unsafe fn varlena_bytes(datum: pg_sys::Datum, with_header: bool) -> Vec<u8> {
    let original = datum.cast_mut_ptr::<pg_sys::varlena>();
    // SAFETY: a varlena datum; pg_detoast_datum_packed returns it or a palloc'd copy.
    unsafe {
        let value = pg_sys::pg_detoast_datum_packed(original);
        let data = pgrx::varlena::vardata_any(value) as *const u8;
        let len = pgrx::varlena::varsize_any_exhdr(value);
        let mut out = Vec::with_capacity(len + if with_header { 4 } else { 0 });
        if with_header {
            out.extend_from_slice(&[0; 4]);
        }
        out.extend_from_slice(std::slice::from_raw_parts(data, len));
        if with_header {
            crate::jsonb::set_varsize_4b(&mut out, len + 4);
        }
        if value != original {
            pg_sys::pfree(value.cast());
        }
        out
    }
}
