//! Faults (webhooks.md §4): `kill -9` of the relay mid-burst, PostgreSQL restarted under a
//! running relay, a second relay taking over a dead one's endpoints, and a clean stop. After
//! each: every event delivered at least once, duplicates with the same webhook-id, none out of
//! order per instance.

mod support;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};
use support::*;

/// Every outbox event arrived (at least once), each webhook-id always with the same body, and
/// versions in order per instance.
fn assert_everything_arrived_once_or_more(
    client: &mut postgres::Client,
    receiver: &Receiver,
) -> usize {
    let events = outbox_events(client);
    let requests = receiver.requests();
    let mut bodies: HashMap<&str, &str> = HashMap::new();
    for request in &requests {
        let previous = bodies.insert(request.header("webhook-id"), &request.body);
        if let Some(previous) = previous {
            assert_eq!(previous, request.body, "a duplicate carries the same event");
        }
    }
    for (event_id, _, _, payload) in &events {
        assert_eq!(
            bodies.get(event_id.as_str()).copied(),
            Some(payload.as_str()),
            "event {event_id} lost"
        );
    }
    assert_eq!(
        bodies.len(),
        events.len(),
        "nothing that is not in the outbox"
    );
    assert_in_order_per_instance(&requests);
    requests.len() - events.len()
}

#[test]
fn kill_9_of_the_relay_during_a_burst_of_5000_events_loses_nothing() {
    let cluster = Cluster::shared();
    let (database, mut client) = delivery_database("kill_relay");
    let receiver = Receiver::ok();
    create_endpoint(&mut client, "burst", &receiver.url("/"), "{200ms}");
    // 4,000 created events, then 1,000 updates of some of them: versions to keep in order.
    client
        .batch_execute(
            "INSERT INTO ti.instance
             SELECT i, NULL, NULL, NULL, 'in_progress', 1, 1, NULL, NULL, NULL, now(), 1, now(), 1
               FROM generate_series(1, 4000) AS i;",
        )
        .unwrap();
    for chunk in 0..10 {
        client
            .execute(
                "UPDATE ti.instance SET external_id = 'changed' || $1::int WHERE id % 40 = $1::int",
                &[&chunk],
            )
            .unwrap();
    }
    assert_eq!(outbox_events(&mut client).len(), 5000);

    let relay = Relay::start(cluster, &database, &[]);
    receiver.wait_for("a part of the burst", Duration::from_secs(60), |r| {
        r.len() >= 1500
    });
    relay.kill_9();
    let at_kill = receiver.count();
    assert!(
        at_kill < 5000,
        "the kill came mid-burst ({at_kill} delivered)"
    );
    // A new relay (another id) takes the endpoint once the dead one's lease expires.
    let _relay = Relay::start(cluster, &database, &[]);
    receiver.wait_for("every event", Duration::from_secs(120), |r| {
        r.iter()
            .map(|x| x.header("webhook-id"))
            .collect::<HashSet<_>>()
            .len()
            >= 5000
    });
    wait_until_sql(
        &mut client,
        "every delivery recorded",
        Duration::from_secs(60),
        "SELECT count(*) = 5000 FROM ae_events.delivery_status WHERE status = 'delivered'",
    );
    let duplicates = assert_everything_arrived_once_or_more(&mut client, &receiver);
    eprintln!("kill -9 at {at_kill} deliveries: {duplicates} duplicates after the restart");
}

#[test]
fn a_restart_of_postgresql_under_a_running_relay_loses_nothing() {
    // Commits wait for their WAL (as in production): with the test clusters' default
    // synchronous_commit = off an immediate stop could take back a commit whose event the relay
    // had already delivered, a loss no outbox can prevent and not the relay's to test here.
    let cluster = Cluster::start(&["synchronous_commit = on"]);
    let database = cluster.database("restart_pg", ForeignKeys::Without);
    let mut client = cluster.connect(&database);
    client.batch_execute(MINIMAL_REFERENCE_DATA).unwrap();
    let receiver = Receiver::start(|_, _| Answer::status(200).after(Duration::from_millis(2)));
    create_endpoint(&mut client, "steady", &receiver.url("/"), "{200ms}");
    let _relay = Relay::start(&cluster, &database, &[]);
    // Writers keep inserting through the restart (reconnecting when the server is gone).
    let mut written = 0i64;
    let mut restarted = false;
    let start = Instant::now();
    while written < 1500 {
        if written == 700 && !restarted {
            receiver.wait_for(
                "deliveries before the restart",
                Duration::from_secs(30),
                |r| r.len() >= 300,
            );
            cluster.restart_immediately();
            restarted = true;
            client = cluster.connect(&database);
        }
        match client.execute(
            "INSERT INTO ti.instance VALUES ($1, NULL, NULL, NULL, 'in_progress', 1, 1, NULL, NULL, NULL, now(), 1, now(), 1)",
            &[&(written + 1)],
        ) {
            Ok(_) => written += 1,
            Err(_) => client = cluster.connect(&database),
        }
        assert!(start.elapsed() < Duration::from_secs(120));
    }
    // Every instance has its event.
    let instances: i64 = client
        .query_one("SELECT count(*) FROM ti.instance", &[])
        .unwrap()
        .get(0);
    let events = outbox_events(&mut client).len();
    assert_eq!(events as i64, instances);
    assert!(events > 1400, "{events}");
    receiver.wait_for(
        "every event after the restart",
        Duration::from_secs(90),
        |r| {
            r.iter()
                .map(|x| x.header("webhook-id"))
                .collect::<HashSet<_>>()
                .len()
                >= events
        },
    );
    assert_everything_arrived_once_or_more(&mut client, &receiver);
    wait_until_sql(
        &mut client,
        "every delivery recorded",
        Duration::from_secs(60),
        "SELECT count(*) = (SELECT count(*) FROM ae_events.outbox)
           FROM ae_events.delivery_status WHERE status = 'delivered'",
    );
}

#[test]
fn a_second_relay_takes_over_the_endpoints_of_one_that_died() {
    let cluster = Cluster::shared();
    let (database, mut client) = delivery_database("takeover");
    let receiver = Receiver::ok();
    create_endpoint(&mut client, "shared", &receiver.url("/"), "{200ms}");
    let first = Relay::start(cluster, &database, &["--relay-id", "first"]);
    wait_until_sql(
        &mut client,
        "the first relay holds it",
        Duration::from_secs(30),
        "SELECT coalesce(relay = 'first', false) FROM ae_events.endpoint_status",
    );
    let _second = Relay::start(cluster, &database, &["--relay-id", "second"]);
    insert_instance(&mut client, 1);
    receiver.wait_for("the first event", Duration::from_secs(30), |r| {
        !r.is_empty()
    });
    std::thread::sleep(Duration::from_millis(1000));
    let holder: String = client
        .query_one("SELECT relay FROM ae_events.endpoint_status", &[])
        .unwrap()
        .get(0);
    assert_eq!(
        holder, "first",
        "one relay per endpoint: the second does not take a held one"
    );

    first.kill_9();
    insert_instance(&mut client, 2);
    receiver.wait_for(
        "the second event, through the second relay",
        Duration::from_secs(30),
        |r| r.len() >= 2,
    );
    let holder: String = client
        .query_one("SELECT relay FROM ae_events.endpoint_status", &[])
        .unwrap()
        .get(0);
    assert_eq!(holder, "second");
    assert_eq!(receiver.count(), 2);
}

#[test]
fn sigterm_lets_in_flight_requests_finish_and_gives_the_endpoints_back() {
    let cluster = Cluster::shared();
    let (database, mut client) = delivery_database("sigterm");
    let receiver = Receiver::start(|_, _| Answer::status(200).after(Duration::from_millis(800)));
    create_endpoint(&mut client, "patient", &receiver.url("/"), "{200ms}");
    let relay = Relay::start(cluster, &database, &[]);
    insert_instance(&mut client, 1);
    receiver.wait_for("the request", Duration::from_secs(30), |r| !r.is_empty());
    let status = relay.terminate();
    assert!(status.success(), "{status:?}");
    let row: (Option<String>, String) = client
        .query_one(
            "SELECT e.relay, d.status FROM ae_events.endpoint_status e JOIN ae_events.delivery_status d USING (endpoint)",
            &[],
        )
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!(
        row,
        (None, "delivered".to_owned()),
        "the answer was recorded and the lease given back"
    );
}
