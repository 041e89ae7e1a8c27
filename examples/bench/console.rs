//! The console workload (issue 22): the SQL behind the operator console's pages
//! (sql/src/console.sql) on 200 endpoints and 1,000,000 deliveries, built set-based (not through
//! a relay): 5,000 events over the last 24 hours, each delivered to every endpoint, 1% of the
//! deliveries dead-lettered and 0.5% pending, their failed attempts in the attempt log and the
//! per-endpoint counts as relay_record keeps them; one endpoint is disabled with every event
//! still ahead of its cursor, every 20th is failing. Timed: the `/` page's queries (every
//! endpoint, the 24-hour chart) and an endpoint page's (its row, chart, first page of deliveries,
//! dead letters, test events), the median of 7 runs after one to warm up. With AE_RELAY_BIN
//! naming a built ae-relay (scripts/bench.sh builds it first), the same two pages are then
//! fetched over HTTP from `ae-relay console`, signed in as an operator: what a browser waits
//! for, rendering included.

use super::common::{load_schema, ForeignKeys};
use super::{median, Bench};
use postgres::Client;
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub struct ConsoleResults {
    pub endpoints: i64,
    pub deliveries: i64,
    /// (page, median ms, rows)
    pub pages: Vec<(&'static str, f64, usize)>,
}

fn timed(client: &mut Client, queries: &[String]) -> (f64, usize) {
    let mut times = Vec::new();
    let mut rows = 0;
    for run in 0..8 {
        let started = Instant::now();
        rows = 0;
        for query in queries {
            rows += client.query(query.as_str(), &[]).unwrap().len();
        }
        if run > 0 {
            times.push(started.elapsed().as_secs_f64() * 1000.0);
        }
    }
    (median(times), rows)
}

pub fn console_workload(bench: &Bench) -> ConsoleResults {
    let smoke = std::env::args().any(|arg| arg == "--smoke");
    let (endpoints, events): (i64, i64) = if smoke { (10, 200) } else { (200, 5_000) };
    let database = "bench_console";
    bench
        .connect("postgres")
        .batch_execute(&format!("CREATE DATABASE {database}"))
        .unwrap();
    let mut client = bench.connect(database);
    load_schema(&mut client, ForeignKeys::Without);
    let port = bench.cluster.port;
    println!(
        "console: {endpoints} endpoints, {} deliveries ...",
        endpoints * events
    );
    let started = Instant::now();
    client
        .batch_execute(&format!(
            "CREATE EXTENSION ae_events;
             SELECT ae_events.create_endpoint('endpoint-' || n, 'https://receiver-' || n || '.example.com/hooks')
               FROM generate_series(1, {endpoints}) AS n;
             SELECT ae_events.alter_endpoint('endpoint-' || n, headers => '{{\"authorization\": \"Bearer bench\"}}')
               FROM generate_series(1, {endpoints}, 10) AS n;
             INSERT INTO ae_events.outbox (event_id, subscription_key, event_type, aggregate_type,
                                           aggregate_id, snapshot_version, payload, occurred_at, txid)
             SELECT gen_random_uuid(), 'ae.test_instance.created', 'ae_test_instance_created',
                    'test_instance', g, 1, jsonb_build_object('id', g, 'candidate_id', g % 1000),
                    now() - (({events} - g) * interval '86000 seconds' / {events}),
                    pg_current_xact_id()
               FROM generate_series(1, {events}) AS g;
             INSERT INTO ae_events.deliveries (endpoint, outbox_id, aggregate_id, status, attempts,
                                               first_attempt_at, last_attempt_at, last_status,
                                               last_error, next_attempt_at, delivered_at, dead_at)
             SELECT e.endpoint, o.id, o.aggregate_id, s.status,
                    CASE WHEN s.status = 'delivered' THEN 1 ELSE 3 END,
                    o.occurred_at, o.occurred_at,
                    CASE WHEN s.status = 'delivered' THEN 200 ELSE 503 END,
                    CASE WHEN s.status = 'delivered' THEN NULL ELSE 'HTTP 503: busy' END,
                    CASE WHEN s.status = 'pending' THEN now() END,
                    CASE WHEN s.status = 'delivered' THEN o.occurred_at END,
                    CASE WHEN s.status = 'dead' THEN o.occurred_at END
               FROM ae_events.endpoints AS e
              CROSS JOIN ae_events.outbox AS o
              CROSS JOIN LATERAL (SELECT CASE WHEN (o.id + e.endpoint_id) % 100 = 0 THEN 'dead'
                                              WHEN (o.id + e.endpoint_id) % 200 = 1 THEN 'pending'
                                              ELSE 'delivered' END AS status) AS s;
             INSERT INTO ae_events.delivery_attempts (endpoint, outbox_id, attempt, attempted_at,
                                                      duration_ms, outcome, http_status, error)
             SELECT d.endpoint, d.outbox_id, a, d.last_attempt_at - (3 - a) * interval '1 minute', 40,
                    CASE WHEN a = 3 AND d.status = 'dead' THEN 'dead' ELSE 'failed' END, 503,
                    'HTTP 503: busy'
               FROM ae_events.deliveries AS d CROSS JOIN generate_series(1, 3) AS a
              WHERE d.status <> 'delivered';
             INSERT INTO ae_events.endpoint_activity (endpoint, bucket_start, delivered, failed, dead,
                                                      last_delivered_at)
             SELECT d.endpoint, date_bin('10 minutes', d.last_attempt_at, '2000-01-01 00:00:00+00'),
                    count(*) FILTER (WHERE d.status = 'delivered'),
                    3 * count(*) FILTER (WHERE d.status <> 'delivered'),
                    count(*) FILTER (WHERE d.status = 'dead'),
                    max(d.delivered_at)
               FROM ae_events.deliveries AS d GROUP BY 1, 2;
             UPDATE ae_events.endpoints
                SET cursor_txid = CASE WHEN endpoint_id = 1 THEN '0'
                                       ELSE (SELECT max(txid) FROM ae_events.outbox) END,
                    cursor_id = CASE WHEN endpoint_id = 1 THEN -1
                                     ELSE (SELECT max(id) FROM ae_events.outbox) END,
                    enabled = endpoint_id <> 1,
                    disabled_reason = CASE WHEN endpoint_id = 1 THEN 'bench: disabled, every event behind' END,
                    failing_since = CASE WHEN endpoint_id % 20 = 0 THEN now() - interval '1 hour' END,
                    failed_attempts = CASE WHEN endpoint_id % 20 = 0 THEN 12 ELSE 0 END;
             SELECT ae_events.send_test_event('endpoint-7');"
        ))
        .unwrap();
    client.batch_execute("VACUUM ANALYZE").unwrap();
    let deliveries: i64 = client
        .query_one("SELECT count(*) FROM ae_events.deliveries", &[])
        .unwrap()
        .get(0);
    println!("console: built in {:.0} s", started.elapsed().as_secs_f64());
    // Read as the console reads: a role granted ae_events_operator.
    client
        .batch_execute(
            "DO $$ BEGIN CREATE ROLE bench_operator LOGIN PASSWORD 'bench'; EXCEPTION WHEN duplicate_object THEN NULL; END $$;
             GRANT ae_events_operator TO bench_operator;
             SET ROLE bench_operator",
        )
        .unwrap();
    // The last endpoint: failing (every 20th is), with its dead letters and pending deliveries.
    let endpoint = format!("endpoint-{endpoints}");
    let page = |queries: &[&str]| -> Vec<String> {
        queries
            .iter()
            .map(|q| q.replace("$endpoint", &endpoint))
            .collect()
    };
    let mut pages = Vec::new();
    for (label, queries) in [
        (
            "/ (every endpoint's row and 24-hour chart)",
            page(&[
                "SELECT * FROM ae_events.console_endpoints ORDER BY endpoint",
                "SELECT * FROM ae_events.console_activity(24)",
            ]),
        ),
        (
            "/: console_endpoints alone",
            page(&["SELECT * FROM ae_events.console_endpoints ORDER BY endpoint"]),
        ),
        (
            "/: console_activity(24) alone",
            page(&["SELECT * FROM ae_events.console_activity(24)"]),
        ),
        (
            "/endpoints/{endpoint} (row, chart, 50 deliveries, dead letters, test events)",
            page(&[
                "SELECT * FROM ae_events.console_endpoints WHERE endpoint = '$endpoint'",
                "SELECT * FROM ae_events.console_activity(24, '$endpoint')",
                "SELECT * FROM ae_events.console_deliveries('$endpoint', NULL, NULL, 50)",
                "SELECT * FROM ae_events.console_deliveries('$endpoint', 'dead', NULL, 50)",
                "SELECT * FROM ae_events.console_test_events('$endpoint')",
            ]),
        ),
    ] {
        let (ms, rows) = timed(&mut client, &queries);
        println!("console: {label}: {ms:.1} ms ({rows} rows)");
        pages.push((label, ms, rows));
    }
    if let Ok(binary) = std::env::var("AE_RELAY_BIN") {
        for (label, ms, bytes) in rendered_pages(&binary, port, database, &endpoint) {
            println!("console: {label}: {ms:.1} ms ({bytes} bytes of HTML)");
            pages.push((label, ms, bytes));
        }
    }
    ConsoleResults {
        endpoints,
        deliveries,
        pages,
    }
}

pub fn print(results: &Option<ConsoleResults>) {
    let Some(results) = results else {
        return;
    };
    println!(
        "\n### Console pages ({} endpoints, {} deliveries)\n\n| page | median (ms) | rows (over HTTP: HTML bytes) |\n|---|---:|---:|",
        results.endpoints, results.deliveries
    );
    for (label, ms, rows) in &results.pages {
        println!("| {label} | {ms:.1} | {rows} |");
    }
}

/// One HTTP/1.0 request to the console: (status, headers, body).
fn request(port: u16, method: &str, path: &str, extra: &str, body: &str) -> (u16, String, String) {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n{extra}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_owned(), body.to_owned())
}

/// `/` and an endpoint's page over HTTP from `ae-relay console`: (label, median ms, bytes).
fn rendered_pages(
    binary: &str,
    database_port: u16,
    database: &str,
    endpoint: &str,
) -> Vec<(&'static str, f64, usize)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut console = Command::new(binary)
        .args(["console", "--listen", &format!("127.0.0.1:{port}")])
        .args([
            "--database-url",
            &format!("postgres://bench@127.0.0.1:{database_port}/{database}"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the console did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let origin = format!("Origin: http://127.0.0.1:{port}\r\n");
    let (status, head, _) = request(
        port,
        "POST",
        "/login",
        &format!("{origin}Content-Type: application/x-www-form-urlencoded\r\n"),
        "username=bench_operator&password=bench",
    );
    let cookie = head
        .lines()
        .find_map(|line| {
            line.strip_prefix("set-cookie: ")
                .or(line.strip_prefix("Set-Cookie: "))
        })
        .and_then(|value| value.split(';').next())
        .unwrap_or_else(|| panic!("no session after signing in ({status}): {head}"))
        .to_owned();
    let mut pages = Vec::new();
    for (label, path) in [
        ("/ over HTTP (signed in, rendered)", "/".to_owned()),
        (
            "/endpoints/{endpoint} over HTTP (signed in, rendered)",
            format!("/endpoints/{endpoint}"),
        ),
    ] {
        let mut times = Vec::new();
        let mut bytes = 0;
        for run in 0..8 {
            let began = Instant::now();
            let (status, _, body) =
                request(port, "GET", &path, &format!("Cookie: {cookie}\r\n"), "");
            assert_eq!(status, 200, "{path}: {body}");
            bytes = body.len();
            if run > 0 {
                times.push(began.elapsed().as_secs_f64() * 1000.0);
            }
        }
        pages.push((label, median(times), bytes));
    }
    let _ = console.kill();
    let _ = console.wait();
    pages
}
