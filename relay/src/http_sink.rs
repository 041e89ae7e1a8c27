//! One attempt to deliver an event over HTTP (webhooks.md §2-3): the request with its headers
//! and signatures, and what the answer means.

use crate::address_guard::{self, GuardedResolver, Refused};
use crate::config::RelayConfig;
use crate::endpoint::{EndpointConfig, Event};
use crate::retry::parse_retry_after;
use crate::signing::signature_header;
use reqwest::header::{HeaderName, HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use std::path::Path;
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

/// The HTTP client every endpoint shares: no redirects followed (a 3xx is a failure), no
/// cookies, rustls verifying certificates against the system's roots and `--ca-bundle`'s, and
/// with `--refuse-private-addresses` connecting to public addresses only.
#[derive(Clone)]
pub struct HttpClient {
    client: reqwest::Client,
    refuse_private_addresses: bool,
}

impl HttpClient {
    pub fn new(config: &RelayConfig) -> Result<HttpClient, String> {
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(crate::USER_AGENT)
            .pool_idle_timeout(Duration::from_secs(60))
            // Counted in the relay's socket budget (sockets.rs).
            .pool_max_idle_per_host(crate::sockets::IDLE_PER_HOST);
        if let Some(path) = &config.ca_bundle {
            builder = builder.tls_certs_merge(read_ca_bundle(path)?);
        }
        if config.refuse_private_addresses {
            // A proxy would resolve and connect in the relay's stead, out of the guard's sight.
            builder = builder.dns_resolver(GuardedResolver).no_proxy();
        }
        let client = builder.build().map_err(|error| match &config.ca_bundle {
            Some(path) => format!(
                "cannot set up the HTTP client with the CA bundle {}: {}",
                path.display(),
                innermost(&error)
            ),
            None => format!("cannot set up the HTTP client: {}", innermost(&error)),
        })?;
        Ok(HttpClient {
            client,
            refuse_private_addresses: config.refuse_private_addresses,
        })
    }
}

/// The certificates of a PEM file (one or more): refused, naming the file, when it cannot be
/// read or holds none.
pub fn read_ca_bundle(path: &Path) -> Result<Vec<reqwest::Certificate>, String> {
    let pem = std::fs::read(path)
        .map_err(|error| format!("cannot read the CA bundle {}: {error}", path.display()))?;
    let certificates = reqwest::Certificate::from_pem_bundle(&pem).map_err(|error| {
        format!(
            "the CA bundle {} is not PEM certificates: {}",
            path.display(),
            innermost(&error)
        )
    })?;
    if certificates.is_empty() {
        return Err(format!(
            "the CA bundle {} holds no certificate (expected PEM \"BEGIN CERTIFICATE\" blocks)",
            path.display()
        ));
    }
    // The PEM parser checks the armour only; the TLS set-up checks the certificates.
    reqwest::Client::builder()
        .tls_certs_merge(certificates.clone())
        .build()
        .map_err(|error| {
            format!(
                "the CA bundle {} holds a certificate that cannot be used: {}",
                path.display(),
                innermost(&error)
            )
        })?;
    Ok(certificates)
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
    if client.refuse_private_addresses {
        // An IP-literal host is connected to without resolving: the resolver never sees it.
        if let Err(refused) = address_guard::check_url(&url) {
            return Attempt::Failed {
                status: None,
                error: refused.to_string(),
                retry_after: None,
            };
        }
    }
    let signature = signature_header(&endpoint.keys, &event.event_id, timestamp, &event.payload);
    // Static headers that would pass for the relay's own or steer the connection are left out,
    // whatever the database holds (the SQL refuses them for new definitions; older rows may
    // have them).
    let mut headers = reqwest::header::HeaderMap::with_capacity(endpoint.headers.len() + 8);
    for (name, value) in &endpoint.headers {
        if !is_reserved_header(name.as_str()) {
            headers.append(name.clone(), value.clone());
        }
    }
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
    let request = client
        .client
        .post(url)
        .headers(headers)
        .timeout(endpoint.timeout)
        .body(event.payload.clone());
    let mut response = match request.send().await {
        Ok(response) => response,
        Err(error) => {
            return Attempt::Failed {
                status: None,
                error: describe(&error, endpoint.timeout),
                retry_after: None,
            }
        }
    };
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
    let mut snippet = Vec::with_capacity(ERROR_BODY_BYTES);
    while snippet.len() < ERROR_BODY_BYTES {
        match tokio::time::timeout(endpoint.timeout, response.chunk()).await {
            Ok(Ok(Some(chunk))) => {
                let room = ERROR_BODY_BYTES - snippet.len();
                snippet.extend_from_slice(&chunk[..chunk.len().min(room)]);
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
    Attempt::Failed {
        status: Some(status),
        error,
        retry_after,
    }
}

/// The headers the relay sets itself (webhooks.md §2), as `is_reserved_header` compares them.
const OWN_HEADERS: &[&str] = &[
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "ae-subscription-key",
    "ae-event-type",
    "ae-aggregate-id",
    "ae-snapshot-version",
    "content-type",
    "user-agent",
];

/// Headers about the connection or the message's framing, not the event: a static one would
/// desynchronise the request (content-length, transfer-encoding), smuggle one, or redirect it
/// (host).
const HOP_BY_HOP_HEADERS: &[&str] = &[
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "host",
    "content-length",
    "expect",
];

/// Whether a static header name is one the relay does not send: the relay's own headers and
/// hop-by-hop ones (and `proxy-*`), compared case-insensitively and with `_` taken as `-`
/// (CGI and WSGI servers read `webhook_id` as `HTTP_WEBHOOK_ID`, the same as `webhook-id`).
pub fn is_reserved_header(name: &str) -> bool {
    let normalized = name.trim().to_ascii_lowercase().replace('_', "-");
    OWN_HEADERS.contains(&normalized.as_str())
        || HOP_BY_HOP_HEADERS.contains(&normalized.as_str())
        || normalized.starts_with("proxy-")
}

fn describe(error: &reqwest::Error, timeout: Duration) -> String {
    if error.is_timeout() {
        return format!("timed out after {} ms", timeout.as_millis());
    }
    // The innermost cause says what happened (connection refused, TLS, DNS).
    let cause = innermost(error);
    if let Some(refused) = cause.downcast_ref::<Refused>() {
        return refused.to_string();
    }
    if error.is_connect() {
        format!("could not connect: {cause}")
    } else {
        format!("request failed: {cause}")
    }
}

fn innermost<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> &'a (dyn std::error::Error + 'static) {
    let mut cause = error;
    while let Some(inner) = cause.source() {
        cause = inner;
    }
    cause
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
        for name in ["authorization", "x-tenant", "x_api_key", "webhook-extra", "ae-tenant"] {
            assert!(!is_reserved_header(name), "{name}");
        }
    }
}
