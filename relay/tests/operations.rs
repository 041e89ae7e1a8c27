//! Running ae-relay as a service (issue 11): metrics and health endpoints, the shutdown
//! deadline and a second signal.

mod support;

use std::time::{Duration, Instant};
use support::*;

const WAIT: Duration = Duration::from_secs(30);

#[test]
fn metrics_parse_as_prometheus_text_and_count_what_the_receiver_saw() {
    let cluster = Cluster::start(&[]);
    let database = cluster.database("metrics", ForeignKeys::Without);
    let mut client = cluster.connect(&database);
    client.batch_execute(MINIMAL_REFERENCE_DATA).unwrap();
    let receiver = Receiver::start(|request, earlier| {
        Answer::status(if request.instance() == 3 && earlier == 0 {
            503
        } else {
            200
        })
    });
    create_endpoint(&mut client, "watched", &receiver.url("/"), "{300ms}");
    let port = free_port();
    let address = format!("127.0.0.1:{port}");
    let _relay = Relay::start(&cluster, &database, &["--metrics-address", &address]);
    for id in 1..=5 {
        insert_instance(&mut client, id);
    }
    receiver.wait_for("five events and one retry", WAIT, |r| r.len() >= 6);
    wait_until_sql(
        &mut client,
        "five delivered",
        WAIT,
        "SELECT count(*) = 5 FROM ae_events.delivery_status WHERE status = 'delivered'",
    );
    std::thread::sleep(Duration::from_millis(300));
    let (status, text) = get(port, "/metrics").expect("/metrics answers");
    assert_eq!(status, 200);
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .expect("Prometheus text");
    let labels = |outcome| [("endpoint", "watched"), ("outcome", outcome)];
    assert_eq!(
        sample(&scrape, "ae_relay_attempts_total", &labels("delivered")),
        Some(5.0),
        "{text}"
    );
    assert_eq!(
        sample(&scrape, "ae_relay_attempts_total", &labels("retry")),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&scrape, "ae_relay_endpoints_held", &[]),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &scrape,
            "ae_relay_requests_in_flight",
            &[("endpoint", "watched")]
        ),
        Some(0.0)
    );
    assert!(
        text.contains("ae_relay_attempt_duration_seconds_count{endpoint=\"watched\"} 6"),
        "{text}"
    );
    // Commit-to-delivery lag: one observation per delivered event.
    assert_eq!(
        sample(
            &scrape,
            "ae_relay_delivery_lag_seconds_count",
            &[("endpoint", "watched")]
        ),
        Some(5.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &scrape,
            "ae_relay_circuit_state",
            &[("endpoint", "watched")]
        ),
        Some(0.0),
        "{text}"
    );
    assert!(!text.contains("whsec_"), "no secret in the metrics");

    assert_eq!(get(port, "/healthz").map(|r| r.0), Some(200));
    assert_eq!(get(port, "/readyz").map(|r| r.0), Some(200));
    // The database goes away: not ready, still alive.
    let stop = pg_command("pg_ctl")
        .args([
            "-D",
            cluster.data_dir.to_str().unwrap(),
            "-m",
            "fast",
            "-w",
            "stop",
        ])
        .status()
        .unwrap();
    assert!(stop.success());
    let deadline = Instant::now() + WAIT;
    while get(port, "/readyz").map(|r| r.0) != Some(503) {
        assert!(
            Instant::now() < deadline,
            "/readyz still ready with the database down"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(get(port, "/healthz").map(|r| r.0), Some(200));
}

#[test]
fn sigterm_exits_within_the_deadline_and_a_restarted_relay_sends_what_was_cut() {
    let cluster = Cluster::shared();
    let (database, mut client) = delivery_database("deadline");
    // The first request hangs far longer than the deadline; later ones are answered at once.
    let receiver = Receiver::start(|_, earlier| {
        if earlier == 0 {
            Answer::status(200).after(Duration::from_secs(60))
        } else {
            Answer::status(200)
        }
    });
    create_endpoint(&mut client, "slowpoke", &receiver.url("/"), "{300ms}");
    client
        .execute(
            "SELECT ae_events.alter_endpoint('slowpoke', timeout => '2 min')",
            &[],
        )
        .unwrap();
    let relay = Relay::start(
        cluster,
        &database,
        &["--shutdown-deadline", "1s", "--lease", "3m"],
    );
    insert_instance(&mut client, 1);
    receiver.wait_for("the hanging request", WAIT, |r| !r.is_empty());
    let stopping = Instant::now();
    let status = relay.terminate();
    let took = stopping.elapsed();
    assert!(status.success(), "{status:?}");
    assert!(
        took < Duration::from_secs(10),
        "the deadline (1 s) bounds the stop: {took:?}"
    );
    let recorded: i64 = client
        .query_one("SELECT count(*) FROM ae_events.deliveries", &[])
        .unwrap()
        .get(0);
    assert_eq!(recorded, 0, "the cut request is not recorded as delivered");
    // The endpoint was released: a new relay takes it at once and sends the event again.
    let _relay = Relay::start(cluster, &database, &[]);
    receiver.wait_for("the event again", WAIT, |r| r.len() >= 2);
    wait_until_sql(
        &mut client,
        "delivered",
        WAIT,
        "SELECT EXISTS (SELECT FROM ae_events.delivery_status WHERE status = 'delivered')",
    );
}

#[test]
fn a_second_signal_exits_at_once() {
    let cluster = Cluster::shared();
    let (database, mut client) = delivery_database("second_signal");
    let receiver = Receiver::start(|_, _| Answer::status(200).after(Duration::from_secs(60)));
    create_endpoint(&mut client, "stuck", &receiver.url("/"), "{300ms}");
    client
        .execute(
            "SELECT ae_events.alter_endpoint('stuck', timeout => '2 min')",
            &[],
        )
        .unwrap();
    let relay = Relay::start(
        cluster,
        &database,
        &["--shutdown-deadline", "5m", "--lease", "10m"],
    );
    insert_instance(&mut client, 1);
    receiver.wait_for("the hanging request", WAIT, |r| !r.is_empty());
    let pid = relay.pid().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let stopping = Instant::now();
    let status = relay.terminate();
    assert!(status.success(), "{status:?}");
    assert!(
        stopping.elapsed() < Duration::from_secs(5),
        "{:?}",
        stopping.elapsed()
    );
}

#[test]
fn a_relay_cut_off_from_the_database_stops_sending_before_another_takes_over() {
    let cluster = Cluster::shared();
    let (database, mut client) = delivery_database("fencing");
    create_relay_role(&mut client, "relay_fenced");
    ensure_relay_login(cluster);
    // Every first attempt hangs; a resend is answered.
    let receiver = Receiver::start(|_, earlier| {
        if earlier == 0 {
            Answer::status(200).after(Duration::from_secs(120))
        } else {
            Answer::status(200)
        }
    });
    create_endpoint(&mut client, "contested", &receiver.url("/"), "{300ms}");
    client
        .execute(
            "SELECT ae_events.alter_endpoint('contested', timeout => '5 min')",
            &[],
        )
        .unwrap();
    let _first = Relay::start_as(
        cluster,
        &database,
        "relay_fenced",
        &["--relay-id", "first", "--lease", "3s"],
    );
    insert_instance(&mut client, 1);
    receiver.wait_for("the first relay's request", WAIT, |r| !r.is_empty());
    let _second = Relay::start(
        cluster,
        &database,
        &["--relay-id", "second", "--lease", "3s"],
    );
    // Cut the first relay off without closing its connections (as a network partition would):
    // its database sessions (its own and its workers' pool) are stopped, so its calls hang
    // instead of failing.
    let backends: Vec<String> = client
        .query(
            "SELECT pid::text FROM pg_stat_activity WHERE usename = 'relay_fenced'",
            &[],
        )
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert!(!backends.is_empty());
    let signal = |name: &str| {
        std::process::Command::new("kill")
            .arg(name)
            .args(&backends)
            .status()
            .unwrap()
    };
    // Nor can it connect again.
    client
        .batch_execute("ALTER ROLE relay_fenced NOLOGIN")
        .unwrap();
    assert!(signal("-STOP").success());
    let requests = receiver.wait_for("the second relay's resend", WAIT, |r| r.len() >= 2);
    let cancelled = receiver.cancelled();
    assert_eq!(
        cancelled.len(),
        1,
        "the first relay abandoned its request: {cancelled:?}"
    );
    assert!(
        cancelled[0].1 < requests[1].at,
        "the first relay stopped sending before the second took over"
    );
    assert_eq!(
        requests[1].header("webhook-id"),
        requests[0].header("webhook-id")
    );
    let holder: String = client
        .query_one("SELECT relay FROM ae_events.endpoint_status", &[])
        .unwrap()
        .get(0);
    assert_eq!(holder, "second");
    assert!(signal("-CONT").success());
    client
        .batch_execute("ALTER ROLE relay_fenced LOGIN")
        .unwrap();
}

#[test]
fn json_logs_are_one_object_a_line_and_never_show_secrets_or_headers() {
    let cluster = Cluster::shared();
    let (database, mut client) = delivery_database("json_logs");
    let receiver =
        Receiver::start(|_, earlier| Answer::status(if earlier == 0 { 500 } else { 200 }));
    let secret = create_endpoint(&mut client, "logged", &receiver.url("/"), "{300ms}");
    client
        .execute(
            "SELECT ae_events.alter_endpoint('logged', headers => '{\"authorization\": \"Bearer hush-hush\"}')",
            &[],
        )
        .unwrap();
    let relay = Relay::start(cluster, &database, &["--log-format", "json"]);
    insert_instance(&mut client, 1);
    receiver.wait_for("the retry", WAIT, |r| r.len() >= 2);
    let log_path = relay.log_path.clone();
    assert!(relay.terminate().success());
    let log = std::fs::read_to_string(&log_path).unwrap();
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() >= 3, "{log}");
    for line in &lines {
        let entry: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(
            entry["level"].is_string() && entry["fields"].is_object(),
            "{line}"
        );
    }
    assert!(
        log.contains("\"status\":\"pending\""),
        "the failed attempt is logged: {log}"
    );
    assert!(
        !log.contains(&secret) && !log.contains("whsec_"),
        "no secret in the logs"
    );
    assert!(
        !log.contains("hush-hush") && !log.contains("Bearer"),
        "no header value in the logs"
    );
}

/// A rename whose fan-out is deferred (docs/updated-events.md#large-fan-outs): the running relay
/// writes the updated events itself (`ae_events.run_fanouts()`) and delivers each, in order
/// after its instance's created event.
#[test]
fn a_relay_runs_deferred_fanouts_and_delivers_their_events() {
    let cluster = Cluster::shared();
    let (database, mut client) = delivery_database("relay_fanout");
    let receiver = Receiver::ok();
    create_endpoint(&mut client, "fanout", &receiver.url("/hooks"), "{1s}");
    client
        .batch_execute(
            "UPDATE ae_events.bubble_up SET enabled = true WHERE source_table = 'ae.assessment';
             INSERT INTO ti.instance
             SELECT n, NULL, NULL, NULL, 'in_progress', 1, 1, NULL, NULL, NULL, now(), 1, now(), 1
                 FROM generate_series(1, 300) AS n;",
        )
        .unwrap();
    // A transaction of its own (one string of statements would be one transaction).
    client
        .batch_execute(
            "SET ae_events.fanout_inline_limit = 0;
             UPDATE ae.assessment SET name = 'renamed' WHERE id = 1;",
        )
        .unwrap();
    let waiting: i64 = client
        .query_one("SELECT count(*) FROM ae_events.fanouts", &[])
        .unwrap()
        .get(0);
    assert_eq!(waiting, 1, "the rename's events wait for a relay");
    let port = free_port();
    let address = format!("127.0.0.1:{port}");
    let _relay = Relay::start(cluster, &database, &["--metrics-address", &address]);
    let requests = receiver.wait_for("the rename's 300 updated events", WAIT, |requests| {
        requests.len() >= 600
    });
    assert_in_order_per_instance(&requests);
    let renamed = requests
        .iter()
        .filter(|request| request.version() == 2 && request.body.contains("\"renamed\""))
        .count();
    assert_eq!(renamed, 300);
    wait_until_sql(
        &mut client,
        "the fan-out to be done",
        WAIT,
        "SELECT NOT EXISTS (SELECT FROM ae_events.fanouts)",
    );
    // Found 300, then gave 300 their events.
    let (_, text) = get(port, "/metrics").expect("/metrics answers");
    assert!(
        text.lines()
            .any(|line| line == "ae_relay_fanout_instances_total 600"),
        "{text}"
    );
    assert!(text
        .lines()
        .any(|line| line == "ae_relay_fanout_errors_total 0"));
}

/// With `ae_events.notify = reference` a commit within `ae_events.notify_interval` of the
/// session's last wake-up sends none: the relay's fetch 25 ms after each notification delivers
/// it all the same, long before its next poll (60 s here).
#[test]
fn a_commit_without_a_wake_up_is_delivered_by_the_fetch_that_follows_a_notification() {
    let cluster = Cluster::shared();
    let (database, mut client) = delivery_database("follow_up");
    client
        .batch_execute(&format!(
            "ALTER DATABASE {database} SET ae_events.notify_interval = '1min'"
        ))
        .unwrap();
    let receiver = Receiver::ok();
    create_endpoint(&mut client, "follow_up", &receiver.url("/hooks"), "{1s}");
    let mut app = cluster.connect(&database);
    insert_instance(&mut app, 1);
    // Fetched when the relay starts: once it has arrived, the relay listens and is idle.
    let relay = Relay::start(cluster, &database, &["--poll-interval", "60s"]);
    let first = within(WAIT, || receiver.count(), |count| *count == 1);
    assert_eq!(first, 1, "{}", relay.log());
    std::thread::sleep(Duration::from_millis(200));
    // A fresh session: its first commit wakes the relay, its second (10 ms later) does not.
    let mut app = cluster.connect(&database);
    insert_instance(&mut app, 2);
    std::thread::sleep(Duration::from_millis(10));
    insert_instance(&mut app, 3);
    let requests = receiver.wait_for("both events", Duration::from_secs(10), |r| r.len() >= 3);
    let instances: Vec<i64> = requests.iter().map(|r| r.instance()).collect();
    assert_eq!(instances, vec![1, 2, 3]);
}
