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
//! rustls (the platform's roots plus `--ca-bundle`'s, as reqwest did), and goes through the
//! proxy the environment names (`HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY`, `NO_PROXY`), except
//! under the guard: a proxy would resolve and connect out of its sight.

use crate::address_guard::{self, Unresolved};
use crate::config::RelayConfig;
use hyper::rt::ReadBufCursor;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
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
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The client every endpoint shares (pooled connections, reused per host), and the proxies of
/// the environment (None under the guard).
pub fn client(config: &RelayConfig) -> Result<(Client, Option<Arc<Matcher>>), String> {
    let roots = match &config.ca_bundle {
        Some(path) => read_ca_bundle(path)?,
        None => Vec::new(),
    };
    let tls = tls_config(roots).map_err(|error| match &config.ca_bundle {
        Some(path) => format!(
            "cannot set up the HTTP client with the CA bundle {}: {error}",
            path.display()
        ),
        None => format!("cannot set up the HTTP client: {error}"),
    })?;
    let proxies = (!config.refuse_private_addresses).then(|| Arc::new(Matcher::from_env()));
    let mut tcp = HttpConnector::new_with_resolver(Resolver {
        refuse_private_addresses: config.refuse_private_addresses,
    });
    tcp.enforce_http(false);
    tcp.set_nodelay(true);
    let connector = Connector {
        tcp,
        tls: tokio_rustls::TlsConnector::from(Arc::new(tls)),
        proxies: proxies.clone(),
    };
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_timer(TokioTimer::new())
        // Counted in the relay's socket budget (sockets.rs).
        .pool_max_idle_per_host(crate::sockets::IDLE_PER_HOST)
        .build(connector);
    Ok((client, proxies))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Certificates verified against the platform's roots and the extra ones, HTTP/1.1 by ALPN.
fn tls_config(extra_roots: Vec<CertificateDer<'static>>) -> Result<rustls::ClientConfig, String> {
    let provider = provider();
    let verifier =
        rustls_platform_verifier::Verifier::new_with_extra_roots(extra_roots, provider.clone())
            .map_err(|error| error.to_string())?;
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| error.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
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

/// Makes the connections of the client (see the module's documentation).
#[derive(Clone)]
pub struct Connector {
    /// TCP: hyper-util's connector (happy eyeballs, TCP_NODELAY) over the relay's resolver.
    tcp: HttpConnector<Resolver>,
    tls: tokio_rustls::TlsConnector,
    proxies: Option<Arc<Matcher>>,
}

/// The system's resolver, keeping the allowed addresses only under the guard. (An IP-literal
/// host is not resolved: http_sink checks it before the request.)
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
        let proxy = self.proxies.as_ref().and_then(|m| m.intercept(&uri));
        let (tcp, proxied) = match proxy {
            None => (self.tcp(uri.clone()).await?, false),
            Some(proxy) => {
                if proxy.uri().scheme_str() != Some("http") {
                    let shown = proxy.uri().host().unwrap_or("");
                    return Err(format!("only http:// proxies are supported ({shown})").into());
                }
                let mut tcp = self.tcp(proxy.uri().clone()).await?;
                if https {
                    tunnel(&mut tcp, &host, port, proxy.basic_auth()).await?;
                }
                // Plain HTTP through a proxy: the request in absolute form, to the proxy.
                (tcp, !https)
            }
        };
        let io: Box<dyn Io> = if https {
            let name = ServerName::try_from(host.clone())
                .map_err(|_| format!("not a host name for TLS: {host}"))?;
            Box::new(self.tls.connect(name, tcp).await?)
        } else {
            Box::new(tcp)
        };
        Ok(Bounded::new(io, proxied))
    }

    /// A TCP connection to the URI's host and port (happy eyeballs among its addresses; under
    /// the guard, among those it allowed only).
    async fn tcp(&self, uri: http::Uri) -> Result<TcpStream, BoxError> {
        let mut connector = self.tcp.clone();
        let stream = tower_service::Service::call(&mut connector, uri).await?;
        Ok(stream.into_inner())
    }
}

/// Ask an HTTP proxy for a tunnel to host:port (CONNECT) and read its answer.
async fn tunnel(
    tcp: &mut TcpStream,
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
    tcp.write_all(&request).await?;
    // The proxy's answer head, byte by byte (nothing of the tunnel may be read past it).
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() >= 8 * 1024 {
            return Err("the proxy's answer to CONNECT is too long".into());
        }
        let mut byte = [0u8];
        if tcp.read(&mut byte).await? == 0 {
            return Err("the proxy closed the connection during CONNECT".into());
        }
        head.push(byte[0]);
    }
    let status_line = String::from_utf8_lossy(&head);
    let status = status_line.split_whitespace().nth(1).unwrap_or("");
    if !status.starts_with('2') {
        let line = status_line.lines().next().unwrap_or("").to_owned();
        return Err(format!("the proxy refused the tunnel: {line}").into());
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
