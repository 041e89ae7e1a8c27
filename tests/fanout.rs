//! Deferred fan-outs (src/fanout.rs, docs/updated-events.md#large-fan-outs): a change that
//! reaches more instances than `ae_events.fanout_inline_limit` writes no updated event in its
//! own commit; `ae_events.run_fanouts()` writes them afterwards, a page per call, and every
//! instance ends with one updated event equal to its snapshot, also across a crash.

mod common;

use common::*;
use postgres::Client;
use std::time::Duration;

/// `count` instances (ids from 1) of catalog assessment 1 (assessment 1), bubble-up on for
/// `ae.assessment`.
fn instances_of_one_assessment(client: &mut Client, count: i64) {
    client.batch_execute(MINIMAL_REFERENCE_DATA).unwrap();
    insert_instances(client, count);
    client
        .batch_execute(
            "UPDATE ae_events.bubble_up SET enabled = true WHERE source_table = 'ae.assessment'",
        )
        .unwrap();
}

/// Instances 1 to `count` of catalog assessment 1, in one transaction.
fn insert_instances(client: &mut Client, count: i64) {
    client
        .execute(
            "INSERT INTO ti.instance
             SELECT n, NULL, NULL, NULL, 'in_progress', 1, 1, NULL, NULL, NULL, now(), 1, now(), 1
               FROM generate_series(1, $1::bigint) AS n",
            &[&count],
        )
        .unwrap();
}

fn count(client: &mut Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).unwrap().get(0)
}

fn run_fanouts(client: &mut Client) -> i64 {
    count(client, "SELECT ae_events.run_fanouts()")
}

/// Every instance has its created event and exactly one updated event (version 2) showing the
/// new name, which equals its snapshot.
fn assert_each_instance_updated_once(client: &mut Client, instances: i64, name: &str) {
    let wrong: Vec<String> = client
        .query(
            "SELECT i.id::text || ': ' || coalesce(string_agg(o.snapshot_version::text || ' ' ||
                        (o.payload #>> '{catalog_assessment,assessment,name}'), ', '
                        ORDER BY o.id), 'no event')
               FROM ti.instance AS i
               LEFT JOIN ae_events.outbox AS o ON o.aggregate_id = i.id
              GROUP BY i.id
             HAVING count(*) FILTER (WHERE o.event_type = 'ae_test_instance_updated') <> 1
                 OR max(o.snapshot_version) <> 2
                 OR (array_agg(o.payload ORDER BY o.id DESC))[1] <> ae_events.snapshot(i.id)
                 OR (array_agg(o.payload #>> '{catalog_assessment,assessment,name}' ORDER BY o.id DESC))[1] <> $1
              LIMIT 5",
            &[&name],
        )
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert!(
        wrong.is_empty(),
        "instances without their one updated event: {wrong:?}"
    );
    assert_eq!(count(client, "SELECT count(*) FROM ti.instance"), instances);
}

#[test]
fn a_change_reaching_more_instances_than_the_limit_is_written_after_its_commit_a_page_at_a_time() {
    let cluster = Cluster::shared();
    let database = cluster.database("deferred", ForeignKeys::Without);
    let mut client = cluster.connect(&database);
    instances_of_one_assessment(&mut client, 2500);
    let created = count(&mut client, "SELECT count(*) FROM ae_events.outbox");
    assert_eq!(created, 2500);

    // Under the limit: the events are written in the change's own transaction, as before.
    client
        .batch_execute(
            "SET ae_events.fanout_inline_limit = 2500;
             UPDATE ae.assessment SET name = 'inline' WHERE id = 1;",
        )
        .unwrap();
    assert_eq!(
        count(&mut client, "SELECT count(*) FROM ae_events.outbox"),
        5000
    );
    assert_eq!(
        count(&mut client, "SELECT count(*) FROM ae_events.fanouts"),
        0
    );
    client
        .batch_execute("DELETE FROM ti.instance WHERE id > 0; TRUNCATE ae_events.outbox;")
        .unwrap();
    insert_instances(&mut client, 2500);

    // Over it: the commit records the change and writes no updated event.
    client
        .batch_execute(
            "SET ae_events.fanout_inline_limit = 2499;
             UPDATE ae.assessment SET name = 'renamed' WHERE id = 1;",
        )
        .unwrap();
    assert_eq!(
        count(&mut client, "SELECT count(*) FROM ae_events.outbox"),
        2500
    );
    let recorded = client
        .query_one(
            "SELECT source_table, row_ids, instances_found IS NULL FROM ae_events.fanouts",
            &[],
        )
        .unwrap();
    assert_eq!(recorded.get::<_, String>(0), "ae.assessment");
    assert_eq!(recorded.get::<_, Vec<i64>>(1), vec![1]);
    assert!(recorded.get::<_, bool>(2));

    // Found, then a page of 1,000 per call, each call its own transaction.
    let steps: Vec<i64> = std::iter::from_fn(|| Some(run_fanouts(&mut client)))
        .take_while(|handled| *handled > 0)
        .collect();
    assert_eq!(steps, vec![2500, 1000, 1000, 500]);
    assert_eq!(
        count(&mut client, "SELECT count(*) FROM ae_events.fanouts"),
        0
    );
    assert_eq!(
        count(&mut client, "SELECT count(*) FROM ae_events.fanout_pages"),
        0
    );
    assert_each_instance_updated_once(&mut client, 2500, "renamed");
    // Nothing is left to do, and nothing is written twice.
    assert_eq!(run_fanouts(&mut client), 0);
    assert_eq!(
        count(&mut client, "SELECT count(*) FROM ae_events.outbox"),
        5000
    );
}

/// While a page's events are being written (its transaction open), instances of the renamed
/// assessment are created and the others of that page's fan-out changed without waiting.
#[test]
fn creations_and_other_changes_do_not_wait_for_a_fanout() {
    let cluster = Cluster::shared();
    let database = cluster.database("deferred_no_wait", ForeignKeys::Without);
    let mut client = cluster.connect(&database);
    instances_of_one_assessment(&mut client, 1500);
    client
        .batch_execute(
            "SET ae_events.fanout_inline_limit = 0;
             UPDATE ae.assessment SET name = 'renamed' WHERE id = 1;",
        )
        .unwrap();
    let mut runner = cluster.connect(&database);
    runner
        .batch_execute("BEGIN; SELECT ae_events.run_fanouts(); SELECT ae_events.run_fanouts();")
        .unwrap();
    let mut application = cluster.connect(&database);
    application
        .batch_execute(
            "SET lock_timeout = '5s';
             INSERT INTO ti.instance VALUES (5000, NULL, NULL, NULL, 'in_progress', 1, 1, NULL, NULL, NULL, now(), 1, now(), 1);
             UPDATE ti.instance SET instance_status = 'completed' WHERE id = 1400;",
        )
        .unwrap();
    let new_one: String = application
        .query_one(
            "SELECT payload #>> '{catalog_assessment,assessment,name}' FROM ae_events.outbox
              WHERE aggregate_id = 5000",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(new_one, "renamed");
    runner.batch_execute("COMMIT").unwrap();
    while run_fanouts(&mut client) > 0 {}
    // 1400 got the rename with its own update, so the fan-out gave it nothing more.
    let events_of_1400 = count(
        &mut client,
        "SELECT count(*) FROM ae_events.outbox WHERE aggregate_id = 1400",
    );
    assert_eq!(events_of_1400, 2);
    let stale = count(
        &mut client,
        "SELECT count(*) FROM ti.instance AS i
          WHERE (SELECT o.payload FROM ae_events.outbox AS o WHERE o.aggregate_id = i.id
                  ORDER BY o.id DESC LIMIT 1) IS DISTINCT FROM ae_events.snapshot(i.id)",
    );
    assert_eq!(stale, 0);
}

/// `kill -9` of the session running a fan-out's page: PostgreSQL restarts, the page's
/// transaction never happened, and the next runs finish the fan-out with one event each.
#[test]
fn a_fanout_killed_mid_page_is_finished_after_the_restart() {
    // Commits that have returned must survive the crash (the test clusters commit
    // asynchronously otherwise).
    let cluster = Cluster::start(&["synchronous_commit = on"]);
    let database = cluster.database("deferred_crash", ForeignKeys::Without);
    let mut client = cluster.connect(&database);
    instances_of_one_assessment(&mut client, 2200);
    client
        .batch_execute(
            "SET ae_events.fanout_inline_limit = 0;
             UPDATE ae.assessment SET name = 'renamed' WHERE id = 1;",
        )
        .unwrap();
    // One page done and committed; the next written but not committed when the backend dies.
    assert_eq!(run_fanouts(&mut client), 2200);
    assert_eq!(run_fanouts(&mut client), 1000);
    let mut victim = cluster.connect(&database);
    let pid: i32 = victim
        .query_one("SELECT pg_backend_pid()", &[])
        .unwrap()
        .get(0);
    victim
        .batch_execute("BEGIN; SELECT ae_events.run_fanouts();")
        .unwrap();
    let killed = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    drop(victim);
    drop(client);
    // The postmaster ends every session and recovers; a connection made before it noticed
    // would be ended too, so wait a moment, then until one answers.
    std::thread::sleep(Duration::from_secs(1));
    let mut client = within(
        Duration::from_secs(60),
        || {
            let mut client =
                postgres::Client::connect(&cluster.url(&database), postgres::NoTls).ok()?;
            client.batch_execute("SELECT 1").ok()?;
            Some(client)
        },
        |client| client.is_some(),
    )
    .expect("the server accepts connections again after the crash");
    let left = count(
        &mut client,
        "SELECT instances_found - instances_done FROM ae_events.fanouts",
    );
    assert_eq!(left, 1200);
    while run_fanouts(&mut client) > 0 {}
    assert_each_instance_updated_once(&mut client, 2200, "renamed");
}

/// Relays run fan-outs; readers and the application's roles do not.
#[test]
fn only_relays_and_the_dba_run_fanouts() {
    let cluster = Cluster::shared();
    let database = cluster.database("deferred_roles", ForeignKeys::Without);
    let mut client = cluster.connect(&database);
    let reader = format!("{database}_reader");
    let relay = format!("{database}_relay");
    client
        .batch_execute(&format!(
            "CREATE ROLE {reader} LOGIN IN ROLE ae_events_reader;
             CREATE ROLE {relay} LOGIN IN ROLE ae_events_relay;"
        ))
        .unwrap();
    let error = cluster
        .connect_as(&database, &reader)
        .batch_execute("SELECT ae_events.run_fanouts()")
        .unwrap_err();
    assert_eq!(sqlstate(&error), "42501");
    let mut relay_client = cluster.connect_as(&database, &relay);
    assert_eq!(run_fanouts(&mut relay_client), 0);
    // Both may see what waits.
    assert_eq!(
        count(&mut relay_client, "SELECT count(*) FROM ae_events.fanouts"),
        0
    );
    assert_eq!(
        count(
            &mut cluster.connect_as(&database, &reader),
            "SELECT count(*) FROM ae_events.fanouts"
        ),
        0
    );
}
