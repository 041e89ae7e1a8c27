//! The relay's egress (issue 25) against real counterparts on 127.0.0.1: a forward proxy
//! (Debian's tinyproxy, installed by scripts/setup.sh) relay-wide (`--proxy`) and per endpoint
//! (`alter_endpoint(proxy => ...)`), TLS receivers that ask for a client certificate (mTLS, a CA
//! made by rcgen), and the SSRF guard with a proxy.
//!
//! Lean: one cluster, one tinyproxy, two relays (one open, one with the guard), each endpoint
//! a case.

mod support;

use std::io::Read;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::*;
use tokio_rustls::rustls;

const WAIT: Duration = Duration::from_secs(30);
/// Retries come fast: a failing endpoint's error is recorded at once and again and again.
const FAST: &str = "{250ms,250ms,250ms,250ms,500ms,500ms,500ms,500ms,1s,1s,1s,1s,1s,1s,1s,1s,1s,1s,1s,1s,1s,1s,1s,1s,1s,1s,1s,1s,1s,1s}";
/// tinyproxy connects out from this address: what a receiver sees when a request came through
/// it (the relay connects from 127.0.0.1).
const PROXY_SOURCE: &str = "127.0.0.2";
const PROXY_USER: &str = "relay";
const PROXY_PASSWORD: &str = "pr0xy-s3cret-pass";

/// tinyproxy in the foreground, its configuration and log in a directory of its own, basic
/// authentication required, connecting out from `PROXY_SOURCE`.
struct Tinyproxy {
    port: u16,
    child: Child,
    dir: PathBuf,
}

impl Tinyproxy {
    fn start() -> Tinyproxy {
        let dir = std::env::temp_dir().join(format!("ae-relay-tinyproxy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let port = free_port();
        let config = format!(
            "Port {port}\nListen 127.0.0.1\nBind {PROXY_SOURCE}\nTimeout 30\nMaxClients 64\n\
             LogFile \"{}\"\nLogLevel Connect\nBasicAuth {PROXY_USER} {PROXY_PASSWORD}\n",
            dir.join("tinyproxy.log").display()
        );
        std::fs::write(dir.join("tinyproxy.conf"), config).unwrap();
        let child = Command::new("tinyproxy")
            .arg("-d")
            .arg("-c")
            .arg(dir.join("tinyproxy.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("stderr.log")).unwrap())
            .spawn()
            .expect("tinyproxy (scripts/setup.sh installs it)");
        let proxy = Tinyproxy { port, child, dir };
        let listening = within(
            WAIT,
            || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
            |up| *up,
        );
        assert!(listening, "tinyproxy did not listen: {}", proxy.log());
        proxy
    }

    fn url(&self, password: &str) -> String {
        format!("http://{PROXY_USER}:{password}@127.0.0.1:{}", self.port)
    }

    fn log(&self) -> String {
        let mut log = String::new();
        for file in ["tinyproxy.log", "stderr.log"] {
            if let Ok(mut f) = std::fs::File::open(self.dir.join(file)) {
                let _ = f.read_to_string(&mut log);
            }
        }
        log
    }
}

impl Drop for Tinyproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A test CA (rcgen) issuing the receivers' server certificates and the relay's client ones.
struct TestCa {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    der: rustls::pki_types::CertificateDer<'static>,
    pem: String,
}

impl TestCa {
    fn new(name: &str) -> TestCa {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let certificate = params.self_signed(&key).unwrap();
        TestCa {
            der: certificate.der().clone(),
            pem: certificate.pem(),
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// A certificate and its key (PEM), for 127.0.0.1 as a server or as a client.
    fn issue(&self, name: &str, client: bool) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.extended_key_usages = vec![if client {
            rcgen::ExtendedKeyUsagePurpose::ClientAuth
        } else {
            rcgen::ExtendedKeyUsagePurpose::ServerAuth
        }];
        let certificate = params.signed_by(&key, &self.issuer).unwrap();
        (certificate.pem(), key.serialize_pem())
    }
}

/// What a TLS receiver saw of one connection.
#[derive(Clone, Debug)]
struct Peer {
    ip: IpAddr,
    /// The client's certificate (DER), when it presented one.
    client: Option<Vec<u8>>,
    /// The handshake failed (no certificate where one is required).
    refused: bool,
}

/// An HTTPS receiver on 127.0.0.1 (certificate from the test CA) that asks for a client
/// certificate from the client CA: required or optional. Records every connection and counts
/// the requests it answered (200).
struct TlsReceiver {
    port: u16,
    peers: Arc<Mutex<Vec<Peer>>>,
    requests: Arc<Mutex<usize>>,
    _runtime: tokio::runtime::Runtime,
}

struct TlsListener {
    tcp: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    peers: Arc<Mutex<Vec<Peer>>>,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((stream, address)) = self.tcp.accept().await else {
                continue;
            };
            match self.acceptor.accept(stream).await {
                Ok(tls) => {
                    let client = presented(&tls);
                    self.peers.lock().unwrap().push(Peer {
                        ip: address.ip(),
                        client,
                        refused: false,
                    });
                    return (tls, address);
                }
                Err(_) => self.peers.lock().unwrap().push(Peer {
                    ip: address.ip(),
                    client: None,
                    refused: true,
                }),
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

fn der(pem: &str) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec()
}

/// A server certificate for 127.0.0.1 from the server CA, asking for a client certificate from
/// the client CA: required or optional.
fn server_config(server_ca: &TestCa, client_ca: &TestCa, required: bool) -> rustls::ServerConfig {
    use rustls::pki_types::pem::PemObject;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(client_ca.der.clone()).unwrap();
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider.clone());
    let verifier = if required {
        verifier.build().unwrap()
    } else {
        verifier.allow_unauthenticated().build().unwrap()
    };
    let (certificate, key) = server_ca.issue("127.0.0.1", false);
    rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![
                rustls::pki_types::CertificateDer::from_pem_slice(certificate.as_bytes()).unwrap(),
            ],
            rustls::pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
        )
        .unwrap()
}

/// The client certificate a TLS connection presented (DER).
fn presented<T>(tls: &tokio_rustls::server::TlsStream<T>) -> Option<Vec<u8>> {
    tls.get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(|certificate| certificate.to_vec())
}

/// TLS in front of tinyproxy: an `https://` proxy (certificate from the server CA, a client
/// certificate asked for, optional). Records its connections.
struct TlsFront {
    port: u16,
    peers: Arc<Mutex<Vec<Peer>>>,
    _runtime: tokio::runtime::Runtime,
}

impl TlsFront {
    fn start(server_ca: &TestCa, client_ca: &TestCa, upstream: u16) -> TlsFront {
        let acceptor =
            tokio_rustls::TlsAcceptor::from(Arc::new(server_config(server_ca, client_ca, false)));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let tcp = runtime
            .block_on(tokio::net::TcpListener::bind(("127.0.0.1", 0)))
            .unwrap();
        let port = tcp.local_addr().unwrap().port();
        let peers: Arc<Mutex<Vec<Peer>>> = Arc::default();
        let recorded = peers.clone();
        runtime.spawn(async move {
            while let Ok((stream, address)) = tcp.accept().await {
                let (acceptor, recorded) = (acceptor.clone(), recorded.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    recorded.lock().unwrap().push(Peer {
                        ip: address.ip(),
                        client: presented(&tls),
                        refused: false,
                    });
                    if let Ok(mut proxy) =
                        tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                    {
                        let _ = tokio::io::copy_bidirectional(&mut tls, &mut proxy).await;
                    }
                });
            }
        });
        TlsFront {
            port,
            peers,
            _runtime: runtime,
        }
    }
}

impl TlsReceiver {
    fn start(server_ca: &TestCa, client_ca: &TestCa, required: bool) -> TlsReceiver {
        let config = server_config(server_ca, client_ca, required);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let tcp = runtime
            .block_on(tokio::net::TcpListener::bind(("127.0.0.1", 0)))
            .unwrap();
        let port = tcp.local_addr().unwrap().port();
        let peers: Arc<Mutex<Vec<Peer>>> = Arc::default();
        let requests: Arc<Mutex<usize>> = Arc::default();
        let counted = requests.clone();
        let app = axum::Router::new().fallback(move || {
            let counted = counted.clone();
            async move {
                *counted.lock().unwrap() += 1;
                "ok"
            }
        });
        let listener = TlsListener {
            tcp,
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            peers: peers.clone(),
        };
        runtime.spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        TlsReceiver {
            port,
            peers,
            requests,
            _runtime: runtime,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.port)
    }

    fn peers(&self) -> Vec<Peer> {
        self.peers.lock().unwrap().clone()
    }

    fn requests(&self) -> usize {
        *self.requests.lock().unwrap()
    }
}

fn alter(client: &mut postgres::Client, endpoint: &str, setting: &str, value: &str) {
    client
        .execute(
            &format!("SELECT ae_events.alter_endpoint($1, {setting} => $2)"),
            &[&endpoint, &value],
        )
        .unwrap();
}

fn set_client_certificate(client: &mut postgres::Client, endpoint: &str, pem: &(String, String)) {
    client
        .execute(
            "SELECT ae_events.alter_endpoint($1, client_certificate => $2, client_key => $3)",
            &[&endpoint, &pem.0, &pem.1],
        )
        .unwrap();
}

/// The endpoint's first recorded error (waiting for one).
fn last_error(client: &mut postgres::Client, endpoint: &str) -> String {
    let query = format!(
        "SELECT count(*) > 0 FROM ae_events.delivery_status
          WHERE endpoint = '{endpoint}' AND last_error IS NOT NULL"
    );
    wait_until_sql(client, &format!("an error of {endpoint}"), WAIT, &query);
    client
        .query_one(
            "SELECT last_error FROM ae_events.delivery_status
              WHERE endpoint = $1 AND last_error IS NOT NULL LIMIT 1",
            &[&endpoint],
        )
        .unwrap()
        .get(0)
}

fn wait_delivered(client: &mut postgres::Client, endpoint: &str) {
    wait_until_sql(
        client,
        &format!("{endpoint} delivered"),
        WAIT,
        &format!(
            "SELECT count(*) = 1 FROM ae_events.delivery_status
              WHERE endpoint = '{endpoint}' AND status = 'delivered'"
        ),
    );
}

#[test]
fn deliveries_go_through_the_proxy_and_client_certificates_go_to_their_endpoint_only() {
    let cluster = Cluster::shared();
    let proxy = Tinyproxy::start();
    let server_ca = TestCa::new("ae-relay egress test server CA");
    let client_ca = TestCa::new("ae-relay egress test client CA");
    let bundle =
        std::env::temp_dir().join(format!("ae-relay-egress-ca-{}.pem", std::process::id()));
    std::fs::write(&bundle, &server_ca.pem).unwrap();

    let plain = Receiver::ok();
    // Requires a client certificate from the client CA; the optional one records whether a
    // client presented one.
    let mtls = TlsReceiver::start(&server_ca, &client_ca, true);
    let optional = TlsReceiver::start(&server_ca, &client_ca, false);
    let dead_port = free_port();
    // A proxy that accepts connections (the kernel's backlog) and never answers.
    let silent_proxy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent_proxy.local_addr().unwrap().port();
    let front = TlsFront::start(&server_ca, &client_ca, proxy.port);

    let (database, mut client) = delivery_database("egress_transport");
    let endpoints = [
        // Through --proxy (tinyproxy, the right password).
        ("plain", plain.url("/plain")),
        ("tls", optional.url("/tls")),
        // Their own proxies: the same tinyproxy without credentials or with a wrong
        // password, and one that is down.
        ("no_credentials", plain.url("/no_credentials")),
        ("wrong_password", plain.url("/wrong_password")),
        ("wrong_password_tls", optional.url("/wrong_password_tls")),
        ("proxy_down", plain.url("/proxy_down")),
        ("proxy_silent", optional.url("/proxy_silent")),
        // Its certificate goes to its receiver only, not to its OAuth2 token URL (here the
        // receiver that asks for certificates and records them, answering no token).
        ("token_elsewhere", mtls.url("/token_elsewhere")),
        // mTLS: with its certificate (through --proxy: CONNECT, then TLS with the receiver),
        // and without one.
        ("with_certificate", mtls.url("/with_certificate")),
        ("without_certificate", mtls.url("/without_certificate")),
        // Through an https:// proxy (TLS to the proxy, CONNECT, TLS to the receiver inside),
        // with a certificate that goes to the receiver and not to the proxy.
        ("https_proxy", mtls.url("/https_proxy")),
    ];
    for (name, url) in &endpoints {
        create_endpoint(&mut client, name, url, FAST);
    }
    alter(
        &mut client,
        "no_credentials",
        "proxy",
        &format!("http://127.0.0.1:{}", proxy.port),
    );
    alter(
        &mut client,
        "wrong_password",
        "proxy",
        &proxy.url("wr0ng-pass"),
    );
    alter(
        &mut client,
        "wrong_password_tls",
        "proxy",
        &proxy.url("wr0ng-pass"),
    );
    alter(
        &mut client,
        "proxy_down",
        "proxy",
        &format!("http://127.0.0.1:{dead_port}"),
    );
    alter(
        &mut client,
        "proxy_silent",
        "proxy",
        &format!("http://127.0.0.1:{silent_port}"),
    );
    let identity = client_ca.issue("relay-client-with-certificate", true);
    set_client_certificate(&mut client, "with_certificate", &identity);
    set_client_certificate(&mut client, "https_proxy", &identity);
    set_client_certificate(&mut client, "token_elsewhere", &identity);
    client
        .execute(
            "SELECT ae_events.alter_endpoint('token_elsewhere', oauth2_token_url => $1,
                    oauth2_client_id => 'relay', oauth2_client_secret => 'token-secret-1')",
            &[&optional.url("/token")],
        )
        .unwrap();
    alter(
        &mut client,
        "https_proxy",
        "proxy",
        &format!(
            "https://{PROXY_USER}:{PROXY_PASSWORD}@127.0.0.1:{}",
            front.port
        ),
    );
    insert_instance(&mut client, 1);

    let relay = Relay::start(
        cluster,
        &database,
        &[
            "--proxy",
            &proxy.url(PROXY_PASSWORD),
            "--ca-bundle",
            bundle.to_str().unwrap(),
        ],
    );

    // Through the proxy: the HTTP receiver sees tinyproxy's Via header and the request came
    // from the proxy's address; the HTTPS one the proxy's connection (its source address).
    wait_delivered(&mut client, "plain");
    wait_delivered(&mut client, "tls");
    let received = plain.requests();
    let through: Vec<&Received> = received.iter().filter(|r| r.path == "/plain").collect();
    assert_eq!(through.len(), 1, "{received:?}");
    assert!(
        through[0].header("via").contains("tinyproxy"),
        "{:?}",
        through[0].headers
    );
    assert!(
        through[0].header("proxy-authorization").is_empty(),
        "the proxy's credentials are not forwarded"
    );
    let log = proxy.log();
    assert!(
        log.contains(&format!("POST http://127.0.0.1:{}/plain", plain.port)),
        "{log}"
    );
    assert!(
        log.contains(&format!("CONNECT 127.0.0.1:{}", optional.port)),
        "{log}"
    );

    // mTLS: delivered with the certificate; refused without (a failed attempt).
    wait_delivered(&mut client, "with_certificate");
    let refused = last_error(&mut client, "without_certificate");
    assert!(
        refused.starts_with("request failed: received fatal alert: CertificateRequired"),
        "the receiver's refusal, not the proxy's: {refused}"
    );
    let peers = mtls.peers();
    assert!(
        peers
            .iter()
            .any(|p| !p.refused && p.client.as_deref() == Some(der(&identity.0).as_slice())),
        "{peers:?}"
    );
    assert!(peers.iter().any(|p| p.refused), "{peers:?}");
    // The token request of the endpoint with a certificate reached its token URL (without it:
    // below).
    let token_error = last_error(&mut client, "token_elsewhere");
    assert!(
        token_error.starts_with("OAuth2 token endpoint: HTTP 200"),
        "{token_error}"
    );
    // Every connection to the receivers came from the proxy.
    let optional_peers = optional.peers();
    for peer in peers.iter().chain(&optional_peers) {
        assert_eq!(peer.ip.to_string(), PROXY_SOURCE, "{peer:?}");
    }
    // The endpoint without a certificate, and the token request, never presented one (the
    // receiver asked).
    assert!(optional.requests() >= 1);
    assert!(
        optional_peers.iter().all(|p| p.client.is_none()),
        "{optional_peers:?}"
    );
    // Through the https:// proxy: delivered, the certificate presented to the receiver, never
    // to the proxy.
    wait_delivered(&mut client, "https_proxy");
    let front_peers = front.peers.lock().unwrap().clone();
    assert!(!front_peers.is_empty());
    assert!(
        front_peers.iter().all(|p| p.client.is_none()),
        "{front_peers:?}"
    );
    assert_eq!(
        mtls.requests(),
        2,
        "only the endpoints with the certificate"
    );

    // The proxy's failures are recorded as such: 407 to a plain-HTTP request, any refusal of
    // a tunnel (tinyproxy answers a wrong password with 401), a proxy that is down.
    let no_credentials = last_error(&mut client, "no_credentials");
    assert!(
        no_credentials.starts_with("proxy: the proxy answered 407"),
        "{no_credentials}"
    );
    let wrong_tls = last_error(&mut client, "wrong_password_tls");
    assert!(
        wrong_tls.starts_with("proxy: the proxy refused the tunnel: HTTP/1.0 401"),
        "{wrong_tls}"
    );
    // A plain-HTTP request's answer other than 407 cannot be told from the receiver's (the
    // proxy answers in its place): recorded as an HTTP status, the receiver never reached.
    let wrong = last_error(&mut client, "wrong_password");
    assert!(wrong.starts_with("HTTP 401"), "{wrong}");
    let down = last_error(&mut client, "proxy_down");
    assert_eq!(
        down,
        format!(
            "proxy: cannot connect to the proxy 127.0.0.1:{dead_port}: Connection refused (os error 111)"
        )
    );
    // A proxy that never answers CONNECT: its failure too, within its own bound (10 s), not
    // the receiver's timeout (15 s).
    let silent = last_error(&mut client, "proxy_silent");
    assert_eq!(
        silent,
        format!("proxy: the proxy 127.0.0.1:{silent_port} did not answer within 10 s")
    );
    drop(silent_proxy);
    assert!(
        plain.requests().iter().all(|r| r.path == "/plain"),
        "nothing reached the receiver past a failing proxy"
    );
    // A changed setting takes effect at the next attempt, the relay running on.
    alter(
        &mut client,
        "proxy_down",
        "proxy",
        &proxy.url(PROXY_PASSWORD),
    );
    wait_delivered(&mut client, "proxy_down");

    // The passwords are nowhere: errors, the relay's log.
    let errors: Vec<String> = client
        .query(
            "SELECT coalesce(last_error, '') FROM ae_events.delivery_status",
            &[],
        )
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    let output = relay.log();
    for secret in [PROXY_PASSWORD, "wr0ng-pass"] {
        assert!(!output.contains(secret), "{secret} in the relay's log");
        for error in &errors {
            assert!(!error.contains(secret), "{secret} in {error}");
        }
    }
    // The private key never either.
    let key_line = identity.1.lines().nth(1).unwrap();
    assert!(!output.contains(key_line));
    drop(relay);
    let _ = std::fs::remove_file(&bundle);
}

#[test]
fn the_guard_checks_the_proxys_address_and_still_refuses_loopback_endpoints_without_one() {
    let cluster = Cluster::shared();
    let receiver = Receiver::ok();
    let proxy_port = free_port();
    let (database, mut client) = delivery_database("egress_transport_guard");
    create_endpoint(&mut client, "proxied", &receiver.url("/proxied"), FAST);
    create_endpoint(&mut client, "direct", &receiver.url("/direct"), FAST);
    create_endpoint(&mut client, "by_name", &receiver.url("/by_name"), FAST);
    // A proxy named, not given as an address: resolved, then checked.
    alter(
        &mut client,
        "by_name",
        "proxy",
        &format!("http://localhost:{proxy_port}"),
    );
    // Any endpoint URL: the proxy decides for it; the guard sees the proxy's address only.
    alter(
        &mut client,
        "proxied",
        "proxy",
        &format!("http://someone:gu4rd-pass@127.0.0.1:{proxy_port}"),
    );
    insert_instance(&mut client, 1);
    let relay = Relay::start(cluster, &database, &["--refuse-private-addresses"]);
    let proxied = last_error(&mut client, "proxied");
    assert_eq!(
        proxied,
        format!(
            "proxy: the proxy 127.0.0.1:{proxy_port} is refused: 127.0.0.1 is a loopback \
             address (--refuse-private-addresses)"
        )
    );
    let by_name = last_error(&mut client, "by_name");
    assert!(
        by_name.starts_with(&format!(
            "proxy: the proxy localhost:{proxy_port} is refused: "
        )),
        "{by_name}"
    );
    let direct = last_error(&mut client, "direct");
    assert_eq!(
        direct,
        "refused: 127.0.0.1 is a loopback address (--refuse-private-addresses)"
    );
    assert_eq!(receiver.count(), 0);
    assert!(!relay.log().contains("gu4rd-pass"));
}
