//! The connections of the HTTP sink: hyper's HTTP/1 client over a connector of the relay's own.
//!
//! Why not reqwest's: hyper's client reads interim (1xx) responses in a loop with no bound (it
//! skips them until a final status comes), so a receiver that streams `100 Continue` kept a
//! core busy until the endpoint's timeout. hyper offers no limit and no hook that reqwest lets
//! through (reqwest builds hyper's request without its extensions, so `on_informational` is out
//! of reach, and its connector layers cannot wrap the connection's IO). Here every connection's
//! reads pass through `Bounded`, which counts the interim responses that come before a final
//! status line and closes the connection past `MAX_INTERIM_RESPONSES` of them or
//! `MAX_INTERIM_BYTES` of their bytes.
//!
//! The connector resolves names itself (through the address guard with
//! `--refuse-private-addresses`, connecting only to the addresses it allowed), speaks TLS with
//! rustls (the platform's roots plus `--ca-bundle`'s, as reqwest did), presents an endpoint's
//! client certificate when it has one (mTLS), and goes through a forward proxy: the endpoint's
//! own (`alter_endpoint(proxy => ...)`), else `--proxy`, else the one the environment names
//! (`HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY`, `NO_PROXY`) except under the guard. HTTPS goes
//! through a `CONNECT` tunnel, plain HTTP as absolute-form requests to the proxy. Under the
//! guard, the address checked is the one connected to: the proxy's when one is used (the
//! proxy's own policy then decides for the target). A proxy's failures are `ProxyError`s, whose
//! text starts with `proxy: ` and never shows the proxy's credentials.
//!
//! One `Egress` (a client with its connector and pool) per distinct setting of proxy and client
//! certificate: the relay's default one, and those of endpoints with settings of their own,
//! built on their first attempt and kept (at most `MAX_EGRESSES`, the least recently used
//! dropped first).

use crate::address_guard::{self, Refused, Unresolved};
use crate::config::RelayConfig;
use hyper::rt::ReadBufCursor;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Interim responses accepted before the final one of a request: `100 Continue`, `102
/// Processing` (one every few seconds for a slow answer) and `103 Early Hints` stay far below.
pub const MAX_INTERIM_RESPONSES: usize = 32;

/// Bytes of interim responses (and of a status line not yet complete) accepted before the
/// final status line.
pub const MAX_INTERIM_BYTES: usize = 64 * 1024;

pub type Body = http_body_util::Full<bytes::Bytes>;
pub type Client = hyper_util::client::legacy::Client<Connector, Body>;
pub use hyper_util::client::proxy::matcher::Intercept;
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Distinct settings of proxy and client certificate whose clients are kept at once (each has
/// its own pool of at most `IDLE_PER_HOST` idle connections per host, and its own TLS sessions).
pub const MAX_EGRESSES: usize = 64;

/// A client and the proxies its connector goes through.
#[derive(Clone)]
pub struct Egress {
    pub client: Client,
    proxies: Option<Arc<Matcher>>,
    refuse_private_addresses: bool,
}

impl Egress {
    /// The proxy a request to `uri` goes through (None: direct).
    pub fn proxy(&self, uri: &http::Uri) -> Option<Intercept> {
        self.proxies.as_ref().and_then(|m| m.intercept(uri))
    }

    /// The proxy's credentials as a plain-HTTP request to `uri` carries them, and what they
    /// decode to (`user:password`, the password): to be masked in the attempt's error text
    /// (the proxy answers in the receiver's place and could echo them). None for HTTPS: the
    /// tunnel's answer is not kept.
    pub fn proxy_secrets(&self, uri: &http::Uri) -> Vec<String> {
        let Some(auth) = self
            .proxy(uri)
            .filter(|_| uri.scheme_str() == Some("http"))
            .and_then(|proxy| proxy.basic_auth().cloned())
        else {
            return Vec::new();
        };
        let header = String::from_utf8_lossy(auth.as_bytes()).into_owned();
        let mut secrets = vec![header.clone()];
        if let Some(encoded) = header.strip_prefix("Basic ") {
            secrets.push(encoded.to_owned());
            use base64::Engine as _;
            if let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded) {
                let decoded = String::from_utf8_lossy(&decoded).into_owned();
                if let Some((_, password)) = decoded.split_once(':') {
                    secrets.push(password.to_owned());
                }
                secrets.push(decoded);
            }
        }
        // Longest first: one that contains another is masked whole.
        secrets.sort_by_key(|secret| std::cmp::Reverse(secret.len()));
        secrets
    }

    /// Send a request (webhook or OAuth2 token request). Under the guard, an IP-literal host
    /// is checked here when the request goes direct (names are checked when resolved, a
    /// proxy's address when connecting to it); a plain-HTTP request through a proxy carries
    /// the proxy's credentials. The error is the attempt's text (`proxy: ...` for the proxy's
    /// failures, `refused: ...` for the guard's).
    pub async fn send(
        &self,
        mut request: http::Request<Body>,
    ) -> Result<http::Response<hyper::body::Incoming>, String> {
        let proxy = self.proxy(request.uri());
        match &proxy {
            None if self.refuse_private_addresses => {
                address_guard::check_host(request.uri().host().unwrap_or(""))
                    .map_err(|refused| refused.to_string())?;
            }
            Some(proxy) if request.uri().scheme_str() == Some("http") => {
                if let Some(auth) = proxy.basic_auth() {
                    request
                        .headers_mut()
                        .insert(http::header::PROXY_AUTHORIZATION, auth.clone());
                }
            }
            _ => {}
        }
        let plain_through_proxy = proxy.is_some() && request.uri().scheme_str() == Some("http");
        match self.client.request(request).await {
            // A plain-HTTP request's 407 is the proxy's (a receiver has no reason to send it).
            Ok(response)
                if plain_through_proxy
                    && response.status() == http::StatusCode::PROXY_AUTHENTICATION_REQUIRED =>
            {
                Err(
                    ProxyError("the proxy answered 407 Proxy Authentication Required".to_owned())
                        .to_string(),
                )
            }
            Ok(response) => Ok(response),
            Err(error) => Err(describe(&error)),
        }
    }
}

/// What a failed request's error says: its innermost cause (connection refused, TLS, DNS), the
/// guard's refusal or the proxy's failure as they are.
fn describe(error: &hyper_util::client::legacy::Error) -> String {
    let mut cause: &(dyn std::error::Error + 'static) = error;
    while let Some(inner) = cause.source() {
        cause = inner;
    }
    if let Some(refused) = cause.downcast_ref::<Refused>() {
        return refused.to_string();
    }
    if let Some(proxy) = cause.downcast_ref::<ProxyError>() {
        return proxy.to_string();
    }
    if error.is_connect() {
        format!("could not connect: {cause}")
    } else {
        format!("request failed: {cause}")
    }
}

/// The relay's egresses: the default one (`--proxy` or the environment's proxies, no client
/// certificate) and those of the endpoints that have a proxy or a client certificate of their
/// own. Shared by every worker.
pub struct Egresses {
    default: Egress,
    /// `--proxy`, else the environment's proxies (None under the guard): for endpoints
    /// without a proxy of their own.
    relay_proxies: Option<Arc<Matcher>>,
    /// Built once (it reads the platform's roots): every egress verifies with it.
    verifier: Arc<dyn ServerCertVerifier>,
    refuse_private_addresses: bool,
    kept: Mutex<Kept>,
}

#[derive(Default)]
struct Kept {
    egresses: Vec<KeptEgress>,
    uses: u64,
}

struct KeptEgress {
    fingerprint: u64,
    proxy: Option<String>,
    client_certificate: Option<String>,
    client_key: Option<String>,
    egress: Egress,
    used: u64,
}

impl Egresses {
    pub fn new(config: &RelayConfig) -> Result<Egresses, String> {
        let roots = match &config.ca_bundle {
            Some(path) => read_ca_bundle(path)?,
            None => Vec::new(),
        };
        let verifier = verifier(roots).map_err(|error| match &config.ca_bundle {
            Some(path) => format!(
                "cannot set up the HTTP client with the CA bundle {}: {error}",
                path.display()
            ),
            None => format!("cannot set up the HTTP client: {error}"),
        })?;
        let relay_proxies = match &config.proxy {
            Some(url) => Some(parse_proxy(url).map_err(|error| format!("--proxy: {error}"))?),
            // The environment's are not checked by the guard (a setting of the host, not of
            // the relay): off under it, as before --proxy existed.
            None => (!config.refuse_private_addresses).then(|| Arc::new(Matcher::from_env())),
        };
        let default = build(
            &verifier,
            config.refuse_private_addresses,
            relay_proxies.clone(),
            None,
        )
        .map_err(|error| format!("cannot set up the HTTP client: {error}"))?;
        Ok(Egresses {
            default,
            relay_proxies,
            verifier,
            refuse_private_addresses: config.refuse_private_addresses,
            kept: Mutex::new(Kept::default()),
        })
    }

    /// The egress of an endpoint with this proxy (None: `--proxy`'s) and client certificate
    /// and key (PEM): the default one when it has neither; built on first use, then kept. The
    /// error says what cannot be used (never a secret): the attempt fails with it.
    pub fn for_endpoint(
        &self,
        proxy: Option<&str>,
        client_certificate: Option<&str>,
        client_key: Option<&str>,
    ) -> Result<Egress, String> {
        if proxy.is_none() && client_certificate.is_none() && client_key.is_none() {
            return Ok(self.default.clone());
        }
        let fingerprint = {
            use std::hash::{Hash, Hasher};
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            (proxy, client_certificate, client_key).hash(&mut hasher);
            hasher.finish()
        };
        let mut kept = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
        kept.uses += 1;
        let now = kept.uses;
        if let Some(found) = kept.egresses.iter_mut().find(|k| {
            k.fingerprint == fingerprint
                && k.proxy.as_deref() == proxy
                && k.client_certificate.as_deref() == client_certificate
                && k.client_key.as_deref() == client_key
        }) {
            found.used = now;
            return Ok(found.egress.clone());
        }
        let proxies = match proxy {
            Some(url) => Some(parse_proxy(url).map_err(|error| format!("proxy: {error}"))?),
            None => self.relay_proxies.clone(),
        };
        let client_auth = match (client_certificate, client_key) {
            (None, None) => None,
            (Some(certificate), Some(key)) => Some(
                client_auth(certificate, key)
                    .map_err(|error| format!("client certificate: {error}"))?,
            ),
            _ => {
                return Err(
                    "client certificate: a certificate and its key go together, and \
                            only one of them is set"
                        .to_owned(),
                )
            }
        };
        let egress = build(
            &self.verifier,
            self.refuse_private_addresses,
            proxies,
            client_auth,
        )
        .map_err(|error| format!("client certificate: {error}"))?;
        // The least recently used one goes: its connections close once its requests in flight
        // are done.
        if kept.egresses.len() >= MAX_EGRESSES {
            if let Some(oldest) = (0..kept.egresses.len()).min_by_key(|&i| kept.egresses[i].used) {
                kept.egresses.swap_remove(oldest);
            }
        }
        kept.egresses.push(KeptEgress {
            fingerprint,
            proxy: proxy.map(str::to_owned),
            client_certificate: client_certificate.map(str::to_owned),
            client_key: client_key.map(str::to_owned),
            egress: egress.clone(),
            used: now,
        });
        Ok(egress)
    }

    /// Egresses of endpoints' own settings kept now (for tests).
    pub fn kept(&self) -> usize {
        self.kept
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .egresses
            .len()
    }
}

/// A client over a connector going through these proxies and presenting this certificate.
fn build(
    verifier: &Arc<dyn ServerCertVerifier>,
    refuse_private_addresses: bool,
    proxies: Option<Arc<Matcher>>,
    client_auth: Option<ClientAuth>,
) -> Result<Egress, String> {
    let tls = tls_config(verifier, client_auth)?;
    // The proxy is not the endpoint: it never gets the endpoint's certificate.
    let proxy_tls = tls_config(verifier, None)?;
    let mut tcp = HttpConnector::new_with_resolver(Resolver {
        refuse_private_addresses,
    });
    tcp.enforce_http(false);
    tcp.set_nodelay(true);
    let connector = Connector {
        tcp,
        tls: tokio_rustls::TlsConnector::from(Arc::new(tls)),
        proxy_tls: tokio_rustls::TlsConnector::from(Arc::new(proxy_tls)),
        proxies: proxies.clone(),
        refuse_private_addresses,
    };
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_timer(TokioTimer::new())
        // Counted in the relay's socket budget (sockets.rs).
        .pool_max_idle_per_host(crate::sockets::IDLE_PER_HOST)
        .build(connector);
    Ok(Egress {
        client,
        proxies,
        refuse_private_addresses,
    })
}

/// A proxy URL, `http://[user:password@]host[:port]` or `https://...`, as a matcher sending
/// every request through it. The error never repeats the URL (it may hold a password).
pub fn parse_proxy(text: &str) -> Result<Arc<Matcher>, String> {
    let url = reqwest::Url::parse(text.trim())
        .map_err(|error| format!("the proxy URL cannot be parsed: {error}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "the proxy URL must be http:// or https://, not {}://",
            url.scheme()
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("the proxy URL has no host".to_owned());
    }
    // The URL parser's form: user information percent-encoded, which the matcher decodes.
    let matcher = Matcher::builder().all(url.as_str()).build();
    if matcher
        .intercept(&http::Uri::from_static("http://example.com/"))
        .is_none()
    {
        return Err("the proxy URL cannot be used".to_owned());
    }
    Ok(Arc::new(matcher))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The platform's roots and the extra ones.
fn verifier(
    extra_roots: Vec<CertificateDer<'static>>,
) -> Result<Arc<dyn ServerCertVerifier>, String> {
    let verifier =
        rustls_platform_verifier::Verifier::new_with_extra_roots(extra_roots, provider())
            .map_err(|error| error.to_string())?;
    Ok(Arc::new(verifier))
}

/// A client certificate's chain (leaf first) and its key.
type ClientAuth = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

/// The PEM certificate chain and key of an endpoint's client certificate. The errors never
/// quote the key.
fn client_auth(certificate: &str, key: &str) -> Result<ClientAuth, String> {
    let chain = CertificateDer::pem_slice_iter(certificate.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| format!("the certificate is not PEM: {error}"))?;
    if chain.is_empty() {
        return Err(
            "the certificate holds no certificate (expected PEM \"BEGIN CERTIFICATE\" blocks)"
                .to_owned(),
        );
    }
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes())
        .map_err(|_| "the key is not a PEM private key (PKCS #8, PKCS #1 or SEC1)".to_owned())?;
    Ok((chain, key))
}

/// Certificates verified against the platform's roots and the extra ones, HTTP/1.1 by ALPN,
/// the client certificate presented when the server asks for one (none otherwise).
fn tls_config(
    verifier: &Arc<dyn ServerCertVerifier>,
    client_auth: Option<ClientAuth>,
) -> Result<rustls::ClientConfig, String> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|error| error.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone());
    let mut tls = match client_auth {
        None => builder.with_no_client_auth(),
        // Refuses a key that does not match the certificate.
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .map_err(|error| format!("the certificate and key cannot be used: {error}"))?,
    };
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tls)
}

/// The certificates of a PEM file (one or more): refused, naming the file, when it cannot be
/// read, holds none, or holds one that cannot be a root.
pub fn read_ca_bundle(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = std::fs::read(path)
        .map_err(|error| format!("cannot read the CA bundle {}: {error}", path.display()))?;
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| {
            format!(
                "the CA bundle {} is not PEM certificates: {error}",
                path.display()
            )
        })?;
    if certificates.is_empty() {
        return Err(format!(
            "the CA bundle {} holds no certificate (expected PEM \"BEGIN CERTIFICATE\" blocks)",
            path.display()
        ));
    }
    // The PEM parser checks the armour only; the root store checks the certificates.
    let mut store = rustls::RootCertStore::empty();
    for certificate in &certificates {
        store.add(certificate.clone()).map_err(|error| {
            format!(
                "the CA bundle {} holds a certificate that cannot be used: {error}",
                path.display()
            )
        })?;
    }
    Ok(certificates)
}

/// A failure of the proxy (connecting to it, its TLS, its answer to `CONNECT`), kept apart
/// from the receiver's: its text starts with `proxy: ` and names the proxy by its host and
/// port only.
#[derive(Debug)]
pub struct ProxyError(String);

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "proxy: {}", self.0)
    }
}

impl std::error::Error for ProxyError {}

impl ProxyError {
    fn boxed(text: String) -> BoxError {
        Box::new(ProxyError(text))
    }
}

/// How long a proxy gets to accept the connection and (HTTPS) answer CONNECT: less than the
/// endpoints' default timeout (15 s), so that a silent proxy is told apart from a slow receiver.
pub const PROXY_ANSWER_WITHIN: Duration = Duration::from_secs(10);

/// Makes the connections of the client (see the module's documentation).
#[derive(Clone)]
pub struct Connector {
    /// TCP: hyper-util's connector (happy eyeballs, TCP_NODELAY) over the relay's resolver.
    tcp: HttpConnector<Resolver>,
    /// TLS with the endpoint (its client certificate, if any).
    tls: tokio_rustls::TlsConnector,
    /// TLS with an https:// proxy.
    proxy_tls: tokio_rustls::TlsConnector,
    proxies: Option<Arc<Matcher>>,
    refuse_private_addresses: bool,
}

/// The system's resolver, keeping the allowed addresses only under the guard. (An IP-literal
/// host is not resolved: http_sink checks an endpoint's before the request, the connector a
/// proxy's.)
#[derive(Clone)]
struct Resolver {
    refuse_private_addresses: bool,
}

impl tower_service::Service<Name> for Resolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let guard = self.refuse_private_addresses;
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addresses: Vec<SocketAddr> = if guard {
                match address_guard::allowed_addresses(&host, 0).await {
                    Ok(addresses) => addresses,
                    Err(Unresolved::Refused(refused)) => return Err(Box::new(refused) as BoxError),
                    Err(Unresolved::Lookup(error)) => return Err(Box::new(error) as BoxError),
                }
            } else {
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect()
            };
            Ok(addresses.into_iter())
        })
    }
}

impl tower_service::Service<http::Uri> for Connector {
    type Response = Bounded;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Bounded, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let connector = self.clone();
        Box::pin(async move { connector.connect(uri).await })
    }
}

/// What the transport needs of a stream (TCP or TLS over TCP).
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

impl Connector {
    async fn connect(self, uri: http::Uri) -> Result<Bounded, BoxError> {
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(format!("not an http:// or https:// URL: {uri}").into()),
        };
        let host = uri
            .host()
            .ok_or("no host in the URL")?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let Some(proxy) = self.proxies.as_ref().and_then(|m| m.intercept(&uri)) else {
            let tcp = self.tcp(uri.clone()).await?;
            return Ok(Bounded::new(
                self.endpoint_tls(tcp, https, &host).await?,
                false,
            ));
        };
        // The proxy's part (connecting, TLS with it, CONNECT) has a bound of its own, so that a
        // proxy that drops packets or never answers is recorded as the proxy's failure rather
        // than as the receiver's timeout.
        let proxy_part = async {
            let mut stream = self.to_proxy(&proxy).await?;
            if https {
                tunnel(&mut stream, &host, port, proxy.basic_auth()).await?;
            }
            Ok::<_, BoxError>(stream)
        };
        let stream = match tokio::time::timeout(PROXY_ANSWER_WITHIN, proxy_part).await {
            Ok(stream) => stream?,
            Err(_) => {
                let shown = proxy
                    .uri()
                    .authority()
                    .map(|a| a.as_str().to_owned())
                    .unwrap_or_default();
                return Err(ProxyError::boxed(format!(
                    "the proxy {shown} did not answer within {} s",
                    PROXY_ANSWER_WITHIN.as_secs()
                )));
            }
        };
        if !https {
            // Plain HTTP through a proxy: the request in absolute form, to the proxy.
            return Ok(Bounded::new(stream, true));
        }
        Ok(Bounded::new(
            self.endpoint_tls(stream, true, &host).await?,
            false,
        ))
    }

    /// TLS with the endpoint over the stream for HTTPS (its certificate verified, the client
    /// certificate presented when it has one); the stream as it is for HTTP.
    async fn endpoint_tls<S: Io + 'static>(
        &self,
        stream: S,
        https: bool,
        host: &str,
    ) -> Result<Box<dyn Io>, BoxError> {
        if !https {
            return Ok(Box::new(stream));
        }
        let name = ServerName::try_from(host.to_owned())
            .map_err(|_| format!("not a host name for TLS: {host}"))?;
        Ok(Box::new(self.tls.connect(name, stream).await?))
    }

    /// A connection to the proxy (TLS with an https:// one); under the guard, to an allowed
    /// address only. Its failures are `ProxyError`s.
    async fn to_proxy(&self, proxy: &Intercept) -> Result<Box<dyn Io>, BoxError> {
        // The intercept's URI holds no user information.
        let shown = proxy
            .uri()
            .authority()
            .map(|a| a.as_str().to_owned())
            .unwrap_or_default();
        let host = proxy
            .uri()
            .host()
            .unwrap_or("")
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        if self.refuse_private_addresses {
            // The resolver checks names; an IP literal is connected to as it is.
            if let Err(refused) = address_guard::check_host(&host) {
                return Err(ProxyError::boxed(format!("the proxy {shown} is {refused}")));
            }
        }
        let tcp = self.tcp(proxy.uri().clone()).await.map_err(|error| {
            let error: &(dyn std::error::Error + 'static) = &*error;
            let mut cause = error;
            while let Some(inner) = cause.source() {
                cause = inner;
            }
            match cause.downcast_ref::<Refused>() {
                Some(refused) => ProxyError::boxed(format!("the proxy {shown} is {refused}")),
                None => ProxyError::boxed(format!("cannot connect to the proxy {shown}: {cause}")),
            }
        })?;
        if proxy.uri().scheme_str() != Some("https") {
            return Ok(Box::new(tcp));
        }
        let name = ServerName::try_from(host.clone())
            .map_err(|_| ProxyError::boxed(format!("not a host name for TLS: {host}")))?;
        match self.proxy_tls.connect(name, tcp).await {
            Ok(tls) => Ok(Box::new(tls)),
            Err(error) => Err(ProxyError::boxed(format!(
                "TLS with the proxy {shown}: {error}"
            ))),
        }
    }

    /// A TCP connection to the URI's host and port (happy eyeballs among its addresses; under
    /// the guard, among those it allowed only).
    async fn tcp(&self, uri: http::Uri) -> Result<TcpStream, BoxError> {
        let mut connector = self.tcp.clone();
        let stream = tower_service::Service::call(&mut connector, uri).await?;
        Ok(stream.into_inner())
    }
}

/// Ask an HTTP proxy for a tunnel to host:port (CONNECT) and read its answer. Its failures are
/// `ProxyError`s (407 when the proxy wants credentials, 403 when its policy refuses the target,
/// 502 when it cannot reach it).
async fn tunnel<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    host: &str,
    port: u16,
    auth: Option<&http::HeaderValue>,
) -> Result<(), BoxError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let authority = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let mut request = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n").into_bytes();
    if let Some(auth) = auth {
        request.extend_from_slice(b"Proxy-Authorization: ");
        request.extend_from_slice(auth.as_bytes());
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"\r\n");
    let failed = |error: io::Error| ProxyError::boxed(format!("CONNECT {authority}: {error}"));
    stream.write_all(&request).await.map_err(failed)?;
    stream.flush().await.map_err(failed)?;
    // The proxy's answer head, byte by byte (nothing of the tunnel may be read past it).
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() >= 8 * 1024 {
            return Err(ProxyError::boxed(
                "the proxy's answer to CONNECT is too long".to_owned(),
            ));
        }
        let mut byte = [0u8];
        if stream.read(&mut byte).await.map_err(failed)? == 0 {
            return Err(ProxyError::boxed(
                "the proxy closed the connection during CONNECT".to_owned(),
            ));
        }
        head.push(byte[0]);
    }
    let status_line = String::from_utf8_lossy(&head);
    let status = status_line.split_whitespace().nth(1).unwrap_or("");
    if !status.starts_with('2') {
        let line = status_line.lines().next().unwrap_or("").to_owned();
        return Err(ProxyError::boxed(format!(
            "the proxy refused the tunnel: {line}"
        )));
    }
    Ok(())
}

/// Too many interim responses: the connection is closed.
#[derive(Debug)]
pub struct InterimFlood {
    responses: usize,
    bytes: usize,
}

impl fmt::Display for InterimFlood {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the receiver sent {} interim (1xx) responses ({} bytes) without a final one, more \
             than the relay accepts ({MAX_INTERIM_RESPONSES} responses, {} KiB): connection \
             closed",
            self.responses,
            self.bytes,
            MAX_INTERIM_BYTES / 1024
        )
    }
}

impl std::error::Error for InterimFlood {}

/// Where a connection's reads stand in the current response.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Stage {
    /// The start of a status line is expected: `HTTP/1.x NNN`.
    StatusLine,
    /// Inside an interim response's head: until its empty line.
    Interim,
    /// The final response (its head, its body): not looked at until the next request.
    Final,
}

/// Counts what comes before the final status line of each request.
#[derive(Debug)]
struct InterimWatch {
    stage: Stage,
    /// The start of the status line read so far (`HTTP/1.1 1` is ten bytes).
    start: [u8; 10],
    start_len: usize,
    /// How much of "\r\n\r\n" the interim head ends with so far.
    blank: usize,
    responses: usize,
    bytes: usize,
}

impl InterimWatch {
    fn new() -> InterimWatch {
        InterimWatch {
            stage: Stage::StatusLine,
            start: [0; 10],
            start_len: 0,
            blank: 0,
            responses: 0,
            bytes: 0,
        }
    }

    /// A request was written: once the previous response is final, the next one starts.
    fn request_written(&mut self) {
        if self.stage == Stage::Final {
            *self = InterimWatch::new();
        }
    }

    fn read(&mut self, bytes: &[u8]) -> Result<(), InterimFlood> {
        for &byte in bytes {
            match self.stage {
                Stage::Final => return Ok(()),
                Stage::StatusLine => {
                    self.start[self.start_len] = byte;
                    self.start_len += 1;
                    if self.start_len == self.start.len() {
                        self.start_len = 0;
                        // Not a status line (hyper will say what is wrong), or a final one.
                        if !self.start.starts_with(b"HTTP/") || self.start[9] != b'1' {
                            self.stage = Stage::Final;
                            return Ok(());
                        }
                        self.responses += 1;
                        self.stage = Stage::Interim;
                        self.blank = 0;
                    }
                }
                Stage::Interim => {
                    self.blank = match (self.blank, byte) {
                        (0 | 2, b'\r') => self.blank + 1,
                        (1 | 3, b'\n') => self.blank + 1,
                        (_, b'\r') => 1,
                        _ => 0,
                    };
                    if self.blank == 4 {
                        self.stage = Stage::StatusLine;
                    }
                }
            }
            self.bytes += 1;
            if self.responses > MAX_INTERIM_RESPONSES || self.bytes > MAX_INTERIM_BYTES {
                return Err(InterimFlood {
                    responses: self.responses,
                    bytes: self.bytes,
                });
            }
        }
        Ok(())
    }
}

/// A connection whose reads are watched for interim responses (see the module's
/// documentation).
pub struct Bounded {
    io: Box<dyn Io>,
    watch: InterimWatch,
    proxied: bool,
}

impl Bounded {
    fn new(io: Box<dyn Io>, proxied: bool) -> Bounded {
        Bounded {
            io,
            watch: InterimWatch::new(),
            proxied,
        }
    }
}

/// Bytes are read here, looked at, then copied into hyper's buffer: one buffer per thread
/// rather than one per connection (thousands may be open).
const SCRATCH_BYTES: usize = 16 * 1024;

thread_local! {
    static SCRATCH: std::cell::RefCell<Box<[u8]>> =
        std::cell::RefCell::new(vec![0; SCRATCH_BYTES].into_boxed_slice());
}

impl Connection for Bounded {
    fn connected(&self) -> Connected {
        Connected::new().proxy(self.proxied)
    }
}

impl hyper::rt::Read for Bounded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let Bounded { io, watch, .. } = &mut *self;
        let mut read_into = |scratch: &mut [u8]| {
            let room = buf.remaining().min(scratch.len());
            let mut read = ReadBuf::new(&mut scratch[..room]);
            ready!(Pin::new(&mut *io).poll_read(cx, &mut read))?;
            let filled = read.filled();
            watch.read(filled).map_err(io::Error::other)?;
            buf.put_slice(filled);
            Poll::Ready(Ok(()))
        };
        SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
            Ok(mut scratch) => read_into(&mut scratch),
            // Not reentered in practice; a buffer of its own if it ever is.
            Err(_) => read_into(&mut vec![0; SCRATCH_BYTES]),
        })
    }
}

impl hyper::rt::Write for Bounded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = ready!(Pin::new(&mut self.io).poll_write(cx, buf))?;
        if written > 0 {
            self.watch.request_written();
        }
        Poll::Ready(Ok(written))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_egress_per_distinct_setting_and_no_more_than_the_bound() {
        let mut config = RelayConfig::new("postgres://localhost/db".to_owned());
        config.proxy = Some("http://user:secret@127.0.0.1:3128".to_owned());
        let egresses = Egresses::new(&config).unwrap();
        let uri = http::Uri::from_static("https://example.com/hook");
        let relay_wide = egresses.for_endpoint(None, None, None).unwrap();
        assert_eq!(
            relay_wide.proxy(&uri).unwrap().uri().authority().unwrap(),
            "127.0.0.1:3128"
        );
        assert_eq!(egresses.kept(), 0, "the default one is not kept again");
        // What a plain-HTTP request carries of the credentials, masked in its error text.
        let plain = http::Uri::from_static("http://example.com/hook");
        assert_eq!(
            relay_wide.proxy_secrets(&plain),
            [
                "Basic dXNlcjpzZWNyZXQ=",
                "dXNlcjpzZWNyZXQ=",
                "user:secret",
                "secret"
            ]
        );
        assert!(relay_wide.proxy_secrets(&uri).is_empty());
        let own = egresses
            .for_endpoint(Some("http://127.0.0.1:8080"), None, None)
            .unwrap();
        assert_eq!(
            own.proxy(&uri).unwrap().uri().authority().unwrap(),
            "127.0.0.1:8080"
        );
        egresses
            .for_endpoint(Some("http://127.0.0.1:8080"), None, None)
            .unwrap();
        assert_eq!(egresses.kept(), 1);
        for port in 0..MAX_EGRESSES + 10 {
            let url = format!("http://127.0.0.1:{}", 10_000 + port);
            egresses.for_endpoint(Some(&url), None, None).unwrap();
        }
        assert_eq!(egresses.kept(), MAX_EGRESSES);
        // Refusals say what, never the value.
        let error = egresses
            .for_endpoint(Some("ftp://user:hunter22@host"), None, None)
            .err()
            .unwrap();
        assert_eq!(
            error,
            "proxy: the proxy URL must be http:// or https://, not ftp://"
        );
        let error = egresses
            .for_endpoint(None, Some("not PEM"), Some("hunter22 key"))
            .err()
            .unwrap();
        assert!(error.starts_with("client certificate: "), "{error}");
        assert!(!error.contains("hunter22"), "{error}");
    }

    #[test]
    fn interim_responses_are_counted_until_the_final_one() {
        let mut watch = InterimWatch::new();
        let interim =
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n";
        // Split anywhere: the same.
        for chunk in interim.chunks(3) {
            watch.read(chunk).unwrap();
        }
        assert_eq!(watch.responses, 2);
        watch
            .read(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nHTTP/1.1 100 ")
            .unwrap();
        assert_eq!(watch.stage, Stage::Final);
        // The next request starts counting again.
        watch.request_written();
        assert_eq!(watch.stage, Stage::StatusLine);
        assert_eq!(watch.responses, 0);
        let mut flood = InterimWatch::new();
        let stream = b"HTTP/1.1 100 Continue\r\n\r\n".repeat(MAX_INTERIM_RESPONSES + 1);
        let error = flood.read(&stream).unwrap_err();
        assert_eq!(error.responses, MAX_INTERIM_RESPONSES + 1);
        assert!(error.to_string().contains("interim (1xx) responses"));
        // One endless interim head: its bytes are bounded too.
        let mut long = InterimWatch::new();
        long.read(b"HTTP/1.1 102 Processing\r\n").unwrap();
        assert!(long.read(&b"X-Pad: y\r\n".repeat(10_000)).is_err());
        // A request written while the answer is still interim changes nothing.
        let mut watch = InterimWatch::new();
        watch.read(b"HTTP/1.1 100 Continue\r\n\r\n").unwrap();
        watch.request_written();
        assert_eq!(watch.responses, 1);
        // Not HTTP at all: left to hyper.
        let mut other = InterimWatch::new();
        other.read(b"SSH-2.0-OpenSSH\r\n").unwrap();
        assert_eq!(other.stage, Stage::Final);
    }
}
