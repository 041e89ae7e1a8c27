//! One attempt to deliver an event over HTTP (webhooks.md §2-3): the request with its headers
//! and signatures, and what the answer means.

use crate::config::RelayConfig;
use crate::endpoint::{EndpointConfig, Event};
use crate::retry::parse_retry_after;
use crate::signing::{signature_header, SigningKey};
use crate::transport;
use base64::Engine as _;
use http_body_util::BodyExt as _;
use reqwest::header::{
    HeaderName, HeaderValue, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER, USER_AGENT,
};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The most of a failed answer's body kept as its error text.
const ERROR_BODY_BYTES: usize = 512;

#[derive(Clone, Debug, PartialEq)]
pub enum Attempt {
    /// 2xx.
    Delivered { status: u16 },
    /// 410 Gone: the endpoint is to be disabled.
    Gone { status: u16 },
    /// Anything else: retried per the schedule. `retry_after` only for 429/502/503/504.
    Failed {
        status: Option<u16>,
        error: String,
        retry_after: Option<Duration>,
    },
}

/// The HTTP clients of the endpoints (transport.rs): HTTP/1.1, no redirects followed (a 3xx is
/// a failure), no cookies, rustls verifying certificates against the system's roots and
/// `--ca-bundle`'s, interim responses bounded, with `--refuse-private-addresses` connecting to
/// public addresses only; through the endpoint's proxy or `--proxy`, presenting the endpoint's
/// client certificate. One shared by the endpoints without settings of their own.
#[derive(Clone)]
pub struct HttpClient {
    egresses: Arc<transport::Egresses>,
    /// The endpoints' OAuth2 tokens (oauth2.rs).
    tokens: Arc<crate::oauth2::Tokens>,
}

impl HttpClient {
    pub fn new(config: &RelayConfig) -> Result<HttpClient, String> {
        Ok(HttpClient {
            egresses: Arc::new(transport::Egresses::new(config)?),
            tokens: Arc::default(),
        })
    }

    /// What this endpoint's requests go through (its proxy, its client certificate), built on
    /// its first use of these settings: webhooks and OAuth2 token requests alike. The error is
    /// the attempt's.
    pub fn egress(&self, endpoint: &EndpointConfig) -> Result<transport::Egress, String> {
        let identity = endpoint.egress.client_identity.as_ref();
        self.egresses.for_endpoint(
            endpoint.egress.proxy.as_deref(),
            identity.map(|identity| identity.certificate_chain_pem.as_str()),
            identity.map(|identity| identity.private_key_pem.as_str()),
        )
    }

    /// The egress of the endpoint's OAuth2 token requests: its proxy, but not its client
    /// certificate, which goes to the endpoint only (shared/contract/egress.md).
    pub fn token_egress(&self, endpoint: &EndpointConfig) -> Result<transport::Egress, String> {
        self.egresses
            .for_endpoint(endpoint.egress.proxy.as_deref(), None, None)
    }
}

pub use crate::transport::read_ca_bundle;

/// The headers every request for `event` carries (webhooks.md §2): the Standard Webhooks id,
/// timestamp and signature (by `keys`), the event's own, the content type and the user agent.
/// Inserted over any static header of the same name.
pub fn insert_event_headers(
    headers: &mut reqwest::header::HeaderMap,
    keys: &[SigningKey],
    event: &Event,
    timestamp: i64,
) {
    let signature = signature_header(keys, &event.event_id, timestamp, &event.payload);
    let fixed: [(&str, String); 6] = [
        ("webhook-id", event.event_id.clone()),
        ("webhook-timestamp", timestamp.to_string()),
        ("webhook-signature", signature),
        ("ae-subscription-key", event.subscription_key.clone()),
        ("ae-event-type", event.event_type.clone()),
        ("ae-aggregate-id", event.aggregate_id.to_string()),
    ];
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    for (name, value) in fixed {
        if let Ok(value) = HeaderValue::try_from(value) {
            headers.insert(HeaderName::from_static(name), value);
        }
    }
    headers.insert(
        HeaderName::from_static("ae-snapshot-version"),
        HeaderValue::from(event.snapshot_version),
    );
    if event.test {
        headers.insert(
            HeaderName::from_static("ae-test"),
            HeaderValue::from_static("true"),
        );
    }
    headers.insert(USER_AGENT, HeaderValue::from_static(crate::USER_AGENT));
}

/// Send one event to the endpoint and classify the answer.
pub async fn deliver(client: &HttpClient, endpoint: &EndpointConfig, event: &Event) -> Attempt {
    let timestamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let Some(url) = endpoint.request_url.clone() else {
        return Attempt::Failed {
            status: None,
            error: format!("the URL {:?} cannot be parsed", endpoint.url),
            retry_after: None,
        };
    };
    let egress = match client.egress(endpoint) {
        Ok(egress) => egress,
        Err(error) => {
            return Attempt::Failed {
                status: None,
                error,
                retry_after: None,
            }
        }
    };
    // Static headers that would pass for the relay's own or steer the connection are left out,
    // whatever the database holds (the SQL refuses them for new definitions; older rows may
    // have them).
    let mut headers = reqwest::header::HeaderMap::with_capacity(endpoint.headers.len() + 8);
    for (name, value) in &endpoint.headers {
        if !is_reserved_header(name.as_str()) {
            headers.append(name.clone(), value.clone());
        }
    }
    insert_event_headers(&mut headers, &endpoint.keys, event, timestamp);
    // Credentials in the URL are sent as Basic authentication (not as part of the host),
    // unless a static header says otherwise.
    let mut url = url;
    if !url.username().is_empty() || url.password().is_some() {
        let user = crate::endpoint::percent_decode(url.username());
        let password = url
            .password()
            .map(crate::endpoint::percent_decode)
            .unwrap_or_default();
        let _ = url.set_username("");
        let _ = url.set_password(None);
        if !headers.contains_key(AUTHORIZATION) {
            let credentials =
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
            if let Ok(value) = HeaderValue::try_from(format!("Basic {credentials}")) {
                headers.insert(AUTHORIZATION, value);
            }
        }
    }
    let uri: http::Uri = match url.as_str().parse() {
        Ok(uri) => uri,
        Err(error) => {
            return Attempt::Failed {
                status: None,
                error: format!("the URL {:?} cannot be used: {error}", endpoint.url),
                retry_after: None,
            }
        }
    };
    // The whole attempt (an OAuth2 token request, connecting, sending, the answer's head and
    // the part of its body that is read) within the endpoint's timeout.
    let deadline = tokio::time::Instant::now() + endpoint.timeout;
    let timed_out = || Attempt::Failed {
        status: None,
        error: format!("timed out after {} ms", endpoint.timeout.as_millis()),
        retry_after: None,
    };
    let failed = |error: String| Attempt::Failed {
        status: None,
        error,
        retry_after: None,
    };
    // OAuth2 client credentials: the endpoint's Bearer token (cached) in place of any static
    // authorization header; the headers kept for one more try with a new token after a 401.
    let oauth2 = match &endpoint.egress.oauth2 {
        Some(settings) => match client.token_egress(endpoint) {
            Ok(token_egress) => Some((settings, token_egress)),
            Err(error) => return failed(error),
        },
        None => None,
    };
    let mut bearer = None;
    let mut retry_headers = None;
    if let Some((settings, token_egress)) = &oauth2 {
        let token = token_within(client, endpoint, settings, token_egress, None, deadline).await;
        match token {
            Ok(token) => {
                headers.insert(AUTHORIZATION, token.header.clone());
                retry_headers = Some(headers.clone());
                bearer = Some(token);
            }
            Err(error) => return failed(error),
        }
    }
    let post = |headers: reqwest::header::HeaderMap| {
        let mut request = http::Request::new(transport::Body::new(event.payload.clone()));
        *request.method_mut() = http::Method::POST;
        *request.uri_mut() = uri.clone();
        *request.headers_mut() = headers;
        request
    };
    // (Under the guard, an IP-literal host is checked by `send` when the request goes direct:
    // the resolver never sees it.)
    let mut response = match tokio::time::timeout_at(deadline, egress.send(post(headers))).await {
        Ok(Ok(response)) => response,
        Ok(Err(error)) => return failed(error),
        Err(_) => return timed_out(),
    };
    // A 401 to a token: revoked or expired early. One new token, one more try.
    if let (http::StatusCode::UNAUTHORIZED, Some(mut headers), Some((settings, token_egress))) =
        (response.status(), retry_headers, &oauth2)
    {
        drop(response);
        let rejected = bearer.as_ref();
        let token = match token_within(client, endpoint, settings, token_egress, rejected, deadline)
            .await
        {
            Ok(token) => token,
            Err(error) => return failed(error),
        };
        headers.insert(AUTHORIZATION, token.header.clone());
        bearer = Some(token);
        response = match tokio::time::timeout_at(deadline, egress.send(post(headers))).await {
            Ok(Ok(response)) => response,
            Ok(Err(error)) => return failed(error),
            Err(_) => return timed_out(),
        };
    }
    let status = response.status().as_u16();
    // A 2xx body is not read: the status is the answer (dropping the response discards it).
    if response.status().is_success() {
        return Attempt::Delivered { status };
    }
    if status == 410 {
        return Attempt::Gone { status };
    }
    let retry_after = match status {
        429 | 502 | 503 | 504 => response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now())),
        _ => None,
    };
    let mut error = format!("HTTP {status}");
    if let Some(location) = response
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
    {
        error.push_str(&format!(" (redirect to {location}, not followed)"));
    }
    // Chunk by chunk, stopping at the cap: a huge or endless body is never read whole (a chunk
    // is at most what the connection has buffered; only the part under the cap is kept).
    let mut body = response.into_body();
    let mut snippet = Vec::with_capacity(ERROR_BODY_BYTES);
    while snippet.len() < ERROR_BODY_BYTES {
        match tokio::time::timeout_at(deadline, body.frame()).await {
            Ok(Some(Ok(frame))) => {
                if let Ok(chunk) = frame.into_data() {
                    let room = ERROR_BODY_BYTES - snippet.len();
                    snippet.extend_from_slice(&chunk[..chunk.len().min(room)]);
                }
            }
            _ => break,
        }
    }
    // Lossy: invalid UTF-8 shows as U+FFFD; sink::safe_error_text masks what the relay sent
    // and replaces control characters before the text is recorded.
    let snippet = String::from_utf8_lossy(&snippet);
    if !snippet.trim().is_empty() {
        error.push_str(": ");
        error.push_str(snippet.trim());
    }
    // A receiver that echoes the Bearer token shows it masked, and so does a proxy that echoes
    // its credentials (a plain-HTTP request carries them), the start of one cut off by the
    // snippet's bound included (these are not among the endpoint's secrets that
    // sink::safe_error_text masks later).
    let mut echoed = egress.proxy_secrets(&uri);
    if let Some(token) = &bearer {
        echoed.push(token.secret().to_owned());
    }
    echoed.sort_by_key(|secret| std::cmp::Reverse(secret.len()));
    error = crate::sink::mask(&error, &echoed);
    error = crate::sink::mask_cut_tail(&error, &echoed);
    Attempt::Failed {
        status: Some(status),
        error,
        retry_after,
    }
}

/// Headers about the message's framing and the connection, or that the relay sets itself: a
/// static one would desynchronise the request (content-length, transfer-encoding), smuggle one,
/// redirect it (host) or pass for the relay's own.
const RESERVED_HEADERS: &[&str] = &[
    "content-type",
    "content-length",
    "content-encoding",
    "host",
    "user-agent",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
    "expect",
];

/// Whether a static header name is one the relay does not send: those above, `proxy-*`, and
/// the relay's own `webhook-*` and `ae-*` (webhooks.md §2), compared case-insensitively and
/// with `_` taken as `-` (CGI and WSGI servers read `webhook_id` as `HTTP_WEBHOOK_ID`, the same
/// as `webhook-id`). The SQL refuses the same names for new definitions.
pub fn is_reserved_header(name: &str) -> bool {
    let normalized = name.trim().to_ascii_lowercase().replace('_', "-");
    RESERVED_HEADERS.contains(&normalized.as_str())
        || ["proxy-", "webhook-", "ae-"]
            .iter()
            .any(|prefix| normalized.starts_with(prefix))
}

/// The endpoint's OAuth2 token (oauth2.rs; a new one when `rejected` is the cached one), within
/// the attempt's deadline.
async fn token_within(
    client: &HttpClient,
    endpoint: &EndpointConfig,
    settings: &crate::endpoint::OAuth2Settings,
    token_egress: &transport::Egress,
    rejected: Option<&crate::oauth2::Token>,
    deadline: tokio::time::Instant,
) -> Result<crate::oauth2::Token, String> {
    let token = client
        .tokens
        .bearer(token_egress, endpoint.endpoint_id, settings, rejected);
    match tokio::time::timeout_at(deadline, token).await {
        Ok(token) => token,
        Err(_) => Err(format!(
            "OAuth2 token endpoint: no token within the attempt's {} ms",
            endpoint.timeout.as_millis()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::is_reserved_header;

    #[test]
    fn own_and_hop_by_hop_header_names_are_reserved_under_any_spelling() {
        for name in [
            "webhook-id",
            "Webhook_Id",
            "WEBHOOK_SIGNATURE",
            "webhook_timestamp",
            "ae_aggregate_id",
            "AE-Event-Type",
            "ae_subscription_key",
            "ae_snapshot_version",
            "Content_Type",
            "user_agent",
            "Connection",
            "transfer_encoding",
            "TE",
            "upgrade",
            "keep-alive",
            "proxy-authorization",
            "Proxy_Connection",
            "host",
            "content_length",
            "expect",
        ] {
            assert!(is_reserved_header(name), "{name}");
        }
        for name in ["webhook-extra", "ae_tenant", "content_encoding"] {
            assert!(is_reserved_header(name), "{name}");
        }
        for name in [
            "authorization",
            "x-tenant",
            "x_api_key",
            "webhooks",
            "aether",
        ] {
            assert!(!is_reserved_header(name), "{name}");
        }
    }
}
