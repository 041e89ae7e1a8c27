//! Test events (`ae_events.send_test_event`, shared/contract/catalog.md §2) through the real
//! ae-relay, and the receiver kit's snippets (docs/receivers/verify.py, verify.mjs) run as real
//! receivers: a test event reaches its endpoint only, signed with that endpoint's secret and
//! marked `ae-test: true`, and shows as a test in the records; the snippets verify real
//! deliveries with the Standard Webhooks libraries and refuse a tampered body.

mod support;

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use support::*;

const WAIT: Duration = Duration::from_secs(30);

/// One of the kit's snippets running as a receiver on 127.0.0.1 (its output in a file).
struct Snippet {
    child: Child,
    port: u16,
    log: PathBuf,
    /// The copy of verify.mjs made under .receivers (removed when dropped).
    copy: Option<PathBuf>,
}

impl Snippet {
    /// docs/receivers/verify.py with PyPI's standardwebhooks from .receivers/python.
    fn python(secret: &str) -> Snippet {
        let root = repository_root();
        let library = root.join(".receivers/python");
        assert!(
            library.join("standardwebhooks").exists(),
            "PyPI's standardwebhooks is not in .receivers/python: run scripts/setup.sh"
        );
        let mut command = Command::new("python3");
        command
            .arg(root.join("docs/receivers/verify.py"))
            .env("PYTHONPATH", library);
        Snippet::start(command, secret, None)
    }

    /// docs/receivers/verify.mjs with npm's standardwebhooks from .receivers/node_modules. An
    /// ES module finds packages from its own directory up, so a copy of it runs from there.
    fn node(secret: &str) -> Snippet {
        let receivers = repository_root().join(".receivers");
        assert!(
            receivers.join("node_modules/standardwebhooks").exists(),
            "npm's standardwebhooks is not in .receivers/node_modules: run scripts/setup.sh"
        );
        let copy = receivers.join(format!("verify-{}-{}.mjs", std::process::id(), free_port()));
        std::fs::copy(repository_root().join("docs/receivers/verify.mjs"), &copy).unwrap();
        let mut command = Command::new("node");
        command.arg(&copy);
        Snippet::start(command, secret, Some(copy))
    }

    fn start(mut command: Command, secret: &str, copy: Option<PathBuf>) -> Snippet {
        let port = free_port();
        let log =
            std::env::temp_dir().join(format!("ae-snippet-{}-{port}.log", std::process::id()));
        let child = command
            .env("WEBHOOK_SECRET", secret)
            .env("PORT", port.to_string())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the snippet (python3 / node: run scripts/setup.sh)");
        let snippet = Snippet {
            child,
            port,
            log,
            copy,
        };
        let listening = within(
            WAIT,
            || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
            |up| *up,
        );
        assert!(listening, "the snippet did not listen on {port}");
        snippet
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hooks", self.port)
    }

    /// Its output, a line per request: `verified <webhook-id> <key> test|event instance <id>`
    /// or `refused <webhook-id> <reason>`.
    fn lines(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn wait_for_lines(&self, what: &str, count: usize) -> Vec<String> {
        let lines = within(WAIT, || self.lines(), |lines| lines.len() >= count);
        assert!(
            lines.len() >= count,
            "timed out waiting for {what}: {lines:?}"
        );
        lines
    }

    /// POST a request as captured (its webhook-* and ae-* headers) with this body: the status.
    fn post(&self, request: &Received, body: &str) -> u16 {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        stream.set_read_timeout(Some(WAIT)).unwrap();
        let mut head = format!(
            "POST /hooks HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (name, value) in &request.headers {
            if name.starts_with("webhook-") || name.starts_with("ae-") {
                head.push_str(&format!("{name}: {value}\r\n"));
            }
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).unwrap();
        stream.write_all(body.as_bytes()).unwrap();
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        answer
            .split_whitespace()
            .nth(1)
            .and_then(|status| status.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Snippet {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(copy) = &self.copy {
            let _ = std::fs::remove_file(copy);
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

fn send_test_event(client: &mut postgres::Client, endpoint: &str, key: &str) -> String {
    client
        .query_one(
            "SELECT ae_events.send_test_event($1, $2)::text",
            &[&endpoint, &key],
        )
        .unwrap()
        .get(0)
}

fn strings(client: &mut postgres::Client, query: &str) -> Vec<String> {
    client
        .query(query, &[])
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect()
}

#[test]
fn a_test_event_reaches_only_its_endpoint_signed_and_shows_as_a_test_in_the_records() {
    let cluster = Cluster::shared();
    let (database, mut client) = delivery_database("test_events");
    let (a, b, c) = (Receiver::ok(), Receiver::ok(), Receiver::ok());
    let secret_a = create_endpoint(&mut client, "a", &a.url("/a"), "{1 second}");
    let secret_b = create_endpoint(&mut client, "b", &b.url("/b"), "{1 second}");
    create_endpoint(&mut client, "c", &c.url("/c"), "{1 second}");
    client
        .batch_execute("SELECT ae_events.create_consumer('analytics')")
        .unwrap();

    // The DBA sends one, an operator another; a reader may not.
    let created = send_test_event(&mut client, "a", "ae.test_instance.created");
    client.batch_execute("SET ROLE ae_events_operator").unwrap();
    let updated = send_test_event(&mut client, "a", "ae.test_instance.updated");
    client
        .batch_execute("RESET ROLE; SET ROLE ae_events_reader")
        .unwrap();
    let refused = client
        .query_one("SELECT ae_events.send_test_event('a')", &[])
        .unwrap_err();
    assert_eq!(sqlstate(&refused), "42501", "{refused}");
    client.batch_execute("RESET ROLE").unwrap();

    let _relay = Relay::start(cluster, &database, &[]);
    a.wait_for("the two test events", WAIT, |r| r.len() >= 2);
    // A real event afterwards: every endpoint gets it, so each has been served since the tests.
    insert_instance(&mut client, 1);
    let real: String = client
        .query_one(
            "SELECT event_id::text FROM ae_events.outbox WHERE aggregate_type = 'test_instance'",
            &[],
        )
        .unwrap()
        .get(0);
    let got_real = |r: &[Received]| r.iter().any(|x| x.header("webhook-id") == real);
    let at_a = a.wait_for("the real event at a", WAIT, got_real);
    let at_b = b.wait_for("the real event at b", WAIT, got_real);
    let at_c = c.wait_for("the real event at c", WAIT, got_real);
    std::thread::sleep(Duration::from_millis(500)); // nothing else comes
    assert_eq!(a.count(), 3, "{at_a:?}");
    for (name, requests) in [("b", &at_b), ("c", &at_c)] {
        let ids: Vec<&str> = requests.iter().map(|r| r.header("webhook-id")).collect();
        assert_eq!(ids, [real.as_str()], "endpoint {name} gets no test event");
        assert_eq!(requests[0].header("ae-test"), "", "{name}");
    }

    for (id, key, version) in [
        (&created, "ae.test_instance.created", "1"),
        (&updated, "ae.test_instance.updated", "2"),
    ] {
        let request = at_a
            .iter()
            .find(|r| r.header("webhook-id") == id.as_str())
            .unwrap_or_else(|| panic!("test event {id} at a: {at_a:?}"));
        assert_eq!(request.header("ae-test"), "true");
        assert_eq!(request.header("ae-subscription-key"), key);
        assert_eq!(request.header("ae-event-type"), key.replace('.', "_"));
        assert_eq!(request.header("ae-aggregate-id"), "789");
        assert_eq!(request.header("ae-snapshot-version"), version);
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&request.body).unwrap(),
            seed_example_payload(),
            "the body is the seed's example"
        );
        assert!(svix_verifies(&secret_a, request), "signed with a's secret");
        assert!(!svix_verifies(&secret_b, request), "not b's");
    }
    let real_at_a = at_a
        .iter()
        .find(|r| r.header("webhook-id") == real)
        .unwrap();
    assert_eq!(real_at_a.header("ae-test"), "", "a real event is no test");

    // No consumer, outbox or analyst view has them (operational events may be there too).
    let polled = eventually(
        || {
            strings(
                &mut client,
                "SELECT event_id::text FROM ae_events.poll('analytics', 100)",
            )
        },
        |ids| ids.contains(&real),
    );
    let mut seen = vec![("poll", polled)];
    for view in ["outbox", "events", "instance_events"] {
        let query = format!("SELECT event_id::text FROM ae_events.{view}");
        seen.push((view, strings(&mut client, &query)));
    }
    for (view, ids) in seen {
        assert!(ids.contains(&real), "{view}: {ids:?}");
        assert!(
            !ids.contains(&created) && !ids.contains(&updated),
            "{view}: {ids:?}"
        );
    }

    // The records: a's two test events, delivered at the first attempt, marked as tests.
    wait_until_sql(
        &mut client,
        "the test events' records",
        WAIT,
        "SELECT count(*) = 2 FROM ae_events.delivery_status WHERE is_test AND status = 'delivered'",
    );
    type Record = (String, String, String, i32, Option<i32>, Option<i64>);
    let tests: Vec<Record> = client
        .query(
            "SELECT endpoint, event_id::text, event, attempts, last_status, id
               FROM ae_events.delivery_status WHERE is_test ORDER BY snapshot_version",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5)))
        .collect();
    assert_eq!(
        tests,
        [
            (
                "a".to_owned(),
                created.clone(),
                "ae.test_instance.created".to_owned(),
                1,
                Some(200),
                None
            ),
            (
                "a".to_owned(),
                updated.clone(),
                "ae.test_instance.updated".to_owned(),
                1,
                Some(200),
                None
            ),
        ]
    );
    wait_until_sql(
        &mut client,
        "the real event's records",
        WAIT,
        "SELECT count(*) = 3 FROM ae_events.delivery_status WHERE NOT is_test AND status = 'delivered'",
    );
    let requested_by = strings(
        &mut client,
        "SELECT requested_by::text FROM ae_events.test_events ORDER BY id",
    );
    assert_eq!(requested_by, ["postgres", "ae_events_operator"]);
}

#[test]
fn the_receiver_kits_snippets_verify_real_deliveries_and_refuse_a_tampered_body() {
    // docs/receivers.md shows the files as they are.
    let root = repository_root();
    let doc = std::fs::read_to_string(root.join("docs/receivers.md")).unwrap();
    for file in ["docs/receivers/verify.py", "docs/receivers/verify.mjs"] {
        let code = std::fs::read_to_string(root.join(file)).unwrap();
        assert!(
            doc.contains(&code),
            "docs/receivers.md quotes {file} as it is"
        );
    }
    let cluster = Cluster::shared();
    let (database, mut client) = delivery_database("receiver_kit");
    let captured = Receiver::ok();
    let python_secret = create_endpoint(&mut client, "python", "http://127.0.0.1:9/", "{1 second}");
    let node_secret = create_endpoint(&mut client, "node", "http://127.0.0.1:9/", "{1 second}");
    let captured_secret = create_endpoint(
        &mut client,
        "captured",
        &captured.url("/hooks"),
        "{1 second}",
    );
    let python = Snippet::python(&python_secret);
    let node = Snippet::node(&node_secret);
    for (endpoint, url) in [("python", python.url()), ("node", node.url())] {
        client
            .execute(
                "SELECT ae_events.alter_endpoint($1, url => $2)",
                &[&endpoint, &url],
            )
            .unwrap();
    }
    let python_test = send_test_event(&mut client, "python", "ae.test_instance.created");
    let node_test = send_test_event(&mut client, "node", "ae.test_instance.updated");
    insert_instance(&mut client, 1);
    let real: String = client
        .query_one(
            "SELECT event_id::text FROM ae_events.outbox WHERE aggregate_type = 'test_instance'",
            &[],
        )
        .unwrap()
        .get(0);
    let _relay = Relay::start(cluster, &database, &[]);

    // Each snippet verifies its own test event and the real event, signed by the relay.
    let python_lines = python.wait_for_lines("the python snippet's two requests", 2);
    let node_lines = node.wait_for_lines("the node snippet's two requests", 2);
    let requests = captured.wait_for("the real event", WAIT, |r| !r.is_empty());
    std::thread::sleep(Duration::from_millis(500)); // nothing else comes
    for (lines, test, key) in [
        (python.lines(), &python_test, "ae.test_instance.created"),
        (node.lines(), &node_test, "ae.test_instance.updated"),
    ] {
        let mut lines = lines;
        lines.sort();
        let mut expected = vec![
            format!("verified {test} {key} test instance 789"),
            format!("verified {real} ae.test_instance.created event instance 1"),
        ];
        expected.sort();
        assert_eq!(lines, expected, "{python_lines:?} {node_lines:?}");
    }
    assert_eq!(captured.count(), 1, "no test event for the third endpoint");
    wait_until_sql(
        &mut client,
        "both test events delivered",
        WAIT,
        "SELECT count(*) = 2 FROM ae_events.delivery_status WHERE is_test AND status = 'delivered' AND last_status = 204",
    );

    // A delivery captured from the relay, given to each snippet with that endpoint's secret:
    // as sent it verifies; with one byte of the body changed it is refused.
    let request = &requests[0];
    assert!(svix_verifies(&captured_secret, request));
    let tampered = request.body.replacen("\"in_progress\"", "\"completed\"", 1);
    assert_ne!(tampered, request.body);
    for snippet in [
        Snippet::python(&captured_secret),
        Snippet::node(&captured_secret),
    ] {
        assert_eq!(snippet.post(request, &request.body), 204, "as sent");
        assert_eq!(snippet.post(request, &tampered), 400, "tampered");
        let lines = snippet.lines();
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(
            lines[0].starts_with(&format!("verified {real} ")),
            "{lines:?}"
        );
        assert!(
            lines[1].starts_with(&format!("refused {real} ")),
            "{lines:?}"
        );
    }
}

#[test]
fn a_failing_test_event_holds_up_no_real_event_and_is_retried_with_its_webhook_id() {
    let cluster = Cluster::shared();
    let (database, mut client) = delivery_database("test_event_retry");
    // The test event's first attempt fails; everything else is taken.
    let receiver = Receiver::start(|request, earlier| {
        if request.header("ae-test") == "true" && earlier == 0 {
            Answer::status(500)
        } else {
            Answer::status(200)
        }
    });
    create_endpoint(&mut client, "flaky", &receiver.url("/hooks"), "{1 hour}");
    let test = send_test_event(&mut client, "flaky", "ae.test_instance.created");
    let _relay = Relay::start(cluster, &database, &[]);
    wait_until_sql(
        &mut client,
        "the test event's failed attempt",
        WAIT,
        "SELECT attempts = 1 AND status = 'pending' AND last_status = 500
           FROM ae_events.delivery_status WHERE is_test",
    );

    // A real event of the example's instance (789) goes at once: the test event's retry, an
    // hour away, holds up no instance.
    insert_instance(&mut client, 789);
    let real: String = client
        .query_one(
            "SELECT event_id::text FROM ae_events.outbox WHERE aggregate_type = 'test_instance'",
            &[],
        )
        .unwrap()
        .get(0);
    receiver.wait_for("the real event of instance 789", WAIT, |r| {
        r.iter().any(|x| x.header("webhook-id") == real)
    });

    // Its retry, made due now, is sent again under the same webhook-id and recorded.
    client
        .batch_execute("UPDATE ae_events.test_events SET next_attempt_at = now()")
        .unwrap();
    let requests = receiver.wait_for("the test event's second attempt", WAIT, |r| {
        r.iter().filter(|x| x.header("webhook-id") == test).count() == 2
    });
    assert!(requests
        .iter()
        .filter(|x| x.header("webhook-id") == test)
        .all(|x| x.header("ae-test") == "true"));
    wait_until_sql(
        &mut client,
        "the test event delivered at its second attempt",
        WAIT,
        "SELECT attempts = 2 AND status = 'delivered' AND last_status = 200
           FROM ae_events.delivery_status WHERE is_test",
    );
}
