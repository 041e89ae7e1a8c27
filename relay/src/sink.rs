//! Where an endpoint's events go, by its URL's scheme: `nats://` publishes to NATS JetStream
//! (nats_sink), anything else is a webhook POST (http_sink, which also reports a URL it cannot
//! parse). The scheme is looked at on every attempt, so that a URL changed by `alter_endpoint`
//! takes effect like any other setting.

use crate::endpoint::{EndpointConfig, Event};
use crate::http_sink;
pub use crate::http_sink::Attempt;
use crate::nats_sink::NatsConnections;

/// What every worker of a relay shares to deliver: the HTTP client and the NATS connections.
/// Cheap to clone.
#[derive(Clone)]
pub struct Sinks {
    http: http_sink::HttpClient,
    nats: NatsConnections,
}

impl Sinks {
    pub fn new(http: http_sink::HttpClient) -> Sinks {
        Sinks {
            http,
            nats: NatsConnections::default(),
        }
    }

    /// One attempt to deliver the event to the endpoint.
    pub async fn deliver(&self, endpoint: &EndpointConfig, event: &Event) -> Attempt {
        if endpoint.url.starts_with("nats://") {
            self.nats.deliver(endpoint, event).await
        } else {
            http_sink::deliver(&self.http, endpoint, event).await
        }
    }
}
