//! The demo behind `scripts/demo.sh`: a throwaway cluster, the reference schema, the extension,
//! a listener, the seed's example inserted in one transaction, and what the relay would see.

#[path = "../tests/common/mod.rs"]
mod common;

use common::*;
use std::time::Duration;

fn main() {
    println!("Starting a throwaway PostgreSQL 15 cluster under /tmp ...");
    let cluster = Cluster::start(&[]);
    let database = cluster.empty_database("demo");
    let mut app = cluster.connect(&database);
    load_schema(&mut app, ForeignKeys::With);
    app.batch_execute("CREATE EXTENSION ae_events").unwrap();
    println!("Database {database} on 127.0.0.1:{}: reference schema loaded, CREATE EXTENSION ae_events done.", cluster.port);

    let mut listener = cluster.connect(&database);
    listener.batch_execute("LISTEN ae_events").unwrap();
    println!("A listener runs LISTEN ae_events.\n");

    println!("Inserting the seed's example (tests/sql/seed_example.sql) in one transaction ...");
    app.batch_execute(SEED_EXAMPLE).unwrap();

    let received = drain_notifications(&mut listener, Duration::from_secs(2));
    for (channel, text) in &received {
        println!(
            "\nNotification on channel \"{channel}\" ({} bytes), as received:\n{text}",
            text.len()
        );
    }
    if received.is_empty() {
        eprintln!("No notification arrived.");
        std::process::exit(1);
    }

    let row = app
        .query_one(
            "SELECT id, event_id::text, subscription_key, event_type, aggregate_type, aggregate_id,
                    snapshot_version, occurred_at::text, txid::text, jsonb_pretty(payload)
               FROM ae_events.outbox ORDER BY id DESC LIMIT 1",
            &[],
        )
        .unwrap();
    println!("\nThe outbox row (SELECT * FROM ae_events.outbox):");
    let columns = [
        "id",
        "event_id",
        "subscription_key",
        "event_type",
        "aggregate_type",
        "aggregate_id",
        "snapshot_version",
        "occurred_at",
        "txid",
    ];
    let id: i64 = row.get(0);
    let aggregate_id: i64 = row.get(5);
    let version: i32 = row.get(6);
    let values = [
        id.to_string(),
        row.get(1),
        row.get(2),
        row.get(3),
        row.get(4),
        aggregate_id.to_string(),
        version.to_string(),
        row.get(7),
        row.get(8),
    ];
    for (column, value) in columns.iter().zip(values) {
        println!("  {column:<17} {value}");
    }
    let payload: String = row.get(9);
    println!("  payload\n{payload}");

    let matches = {
        let stored: serde_json::Value = app
            .query_one("SELECT payload FROM ae_events.outbox WHERE id = $1", &[&id])
            .unwrap()
            .get(0);
        stored == seed_example_payload()
    };
    println!("\nPayload equals the seed's example JSON: {matches}");

    println!(
        "\nUpdating the instance's score and its candidate's first name in one transaction ..."
    );
    app.batch_execute(
        "BEGIN;
         UPDATE ti.instance SET score = 88.5 WHERE id = 789;
         UPDATE can.candidate SET first_name = 'Janet' WHERE id = 101;
         COMMIT;",
    )
    .unwrap();
    let received = drain_notifications(&mut listener, Duration::from_secs(2));
    println!("{} notification(s), one per instance:", received.len());
    for (_, text) in &received {
        // The envelope as received, in the contract's key order; the payload shortened.
        match text.find("\"payload\"") {
            Some(start) => println!(
                "{}\"payload\": {{ ... the snapshot ... }}}}",
                &text[..start]
            ),
            None => println!("{text}"),
        }
    }
    let updated = app
        .query_one(
            "SELECT subscription_key, snapshot_version, payload->'score', payload#>'{candidate,first_name}'
               FROM ae_events.outbox ORDER BY id DESC LIMIT 1",
            &[],
        )
        .unwrap();
    println!(
        "Outbox: {} version {}: score {}, candidate.first_name {}",
        updated.get::<_, String>(0),
        updated.get::<_, i32>(1),
        updated.get::<_, serde_json::Value>(2),
        updated.get::<_, serde_json::Value>(3)
    );
    println!("The cluster stops and its files are removed when this program exits.");
}
