//! An endpoint's settings as `ae_events.relay_lease` hands them to the relay holding it, and the
//! events it delivers.

use crate::signing::SigningKey;
use std::time::Duration;

#[derive(Clone, Debug, PartialEq)]
pub struct EndpointConfig {
    pub name: String,
    pub url: String,
    /// The URL parsed once (None: it cannot be parsed; every attempt fails saying so).
    pub request_url: Option<reqwest::Url>,
    /// Static headers (as the DBA gave them), ready to send.
    pub headers: reqwest::header::HeaderMap,
    pub timeout: Duration,
    pub retry_schedule: Vec<Duration>,
    pub retry_jitter: f64,
    pub max_in_flight: usize,
    /// Every active secret's key, newest first; a rotated-out one until its grace period ends.
    pub keys: Vec<SigningKey>,
    /// Where delivery stands in the database (the worker starts there).
    pub cursor: Position,
    /// Requests per second at most (None: no limit).
    pub rate_limit: Option<f64>,
    /// Which endpoint of this name (one dropped and created again gets a new id): the relay
    /// functions refuse calls for another.
    pub endpoint_id: i64,
    /// How the endpoint is reached beyond its URL and headers: proxy, client certificate,
    /// OAuth2 (alter_endpoint; docs/webhooks.md).
    pub egress: Egress,
}

/// An endpoint's egress settings as alter_endpoint stored them (SQL checked them: a proxy URL
/// the relay can parse, a certificate that matches its key and was valid then, OAuth2 settings
/// complete). They hold secrets: Debug shows none of them.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Egress {
    /// The endpoint's own forward proxy, `http(s)://[user[:password]@]host[:port]` (user info
    /// percent-encoded as in any URL); None: the relay-wide `--proxy`, if any.
    pub proxy: Option<String>,
    /// The client certificate presented to this endpoint only (mutual TLS).
    pub client_identity: Option<ClientIdentity>,
    /// OAuth2 client credentials: a Bearer token fetched for this endpoint.
    pub oauth2: Option<OAuth2Settings>,
}

/// A client certificate chain (PEM, the client's own certificate first) and its private key
/// (PEM: PKCS#8, PKCS#1 RSA or SEC1 EC).
#[derive(Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    pub certificate_chain_pem: String,
    pub private_key_pem: String,
}

/// OAuth2 client credentials grant (RFC 6749 §4.4) settings.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct OAuth2Settings {
    pub token_url: String,
    pub client_id: String,
    pub client_secret: String,
    /// Space-separated scopes; None: the request names none.
    pub scope: Option<String>,
}

impl Egress {
    /// The values that are secrets, to be masked wherever an error text could repeat them: the
    /// proxy's user info and password (as written and percent-decoded), the OAuth2 client
    /// secret (as given and form-encoded, alone and with its id, and the Basic credentials). The client key never reaches an error
    /// text.
    pub fn secrets(&self) -> Vec<String> {
        let mut secrets = Vec::new();
        if let Some(url) = self
            .proxy
            .as_deref()
            .and_then(|p| reqwest::Url::parse(p).ok())
        {
            if let Some(password) = url.password() {
                secrets.push(password.to_owned());
                secrets.push(percent_decode(password));
                secrets.push(format!("{}:{password}", url.username()));
            }
        }
        if let Some(oauth2) = &self.oauth2 {
            // As sent (form-encoded, then base64 in Basic) and as a server may echo it back
            // (decoded, or the id:secret pair before or after form-encoding).
            let encoded = crate::oauth2::form_encode(&oauth2.client_secret);
            secrets.push(format!(
                "{}:{encoded}",
                crate::oauth2::form_encode(&oauth2.client_id)
            ));
            secrets.push(format!("{}:{}", oauth2.client_id, oauth2.client_secret));
            secrets.push(encoded);
            secrets.push(oauth2.client_secret.clone());
            secrets.push(crate::oauth2::basic_credentials(oauth2));
        }
        secrets.retain(|secret| !secret.is_empty());
        secrets
    }
}

/// `%XX` escapes of a URL's user or password decoded (invalid UTF-8 as U+FFFD).
pub fn percent_decode(text: &str) -> String {
    percent_encoding::percent_decode_str(text)
        .decode_utf8_lossy()
        .into_owned()
}

impl std::fmt::Debug for Egress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Whether each is set, never a value (user info, keys, secrets).
        f.debug_struct("Egress")
            .field("proxy", &self.proxy.as_ref().map(|_| ".."))
            .field(
                "client_identity",
                &self.client_identity.as_ref().map(|_| ".."),
            )
            .field("oauth2", &self.oauth2.as_ref().map(|_| ".."))
            .finish()
    }
}

/// A place in the outbox's delivery order: epoch (first id of the cluster's range), transaction
/// id, outbox id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Position {
    pub epoch: i64,
    pub txid: u64,
    pub id: i64,
}

/// One event to send (from the outbox, through relay_fetch or relay_due), or a test event of
/// `send_test_event` (through relay_tests).
#[derive(Clone, Debug)]
pub struct Event {
    pub id: i64,
    pub event_id: String,
    pub subscription_key: String,
    pub event_type: String,
    pub aggregate_id: i64,
    pub snapshot_version: i32,
    /// Exactly the stored jsonb's JSON text: the request's body (shared, not copied, by
    /// attempts).
    pub payload: bytes::Bytes,
    /// Attempts made before this one.
    pub attempts: i32,
    /// The event's time (its transaction's), for the commit-to-delivery lag metric.
    pub occurred_at: std::time::SystemTime,
    /// A test event: sent with `ae-test: true`, outside its instance's order, its outcome
    /// recorded by relay_record_tests (`id` is its test_events id).
    pub test: bool,
}

#[cfg(test)]
mod percent_tests {
    use super::percent_decode;

    #[test]
    fn a_urls_user_info_is_decoded_as_sent() {
        assert_eq!(percent_decode("p%40ss%3Aw%2Fd+x"), "p@ss:w/d+x");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%ff%41"), "\u{fffd}A");
    }
}
