//! A relay that hostile endpoint definitions, receivers and peers cannot crash, forge or steer
//! (issue 21, rows 2, 9, 10, 11, 12, 13, 15): the real binary against a throwaway cluster,
//! receivers and fake servers on 127.0.0.1.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::*;

/// The relay binary started with environment variables of its own (failpoints, log format).
struct Spawned {
    child: Child,
    log_path: std::path::PathBuf,
}

impl Spawned {
    fn start(database: &str, extra: &[&str], env: &[(&str, &str)]) -> Spawned {
        let cluster = Cluster::shared();
        ensure_relay_login(cluster);
        let url = format!(
            "postgres://relay_user@127.0.0.1:{}/{database}",
            cluster.port
        );
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let log_path = std::env::temp_dir().join(format!(
            "ae-relay-hostile-{database}-{}-{}.log",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        let log = std::fs::File::create(&log_path).expect("relay log");
        let child = Command::new(env!("CARGO_BIN_EXE_ae-relay"))
            .args(["run", "--lease", "2s", "--poll-interval", "250ms"])
            .args(extra)
            .env("DATABASE_URL", url)
            .env("AE_RELAY_LOG", "info,ae_relay=debug")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start ae-relay");
        Spawned { child, log_path }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    fn log_bytes(&self) -> Vec<u8> {
        std::fs::read(&self.log_path).unwrap_or_default()
    }

    /// Still running (not exited, not panicked out).
    fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("ae-relay exited ({status}):\n{}", self.log());
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `count` new instances: one created event each, for every endpoint.
fn insert_instances(client: &mut postgres::Client, first: i64, count: i64) {
    client
        .execute(
            "INSERT INTO ti.instance
             SELECT i, NULL, NULL, NULL, 'in_progress', 1, 1, NULL, NULL, NULL, now(), 1, now(), 1
               FROM generate_series($1::bigint, $1::bigint + $2::bigint - 1) AS i",
            &[&first, &count],
        )
        .unwrap();
}

/// One request as a raw receiver read it: the head as sent (header names in their case).
#[derive(Clone, Debug)]
struct RawRequest {
    head: String,
    at: Instant,
}

impl RawRequest {
    /// The header names as sent, lowercased; and a header's value by exact (lowercase) name.
    fn header_names(&self) -> Vec<String> {
        self.head
            .lines()
            .skip(1)
            .filter_map(|line| line.split_once(':'))
            .map(|(name, _)| name.trim().to_ascii_lowercase())
            .collect()
    }
    fn header(&self, name: &str) -> Option<String> {
        self.head
            .lines()
            .skip(1)
            .filter_map(|line| line.split_once(':'))
            .find(|(n, _)| n.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_owned())
    }
}

type Respond = dyn Fn(&RawRequest, &mut TcpStream) + Send + Sync;

/// An HTTP/1.1 receiver on 127.0.0.1 written on plain sockets, so that a test controls every
/// byte of its answers (NUL in bodies, endless interim responses). One thread per connection;
/// each answer closes the connection.
struct RawReceiver {
    port: u16,
    requests: Arc<Mutex<Vec<RawRequest>>>,
}

impl RawReceiver {
    fn start(respond: impl Fn(&RawRequest, &mut TcpStream) + Send + Sync + 'static) -> RawReceiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests: Arc<Mutex<Vec<RawRequest>>> = Arc::default();
        let respond: Arc<Respond> = Arc::new(respond);
        let log = requests.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let (log, respond) = (log.clone(), respond.clone());
                std::thread::spawn(move || {
                    let Some(request) = read_request(&mut stream) else {
                        return;
                    };
                    log.lock().unwrap().push(request.clone());
                    respond(&request, &mut stream);
                });
            }
        });
        RawReceiver { port, requests }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }

    fn requests(&self) -> Vec<RawRequest> {
        self.requests.lock().unwrap().clone()
    }
}

/// Read one request (head and a Content-Length body).
fn read_request(stream: &mut TcpStream) -> Option<RawRequest> {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        if line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    let request = RawRequest {
        head,
        at: Instant::now(),
    };
    let length: usize = request
        .header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some(request)
}

fn answer(stream: &mut TcpStream, status: &str, body: &[u8]) {
    let mut response = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    response.extend_from_slice(body);
    let _ = stream.write_all(&response);
    let _ = stream.flush();
}

/// A TCP listener that counts the connections made to it and holds them open.
struct CountingListener {
    port: u16,
    connections: Arc<AtomicUsize>,
}

impl CountingListener {
    fn start() -> CountingListener {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections = Arc::new(AtomicUsize::new(0));
        let counted = connections.clone();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for stream in listener.incoming().flatten() {
                counted.fetch_add(1, Ordering::SeqCst);
                held.push(stream);
            }
        });
        CountingListener { port, connections }
    }

    fn count(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

fn delivery_row(
    client: &mut postgres::Client,
    endpoint: &str,
) -> Option<(String, i32, Option<String>)> {
    client
        .query_opt(
            "SELECT status, attempts, last_error FROM ae_events.delivery_status
              WHERE endpoint = $1 ORDER BY attempts DESC LIMIT 1",
            &[&endpoint],
        )
        .unwrap()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
}

// ---------------------------------------------------------------------------------------------
// Row 2: a panic in one endpoint's worker, and rates no limiter could hold.
// ---------------------------------------------------------------------------------------------

#[test]
fn a_worker_or_an_attempt_that_panics_takes_down_neither_the_relay_nor_other_endpoints() {
    let (database, mut client) = delivery_database("hostile_panics");
    let healthy = Receiver::ok();
    let never = Receiver::ok();
    create_endpoint(&mut client, "healthy", &healthy.url("/"), "{200ms}");
    create_endpoint(&mut client, "doomed", &never.url("/doomed"), "{200ms}");
    create_endpoint(&mut client, "flaky", &never.url("/flaky"), "{300ms,300ms}");
    insert_instances(&mut client, 1, 20);
    // Debug builds only: the doomed endpoint's worker panics as it starts, every attempt of
    // the flaky one panics.
    // No circuit breaker: the flaky endpoint's 60 failed attempts go on their schedule.
    let mut relay = Spawned::start(
        &database,
        &["--breaker-failures", "0"],
        &[
            ("AE_RELAY_FAIL_ENDPOINT", "doomed"),
            ("AE_RELAY_FAIL_ATTEMPT", "flaky"),
        ],
    );
    let started = Instant::now();
    healthy.wait_for("the first events", Duration::from_secs(30), |r| {
        r.len() >= 20
    });
    // A panicking attempt is a failed attempt: recorded, retried on the schedule, then dead.
    wait_until_sql(
        &mut client,
        "the flaky endpoint's event dead after its three attempts",
        Duration::from_secs(30),
        "SELECT count(*) = 20 FROM ae_events.delivery_status
          WHERE endpoint = 'flaky' AND status = 'dead' AND attempts = 3",
    );
    let (_, _, error) = delivery_row(&mut client, "flaky").unwrap();
    assert!(error.unwrap_or_default().contains("panic"));
    // Later events still reach the healthy endpoint while the doomed worker keeps panicking.
    std::thread::sleep(Duration::from_secs(6).saturating_sub(started.elapsed()));
    insert_instances(&mut client, 1000, 5);
    healthy.wait_for("events inserted later", Duration::from_secs(30), |r| {
        r.len() >= 25
    });
    relay.assert_running();
    let log = relay.log();
    let panics = log
        .lines()
        .filter(|l| l.contains("endpoint worker panicked; restarting it"))
        .count();
    let elapsed = started.elapsed();
    // Restarted, with pauses of 1 s, 2 s, 4 s, ... (a restart each lease round, every 0.67 s
    // here, without them).
    assert!(panics >= 2, "restarted after its panic: {panics}\n{log}");
    let bound = 2 + (elapsed.as_secs_f64().log2().ceil() as usize);
    assert!(
        panics <= bound,
        "{panics} panics in {elapsed:?} (at most {bound} with the backoff)"
    );
    assert!(never.requests().is_empty(), "nothing sent for them");
    assert!(
        delivery_row(&mut client, "doomed").is_none(),
        "nothing recorded for the doomed endpoint"
    );
}

#[test]
fn rate_limits_no_limiter_could_hold_crash_no_relay_of_a_fleet() {
    let (database, mut client) = delivery_database("hostile_rates");
    let healthy = Receiver::ok();
    let slow = Receiver::ok();
    create_endpoint(&mut client, "healthy", &healthy.url("/"), "{200ms}");
    create_endpoint(&mut client, "tiny", &slow.url("/tiny"), "{200ms}");
    create_endpoint(&mut client, "subnormal", &slow.url("/subnormal"), "{200ms}");
    create_endpoint(&mut client, "later", &slow.url("/later"), "{200ms}");
    // alter_endpoint refuses these now; rows written before (or by hand) still hold them.
    client
        .batch_execute(
            "UPDATE ae_events.endpoints SET rate_limit = 1e-12 WHERE endpoint = 'tiny';
             UPDATE ae_events.endpoints SET rate_limit = 5e-324 WHERE endpoint = 'subnormal';",
        )
        .unwrap();
    insert_instances(&mut client, 1, 10);
    let mut first = Spawned::start(&database, &["--relay-id", "rates-a"], &[]);
    let mut second = Spawned::start(&database, &["--relay-id", "rates-b"], &[]);
    healthy.wait_for("every event", Duration::from_secs(30), |r| r.len() >= 10);
    // The running relays get a tiny rate for an endpoint they serve already.
    let later_first = slow.wait_for("later's first event", Duration::from_secs(30), |r| {
        r.iter().any(|x| x.path == "/later")
    });
    assert!(!later_first.is_empty());
    client
        .batch_execute("UPDATE ae_events.endpoints SET rate_limit = 1e-12 WHERE endpoint = 'later'")
        .unwrap();
    insert_instances(&mut client, 100, 10);
    healthy.wait_for("the later events", Duration::from_secs(30), |r| {
        r.len() >= 20
    });
    std::thread::sleep(Duration::from_secs(2));
    first.assert_running();
    second.assert_running();
    // One request a day: the first event went, no other (a worker started again when the
    // fleet shares its endpoints out starts with a full limiter: one more at most).
    let requests = slow.requests();
    for path in ["/tiny", "/subnormal"] {
        let sent = requests.iter().filter(|r| r.path == path).count();
        assert!(
            (1..=3).contains(&sent),
            "{path}: {sent} requests of 20 events"
        );
    }
    let log = first.log() + &second.log();
    assert!(!log.contains("panicked"), "{log}");
}

// ---------------------------------------------------------------------------------------------
// Row 9: names that would forge log lines.
// ---------------------------------------------------------------------------------------------

#[test]
fn endpoint_names_cannot_forge_a_log_line_or_drive_a_terminal() {
    let (database, mut client) = delivery_database("hostile_names");
    let receiver = Receiver::ok();
    let forged = "a\nFAKE ERROR line";
    let escape = "\x1b[2J\x1b[31mred";
    let c1 = "c1\u{9b}2J";
    // create_endpoint refuses control characters now; a row from before may hold them.
    for (i, name) in [forged, escape, c1].into_iter().enumerate() {
        let placeholder = format!("placeholder{i}");
        create_endpoint(&mut client, &placeholder, &receiver.url("/"), "{200ms}");
        client
            .execute(
                "UPDATE ae_events.endpoints SET endpoint = $1 WHERE endpoint = $2",
                &[&name, &placeholder],
            )
            .unwrap();
    }
    insert_instances(&mut client, 1, 3);
    for format in ["human", "json"] {
        let before = receiver.count();
        let relay = Spawned::start(&database, &["--log-format", format], &[]);
        receiver.wait_for("both endpoints' events", Duration::from_secs(30), |r| {
            r.len() >= before + 9
        });
        std::thread::sleep(Duration::from_millis(500));
        let log = relay.log_bytes();
        drop(relay);
        let text = String::from_utf8_lossy(&log);
        assert!(text.contains("serving endpoint"), "{text}");
        assert!(
            !log.contains(&0x1b),
            "an ESC byte in the {format} log:\n{text}"
        );
        assert!(
            !log.windows(2).any(|pair| pair == [0xC2, 0x9B]),
            "a raw CSI (U+009B) in the {format} log:\n{text}"
        );
        for line in text.lines() {
            assert!(
                !line.starts_with("FAKE ERROR"),
                "a forged line in the {format} log:\n{text}"
            );
            if format == "json" {
                let object: serde_json::Value =
                    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
                assert!(object.is_object());
            }
        }
        if format == "human" {
            assert!(text.contains("a\\nFAKE ERROR line"), "{text}");
            assert!(text.contains("\\u{1b}[2J"), "{text}");
        }
        // Until the lease of the killed relay runs out, the next one cannot serve.
        std::thread::sleep(Duration::from_millis(2200));
        insert_instances(&mut client, 100 + before as i64, 3);
    }
    // `ae-relay check` lists the names: one line each, escaped.
    let url = format!(
        "postgres://relay_user@127.0.0.1:{}/{database}",
        Cluster::shared().port
    );
    let output = Command::new(env!("CARGO_BIN_EXE_ae-relay"))
        .arg("check")
        .env("DATABASE_URL", url)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("a\\nFAKE ERROR line"), "{stdout}");
    assert!(!output.stdout.contains(&0x1b), "{stdout}");
    assert!(
        !stdout.lines().any(|l| l.starts_with("FAKE ERROR")),
        "{stdout}"
    );
}

// ---------------------------------------------------------------------------------------------
// Rows 10, 11 and 8 (relay side): what receivers echo, NUL bytes, and static headers that pass
// for the relay's own or steer the connection.
// ---------------------------------------------------------------------------------------------

#[test]
fn an_echoed_token_and_a_nul_are_not_stored_and_the_retry_schedule_holds() {
    let (database, mut client) = delivery_database("hostile_echo");
    let token = "Bearer s3cr3t-token-0123456789";
    let receiver = RawReceiver::start(move |request, stream| {
        // Echo the authorization header, with a NUL, a terminal escape and invalid UTF-8.
        let mut body = b"denied: authorization=".to_vec();
        body.extend_from_slice(
            request
                .header("authorization")
                .unwrap_or_default()
                .as_bytes(),
        );
        body.extend_from_slice(b" \0 \x1b[2J \xff\xfe end");
        answer(stream, "500 Internal Server Error", &body);
    });
    create_endpoint(&mut client, "echo", &receiver.url(), "{700ms,700ms}");
    client
        .execute(
            "SELECT ae_events.alter_endpoint('echo', headers => $1::text::jsonb)",
            &[&serde_json::json!({"authorization": token, "x-tenant": "t1"}).to_string()],
        )
        .unwrap();
    // Names the SQL refuses now (the relay's own under another spelling, hop-by-hop ones);
    // rows from before may hold them.
    client
        .batch_execute(
            r#"UPDATE ae_events.endpoints SET headers = headers || '{"webhook_id": "forged",
                   "AE_AGGREGATE_ID": "666", "Webhook-Signature": "v1,forged", "host": "evil.example",
                   "proxy-authorization": "x", "te": "trailers", "connection": "upgrade",
                   "content_length": "1"}'::jsonb
                WHERE endpoint = 'echo'"#,
        )
        .unwrap();
    insert_instances(&mut client, 1, 1);
    let relay = Spawned::start(&database, &[], &[]);
    wait_until_sql(
        &mut client,
        "the event dead after its three attempts",
        Duration::from_secs(30),
        "SELECT count(*) = 1 FROM ae_events.delivery_status
          WHERE endpoint = 'echo' AND status = 'dead'",
    );
    // Nothing more comes after the schedule ends.
    std::thread::sleep(Duration::from_secs(1));
    let (status, attempts, error) = delivery_row(&mut client, "echo").unwrap();
    let error = error.unwrap_or_default();
    assert_eq!((status.as_str(), attempts), ("dead", 3), "{error}");
    assert!(
        error.starts_with("HTTP 500: denied: authorization="),
        "{error}"
    );
    assert!(!error.contains("s3cr3t"), "{error}");
    assert!(!error.contains('\u{1b}'), "{error}");
    assert!(
        error.contains("end"),
        "the rest of the body is kept: {error}"
    );
    let requests = receiver.requests();
    assert_eq!(requests.len(), 3, "sent once per attempt, not again");
    for pair in requests.windows(2) {
        let gap = pair[1].at - pair[0].at;
        assert!(gap >= Duration::from_millis(650), "retried after {gap:?}");
    }
    // The relay's own headers once each, the static ones that would pass for them or steer the
    // connection left out.
    for request in &requests {
        let names = request.header_names();
        for reserved in ["webhook_id", "ae_aggregate_id", "proxy-authorization", "te"] {
            assert!(
                !names.contains(&reserved.to_owned()),
                "{reserved} sent: {request:?}"
            );
        }
        assert_eq!(
            names.iter().filter(|n| *n == "webhook-signature").count(),
            1
        );
        assert!(!request
            .header("webhook-signature")
            .unwrap_or_default()
            .contains("forged"));
        assert_eq!(
            request.header("host"),
            Some(format!("127.0.0.1:{}", receiver.port))
        );
        assert_ne!(request.header("connection").as_deref(), Some("upgrade"));
        assert_eq!(request.header("x-tenant").as_deref(), Some("t1"));
        assert_eq!(request.header("authorization").as_deref(), Some(token));
    }
    let log = relay.log();
    assert!(!log.contains("s3cr3t"), "{log}");
}

// ---------------------------------------------------------------------------------------------
// Row 12: NATS under the address guard, and servers advertised by a server.
// ---------------------------------------------------------------------------------------------

#[test]
fn the_address_guard_applies_to_nats_endpoints() {
    let (database, mut client) = delivery_database("hostile_nats_guard");
    let server = CountingListener::start();
    create_endpoint(
        &mut client,
        "nats_loopback",
        &format!("nats://127.0.0.1:{}/ae.events", server.port),
        "{200ms,200ms}",
    );
    create_endpoint(
        &mut client,
        "nats_localhost",
        &format!("nats://localhost:{}/ae.events", server.port),
        "{200ms,200ms}",
    );
    insert_instances(&mut client, 1, 1);
    let relay = Spawned::start(&database, &["--refuse-private-addresses"], &[]);
    wait_until_sql(
        &mut client,
        "both refusals recorded",
        Duration::from_secs(30),
        "SELECT count(*) = 2 FROM ae_events.delivery_status
          WHERE endpoint LIKE 'nats_%' AND last_error LIKE '%refused%loopback%'",
    );
    let (_, _, error) = delivery_row(&mut client, "nats_localhost").unwrap();
    assert!(
        error.unwrap_or_default().contains("localhost resolves to"),
        "the name was resolved and its addresses checked"
    );
    assert_eq!(server.count(), 0, "no connection to the refused address");
    drop(relay);
}

/// A NATS server that advertises another server (INFO connect_urls), answers the client's
/// PING, then drops the connection: the client reconnects, to whichever servers it follows.
fn fake_nats_server(advertised_port: u16) -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = connections.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            counted.fetch_add(1, Ordering::SeqCst);
            std::thread::spawn(move || {
                let mut stream = stream;
                let info = format!(
                    "INFO {{\"server_id\":\"FAKE\",\"server_name\":\"fake\",\"version\":\"2.10.0\",\
                     \"proto\":1,\"host\":\"127.0.0.1\",\"port\":{port},\"headers\":true,\
                     \"max_payload\":1048576,\"connect_urls\":[\"127.0.0.1:{advertised_port}\"]}}\r\n"
                );
                if stream.write_all(info.as_bytes()).is_err() {
                    return;
                }
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                let mut reader = BufReader::new(match stream.try_clone() {
                    Ok(s) => s,
                    Err(_) => return,
                });
                let mut line = String::new();
                while reader.read_line(&mut line).unwrap_or(0) > 0 {
                    if line.starts_with("PING") {
                        let _ = stream.write_all(b"PONG\r\n");
                        break;
                    }
                    line.clear();
                }
                std::thread::sleep(Duration::from_millis(300));
            });
        }
    });
    (port, connections)
}

#[test]
fn a_nats_server_cannot_steer_the_relay_to_the_servers_it_advertises() {
    let (database, mut client) = delivery_database("hostile_nats_steer");
    for (first, follow, name) in [(1, false, "nats_default"), (100, true, "nats_follow")] {
        let elsewhere = CountingListener::start();
        let (port, connections) = fake_nats_server(elsewhere.port);
        create_endpoint(
            &mut client,
            name,
            &format!("nats://127.0.0.1:{port}/ae.events"),
            "{200ms}",
        );
        insert_instances(&mut client, first, 1);
        let extra: &[&str] = if follow {
            &["--nats-follow-discovered-servers"]
        } else {
            &[]
        };
        let relay = Spawned::start(&database, extra, &[]);
        let deadline = Instant::now() + Duration::from_secs(20);
        // Reconnects after each drop: enough of them that a followed advertisement would show
        // (each reconnect picks the advertised server first half the time); with the flag, until
        // it does.
        while Instant::now() < deadline
            && if follow {
                elsewhere.count() == 0
            } else {
                connections.load(Ordering::SeqCst) < 12
            }
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        let made = connections.load(Ordering::SeqCst);
        let log = relay.log();
        drop(relay);
        client
            .execute("SELECT ae_events.drop_endpoint($1)", &[&name])
            .unwrap();
        if follow {
            // The control: with the flag, the advertised server is connected to.
            assert!(
                elsewhere.count() > 0,
                "followed with the flag ({made} connections)\n{log}"
            );
        } else {
            assert!(
                made >= 3,
                "the relay reconnected to its server: {made}\n{log}"
            );
            assert_eq!(
                elsewhere.count(),
                0,
                "the advertised server was not connected to"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Row 13: argument errors and the database URL.
// ---------------------------------------------------------------------------------------------

#[test]
fn argument_errors_never_echo_a_database_url() {
    let directory =
        std::env::temp_dir().join(format!("ae-relay-hostile-args-{}", std::process::id()));
    std::fs::create_dir_all(&directory).unwrap();
    let file = directory.join("relay.toml");
    std::fs::write(
        &file,
        "database-url = \"postgres://u:s3cret@127.0.0.1:1/db\"\nlease = \"6s\"\n",
    )
    .unwrap();
    let file = file.display().to_string();
    let url = "postgres://u:s3cret@127.0.0.1:1/db";
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let output = Command::new(env!("CARGO_BIN_EXE_ae-relay"))
            .args(args)
            .env_remove("DATABASE_URL")
            .env_remove("AE_RELAY_CONFIG")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        (output.status.code(), text)
    };
    let with_url = format!("--database-url={url}");
    let typo = format!("--databse-url={url}");
    type Case<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>);
    let cases: Vec<Case> = vec![
        (vec!["run", "--config", &file, "--", "extra"], vec![]),
        (vec!["run", "--config", &file, "--lease", "nope"], vec![]),
        (vec!["run", "--config", &file, "--window", "0"], vec![]),
        (vec!["run", "--config", &file, "--lease", "1e300"], vec![]),
        // Values the relay could not act on are refused at start too (row 2).
        (vec!["run", "--config", &file, "--lease", "500ms"], vec![]),
        // relay_lease refuses leases over 10 minutes: refused at start, not at every renewal.
        (vec!["run", "--config", &file, "--lease", "11m"], vec![]),
        (
            vec!["run", "--config", &file, "--poll-interval", "1e20"],
            vec![],
        ),
        (
            vec![
                "run",
                "--config",
                &file,
                "--breaker-max-cooldown",
                "900000h",
            ],
            vec![],
        ),
        (
            vec!["run", "--config", &file, "--shutdown-deadline", "0.0001ms"],
            vec![],
        ),
        (vec!["run", "--config", &file, "--channel="], vec![]),
        (vec!["run", "--database-url", url, "--bogus"], vec![]),
        (vec!["run", &with_url, "stray"], vec![]),
        (vec!["run", &with_url, "--", url], vec![]),
        (vec!["run", &typo], vec![]),
        (vec!["run", "--", "extra"], vec![("DATABASE_URL", url)]),
        (
            vec!["run", "--", "extra"],
            vec![("AE_RELAY_CONFIG", file.as_str())],
        ),
        (
            vec!["--log-format", "xml", "run", "--config", &file],
            vec![],
        ),
        (vec!["check", "--database-url", url, "--", "x"], vec![]),
    ];
    for (args, env) in cases {
        let (code, text) = run(&args, &env);
        assert_eq!(code, Some(2), "{args:?}: {text}");
        assert!(
            !text.contains("s3cret"),
            "{args:?} showed the password:\n{text}"
        );
        assert!(text.contains("error"), "{args:?}: {text}");
    }
    // A trailing `--` alone is no error: the file's settings go before it and the relay
    // starts (and says nothing of the password while it cannot connect).
    let mut child = Command::new(env!("CARGO_BIN_EXE_ae-relay"))
        .args(["run", "--config", &file, "--"])
        .env_remove("DATABASE_URL")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let _ = child.kill();
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("database-url=(hidden)"), "{stderr}");
    assert!(!stderr.contains("s3cret"), "{stderr}");
    let _ = std::fs::remove_dir_all(&directory);
}

// ---------------------------------------------------------------------------------------------
// Row 15: a receiver that streams interim (1xx) responses and never answers.
// ---------------------------------------------------------------------------------------------

/// The process's CPU time so far (user + system), from /proc/<pid>/stat.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // After the command's name (in parentheses, which may hold spaces): fields 14 and 15.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: u64 = fields
        .get(11..13)
        .map(|f| f.iter().filter_map(|v| v.parse::<u64>().ok()).sum())
        .unwrap_or(0);
    // The kernel's USER_HZ is 100 on Linux.
    Duration::from_millis(ticks * 10)
}

#[test]
fn a_receiver_streaming_interim_responses_is_cut_off_and_costs_the_relay_little() {
    let (database, mut client) = delivery_database("hostile_interim");
    let streamed = Arc::new(AtomicUsize::new(0));
    let counter = streamed.clone();
    // `100 Continue` after `100 Continue`, as fast as the relay reads them, never a status.
    let endless = RawReceiver::start(move |_, stream| {
        let chunk = b"HTTP/1.1 100 Continue\r\n\r\n".repeat(64);
        while stream.write_all(&chunk).is_ok() {
            counter.fetch_add(64, Ordering::Relaxed);
        }
    });
    let healthy = Receiver::ok();
    create_endpoint(&mut client, "endless", &endless.url(), "{30s}");
    create_endpoint(&mut client, "healthy", &healthy.url("/"), "{200ms}");
    client
        .execute(
            "SELECT ae_events.alter_endpoint('endless', timeout => '20 seconds')",
            &[],
        )
        .unwrap();
    let relay = Spawned::start(&database, &[], &[]);
    // The relay at rest: its CPU time over a second with nothing to send.
    std::thread::sleep(Duration::from_secs(2));
    let (rest_cpu, rest_at) = (cpu_time(relay.pid()), Instant::now());
    std::thread::sleep(Duration::from_secs(1));
    let at_rest = cpu_time(relay.pid()).saturating_sub(rest_cpu).as_secs_f64()
        / rest_at.elapsed().as_secs_f64();
    let (cpu_before, started) = (cpu_time(relay.pid()), Instant::now());
    insert_instances(&mut client, 1, 1);
    wait_until_sql(
        &mut client,
        "the endless receiver's attempt recorded as failed",
        Duration::from_secs(15),
        "SELECT count(*) = 1 FROM ae_events.delivery_status
          WHERE endpoint = 'endless' AND status = 'pending' AND attempts = 1",
    );
    let took = started.elapsed();
    let (_, _, error) = delivery_row(&mut client, "endless").unwrap();
    let error = error.unwrap_or_default();
    assert!(error.contains("interim"), "{error}");
    // Well before the endpoint's 20 s timeout.
    assert!(took < Duration::from_secs(10), "{took:?}");
    // The healthy endpoint delivers meanwhile, and later events too.
    healthy.wait_for(
        "the healthy endpoint's event",
        Duration::from_secs(10),
        |r| !r.is_empty(),
    );
    let busy = cpu_time(relay.pid())
        .saturating_sub(cpu_before)
        .as_secs_f64()
        / started.elapsed().as_secs_f64();
    eprintln!(
        "cut off after {took:?}, {} interim responses written; relay CPU {:.0} % of wall time \
         ({:.0} % at rest)",
        streamed.load(Ordering::Relaxed),
        busy * 100.0,
        at_rest * 100.0
    );
    assert!(busy < 0.5, "the relay used {:.0} % of a core", busy * 100.0);
}

// ---------------------------------------------------------------------------------------------
// The relay's own HTTP transport (row 15) keeps the environment's proxy, and the guard keeps
// it out.
// ---------------------------------------------------------------------------------------------

#[test]
fn the_environments_proxy_is_used_without_the_guard_and_never_with_it() {
    // A forward proxy: it answers plain-HTTP requests itself and refuses tunnels.
    let proxy = RawReceiver::start(|request, stream| {
        if request.head.starts_with("CONNECT ") {
            answer(stream, "403 Forbidden", b"no tunnels here");
        } else {
            answer(stream, "200 OK", b"");
        }
    });
    let proxy_url = format!("http://someone:pr0xy-pass@127.0.0.1:{}", proxy.port);
    let environment = [
        ("HTTP_PROXY", proxy_url.as_str()),
        ("HTTPS_PROXY", proxy_url.as_str()),
        ("http_proxy", proxy_url.as_str()),
        ("https_proxy", proxy_url.as_str()),
        ("NO_PROXY", ""),
        ("no_proxy", ""),
    ];
    let mut relays = Vec::new();
    let mut clients = Vec::new();
    for (name, guard) in [("hostile_proxy", false), ("hostile_proxy_guarded", true)] {
        let (database, mut client) = delivery_database(name);
        // A retry only after the test: one attempt each.
        create_endpoint(
            &mut client,
            "plain",
            "http://receiver.example.invalid/hook",
            "{60s}",
        );
        create_endpoint(
            &mut client,
            "tls",
            "https://receiver.example.invalid/hook",
            "{60s}",
        );
        insert_instances(&mut client, 1, 1);
        let extra: &[&str] = if guard {
            &["--refuse-private-addresses"]
        } else {
            &[]
        };
        relays.push(Spawned::start(&database, extra, &environment));
        clients.push(client);
    }
    let (mut open, mut guarded) = {
        let mut iter = clients.into_iter();
        (iter.next().unwrap(), iter.next().unwrap())
    };
    wait_until_sql(
        &mut open,
        "delivered through the proxy",
        Duration::from_secs(20),
        "SELECT count(*) = 1 FROM ae_events.delivery_status
          WHERE endpoint = 'plain' AND status = 'delivered'",
    );
    wait_until_sql(
        &mut open,
        "the tunnel refused",
        Duration::from_secs(20),
        "SELECT count(*) = 1 FROM ae_events.delivery_status
          WHERE endpoint = 'tls' AND last_error LIKE '%the proxy refused the tunnel: HTTP/1.1 403%'",
    );
    wait_until_sql(
        &mut guarded,
        "both attempts failed without the proxy",
        Duration::from_secs(20),
        "SELECT count(*) = 2 FROM ae_events.delivery_status WHERE last_error IS NOT NULL",
    );
    let credentials = format!(
        "Basic {}",
        base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            "someone:pr0xy-pass"
        )
    );
    let requests = proxy.requests();
    let posts: Vec<&RawRequest> = requests
        .iter()
        .filter(|r| r.head.starts_with("POST "))
        .collect();
    let connects: Vec<&RawRequest> = requests
        .iter()
        .filter(|r| r.head.starts_with("CONNECT "))
        .collect();
    // Only the relay without the guard came: one POST in absolute form, one CONNECT.
    assert_eq!(posts.len(), 1, "{requests:?}");
    assert!(posts[0]
        .head
        .starts_with("POST http://receiver.example.invalid/hook HTTP/1.1\r\n"));
    assert_eq!(
        posts[0].header("proxy-authorization"),
        Some(credentials.clone())
    );
    assert_eq!(connects.len(), 1, "{requests:?}");
    assert!(connects[0]
        .head
        .starts_with("CONNECT receiver.example.invalid:443 HTTP/1.1\r\n"));
    assert_eq!(connects[0].header("proxy-authorization"), Some(credentials));
    for relay in &relays {
        assert!(!relay.log().contains("pr0xy-pass"));
    }
}
