//! A change that races an instance's creation is never lost (src/interlock.rs): whichever of the
//! two transactions reaches its commit-time pass second waits for the other, so the instance's
//! last event always equals `ae_events.snapshot(id)`.

mod common;

use common::*;
use postgres::Client;
use serde_json::Value;

const INSERT_790: &str = "
INSERT INTO ti.instance (id, external_id, old_id, score, instance_status, candidate_id,
    catalog_assessment_id, measurement_id, session_instance_id, workflow_candidate_step_id,
    created_at, created_by, updated_at, updated_by)
VALUES (790, NULL, NULL, NULL, 'in_progress', 101, 202, 505, NULL, NULL, now(), 1, now(), 1)";

/// The instance's events, oldest first.
fn events_of(client: &mut Client, instance_id: i64) -> Vec<OutboxRow> {
    outbox_rows(client)
        .into_iter()
        .filter(|row| row.aggregate_id == instance_id)
        .collect()
}

fn snapshot(client: &mut Client, instance_id: i64) -> Value {
    client
        .query_one("SELECT ae_events.snapshot($1)", &[&instance_id])
        .unwrap()
        .get(0)
}

/// The instance's last event shows the database as it is.
fn assert_last_event_is_the_snapshot(client: &mut Client, instance_id: i64) -> Value {
    let events = events_of(client, instance_id);
    let last = events.last().expect("the instance has events");
    assert_eq!(
        last.payload,
        snapshot(client, instance_id),
        "the last event of {instance_id} differs from its snapshot: {events:?}"
    );
    last.payload.clone()
}

/// The changes that race 790's creation, and what 790's payload shows once both committed.
const RACING_CHANGES: &[(&str, &str)] = &[
    (
        "UPDATE can.candidate SET first_name = 'Changed' WHERE id = 101",
        "candidate",
    ),
    (
        "INSERT INTO tcf.measurement_attribute VALUES
             (2, 505, 10, NULL, 3, NULL, 'added', NULL, '{}', now(), 1, now(), 1)",
        "inserted attribute",
    ),
    (
        "DELETE FROM tcf.measurement_attribute WHERE id = 1",
        "deleted attribute",
    ),
    (
        "UPDATE tcf.measurement_attribute SET remarks = 'scored' WHERE id = 1",
        "updated attribute",
    ),
    (
        "UPDATE tcf.measurement SET status = 'scored' WHERE id = 505",
        "measurement",
    ),
];

fn assert_change_shows(payload: &Value, what: &str) {
    let attributes = payload["measurement"]["measurement_attributes"]
        .as_array()
        .unwrap();
    match what {
        "candidate" => assert_eq!(payload["candidate"]["first_name"], "Changed"),
        "inserted attribute" => assert_eq!(attributes.len(), 2, "{payload}"),
        "deleted attribute" => assert!(attributes.is_empty(), "{payload}"),
        "updated attribute" => assert_eq!(attributes[0]["remarks"], "scored"),
        "measurement" => assert_eq!(payload["measurement"]["status"], "scored"),
        other => panic!("{other}"),
    }
}

/// T1 builds 790's created event (SET CONSTRAINTS ALL IMMEDIATE: the window between the build
/// and the commit record) and holds; T2 changes a row 790 refers to and commits: T2's pass waits
/// for T1, then finds 790 and gives it an updated event.
#[test]
fn a_change_committing_while_the_creation_is_built_gives_an_updated_event() {
    for (index, (change, what)) in RACING_CHANGES.iter().enumerate() {
        let cluster = Cluster::shared();
        let (database, mut t1) = seeded_database(&format!("creation_first_{index}"));
        t1.batch_execute(&format!(
            "BEGIN; {INSERT_790}; SET CONSTRAINTS ALL IMMEDIATE;"
        ))
        .unwrap();
        let t2 = {
            let database = database.clone();
            let change = change.to_string();
            std::thread::spawn(move || {
                Cluster::shared()
                    .connect(&database)
                    .batch_execute(&change)
                    .unwrap()
            })
        };
        wait_until_a_session_waits_for_a_lock(cluster, &database);
        t1.batch_execute("COMMIT").unwrap();
        t2.join().unwrap();

        let events = events_of(&mut t1, 790);
        assert_eq!(events.len(), 2, "{what}: {events:?}");
        assert_eq!(events[1].snapshot_version, 2, "{what}");
        let payload = assert_last_event_is_the_snapshot(&mut t1, 790);
        assert_change_shows(&payload, what);
        assert_last_event_is_the_snapshot(&mut t1, 789);
    }
}

/// The mirror: T2's change has run its pass (its lookup could not see 790) and holds; T1 creates
/// 790: T1's build waits for T2, then reads the change into the created event.
#[test]
fn a_creation_built_while_a_change_commits_reads_the_change() {
    for (index, (change, what)) in RACING_CHANGES.iter().enumerate() {
        let cluster = Cluster::shared();
        let (database, mut t2) = seeded_database(&format!("change_first_{index}"));
        t2.batch_execute(&format!("BEGIN; {change}; SET CONSTRAINTS ALL IMMEDIATE;"))
            .unwrap();
        let t1 = {
            let database = database.clone();
            std::thread::spawn(move || {
                Cluster::shared()
                    .connect(&database)
                    .batch_execute(INSERT_790)
                    .unwrap()
            })
        };
        wait_until_a_session_waits_for_a_lock(cluster, &database);
        t2.batch_execute("COMMIT").unwrap();
        t1.join().unwrap();

        let events = events_of(&mut t2, 790);
        assert_eq!(events.len(), 1, "{what}: {events:?}");
        let payload = assert_last_event_is_the_snapshot(&mut t2, 790);
        assert_change_shows(&payload, what);
    }
}

/// Re-pointing an existing instance races a change of the row it now points to, both ways.
#[test]
fn re_pointing_an_instance_races_a_change_of_its_new_candidate() {
    for creation_first in [true, false] {
        let cluster = Cluster::shared();
        let (database, mut client) = seeded_database(&format!("re_point_{creation_first}"));
        client
            .batch_execute(
                "INSERT INTO can.candidate (id, user_id, email, is_tnc_accepted, cf)
                 VALUES (102, 8, 'second@example.com', true, '{}')",
            )
            .unwrap();
        let re_point = "UPDATE ti.instance SET candidate_id = 102 WHERE id = 789";
        let change = "UPDATE can.candidate SET first_name = 'Renamed' WHERE id = 102";
        let (first, second) = if creation_first {
            (re_point, change)
        } else {
            (change, re_point)
        };
        client
            .batch_execute(&format!("BEGIN; {first}; SET CONSTRAINTS ALL IMMEDIATE;"))
            .unwrap();
        let other = {
            let database = database.clone();
            let second = second.to_owned();
            std::thread::spawn(move || {
                Cluster::shared()
                    .connect(&database)
                    .batch_execute(&second)
                    .unwrap()
            })
        };
        wait_until_a_session_waits_for_a_lock(cluster, &database);
        client.batch_execute("COMMIT").unwrap();
        other.join().unwrap();
        let payload = assert_last_event_is_the_snapshot(&mut client, 789);
        assert_eq!(payload["candidate"]["first_name"], "Renamed");
    }
}

/// Under REPEATABLE READ and SERIALIZABLE a change whose snapshot is older than a creation it
/// races cannot be given the new instance's updated event in its own snapshot: it fails with
/// 40001 (and retried, succeeds) instead of missing it. A creation whose snapshot predates a
/// committed change reads the change (the pass reads the latest committed rows).
#[test]
fn under_repeatable_read_and_serializable_a_racing_change_fails_with_40001_instead_of_missing_the_instance(
) {
    for (index, level) in ["REPEATABLE READ", "SERIALIZABLE"].iter().enumerate() {
        let cluster = Cluster::shared();
        let (database, mut t2) = seeded_database(&format!("isolation_{index}"));
        t2.batch_execute(&format!("BEGIN ISOLATION LEVEL {level}; SELECT 1;"))
            .unwrap();
        cluster
            .connect(&database)
            .batch_execute(INSERT_790)
            .unwrap();
        let error = t2
            .batch_execute(
                "UPDATE can.candidate SET first_name = 'Changed' WHERE id = 101; COMMIT;",
            )
            .unwrap_err();
        assert_eq!(sqlstate(&error), "40001", "{level}: {error}");
        t2.batch_execute("ROLLBACK").ok();
        let mut client = cluster.connect(&database);
        assert_last_event_is_the_snapshot(&mut client, 790);
        // Retried, it succeeds and 790 gets its updated event.
        client
            .batch_execute(&format!(
                "BEGIN ISOLATION LEVEL {level};
                 UPDATE can.candidate SET first_name = 'Changed' WHERE id = 101; COMMIT;"
            ))
            .unwrap();
        let payload = assert_last_event_is_the_snapshot(&mut client, 790);
        assert_eq!(payload["candidate"]["first_name"], "Changed");
        let mut t1 = cluster.connect(&database);
        t1.batch_execute(&format!("BEGIN ISOLATION LEVEL {level}; SELECT 1;"))
            .unwrap();
        client
            .batch_execute("UPDATE can.candidate SET first_name = 'Later' WHERE id = 101")
            .unwrap();
        t1.batch_execute(&format!("{}; COMMIT;", INSERT_790.replace("790", "791")))
            .unwrap();
        let payload = assert_last_event_is_the_snapshot(&mut client, 791);
        assert_eq!(payload["candidate"]["first_name"], "Later", "{level}");
    }
}

/// A tiny deterministic generator (no dependency for a test).
struct Random(u64);

impl Random {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// 4 writers create a few hundred instances of 10 shared candidates and measurements while they
/// change those candidates, measurements and attributes, interleaved at random. At the end every
/// instance's last event equals its snapshot.
#[test]
fn randomized_writers_leave_every_instance_with_its_true_last_event() {
    let (database, mut client) = seeded_database("race_stress");
    client
        .batch_execute(
            "INSERT INTO can.candidate (id, user_id, email, is_tnc_accepted, cf)
             SELECT 1000 + n, n, 'c' || n || '@example.com', true, '{}'
               FROM generate_series(1, 10) AS n;
             INSERT INTO tcf.measurement
             SELECT 2000 + n, 'pending', '00:00:00', NULL, NULL, now(), NULL, NULL
               FROM generate_series(1, 10) AS n;
             CREATE SEQUENCE public.stress_ids START 100000;
             UPDATE ae_events.bubble_up SET enabled = true WHERE source_table = 'ae.assessment';",
        )
        .unwrap();
    // Renames of the assessment every instance is of: writers 0 and 2 defer their fan-outs
    // (run meanwhile by `runner`), 1 and 3 write them in their own transactions.
    let writing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let runner = {
        let database = database.clone();
        let writing = writing.clone();
        std::thread::spawn(move || {
            let mut client = Cluster::shared().connect(&database);
            while writing.load(std::sync::atomic::Ordering::SeqCst) {
                let handled: i64 = client
                    .query_one("SELECT ae_events.run_fanouts()", &[])
                    .unwrap()
                    .get(0);
                if handled == 0 {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
            }
        })
    };
    let writers: Vec<_> = (0..4u64)
        .map(|writer| {
            let database = database.clone();
            std::thread::spawn(move || {
                let mut client = Cluster::shared().connect(&database);
                if writer % 2 == 0 {
                    client
                        .batch_execute("SET ae_events.fanout_inline_limit = 0")
                        .unwrap();
                }
                let mut random = Random(0x9E37_79B9_7F4A_7C15 ^ ((writer + 1) * 7919));
                let mut retries = 0;
                for _ in 0..120 {
                    let candidate = 1001 + random.below(10);
                    let measurement = 2001 + random.below(10);
                    let statement = match random.below(8) {
                        7 => "UPDATE ae.assessment SET name = 'a' || nextval('public.stress_ids')
                               WHERE id = (SELECT assessment_id FROM ae.catalog_assessment
                                            WHERE id = 202)"
                            .to_owned(),
                        0..=2 => format!(
                            "INSERT INTO ti.instance SELECT nextval('public.stress_ids'), NULL, NULL,
                                 NULL, 'in_progress', {candidate}, 202, {measurement}, NULL, NULL,
                                 now(), 1, now(), 1"
                        ),
                        3 => format!(
                            "UPDATE can.candidate SET first_name = 'n' || nextval('public.stress_ids')
                              WHERE id = {candidate}"
                        ),
                        4 => format!(
                            "INSERT INTO tcf.measurement_attribute
                             SELECT nextval('public.stress_ids'), {measurement}, 10, NULL, 1, NULL,
                                    'r', NULL, '{{}}', now(), 1, now(), 1"
                        ),
                        5 => format!(
                            "DELETE FROM tcf.measurement_attribute WHERE id = (
                                 SELECT min(id) FROM tcf.measurement_attribute
                                  WHERE measurement_id = {measurement})"
                        ),
                        _ => format!(
                            "BEGIN;
                             INSERT INTO ti.instance SELECT nextval('public.stress_ids'), NULL, NULL,
                                 NULL, 'in_progress', {candidate}, 202, {measurement}, NULL, NULL,
                                 now(), 1, now(), 1;
                             UPDATE tcf.measurement SET status = 's' || nextval('public.stress_ids')
                              WHERE id = {measurement};
                             COMMIT;"
                        ),
                    };
                    loop {
                        match client.batch_execute(&statement) {
                            Ok(()) => break,
                            // A deadlock with the application's own row locks may be chosen to
                            // fail; the application retries.
                            Err(error) if ["40P01", "40001"].contains(&sqlstate(&error).as_str()) => {
                                client.batch_execute("ROLLBACK").ok();
                                retries += 1;
                            }
                            Err(error) => panic!("{statement}: {error}"),
                        }
                    }
                }
                retries
            })
        })
        .collect();
    let retries: i32 = writers.into_iter().map(|w| w.join().unwrap()).sum();
    writing.store(false, std::sync::atomic::Ordering::SeqCst);
    runner.join().unwrap();
    // The fan-outs recorded last, run now.
    while client
        .query_one("SELECT ae_events.run_fanouts()", &[])
        .unwrap()
        .get::<_, i64>(0)
        > 0
    {}
    let deferred: i64 = client
        .query_one("SELECT count(*) FROM ae_events.fanouts", &[])
        .unwrap()
        .get(0);
    assert_eq!(deferred, 0);
    let instances: i64 = client
        .query_one("SELECT count(*) FROM ti.instance", &[])
        .unwrap()
        .get(0);
    assert!(instances > 100, "{instances} instances");
    let stale: Vec<i64> = client
        .query(
            "SELECT i.id FROM ti.instance AS i
              WHERE (SELECT o.payload FROM ae_events.outbox AS o
                      WHERE o.aggregate_id = i.id ORDER BY o.id DESC LIMIT 1)
                    IS DISTINCT FROM ae_events.snapshot(i.id)
              ORDER BY i.id",
            &[],
        )
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert!(
        stale.is_empty(),
        "instances whose last event is not their snapshot: {stale:?} ({retries} retries)"
    );
}

/// A rename of the assessment 790 is of (bubble-up on for `ae.assessment`), with its fan-out
/// written in its own transaction and deferred (`ae_events.fanout_inline_limit = 0`), races
/// 790's creation both ways: once the fan-outs have run, 789's and 790's last events show it.
#[test]
fn a_reference_change_racing_a_creation_is_never_lost_inline_or_deferred() {
    for limit in [1000, 0] {
        for creation_first in [true, false] {
            let cluster = Cluster::shared();
            let (database, mut first) =
                seeded_database(&format!("reference_race_{limit}_{creation_first}"));
            first
                .batch_execute(
                    "UPDATE ae_events.bubble_up SET enabled = true
                      WHERE source_table = 'ae.assessment'",
                )
                .unwrap();
            let rename = format!(
                "SET ae_events.fanout_inline_limit = {limit};
                 UPDATE ae.assessment SET name = 'Changed'
                  WHERE id = (SELECT assessment_id FROM ae.catalog_assessment WHERE id = 202)"
            );
            let (held, second) = if creation_first {
                (INSERT_790.to_owned(), rename)
            } else {
                (rename, INSERT_790.to_owned())
            };
            // The first has run its pass (its locks taken) and holds; the second waits for it.
            first
                .batch_execute(&format!("BEGIN; {held}; SET CONSTRAINTS ALL IMMEDIATE;"))
                .unwrap();
            let second = {
                let database = database.clone();
                std::thread::spawn(move || {
                    Cluster::shared()
                        .connect(&database)
                        .batch_execute(&second)
                        .unwrap()
                })
            };
            wait_until_a_session_waits_for_a_lock(cluster, &database);
            first.batch_execute("COMMIT").unwrap();
            second.join().unwrap();
            while first
                .query_one("SELECT ae_events.run_fanouts()", &[])
                .unwrap()
                .get::<_, i64>(0)
                > 0
            {}
            for instance in [789, 790] {
                let payload = assert_last_event_is_the_snapshot(&mut first, instance);
                assert_eq!(
                    payload["catalog_assessment"]["assessment"]["name"], "Changed",
                    "limit {limit}, creation first: {creation_first}, instance {instance}"
                );
            }
        }
    }
}
