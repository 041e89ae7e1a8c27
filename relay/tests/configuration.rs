//! Configuring ae-relay (issue: relay configuration): the `--config` TOML file and its
//! precedence, `--help`, the CA bundle, the SSRF guard, and no database password in its output.
//! The real binary as a child process; waits have deadlines, nothing is timed.

mod support;

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::*;

const WAIT: Duration = Duration::from_secs(30);

/// Variables of the test's own environment that would change what the relay does.
const RELAY_ENV: &[&str] = &[
    "DATABASE_URL",
    "AE_RELAY_CONFIG",
    "AE_RELAY_METRICS_ADDRESS",
    "AE_RELAY_LOG_FORMAT",
    "AE_RELAY_ID",
    "AE_RELAY_LOG",
];

/// A file under the temporary directory, removed when dropped.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, contents: &str) -> TempFile {
        use std::sync::atomic::AtomicU64;
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "ae-relay-configuration-{}-{}-{name}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::write(&path, contents).unwrap();
        TempFile(path)
    }
    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// `ae-relay` with exactly these arguments and environment variables, stderr to a file;
/// killed when dropped.
struct Process {
    child: Child,
    log: TempFile,
}

impl Process {
    fn start(args: &[&str], env: &[(&str, &str)]) -> Process {
        let log = TempFile::new("stderr.log", "");
        let mut command = Command::new(env!("CARGO_BIN_EXE_ae-relay"));
        for name in RELAY_ENV {
            command.env_remove(name);
        }
        command
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log.0).unwrap());
        Process {
            child: command.spawn().expect("start ae-relay"),
            log,
        }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.log.0).unwrap_or_default()
    }

    /// Wait until the log holds `text`.
    fn wait_for_log(&self, text: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let log = self.stderr();
            if log.contains(text) {
                return log;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {text:?} in the log:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Wait for the process to exit (it must, before the deadline).
    fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "ae-relay did not exit:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM and wait: the relay gives its endpoints back.
    fn terminate(mut self) -> String {
        // Its signal handlers are in place from this line on.
        self.wait_for_log("ae-relay starting");
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let status = self.wait_exit();
        assert!(status.success(), "{status:?}\n{}", self.stderr());
        self.stderr()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `ae-relay` run to its end: (exit code, stderr).
fn run_to_end(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut process = Process::start(args, env);
    let status = process.wait_exit();
    (status.code(), process.stderr())
}

/// GET over plain HTTP/1.0: the status.
fn get_status(port: u16, path: &str) -> Option<u16> {
    get(port, path).map(|(status, _)| status)
}

fn wait_for_metrics(port: u16, process: &Process) {
    let deadline = Instant::now() + WAIT;
    while get_status(port, "/metrics") != Some(200) {
        assert!(
            Instant::now() < deadline,
            "no /metrics on port {port}:\n{}",
            process.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn relay_url(cluster: &Cluster, database: &str) -> String {
    ensure_relay_login(cluster);
    format!(
        "postgres://relay_user@127.0.0.1:{}/{database}",
        cluster.port
    )
}

/// The `last_error` of the endpoint's delivery, once it is set.
fn wait_for_last_error(client: &mut postgres::Client, endpoint: &str, relay: &Process) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let row = client
            .query_opt(
                "SELECT last_error FROM ae_events.delivery_status
                  WHERE endpoint = $1 AND last_error IS NOT NULL LIMIT 1",
                &[&endpoint],
            )
            .unwrap();
        if let Some(row) = row {
            return row.get(0);
        }
        assert!(
            Instant::now() < deadline,
            "no failed attempt recorded for {endpoint}; the relay's log:\n{}",
            relay.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A retry schedule long enough that an event stays pending while a test restarts the relay.
const PATIENT: &str = "{250ms,250ms,250ms,250ms,500ms,500ms,500ms,500ms,1s,1s,1s,1s,1s,1s,1s,1s,1s,1s,1s,1s,1s,1s,1s,1s,1s,1s,1s,1s,1s,1s,1s,1s,1s,1s,1s,1s,1s,1s,1s,1s,1s,1s,1s,1s,1s,1s,1s,1s,1s,1s}";

#[test]
fn help_lists_every_option_with_its_default() {
    let output = Command::new(env!("CARGO_BIN_EXE_ae-relay"))
        .args(["run", "--help"])
        .env_remove("AE_RELAY_LOG_FORMAT")
        .output()
        .unwrap();
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for option in [
        "--database-url",
        "--relay-id",
        "--lease",
        "--poll-interval",
        "--channel",
        "--window",
        "--shutdown-deadline",
        "--metrics-address",
        "--ca-bundle",
        "--refuse-private-addresses",
        "--config",
        "--log-format",
    ] {
        assert!(help.contains(option), "{option} missing from:\n{help}");
    }
    // Each option with a built-in default shows it (clap's display), the file notwithstanding.
    let entry = |option: &str| -> String {
        let start = help.find(&format!("{option} <")).unwrap();
        let rest = &help[start + option.len()..];
        rest[..rest.find("\n  -").unwrap_or(rest.len())].to_owned()
    };
    for option in [
        "--lease",
        "--poll-interval",
        "--channel",
        "--window",
        "--shutdown-deadline",
        "--log-format",
    ] {
        assert!(
            entry(option).contains("[default: "),
            "{option} without its default:\n{help}"
        );
    }
    assert!(entry("--channel").contains("[default: ae_events]"));
    assert!(entry("--config").contains("AE_RELAY_CONFIG"));
}

#[test]
fn a_value_from_the_file_takes_effect_and_flag_beats_env_beats_file() {
    let cluster = Cluster::shared();
    let database = cluster.database("config_precedence", ForeignKeys::Without);
    let url = relay_url(cluster, &database);
    let (from_file, from_env, from_flag) = (free_port(), free_port(), free_port());
    let file = TempFile::new(
        "precedence.toml",
        &format!(
            "# settings of this test\nmetrics-address = \"127.0.0.1:{from_file}\"\nlease = \"7s\"\n\
             poll-interval = 1\nshutdown-deadline = \"5s\"\nlog-format = \"json\"\n"
        ),
    );
    let env_address = format!("127.0.0.1:{from_env}");
    let flag_address = format!("127.0.0.1:{from_flag}");

    // The file alone.
    let relay = Process::start(&["run", "--config", file.path()], &[("DATABASE_URL", &url)]);
    wait_for_metrics(from_file, &relay);
    let log = relay.wait_for_log("effective settings");
    assert!(
        log.contains(&format!("metrics-address=127.0.0.1:{from_file} (file)")),
        "{log}"
    );
    assert!(log.contains("lease=7s (file)"), "{log}");
    assert!(log.contains("poll-interval=1 (file)"), "{log}");
    assert!(log.contains("window=2000 (default)"), "{log}");
    assert!(log.contains("database-url=(hidden) (env)"), "{log}");
    // log-format = "json" from the file: one JSON object per line.
    let first = log.lines().next().unwrap_or("");
    assert!(
        serde_json::from_str::<serde_json::Value>(first).is_ok(),
        "{log}"
    );
    relay.terminate();

    // The environment beats the file (the file named by AE_RELAY_CONFIG this time).
    let relay = Process::start(
        &["run"],
        &[
            ("DATABASE_URL", &url),
            ("AE_RELAY_CONFIG", file.path()),
            ("AE_RELAY_METRICS_ADDRESS", &env_address),
        ],
    );
    wait_for_metrics(from_env, &relay);
    let log = relay.wait_for_log("effective settings");
    assert!(
        log.contains(&format!("metrics-address={env_address} (env)")),
        "{log}"
    );
    assert!(log.contains("lease=7s (file)"), "{log}");
    assert_eq!(get_status(from_file, "/metrics"), None, "not on the file's");
    relay.terminate();

    // The command line beats both.
    let relay = Process::start(
        &[
            "run",
            "--config",
            file.path(),
            "--metrics-address",
            &flag_address,
            "--lease",
            "9s",
        ],
        &[
            ("DATABASE_URL", &url),
            ("AE_RELAY_METRICS_ADDRESS", &env_address),
        ],
    );
    wait_for_metrics(from_flag, &relay);
    let log = relay.wait_for_log("effective settings");
    assert!(
        log.contains(&format!("metrics-address={flag_address} (flag)")),
        "{log}"
    );
    assert!(log.contains("lease=9s (flag)"), "{log}");
    assert_eq!(get_status(from_env, "/metrics"), None, "not on the env's");
    assert_eq!(get_status(from_file, "/metrics"), None, "not on the file's");
    relay.terminate();
}

#[test]
fn bad_files_are_refused_at_start_naming_the_file_and_the_key() {
    let url = "postgres://relay_user@127.0.0.1:1/nothing";
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "lease = \"soon\"\n",
            "bad-value",
            &["key `lease`", "\"soon\"", "not a duration"],
        ),
        (
            "log-format = \"xml\"\n",
            "bad-choice",
            &["key `log-format`", "expected one of: human, json"],
        ),
        (
            "metrics-address = \"everywhere\"\n",
            "bad-address",
            &["key `metrics-address`", "\"everywhere\""],
        ),
        (
            "window = \"big\"\n",
            "bad-number",
            &["key `window`", "\"big\""],
        ),
        (
            "refuse-private-addresses = \"yes\"\n",
            "bad-flag",
            &["key `refuse-private-addresses`", "expected true or false"],
        ),
        (
            "lease = \"6s\"\ncolour = \"blue\"\n",
            "unknown-key",
            &["unknown key `colour`"],
        ),
        ("lease = 6s\n", "not-toml", &["is not valid TOML at line 1"]),
        (
            "ca-bundle = \"/nonexistent/ca.pem\"\n",
            "missing-ca",
            &[
                "key `ca-bundle`",
                "cannot read the CA bundle /nonexistent/ca.pem",
            ],
        ),
    ];
    for (contents, name, expected) in cases {
        let file = TempFile::new(&format!("{name}.toml"), contents);
        let (code, stderr) =
            run_to_end(&["run", "--config", file.path()], &[("DATABASE_URL", url)]);
        assert_eq!(code, Some(2), "{name}: {stderr}");
        assert!(
            stderr.contains(file.path()),
            "{name} names the file: {stderr}"
        );
        for text in *expected {
            assert!(stderr.contains(text), "{name}: {text:?} not in {stderr}");
        }
        assert!(
            !stderr.contains("effective settings"),
            "{name}: did not start"
        );
    }
    // A database URL that cannot be parsed (here from the file): refused at start, named,
    // never quoted (it holds the password).
    let file = TempFile::new(
        "bad-url.toml",
        "database-url = \"postgres://relay:hunter2@db.internal:notaport/app\"\n",
    );
    let (code, stderr) = run_to_end(&["run", "--config", file.path()], &[]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("the database URL (--database-url / DATABASE_URL) cannot be parsed"),
        "{stderr}"
    );
    assert!(!stderr.contains("hunter2"), "{stderr}");
    // A file that is not there.
    let (code, stderr) = run_to_end(
        &["run", "--config", "/nonexistent/ae-relay.toml"],
        &[("DATABASE_URL", url)],
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("cannot read the configuration file /nonexistent/ae-relay.toml"),
        "{stderr}"
    );
    // A bad CA bundle on the command line: refused by clap, naming it.
    let not_pem = TempFile::new("not-a-bundle.pem", "hello\n");
    let (code, stderr) = run_to_end(
        &["run", "--ca-bundle", not_pem.path()],
        &[("DATABASE_URL", url)],
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains(not_pem.path()), "{stderr}");
    assert!(stderr.contains("holds no certificate"), "{stderr}");
    let broken = TempFile::new(
        "broken-bundle.pem",
        "-----BEGIN CERTIFICATE-----\nAAAAAAAA\n-----END CERTIFICATE-----\n",
    );
    let (code, stderr) = run_to_end(
        &["run", "--ca-bundle", broken.path()],
        &[("DATABASE_URL", url)],
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains(broken.path()), "{stderr}");
    assert!(stderr.contains("cannot be used"), "{stderr}");
}

/// An HTTPS receiver on 127.0.0.1 whose certificate is signed by a CA made here; counts the
/// requests it answers (200).
struct TlsReceiver {
    port: u16,
    requests: Arc<AtomicUsize>,
    ca_pem: String,
    _runtime: tokio::runtime::Runtime,
}

struct TlsListener {
    tcp: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((stream, address)) = self.tcp.accept().await else {
                continue;
            };
            // A client that refuses the certificate ends the handshake: wait for the next.
            if let Ok(tls) = self.acceptor.accept(stream).await {
                return (tls, address);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

impl TlsReceiver {
    fn start() -> TlsReceiver {
        use tokio_rustls::rustls;
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "ae-relay test CA");
        ca_params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let mut leaf_params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
                .unwrap();
        leaf_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "127.0.0.1");
        let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
            )
            .unwrap();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let tcp = runtime
            .block_on(tokio::net::TcpListener::bind(("127.0.0.1", 0)))
            .unwrap();
        let port = tcp.local_addr().unwrap().port();
        let requests = Arc::new(AtomicUsize::new(0));
        let counted = requests.clone();
        let app = axum::Router::new().fallback(move || {
            let counted = counted.clone();
            async move {
                counted.fetch_add(1, Ordering::SeqCst);
                "ok"
            }
        });
        let listener = TlsListener {
            tcp,
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        };
        runtime.spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        TlsReceiver {
            port,
            requests,
            ca_pem: ca_cert.pem(),
            _runtime: runtime,
        }
    }

    fn count(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

#[test]
fn a_private_ca_is_trusted_only_with_ca_bundle() {
    let cluster = Cluster::shared();
    let (database, mut client) = delivery_database("config_ca_bundle");
    let receiver = TlsReceiver::start();
    let url = format!("https://127.0.0.1:{}/hooks", receiver.port);
    create_endpoint(&mut client, "tls", &url, PATIENT);
    insert_instance(&mut client, 1);
    let database_url = relay_url(cluster, &database);
    let common = ["run", "--lease", "2s", "--poll-interval", "250ms"];

    // Without the CA: the certificate is refused, the attempt recorded as failed.
    let relay = Process::start(&common, &[("DATABASE_URL", &database_url)]);
    let error = wait_for_last_error(&mut client, "tls", &relay);
    assert!(
        error.starts_with("could not connect: invalid peer certificate"),
        "a certificate error: {error}"
    );
    assert_eq!(receiver.count(), 0, "nothing reached the receiver");
    relay.terminate();

    // With the CA as --ca-bundle: delivered.
    let bundle = TempFile::new("ca.pem", &receiver.ca_pem);
    let mut args = common.to_vec();
    args.extend(["--ca-bundle", bundle.path()]);
    let relay = Process::start(&args, &[("DATABASE_URL", &database_url)]);
    wait_until_sql(
        &mut client,
        "delivered over TLS",
        WAIT,
        "SELECT count(*) = 1 FROM ae_events.delivery_status WHERE endpoint = 'tls' AND status = 'delivered'",
    );
    assert!(receiver.count() >= 1);
    relay.terminate();
}

#[test]
fn the_ssrf_guard_refuses_private_addresses_and_records_why() {
    let cluster = Cluster::shared();
    let (database, mut client) = delivery_database("config_ssrf");
    let receiver = Receiver::ok();
    create_endpoint(&mut client, "literal", &receiver.url("/literal"), PATIENT);
    create_endpoint(
        &mut client,
        "named",
        &format!("http://localhost:{}/named", receiver.port),
        PATIENT,
    );
    insert_instance(&mut client, 1);
    let database_url = relay_url(cluster, &database);
    // Turned on by the file.
    let file = TempFile::new(
        "guard.toml",
        "refuse-private-addresses = true\nlease = \"2s\"\npoll-interval = \"250ms\"\n",
    );
    let relay = Process::start(
        &["run", "--config", file.path()],
        &[("DATABASE_URL", &database_url)],
    );
    let literal = wait_for_last_error(&mut client, "literal", &relay);
    assert_eq!(
        literal,
        format!("refused: 127.0.0.1 is a loopback address (--refuse-private-addresses)")
    );
    let named = wait_for_last_error(&mut client, "named", &relay);
    assert!(
        named.starts_with("refused: localhost resolves to ")
            && named.contains("loopback address (--refuse-private-addresses)"),
        "{named}"
    );
    // Retried per the schedule, never sent.
    wait_until_sql(
        &mut client,
        "a second refused attempt",
        WAIT,
        "SELECT bool_and(attempts >= 2) FROM ae_events.delivery_status WHERE status = 'pending'",
    );
    assert_eq!(receiver.count(), 0, "nothing sent");
    let log = relay.terminate();
    assert!(
        log.contains("refuse-private-addresses=true (file)"),
        "{log}"
    );

    // Off (the default): both are delivered.
    let relay = Process::start(
        &["run", "--lease", "2s", "--poll-interval", "250ms"],
        &[("DATABASE_URL", &database_url)],
    );
    wait_until_sql(
        &mut client,
        "both delivered",
        WAIT,
        "SELECT count(*) = 2 FROM ae_events.delivery_status WHERE status = 'delivered'",
    );
    assert!(receiver.count() >= 2);
    relay.terminate();
}

#[test]
fn the_database_password_never_appears_in_the_relays_output() {
    let cluster = Cluster::shared();
    let database = cluster.database("config_password", ForeignKeys::Without);
    ensure_relay_login(cluster);
    const PASSWORD: &str = "pw-Zq81-never-shown";
    let good = format!(
        "postgres://relay_user:{PASSWORD}@127.0.0.1:{}/{database}",
        cluster.port
    );
    let closed = format!(
        "postgres://relay_user:{PASSWORD}@127.0.0.1:{}/{database}",
        free_port()
    );
    let unparsable = format!("postgres://relay_user:{PASSWORD}@127.0.0.1:notaport/{database}");
    let quoted = format!("host=127.0.0.1 password='{PASSWORD}");
    let verbose = [("AE_RELAY_LOG", "trace")];
    let assert_clean = |what: &str, text: &str| {
        assert!(
            !text.contains(PASSWORD),
            "{what} shows the password:\n{text}"
        );
        assert!(
            !text.contains("Zq81"),
            "{what} shows part of the password:\n{text}"
        );
    };

    // Connected and running (trust authentication: the password is not even needed), sending
    // to an endpoint with an Authorization header, logging all.
    let mut client = cluster.connect(&database);
    client.batch_execute(MINIMAL_REFERENCE_DATA).unwrap();
    let receiver = Receiver::ok();
    let secret = create_endpoint(&mut client, "authorized", &receiver.url("/"), "{300ms}");
    client
        .execute(
            "SELECT ae_events.alter_endpoint('authorized', headers => '{\"authorization\": \"Bearer tok-Yv55-secret\"}')",
            &[],
        )
        .unwrap();
    for (format, instance) in [("human", 1), ("json", 2)] {
        let relay = Process::start(
            &["run", "--log-format", format, "--poll-interval", "250ms"],
            &[("DATABASE_URL", &good), verbose[0]],
        );
        let log = relay.wait_for_log("effective settings");
        assert!(log.contains("database-url=(hidden)"), "{log}");
        insert_instance(&mut client, instance);
        receiver.wait_for("the event", WAIT, |r| r.len() >= instance as usize);
        let log = relay.terminate();
        assert_clean(&format!("a running relay ({format})"), &log);
        assert!(log.contains("serving endpoint"), "{log}");
        assert!(
            !log.contains("tok-Yv55"),
            "the Authorization header in:\n{log}"
        );
        let key = secret.trim_start_matches("whsec_");
        assert!(!log.contains(key), "the endpoint's secret in:\n{log}");
    }
    assert_eq!(
        receiver.requests()[0].header("authorization"),
        "Bearer tok-Yv55-secret",
        "the header was sent"
    );
    // The database is not there: it keeps trying, and says so.
    let relay = Process::start(&["run"], &[("DATABASE_URL", &closed), verbose[0]]);
    let log = relay.wait_for_log("cannot connect");
    assert_clean("a relay that cannot connect", &log);
    drop(relay);
    // The URL cannot be parsed: refused at start (exit 1).
    for url in [&unparsable, &quoted] {
        let (code, stderr) = run_to_end(&["run"], &[("DATABASE_URL", url), verbose[0]]);
        assert_eq!(code, Some(1), "{stderr}");
        assert!(stderr.contains("the database URL"), "{stderr}");
        assert_clean("a relay refusing its URL", &stderr);
    }
    // Given as a flag with a bad option beside it, and in a file that clap or TOML refuses.
    let (code, stderr) = run_to_end(&["run", "--database-url", &good, "--lease", "never"], &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert_clean("a refused command line", &stderr);
    let file = TempFile::new(
        "secret.toml",
        &format!("database-url = \"{good}\"\nlease = \"never\"\n"),
    );
    let (code, stderr) = run_to_end(&["run", "--config", file.path()], &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("key `lease`"), "{stderr}");
    assert_clean("a refused file", &stderr);
    let file = TempFile::new(
        "broken.toml",
        &format!("database-url = \"{good}\nlease = 1\n"),
    );
    let (code, stderr) = run_to_end(&["run", "--config", file.path()], &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert_clean("a file that is not TOML", &stderr);
    // From the file, running.
    let file = TempFile::new("good.toml", &format!("database-url = \"{good}\"\n"));
    let relay = Process::start(&["run", "--config", file.path()], &[verbose[0]]);
    let log = relay.wait_for_log("effective settings");
    assert!(log.contains("database-url=(hidden) (file)"), "{log}");
    let log = relay.terminate();
    assert_clean("a relay configured by file", &log);
    // `check` reports a failed connection without the URL.
    let output = Command::new(env!("CARGO_BIN_EXE_ae-relay"))
        .arg("check")
        .env("DATABASE_URL", &closed)
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert_clean("check", &String::from_utf8_lossy(&output.stdout));
    assert_clean("check", &String::from_utf8_lossy(&output.stderr));
}

/// A receiver that answers 500 with a body that never ends (chunked, written until the client
/// goes away). The relay keeps 512 bytes of it and stops reading: the attempt fails at once
/// with those bytes, not at the endpoint's timeout.
#[test]
fn an_endless_error_body_is_read_up_to_512_bytes_only() {
    let cluster = Cluster::shared();
    let (database, mut client) = delivery_database("config_endless_body");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                let mut request = [0u8; 4096];
                let _ = stream.read(&mut request);
                let _ = stream.write_all(
                    b"HTTP/1.1 500 Internal Server Error\r\ntransfer-encoding: chunked\r\n\r\n",
                );
                let chunk = format!("1000\r\n{}\r\n", "x".repeat(4096));
                while stream.write_all(chunk.as_bytes()).is_ok() {}
            });
        }
    });
    create_endpoint(
        &mut client,
        "endless",
        &format!("http://127.0.0.1:{port}/"),
        PATIENT,
    );
    client
        .execute(
            "SELECT ae_events.alter_endpoint('endless', timeout => '5 min')",
            &[],
        )
        .unwrap();
    insert_instance(&mut client, 1);
    let relay = Process::start(
        &["run", "--lease", "2s", "--poll-interval", "250ms"],
        &[("DATABASE_URL", &relay_url(cluster, &database))],
    );
    let error = wait_for_last_error(&mut client, "endless", &relay);
    assert_eq!(error, format!("HTTP 500: {}", "x".repeat(512)));
    relay.terminate();
}

/// The packaged production example is a valid configuration, and says what it claims.
#[test]
fn the_packaged_example_configuration_is_valid() {
    let cluster = Cluster::shared();
    let database = cluster.database("config_example", ForeignKeys::Without);
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/packaging/ae-relay.toml");
    // Its metrics address (loopback, port 9187) is replaced by a free port: the flag wins.
    let port = free_port();
    let address = format!("127.0.0.1:{port}");
    let relay = Process::start(
        &["run", "--config", example, "--metrics-address", &address],
        &[("DATABASE_URL", &relay_url(cluster, &database))],
    );
    wait_for_metrics(port, &relay);
    let log = relay.wait_for_log("effective settings");
    for expected in [
        "refuse-private-addresses=true (file)",
        "log-format=json (file)",
        "lease=6s (file)",
        "shutdown-deadline=30s (file)",
        "ca-bundle (unset)",
    ] {
        assert!(log.contains(expected), "{expected} not in {log}");
    }
    let text = std::fs::read_to_string(example).unwrap();
    assert!(text.contains("metrics-address = \"127.0.0.1:"), "loopback");
    assert!(
        !text.contains("database-url ="),
        "no database URL in the file"
    );
    relay.terminate();
}
