//! One attempt to deliver an event to NATS JetStream (an endpoint URL `nats://host[:port]/subject`):
//! the event is published to the subject with the webhook headers, and it is delivered once the
//! stream that stores the subject acknowledged it.
//!
//! - `Nats-Msg-Id` is the event id, so JetStream drops a message it already stored (a retry
//!   after a lost ack, a relay killed before it recorded a delivery), within the stream's
//!   duplicate window.
//! - One connection per server address, shared by the endpoints that publish there, made on
//!   first use; async-nats reconnects it by itself. A connection that cannot be made, no stream
//!   for the subject, a timeout: a failed attempt, retried on the endpoint's schedule.

use crate::endpoint::{EndpointConfig, Event};
use crate::http_sink::Attempt;
use crate::signing::signature_header;
use async_nats::connection::State;
use async_nats::jetstream::context::{Context, PublishErrorKind};
use async_nats::{HeaderMap, HeaderName, HeaderValue};
use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::OnceCell;

/// The port of a `nats://` URL that names none.
const DEFAULT_PORT: u16 = 4222;

/// The status recorded for a publish that JetStream acknowledged (there is no HTTP status; 200
/// keeps "delivered with 2xx" true for queries written for webhooks).
pub const ACKNOWLEDGED_STATUS: u16 = 200;

/// Where a `nats://` URL publishes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NatsTarget {
    /// `host:port` (the port filled in), the key of the shared connection.
    pub server: String,
    pub subject: String,
}

impl NatsTarget {
    /// Parse `nats://host[:port]/subject`, the subject being dot-separated tokens of
    /// `[A-Za-z0-9_-]` (no wildcards: events are published to it).
    pub fn parse(url: &str) -> Result<NatsTarget, String> {
        let invalid =
            |why: &str| format!("the URL {url:?} is not nats://host[:port]/subject: {why}");
        let rest = url
            .strip_prefix("nats://")
            .ok_or_else(|| invalid("no nats:// scheme"))?;
        let (authority, subject) = rest.split_once('/').ok_or_else(|| invalid("no subject"))?;
        if authority.is_empty()
            || authority.contains(['@', '?', '#'])
            || authority.contains(char::is_whitespace)
        {
            return Err(invalid("no host, or credentials or a query in it"));
        }
        // A port is what follows the last ':' unless that ':' is inside an IPv6 literal.
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) if !port.contains(']') => {
                let port = port
                    .parse::<u16>()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| invalid("the port is not a number from 1 to 65535"))?;
                (host, port)
            }
            _ => (authority, DEFAULT_PORT),
        };
        if host.is_empty() {
            return Err(invalid("no host"));
        }
        let token_ok = |token: &str| {
            !token.is_empty()
                && token
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        };
        if !subject.split('.').all(token_ok) {
            return Err(invalid(
                "the subject is not dot-separated tokens of letters, digits, '_' and '-'",
            ));
        }
        Ok(NatsTarget {
            server: format!("{host}:{port}"),
            subject: subject.to_owned(),
        })
    }
}

/// One connection per server (`host:port`), made on first use and shared by every endpoint
/// that publishes there. Cheap to clone.
#[derive(Clone, Default)]
pub struct NatsConnections {
    servers: Arc<Mutex<HashMap<String, Arc<OnceCell<Context>>>>>,
    options: Options,
}

/// How connections are made.
#[derive(Clone, Copy, Debug, Default)]
struct Options {
    /// `--refuse-private-addresses`: the server's name is resolved by the relay, the addresses
    /// checked, and the connection made to the allowed addresses only (and to them again when it
    /// reconnects).
    refuse_private_addresses: bool,
    /// `--nats-follow-discovered-servers`: also connect to the servers a server advertises
    /// (INFO `connect_urls`); off by default, and always off under the guard, whose check those
    /// addresses would escape.
    follow_discovered_servers: bool,
}

impl NatsConnections {
    pub fn new(config: &crate::config::RelayConfig) -> NatsConnections {
        NatsConnections {
            servers: Arc::default(),
            options: Options {
                refuse_private_addresses: config.refuse_private_addresses,
                follow_discovered_servers: config.nats_follow_discovered_servers
                    && !config.refuse_private_addresses,
            },
        }
    }

    /// The JetStream context of the server's connection, connecting if there is none yet. A
    /// failed connect leaves none, so the next attempt tries again.
    async fn context(&self, server: &str) -> Result<Context, String> {
        let cell = {
            // A panic elsewhere while holding the lock leaves the map intact: go on with it.
            let mut servers = self.servers.lock().unwrap_or_else(|p| p.into_inner());
            Arc::clone(servers.entry(server.to_owned()).or_default())
        };
        cell.get_or_try_init(|| connect(server, self.options))
            .await
            .cloned()
    }

    /// Publish one event to the endpoint's subject and wait for JetStream's acknowledgement,
    /// within the endpoint's timeout.
    pub async fn deliver(&self, endpoint: &EndpointConfig, event: &Event) -> Attempt {
        let failed = |error: String| Attempt::Failed {
            status: None,
            error,
            retry_after: None,
        };
        let target = match NatsTarget::parse(&endpoint.url) {
            Ok(target) => target,
            Err(error) => return failed(error),
        };
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let headers = headers(endpoint, event, timestamp);
        let publish = self.publish(&target, endpoint.timeout, headers, event.payload.clone());
        match tokio::time::timeout(endpoint.timeout, publish).await {
            Ok(Ok(())) => Attempt::Delivered {
                status: ACKNOWLEDGED_STATUS,
            },
            Ok(Err(error)) => failed(error),
            Err(_) => failed(self.timed_out(&target, endpoint.timeout)),
        }
    }

    async fn publish(
        &self,
        target: &NatsTarget,
        timeout: Duration,
        headers: HeaderMap,
        payload: bytes::Bytes,
    ) -> Result<(), String> {
        let mut context = self.context(&target.server).await?;
        // The context's own ack timeout (5 s by default) would cut short a longer endpoint
        // timeout.
        context.set_timeout(timeout);
        let describe = |error: async_nats::jetstream::context::PublishError| {
            describe_publish_error(&error, target, timeout)
        };
        let ack = context
            .publish_with_headers(target.subject.clone(), headers, payload)
            .await
            .map_err(describe)?;
        ack.await.map(|_| ()).map_err(describe)
    }

    fn timed_out(&self, target: &NatsTarget, timeout: Duration) -> String {
        let connected = self
            .servers
            .lock()
            .ok()
            .and_then(|servers| servers.get(&target.server).and_then(|c| c.get().cloned()))
            .map(|context| context.client().connection_state() == State::Connected);
        let why = match connected {
            Some(true) => "no acknowledgement from JetStream",
            Some(false) => "not connected to the NATS server (reconnecting)",
            None => "could not connect to the NATS server",
        };
        if connected == Some(false) && self.options.refuse_private_addresses {
            // Under the guard the client reconnects to the addresses checked when it was made,
            // never to a name: forget it, so that the next attempt resolves and checks anew
            // (the server may have moved).
            let mut servers = self.servers.lock().unwrap_or_else(|p| p.into_inner());
            servers.remove(&target.server);
        }
        format!(
            "timed out after {} ms publishing to {} on nats://{}: {why}",
            timeout.as_millis(),
            target.subject,
            target.server
        )
    }
}

/// Connect to a server; async-nats reconnects the connection by itself from then on (and logs
/// its connects and disconnects), to the same addresses: those a server advertises are not
/// followed unless configured.
async fn connect(server: &str, options: Options) -> Result<Context, String> {
    let mut connect_options = async_nats::ConnectOptions::new().name(crate::USER_AGENT);
    if !options.follow_discovered_servers {
        connect_options = connect_options.ignore_discovered_servers();
    }
    let addresses: Vec<async_nats::ServerAddr> = if options.refuse_private_addresses {
        // Resolved here and checked: the connection goes to these addresses only, never to a
        // name the client would resolve again by itself.
        let (host, port) = split_server(server)?;
        let allowed = crate::address_guard::allowed_addresses(host, port)
            .await
            .map_err(|why| format!("could not connect to nats://{server}: {why}"))?;
        allowed
            .iter()
            .map(|address| async_nats::ServerAddr::from_str(&format!("nats://{address}")))
            .collect::<Result<_, _>>()
            .map_err(|error| format!("could not connect to nats://{server}: {error}"))?
    } else {
        vec![
            async_nats::ServerAddr::from_str(&format!("nats://{server}"))
                .map_err(|error| format!("could not connect to nats://{server}: {error}"))?,
        ]
    };
    let client = connect_options
        .connect(addresses)
        .await
        .map_err(|error| format!("could not connect to nats://{server}: {error}"))?;
    Ok(async_nats::jetstream::new(client))
}

/// `host:port` (as NatsTarget::parse makes it; an IPv6 host in brackets) into its parts.
fn split_server(server: &str) -> Result<(&str, u16), String> {
    server
        .rsplit_once(':')
        .and_then(|(host, port)| Some((host, port.parse().ok()?)))
        .ok_or_else(|| format!("not host:port: {server:?}"))
}

fn describe_publish_error(
    error: &async_nats::jetstream::context::PublishError,
    target: &NatsTarget,
    timeout: Duration,
) -> String {
    let NatsTarget { server, subject } = target;
    match error.kind() {
        PublishErrorKind::StreamNotFound => format!(
            "no JetStream stream stores the subject {subject} on nats://{server} (no responders): \
             create one"
        ),
        PublishErrorKind::TimedOut => format!(
            "timed out after {} ms publishing to {subject} on nats://{server}: no acknowledgement \
             from JetStream",
            timeout.as_millis()
        ),
        _ => format!("publishing to {subject} on nats://{server} failed: {error}"),
    }
}

/// The headers of the HTTP request (webhooks.md §2), and `Nats-Msg-Id` for JetStream's
/// de-duplication. A static header that NATS cannot carry is left out, as the HTTP sink does; so
/// is a static `Nats-*` one: those steer JetStream (de-duplication, expected sequences), which
/// the delivery guarantees rely on.
fn headers(endpoint: &EndpointConfig, event: &Event, timestamp: i64) -> HeaderMap {
    let mut headers = HeaderMap::new();
    let mut insert = |name: &str, value: &str| {
        if let (Ok(name), Ok(value)) = (HeaderName::from_str(name), HeaderValue::from_str(value)) {
            headers.insert(name, value);
        }
    };
    insert("user-agent", crate::USER_AGENT);
    for (name, value) in &endpoint.headers {
        // HeaderMap names are lowercase. The relay's own and hop-by-hop names under any
        // spelling are left out as over HTTP; `nats_msg_id` is not JetStream's, but is left
        // out with the rest of the `nats-` names all the same.
        if !name.as_str().replace('_', "-").starts_with("nats-")
            && !crate::http_sink::is_reserved_header(name.as_str())
        {
            insert(name.as_str(), &String::from_utf8_lossy(value.as_bytes()));
        }
    }
    let signature = signature_header(&endpoint.keys, &event.event_id, timestamp, &event.payload);
    insert("content-type", "application/json");
    insert("Nats-Msg-Id", &event.event_id);
    insert("webhook-id", &event.event_id);
    insert("webhook-timestamp", &timestamp.to_string());
    insert("webhook-signature", &signature);
    insert("ae-subscription-key", &event.subscription_key);
    insert("ae-event-type", &event.event_type);
    insert("ae-aggregate-id", &event.aggregate_id.to_string());
    insert("ae-snapshot-version", &event.snapshot_version.to_string());
    if event.test {
        insert("ae-test", "true");
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(server: &str, subject: &str) -> Result<NatsTarget, String> {
        Ok(NatsTarget {
            server: server.to_owned(),
            subject: subject.to_owned(),
        })
    }

    #[test]
    fn a_nats_url_gives_the_server_with_its_port_and_the_subject() {
        assert_eq!(
            NatsTarget::parse("nats://127.0.0.1:4333/ae.events"),
            target("127.0.0.1:4333", "ae.events")
        );
        assert_eq!(
            NatsTarget::parse("nats://nats.internal/ae_events.test-instance.v1"),
            target("nats.internal:4222", "ae_events.test-instance.v1")
        );
        assert_eq!(
            NatsTarget::parse("nats://[::1]:4333/events"),
            target("[::1]:4333", "events")
        );
        assert_eq!(
            NatsTarget::parse("nats://[::1]/events"),
            target("[::1]:4222", "events")
        );
    }

    #[test]
    fn a_malformed_nats_url_is_refused_with_the_reason() {
        for url in [
            "http://host/subject",
            "nats://host",
            "nats://host/",
            "nats:///subject",
            "nats://:4222/subject",
            "nats://host:0/subject",
            "nats://host:65536/subject",
            "nats://host:port/subject",
            "nats://user:pass@host/subject",
            "nats://host/a..b",
            "nats://host/a.*",
            "nats://host/a.>",
            "nats://host/a/b",
            "nats://host/a b",
        ] {
            let error = NatsTarget::parse(url).expect_err(url);
            assert!(error.contains("nats://host[:port]/subject"), "{error}");
        }
    }

    fn endpoint(url: &str) -> EndpointConfig {
        EndpointConfig {
            name: "n".to_owned(),
            url: url.to_owned(),
            request_url: None,
            headers: reqwest::header::HeaderMap::new(),
            timeout: Duration::from_secs(5),
            retry_schedule: Vec::new(),
            retry_jitter: 0.0,
            max_in_flight: 1,
            keys: Vec::new(),
            cursor: Default::default(),
            rate_limit: None,
            endpoint_id: 1,
            egress: Default::default(),
        }
    }

    fn event() -> Event {
        Event {
            id: 1,
            event_id: "0b7c1d2e-0000-4000-8000-000000000001".to_owned(),
            subscription_key: "ae.test_instance.updated".to_owned(),
            event_type: "ae_test_instance_updated".to_owned(),
            aggregate_id: 7,
            snapshot_version: 3,
            payload: bytes::Bytes::from_static(b"{\"a\": 1}"),
            attempts: 0,
            occurred_at: std::time::SystemTime::now(),
            test: false,
        }
    }

    #[tokio::test]
    async fn a_bad_url_or_a_refused_connection_is_a_failed_attempt() {
        let connections = NatsConnections::default();
        let bad_url = connections
            .deliver(&endpoint("nats://127.0.0.1/a..b"), &event())
            .await;
        assert!(
            matches!(&bad_url, Attempt::Failed { status: None, error, retry_after: None }
                     if error.contains("is not nats://host[:port]/subject")),
            "{bad_url:?}"
        );
        let closed_port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let url = format!("nats://127.0.0.1:{closed_port}/ae");
        let refused = connections.deliver(&endpoint(&url), &event()).await;
        assert!(
            matches!(&refused, Attempt::Failed { status: None, error, .. }
                     if error.starts_with(&format!("could not connect to nats://127.0.0.1:{closed_port}"))),
            "{refused:?}"
        );
    }

    #[test]
    fn the_headers_are_the_webhook_headers_and_the_message_id() {
        let key = crate::signing::SigningKey::from_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
            .expect("key");
        let mut static_headers = reqwest::header::HeaderMap::new();
        static_headers.insert("x-tenant", reqwest::header::HeaderValue::from_static("t1"));
        static_headers.insert(
            "nats-expected-last-sequence",
            reqwest::header::HeaderValue::from_static("1"),
        );
        let endpoint = EndpointConfig {
            headers: static_headers,
            keys: vec![key.clone()],
            ..endpoint("nats://127.0.0.1/ae")
        };
        let event = event();
        let headers = headers(&endpoint, &event, 1_700_000_000);
        let get = |name: &str| headers.get(name).map(|v| v.as_str().to_owned());
        assert_eq!(get("Nats-Msg-Id"), Some(event.event_id.clone()));
        assert_eq!(get("webhook-id"), Some(event.event_id.clone()));
        assert_eq!(get("webhook-timestamp").as_deref(), Some("1700000000"));
        assert_eq!(
            get("webhook-signature"),
            Some(key.sign(&event.event_id, 1_700_000_000, b"{\"a\": 1}"))
        );
        assert_eq!(get("content-type").as_deref(), Some("application/json"));
        assert_eq!(get("ae-aggregate-id").as_deref(), Some("7"));
        assert_eq!(get("ae-snapshot-version").as_deref(), Some("3"));
        assert_eq!(
            get("ae-event-type").as_deref(),
            Some("ae_test_instance_updated")
        );
        assert_eq!(get("x-tenant").as_deref(), Some("t1"));
        assert_eq!(get("nats-expected-last-sequence"), None);
    }
}
