//! For analysts and DBAs: the events view and its indexes on a million-row outbox, retention
//! (prune never deletes an unacknowledged event) and stats.

mod common;

use common::*;
use postgres::Client;
use serde_json::Value;

fn explain(client: &mut Client, query: &str) -> String {
    let plan: Value = client
        .query_one(&format!("EXPLAIN (FORMAT JSON) {query}"), &[])
        .unwrap()
        .get(0);
    let text: String = client
        .query(&format!("EXPLAIN {query}"), &[])
        .unwrap()
        .iter()
        .map(|row| row.get::<_, String>(0))
        .collect::<Vec<_>>()
        .join("\n");
    println!("EXPLAIN {query}\n{text}\n");
    plan.to_string()
}

#[test]
fn the_events_view_finds_a_time_range_and_an_instance_history_by_index_in_a_million_rows() {
    let cluster = Cluster::shared();
    let database = cluster.database("million", ForeignKeys::Without);
    let mut client = cluster.connect(&database);
    client.batch_execute(SEED_EXAMPLE).unwrap();
    // A million events, one a second over the last 11.6 days, for 50,000 instances.
    client
        .batch_execute(
            "INSERT INTO ae_events.outbox (event_id, subscription_key, event_type, aggregate_type,
                                           aggregate_id, snapshot_version, payload, occurred_at, txid)
             SELECT gen_random_uuid(), 'ae.test_instance.updated', 'ae_test_instance_updated',
                    'test_instance', g % 50000, g / 50000 + 1,
                    jsonb_build_object('instance_status', 'in_progress', 'candidate_id', g % 7000),
                    now() - (1000000 - g) * interval '1 second', pg_current_xact_id()
               FROM generate_series(1, 1000000) AS g;
             ANALYZE ae_events.outbox;",
        )
        .unwrap();

    let seed: Vec<(String, String, String, i32)> = client
        .query(
            "SELECT candidate_name, assessment_name, catalog_name, attribute_count
               FROM ae_events.events WHERE instance_id = 789 AND event = 'ae.test_instance.created'",
            &[],
        )
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2), row.get(3)))
        .collect();
    assert_eq!(
        seed,
        [(
            "Jane Doe".to_owned(),
            "Python Proficiency Test".to_owned(),
            "Standard Assessments".to_owned(),
            1
        )]
    );

    let range = explain(
        &mut client,
        "SELECT * FROM ae_events.events
          WHERE occurred_at BETWEEN now() - interval '2 hours' AND now() - interval '1 hour'",
    );
    assert!(range.contains("outbox_occurred_at_idx"), "{range}");
    assert!(!range.contains("Seq Scan"), "{range}");
    let history = explain(
        &mut client,
        "SELECT * FROM ae_events.events WHERE instance_id = 4242 ORDER BY id",
    );
    assert!(history.contains("outbox_aggregate_idx"), "{history}");
    assert!(!history.contains("Seq Scan"), "{history}");
    let in_range: i64 = client
        .query_one(
            "SELECT count(*) FROM ae_events.events
              WHERE occurred_at BETWEEN now() - interval '2 hours' AND now() - interval '1 hour'",
            &[],
        )
        .unwrap()
        .get(0);
    assert!((3599..=3602).contains(&in_range), "{in_range}");
}

fn database_with_events(name: &str, instances: i64) -> (String, Client) {
    let cluster = Cluster::shared();
    let database = cluster.database(name, ForeignKeys::Without);
    let mut client = cluster.connect(&database);
    client.batch_execute(MINIMAL_REFERENCE_DATA).unwrap();
    for id in 1..=instances {
        insert_instance(&mut client, id);
    }
    (database, client)
}

fn remaining(client: &mut Client) -> Vec<i64> {
    outbox_instances(client)
}

fn polled_ids(client: &mut Client, consumer: &str) -> Vec<i64> {
    client
        .query("SELECT id FROM ae_events.poll($1, 100)", &[&consumer])
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect()
}

fn prune(client: &mut Client, older_than: &str, batch_size: i32) -> i64 {
    client
        .query_one(
            "SELECT ae_events.prune($1::text::interval, $2)",
            &[&older_than, &batch_size],
        )
        .unwrap()
        .get(0)
}

#[test]
fn prune_never_deletes_an_event_a_consumer_has_not_acknowledged() {
    let (_, mut client) = database_with_events("prune", 6);
    let ids: Vec<i64> = outbox_rows(&mut client).iter().map(|r| r.id).collect();
    client
        .batch_execute(
            "SELECT ae_events.create_consumer('slow', true);
             SELECT ae_events.create_consumer('fast', true);",
        )
        .unwrap();
    // A consumer acknowledges what poll delivered. The delivery horizon is the cluster's, so
    // a long transaction of another test (the million rows) can hold these events back.
    for consumer in ["slow", "fast"] {
        let delivered = eventually(
            || polled_ids(&mut client, consumer),
            |polled| polled.len() == ids.len(),
        );
        assert_eq!(delivered, ids, "{consumer}");
    }
    client
        .batch_execute(&format!(
            "SELECT ae_events.ack('slow', {}); SELECT ae_events.ack('fast', {});",
            ids[1], ids[4]
        ))
        .unwrap();
    assert_eq!(prune(&mut client, "1 hour", 100), 0, "nothing is that old");
    // Old enough, but only what both consumers have acknowledged may go, in batches of one.
    assert_eq!(prune(&mut client, "0 seconds", 1), 2);
    assert_eq!(remaining(&mut client), vec![3, 4, 5, 6]);
    client
        .batch_execute(&format!("SELECT ae_events.ack('slow', {})", ids[3]))
        .unwrap();
    assert_eq!(prune(&mut client, "0 seconds", 100), 2);
    assert_eq!(remaining(&mut client), vec![5, 6]);
    client
        .batch_execute(
            "SELECT ae_events.drop_consumer('slow'); SELECT ae_events.drop_consumer('fast')",
        )
        .unwrap();
    assert_eq!(
        prune(&mut client, "0 seconds", 100),
        2,
        "no consumer: every old event"
    );
    assert!(remaining(&mut client).is_empty());

    for (statement, state) in [
        ("SELECT ae_events.prune('-1 day')", "22023"),
        ("SELECT ae_events.prune('1 day', 0)", "22023"),
    ] {
        let error = client.batch_execute(statement).unwrap_err();
        assert_eq!(sqlstate(&error), state, "{statement}");
        assert!(error_message(&error).starts_with("ae_events: "));
    }
}

/// kind, name, events, lag_events, whether lag_age is set, notification_queue_usage.
type StatsRow = (String, String, Option<i64>, Option<i64>, bool, f64);

#[test]
fn stats_count_events_per_key_and_each_consumers_lag() {
    let cluster = Cluster::shared();
    let (database, mut client) = database_with_events("stats", 3);
    client
        .batch_execute("UPDATE ti.instance SET score = 1 WHERE id = 1")
        .unwrap();
    // (Each its own transaction: a consumer created in the transaction that wrote an event
    // still gets that event, which commits after it.)
    client
        .batch_execute("SELECT ae_events.create_consumer('behind', true)")
        .unwrap();
    client
        .batch_execute("SELECT ae_events.create_consumer('current')")
        .unwrap();
    let rows: Vec<StatsRow> = client
        .query(
            "SELECT kind, name, events, lag_events, lag_age IS NOT NULL, notification_queue_usage
               FROM ae_events.stats ORDER BY kind, name",
            &[],
        )
        .unwrap()
        .iter()
        .map(|row| {
            (
                row.get(0),
                row.get(1),
                row.get(2),
                row.get(3),
                row.get(4),
                row.get(5),
            )
        })
        .collect();
    let summary: Vec<_> = rows
        .iter()
        .map(|(kind, name, events, lag, aged, _)| {
            (kind.as_str(), name.as_str(), *events, *lag, *aged)
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("consumer", "behind", None, Some(4), true),
            ("consumer", "current", None, Some(0), false),
            (
                "subscription",
                "ae.test_instance.created",
                Some(3),
                None,
                false
            ),
            (
                "subscription",
                "ae.test_instance.updated",
                Some(1),
                None,
                false
            ),
        ]
    );
    assert!(rows.iter().all(|row| (0.0..=1.0).contains(&row.5)));

    // The reader role reads the view and the stats; nobody else.
    client
        .batch_execute(&format!(
            "CREATE ROLE analyst_{database} LOGIN IN ROLE ae_events_reader;
             CREATE ROLE other_{database} LOGIN;"
        ))
        .unwrap();
    let mut analyst = cluster.connect_as(&database, &format!("analyst_{database}"));
    for query in [
        "SELECT count(*) FROM ae_events.events",
        "SELECT count(*) FROM ae_events.stats",
    ] {
        analyst.query_one(query, &[]).unwrap();
    }
    let error = analyst
        .batch_execute("SELECT ae_events.prune('0 seconds')")
        .unwrap_err();
    assert_eq!(sqlstate(&error), "42501");
    let mut other = cluster.connect_as(&database, &format!("other_{database}"));
    for query in [
        "SELECT count(*) FROM ae_events.events",
        "SELECT count(*) FROM ae_events.stats",
    ] {
        let error = other.batch_execute(query).unwrap_err();
        assert_eq!(sqlstate(&error), "42501", "{query}");
    }
}
