//! Deliver: the random bytes of webhook signing secrets (sql/src/endpoints.sql makes them
//! `whsec_` + base64). PostgreSQL's own strong random source, so that the extension needs no
//! cryptographic dependency of its own.

use crate::errors;
use pgrx::prelude::*;

/// The most bytes one call gives: a secret's key is at most 64 bytes (webhooks.md §1).
const MOST_BYTES: i32 = 64;

#[pg_extern(volatile, strict, parallel_safe, name = "_strong_random_bytes")]
fn strong_random_bytes(length: i32) -> Vec<u8> {
    if !(1..=MOST_BYTES).contains(&length) {
        errors::raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("_strong_random_bytes takes 1 to {MOST_BYTES} bytes, not {length}"),
            None,
        );
    }
    let mut bytes = vec![0u8; length as usize];
    // SAFETY: the buffer is valid for `length` bytes.
    let filled = unsafe { pg_sys::pg_strong_random(bytes.as_mut_ptr().cast(), bytes.len()) };
    if !filled {
        errors::raise(
            PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
            "the strong random source failed".to_owned(),
            None,
        );
    }
    bytes
}
