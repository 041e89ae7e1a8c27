//! Digests. A stored payload's digest (the unchanged-snapshot check, `versions.rs`) is keyed: the
//! tag of AES-256-GCM-SIV (RFC 8452) with the payload as associated data, nothing to encrypt, a
//! fixed nonce and the database's key (`ae_events.digest_keys`, readable by the extension's
//! owner only). It runs for every event: AES and POLYVAL in hardware cost about a third of what
//! BLAKE3 did (about 8% of a bulk commit's backend time). Being keyed, it also tells nothing
//! about a payload to whoever reads `instance_state` (no guess can be tested against it), and
//! nobody without the key can make two payloads of one digest (an updated event left out).
//! GCM-SIV is the AEAD made for a repeated nonce: all a repeat reveals is that two inputs were
//! equal, which is what a digest is for.
//!
//! A digest is one tag byte and the 16-byte tag. The 32-byte SHA-256 digests that releases up to
//! 0.7.0 recorded are still recognized and compared as SHA-256 (`same_payload`). A value a payload
//! rule hides (`redaction.rs`) stays SHA-256, with PostgreSQL's own implementation: its hex is
//! part of the payload.

use crate::config_cache::{self, ConfigTable};
use crate::errors::EventError;
use crate::rows::{with_kept_plan, Connection, KeptPlan};
use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM_SIV};
use pgrx::prelude::*;
use std::cell::RefCell;
use std::rc::Rc;

/// The first byte of a keyed payload digest.
const KEYED_TAG: u8 = 0x02;
/// The nonce of every digest: the same payload must give the same digest (see the module's
/// comment for why GCM-SIV allows it).
const NONCE: [u8; 12] = *b"ae_events:v1";
/// The key in use: the oldest (pg_restore adds the dumped key beside the one `CREATE EXTENSION`
/// made, and digests recorded before the dump were made with the dumped one).
const KEY_QUERY: &str = "
SELECT k.key
  FROM ae_events.digest_keys AS k
 ORDER BY k.created_at, k.key
 LIMIT 1";

thread_local! {
    static QUERY: RefCell<Option<KeptPlan>> = const { RefCell::new(None) };
    static CACHED: RefCell<Option<config_cache::Entry<PayloadKey>>> = const { RefCell::new(None) };
}

/// How this database's payload digests are made.
pub enum PayloadKey {
    /// With its key.
    Keyed(LessSafeKey),
    /// SHA-256, as 0.7.0 recorded them: the extension's SQL objects are 0.7.0's until `ALTER
    /// EXTENSION ae_events UPDATE` (the library writes events with them meanwhile), so there is
    /// no key yet.
    Sha256,
}

impl PayloadKey {
    /// The key in force: read once per backend and again after any change to
    /// `ae_events.digest_keys` (`config_cache.rs`), in an SPI connection of its own, as the
    /// current role (the pass runs as the extension's owner).
    pub fn in_force() -> Result<Rc<PayloadKey>, EventError> {
        config_cache::get_or_read(&CACHED, ConfigTable::DigestKeys, || {
            Spi::connect(|client| PayloadKey::load(Connection::of(client)))
        })
    }

    fn load(connection: Connection<'_>) -> Result<PayloadKey, EventError> {
        crate::privileges::ensure_current_sql_objects()?;
        // Not kept either: `config_cache` keeps only what it read from an existing table.
        if crate::privileges::extension_table(c"digest_keys") == pg_sys::InvalidOid {
            return Ok(PayloadKey::Sha256);
        }
        let mut key: Option<Vec<u8>> = None;
        with_kept_plan(connection, &QUERY, KEY_QUERY, &[], |query| {
            query.run(connection, &mut [])?.for_each(|row| {
                key = row.get(1).map_err(EventError::internal)?;
                Ok(())
            })
        })
        .map_err(|error| error.context("cannot read ae_events.digest_keys"))?;
        let Some(key) = key else {
            return Err(EventError::Prerequisite {
                what: "ae_events.digest_keys holds no key; restore it from a backup, or add one \
                       (INSERT INTO ae_events.digest_keys (key) SELECT \
                       ae_events._strong_random_bytes(32)): the snapshots recorded with the lost \
                       key then count as changed once each"
                    .to_owned(),
            });
        };
        PayloadKey::from_bytes(&key)
    }

    /// A key from its 32 bytes.
    pub fn from_bytes(key: &[u8]) -> Result<PayloadKey, EventError> {
        UnboundKey::new(&AES_256_GCM_SIV, key)
            .map(|key| PayloadKey::Keyed(LessSafeKey::new(key)))
            .map_err(|_| EventError::internal("a digest key that is not 32 bytes"))
    }

    /// The digest recorded for an encoded payload.
    pub fn digest(&self, payload: &[u8]) -> Result<Vec<u8>, EventError> {
        match self {
            PayloadKey::Keyed(key) => keyed_digest(key, payload),
            PayloadKey::Sha256 => self::digest(payload),
        }
    }
}

/// A payload's digest with the database's key.
fn keyed_digest(key: &LessSafeKey, payload: &[u8]) -> Result<Vec<u8>, EventError> {
    let tag = key
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(NONCE),
            Aad::from(payload),
            &mut [],
        )
        .map_err(|_| EventError::internal("the payload digest failed"))?;
    let mut digest = Vec::with_capacity(1 + tag.as_ref().len());
    digest.push(KEYED_TAG);
    digest.extend_from_slice(tag.as_ref());
    Ok(digest)
}

/// Whether `payload` (whose digest is `digest`, from `PayloadKey::digest`) is the payload whose
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
    use super::{keyed_digest, PayloadKey};

    /// The keyed digest alone (`PayloadKey::digest` can also call into PostgreSQL, which a unit
    /// test binary does not link).
    fn digest(key: &[u8], payload: &[u8]) -> Vec<u8> {
        match PayloadKey::from_bytes(key) {
            Ok(PayloadKey::Keyed(key)) => match keyed_digest(&key, payload) {
                Ok(digest) => digest,
                Err(_) => panic!("the digest failed"),
            },
            _ => panic!("not a keyed digest"),
        }
    }

    #[test]
    fn payload_digests_are_tagged_and_keyed() {
        let key = [7u8; 32];
        let abc = digest(&key, b"abc");
        assert_eq!(abc.len(), 17);
        assert_eq!(abc[0], 0x02);
        assert_eq!(
            digest(&key, b"abc"),
            abc,
            "the same payload, the same digest"
        );
        assert_ne!(digest(&key, b"abd"), abc);
        assert_ne!(
            digest(&[8u8; 32], b"abc"),
            abc,
            "another key, another digest"
        );
        assert!(PayloadKey::from_bytes(&[7u8; 16]).is_err());
    }

    #[test]
    fn the_tag_is_aes_256_gcm_siv() {
        // RFC 8452, appendix C.2, the first vector: no plaintext, no associated data.
        let mut key = [0u8; 32];
        key[0] = 1;
        let mut nonce = [0u8; 12];
        nonce[0] = 3;
        let sealed = aws_lc_rs::aead::LessSafeKey::new(
            aws_lc_rs::aead::UnboundKey::new(&aws_lc_rs::aead::AES_256_GCM_SIV, &key).unwrap(),
        )
        .seal_in_place_separate_tag(
            aws_lc_rs::aead::Nonce::assume_unique_for_key(nonce),
            aws_lc_rs::aead::Aad::empty(),
            &mut [],
        )
        .unwrap();
        assert_eq!(
            sealed.as_ref(),
            [
                0x07, 0xf5, 0xf4, 0x16, 0x9b, 0xbf, 0x55, 0xa8, 0x40, 0x0c, 0xd4, 0x7e, 0xa6, 0xfd,
                0x40, 0x0f
            ]
        );
    }
}
