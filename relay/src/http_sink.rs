//! One attempt to deliver an event over HTTP (webhooks.md §2-3): the request with its headers
//! and signatures, and what the answer means.

use crate::endpoint::{EndpointConfig, Event};
use crate::retry::parse_retry_after;
use crate::signing::signature_header;
use reqwest::header::{HeaderName, HeaderValue, CONTENT_TYPE, RETRY_AFTER};
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
/// cookies, rustls.
pub fn client() -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(crate::USER_AGENT)
        .pool_idle_timeout(Duration::from_secs(60))
        .build()
}

/// Send one event to the endpoint and classify the answer.
pub async fn deliver(
    client: &reqwest::Client,
    endpoint: &EndpointConfig,
    event: &Event,
) -> Attempt {
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
    let signature = signature_header(&endpoint.keys, &event.event_id, timestamp, &event.payload);
    let mut headers = endpoint.headers.clone();
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
    let mut snippet = Vec::new();
    while snippet.len() < ERROR_BODY_BYTES {
        match tokio::time::timeout(endpoint.timeout, response.chunk()).await {
            Ok(Ok(Some(chunk))) => snippet.extend_from_slice(&chunk),
            _ => break,
        }
    }
    snippet.truncate(ERROR_BODY_BYTES);
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

fn describe(error: &reqwest::Error, timeout: Duration) -> String {
    if error.is_timeout() {
        return format!("timed out after {} ms", timeout.as_millis());
    }
    // The innermost cause says what happened (connection refused, TLS, DNS).
    let mut cause: &dyn std::error::Error = error;
    while let Some(inner) = cause.source() {
        cause = inner;
    }
    if error.is_connect() {
        format!("could not connect: {cause}")
    } else {
        format!("request failed: {cause}")
    }
}
