//! The outbox through PostgreSQL logical replication (issue 12): a second cluster subscribes to
//! a publication of `ae_events.outbox` with `publish = 'insert'` and receives every event, in
//! commit order, across a restart of either side and a `prune()` on the source (whose deletes
//! are not published). And the same rows read by a logical decoding client with `pgoutput`, as
//! Debezium reads them.

mod common;

use common::*;
use postgres::Client;
use std::time::Duration;

/// The one-line publication docs/relays.md gives the DBA.
const PUBLICATION: &str =
    "CREATE PUBLICATION ae_events_outbox FOR TABLE ae_events.outbox WITH (publish = 'insert')";

/// The subscriber's copy of the outbox, made from the source's own columns (the extension is
/// not needed there), plus the order rows arrived in (applied one transaction at a time, in the
/// source's commit order).
fn subscriber_table(source: &mut Client) -> String {
    let columns: String = source
        .query_one(
            "SELECT string_agg(format('%I %s', attname, format_type(atttypid, atttypmod)), ', '
                               ORDER BY attnum)
               FROM pg_attribute
              WHERE attrelid = 'ae_events.outbox'::regclass AND attnum > 0 AND NOT attisdropped",
            &[],
        )
        .unwrap()
        .get(0);
    format!(
        "CREATE SCHEMA ae_events;
         CREATE TABLE ae_events.outbox ({columns}, PRIMARY KEY (id),
                                        arrival bigint GENERATED ALWAYS AS IDENTITY);"
    )
}

fn outbox_count(client: &mut Client) -> i64 {
    client
        .query_one("SELECT count(*) FROM ae_events.outbox", &[])
        .unwrap()
        .get(0)
}

/// Wait until the subscriber holds `count` rows.
fn wait_for_rows(client: &mut Client, count: i64) {
    wait_until_sql(
        client,
        &format!("{count} events at the subscriber"),
        Duration::from_secs(60),
        &format!("SELECT count(*) = {count} FROM ae_events.outbox"),
    );
}

/// Write `count` transactions from `first` on: each inserts one instance and updates the one
/// before it (two events, two instances, versions to keep in order).
fn write(client: &mut Client, first: i64, count: i64) {
    for id in first..first + count {
        client
            .batch_execute(&format!(
                "BEGIN;
                 INSERT INTO ti.instance VALUES ({id}, NULL, NULL, NULL, 'in_progress', 1, 1, NULL, NULL, NULL, now(), 1, now(), 1);
                 UPDATE ti.instance SET external_id = 'seen {id}' WHERE id = {id} - 1;
                 COMMIT;"
            ))
            .unwrap();
    }
}

/// The event ids of an outbox (the source's, or the subscriber's copy), sorted.
fn source_events(client: &mut Client) -> Vec<String> {
    client
        .query(
            "SELECT event_id::text FROM ae_events.outbox ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect()
}

/// A boolean a query answers.
fn holds(client: &mut Client, query: &str) -> bool {
    client.query_one(query, &[]).unwrap().get(0)
}

#[test]
fn a_subscriber_gets_every_event_in_commit_order_across_restarts_and_prune() {
    // Commits wait for their WAL, as in production (an immediate stop must not take back a
    // commit the subscriber may already have).
    let source = Cluster::start(&["wal_level = logical", "synchronous_commit = on"]);
    let subscriber_cluster = Cluster::start(&[]);
    let database = source.database("replicated", ForeignKeys::Without);
    let mut app = source.connect(&database);
    app.batch_execute(MINIMAL_REFERENCE_DATA).unwrap();
    app.batch_execute(PUBLICATION).unwrap();

    let copy = subscriber_cluster.empty_database("replica");
    let mut replica = subscriber_cluster.connect(&copy);
    replica.batch_execute(&subscriber_table(&mut app)).unwrap();
    replica
        .batch_execute(&format!(
            "CREATE SUBSCRIPTION ae_events_outbox CONNECTION '{}' PUBLICATION ae_events_outbox
                 WITH (copy_data = false)",
            source.url(&database)
        ))
        .unwrap();

    // (The outbox is empty: nothing to copy first. An initial copy would apply rows written
    // during it out of commit order, from the copying worker and the streaming one.)
    // A second writer interleaves its transactions with the first one's.
    let second_writer = {
        let url = source.url(&database);
        std::thread::spawn(move || {
            let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
            write(&mut client, 100_001, 100);
        })
    };
    write(&mut app, 1, 100);
    second_writer.join().unwrap();
    wait_for_rows(&mut replica, outbox_count(&mut app));

    // The source restarts (immediate stop) between transactions; then the subscriber.
    source.restart_immediately();
    let mut app = source.connect(&database);
    write(&mut app, 101, 50);
    subscriber_cluster.restart_immediately();
    write(&mut app, 151, 50);
    let mut replica = subscriber_cluster.connect(&copy);
    let before_prune = source_events(&mut app);
    wait_for_rows(&mut replica, before_prune.len() as i64);

    // prune() deletes every event at the source; no delete reaches the subscriber, and events
    // written after it still do.
    let pruned: i64 = app
        .query_one("SELECT ae_events.prune('0 seconds')", &[])
        .unwrap()
        .get(0);
    assert_eq!(pruned as usize, before_prune.len());
    assert_eq!(outbox_count(&mut app), 0);
    write(&mut app, 201, 20);
    let after_prune = source_events(&mut app);
    let total = before_prune.len() + after_prune.len();
    wait_for_rows(&mut replica, total as i64);

    // Every event, once: exactly the source's, before and after the prune.
    let mut expected = [before_prune, after_prune].concat();
    expected.sort();
    assert_eq!(source_events(&mut replica), expected);
    // In commit order. Each transaction's events arrived together...
    assert!(holds(
        &mut replica,
        "SELECT bool_and(last - first + 1 = events) FROM (
             SELECT min(arrival) AS first, max(arrival) AS last, count(*) AS events
               FROM ae_events.outbox GROUP BY txid) AS t"
    ));
    // ...each writer's transactions (committed one after the other) in the order they
    // committed (ids are drawn at commit, so they grow with it)...
    assert!(holds(
        &mut replica,
        "SELECT bool_and(in_order) FROM (
             SELECT id > coalesce(lag(id) OVER w, 0) AS in_order
               FROM ae_events.outbox
             WINDOW w AS (PARTITION BY aggregate_id >= 100000 ORDER BY arrival)) AS o"
    ));
    // ...and each instance's versions in order.
    assert!(holds(
        &mut replica,
        "SELECT bool_and(in_order) FROM (
             SELECT snapshot_version > coalesce(lag(snapshot_version) OVER w, 0) AS in_order
               FROM ae_events.outbox WINDOW w AS (PARTITION BY aggregate_id ORDER BY arrival)) AS v"
    ));
    assert!(total > 600, "{total}");
    // (DROP SUBSCRIPTION runs outside a transaction block: one statement a call.)
    for statement in [
        "ALTER SUBSCRIPTION ae_events_outbox DISABLE",
        "DROP SUBSCRIPTION ae_events_outbox",
    ] {
        replica.batch_execute(statement).unwrap();
    }
}

#[test]
fn a_pgoutput_client_reads_the_inserts_and_no_deletes() {
    // Commits wait for their WAL: decoding reads only flushed WAL, and the test reads at once
    // (with the test clusters' synchronous_commit = off the last commit could still be unflushed).
    let source = Cluster::start(&["wal_level = logical", "synchronous_commit = on"]);
    let database = source.database("decoded", ForeignKeys::Without);
    let mut app = source.connect(&database);
    app.batch_execute(MINIMAL_REFERENCE_DATA).unwrap();
    app.batch_execute(PUBLICATION).unwrap();
    app.batch_execute("SELECT pg_create_logical_replication_slot('debezium', 'pgoutput')")
        .unwrap();
    write(&mut app, 1, 10);
    let events = outbox_count(&mut app);
    app.query_one("SELECT ae_events.prune('0 seconds')", &[])
        .unwrap();
    // pgoutput's messages (protocol 1) as Debezium's client would receive them: the first byte
    // is the kind (B begin, R relation, I insert, D delete, C commit).
    let kinds: Vec<(String, i64)> = app
        .query(
            "SELECT chr(get_byte(data, 0)) AS kind, count(*)
               FROM pg_logical_slot_peek_binary_changes('debezium', NULL, NULL,
                        'proto_version', '1', 'publication_names', 'ae_events_outbox')
              GROUP BY 1 ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    let count = |kind: &str| kinds.iter().find(|(k, _)| k == kind).map_or(0, |(_, n)| *n);
    assert_eq!(count("I"), events, "{kinds:?}");
    assert_eq!(
        count("D"),
        0,
        "prune's deletes are not published: {kinds:?}"
    );
    // The outbox's replica identity is its primary key (what Debezium keys its records by if
    // it ever sees updates; the outbox is never updated).
    let identity: String = app
        .query_one(
            "SELECT relreplident::text FROM pg_class WHERE oid = 'ae_events.outbox'::regclass",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(identity, "d");
    app.batch_execute("SELECT pg_drop_replication_slot('debezium')")
        .unwrap();
}
