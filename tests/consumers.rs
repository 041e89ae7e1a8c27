//! The gap-free consumer API: poll / ack in delivery order, whatever order transactions commit
//! in; concurrent writers; independent consumers; the relay loop with LISTEN; roles; restore
//! into another cluster.

mod common;

use common::*;
use postgres::Client;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

fn database(name: &str) -> (String, Client) {
    let cluster = Cluster::shared();
    let database = cluster.database(name, ForeignKeys::Without);
    let mut client = cluster.connect(&database);
    client.batch_execute(MINIMAL_REFERENCE_DATA).unwrap();
    (database, client)
}

/// (id, txid as text, aggregate_id) of what poll returns now.
fn poll(client: &mut Client, consumer: &str, max: i32) -> Vec<(i64, String, i64)> {
    client
        .query(
            "SELECT id, txid::text, aggregate_id FROM ae_events.poll($1, $2)",
            &[&consumer, &max],
        )
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2)))
        .collect()
}

fn ack(client: &mut Client, consumer: &str, through_id: i64) -> bool {
    client
        .query_one("SELECT ae_events.ack($1, $2)", &[&consumer, &through_id])
        .unwrap()
        .get(0)
}

fn ids(events: &[(i64, String, i64)]) -> Vec<i64> {
    events.iter().map(|event| event.0).collect()
}

#[test]
fn an_event_of_a_transaction_that_commits_late_is_not_skipped() {
    let cluster = Cluster::shared();
    let (database, mut relay) = database("interleaved");
    relay
        .batch_execute("SELECT ae_events.create_consumer('relay', true)")
        .unwrap();
    // The first transaction draws its outbox id first (its events are written now) and commits
    // last; the second commits in between.
    let mut first = cluster.connect(&database);
    first
        .batch_execute("BEGIN; SELECT pg_current_xact_id();")
        .unwrap();
    insert_instance(&mut first, 1);
    first
        .batch_execute("SET CONSTRAINTS ALL IMMEDIATE")
        .unwrap();
    let mut second = cluster.connect(&database);
    insert_instance(&mut second, 2);
    let rows = outbox_rows(&mut second);
    assert_eq!(outbox_instances(&mut second), vec![2], "{rows:?}");
    assert!(rows[0].id > 1, "the second's event has the later id");

    // While the first is open, nothing after it can be delivered: not even the committed second.
    assert!(poll(&mut relay, "relay", 10).is_empty());
    let error = relay
        .batch_execute(&format!("SELECT ae_events.ack('relay', {})", rows[0].id))
        .unwrap_err();
    assert_eq!(sqlstate(&error), "55000");

    first.batch_execute("COMMIT").unwrap();
    let events = eventually(|| poll(&mut relay, "relay", 10), |e| e.len() >= 2);
    assert_eq!(
        events.iter().map(|e| e.2).collect::<Vec<_>>(),
        vec![1, 2],
        "both, in commit-safe order"
    );
    // Not acked yet: delivered again (at least once).
    assert_eq!(poll(&mut relay, "relay", 10), events);
    assert!(ack(&mut relay, "relay", events[0].0));
    assert_eq!(ids(&poll(&mut relay, "relay", 10)), vec![events[1].0]);
    assert!(ack(&mut relay, "relay", events[1].0));
    assert!(
        !ack(&mut relay, "relay", events[0].0),
        "acking backwards changes nothing"
    );
    assert!(poll(&mut relay, "relay", 10).is_empty());
}

#[test]
fn four_writers_and_a_polling_consumer_deliver_every_committed_event_once() {
    const WRITERS: i64 = 4;
    const EVENTS_PER_WRITER: i64 = 2000;
    let (database, mut relay) = database("writers");
    relay
        .batch_execute("SELECT ae_events.create_consumer('relay', true)")
        .unwrap();
    let writers: Vec<_> = (0..WRITERS)
        .map(|writer| {
            let database = database.clone();
            std::thread::spawn(move || {
                let mut client = Cluster::shared().connect(&database);
                let mut next = writer * 1_000_000;
                let mut written = 0;
                let mut round = 0;
                while written < EVENTS_PER_WRITER {
                    round += 1;
                    // 1 to 25 instances per transaction; every seventh rolls back.
                    let size = (round * 7 + writer) % 25 + 1;
                    let size = size.min(EVENTS_PER_WRITER - written);
                    let rolls_back = round % 7 == 0;
                    let sql = format!(
                        "BEGIN;
                         INSERT INTO ti.instance
                         SELECT g, NULL, NULL, NULL, 'in_progress', 1, 1, NULL, NULL, NULL, now(), 1, now(), 1
                           FROM generate_series({}, {}) AS g;
                         {}",
                        next + 1,
                        next + size,
                        if rolls_back { "ROLLBACK" } else { "COMMIT" }
                    );
                    client.batch_execute(&sql).unwrap();
                    next += size;
                    if !rolls_back {
                        written += size;
                    }
                }
            })
        })
        .collect();

    let mut received: Vec<(i64, String, i64)> = Vec::new();
    let mut writers_done = false;
    let expected = (WRITERS * EVENTS_PER_WRITER) as usize;
    let mut deadline = None;
    loop {
        let batch = poll(&mut relay, "relay", 300);
        if let Some(last) = batch.last() {
            assert!(ack(&mut relay, "relay", last.0));
        }
        let empty = batch.is_empty();
        received.extend(batch);
        // Once the writers are done, poll until every committed event has come (the horizon
        // may lag a just-committed transaction), then once more to see that nothing follows.
        if writers_done
            && empty
            && (received.len() >= expected || deadline.is_some_and(|d| Instant::now() > d))
        {
            break;
        }
        if !writers_done && writers.iter().all(|writer| writer.is_finished()) {
            writers_done = true;
            deadline = Some(Instant::now() + Duration::from_secs(30));
        }
        if empty {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    for writer in writers {
        writer.join().unwrap();
    }

    let committed: BTreeSet<i64> = outbox_rows(&mut relay).iter().map(|r| r.id).collect();
    assert_eq!(committed.len() as i64, WRITERS * EVENTS_PER_WRITER);
    let delivered: Vec<i64> = ids(&received);
    let unique: BTreeSet<i64> = delivered.iter().copied().collect();
    assert_eq!(unique.len(), delivered.len(), "each event once");
    assert_eq!(unique, committed, "exactly the committed events");
    // Delivered in (txid, id) order.
    let order: Vec<(u64, i64)> = received
        .iter()
        .map(|(id, txid, _)| (txid.parse().unwrap(), *id))
        .collect();
    assert!(order.windows(2).all(|pair| pair[0] < pair[1]));
}

#[test]
fn consumers_are_independent() {
    let (_, mut client) = database("twoconsumers");
    insert_instance(&mut client, 1);
    insert_instance(&mut client, 2);
    client
        .batch_execute(
            "SELECT ae_events.create_consumer('all', from_start => true);
             SELECT ae_events.create_consumer('new');",
        )
        .unwrap();
    insert_instance(&mut client, 3);
    let everything = eventually(|| poll(&mut client, "all", 100), |e| e.len() >= 3);
    assert_eq!(
        everything.iter().map(|e| e.2).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    let new = eventually(|| poll(&mut client, "new", 100), |e| !e.is_empty());
    assert_eq!(
        new.iter().map(|e| e.2).collect::<Vec<_>>(),
        vec![3],
        "only after it was created"
    );
    assert!(ack(&mut client, "all", everything[1].0));
    assert_eq!(ids(&poll(&mut client, "all", 100)), vec![everything[2].0]);
    assert_eq!(
        ids(&poll(&mut client, "new", 100)),
        vec![new[0].0],
        "its own cursor"
    );
    assert_eq!(poll(&mut client, "all", 1).len(), 1, "max_events");

    let dropped: bool = client
        .query_one("SELECT ae_events.drop_consumer('new')", &[])
        .unwrap()
        .get(0);
    assert!(dropped);
    for (statement, state) in [
        ("SELECT * FROM ae_events.poll('new')", "42704"),
        ("SELECT ae_events.ack('new', 1)", "42704"),
        ("SELECT ae_events.create_consumer('all')", "42710"),
        ("SELECT ae_events.create_consumer('')", "22023"),
        ("SELECT * FROM ae_events.poll('all', 0)", "22023"),
        ("SELECT ae_events.ack('all', 999999)", "22023"),
    ] {
        let error = client.batch_execute(statement).unwrap_err();
        assert_eq!(sqlstate(&error), state, "{statement}");
        assert!(
            error_message(&error).starts_with("ae_events: "),
            "{statement}"
        );
    }
}

#[test]
fn the_relay_loop_wakes_on_notify_and_catches_up_after_a_disconnect() {
    let cluster = Cluster::shared();
    let (database, mut app) = database("relayloop");
    app.batch_execute("SELECT ae_events.create_consumer('webhooks')")
        .unwrap();
    let mut delivered: Vec<i64> = Vec::new();
    // The relay's loop: poll, "deliver", ack, until `total` have come (or 30 s have passed).
    let drain = |relay: &mut Client, delivered: &mut Vec<i64>, total: usize| {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while delivered.len() < total && std::time::Instant::now() < deadline {
            let batch = poll(relay, "webhooks", 2);
            let Some(last) = batch.last() else {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            };
            delivered.extend(batch.iter().map(|event| event.2));
            assert!(ack(relay, "webhooks", last.0));
        }
    };

    let mut relay = cluster.connect(&database);
    relay.batch_execute("LISTEN ae_events").unwrap();
    insert_instance(&mut app, 1);
    insert_instance(&mut app, 2);
    let woken = drain_notifications(&mut relay, Duration::from_millis(1500));
    // (The second commit may come within ae_events.notify_interval of the first: one wake-up.)
    assert!(!woken.is_empty(), "NOTIFY wakes the relay up");
    drain(&mut relay, &mut delivered, 2);
    assert_eq!(delivered, vec![1, 2]);

    // Disconnected: its notifications are lost, the events are not.
    drop(relay);
    for id in 3..=7 {
        insert_instance(&mut app, id);
    }
    let mut relay = cluster.connect(&database);
    relay.batch_execute("LISTEN ae_events").unwrap();
    assert!(drain_notifications(&mut relay, Duration::from_millis(300)).is_empty());
    drain(&mut relay, &mut delivered, 7);
    assert!(poll(&mut relay, "webhooks", 10).is_empty(), "nothing more");
    assert_eq!(
        delivered,
        vec![1, 2, 3, 4, 5, 6, 7],
        "caught up from its cursor"
    );
}

#[test]
fn roles_relay_reader_and_the_application() {
    let cluster = Cluster::shared();
    let (database, mut admin) = database("roles");
    admin
        .batch_execute(&format!(
            "CREATE ROLE relay_{database} LOGIN IN ROLE ae_events_relay;
             CREATE ROLE reader_{database} LOGIN IN ROLE ae_events_reader;
             CREATE ROLE app_{database} LOGIN;
             GRANT USAGE ON SCHEMA ti, can, ae, tcf TO app_{database};
             GRANT SELECT, INSERT ON ALL TABLES IN SCHEMA ti, can, ae, tcf TO app_{database};"
        ))
        .unwrap();
    let mut app = cluster.connect_as(&database, &format!("app_{database}"));
    insert_instance(&mut app, 1);

    let mut relay = cluster.connect_as(&database, &format!("relay_{database}"));
    relay
        .batch_execute("SELECT ae_events.create_consumer('r', true)")
        .unwrap();
    let events = eventually(|| poll(&mut relay, "r", 10), |e| !e.is_empty());
    assert_eq!(events.len(), 1);
    assert!(ack(&mut relay, "r", events[0].0));
    relay
        .query_one("SELECT count(*) FROM ae_events.outbox", &[])
        .unwrap();

    let mut reader = cluster.connect_as(&database, &format!("reader_{database}"));
    reader
        .query_one("SELECT count(*) FROM ae_events.outbox", &[])
        .unwrap();

    let denied = |client: &mut Client, statement: &str| {
        let error = client.batch_execute(statement).unwrap_err();
        assert_eq!(sqlstate(&error), "42501", "{statement}");
    };
    for statement in [
        "SELECT * FROM ae_events.poll('r')",
        "SELECT ae_events.ack('r', 1)",
        "SELECT ae_events.create_consumer('x')",
        "UPDATE ae_events.consumers SET cursor_id = 0",
    ] {
        denied(&mut reader, statement);
    }
    for statement in [
        "SELECT count(*) FROM ae_events.outbox",
        "SELECT * FROM ae_events.poll('r')",
        "SELECT ae_events.ack('r', 1)",
        "SELECT * FROM ae_events.consumers",
    ] {
        denied(&mut app, statement);
    }
    for statement in [
        "UPDATE ae_events.consumers SET cursor_id = 0",
        "DELETE FROM ae_events.outbox",
    ] {
        denied(&mut relay, statement);
    }
}

/// After pg_restore into another cluster, transaction ids start over below the restored rows'
/// txids: the consumer still gets the rest of the old events, then the new ones.
#[test]
fn a_consumer_continues_after_restore_into_another_cluster() {
    let cluster = Cluster::shared();
    let (database, mut client) = database("epochs");
    // Push this cluster's transaction ids above where a fresh cluster starts.
    client
        .batch_execute(
            "CREATE PROCEDURE burn_xids() LANGUAGE plpgsql AS $$
             BEGIN
                 FOR i IN 1..3000 LOOP PERFORM pg_current_xact_id(); COMMIT; END LOOP;
             END $$;",
        )
        .unwrap();
    client.batch_execute("CALL burn_xids()").unwrap();
    client
        .batch_execute("SELECT ae_events.create_consumer('relay', true)")
        .unwrap();
    for id in 1..=3 {
        insert_instance(&mut client, id);
    }
    let first = eventually(|| poll(&mut client, "relay", 1), |e| !e.is_empty());
    assert!(ack(&mut client, "relay", first[0].0));
    let archive = dump(cluster, &database);

    let other = Cluster::start(&[]);
    let target = other.empty_database("restored");
    restore(&other, &target, &archive);
    let mut restored = other.connect(&target);
    for id in 4..=5 {
        insert_instance(&mut restored, id);
    }
    let rows = outbox_rows(&mut restored);
    let old_txid: u64 = rows[0].txid.parse().unwrap();
    let new_txid: u64 = rows[4].txid.parse().unwrap();
    assert!(new_txid < old_txid, "the new cluster's txids are lower");
    let mut delivered = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while delivered.len() < 4 && std::time::Instant::now() < deadline {
        let batch = poll(&mut restored, "relay", 2);
        let Some(last) = batch.last() else {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        };
        delivered.extend(batch.iter().map(|event| event.2));
        assert!(ack(&mut restored, "relay", last.0));
    }
    assert!(poll(&mut restored, "relay", 10).is_empty(), "nothing more");
    assert_eq!(delivered, vec![2, 3, 4, 5]);
    let epochs: i64 = restored
        .query_one("SELECT count(*) FROM ae_events.epochs", &[])
        .unwrap()
        .get(0);
    assert_eq!(epochs, 2);
}

#[test]
fn a_long_transaction_in_another_database_does_not_hold_delivery_back() {
    let cluster = Cluster::shared();
    let (_, mut relay) = database("otherdb");
    relay
        .batch_execute("SELECT ae_events.create_consumer('relay', true)")
        .unwrap();
    let elsewhere = cluster.empty_database("elsewhere");
    let mut long = cluster.connect(&elsewhere);
    long.batch_execute("BEGIN; SELECT pg_current_xact_id();")
        .unwrap();
    insert_instance(&mut relay, 1);
    let events = eventually(|| poll(&mut relay, "relay", 10), |e| !e.is_empty());
    assert_eq!(events.len(), 1);
    long.batch_execute("COMMIT").unwrap();
}
