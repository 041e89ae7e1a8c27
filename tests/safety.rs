//! What callers and DBAs cannot break: a hostile search_path, and errors while building or
//! writing an event (the transaction fails with an `ae_events:` error naming the instance, and
//! nothing is half-written).

mod common;

use common::*;
use postgres::Client;
use std::time::Duration;

/// Look-alikes of everything an event's queries use, in a schema the caller puts first.
const LOOK_ALIKES: &str = "
CREATE SCHEMA evil;
CREATE TABLE evil.instance (id bigint, candidate_id bigint);
CREATE TABLE evil.candidate (id bigint, email text);
CREATE TABLE evil.outbox (id bigint);
CREATE TABLE evil.instance_state (instance_id bigint, snapshot_version integer, snapshot_digest bytea);
CREATE TABLE evil.bubble_up (source_table text, enabled boolean);
CREATE FUNCTION evil.unnest(bigint[]) RETURNS SETOF bigint
    LANGUAGE sql AS $$ SELECT 0::bigint $$;
CREATE FUNCTION evil.jsonb_build_object(VARIADIC text[]) RETURNS jsonb
    LANGUAGE sql AS $$ SELECT '{\"hijacked\": true}'::jsonb $$;
CREATE FUNCTION evil.to_jsonb(anyelement) RETURNS jsonb
    LANGUAGE sql AS $$ SELECT '{\"hijacked\": true}'::jsonb $$;
CREATE FUNCTION evil.never_equal(bigint, bigint) RETURNS boolean
    LANGUAGE sql AS $$ SELECT false $$;
CREATE OPERATOR evil.= (LEFTARG = bigint, RIGHTARG = bigint, FUNCTION = evil.never_equal);
CREATE FUNCTION evil.pg_notify(text, text) RETURNS void
    LANGUAGE sql AS $$ SELECT $$;
CREATE FUNCTION evil.text(numeric) RETURNS text
    LANGUAGE sql AS $$ SELECT 'hijacked' $$;
CREATE FUNCTION evil.gen_random_uuid() RETURNS uuid
    LANGUAGE sql AS $$ SELECT '00000000-0000-0000-0000-000000000000'::uuid $$;
";

#[test]
fn a_hostile_search_path_cannot_change_the_payload_or_break_the_insert() {
    let cluster = Cluster::shared();
    let database = cluster.database("hijack", ForeignKeys::With);
    let mut admin = cluster.connect(&database);
    let app_user = format!("app_{database}");
    admin
        .batch_execute(&format!(
            "CREATE ROLE {app_user} LOGIN;
             GRANT USAGE ON SCHEMA ti, can, ae, tcf TO {app_user};
             GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA ti, can, ae, tcf TO {app_user};
             GRANT CREATE ON DATABASE {database} TO {app_user};
             ALTER DATABASE {database} SET ae_events.notify = full;"
        ))
        .unwrap();
    let mut listener = cluster.connect(&database);
    listener.batch_execute("LISTEN ae_events").unwrap();

    let mut app = cluster.connect_as(&database, &app_user);
    app.batch_execute(LOOK_ALIKES).unwrap();
    app.batch_execute("SET search_path = evil, ti, can, ae, tcf, pg_catalog")
        .unwrap();
    app.batch_execute(SEED_EXAMPLE).unwrap();

    let rows = outbox_rows(&mut admin);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].payload, seed_example_payload());
    assert_ne!(rows[0].event_id, "00000000-0000-0000-0000-000000000000");
    let received = drain_notifications(&mut listener, Duration::from_millis(1500));
    assert_eq!(received.len(), 1);
    let notified: serde_json::Value = serde_json::from_str(&received[0].1).unwrap();
    assert_eq!(notified["payload"], seed_example_payload());

    // Changes by the same role, with the same search_path, bubble up as they should (the role
    // has no privilege on ae_events: the settings and versions are read as the owner).
    app.batch_execute(
        "BEGIN;
         UPDATE can.candidate SET first_name = 'Jill' WHERE id = 101;
         DELETE FROM tcf.measurement_attribute WHERE id = 1;
         COMMIT;",
    )
    .unwrap();
    let rows = outbox_rows(&mut admin);
    assert_eq!(rows.len(), 2);
    let mut expected = seed_example_payload();
    expected["candidate"]["first_name"] = serde_json::json!("Jill");
    expected["measurement"]["measurement_attributes"] = serde_json::json!([]);
    assert_eq!(rows[1].payload, expected);
    assert_eq!(rows[1].subscription_key, "ae.test_instance.updated");
    assert_eq!(rows[1].snapshot_version, 2);
    app.batch_execute("DELETE FROM ti.instance WHERE id = 789")
        .unwrap();
    let states: i64 = admin
        .query_one("SELECT count(*) FROM ae_events.instance_state", &[])
        .unwrap()
        .get(0);
    assert_eq!(states, 0, "the deleted instance's state is dropped");
}

fn assert_nothing_written(client: &mut Client) {
    let instances: i64 = client
        .query_one("SELECT count(*) FROM ti.instance", &[])
        .unwrap()
        .get(0);
    let events: i64 = client
        .query_one("SELECT count(*) FROM ae_events.outbox", &[])
        .unwrap()
        .get(0);
    assert_eq!(
        (instances, events),
        (0, 0),
        "the failed transaction left rows behind"
    );
}

#[test]
fn an_outbox_check_constraint_that_rejects_the_row_fails_the_transaction_naming_the_instance() {
    let cluster = Cluster::shared();
    let database = cluster.database("check", ForeignKeys::With);
    let mut client = cluster.connect(&database);
    let mut listener = cluster.connect(&database);
    listener.batch_execute("LISTEN ae_events").unwrap();
    client
        .batch_execute(
            "ALTER TABLE ae_events.outbox ADD CONSTRAINT not_789 CHECK (aggregate_id <> 789)",
        )
        .unwrap();
    let error = client.batch_execute(SEED_EXAMPLE).unwrap_err();
    assert_eq!(sqlstate(&error), "23514", "{error:?}");
    let text = error_message(&error);
    assert!(
        text.starts_with("ae_events: ") && text.contains("ti.instance 789"),
        "{text}"
    );
    client.batch_execute("ROLLBACK").unwrap();
    let instances: i64 = client
        .query_one("SELECT count(*) FROM ti.instance", &[])
        .unwrap()
        .get(0);
    assert_eq!(instances, 0);
    assert!(outbox_rows(&mut client).is_empty());
    assert!(drain_notifications(&mut listener, Duration::from_millis(700)).is_empty());
}

#[test]
fn the_rejected_instance_is_named_inside_a_bulk_insert() {
    let cluster = Cluster::shared();
    let database = cluster.database("bulkcheck", ForeignKeys::With);
    let mut client = cluster.connect(&database);
    client.batch_execute(MINIMAL_REFERENCE_DATA).unwrap();
    client
        .batch_execute(
            "ALTER TABLE ae_events.outbox ADD CONSTRAINT not_1500 CHECK (aggregate_id <> 1500)",
        )
        .unwrap();
    let error = client
        .batch_execute(
            "INSERT INTO ti.instance
             SELECT g, NULL, NULL, NULL, 'in_progress', 1, 1, NULL, NULL, NULL, now(), 1, now(), 1
               FROM generate_series(1001, 2000) AS g",
        )
        .unwrap_err();
    assert_eq!(sqlstate(&error), "23514");
    let text = error_message(&error);
    assert!(
        text.starts_with("ae_events: ") && text.contains("ti.instance 1500"),
        "{text}"
    );
    assert_nothing_written(&mut client);
}

#[test]
fn an_error_while_building_the_snapshot_fails_the_transaction_naming_the_instance() {
    let cluster = Cluster::shared();
    let database = cluster.database("buildfail", ForeignKeys::With);
    let mut client = cluster.connect(&database);
    client.batch_execute(MINIMAL_REFERENCE_DATA).unwrap();
    // A DBA's schema that differs from the contract: the snapshot query cannot run.
    client
        .batch_execute("ALTER TABLE can.candidate RENAME COLUMN cf TO custom_fields")
        .unwrap();
    let error = client
        .batch_execute(
            "INSERT INTO ti.instance VALUES (5, NULL, NULL, NULL, 'in_progress', 1, 1, NULL, NULL, NULL, now(), 1, now(), 1)",
        )
        .unwrap_err();
    let text = error_message(&error);
    assert!(
        text.starts_with("ae_events: ") && text.contains("ti.instance 5"),
        "{text}"
    );
    assert_eq!(sqlstate(&error), "42703", "{error:?}");
    assert_nothing_written(&mut client);
}

/// A DBA's trigger on the outbox that inserts another instance while events are being written:
/// the pass runs as a security-restricted operation (as the extension's owner), inside which
/// PostgreSQL refuses to queue the new instance's deferred trigger event. The transaction fails
/// with an `ae_events:` error naming the instance, and nothing is committed (never an instance
/// without its event), for a single-row transaction and a bulk one alike.
#[test]
fn an_instance_inserted_by_a_trigger_on_the_outbox_fails_the_transaction_cleanly() {
    let cluster = Cluster::shared();
    for count in [1_i64, 40] {
        let database = cluster.database("outbox_trigger", ForeignKeys::With);
        let mut app = cluster.connect(&database);
        app.batch_execute(MINIMAL_REFERENCE_DATA).unwrap();
        app.batch_execute(
            "CREATE FUNCTION public.follow_up() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 IF NEW.aggregate_id < 1000 THEN
                     INSERT INTO ti.instance VALUES (NEW.aggregate_id + 1000, NULL, NULL, NULL,
                         'in_progress', 1, 1, NULL, NULL, NULL, now(), 1, now(), 1);
                 END IF;
                 RETURN NULL;
             END $$;
             CREATE TRIGGER follow_up AFTER INSERT ON ae_events.outbox
                 FOR EACH ROW EXECUTE FUNCTION public.follow_up();",
        )
        .unwrap();
        let error = app
            .batch_execute(&format!(
                "INSERT INTO ti.instance
                 SELECT g, NULL, NULL, NULL, 'in_progress', 1, 1, NULL, NULL, NULL, now(), 1, now(), 1
                   FROM generate_series(1, {count}) AS g"
            ))
            .unwrap_err();
        assert_eq!(sqlstate(&error), "42501", "{error:?}");
        // Single row: that instance's event; bulk: the statement-end trigger belongs to the
        // chunk, which is named.
        let named = if count == 1 {
            "the created event of ti.instance 1:".to_owned()
        } else {
            format!("the created events of ti.instance 1, 2, 3, 4, 5, ... ({count} instances):")
        };
        let message = error_message(&error);
        assert!(
            message.starts_with(&format!("ae_events: cannot write {named}")),
            "{message}"
        );
        assert_nothing_written(&mut app);
    }
}

#[test]
fn a_failing_updated_event_fails_the_changing_transaction_and_keeps_the_change_out() {
    let cluster = Cluster::shared();
    let database = cluster.database("updatefail", ForeignKeys::With);
    let mut client = cluster.connect(&database);
    client.batch_execute(SEED_EXAMPLE).unwrap();
    client
        .batch_execute(
            "ALTER TABLE ae_events.outbox ADD CONSTRAINT no_updates
                 CHECK (subscription_key <> 'ae.test_instance.updated')",
        )
        .unwrap();
    let error = client
        .batch_execute("UPDATE can.candidate SET first_name = 'Kept out' WHERE id = 101")
        .unwrap_err();
    assert_eq!(sqlstate(&error), "23514", "{error:?}");
    let text = error_message(&error);
    assert!(
        text.starts_with("ae_events: ") && text.contains("updated event of ti.instance 789"),
        "{text}"
    );
    let first_name: String = client
        .query_one("SELECT first_name FROM can.candidate WHERE id = 101", &[])
        .unwrap()
        .get(0);
    assert_eq!(first_name, "Jane", "the change rolled back with its event");
    let versions: Vec<i32> = client
        .query("SELECT snapshot_version FROM ae_events.instance_state", &[])
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(versions, [1], "the version did not move");
}
