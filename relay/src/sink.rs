//! Where an endpoint's events go, by its URL's scheme: `nats://` publishes to NATS JetStream
//! (nats_sink), anything else is a webhook POST (http_sink, which also reports a URL it cannot
//! parse). The scheme is looked at on every attempt, so that a URL changed by `alter_endpoint`
//! takes effect like any other setting.
//!
//! Every failed attempt's error text passes through `safe_error_text` before it is recorded
//! (delivery_status.last_error, readable by ae_events_reader) or logged: the values of the
//! headers the relay sent are masked, control characters and NUL (which PostgreSQL refuses in
//! text) replaced, and the length capped. A panic during an attempt is a failed attempt.

use crate::config::RelayConfig;
use crate::endpoint::{EndpointConfig, Event};
use crate::failpoint::At;
use crate::http_sink;
pub use crate::http_sink::Attempt;
use crate::nats_sink::NatsConnections;
use futures_util::FutureExt;
use std::panic::AssertUnwindSafe;

/// The most of an error text recorded, in bytes (cut at a character boundary).
pub const ERROR_TEXT_BYTES: usize = 1024;

/// A header value this long or longer is masked wherever an error text repeats it (shorter
/// ones are words like `t1` that masking would only garble).
pub const SECRET_MIN_BYTES: usize = 6;

/// What replaces a masked value.
pub const REDACTED: &str = "[redacted]";

/// What every worker of a relay shares to deliver: the HTTP client and the NATS connections.
/// Cheap to clone.
#[derive(Clone)]
pub struct Sinks {
    http: http_sink::HttpClient,
    nats: NatsConnections,
}

impl Sinks {
    pub fn new(config: &RelayConfig) -> Result<Sinks, String> {
        Ok(Sinks {
            http: http_sink::HttpClient::new(config)?,
            nats: NatsConnections::new(config),
        })
    }

    /// One attempt to deliver the event to the endpoint.
    pub async fn deliver(&self, endpoint: &EndpointConfig, event: &Event) -> Attempt {
        let attempt = async {
            crate::failpoint::check(At::Attempt, &endpoint.name);
            if endpoint.url.starts_with("nats://") {
                self.nats.deliver(endpoint, event).await
            } else {
                http_sink::deliver(&self.http, endpoint, event).await
            }
        };
        // A panic (a bug, or a setting nothing else caught) fails this attempt only: it is
        // recorded and retried on the schedule, and the worker goes on. Nothing the attempt
        // shares is left half-changed by a panic (the NATS map recovers a poisoned lock).
        let attempt = AssertUnwindSafe(attempt)
            .catch_unwind()
            .await
            .unwrap_or_else(|_| Attempt::Failed {
                status: None,
                error: "the relay failed during this attempt (a panic: see the relay's log)"
                    .to_owned(),
                retry_after: None,
            });
        match attempt {
            Attempt::Failed {
                status,
                error,
                retry_after,
            } => Attempt::Failed {
                status,
                error: safe_error_text(&error, &secrets(endpoint), ERROR_TEXT_BYTES),
                retry_after,
            },
            other => other,
        }
    }
}

/// The values of the static headers sent to this endpoint that are long enough to be secrets,
/// and its egress settings' secrets (proxy password, OAuth2 client secret).
pub fn secrets(endpoint: &EndpointConfig) -> Vec<String> {
    let mut values: Vec<String> = endpoint
        .headers
        .values()
        .map(|value| String::from_utf8_lossy(value.as_bytes()).trim().to_owned())
        .chain(endpoint.egress.secrets())
        .filter(|value| value.len() >= SECRET_MIN_BYTES)
        .collect();
    // Longest first: a value that contains another is masked whole.
    values.sort_by_key(|value| std::cmp::Reverse(value.len()));
    values.dedup();
    values
}

/// An error text that is safe to record and show: every occurrence of a secret masked (and a
/// secret's beginning cut off at the end of the text, as when a body is truncated in the middle
/// of one), NUL and control characters other than newline and tab replaced with U+FFFD, and at
/// most `max_bytes` bytes (at a character boundary, `…` marking the cut).
pub fn safe_error_text(text: &str, secrets: &[String], max_bytes: usize) -> String {
    let mut masked = mask(text, secrets);
    if masked.len() > max_bytes {
        let mut cut = max_bytes.saturating_sub('…'.len_utf8());
        while !masked.is_char_boundary(cut) {
            cut -= 1;
        }
        masked.truncate(cut);
        masked = mask_cut_tail(&masked, secrets);
        masked.push('…');
    } else {
        masked = mask_cut_tail(&masked, secrets);
    }
    masked
        .chars()
        .map(|c| {
            if c.is_control() && c != '\n' && c != '\t' {
                '\u{FFFD}'
            } else {
                c
            }
        })
        .collect()
}

/// Every whole occurrence of a secret replaced (case as sent; the longest first).
pub fn mask(text: &str, secrets: &[String]) -> String {
    let mut masked = text.to_owned();
    for secret in secrets.iter().filter(|s| s.len() >= SECRET_MIN_BYTES) {
        if masked.contains(secret.as_str()) {
            masked = masked.replace(secret.as_str(), REDACTED);
        }
    }
    masked
}

/// A text that ends with the beginning of a secret (4 bytes or more of it): that end masked.
pub fn mask_cut_tail(text: &str, secrets: &[String]) -> String {
    for secret in secrets.iter().filter(|s| s.len() >= SECRET_MIN_BYTES) {
        for length in (4..secret.len()).rev() {
            let Some(start) = secret.get(..length) else {
                continue;
            };
            if let Some(kept) = text.strip_suffix(start) {
                return format!("{kept}{REDACTED}");
            }
        }
    }
    text.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secrets() -> Vec<String> {
        vec![
            "Bearer tok-0123456789abcdef".to_owned(),
            "sk_live_SECRETVALUE".to_owned(),
        ]
    }

    #[test]
    fn echoed_header_values_are_masked_whole_and_cut() {
        let text = "HTTP 500: you sent authorization=Bearer tok-0123456789abcdef and \
                    key sk_live_SECRETVALUE, again Bearer tok-0123456789abcdef";
        let safe = safe_error_text(text, &secrets(), 1024);
        assert_eq!(
            safe,
            "HTTP 500: you sent authorization=[redacted] and key [redacted], again [redacted]"
        );
        // Cut in the middle of one (the body's cap): its beginning is masked too.
        let safe = safe_error_text("HTTP 500: got Bearer tok-0123", &secrets(), 1024);
        assert_eq!(safe, "HTTP 500: got [redacted]");
        let long = format!("{}Bearer tok-0123456789abcdef", "x".repeat(40));
        let safe = safe_error_text(&long, &secrets(), 50);
        assert!(!safe.contains("tok-0"), "{safe}");
        assert!(safe.len() <= 50 + REDACTED.len(), "{safe}");
    }

    #[test]
    fn nul_and_control_characters_are_replaced_and_the_length_is_capped() {
        let safe = safe_error_text("a\0b\u{1b}[2J\r\nc\td\u{7f}\u{9b}é", &[], 1024);
        assert_eq!(safe, "a\u{FFFD}b\u{FFFD}[2J\u{FFFD}\nc\td\u{FFFD}\u{FFFD}é");
        assert!(!safe.contains('\0'));
        let safe = safe_error_text(&"é".repeat(1000), &[], 101);
        assert!(safe.len() <= 101, "{}", safe.len());
        assert!(safe.ends_with('…'));
        assert_eq!(safe_error_text("short", &[], 1024), "short");
        // Short values are not secrets: nothing is garbled.
        assert_eq!(mask("t1 t1", &["t1".to_owned()]), "t1 t1");
    }
}
