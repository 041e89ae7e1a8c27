//! Standard Webhooks signatures (webhooks.md §2), one per active key, space-separated:
//! `v1,<base64 HMAC-SHA256(key, "{webhook-id}.{webhook-timestamp}.{body}")>` for a `whsec_`
//! secret, `v1a,<base64 ed25519 signature of the same content>` for an ed25519 `whsk_` key
//! (rotate_endpoint_secret(..., algorithm => 'ed25519'); the receiver holds its `whpk_` public
//! key).

use aws_lc_rs::hmac;
use aws_lc_rs::signature::Ed25519KeyPair;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use std::sync::Arc;

/// A signing key: the bytes its secret encodes, and the key made of them once (HMAC and
/// ed25519 both from aws-lc, whose SHA-256/512 are assembly: signing a payload of a few kB is
/// most of the relay's own work per event).
#[derive(Clone)]
pub struct SigningKey {
    bytes: Vec<u8>,
    key: Key,
}

#[derive(Clone)]
enum Key {
    Hmac(Box<hmac::Key>),
    Ed25519(Arc<Ed25519KeyPair>),
}

impl PartialEq for SigningKey {
    fn eq(&self, other: &SigningKey) -> bool {
        self.bytes == other.bytes
            && matches!(
                (&self.key, &other.key),
                (Key::Hmac(_), Key::Hmac(_)) | (Key::Ed25519(_), Key::Ed25519(_))
            )
    }
}

impl Eq for SigningKey {}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(..)") // never in logs
    }
}

impl SigningKey {
    /// The key of a `whsec_` secret or of a `whsk_` ed25519 key (its 32-byte seed, alone or
    /// followed by its 32-byte public key, which must then be the seed's); None if it is
    /// neither.
    pub fn from_secret(secret: &str) -> Option<SigningKey> {
        if let Some(encoded) = secret.strip_prefix("whsk_") {
            let bytes = STANDARD.decode(encoded).ok()?;
            let pair = match bytes.len() {
                32 => Ed25519KeyPair::from_seed_unchecked(&bytes).ok()?,
                64 => Ed25519KeyPair::from_seed_and_public_key(&bytes[..32], &bytes[32..]).ok()?,
                _ => return None,
            };
            return Some(SigningKey {
                bytes,
                key: Key::Ed25519(Arc::new(pair)),
            });
        }
        let encoded = secret.strip_prefix("whsec_")?;
        let bytes = STANDARD.decode(encoded).ok()?;
        if bytes.is_empty() {
            return None;
        }
        let key = Key::Hmac(Box::new(hmac::Key::new(hmac::HMAC_SHA256, &bytes)));
        Some(SigningKey { bytes, key })
    }

    /// `v1,<signature>` or `v1a,<signature>` of one message.
    pub fn sign(&self, webhook_id: &str, timestamp: i64, body: &[u8]) -> String {
        let timestamp = timestamp.to_string();
        match &self.key {
            Key::Hmac(key) => {
                let mut mac = hmac::Context::with_key(key);
                mac.update(webhook_id.as_bytes());
                mac.update(b".");
                mac.update(timestamp.as_bytes());
                mac.update(b".");
                mac.update(body);
                format!("v1,{}", STANDARD.encode(mac.sign().as_ref()))
            }
            Key::Ed25519(pair) => {
                // ed25519 signs the whole message (it hashes it twice): one buffer.
                let mut message =
                    Vec::with_capacity(webhook_id.len() + timestamp.len() + body.len() + 2);
                message.extend_from_slice(webhook_id.as_bytes());
                message.push(b'.');
                message.extend_from_slice(timestamp.as_bytes());
                message.push(b'.');
                message.extend_from_slice(body);
                format!("v1a,{}", STANDARD.encode(pair.sign(&message).as_ref()))
            }
        }
    }
}

/// The `webhook-signature` header: one signature per key.
pub fn signature_header(
    keys: &[SigningKey],
    webhook_id: &str,
    timestamp: i64,
    body: &[u8],
) -> String {
    keys.iter()
        .map(|key| key.sign(webhook_id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Standard Webhooks specification's published example.
    #[test]
    fn signs_the_specifications_example() {
        let key = SigningKey::from_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let signature = key.sign(
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn one_signature_per_key_and_no_key_from_a_malformed_secret() {
        let first = SigningKey::from_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let second = SigningKey::from_secret("whsec_c2Vjb25kIGtleSBvZiAyNCBieXRlcyE=").unwrap();
        let header = signature_header(&[first.clone(), second.clone()], "id", 1, b"{}");
        let parts: Vec<&str> = header.split(' ').collect();
        assert_eq!(
            parts,
            [first.sign("id", 1, b"{}"), second.sign("id", 1, b"{}")]
        );
        assert_ne!(parts[0], parts[1]);
        assert!(SigningKey::from_secret("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_none());
        assert!(SigningKey::from_secret("whsec_not base64!").is_none());
    }

    /// RFC 8032 §7.1, TEST 1's key; the signature checked with aws-lc's verifier.
    #[test]
    fn signs_v1a_with_an_ed25519_key() {
        use aws_lc_rs::signature::{UnparsedPublicKey, ED25519};
        let hex = |text: &str| -> Vec<u8> {
            (0..text.len() / 2)
                .map(|i| u8::from_str_radix(&text[i * 2..i * 2 + 2], 16).unwrap())
                .collect()
        };
        let seed = hex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60");
        let public = hex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a");
        let whole = SigningKey::from_secret(&format!(
            "whsk_{}",
            STANDARD.encode([seed.clone(), public.clone()].concat())
        ))
        .unwrap();
        let seed_only =
            SigningKey::from_secret(&format!("whsk_{}", STANDARD.encode(&seed))).unwrap();
        let signature = whole.sign("msg_1", 1614265330, b"{}");
        assert_eq!(signature, seed_only.sign("msg_1", 1614265330, b"{}"));
        let encoded = signature.strip_prefix("v1a,").unwrap();
        UnparsedPublicKey::new(&ED25519, &public)
            .verify(b"msg_1.1614265330.{}", &STANDARD.decode(encoded).unwrap())
            .unwrap();
        // A public key that is not the seed's, or a key of another length: no key.
        let mut wrong = public.clone();
        wrong[0] ^= 1;
        let mismatched = format!("whsk_{}", STANDARD.encode([seed, wrong].concat()));
        assert!(SigningKey::from_secret(&mismatched).is_none());
        assert!(SigningKey::from_secret(&format!("whsk_{}", STANDARD.encode([1u8; 16]))).is_none());
    }
}
