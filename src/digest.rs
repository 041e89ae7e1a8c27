//! SHA-256 with PostgreSQL's own implementation: the digest of a stored payload (the unchanged
//! snapshot check, `versions.rs`) and of a value a payload rule hides (`redaction.rs`).

use crate::errors::EventError;
use pgrx::prelude::*;

/// SHA-256 of an encoded payload.
pub fn digest(payload: &[u8]) -> Result<Vec<u8>, EventError> {
    let Some(argument) = payload.into_datum() else {
        return Err(EventError::internal("a null payload to digest"));
    };
    let digest = sha256(argument);
    // SAFETY: the argument was palloc'd above for this call only.
    unsafe { pg_sys::pfree(argument.cast_mut_ptr()) };
    digest
}

/// SHA-256 of a bytea or text value's data: PostgreSQL's own implementation, as
/// `sha256(bytea)` (a text datum has the same layout).
fn sha256(value: pg_sys::Datum) -> Result<Vec<u8>, EventError> {
    // SAFETY: sha256_bytea takes one varlena and returns a bytea.
    unsafe { pgrx::fcinfo::direct_function_call::<Vec<u8>>(pg_sys::sha256_bytea, &[Some(value)]) }
        .ok_or_else(|| EventError::internal("sha256 returned null"))
}
