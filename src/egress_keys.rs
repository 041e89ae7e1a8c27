//! Deliver: the keys of an endpoint's egress settings (docs/webhooks.md, issue 25), checked where
//! a DBA gives them so that a mistake is an `alter_endpoint` error rather than failed deliveries:
//! a client certificate chain and its key (PEM, loaded as the relay's rustls loads them; the key
//! matches the first certificate; the certificate is valid now), and the public half of an
//! ed25519 signing key (the seed comes from PostgreSQL's strong random source, as `whsec_`
//! secrets' bytes do).

use crate::errors;
use pgrx::prelude::*;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

fn refuse(message: String) -> ! {
    errors::raise(
        PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
        message,
        None,
    )
}

/// Whether `certificate` (a PEM chain, the client's own certificate first) and `key` (a PEM
/// private key: PKCS#8, PKCS#1 RSA or SEC1 EC) make a client identity the relay can present:
/// raises 22023 saying why not. Returns the first certificate's end of validity (Unix seconds).
/// Error texts never repeat the key. Volatile: it reads the clock.
#[pg_extern(volatile, strict, parallel_safe, name = "_check_client_certificate")]
fn check_client_certificate(certificate: &str, key: &str) -> i64 {
    match checked_certificate(certificate, key, now_unix()) {
        Ok(not_after) => not_after,
        Err(reason) => refuse(reason),
    }
}

/// The ed25519 public key (32 bytes) of a 32-byte seed.
#[pg_extern(immutable, strict, parallel_safe, name = "_ed25519_public_key")]
fn ed25519_public_key(seed: &[u8]) -> Vec<u8> {
    match public_key_of_seed(seed) {
        Some(public) => public,
        None => refuse(format!("an ed25519 seed is 32 bytes, not {}", seed.len())),
    }
}

fn public_key_of_seed(seed: &[u8]) -> Option<Vec<u8>> {
    use aws_lc_rs::signature::KeyPair as _;
    let pair = aws_lc_rs::signature::Ed25519KeyPair::from_seed_unchecked(seed).ok()?;
    Some(pair.public_key().as_ref().to_vec())
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The check itself (no PostgreSQL calls: unit-testable): the end of validity, or why not.
fn checked_certificate(certificate: &str, key: &str, now: i64) -> Result<i64, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(
        certificate.as_bytes(),
    )
    .collect::<Result<_, _>>()
    .map_err(|_| {
        "client_certificate is not a PEM certificate chain (-----BEGIN CERTIFICATE----- blocks)"
            .to_owned()
    })?;
    let Some(first) = chain.first() else {
        return Err(
            "client_certificate holds no PEM certificate (-----BEGIN CERTIFICATE-----)".to_owned(),
        );
    };
    let mut not_after = 0;
    for (index, der) in chain.iter().enumerate() {
        let (rest, parsed) = x509_parser::parse_x509_certificate(der.as_ref()).map_err(|_| {
            format!(
                "client_certificate's certificate {} of the chain is not an X.509 certificate",
                index + 1
            )
        })?;
        if !rest.is_empty() {
            return Err(format!(
                "client_certificate's certificate {} of the chain has trailing bytes",
                index + 1
            ));
        }
        if index == 0 {
            let validity = parsed.validity();
            let (from, until) = (
                validity.not_before.timestamp(),
                validity.not_after.timestamp(),
            );
            if now > until {
                return Err(format!(
                    "client_certificate expired at {} (it is valid from {} to {})",
                    validity.not_after, validity.not_before, validity.not_after
                ));
            }
            if now < from {
                return Err(format!(
                    "client_certificate is not valid yet: from {} to {}",
                    validity.not_before, validity.not_after
                ));
            }
            // A certificate restricted to other uses is refused by a TLS server asking for a
            // client certificate.
            if let Ok(Some(usage)) = parsed.extended_key_usage() {
                if !usage.value.client_auth && !usage.value.any {
                    return Err(
                        "client_certificate's extended key usage does not allow TLS client authentication"
                            .to_owned(),
                    );
                }
            }
            not_after = until;
        }
    }
    let key_der = PrivateKeyDer::from_pem_slice(key.as_bytes()).map_err(|_| {
        "client_key is not a PEM private key (PKCS#8 PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY)"
            .to_owned()
    })?;
    let signing_key =
        rustls::crypto::aws_lc_rs::sign::any_supported_type(&key_der).map_err(|_| {
            "client_key is not a key the relay can use (RSA, ECDSA P-256/P-384/P-521 or Ed25519)"
                .to_owned()
        })?;
    let matches = match (
        signing_key.public_key(),
        x509_parser::parse_x509_certificate(first.as_ref()),
    ) {
        (Some(public), Ok((_, parsed))) => public.as_ref() == parsed.public_key().raw,
        _ => false,
    };
    if !matches {
        return Err(
            "client_key does not match client_certificate (its first certificate, the client's own)"
                .to_owned(),
        );
    }
    Ok(not_after)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_public_key_of_rfc_8032s_first_test_seed() {
        let seed: Vec<u8> = (0..32)
            .map(|i| {
                u8::from_str_radix(
                    &"9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60"
                        [i * 2..i * 2 + 2],
                    16,
                )
                .unwrap()
            })
            .collect();
        let public = public_key_of_seed(&seed).unwrap();
        let hex: String = public.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
        );
        assert!(public_key_of_seed(&[0; 31]).is_none());
    }

    #[test]
    fn malformed_pem_is_refused_without_repeating_it() {
        let error = checked_certificate("not pem", "secret-key-text", 0).unwrap_err();
        assert!(error.contains("no PEM certificate"), "{error}");
        assert!(!error.contains("secret-key-text"));
    }
}
