//! The operator console's SQL (sql/src/console.sql, docs/console.md "What the pages read"): the
//! attempt log, the per-endpoint counts, the views and functions the pages read, who may act,
//! and that the pages' queries stay cheap as deliveries grow. The pages themselves (and the
//! browser): relay/tests/console.rs.

mod common;

use common::*;
use postgres::Client;

const RELAY: &str = "console-relay";

/// One outcome for relay_record: outbox id, status, attempt number, seconds ago, HTTP status,
/// error, duration in ms.
type Outcome<'a> = (
    i64,
    &'a str,
    i32,
    f64,
    Option<i32>,
    Option<&'a str>,
    Option<i32>,
);

/// A row of the attempt log: attempt, outcome, HTTP status, error, duration in ms.
type LoggedAttempt = (i32, String, Option<i32>, String, Option<i32>);

/// Lease every enabled endpoint to RELAY and return the endpoint's id.
fn lease(client: &mut Client, endpoint: &str) -> i64 {
    client
        .query(
            "SELECT endpoint, endpoint_id FROM ae_events.relay_lease($1, '10 minutes')",
            &[&RELAY],
        )
        .unwrap()
        .iter()
        .find(|r| r.get::<_, String>(0) == endpoint)
        .map(|r| r.get(1))
        .expect("leased")
}

/// relay_record as the relay calls it (with durations); the cursor stays.
fn record(client: &mut Client, endpoint: &str, endpoint_id: i64, outcomes: &[Outcome]) {
    let ids: Vec<i64> = outcomes.iter().map(|o| o.0).collect();
    let statuses: Vec<&str> = outcomes.iter().map(|o| o.1).collect();
    let attempts: Vec<i32> = outcomes.iter().map(|o| o.2).collect();
    let ago: Vec<f64> = outcomes.iter().map(|o| o.3).collect();
    let http: Vec<Option<i32>> = outcomes.iter().map(|o| o.4).collect();
    let errors: Vec<Option<&str>> = outcomes.iter().map(|o| o.5).collect();
    let durations: Vec<Option<i32>> = outcomes.iter().map(|o| o.6).collect();
    let recorded: bool = client
        .query_one(
            "SELECT ae_events.relay_record($1, $2, $3,
                 ARRAY(SELECT o.aggregate_id FROM unnest($3::bigint[]) WITH ORDINALITY AS u (id, n)
                         JOIN ae_events.outbox AS o ON o.id = u.id ORDER BY u.n),
                 $4, $5,
                 ARRAY(SELECT now() - make_interval(secs => s)
                         FROM unnest($6::float8[]) WITH ORDINALITY AS u (s, n) ORDER BY n),
                 $7, $8, NULL, NULL, NULL, NULL, NULL, $9, $10)",
            &[
                &endpoint,
                &RELAY,
                &ids,
                &statuses,
                &attempts,
                &ago,
                &http,
                &errors,
                &endpoint_id,
                &durations,
            ],
        )
        .unwrap()
        .get(0);
    assert!(recorded);
}

/// `count` new events (instances from `first_instance` on), written directly; their ids.
fn events(client: &mut Client, first_instance: i64, count: i64) -> Vec<i64> {
    client
        .query(
            "INSERT INTO ae_events.outbox (event_id, subscription_key, event_type, aggregate_type,
                                           aggregate_id, snapshot_version, payload, occurred_at, txid)
             SELECT gen_random_uuid(), 'ae.test_instance.created', 'ae_test_instance_created',
                    'test_instance', $1::bigint + g, 1,
                    jsonb_build_object('id', $1 + g, 'candidate_id', 5000 + g,
                                       'candidate', jsonb_build_object('id', 5000 + g,
                                                                       'email', 'c' || g || '@example.com')),
                    now(), pg_current_xact_id()
               FROM generate_series(0, $2::bigint - 1) AS g
             RETURNING id",
            &[&first_instance, &count],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

fn int(client: &mut Client, query: &str) -> i64 {
    client.query_one(query, &[]).unwrap().get(0)
}

#[test]
fn the_attempt_log_keeps_each_failed_attempt_bounded_masked_and_goes_with_its_delivery() {
    let (_database, mut client) = seeded_database("console_attempt_log");
    client
        .batch_execute(
            "SELECT ae_events.create_endpoint('hook', 'http://127.0.0.1:9/hook');
             SELECT ae_events.alter_endpoint('hook', headers => '{\"authorization\": \"Bearer tok-123456\"}');",
        )
        .unwrap();
    let hook = lease(&mut client, "hook");
    let ids = events(&mut client, 10_000, 3);
    let seed = int(&mut client, "SELECT min(id) FROM ae_events.outbox");

    // 25 failed attempts of one delivery, the last one dead-lettering it; a receiver echoing
    // the header's value. Deliveries of other events write no row.
    for attempt in 1..=25 {
        let status = if attempt == 25 { "dead" } else { "pending" };
        let error = format!("HTTP 500: you sent Bearer tok-123456 (attempt {attempt})");
        record(
            &mut client,
            "hook",
            hook,
            &[
                (
                    ids[0],
                    status,
                    attempt,
                    0.0,
                    Some(500),
                    Some(&error),
                    Some(attempt * 10),
                ),
                (ids[1], "delivered", 1, 0.0, Some(200), None, Some(5)),
            ],
        );
    }
    let log: Vec<LoggedAttempt> = client
        .query(
            "SELECT attempt, outcome, http_status, error, duration_ms FROM ae_events.delivery_attempts
              WHERE outbox_id = $1 ORDER BY id",
            &[&ids[0]],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect();
    assert_eq!(log.len(), 20, "the newest 20 are kept: {log:?}");
    assert_eq!(log[0].0, 6);
    assert_eq!(log[19].0, 25);
    assert_eq!(log[19].1, "dead");
    assert!(log[..19].iter().all(|a| a.1 == "failed"));
    assert_eq!(log[19].4, Some(250), "each attempt's duration");
    assert!(log.iter().all(|a| a.2 == Some(500)
        && a.3.starts_with("HTTP 500: you sent [redacted] (attempt ")
        && !a.3.contains("tok-123456")));
    assert_eq!(
        int(
            &mut client,
            &format!(
                "SELECT count(*) FROM ae_events.delivery_attempts WHERE outbox_id = {}",
                ids[1]
            )
        ),
        0,
        "no row for a delivered attempt"
    );

    // Seen one by one on the event page: 20 failed, newest first.
    let page: Vec<(i32, String)> = client
        .query(
            "SELECT a.attempt, a.outcome FROM ae_events.outbox AS o
              CROSS JOIN LATERAL ae_events.console_attempts(o.event_id) AS a WHERE o.id = $1",
            &[&ids[0]],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(page.len(), 20);
    assert_eq!(page[0], (25, "dead".to_string()));
    let delivered: Vec<(i32, String, Option<i32>)> = client
        .query(
            "SELECT a.attempt, a.outcome, a.http_status FROM ae_events.outbox AS o
              CROSS JOIN LATERAL ae_events.console_attempts(o.event_id) AS a WHERE o.id = $1",
            &[&ids[1]],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(delivered, [(1, "delivered".to_string(), Some(200))]);

    // The seed's event (candidate 101) failed with its email echoed: erase_candidate erases the
    // log's text too; an attempt recorded after the erasure is erased as well.
    record(
        &mut client,
        "hook",
        hook,
        &[(
            seed,
            "pending",
            1,
            0.0,
            Some(422),
            Some("bad email candidate@example.com"),
            None,
        )],
    );
    client
        .batch_execute("SELECT ae_events.erase_candidate(101)")
        .unwrap();
    record(
        &mut client,
        "hook",
        hook,
        &[(
            seed,
            "pending",
            2,
            0.0,
            Some(422),
            Some("bad email candidate@example.com"),
            None,
        )],
    );
    let texts: Vec<String> = client
        .query(
            "SELECT error FROM ae_events.delivery_attempts WHERE outbox_id = $1 ORDER BY id",
            &[&seed],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(texts, ["[erased]", "[erased]"]);

    // A test event's failed attempts are logged too.
    let test_event: String = client
        .query_one("SELECT ae_events.send_test_event('hook')::text", &[])
        .unwrap()
        .get(0);
    client
        .execute(
            "SELECT ae_events.relay_record_tests('hook', $1, $2,
                 ARRAY(SELECT id FROM ae_events.test_events WHERE webhook_id = $3::text::uuid),
                 '{pending}', '{1}', ARRAY[now()], '{503}', '{\"busy: Bearer tok-123456\"}',
                 ARRAY[now()], '{77}')",
            &[&RELAY, &hook, &test_event],
        )
        .unwrap();
    let test_attempt: (String, Option<i32>, Option<i32>) = {
        let r = client
            .query_one(
                "SELECT error, http_status, duration_ms FROM ae_events.console_attempts($1::text::uuid)",
                &[&test_event],
            )
            .unwrap();
        (r.get(0), r.get(1), r.get(2))
    };
    assert_eq!(
        test_attempt,
        ("busy: [redacted]".to_string(), Some(503), Some(77))
    );
    // ... but they say nothing of the endpoint's state: its last failure is still the event's.
    let last_failure: Option<i32> = client
        .query_one(
            "SELECT last_failure_status FROM ae_events.console_endpoints WHERE endpoint = 'hook'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(last_failure, Some(422));

    // prune(): the deliveries of pruned events take their attempts; the rest stay. (The relay
    // would have moved the endpoint's cursor past them.)
    client
        .execute(
            "UPDATE ae_events.outbox SET occurred_at = now() - interval '3 days' WHERE id = ANY($1)",
            &[&vec![ids[0], ids[1]]],
        )
        .unwrap();
    client
        .batch_execute(
            "UPDATE ae_events.endpoints SET cursor_txid = (SELECT max(txid) FROM ae_events.outbox),
                                            cursor_id = (SELECT max(id) FROM ae_events.outbox)",
        )
        .unwrap();
    client
        .batch_execute("SELECT ae_events.prune('1 day')")
        .unwrap();
    assert_eq!(
        int(
            &mut client,
            &format!(
                "SELECT count(*) FROM ae_events.delivery_attempts WHERE outbox_id = {}",
                ids[0]
            )
        ),
        0
    );
    assert_eq!(
        int(
            &mut client,
            &format!("SELECT count(*) FROM ae_events.delivery_attempts WHERE outbox_id = {seed}")
        ),
        2,
        "a younger event keeps its attempts"
    );

    // drop_endpoint: its log and counts go; one created again under its name starts empty.
    client
        .batch_execute(
            "SELECT ae_events.drop_endpoint('hook');
             SELECT ae_events.create_endpoint('hook', 'http://127.0.0.1:9/hook');",
        )
        .unwrap();
    assert_eq!(
        int(
            &mut client,
            "SELECT (SELECT count(*) FROM ae_events.delivery_attempts)
                  + (SELECT count(*) FROM ae_events.endpoint_activity)"
        ),
        0
    );
}

#[test]
fn the_counts_per_endpoint_equal_the_deliveries_and_are_kept_seven_days() {
    let (_database, mut client) = seeded_database("console_counts");
    client
        .batch_execute(
            "SELECT ae_events.create_endpoint('a', 'http://127.0.0.1:9/a');
             SELECT ae_events.create_endpoint('b', 'http://127.0.0.1:9/b');",
        )
        .unwrap();
    let a = lease(&mut client, "a");
    let b = lease(&mut client, "b");
    let ids = events(&mut client, 20_000, 60);
    // Outcomes spread over 30 hours: now, 50 minutes, 3 hours and 26 hours ago, in batches.
    let mut expected_failures = [0i64; 2];
    for (n, id) in ids.iter().enumerate() {
        let ago = [0.0, 3000.0, 10_800.0, 93_600.0][n % 4];
        let (endpoint, endpoint_id, slot) = if n % 3 == 0 { ("b", b, 1) } else { ("a", a, 0) };
        let outcome: Outcome = match n % 5 {
            0 => (*id, "pending", 1, ago, Some(500), Some("boom"), Some(3)),
            1 => (
                *id,
                "dead",
                1,
                ago,
                None,
                Some("connection refused"),
                Some(3),
            ),
            _ => (*id, "delivered", 1, ago, Some(204), None, Some(3)),
        };
        if outcome.1 != "delivered" {
            expected_failures[slot] += 1;
        }
        record(&mut client, endpoint, endpoint_id, &[outcome]);
    }
    // A retry delivering one that failed.
    let retried = ids[0];
    record(
        &mut client,
        "b",
        b,
        &[(retried, "delivered", 2, 0.0, Some(200), None, None)],
    );
    // Each endpoint's counts equal the deliveries' and the attempt log's.
    for (endpoint, failures) in [("a", expected_failures[0]), ("b", expected_failures[1])] {
        let row = client
            .query_one(
                "SELECT (SELECT sum(delivered) FROM ae_events.endpoint_activity WHERE endpoint = $1)::bigint,
                        (SELECT count(*) FROM ae_events.deliveries WHERE endpoint = $1 AND status = 'delivered'),
                        (SELECT sum(failed) FROM ae_events.endpoint_activity WHERE endpoint = $1)::bigint,
                        (SELECT count(*) FROM ae_events.delivery_attempts WHERE endpoint = $1),
                        (SELECT sum(dead) FROM ae_events.endpoint_activity WHERE endpoint = $1)::bigint,
                        (SELECT count(*) FROM ae_events.deliveries WHERE endpoint = $1 AND status = 'dead'),
                        (SELECT sum(delivered) FROM ae_events.console_activity(24, $1))::bigint,
                        (SELECT count(*) FROM ae_events.deliveries WHERE endpoint = $1 AND status = 'delivered'
                            AND delivered_at >= date_bin('1 hour', now(), '2000-01-01') - interval '23 hours'),
                        (SELECT sum(failed) FROM ae_events.console_activity(24, $1))::bigint,
                        (SELECT count(*) FROM ae_events.delivery_attempts WHERE endpoint = $1
                            AND attempted_at >= date_bin('1 hour', now(), '2000-01-01') - interval '23 hours'),
                        (SELECT delivered_last_hour FROM ae_events.console_endpoints WHERE endpoint = $1),
                        (SELECT count(*) FROM ae_events.deliveries WHERE endpoint = $1 AND status = 'delivered'
                            AND delivered_at >= date_bin('10 minutes', now() - interval '1 hour', '2000-01-01')),
                        (SELECT failed_last_hour FROM ae_events.console_endpoints WHERE endpoint = $1),
                        (SELECT count(*) FROM ae_events.delivery_attempts WHERE endpoint = $1
                            AND attempted_at >= date_bin('10 minutes', now() - interval '1 hour', '2000-01-01')),
                        (SELECT last_success_at = (SELECT max(delivered_at) FROM ae_events.deliveries WHERE endpoint = $1)
                           FROM ae_events.console_endpoints WHERE endpoint = $1)",
                &[&endpoint],
            )
            .unwrap();
        let counts: Vec<i64> = (0..14).map(|i| row.get(i)).collect();
        for pair in counts.chunks(2) {
            assert_eq!(pair[0], pair[1], "{endpoint}: {counts:?}");
        }
        assert_eq!(counts[2], failures, "{endpoint}");
        assert!(
            counts[6] > 0 && counts[6] < counts[0],
            "{endpoint}: 24 h, not 26"
        );
        assert!(row.get::<_, bool>(14), "{endpoint}: last success");
    }
    // The chart: 24 hourly rows per endpoint, zero-filled, oldest first.
    let chart: Vec<(String, i64)> = client
        .query(
            "SELECT endpoint, delivered FROM ae_events.console_activity(24)",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(chart.len(), 48);
    assert!(chart.iter().filter(|c| c.1 == 0).count() > 40);
    for hours in ["0", "169", "NULL"] {
        let error = client
            .query(
                &format!("SELECT * FROM ae_events.console_activity({hours})"),
                &[],
            )
            .unwrap_err();
        assert_eq!(sqlstate(&error), "22023");
    }
    // prune() keeps 7 days of counts.
    client
        .batch_execute(
            "UPDATE ae_events.endpoint_activity SET bucket_start = bucket_start - interval '7 days'
              WHERE bucket_start < now() - interval '1 day';
             SELECT ae_events.prune('30 days');",
        )
        .unwrap();
    assert_eq!(
        int(
            &mut client,
            "SELECT count(*) FROM ae_events.endpoint_activity WHERE bucket_start < now() - interval '7 days'"
        ),
        0
    );
    assert!(
        int(
            &mut client,
            "SELECT count(*) FROM ae_events.endpoint_activity"
        ) > 0
    );
}

/// Every row the console's views and functions return for the database, as text.
fn everything_the_console_reads(client: &mut Client) -> String {
    let mut text = String::new();
    for query in [
        "SELECT c::text FROM ae_events.console_endpoints AS c",
        "SELECT c::text FROM ae_events.console_activity(24) AS c",
        "SELECT c::text FROM ae_events.endpoint_status AS e, ae_events.console_deliveries(e.endpoint) AS c",
        "SELECT c::text FROM ae_events.endpoint_status AS e, ae_events.console_deliveries(e.endpoint, 'dead') AS c",
        "SELECT c::text FROM ae_events.endpoint_status AS e, ae_events.console_test_events(e.endpoint) AS c",
        "SELECT c::text FROM ae_events.outbox AS o, ae_events.console_event(o.event_id) AS c",
        "SELECT c::text FROM ae_events.outbox AS o, ae_events.console_event_deliveries(o.event_id) AS c",
        "SELECT c::text FROM ae_events.outbox AS o, ae_events.console_attempts(o.event_id) AS c",
        "SELECT c::text FROM ae_events.delivery_status AS t, ae_events.console_event(t.event_id) AS c WHERE t.is_test",
        "SELECT c::text FROM ae_events.delivery_status AS t, ae_events.console_event_deliveries(t.event_id) AS c WHERE t.is_test",
        "SELECT c::text FROM ae_events.delivery_status AS t, ae_events.console_attempts(t.event_id) AS c WHERE t.is_test",
        "SELECT c::text FROM ae_events.outbox AS o, ae_events.console_instance(o.aggregate_id) AS c",
        "SELECT c::text FROM ae_events.endpoint_status AS e, ae_events.console_search(e.endpoint) AS c",
    ] {
        for row in client.query(query, &[]).unwrap() {
            text.push_str(&row.get::<_, String>(0));
            text.push('\n');
        }
    }
    text
}

#[test]
fn what_the_console_reads_holds_no_secret_header_value_or_user_info() {
    let (_database, mut client) = seeded_database("console_secrets");
    let secret: String = client
        .query_one(
            "SELECT ae_events.create_endpoint('hook', 'http://127.0.0.1:9/hook')",
            &[],
        )
        .unwrap()
        .get(0);
    client
        .batch_execute(
            "SELECT ae_events.alter_endpoint('hook', headers => '{\"x-api-key\": \"hdr-value-987654\"}');",
        )
        .unwrap();
    let hook = lease(&mut client, "hook");
    let ids = events(&mut client, 30_000, 3);
    // (The relay never sends the secret: it signs with it. A header value can come back.)
    let echo = "HTTP 401: got x-api-key hdr-value-987654".to_string();
    record(
        &mut client,
        "hook",
        hook,
        &[
            (ids[0], "pending", 1, 0.0, Some(401), Some(&echo), Some(9)),
            (ids[1], "dead", 3, 0.0, Some(401), Some(&echo), Some(9)),
            (ids[2], "delivered", 1, 0.0, Some(200), None, Some(9)),
        ],
    );
    client
        .batch_execute("SELECT ae_events.send_test_event('hook')")
        .unwrap();
    // A URL with user info (written before the checks refused them, say) is shown without it.
    client
        .batch_execute(
            "UPDATE ae_events.endpoints SET url = 'https://user:pass-word-42@example.com/hook'",
        )
        .unwrap();
    client.batch_execute("SET ROLE ae_events_reader").unwrap();
    let text = everything_the_console_reads(&mut client);
    client.batch_execute("RESET ROLE").unwrap();
    assert!(text.contains("x-api-key"), "header names are shown");
    assert!(text.contains("https://example.com/hook"), "{text}");
    assert!(text.contains("[redacted]"));
    for hidden in [
        secret.as_str(),
        "whsec_",
        "hdr-value-987654",
        "pass-word-42",
        "user:",
    ] {
        assert!(!text.contains(hidden), "{hidden} in:\n{text}");
    }
}

/// Create a role (cluster-wide) if it does not exist yet.
fn role(client: &mut Client, name: &str, member_of: Option<&str>) {
    client
        .batch_execute(&format!(
            "DO $$ BEGIN CREATE ROLE {name} NOLOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$;"
        ))
        .unwrap();
    if let Some(group) = member_of {
        client
            .batch_execute(&format!("GRANT {group} TO {name}"))
            .unwrap();
    }
}

#[test]
fn an_operator_acts_through_the_api_and_a_reader_gets_42501_for_every_action() {
    let (_database, mut client) = seeded_database("console_roles");
    client
        .batch_execute("SELECT ae_events.create_endpoint('hook', 'http://127.0.0.1:9/hook');")
        .unwrap();
    let hook = lease(&mut client, "hook");
    let ids = events(&mut client, 40_000, 3);
    record(
        &mut client,
        "hook",
        hook,
        &[
            (ids[0], "dead", 3, 0.0, Some(500), Some("boom"), None),
            (ids[1], "dead", 3, 0.0, Some(500), Some("boom"), None),
            (ids[2], "delivered", 1, 0.0, Some(200), None, None),
        ],
    );
    let event: String = client
        .query_one(
            "SELECT event_id::text FROM ae_events.outbox WHERE id = $1",
            &[&ids[2]],
        )
        .unwrap()
        .get(0);
    role(
        &mut client,
        "console_test_operator",
        Some("ae_events_operator"),
    );
    role(&mut client, "console_test_reader", Some("ae_events_reader"));
    role(&mut client, "console_test_nobody", None);
    let actions = [
        format!("SELECT ae_events.redeliver('hook', ARRAY['{event}']::uuid[])"),
        "SELECT ae_events.redeliver_dead_letters('hook')".to_string(),
        "SELECT ae_events.replay_endpoint('hook', now() - interval '1 hour')".to_string(),
        "SELECT ae_events.disable_endpoint('hook', 'maintenance')".to_string(),
        "SELECT ae_events.enable_endpoint('hook')".to_string(),
        "SELECT ae_events.send_test_event('hook')".to_string(),
    ];
    let management = [
        "SELECT ae_events.create_endpoint('other', 'http://127.0.0.1:9/other')",
        "SELECT ae_events.alter_endpoint('hook', url => 'http://127.0.0.1:9/elsewhere')",
        "SELECT ae_events.drop_endpoint('hook')",
        "SELECT ae_events.rotate_endpoint_secret('hook')",
        "SELECT secret FROM ae_events.endpoint_secrets",
        "SELECT headers FROM ae_events.endpoints",
        "SELECT * FROM ae_events.delivery_attempts",
    ];
    let reads = [
        "SELECT * FROM ae_events.console_endpoints",
        "SELECT * FROM ae_events.console_deliveries('hook')",
        "SELECT * FROM ae_events.console_search('hook')",
    ];

    // A reader reads and gets 42501 from the database for every action and management call.
    client
        .batch_execute("SET ROLE console_test_reader")
        .unwrap();
    for read in reads {
        client.query(read, &[]).unwrap();
    }
    for call in actions.iter().map(String::as_str).chain(management) {
        let error = client.query(call, &[]).unwrap_err();
        assert_eq!(sqlstate(&error), "42501", "{call}: {error}");
    }
    // A role with neither grant reads nothing.
    client
        .batch_execute("RESET ROLE; SET ROLE console_test_nobody")
        .unwrap();
    for read in reads {
        let error = client.query(read, &[]).unwrap_err();
        assert_eq!(sqlstate(&error), "42501", "{read}: {error}");
    }
    // The operator reads what the reader reads, and acts; it cannot manage endpoints or read
    // secrets and header values.
    client
        .batch_execute("RESET ROLE; SET ROLE console_test_operator")
        .unwrap();
    for read in reads {
        client.query(read, &[]).unwrap();
    }
    client
        .query("SELECT * FROM ae_events.endpoint_status", &[])
        .unwrap();
    let mut results = Vec::new();
    for call in &actions {
        let row = client.query_one(call.as_str(), &[]).unwrap();
        results.push(
            if *row.columns()[0].type_() == postgres::types::Type::INT8 {
                row.get::<_, i64>(0).to_string()
            } else {
                "ok".to_string()
            },
        );
    }
    assert_eq!(results[0], "1", "redeliver");
    assert_eq!(results[1], "2", "both dead letters queued again");
    for call in management {
        let error = client.query(call, &[]).unwrap_err();
        assert_eq!(sqlstate(&error), "42501", "{call}: {error}");
    }
    client.batch_execute("RESET ROLE").unwrap();
    assert_eq!(
        int(
            &mut client,
            "SELECT count(*) FROM ae_events.deliveries WHERE status = 'dead'"
        ),
        0
    );
    assert_eq!(
        int(
            &mut client,
            "SELECT count(*) FROM ae_events.test_events WHERE requested_by = 'console_test_operator'"
        ),
        1
    );
}

#[test]
fn search_resolves_events_instances_and_endpoints_and_never_fails() {
    let (_database, mut client) = seeded_database("console_search");
    client
        .batch_execute(
            "SELECT ae_events.create_endpoint('Recruiter-Hook', 'http://127.0.0.1:9/r');
             SELECT ae_events.create_endpoint('recruiter-backup', 'http://127.0.0.1:9/b');
             SELECT ae_events.create_endpoint('recruiter', 'http://127.0.0.1:9/c');
             SELECT ae_events.create_endpoint('789', 'http://127.0.0.1:9/n');",
        )
        .unwrap();
    let event: String = client
        .query_one(
            "SELECT event_id::text FROM ae_events.outbox WHERE aggregate_id = 789",
            &[],
        )
        .unwrap()
        .get(0);
    let search = |client: &mut Client, q: Option<&str>| -> Vec<(String, String)> {
        client
            .query("SELECT kind, key FROM ae_events.console_search($1)", &[&q])
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
    };
    let pair = |kind: &str, key: &str| (kind.to_string(), key.to_string());
    assert_eq!(search(&mut client, Some(&event)), [pair("event", &event)]);
    assert_eq!(
        search(&mut client, Some(&format!(" {} ", event.to_uppercase()))),
        [pair("event", &event)]
    );
    assert_eq!(
        search(&mut client, Some("789")),
        [pair("instance", "789"), pair("endpoint", "789")]
    );
    assert_eq!(
        search(&mut client, Some("recruiter-hook")),
        [pair("endpoint", "Recruiter-Hook")]
    );
    let found = search(&mut client, Some("recruiter"));
    assert_eq!(found.len(), 3);
    assert_eq!(
        found[0],
        pair("endpoint", "recruiter"),
        "the exact name first"
    );
    assert_eq!(
        search(&mut client, Some("BACKUP")),
        [pair("endpoint", "recruiter-backup")]
    );
    let long = "9".repeat(10_000);
    let hostile = [
        None,
        Some(""),
        Some("   "),
        Some("00000000-0000-0000-0000-00000000000g"),
        Some("{01a24617-c3be-742b-acfb-5e23b6e177f2"),
        Some("99999999999999999999"),
        Some("9223372036854775808"),
        Some("-1"),
        Some("1e5"),
        Some("%"),
        Some("_"),
        Some("\\"),
        Some("'; DROP TABLE ae_events.outbox; --"),
        Some("<script>alert(1)</script>"),
        Some(long.as_str()),
        Some("\u{1F600}\u{200B}"),
    ];
    for q in hostile {
        assert!(search(&mut client, q).is_empty(), "{q:?}");
    }
    assert_eq!(
        search(&mut client, Some("9223372036854775807")),
        [],
        "the largest bigint: no instance, no error"
    );
}

/// Shared buffers (hit + read) a query touches, measured on its second run (the first one also
/// reads the catalog). Plans are held to index access, as the planner chooses at scale: on a
/// table of 2,000 rows it would rather read it whole (a hash join), which is cheap there but no
/// measure; a query that has to read every delivery still reads them all.
fn buffers(client: &mut Client, query: &str) -> i64 {
    client
        .batch_execute(
            "SET enable_seqscan = off; SET enable_bitmapscan = off;
             SET enable_hashjoin = off; SET enable_mergejoin = off;",
        )
        .unwrap();
    buffers_touched(client, query);
    buffers_touched(client, query)
}

/// The pages' queries of a database with 10 endpoints and `per_endpoint` deliveries each (5
/// dead and 5 pending, the rest delivered over the last 24 hours), and its counts, built
/// set-based. The dead letters and pending deliveries are as many at both sizes: counting them
/// reads each (up to 1000, the counts' cap); what must not grow is the rest.
/// Also: `/`'s buffers and e1's backlog once e1's cursor is back at the start (every event
/// waiting for it).
fn console_buffers(per_endpoint: i64) -> (Vec<(String, i64)>, i64, i64) {
    let (_database, mut client) = seeded_database("console_cheap");
    client
        .batch_execute(&format!(
            "SELECT ae_events.create_endpoint('e' || n, 'http://127.0.0.1:9/' || n)
               FROM generate_series(1, 10) AS n;
             INSERT INTO ae_events.outbox (event_id, subscription_key, event_type, aggregate_type,
                                           aggregate_id, snapshot_version, payload, occurred_at, txid)
             SELECT gen_random_uuid(), 'ae.test_instance.created', 'ae_test_instance_created',
                    'test_instance', 100000 + g, 1, jsonb_build_object('id', 100000 + g),
                    now() - (g * interval '86 seconds' / {per_endpoint} * 1000), pg_current_xact_id()
               FROM generate_series(1, {per_endpoint}) AS g;
             INSERT INTO ae_events.deliveries (endpoint, outbox_id, aggregate_id, status, attempts,
                                               first_attempt_at, last_attempt_at, last_status,
                                               next_attempt_at, delivered_at, dead_at)
             SELECT e.endpoint, o.id, o.aggregate_id, s.status, 1, o.occurred_at, o.occurred_at,
                    CASE WHEN s.status = 'delivered' THEN 200 ELSE 500 END,
                    CASE WHEN s.status = 'pending' THEN now() END,
                    CASE WHEN s.status = 'delivered' THEN o.occurred_at END,
                    CASE WHEN s.status = 'dead' THEN o.occurred_at END
               FROM ae_events.endpoints AS e
              CROSS JOIN ae_events.outbox AS o
              CROSS JOIN LATERAL (SELECT CASE WHEN o.aggregate_id % 40 = 0 AND o.aggregate_id < 100200 THEN 'dead'
                                              WHEN o.aggregate_id % 40 = 1 AND o.aggregate_id < 100200 THEN 'pending'
                                              ELSE 'delivered' END AS status) AS s
              WHERE o.aggregate_id >= 100000;
             INSERT INTO ae_events.delivery_attempts (endpoint, outbox_id, attempt, attempted_at, outcome, http_status, error)
             SELECT d.endpoint, d.outbox_id, 1, d.last_attempt_at,
                    CASE WHEN d.status = 'dead' THEN 'dead' ELSE 'failed' END, 500, 'boom'
               FROM ae_events.deliveries AS d WHERE d.status <> 'delivered';
             INSERT INTO ae_events.endpoint_activity (endpoint, bucket_start, delivered, failed, dead, last_delivered_at)
             SELECT d.endpoint, date_bin('10 minutes', d.last_attempt_at, '2000-01-01'),
                    count(*) FILTER (WHERE d.status = 'delivered'),
                    count(*) FILTER (WHERE d.status <> 'delivered'),
                    count(*) FILTER (WHERE d.status = 'dead'),
                    max(d.delivered_at)
               FROM ae_events.deliveries AS d GROUP BY 1, 2;
             UPDATE ae_events.endpoints
                SET cursor_txid = (SELECT max(txid) FROM ae_events.outbox),
                    cursor_id = (SELECT max(id) FROM ae_events.outbox);"
        ))
        .unwrap();
    client
        .batch_execute(
            "VACUUM ANALYZE ae_events.outbox, ae_events.deliveries, ae_events.delivery_attempts,
                            ae_events.endpoint_activity;",
        )
        .unwrap();
    let middle: i64 = int(
        &mut client,
        "SELECT percentile_disc(0.5) WITHIN GROUP (ORDER BY id) FROM ae_events.outbox",
    );
    let event: String = client
        .query_one(
            &format!("SELECT event_id::text FROM ae_events.outbox WHERE id = {middle}"),
            &[],
        )
        .unwrap()
        .get(0);
    let instance = int(
        &mut client,
        &format!("SELECT aggregate_id FROM ae_events.outbox WHERE id = {middle}"),
    );
    let pages = [
        (
            "/".to_string(),
            "SELECT * FROM ae_events.console_endpoints".to_string(),
        ),
        (
            "/ chart".to_string(),
            "SELECT * FROM ae_events.console_activity(24)".to_string(),
        ),
        (
            "endpoint".to_string(),
            "SELECT * FROM ae_events.console_endpoints WHERE endpoint = 'e3'".to_string(),
        ),
        (
            "deliveries".to_string(),
            "SELECT * FROM ae_events.console_deliveries('e3')".to_string(),
        ),
        (
            "deliveries, a later page".to_string(),
            format!("SELECT * FROM ae_events.console_deliveries('e3', NULL, {middle})"),
        ),
        (
            "dead letters".to_string(),
            "SELECT * FROM ae_events.console_deliveries('e3', 'dead')".to_string(),
        ),
        (
            "event".to_string(),
            format!("SELECT * FROM ae_events.console_event_deliveries('{event}')"),
        ),
        (
            "attempts".to_string(),
            format!("SELECT * FROM ae_events.console_attempts('{event}')"),
        ),
        (
            "instance".to_string(),
            format!("SELECT * FROM ae_events.console_instance({instance})"),
        ),
        (
            "search".to_string(),
            format!("SELECT * FROM ae_events.console_search('{instance}')"),
        ),
    ]
    .into_iter()
    .map(|(page, query)| {
        let used = buffers(&mut client, &query);
        (page, used)
    })
    .collect();
    client
        .batch_execute(
            "UPDATE ae_events.endpoints SET cursor_txid = '0', cursor_id = -1 WHERE endpoint = 'e1'",
        )
        .unwrap();
    let behind = buffers(&mut client, "SELECT * FROM ae_events.console_endpoints");
    let backlog = int(
        &mut client,
        "SELECT backlog FROM ae_events.console_endpoints WHERE endpoint = 'e1'",
    );
    (pages, behind, backlog)
}

#[test]
fn the_pages_queries_touch_about_as_many_buffers_at_50000_deliveries_as_at_2000() {
    let (small, _, small_backlog) = console_buffers(200);
    let (large, behind, large_backlog) = console_buffers(5_000);
    for ((page, at_2000), (_, at_50000)) in small.iter().zip(&large) {
        eprintln!("{page}: {at_2000} buffers at 2,000 deliveries, {at_50000} at 50,000");
        assert!(
            *at_50000 <= at_2000 * 3 / 2 + 30,
            "{page}: {at_2000} buffers at 2,000 deliveries, {at_50000} at 50,000"
        );
    }
    // An endpoint 5,000 events behind: its backlog is counted up to 1000, and `/` reads about
    // 1000 more outbox rows, not 5,000.
    // (At 2,000: its 5 pending deliveries and the 201 events, the seed's included.)
    assert_eq!((small_backlog, large_backlog), (206, 1000));
    eprintln!("/ with an endpoint 5,000 events behind: {behind} buffers");
    assert!(behind <= large[0].1 + 1_500, "{behind} vs {}", large[0].1);
}
