//! Digests. A stored payload's digest (the unchanged-snapshot check, `versions.rs`) is BLAKE3:
//! this CPU-bound check runs for every event, and BLAKE3 (SIMD) is several times faster than
//! SHA-256 without SHA instructions (SHA-256 was about 14% of a bulk commit's backend time). It is
//! stored as one tag byte and the 32-byte BLAKE3 hash, so that the 32-byte SHA-256 digests that
//! releases up to 0.7.0 recorded are still recognized and compared as SHA-256 (`same_payload`).
//! A value a payload rule hides (`redaction.rs`) stays SHA-256, with PostgreSQL's own
//! implementation: its hex is part of the payload.

use crate::errors::EventError;
use pgrx::prelude::*;

/// The first byte of a payload digest made by BLAKE3.
const BLAKE3_TAG: u8 = 0x01;

/// The digest recorded for an encoded payload.
pub fn payload_digest(payload: &[u8]) -> Vec<u8> {
    let mut digest = Vec::with_capacity(33);
    digest.push(BLAKE3_TAG);
    digest.extend_from_slice(blake3::hash(payload).as_bytes());
    digest
}

/// Whether `payload` (whose digest is `digest`, from `payload_digest`) is the payload whose
/// digest was recorded as `recorded`: a 32-byte digest is a SHA-256 recorded by an earlier
/// release.
pub fn same_payload(recorded: &[u8], payload: &[u8], digest: &[u8]) -> Result<bool, EventError> {
    if recorded.len() == 32 {
        return Ok(self::digest(payload)? == recorded);
    }
    Ok(recorded == digest)
}

/// SHA-256 of bytes.
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

#[cfg(test)]
mod tests {
    #[test]
    fn payload_digests_are_tagged_blake3() {
        let digest = super::payload_digest(b"abc");
        assert_eq!(digest.len(), 33);
        assert_eq!(digest[0], 0x01);
        // BLAKE3("abc"), from the reference implementation's test vectors.
        assert_eq!(digest[1..5], [0x64, 0x37, 0xb3, 0xac],);
        assert_ne!(super::payload_digest(b"abd"), digest);
    }
}
