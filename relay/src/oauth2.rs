//! OAuth2 client credentials (RFC 6749 §4.4) for endpoints that ask for a Bearer token
//! (alter_endpoint's oauth2_*; docs/webhooks.md): the token is fetched from the endpoint's token
//! URL through the endpoint's own egress (its proxy, the address guard), cached per endpoint
//! until shortly before it expires, and fetched again once when the receiver answers 401.
//!
//! The client authenticates with HTTP Basic (`client_secret_basic`, the method every
//! authorization server must support, RFC 6749 §2.3.1): id and secret form-encoded, then
//! base64. A failure is the attempt's, its error text starting with "OAuth2 token endpoint: "
//! (the secret is masked by sink::safe_error_text, and the token never enters an error text).

use crate::endpoint::OAuth2Settings;
use crate::transport;
use base64::Engine as _;
use http_body_util::BodyExt as _;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// The most of a token response read: a token response is a small JSON object.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// The most of a failed token response's body kept in the error text.
const ERROR_BODY_BYTES: usize = 200;

/// A token without `expires_in` is used until a 401, or this long at most.
const LIFETIME_WITHOUT_EXPIRY: Duration = Duration::from_secs(3600);

/// Tokens are fetched again this long before they expire (10% of a shorter lifetime), so that
/// a request never leaves with one about to expire.
const REFRESH_MARGIN: Duration = Duration::from_secs(30);

/// Endpoints whose tokens are cached at once (past that the cache starts over: a relay serves
/// a share of the endpoints, far fewer).
const MAX_ENDPOINTS: usize = 10_000;

/// A token and when to fetch the next one.
#[derive(Clone)]
pub struct Token {
    /// `Bearer <access_token>`, ready to send.
    pub header: http::HeaderValue,
    access_token: Arc<str>,
    refresh_at: Instant,
}

impl Token {
    /// The access token itself (to mask it in error texts).
    pub fn secret(&self) -> &str {
        &self.access_token
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(..)") // never in logs
    }
}

struct Entry {
    settings: OAuth2Settings,
    /// Held while fetching: the endpoint's concurrent attempts wait for one fetch.
    token: tokio::sync::Mutex<Option<Token>>,
}

/// The relay's token cache, per endpoint id (its settings changed: a new token).
#[derive(Default)]
pub struct Tokens {
    entries: Mutex<HashMap<i64, Arc<Entry>>>,
}

impl Tokens {
    /// The endpoint's token: the cached one while it is fresh, else a new one. `rejected`: the
    /// token a 401 answered, fetched again unless another attempt already replaced it.
    pub async fn bearer(
        &self,
        egress: &transport::Egress,
        endpoint_id: i64,
        settings: &OAuth2Settings,
        rejected: Option<&Token>,
    ) -> Result<Token, String> {
        let entry = {
            let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
            match entries.get(&endpoint_id) {
                Some(entry) if entry.settings == *settings => entry.clone(),
                _ => {
                    if entries.len() >= MAX_ENDPOINTS {
                        entries.clear();
                    }
                    let entry = Arc::new(Entry {
                        settings: settings.clone(),
                        token: tokio::sync::Mutex::new(None),
                    });
                    entries.insert(endpoint_id, entry.clone());
                    entry
                }
            }
        };
        let mut slot = entry.token.lock().await;
        if let Some(token) = slot.as_ref() {
            let was_rejected =
                rejected.is_some_and(|rejected| rejected.access_token == token.access_token);
            if Instant::now() < token.refresh_at && !was_rejected {
                return Ok(token.clone());
            }
        }
        *slot = None;
        let token = fetch(egress, settings)
            .await
            .map_err(|error| format!("OAuth2 token endpoint: {error}"))?;
        *slot = Some(token.clone());
        Ok(token)
    }
}

/// One token request: POST token_url, grant_type=client_credentials (and the scope), Basic
/// client authentication.
async fn fetch(egress: &transport::Egress, settings: &OAuth2Settings) -> Result<Token, String> {
    let uri: http::Uri = settings
        .token_url
        .parse()
        .map_err(|_| "the token URL cannot be used".to_owned())?;
    let mut form = "grant_type=client_credentials".to_owned();
    if let Some(scope) = &settings.scope {
        form.push_str("&scope=");
        form.push_str(&form_encode(scope));
    }
    let authorization =
        http::HeaderValue::try_from(format!("Basic {}", basic_credentials(settings)))
            .map_err(|_| "the client credentials cannot be sent".to_owned())?;
    // A proxy that echoes its credentials (a plain-HTTP token URL carries them) is masked in
    // the error text as for webhooks.
    let proxy_secrets = egress.proxy_secrets(&uri);
    let mut request = http::Request::new(transport::Body::new(bytes::Bytes::from(form)));
    *request.method_mut() = http::Method::POST;
    *request.uri_mut() = uri;
    let headers = request.headers_mut();
    headers.insert(http::header::AUTHORIZATION, authorization);
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/x-www-form-urlencoded"),
    );
    headers.insert(
        http::header::ACCEPT,
        http::HeaderValue::from_static("application/json"),
    );
    headers.insert(
        http::header::USER_AGENT,
        http::HeaderValue::from_static(crate::USER_AGENT),
    );
    let response = egress.send(request).await?;
    let status = response.status();
    let body = http_body_util::Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
        .collect()
        .await
        .map_err(|error| {
            if error.is::<http_body_util::LengthLimitError>() {
                format!(
                    "HTTP {}: an answer of more than {MAX_RESPONSE_BYTES} bytes",
                    status.as_u16()
                )
            } else {
                format!("HTTP {}: the answer broke off: {error}", status.as_u16())
            }
        })?
        .to_bytes();
    if !status.is_success() {
        // RFC 6749 §5.2: {"error": "invalid_client", ...}; the start of it says why.
        let text = String::from_utf8_lossy(&body[..body.len().min(ERROR_BODY_BYTES)]).into_owned();
        let text = crate::sink::mask(text.trim(), &proxy_secrets);
        let text = crate::sink::mask_cut_tail(&text, &proxy_secrets);
        let text = text.trim();
        return Err(if text.is_empty() {
            format!("HTTP {}", status.as_u16())
        } else {
            format!("HTTP {}: {text}", status.as_u16())
        });
    }
    let fields: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&body)
        .map_err(|_| format!("HTTP {}: the answer is not a JSON object", status.as_u16()))?;
    let access_token = fields
        .get("access_token")
        .and_then(|v| v.as_str())
        .filter(|token| !token.is_empty())
        .ok_or_else(|| "the answer has no access_token".to_owned())?;
    if let Some(kind) = fields.get("token_type").and_then(|v| v.as_str()) {
        if !kind.eq_ignore_ascii_case("bearer") {
            return Err(format!(
                "token_type {:?}: only Bearer tokens are sent",
                kind.chars().take(40).collect::<String>()
            ));
        }
    }
    // A number, or (some servers) a string of one.
    let expires_in = fields.get("expires_in").and_then(|v| {
        v.as_f64()
            .or_else(|| v.as_str().and_then(|s| s.trim().parse::<f64>().ok()))
    });
    let lifetime = match expires_in {
        Some(seconds) if seconds.is_finite() && seconds > 0.0 => {
            Duration::from_secs_f64(seconds.min(LIFETIME_WITHOUT_EXPIRY.as_secs_f64() * 24.0))
        }
        Some(_) => Duration::ZERO,
        None => LIFETIME_WITHOUT_EXPIRY,
    };
    let margin = REFRESH_MARGIN.min(lifetime / 10);
    let header = http::HeaderValue::try_from(format!("Bearer {access_token}"))
        .map_err(|_| "the access_token cannot be sent in a header".to_owned())?;
    Ok(Token {
        header,
        access_token: Arc::from(access_token),
        refresh_at: Instant::now() + lifetime.saturating_sub(margin),
    })
}

/// The Basic credentials of the token request (RFC 6749 §2.3.1: id and secret form-encoded,
/// then base64): a secret too, masked like the client secret.
pub fn basic_credentials(settings: &OAuth2Settings) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!(
        "{}:{}",
        form_encode(&settings.client_id),
        form_encode(&settings.client_secret)
    ))
}

/// application/x-www-form-urlencoded: unreserved bytes as they are, space as `+`, the rest
/// %XX.
pub(crate) fn form_encode(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len());
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                encoded.push(byte as char)
            }
            b' ' => encoded.push('+'),
            _ => encoded.push_str(&format!("%{byte:02X}")),
        }
    }
    encoded
}

#[cfg(test)]
mod tests {
    use super::form_encode;

    /// A token endpoint that echoes the credentials in any of the forms they travel in has
    /// each masked, also when the error text's bound cuts one off.
    #[test]
    fn every_form_of_the_client_secret_is_masked() {
        let egress = crate::endpoint::Egress {
            oauth2: Some(crate::endpoint::OAuth2Settings {
                token_url: "https://auth.example/token".to_owned(),
                client_id: "relay client".to_owned(),
                client_secret: "s3cret/with+form:chars".to_owned(),
                scope: None,
            }),
            ..Default::default()
        };
        let mut secrets = egress.secrets();
        secrets.sort_by_key(|secret| std::cmp::Reverse(secret.len()));
        for echoed in [
            "relay client:s3cret/with+form:chars",
            "relay+client:s3cret%2Fwith%2Bform%3Achars",
            "s3cret%2Fwith%2Bform%3Achars",
            "s3cret/with+form:chars",
        ] {
            let text =
                crate::sink::safe_error_text(&format!("HTTP 401: bad {echoed}"), &secrets, 500);
            assert!(!text.contains("s3cret"), "{text}");
        }
        let cut = crate::sink::safe_error_text("HTTP 401: bad s3cret/wi", &secrets, 500);
        assert!(!cut.contains("s3cret"), "{cut}");
    }

    #[test]
    fn credentials_are_form_encoded_before_basic() {
        assert_eq!(form_encode("a b+c:d/é"), "a+b%2Bc%3Ad%2F%C3%A9");
        assert_eq!(form_encode("Az09-._*"), "Az09-._*");
    }
}
