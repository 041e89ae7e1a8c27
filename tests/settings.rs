//! The settings of shared/contract/events.md §5: enabled (superuser only), channel, notify; bad values refused
//! when they are set.

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::Duration;

const WAIT: Duration = Duration::from_millis(1500);

/// A database whose sessions load the library at start (the README's recommended set-up), so
/// that every session validates settings when they are set; plus a non-superuser `app_user`
/// that may write the application's tables and has no privilege on anything of ae_events.
fn settings_database() -> (String, String) {
    let cluster = Cluster::shared();
    let database = cluster.database("settings", ForeignKeys::With);
    let mut admin = cluster.connect(&database);
    admin.batch_execute(MINIMAL_REFERENCE_DATA).unwrap();
    // Roles are cluster-wide: one per database keeps concurrent tests apart.
    let app_user = format!("app_{database}");
    admin
        .batch_execute(&format!(
            "ALTER DATABASE {database} SET session_preload_libraries = 'ae_events';
             CREATE ROLE {app_user} LOGIN;
             GRANT USAGE ON SCHEMA ti, can, ae, tcf TO {app_user};
             GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA ti, can, ae, tcf TO {app_user};"
        ))
        .unwrap();
    (database, app_user)
}

#[test]
fn enabled_off_stops_events_and_only_a_superuser_may_change_it() {
    let cluster = Cluster::shared();
    let (database, app_user) = settings_database();
    let mut admin = cluster.connect(&database);
    admin.batch_execute("SET ae_events.enabled = off").unwrap();
    insert_instance(&mut admin, 1);
    admin.batch_execute("RESET ae_events.enabled").unwrap();
    insert_instance(&mut admin, 2);
    assert_eq!(outbox_instances(&mut admin), vec![2]);

    let mut app = cluster.connect_as(&database, &app_user);
    let refused = app
        .batch_execute("SET ae_events.enabled = off")
        .unwrap_err();
    assert_eq!(sqlstate(&refused), "42501", "{refused:?}");
    // The application role has no privilege on ae_events, and its insert still gets its event.
    let outbox_denied = app
        .batch_execute("SELECT * FROM ae_events.outbox")
        .unwrap_err();
    assert_eq!(sqlstate(&outbox_denied), "42501");
    insert_instance(&mut app, 3);
    assert_eq!(outbox_instances(&mut admin), vec![2, 3]);
}

#[test]
fn channel_setting_chooses_the_notification_channel() {
    let cluster = Cluster::shared();
    let (database, app_user) = settings_database();
    let mut default_listener = cluster.connect(&database);
    default_listener.batch_execute("LISTEN ae_events").unwrap();
    let mut custom_listener = cluster.connect(&database);
    custom_listener
        .batch_execute("LISTEN \"Relay Channel\"")
        .unwrap();

    // Only a superuser may choose the channel (the DBA, here for the application's role).
    cluster
        .connect(&database)
        .batch_execute(&format!(
            "ALTER ROLE {app_user} IN DATABASE {database} SET ae_events.channel = 'Relay Channel'"
        ))
        .unwrap();
    let mut app = cluster.connect_as(&database, &app_user);
    insert_instance(&mut app, 1);

    let custom = drain_notifications(&mut custom_listener, WAIT);
    assert_eq!(custom.len(), 1);
    assert_eq!(custom[0].0, "Relay Channel");
    assert!(drain_notifications(&mut default_listener, Duration::from_millis(300)).is_empty());
}

#[test]
fn notify_reference_never_carries_the_payload_and_off_sends_nothing() {
    let cluster = Cluster::shared();
    let (database, _) = settings_database();
    let mut listener = cluster.connect(&database);
    listener.batch_execute("LISTEN ae_events").unwrap();
    // Only a superuser may change the notification settings.
    let mut app = cluster.connect(&database);

    app.batch_execute("SET ae_events.notify = reference")
        .unwrap();
    insert_instance(&mut app, 1);
    let received = drain_notifications(&mut listener, WAIT);
    assert_eq!(received.len(), 1);
    let message: Value = serde_json::from_str(&received[0].1).unwrap();
    assert!(message.get("payload").is_none(), "{message}");
    assert_eq!(message["payload_omitted"], json!(true));
    assert_eq!(message["aggregate_id"], json!(1));

    app.batch_execute("SET ae_events.notify = off").unwrap();
    insert_instance(&mut app, 2);
    assert!(drain_notifications(&mut listener, Duration::from_millis(700)).is_empty());

    app.batch_execute("SET ae_events.notify = full").unwrap();
    insert_instance(&mut app, 3);
    let received = drain_notifications(&mut listener, WAIT);
    let message: Value = serde_json::from_str(&received[0].1).unwrap();
    assert_eq!(message["payload"]["id"], json!(3));

    let mut admin = cluster.connect(&database);
    assert_eq!(outbox_instances(&mut admin), vec![1, 2, 3]);
}

#[test]
fn bad_values_are_refused_when_set() {
    let cluster = Cluster::shared();
    let (database, _) = settings_database();
    // Only a superuser may set them at all (tests/security.rs); the values are checked for it.
    let mut app = cluster.connect(&database);
    let long_channel = format!("SET ae_events.channel = '{}'", "c".repeat(64));
    let cases = [
        ("SET ae_events.notify = 'sometimes'", "22023"),
        ("SET ae_events.channel = ''", "22023"),
        (long_channel.as_str(), "22023"),
        ("SET ae_events.no_such_setting = 1", "42602"),
        ("SET ae_events.notify_payload_budget = 'lots'", "22023"),
        ("SET ae_events.notify_payload_budget = -2", "22023"),
    ];
    for (statement, expected) in cases {
        let error = app.batch_execute(statement).unwrap_err();
        assert_eq!(sqlstate(&error), expected, "{statement}: {error:?}");
    }
    let mut admin = cluster.connect(&database);
    let error = admin
        .batch_execute("SET ae_events.enabled = 'maybe'")
        .unwrap_err();
    assert_eq!(sqlstate(&error), "22023", "{error:?}");
    let channel_error = app.batch_execute("SET ae_events.channel = ''").unwrap_err();
    let message = error_message(&channel_error);
    assert!(message.starts_with("ae_events:"), "{message}");
    // The refused values left the settings as they were.
    let notify: String = app.query_one("SHOW ae_events.notify", &[]).unwrap().get(0);
    let channel: String = app.query_one("SHOW ae_events.channel", &[]).unwrap().get(0);
    assert_eq!(
        (notify.as_str(), channel.as_str()),
        ("reference", "ae_events")
    );
    let budget: String = app
        .query_one("SHOW ae_events.notify_payload_budget", &[])
        .unwrap()
        .get(0);
    assert_eq!(budget, "1MB");
}

/// With `notify = reference` (the default) a notification only wakes listeners up: a
/// transaction sends one however many events it writes, and none within
/// `ae_events.notify_interval` of the backend's last committed one; one that a rolled-back
/// savepoint took away is sent again by the transaction's later events.
#[test]
fn reference_wake_ups_come_once_per_transaction_and_not_within_the_interval() {
    let cluster = Cluster::shared();
    let database = cluster.database("wake_ups", ForeignKeys::Without);
    let mut app = cluster.connect(&database);
    app.batch_execute(MINIMAL_REFERENCE_DATA).unwrap();
    let mut listener = cluster.connect(&database);
    listener.batch_execute("LISTEN ae_events").unwrap();
    let ids = |received: &[(String, String)]| -> Vec<i64> {
        received
            .iter()
            .map(|(_, text)| {
                serde_json::from_str::<Value>(text).unwrap()["aggregate_id"]
                    .as_i64()
                    .unwrap()
            })
            .collect()
    };

    app.batch_execute(
        "SET ae_events.notify_interval = 0;
         BEGIN;
         INSERT INTO ti.instance VALUES (1, NULL, NULL, NULL, 'in_progress', 1, 1, NULL, NULL, NULL, now(), 1, now(), 1);
         INSERT INTO ti.instance VALUES (2, NULL, NULL, NULL, 'in_progress', 1, 1, NULL, NULL, NULL, now(), 1, now(), 1);
         INSERT INTO ti.instance VALUES (3, NULL, NULL, NULL, 'in_progress', 1, 1, NULL, NULL, NULL, now(), 1, now(), 1);
         COMMIT;",
    )
    .unwrap();
    assert_eq!(ids(&drain_notifications(&mut listener, WAIT)), vec![1]);

    // Interval 0: every transaction wakes listeners.
    insert_instance(&mut app, 4);
    insert_instance(&mut app, 5);
    assert_eq!(ids(&drain_notifications(&mut listener, WAIT)), vec![4, 5]);

    // Within the interval of the last wake-up (5's commit): quiet.
    app.batch_execute("SET ae_events.notify_interval = '1min'")
        .unwrap();
    insert_instance(&mut app, 6);
    insert_instance(&mut app, 7);
    assert!(drain_notifications(&mut listener, Duration::from_millis(700)).is_empty());

    app.batch_execute(
        "SET ae_events.notify_interval = 0;
         BEGIN;
         SAVEPOINT s;
         INSERT INTO ti.instance VALUES (8, NULL, NULL, NULL, 'in_progress', 1, 1, NULL, NULL, NULL, now(), 1, now(), 1);
         SET CONSTRAINTS ALL IMMEDIATE;
         ROLLBACK TO s;
         INSERT INTO ti.instance VALUES (9, NULL, NULL, NULL, 'in_progress', 1, 1, NULL, NULL, NULL, now(), 1, now(), 1);
         COMMIT;",
    )
    .unwrap();
    assert_eq!(ids(&drain_notifications(&mut listener, WAIT)), vec![9]);
    // Every event is in the outbox, announced or not.
    assert_eq!(outbox_instances(&mut app), vec![1, 2, 3, 4, 5, 6, 7, 9]);
}
