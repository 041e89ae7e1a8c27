//! Isolation and bounded resources inside one relay (issue 21, rows 4, 5 and 14): a slow
//! filter on one endpoint delays no other and its queries end at the statement timeout; hanging
//! receivers and idle metrics connections do not use up the relay's file descriptors; memory
//! follows `--window-bytes`, not payload sizes.

mod support;

use postgres::Client;
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::*;

const WAIT: Duration = Duration::from_secs(30);

/// Insert an instance of the given candidate (its cf is part of the payload).
fn insert_instance_of(client: &mut Client, id: i64, candidate: i64) {
    client
        .execute(
            "INSERT INTO ti.instance VALUES ($1, NULL, NULL, NULL, 'in_progress', $2, 1, NULL, NULL, NULL, now(), 1, now(), 1)",
            &[&id, &candidate],
        )
        .unwrap();
}

/// A candidate whose cf is the given JSON.
fn insert_candidate(client: &mut Client, id: i64, cf: &str) {
    client
        .execute(
            "INSERT INTO can.candidate VALUES ($1, NULL, 9, 'big@example.com', NULL, NULL, NULL, NULL, NULL, true, NULL, NULL, NULL, $2::text::jsonb)",
            &[&id, &cf],
        )
        .unwrap();
}

/// The longest-running active statement of the relay's role in this database, in seconds.
fn longest_relay_statement(client: &mut Client, database: &str) -> f64 {
    client
        .query_one(
            "SELECT coalesce(max(extract(epoch FROM clock_timestamp() - query_start)), 0)::float8
               FROM pg_stat_activity
              WHERE usename = 'relay_user' AND datname = $1 AND state = 'active'",
            &[&database],
        )
        .unwrap()
        .get(0)
}

/// Insert `count` instances one at a time (ids from `first`); per instance, the time from its
/// commit until the receiver had it.
fn latencies(
    client: &mut Client,
    receiver: &Receiver,
    first: i64,
    count: i64,
    mut between: impl FnMut(),
) -> Vec<Duration> {
    let mut taken = Vec::new();
    for id in first..first + count {
        let before = receiver.count();
        let start = Instant::now();
        insert_instance(client, id);
        receiver.wait_for("the event at the healthy endpoint", WAIT, |r| {
            r.len() > before
        });
        let arrived = receiver.requests()[before].at;
        taken.push(arrived.saturating_duration_since(start));
        between();
        std::thread::sleep(Duration::from_millis(100));
    }
    taken
}

#[test]
fn a_slow_filter_on_one_endpoint_delays_no_other_and_its_queries_end_at_the_statement_timeout() {
    let cluster = Cluster::shared();
    let (database, mut client) = delivery_database("isolation_slow_filter");
    let mut watcher = cluster.connect(&database);
    // Instances of candidate 2 carry a 40-deep nested array: the filter below, six recursive
    // wildcards, takes about 15 s per event on it (2 s with five).
    let deep = format!("{{\"deep\": {}1{}}}", "[1,".repeat(40), "]".repeat(40));
    insert_candidate(&mut client, 2, &deep);
    let healthy = Receiver::ok();
    let slow = Receiver::ok();
    create_endpoint(&mut client, "healthy", &healthy.url("/"), "{1s}");
    let _relay = Relay::start(
        cluster,
        &database,
        &["--lease", "6s", "--statement-timeout", "2s"],
    );
    // Baseline: the healthy endpoint alone.
    let before = latencies(&mut client, &healthy, 1, 8, || {});
    let baseline = before.iter().max().copied().unwrap_or_default();

    client
        .query_one(
            "SELECT ae_events.create_endpoint('slow', $1, NULL, $2::text::jsonpath)",
            &[
                &slow.url("/"),
                &"exists($.**.**.**.**.**.** ? (@ == \"never\"))",
            ],
        )
        .unwrap();
    // Events the slow endpoint's filter chews on (each fetch of it runs into the timeout).
    for id in 100..105 {
        insert_instance_of(&mut client, id, 2);
    }
    std::thread::sleep(Duration::from_secs(1));
    let mut longest = 0.0f64;
    let after = latencies(&mut client, &healthy, 11, 8, || {
        longest = longest.max(longest_relay_statement(&mut watcher, &database));
    });
    let worst = after.iter().max().copied().unwrap_or_default();
    // Over a few more seconds, no statement of the relay outlives the 2 s timeout by much.
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        longest = longest.max(longest_relay_statement(&mut watcher, &database));
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("healthy endpoint: before {before:?}, while the other filters slowly {after:?}; longest relay statement {longest:.2} s");
    assert!(
        worst <= baseline + Duration::from_secs(1),
        "the healthy endpoint waited {worst:?} (baseline {baseline:?}) while another endpoint's filter was slow"
    );
    assert!(
        longest < 3.5,
        "a relay statement ran {longest:.2} s: past the 2 s statement timeout"
    );
    // The slow endpoint really was slow: its fetches ran into the statement timeout.
    let log = _relay.log();
    assert!(
        log.contains("canceling statement due to statement timeout"),
        "{log}"
    );
    assert_eq!(slow.count(), 0);
}

#[test]
fn a_fetch_the_relay_abandons_is_cancelled_on_the_server() {
    let cluster = Cluster::shared();
    let (database, mut client) = delivery_database("isolation_abandoned");
    let mut watcher = cluster.connect(&database);
    let deep = format!("{{\"deep\": {}1{}}}", "[1,".repeat(40), "]".repeat(40));
    insert_candidate(&mut client, 2, &deep);
    let slow = Receiver::ok();
    client
        .query_one(
            "SELECT ae_events.create_endpoint('slow', $1, NULL, $2::text::jsonpath)",
            &[
                &slow.url("/"),
                &"exists($.**.**.**.**.**.** ? (@ == \"never\"))",
            ],
        )
        .unwrap();
    for id in 100..103 {
        insert_instance_of(&mut client, id, 2);
    }
    // A 2 s lease: the worker gives up its fetch after less than 2 s, long before the 30 s
    // statement timeout, and the call must not go on on the server (15 s per event).
    let relay = Relay::start(
        cluster,
        &database,
        &["--lease", "2s", "--statement-timeout", "30s"],
    );
    within(
        WAIT,
        || relay.log(),
        |log| log.contains("lease not renewed in time"),
    );
    let mut longest = 0.0f64;
    let until = Instant::now() + Duration::from_secs(6);
    while Instant::now() < until {
        longest = longest.max(longest_relay_statement(&mut watcher, &database));
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("longest relay statement {longest:.2} s");
    assert!(
        longest < 3.0,
        "an abandoned relay statement ran {longest:.2} s"
    );
    assert_eq!(slow.count(), 0);
}

/// A TCP listener that accepts connections and never answers: a receiver that hangs.
struct Hanging {
    port: u16,
    accepted: Arc<AtomicUsize>,
    held: Arc<Mutex<Vec<TcpStream>>>,
}

impl Hanging {
    fn start() -> Hanging {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let held: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (count, keep) = (accepted.clone(), held.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                keep.lock().unwrap().push(stream);
                count.fetch_add(1, Ordering::SeqCst);
            }
        });
        Hanging {
            port,
            accepted,
            held,
        }
    }
}

/// `ae-relay run` under a shell that sets its limit on open files first.
struct LimitedRelay {
    child: Child,
    log_path: std::path::PathBuf,
}

impl LimitedRelay {
    fn start(cluster: &Cluster, database: &str, ulimit: &str, extra: &[&str]) -> LimitedRelay {
        ensure_relay_login(cluster);
        let url = format!(
            "postgres://relay_user@127.0.0.1:{}/{database}",
            cluster.port
        );
        let log_path =
            std::env::temp_dir().join(format!("ae-relay-{database}-{}.log", std::process::id()));
        let log = std::fs::File::create(&log_path).unwrap();
        let child = Command::new("sh")
            .arg("-c")
            .arg(format!("ulimit {ulimit} && exec \"$0\" \"$@\""))
            .arg(env!("CARGO_BIN_EXE_ae-relay"))
            .args(["run", "--lease", "2s", "--poll-interval", "250ms"])
            .args(extra)
            .env("DATABASE_URL", url)
            .env("AE_RELAY_LOG", "info,ae_relay=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        LimitedRelay { child, log_path }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// "Max open files" of /proc/<pid>/limits: (soft, hard).
    fn open_files(&self) -> (String, String) {
        let limits = std::fs::read_to_string(format!("/proc/{}/limits", self.child.id()))
            .unwrap_or_default();
        let line = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .unwrap_or("")
            .to_owned();
        let fields: Vec<&str> = line.split_whitespace().collect();
        (
            fields.get(3).unwrap_or(&"").to_string(),
            fields.get(4).unwrap_or(&"").to_string(),
        )
    }
}

impl Drop for LimitedRelay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn hanging_receivers_and_idle_metrics_connections_leave_a_healthy_endpoint_its_sockets() {
    // This process holds the other ends: thousands of sockets.
    rlimit::increase_nofile_limit(u64::MAX).unwrap();
    let cluster = Cluster::shared();
    let (database, mut client) = delivery_database("isolation_sockets");
    let hanging = Hanging::start();
    let healthy = Receiver::ok();
    for n in 0..100 {
        let name = format!("hanging{n:03}");
        create_endpoint(
            &mut client,
            &name,
            &format!("http://127.0.0.1:{}/{n}", hanging.port),
            "{1s}",
        );
        client
            .execute(
                "SELECT ae_events.alter_endpoint($1, timeout => '60 s')",
                &[&name],
            )
            .unwrap();
    }
    create_endpoint(&mut client, "healthy", &healthy.url("/"), "{1s}");
    // 20 instances: every hanging endpoint wants 16 requests in flight (1,600 sockets).
    for id in 1..=20 {
        insert_instance(&mut client, id);
    }
    let metrics_port = free_port();
    let relay = LimitedRelay::start(
        cluster,
        &database,
        "-n 1024",
        &["--metrics-address", &format!("127.0.0.1:{metrics_port}")],
    );
    healthy.wait_for("the first 20 events", WAIT, |r| r.len() >= 20);
    // The hanging receivers hold what the relay gives them.
    within(
        WAIT,
        || hanging.accepted.load(Ordering::SeqCst),
        |n| *n >= 400,
    );
    std::thread::sleep(Duration::from_secs(1));
    let held_by_hanging = hanging.accepted.load(Ordering::SeqCst);
    // 2,000 idle connections to the metrics port.
    let mut idle = Vec::new();
    for _ in 0..2000 {
        if let Ok(stream) = TcpStream::connect(("127.0.0.1", metrics_port)) {
            idle.push(stream);
        }
    }
    // Meanwhile the healthy endpoint gets new events promptly.
    let mut worst = Duration::ZERO;
    for id in 21..=25 {
        let before = healthy.count();
        let start = Instant::now();
        insert_instance(&mut client, id);
        healthy.wait_for("a new event at the healthy endpoint", WAIT, |r| {
            r.len() > before
        });
        worst = worst.max(start.elapsed());
    }
    let errors: Vec<String> = client
        .query(
            "SELECT endpoint || ': ' || last_error FROM ae_events.delivery_status
              WHERE last_error IS NOT NULL",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let log = relay.log();
    eprintln!(
        "hanging receivers hold {held_by_hanging} connections; healthy endpoint's worst latency {worst:?}; {} idle metrics connections opened",
        idle.len()
    );
    assert!(
        worst < Duration::from_secs(5),
        "the healthy endpoint waited {worst:?}"
    );
    assert!(errors.is_empty(), "{errors:?}");
    assert!(!log.contains("Too many open files"), "{log}");
    assert!(
        held_by_hanging <= 1024,
        "{held_by_hanging} sockets held by hanging receivers"
    );
    // The metrics listener refused most of them, said so, and serves again once the held
    // ones reach their lifetime.
    drop(idle);
    let scrape = within(
        WAIT,
        || get(metrics_port, "/metrics"),
        |answer| answer.as_ref().is_some_and(|(status, _)| *status == 200),
    );
    let (_, body) = scrape.unwrap();
    let parsed = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_owned()))).unwrap();
    let refused = sample(
        &parsed,
        "ae_relay_refused_total",
        &[("what", "metrics_connection")],
    )
    .unwrap_or(0.0);
    assert!(refused >= 1000.0, "{refused} metrics connections refused");
    assert!(
        log.contains("metrics listener: every connection slot is taken"),
        "{log}"
    );
    let _ = hanging.held.lock().map(|mut held| held.clear());
}

#[test]
fn the_relay_raises_its_soft_limit_on_open_files_to_the_hard_limit() {
    let cluster = Cluster::shared();
    let (database, _client) = delivery_database("isolation_rlimit");
    let relay = LimitedRelay::start(cluster, &database, "-S -n 1024", &[]);
    let limits = within(
        WAIT,
        || relay.open_files(),
        |(soft, hard)| !soft.is_empty() && soft == hard,
    );
    assert_eq!(limits.0, limits.1, "soft and hard limits of the relay");
    assert_ne!(limits.0, "1024");
    within(WAIT, || relay.log(), |log| log.contains("file descriptors"));
}

/// A receiver that answers 200 after a delay and keeps only counts (the bodies are 1 MB each).
struct SlowCounter {
    port: u16,
    received: Arc<AtomicUsize>,
    bytes: Arc<AtomicUsize>,
    _runtime: tokio::runtime::Runtime,
}

impl SlowCounter {
    fn start(delay: Duration) -> SlowCounter {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(("127.0.0.1", 0)))
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let received = Arc::new(AtomicUsize::new(0));
        let bytes = Arc::new(AtomicUsize::new(0));
        let (count, total) = (received.clone(), bytes.clone());
        let app = axum::Router::new().fallback(move |body: axum::body::Bytes| {
            let (count, total) = (count.clone(), total.clone());
            async move {
                tokio::time::sleep(delay).await;
                total.fetch_add(body.len(), Ordering::SeqCst);
                count.fetch_add(1, Ordering::SeqCst);
                "ok"
            }
        });
        runtime.spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        SlowCounter {
            port,
            received,
            bytes,
            _runtime: runtime,
        }
    }
}

/// VmHWM (peak resident memory) of a process, in bytes.
fn peak_memory(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// `events` instances whose payloads are 1 MB each, to `endpoints` endpoints whose receivers
/// take 100 ms per request, through a relay started with `flags`: its peak resident memory
/// once all are delivered.
fn megabyte_payloads(name: &str, events: i64, endpoints: usize, flags: &[&str]) -> u64 {
    let cluster = Cluster::shared();
    let (database, mut client) = delivery_database(name);
    // Every instance of candidate 3 carries its 1 MB cf (compressed in the outbox).
    let blob = format!("{{\"blob\": \"{}\"}}", "x".repeat(1 << 20));
    insert_candidate(&mut client, 3, &blob);
    // Receivers that take 100 ms per request: the windows fill up.
    let receivers: Vec<SlowCounter> = (0..endpoints)
        .map(|n| {
            let receiver = SlowCounter::start(Duration::from_millis(100));
            create_endpoint(
                &mut client,
                &format!("big{n}"),
                &format!("http://127.0.0.1:{}/", receiver.port),
                "{1s}",
            );
            receiver
        })
        .collect();
    for first in (1..=events).step_by(20) {
        let mut transaction = client.transaction().unwrap();
        for id in first..(first + 20).min(events + 1) {
            transaction
                .execute(
                    "INSERT INTO ti.instance VALUES ($1, NULL, NULL, NULL, 'in_progress', 3, 1, NULL, NULL, NULL, now(), 1, now(), 1)",
                    &[&id],
                )
                .unwrap();
        }
        transaction.commit().unwrap();
    }
    let stored: i64 = client
        .query_one("SELECT count(*) FROM ae_events.outbox", &[])
        .unwrap()
        .get(0);
    assert_eq!(stored, events);
    let relay = Relay::start(cluster, &database, flags);
    let all = || {
        receivers
            .iter()
            .map(|r| r.received.load(Ordering::SeqCst))
            .sum::<usize>()
    };
    within(Duration::from_secs(90), all, |n| {
        *n >= events as usize * endpoints
    });
    let peak = peak_memory(relay.pid());
    let bytes: usize = receivers
        .iter()
        .map(|r| r.bytes.load(Ordering::SeqCst))
        .sum();
    eprintln!(
        "{name}: {} events, {} MB delivered to {endpoints} endpoints with {flags:?}; relay's peak RSS {} MB",
        all(),
        bytes >> 20,
        peak >> 20
    );
    assert!(all() >= events as usize * endpoints);
    assert!(bytes as u64 >= (events as u64 * endpoints as u64) << 20);
    peak
}

#[test]
fn one_megabyte_payloads_stay_within_the_window_bytes() {
    let peak = megabyte_payloads(
        "isolation_window_bytes",
        200,
        1,
        &["--window-bytes", "16MiB"],
    );
    // The window's bytes several times over (a fetch holds its rows and the payloads copied
    // out of them; request bodies; what the allocator keeps, more on a busy machine), plus the
    // relay's own base. Measured: 104 to 132 MB (74 MB with 4 MiB); 620 MB without the byte
    // bound.
    let bound: u64 = 6 * (16 << 20) + (80 << 20);
    assert!(
        peak > 0 && peak < bound,
        "peak RSS {} MB, bound {} MB",
        peak >> 20,
        bound >> 20
    );
}

#[test]
fn endpoints_together_stay_within_the_total_window_bytes() {
    // Four endpoints with the default 64 MiB windows would hold 256 MiB; the total bound shares
    // 16 MiB among them.
    let peak = megabyte_payloads(
        "isolation_total_window_bytes",
        100,
        4,
        &["--total-window-bytes", "16MiB"],
    );
    // As above, and each endpoint may hold one event past its share (a fetch brings one at
    // least): 4 MiB each. Measured: 122 to 143 MB (70 MB with 4 MiB); 543 MB without the total
    // bound.
    let bound: u64 = 6 * (16 << 20) + 4 * (4 << 20) + (80 << 20);
    assert!(
        peak > 0 && peak < bound,
        "peak RSS {} MB, bound {} MB",
        peak >> 20,
        bound >> 20
    );
}

#[test]
fn relay_fetch_ends_its_batch_after_the_event_that_reaches_max_bytes() {
    let cluster = Cluster::shared();
    let (database, mut client) = delivery_database("isolation_fetch_bytes");
    create_endpoint(&mut client, "direct", "http://127.0.0.1:1/", "{1s}");
    for id in 1..=3 {
        insert_instance(&mut client, id);
    }
    let sizes: Vec<i64> = client
        .query(
            "SELECT pg_column_size(payload || '{}'::jsonb)::bigint FROM ae_events.outbox ORDER BY txid, id",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(sizes.len(), 3);
    ensure_relay_login(cluster);
    let mut relay = cluster.connect_as(&database, "relay_user");
    let lease = relay
        .query_one(
            "SELECT endpoint_id, cursor_epoch, cursor_txid::text, cursor_id
               FROM ae_events.relay_lease('fetch-bytes', '1 minute')",
            &[],
        )
        .unwrap();
    let (endpoint_id, epoch, txid, id): (i64, i64, String, i64) =
        (lease.get(0), lease.get(1), lease.get(2), lease.get(3));
    let mut fetched = |max_bytes: i64| -> Result<usize, postgres::Error> {
        relay
            .query(
                "SELECT * FROM ae_events.relay_fetch('direct', 'fetch-bytes', $1, $2::text::xid8, $3, 10, $4, $5)",
                &[&epoch, &txid, &id, &max_bytes, &endpoint_id],
            )
            .map(|rows| rows.len())
    };
    // Always one event, even when it alone is over the bound.
    assert_eq!(fetched(1).unwrap(), 1);
    assert_eq!(fetched(sizes[0]).unwrap(), 1);
    // The batch ends after the event that reaches the bound.
    assert_eq!(fetched(sizes[0] + 1).unwrap(), 2);
    assert_eq!(fetched(sizes[0] + sizes[1]).unwrap(), 2);
    assert_eq!(fetched(sizes[0] + sizes[1] + 1).unwrap(), 3);
    assert_eq!(fetched(i64::MAX).unwrap(), 3);
    for bad in [0, -1] {
        let error = fetched(bad).unwrap_err();
        assert_eq!(sqlstate(&error), "22023", "{}", error_message(&error));
        assert!(error_message(&error).contains("max_bytes must be at least 1"));
    }
    // Another endpoint id under the name is refused.
    let error = relay
        .query(
            "SELECT * FROM ae_events.relay_fetch('direct', 'fetch-bytes', $1, $2::text::xid8, $3, 10, 1000, $4)",
            &[&epoch, &txid, &id, &(endpoint_id + 1)],
        )
        .unwrap_err();
    assert_eq!(sqlstate(&error), "55000", "{}", error_message(&error));
}
