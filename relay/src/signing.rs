//! Standard Webhooks signatures (webhooks.md §2): `v1,<base64 HMAC-SHA256(key,
//! "{webhook-id}.{webhook-timestamp}.{body}")>`, one per active secret, space-separated.

use aws_lc_rs::hmac;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;

/// A signing key: the bytes a `whsec_` secret encodes, and the HMAC key made of them once (the
/// HMAC comes from aws-lc, whose SHA-256 is assembly: signing a payload of a few kB is most of
/// the relay's own work per event).
#[derive(Clone)]
pub struct SigningKey {
    bytes: Vec<u8>,
    key: hmac::Key,
}

impl PartialEq for SigningKey {
    fn eq(&self, other: &SigningKey) -> bool {
        self.bytes == other.bytes
    }
}

impl Eq for SigningKey {}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(..)") // never in logs
    }
}

impl SigningKey {
    /// The key of a `whsec_` secret; None if it is not one.
    pub fn from_secret(secret: &str) -> Option<SigningKey> {
        let encoded = secret.strip_prefix("whsec_")?;
        let bytes = STANDARD.decode(encoded).ok()?;
        if bytes.is_empty() {
            return None;
        }
        let key = hmac::Key::new(hmac::HMAC_SHA256, &bytes);
        Some(SigningKey { bytes, key })
    }

    /// `v1,<signature>` of one message.
    pub fn sign(&self, webhook_id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut mac = hmac::Context::with_key(&self.key);
        mac.update(webhook_id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", STANDARD.encode(mac.sign().as_ref()))
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
}
