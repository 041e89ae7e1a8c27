//! What SQL accepts is what a relay can act on, and relays act only for themselves (issue 21,
//! rows 2, 3, 6, 7, 8, 9, 10): settings bounded at the boundary, header names compared as
//! receivers read them, relay ids bound to their role, leases bounded, endpoints re-created
//! under a name being new endpoints to running relays, header values masked in stored errors.

mod support;

use postgres::Client;
use std::time::Duration;
use support::*;

const WAIT: Duration = Duration::from_secs(30);

fn refused(client: &mut Client, query: &str, code: &str, message: &str) {
    let error = client.query(query, &[]).unwrap_err();
    let text = error_message(&error);
    assert_eq!(sqlstate(&error), code, "{query}: {text}");
    assert!(
        text.starts_with("ae_events: ") && text.contains(message),
        "{query}: {text}"
    );
}

#[test]
fn every_value_sql_accepts_is_one_the_relay_can_act_on() {
    let (_database, mut client) = delivery_database("boundary_values");
    client
        .query_one(
            "SELECT ae_events.create_endpoint('kept', 'http://127.0.0.1:1/')",
            &[],
        )
        .unwrap();
    let settings = |client: &mut Client| -> String {
        client
            .query_one(
                "SELECT row(e.*)::text FROM ae_events.endpoints AS e WHERE endpoint = 'kept'",
                &[],
            )
            .unwrap()
            .get(0)
    };
    let before = settings(&mut client);
    let cases = [
        // Rate limits a rate limiter cannot represent (1e-12 made every relay panic).
        ("alter_endpoint('kept', rate_limit => 1e-12)", "rate_limit must be between 0.001 and 100000"),
        ("alter_endpoint('kept', rate_limit => 5e-324)", "rate_limit must be between"),
        ("alter_endpoint('kept', rate_limit => 0.0009)", "rate_limit must be between"),
        ("alter_endpoint('kept', rate_limit => 'NaN')", "rate_limit must be between"),
        ("alter_endpoint('kept', rate_limit => 'Infinity')", "rate_limit must be between"),
        // Durations whose arithmetic overflows timestamps (10000 years: 22008 in relay_record).
        ("alter_endpoint('kept', disable_after => '10000 years')", "disable_after must be more than 0 and at most 366 days"),
        ("alter_endpoint('kept', disable_after => '367 days')", "disable_after must be"),
        ("rotate_endpoint_secret('kept', grace => '10000 years')", "grace must be between 0 and 366 days"),
        // Sizes.
        ("alter_endpoint('kept', retry_schedule => array_fill('1 s'::interval, ARRAY[1001]))", "at most 1000 delays"),
        ("alter_endpoint('kept', headers => (SELECT jsonb_object_agg('x-h' || i, 'v') FROM generate_series(1, 51) AS i))", "at most 50 headers"),
        ("alter_endpoint('kept', headers => jsonb_build_object('x-big', repeat('v', 20000)))", "at most 50 headers and 16 kB"),
        ("alter_endpoint('kept', url => 'http://x/' || repeat('a', 3000))", "is not an http:// or https:// URL"),
        ("create_endpoint('long', 'http://x/', NULL, '$.a == \"' || repeat('a', 5000) || '\"')", "at most 4096 characters"),
        // Names that would forge log lines or terminal output.
        ("create_endpoint(E'a\\nFAKE ERROR line', 'http://x/')", "without control characters"),
        ("create_endpoint(E'esc\\x1b[2J', 'http://x/')", "without control characters"),
        ("create_endpoint(repeat('n', 201), 'http://x/')", "at most 200 characters"),
        // Header names that collide with the relay's own as a CGI/WSGI receiver reads them.
        ("alter_endpoint('kept', headers => '{\"webhook_id\": \"forged\"}')", "is set by the relay or by HTTP itself"),
        ("alter_endpoint('kept', headers => '{\"WEBHOOK_SIGNATURE\": \"v1,x\"}')", "is set by the relay"),
        ("alter_endpoint('kept', headers => '{\"ae_aggregate_id\": \"1\"}')", "is set by the relay"),
        ("alter_endpoint('kept', headers => '{\"Ae_Event-Type\": \"x\"}')", "is set by the relay"),
        ("alter_endpoint('kept', headers => '{\"Transfer_Encoding\": \"chunked\"}')", "is set by the relay"),
        // Hop-by-hop and framing headers are HTTP's.
        ("alter_endpoint('kept', headers => '{\"keep-alive\": \"timeout=5\"}')", "by HTTP itself"),
        ("alter_endpoint('kept', headers => '{\"TE\": \"trailers\"}')", "by HTTP itself"),
        ("alter_endpoint('kept', headers => '{\"upgrade\": \"h2c\"}')", "by HTTP itself"),
        ("alter_endpoint('kept', headers => '{\"proxy-authorization\": \"Basic x\"}')", "by HTTP itself"),
        ("alter_endpoint('kept', headers => '{\"expect\": \"100-continue\"}')", "by HTTP itself"),
        // Control characters in a value.
        ("alter_endpoint('kept', headers => '{\"x-a\": \"a\\u001bb\"}')", "without control characters"),
        ("alter_endpoint('kept', headers => '{\"x-a\": \"a\\u007fb\"}')", "without control characters"),
    ];
    for (call, message) in cases {
        refused(
            &mut client,
            &format!("SELECT ae_events.{call}"),
            "22023",
            message,
        );
    }
    assert_eq!(settings(&mut client), before, "nothing half-changed");
    let endpoints: i64 = client
        .query_one("SELECT count(*) FROM ae_events.endpoints", &[])
        .unwrap()
        .get(0);
    assert_eq!(endpoints, 1, "nothing half-made");
    // The bounds themselves are accepted, and so are ordinary names and headers.
    client
        .batch_execute(
            "SELECT ae_events.alter_endpoint('kept', rate_limit => 0.001, disable_after => '366 days',
                                             headers => '{\"authorization\": \"Bearer t\\tx\", \"x_tenant\": \"7\"}');
             SELECT ae_events.rotate_endpoint_secret('kept', grace => '366 days');
             SELECT ae_events.create_endpoint('Zürich east · 2', 'http://x/');",
        )
        .unwrap();
}

#[test]
fn a_disable_after_from_before_the_bound_still_records_and_keeps_the_schedule() {
    let cluster = Cluster::shared();
    let (database, mut client) = delivery_database("boundary_disable_after");
    let receiver = Receiver::start(|_, _| Answer::status(500));
    create_endpoint(
        &mut client,
        "patient",
        &receiver.url("/"),
        "{300ms,300ms,1h}",
    );
    // A row written before 0.7.1 bounded it (the DBA's UPDATE stands in for that).
    client
        .execute(
            "UPDATE ae_events.endpoints SET disable_after = '10000 years'",
            &[],
        )
        .unwrap();
    insert_instance(&mut client, 1);
    let relay = Relay::start(cluster, &database, &[]);
    wait_until_sql(
        &mut client,
        "three attempts recorded",
        WAIT,
        "SELECT EXISTS (SELECT FROM ae_events.delivery_status WHERE attempts = 3)",
    );
    // The third failure waits an hour: nothing more is sent (0.7.1 before this: relay_record
    // failed with 22008 on every outcome, and the event went out again and again).
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(receiver.count(), 3, "{}", relay.log());
    let row = client
        .query_one(
            "SELECT d.status, d.next_attempt_at > now() + interval '50 minutes', e.enabled
               FROM ae_events.delivery_status AS d, ae_events.endpoint_status AS e",
            &[],
        )
        .unwrap();
    assert_eq!(
        (
            row.get::<_, String>(0),
            row.get::<_, bool>(1),
            row.get::<_, bool>(2)
        ),
        ("pending".to_owned(), true, true)
    );
}

#[test]
fn a_relay_acts_only_under_ids_of_its_own_role_and_leases_are_bounded() {
    let cluster = Cluster::shared();
    let (database, mut client) = delivery_database("boundary_relay_roles");
    create_relay_role(&mut client, "relay_one");
    create_relay_role(&mut client, "relay_two");
    let receiver = Receiver::ok();
    create_endpoint(&mut client, "held", &receiver.url("/"), "{1s}");
    let relay = Relay::start_as(cluster, &database, "relay_one", &["--relay-id", "one"]);
    wait_until_sql(
        &mut client,
        "relay one holds the endpoint",
        WAIT,
        "SELECT coalesce(relay = 'one', false) FROM ae_events.endpoint_status",
    );
    let mut other = cluster.connect_as(&database, "relay_two");
    for query in [
        "SELECT ae_events.relay_release('one')",
        "SELECT * FROM ae_events.relay_lease('one', '5 min')",
        "SELECT * FROM ae_events.relay_due('held', 'one', 10, '{}', NULL, 1)",
        "SELECT * FROM ae_events.relay_fetch('held', 'one', 0, '0', 0, 10, 1000000, 1)",
        "SELECT ae_events.relay_record('held', 'one', '{1}', '{1}', '{delivered}', '{1}', ARRAY[now()],
                                       '{200}', '{NULL}', '{NULL}', NULL, NULL, NULL, NULL, 1)",
    ] {
        refused(&mut other, query, "42501", "relay 'one' runs as another role");
    }
    let status = other
        .query("SELECT * FROM ae_events.relay_status('one')", &[])
        .unwrap();
    assert!(status.is_empty(), "another role's relay shows nothing");
    refused(
        &mut other,
        "SELECT * FROM ae_events.relay_lease('two', '1 hour')",
        "22023",
        "a lease lasts at most 10 minutes",
    );
    refused(
        &mut other,
        "SELECT * FROM ae_events.relay_lease(E'two\\nthree', '5 s')",
        "22023",
        "without control characters",
    );
    // Relay one still serves its endpoint: a new event arrives, nothing was recorded for it
    // by the other role.
    insert_instance(&mut client, 1);
    receiver.wait_for("the event through relay one", WAIT, |r| r.len() == 1);
    wait_until_sql(
        &mut client,
        "its delivery recorded by relay one",
        WAIT,
        "SELECT coalesce(relay = 'one', false) AND (SELECT count(*) = 1 FROM ae_events.delivery_status WHERE status = 'delivered')
           FROM ae_events.endpoint_status",
    );
    // Once relay one has stopped (it gives its endpoints back), its id is free again.
    assert!(relay.terminate().success());
    let leased: i64 = other
        .query("SELECT * FROM ae_events.relay_lease('one', '2 s')", &[])
        .unwrap()
        .len() as i64;
    assert_eq!(
        leased, 1,
        "relay_two may use the expired id and takes the endpoint"
    );
}

#[test]
fn header_values_echoed_by_a_receiver_are_masked_in_stored_errors() {
    let cluster = Cluster::shared();
    let (database, mut client) = delivery_database("boundary_masking");
    create_relay_role(&mut client, "relay_mask");
    create_endpoint(&mut client, "echo", "http://127.0.0.1:1/", "{1s,1s}");
    client
        .execute(
            "SELECT ae_events.alter_endpoint('echo', headers => '{\"authorization\": \"Bearer tok-3f9a77c1\", \"x-api-key\": \"k-55d\"}')",
            &[],
        )
        .unwrap();
    insert_instance(&mut client, 1);
    // The relay's calls, made as a relay would, with an error text that echoes the headers.
    let mut relay = cluster.connect_as(&database, "relay_mask");
    let endpoint_id: i64 = relay
        .query_one(
            "SELECT endpoint_id FROM ae_events.relay_lease('masking', '30 s')",
            &[],
        )
        .unwrap()
        .get(0);
    let id: i64 = client
        .query_one("SELECT id FROM ae_events.outbox", &[])
        .unwrap()
        .get(0);
    let echoed = "HTTP 401: bad credentials Bearer tok-3f9a77c1 (key k-55d)";
    let recorded: bool = relay
        .query_one(
            "SELECT ae_events.relay_record('echo', 'masking', ARRAY[$1::bigint], '{1}', '{pending}', '{1}',
                                           ARRAY[now()], '{401}', ARRAY[$2::text], ARRAY[now() + interval '1 s'],
                                           NULL, NULL, NULL, NULL, $3)",
            &[&id, &echoed, &endpoint_id],
        )
        .unwrap()
        .get(0);
    assert!(recorded);
    let stored: String = client
        .query_one("SELECT last_error FROM ae_events.delivery_status", &[])
        .unwrap()
        .get(0);
    assert_eq!(
        stored, "HTTP 401: bad credentials [redacted] (key k-55d)",
        "values of 6 characters or more are masked; shorter ones are no secrets"
    );
    // A stale endpoint_id (the endpoint was dropped and created again) writes nothing.
    let stale: bool = relay
        .query_one(
            "SELECT ae_events.relay_record('echo', 'masking', ARRAY[$1::bigint], '{1}', '{delivered}', '{2}',
                                           ARRAY[now()], '{200}', '{NULL}', '{NULL}', NULL, NULL, NULL, NULL, $2)",
            &[&id, &(endpoint_id + 1000)],
        )
        .unwrap()
        .get(0);
    assert!(!stale);
    let status: String = client
        .query_one("SELECT status FROM ae_events.delivery_status", &[])
        .unwrap()
        .get(0);
    assert_eq!(status, "pending");
}

#[test]
fn an_endpoint_created_again_under_its_name_is_a_new_endpoint_to_a_running_relay() {
    let cluster = Cluster::shared();
    let (database, mut client) = delivery_database("boundary_recreated");
    // The old receiver is slow, so that the relay holds a queue for the old endpoint.
    let old = Receiver::start(|_, _| Answer::status(200).after(Duration::from_millis(700)));
    create_endpoint(&mut client, "reborn", &old.url("/"), "{1s}");
    client
        .execute(
            "SELECT ae_events.alter_endpoint('reborn', max_in_flight => 1)",
            &[],
        )
        .unwrap();
    for instance in 1..=12 {
        insert_instance(&mut client, instance);
    }
    let relay = Relay::start(cluster, &database, &["--relay-id", "rebirth"]);
    old.wait_for("the old endpoint's first event", WAIT, |r| !r.is_empty());
    let new = Receiver::ok();
    let new_secret: String = {
        let mut transaction = client.transaction().unwrap();
        transaction
            .execute("SELECT ae_events.drop_endpoint('reborn')", &[])
            .unwrap();
        let secret = transaction
            .query_one(
                "SELECT ae_events.create_endpoint('reborn', $1)",
                &[&new.url("/")],
            )
            .unwrap()
            .get(0);
        // As when the relay's next lease round takes the new endpoint before its worker for
        // the old one calls the database again (the race of the issue, made certain).
        transaction
            .execute(
                "UPDATE ae_events.endpoints
                    SET relay = 'rebirth', relay_role = 'relay_user',
                        lease_expires_at = now() + interval '2 s'
                  WHERE endpoint = 'reborn'",
                &[],
            )
            .unwrap();
        transaction.commit().unwrap();
        secret
    };
    insert_instance(&mut client, 100);
    let requests = new.wait_for("the new endpoint's first event", WAIT, |r| !r.is_empty());
    // Time for anything still queued for the old endpoint to (wrongly) go out.
    std::thread::sleep(Duration::from_secs(3));
    let requests = {
        let _ = requests;
        new.requests()
    };
    let instances: Vec<i64> = requests.iter().map(|r| r.instance()).collect();
    assert_eq!(
        instances,
        [100],
        "only the event after its creation, never the old endpoint's queue; relay log:\n{}",
        relay.log()
    );
    assert!(svix_verifies(&new_secret, &requests[0]));
    assert!(
        old.count() < 12,
        "the old endpoint's queue was dropped, not drained"
    );
    let recorded: Vec<i64> = client
        .query(
            "SELECT instance_id FROM ae_events.delivery_status WHERE endpoint = 'reborn'",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        recorded,
        [100],
        "nothing of the old endpoint recorded for the new one"
    );
}

#[test]
fn every_url_sql_accepts_is_one_the_relay_can_parse() {
    let (_database, mut client) = delivery_database("boundary_urls");
    let urls = [
        // Accepted: what receivers use.
        "https://proctor.example.com/hooks/ae?x=1#f",
        "http://127.0.0.1:8080/",
        "http://localhost/",
        "https://[::1]:8443/p",
        "http://under_score.example/",
        "http://zürich.example/",
        "nats://127.0.0.1:4222/ae.events",
        // Refused: the relay's parser (WHATWG rules) rejects them, or reads them as another
        // address than they seem to name.
        "http://x:99999/",
        "http://x:0/",
        "http://x:1:2/",
        "http://999.1.1.1/",
        "http://1.2.3.256/",
        "http://0x7f.1/",
        "http://127.1/",
        "http://foo.123/",
        "http://[::1/",
        "http://[zz::1]/",
        "http://[::1]x/",
        "http://a%41/",
        "http://a<b/",
        "http://a|b/",
        "http://a\\b/",
        "nats://[::1/ae",
    ];
    let mut accepted = Vec::new();
    for (n, url) in urls.iter().enumerate() {
        let name = format!("u{n}");
        match client.query_one("SELECT ae_events.create_endpoint($1, $2)", &[&name, url]) {
            Ok(_) => {
                assert!(
                    reqwest::Url::parse(url).is_ok_and(|parsed| parsed.host().is_some()),
                    "SQL accepted {url:?}, which the relay cannot parse"
                );
                accepted.push(*url);
            }
            Err(error) => {
                assert_eq!(sqlstate(&error), "22023", "{url}: {error}");
                assert!(error_message(&error).starts_with("ae_events: "));
            }
        }
    }
    assert_eq!(
        accepted,
        &urls[..7],
        "exactly the ordinary URLs are accepted"
    );
}
