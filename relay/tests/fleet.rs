//! Several relays against one database, and protecting receivers (issue 11): endpoints spread
//! over the relays, a killed relay's endpoints move within 10 s, a relay cut off from the
//! database stops before another takes over, the rate limit and the circuit breaker.

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::*;

const WAIT: Duration = Duration::from_secs(60);

/// Which relay holds each enabled endpoint (None: nobody, or its lease expired).
fn holders(client: &mut postgres::Client) -> BTreeMap<String, Option<String>> {
    client
        .query(
            "SELECT endpoint, CASE WHEN lease_expires_at > clock_timestamp() THEN relay END
               FROM ae_events.endpoint_status WHERE enabled ORDER BY endpoint",
            &[],
        )
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect()
}

fn held_by(holders: &BTreeMap<String, Option<String>>, relay: &str) -> Vec<String> {
    holders
        .iter()
        .filter(|(_, holder)| holder.as_deref() == Some(relay))
        .map(|(endpoint, _)| endpoint.clone())
        .collect()
}

/// Wait until a condition on the holders is true; returns them and when.
fn wait_for_holders(
    client: &mut postgres::Client,
    what: &str,
    condition: impl Fn(&BTreeMap<String, Option<String>>) -> bool,
) -> (BTreeMap<String, Option<String>>, Instant) {
    let now = within(WAIT, || holders(client), |h| condition(h));
    assert!(condition(&now), "timed out waiting for {what}: {now:?}");
    (now, Instant::now())
}

/// Inserts instances and updates earlier ones until stopped: a steady load.
fn steady_load(database: &str, running: Arc<AtomicBool>) -> std::thread::JoinHandle<i64> {
    let database = database.to_owned();
    std::thread::spawn(move || {
        let mut client = Cluster::shared().connect(&database);
        let mut next = 1;
        while running.load(Ordering::Relaxed) {
            insert_instance(&mut client, next);
            if next % 3 == 0 {
                set_status(&mut client, next - 1, "completed");
            }
            next += 1;
            std::thread::sleep(Duration::from_millis(40));
        }
        next - 1
    })
}

#[test]
fn three_relays_share_twelve_endpoints_and_a_dead_or_cut_off_ones_move_within_10_s() {
    let cluster = Cluster::shared();
    let (database, mut client) = delivery_database("fleet");
    create_relay_role(&mut client, "relay_fleet_cut");
    ensure_relay_login(cluster);
    // Answers take a moment, so that requests are in flight when a relay dies or is cut off.
    let receiver = Receiver::start(|_, _| Answer::status(200).after(Duration::from_millis(20)));
    let endpoints: Vec<String> = (0..12).map(|i| format!("e{i:02}")).collect();
    for endpoint in &endpoints {
        create_endpoint(
            &mut client,
            endpoint,
            &receiver.url(&format!("/{endpoint}")),
            "{200ms}",
        );
    }
    // The default lease (6 s).
    let killed = Relay::start(
        cluster,
        &database,
        &["--relay-id", "killed", "--lease", "6s"],
    );
    let cut = Relay::start_as(
        cluster,
        &database,
        "relay_fleet_cut",
        &["--relay-id", "cut", "--lease", "6s"],
    );
    let survivor = Relay::start(
        cluster,
        &database,
        &["--relay-id", "survivor", "--lease", "6s"],
    );
    let running = Arc::new(AtomicBool::new(true));
    let load = steady_load(&database, running.clone());

    // Every endpoint held by exactly one relay, four each.
    let (shared, _) = wait_for_holders(&mut client, "four endpoints per relay", |h| {
        ["killed", "cut", "survivor"]
            .iter()
            .all(|relay| held_by(h, relay).len() == 4)
    });
    assert!(shared.values().all(Option::is_some), "{shared:?}");
    receiver.wait_for("deliveries to every endpoint", WAIT, |requests| {
        let paths: HashSet<&str> = requests.iter().map(|r| r.path.as_str()).collect();
        paths.len() == 12
    });

    // kill -9 one relay under load: its endpoints move within 10 s.
    let orphaned = held_by(&shared, "killed");
    let killed_at = Instant::now();
    killed.kill_9();
    let (after_kill, moved_at) =
        wait_for_holders(&mut client, "the killed relay's endpoints", |h| {
            orphaned
                .iter()
                .all(|e| matches!(h[e].as_deref(), Some("cut" | "survivor")))
        });
    let takeover = moved_at - killed_at;
    assert!(
        takeover <= Duration::from_secs(10),
        "taken over after {takeover:?}"
    );
    assert!(after_kill.values().all(Option::is_some), "{after_kill:?}");

    // Cut one relay off the database (its session terminated, and it may not log in again): it
    // stops sending before the other takes its endpoints over.
    let (shared, _) = wait_for_holders(&mut client, "six endpoints per relay", |h| {
        held_by(h, "cut").len() == 6 && held_by(h, "survivor").len() == 6
    });
    let cut_off = held_by(&shared, "cut");
    client
        .batch_execute(
            "ALTER ROLE relay_fleet_cut NOLOGIN;
             SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'relay_fleet_cut';",
        )
        .unwrap();
    wait_for_holders(&mut client, "the cut-off relay's endpoints", |h| {
        cut_off.iter().all(|e| h[e].as_deref() == Some("survivor"))
    });
    assert!(
        cut.log().contains("database connection lost"),
        "{}",
        cut.log()
    );

    // Stop the load: every event reaches every endpoint, at least once, in order per instance.
    running.store(false, Ordering::Relaxed);
    let instances = load.join().unwrap();
    assert!(instances > 100, "{instances}");
    let events = outbox_events(&mut client);
    let expected: HashSet<String> = events.iter().map(|e| e.0.clone()).collect();
    // (A debug build on a busy machine catches up slowly: allow it time.)
    let requests = receiver.wait_for("every event at every endpoint", 3 * WAIT, |requests| {
        let mut per_endpoint: HashMap<&str, HashSet<&str>> = HashMap::new();
        for request in requests {
            per_endpoint
                .entry(request.path.as_str())
                .or_default()
                .insert(request.header("webhook-id"));
        }
        per_endpoint.len() == 12 && per_endpoint.values().all(|ids| ids.len() >= expected.len())
    });
    for endpoint in &endpoints {
        let path = format!("/{endpoint}");
        let received: Vec<Received> = requests
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect();
        let ids: HashSet<String> = received
            .iter()
            .map(|r| r.header("webhook-id").to_owned())
            .collect();
        assert_eq!(ids, expected, "{endpoint}: exactly the outbox's events");
        assert_in_order_per_instance(&received);
    }
    // No two requests for one endpoint and instance were ever in flight at once: no two relays
    // delivered an endpoint at the same time, not even around the kill and the cut.
    assert_eq!(receiver.overlaps(), Vec::<String>::new());
    let (_, _) = wait_for_holders(&mut client, "the survivor holding all", |h| {
        held_by(h, "survivor").len() == 12
    });
    drop(survivor);
    drop(cut);
    client
        .batch_execute("ALTER ROLE relay_fleet_cut LOGIN")
        .unwrap();
}

#[test]
fn the_rate_limit_holds_within_ten_percent_over_ten_seconds() {
    let cluster = Cluster::shared();
    let (database, mut client) = delivery_database("rate_limit");
    let receiver = Receiver::ok();
    create_endpoint(&mut client, "limited", &receiver.url("/"), "{1s}");
    client
        .batch_execute(
            "SELECT ae_events.alter_endpoint('limited', rate_limit => 20);
             INSERT INTO ti.instance
             SELECT g, NULL, NULL, NULL, 'in_progress', 1, 1, NULL, NULL, NULL, now(), 1, now(), 1
               FROM generate_series(1, 400) AS g;",
        )
        .unwrap();
    let _relay = Relay::start(cluster, &database, &[]);
    let requests = receiver.wait_for("12 seconds of requests", WAIT, |requests| {
        requests.len() > 1
            && requests[requests.len() - 1].at - requests[0].at >= Duration::from_secs(12)
    });
    let first = requests[0].at;
    let in_ten_seconds = requests
        .iter()
        .filter(|r| r.at - first < Duration::from_secs(10))
        .count();
    assert!(
        (180..=220).contains(&in_ten_seconds),
        "{in_ten_seconds} requests in 10 s at 20/s"
    );
    // Removing the limit lets the rest go at once.
    client
        .batch_execute("SELECT ae_events.alter_endpoint('limited', rate_limit => 0)")
        .unwrap();
    receiver.wait_for("all 400", WAIT, |requests| requests.len() >= 400);
    assert_eq!(
        client
            .query_one(
                "SELECT rate_limit FROM ae_events.endpoint_status WHERE endpoint = 'limited'",
                &[]
            )
            .unwrap()
            .get::<_, Option<f64>>(0),
        None
    );
}

#[test]
fn bad_rate_limits_are_refused() {
    let (_, mut client) = delivery_database("rate_limit_errors");
    create_endpoint(&mut client, "e", "http://127.0.0.1:9/", "{1s}");
    for bad in ["-1", "'NaN'", "1e9"] {
        let error = client
            .batch_execute(&format!(
                "SELECT ae_events.alter_endpoint('e', rate_limit => {bad})"
            ))
            .unwrap_err();
        assert_eq!(sqlstate(&error), "22023", "{bad}: {error}");
        assert!(error_message(&error).starts_with("ae_events: rate_limit"));
    }
}

#[test]
fn the_circuit_breaker_opens_on_an_endpoint_failing_everything_and_probes_it() {
    let cluster = Cluster::shared();
    let (database, mut client) = delivery_database("breaker");
    let healthy = Arc::new(AtomicBool::new(false));
    let answers = healthy.clone();
    let receiver = Receiver::start(move |_, _| {
        Answer::status(if answers.load(Ordering::Relaxed) {
            200
        } else {
            500
        })
    });
    // Fast retries: without the breaker 40 events would make hundreds of requests in seconds.
    create_endpoint(
        &mut client,
        "failing",
        &receiver.url("/"),
        "{100ms,100ms,100ms,100ms,100ms,100ms,100ms,100ms,100ms,100ms,100ms,100ms,100ms,100ms,100ms,100ms,100ms,100ms,100ms,100ms}",
    );
    client
        .batch_execute(
            "INSERT INTO ti.instance
             SELECT g, NULL, NULL, NULL, 'in_progress', 1, 1, NULL, NULL, NULL, now(), 1, now(), 1
               FROM generate_series(1, 40) AS g;",
        )
        .unwrap();
    let port = free_port();
    let address = format!("127.0.0.1:{port}");
    let _relay = Relay::start(
        cluster,
        &database,
        &[
            "--breaker-failures",
            "5",
            "--breaker-cooldown",
            "1s",
            "--breaker-max-cooldown",
            "2s",
            "--metrics-address",
            &address,
        ],
    );
    let first = receiver.wait_for("the first failures", WAIT, |r| r.len() >= 5)[0].at;
    std::thread::sleep(Duration::from_secs(7));
    let requests = receiver.requests();
    // The first round went before the fifth failure came back (up to max_in_flight = 16 at
    // once, a few more as the first answers came); the circuit is open after it. From then on
    // one probe per cool-down (1 s, then 2 s): a handful, not hundreds.
    assert!(
        requests.len() <= 40,
        "{} requests to an endpoint failing everything",
        requests.len()
    );
    let probes: Vec<&Received> = requests
        .iter()
        .filter(|r| r.at - first >= Duration::from_secs(2))
        .collect();
    assert!(
        (1..=4).contains(&probes.len()),
        "{} requests in the 5 s the circuit was open",
        probes.len()
    );
    for pair in probes.windows(2) {
        assert!(
            pair[1].at - pair[0].at >= Duration::from_millis(900),
            "probes one cool-down apart: {:?}",
            pair[1].at - pair[0].at
        );
    }
    let text = get(port, "/metrics").expect("/metrics").1;
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
    let label = [("endpoint", "failing")];
    assert!(
        sample(&scrape, "ae_relay_circuit_opened_total", &label).unwrap_or(0.0) >= 1.0,
        "{text}"
    );
    assert!(
        matches!(sample(&scrape, "ae_relay_circuit_state", &label), Some(s) if s >= 1.0),
        "{text}"
    );
    // The backlog: events waiting, the oldest for seconds.
    assert!(
        sample(&scrape, "ae_relay_backlog_oldest_age_seconds", &label).unwrap_or(0.0) >= 3.0,
        "{text}"
    );
    assert!(
        sample(&scrape, "ae_relay_pending_retries", &label).unwrap_or(0.0)
            + sample(&scrape, "ae_relay_backlog_events", &label).unwrap_or(0.0)
            >= 40.0,
        "{text}"
    );

    // The receiver recovers: the next probe closes the circuit and everything is delivered.
    healthy.store(true, Ordering::Relaxed);
    wait_until_sql(
        &mut client,
        "all 40 delivered",
        WAIT,
        "SELECT count(*) = 40 FROM ae_events.delivery_status WHERE status = 'delivered'",
    );
    let deadline = Instant::now() + WAIT;
    loop {
        let text = get(port, "/metrics").expect("/metrics").1;
        let scrape =
            prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
        let closed = sample(&scrape, "ae_relay_circuit_state", &label) == Some(0.0);
        let drained = sample(&scrape, "ae_relay_backlog_events", &label) == Some(0.0)
            && sample(&scrape, "ae_relay_pending_retries", &label) == Some(0.0);
        if closed && drained {
            break;
        }
        assert!(Instant::now() < deadline, "{text}");
        std::thread::sleep(Duration::from_millis(200));
    }
}
