//! The size of a payload as relay_fetch bounds a batch by it: its jsonb's uncompressed size,
//! read from the datum's header (or its TOAST pointer) without decompressing or fetching it.
//! `pg_column_size(payload || '{}')` gave the same figure by building the whole value, which
//! was a third of relay_fetch's time (docs/benchmarks.md, issue 26 part 4).

use pgrx::prelude::*;

/// `ae_events._payload_size(jsonb) RETURNS bigint`: the raw size in bytes, header included
/// (what pg_column_size reports for the value decompressed).
///
/// # Safety
/// Called by PostgreSQL's function manager with one non-null argument (the function is
/// STRICT), a varlena datum.
#[pg_guard]
#[no_mangle]
pub unsafe extern "C-unwind" fn payload_size_wrapper(
    fcinfo: pg_sys::FunctionCallInfo,
) -> pg_sys::Datum {
    // SAFETY: STRICT with one argument of type jsonb, so args[0] is a non-null varlena; the
    // function only reads its header (toast_raw_datum_size does not detoast).
    let argument = unsafe { (*fcinfo).args.as_slice(1)[0].value };
    let size = unsafe { pg_sys::toast_raw_datum_size(argument) };
    pg_sys::Datum::from(i64::try_from(size).unwrap_or(i64::MAX))
}

#[no_mangle]
pub extern "C" fn pg_finfo_payload_size_wrapper() -> &'static pg_sys::Pg_finfo_record {
    const V1: pg_sys::Pg_finfo_record = pg_sys::Pg_finfo_record { api_version: 1 };
    &V1
}

extension_sql!(
    r#"
CREATE FUNCTION ae_events._payload_size(payload jsonb) RETURNS bigint
IMMUTABLE STRICT PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'payload_size_wrapper';
REVOKE ALL ON FUNCTION ae_events._payload_size(jsonb) FROM PUBLIC;
"#,
    name = "payload_size"
);
