//! The attacks of docs/security.md, each written as the attacker would try it: a role that owns
//! the application's tables, a reader or relay with the extension's roles, a role that can only
//! connect. Each failed against 0.4.0; each must fail now.

mod common;

use common::*;
use postgres::Client;
use std::time::{Duration, Instant};

fn is_superuser(client: &mut Client, role: &str) -> bool {
    client
        .query_one("SELECT rolsuper FROM pg_roles WHERE rolname = $1", &[&role])
        .unwrap()
        .get(0)
}

/// The application's owner role runs its own migrations: it owns every source table and the
/// schemas. Its code below tries, whenever it runs as someone else, to make it a superuser, and
/// logs who it ran as.
fn hand_the_tables_to(client: &mut Client, owner: &str) {
    client
        .batch_execute(&format!(
            "CREATE ROLE {owner} LOGIN;
             ALTER SCHEMA ti OWNER TO {owner}; ALTER SCHEMA can OWNER TO {owner};
             ALTER SCHEMA ae OWNER TO {owner}; ALTER SCHEMA tcf OWNER TO {owner};
             ALTER TYPE ti.instance_status OWNER TO {owner};
             DO $$ DECLARE t regclass; BEGIN
               FOR t IN SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                         WHERE n.nspname IN ('ti', 'can', 'ae', 'tcf') AND c.relkind = 'r' LOOP
                 EXECUTE format('ALTER TABLE %s OWNER TO {owner}', t);
               END LOOP; END $$;"
        ))
        .unwrap();
    let mut attacker = Cluster::shared().connect_as(&client_database(client), owner);
    attacker
        .batch_execute(&format!(
            "CREATE TABLE ae.seen_as (role name, at text);
             GRANT INSERT ON ae.seen_as TO PUBLIC;
             CREATE FUNCTION ae.escalate(at text) RETURNS boolean VOLATILE LANGUAGE plpgsql AS $f$
             BEGIN
                 INSERT INTO ae.seen_as VALUES (current_user, at);
                 IF current_user <> '{owner}' THEN
                     BEGIN
                         EXECUTE 'ALTER ROLE {owner} SUPERUSER';
                     EXCEPTION WHEN OTHERS THEN NULL;
                     END;
                 END IF;
                 RETURN true;
             EXCEPTION WHEN OTHERS THEN RETURN true;
             END $f$;
             GRANT EXECUTE ON FUNCTION ae.escalate(text) TO PUBLIC;
             -- IMMUTABLE wrappers: the planner evaluates them while it plans a query.
             CREATE FUNCTION ae.predicate() RETURNS boolean IMMUTABLE LANGUAGE plpgsql AS $f$
             BEGIN RETURN ae.escalate('partial index predicate'); END $f$;
             CREATE FUNCTION ae.zero() RETURNS bigint IMMUTABLE LANGUAGE plpgsql AS $f$
             BEGIN PERFORM ae.escalate('index expression'); RETURN 0; END $f$;"
        ))
        .unwrap();
}

fn client_database(client: &mut Client) -> String {
    client
        .query_one("SELECT current_database()::text", &[])
        .unwrap()
        .get(0)
}

/// Who the owner's code ran as, and where.
fn seen_as(client: &mut Client) -> Vec<(String, String)> {
    client
        .query(
            "SELECT DISTINCT role::text, at FROM ae.seen_as ORDER BY 2, 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect()
}

#[test]
fn a_source_table_owner_gains_nothing_from_code_the_pass_plans_or_reads() {
    let (database, mut dba) = seeded_database("owner_escalation");
    let owner = format!("{database}_owner");
    hand_the_tables_to(&mut dba, &owner);
    let mut attacker = Cluster::shared().connect_as(&database, &owner);
    // The owner of every source table can read them all: its functions may run in the pass
    // (as the snapshot role; they learn nothing new), its policies do not, its views are refused.
    attacker
        .batch_execute(
            "-- planned: partial index predicates and index expressions of the tables read
             CREATE INDEX catalog_trap ON ae.catalog (id) WHERE ae.predicate();
             CREATE INDEX candidate_trap ON can.candidate ((id + ae.zero()));
             CREATE INDEX attribute_trap ON tcf.measurement_attribute (measurement_id)
                 WHERE ae.predicate();
             -- read: a row security policy on a table the pass reads
             ALTER TABLE tcf.measurement ENABLE ROW LEVEL SECURITY;
             ALTER TABLE tcf.measurement FORCE ROW LEVEL SECURITY;
             CREATE POLICY everyone ON tcf.measurement USING (ae.escalate('row security policy'));
             -- a trigger and a rule on source tables
             CREATE FUNCTION ae.trap_trigger() RETURNS trigger LANGUAGE plpgsql AS $f$
             BEGIN PERFORM ae.escalate('trigger'); RETURN NULL; END $f$;
             CREATE CONSTRAINT TRIGGER zz_trap AFTER INSERT OR UPDATE ON ti.instance
                 DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION ae.trap_trigger();
             CREATE RULE trap AS ON UPDATE TO can.candidate DO ALSO SELECT ae.escalate('rule');",
        )
        .unwrap();

    // The application creates and changes instances; a DBA resends one.
    attacker
        .batch_execute(
            "INSERT INTO ti.instance (id, external_id, old_id, score, instance_status,
                 candidate_id, catalog_assessment_id, measurement_id, session_instance_id,
                 workflow_candidate_step_id, created_at, created_by, updated_at, updated_by)
             VALUES (790, NULL, NULL, NULL, 'in_progress', 101, 202, 505, NULL, NULL,
                     now(), 1, now(), 1);
             UPDATE can.candidate SET first_name = 'Changed' WHERE id = 101;
             INSERT INTO tcf.measurement_attribute VALUES
                 (2, 505, 10, NULL, 1, NULL, NULL, NULL, '{}', now(), 1, now(), 1);",
        )
        .unwrap();
    dba.batch_execute("SELECT ae_events.resend(ARRAY[789])")
        .unwrap();

    // A table replaced by a view, whose function would run as the reader: refused.
    attacker
        .batch_execute(
            "ALTER TABLE ae.catalog_assessment RENAME TO catalog_assessment_rows;
             CREATE VIEW ae.catalog_assessment AS
                 SELECT * FROM ae.catalog_assessment_rows WHERE ae.escalate('view');
             GRANT SELECT ON ae.catalog_assessment TO PUBLIC;",
        )
        .unwrap();
    let error = attacker
        .batch_execute("UPDATE can.candidate SET first_name = 'Again' WHERE id = 101")
        .unwrap_err();
    assert_eq!(sqlstate(&error), "42809", "{error:?}");
    assert_eq!(
        error_message(&error),
        "ae_events: ae.catalog_assessment is a view; the pass reads tables only"
    );

    assert!(
        !is_superuser(&mut dba, &owner),
        "the table owner became a superuser"
    );
    let seen = seen_as(&mut dba);
    // The planned traps did run inside the pass, as the snapshot role (not as the extension's
    // owner); the policy and the view never ran there.
    for at in ["partial index predicate", "index expression"] {
        assert!(
            seen.contains(&("ae_events_snapshot".to_owned(), at.to_owned())),
            "{at} did not run in the pass: {seen:?}"
        );
    }
    for at in ["row security policy", "view"] {
        assert!(
            !seen.contains(&("ae_events_snapshot".to_owned(), at.to_owned())),
            "{at} ran in the pass: {seen:?}"
        );
    }
    for (role, at) in &seen {
        assert!(
            role == "ae_events_snapshot" || role == &owner,
            "{at} ran as {role}"
        );
    }
    // And the events are there, with the changes.
    let rows = outbox_rows(&mut dba);
    let last_790 = rows.iter().rfind(|row| row.aggregate_id == 790).unwrap();
    assert_eq!(last_790.payload["candidate"]["first_name"], "Changed");
    dba.batch_execute(
        "DROP VIEW ae.catalog_assessment;
         ALTER TABLE ae.catalog_assessment_rows RENAME TO catalog_assessment;",
    )
    .unwrap();
    let snapshot: serde_json::Value = dba
        .query_one("SELECT ae_events.snapshot(790)", &[])
        .unwrap()
        .get(0);
    assert_eq!(last_790.payload, snapshot);
}

#[test]
fn the_snapshot_role_cannot_log_in_and_holds_only_select_on_the_source_tables() {
    let (database, mut dba) = seeded_database("snapshot_role");
    let role = dba
        .query_one(
            "SELECT rolcanlogin, rolsuper, rolcreaterole, rolcreatedb, rolbypassrls, rolinherit,
                    (SELECT count(*) FROM pg_auth_members WHERE roleid = r.oid)
               FROM pg_roles AS r WHERE rolname = 'ae_events_snapshot'",
            &[],
        )
        .unwrap();
    assert!(!role.get::<_, bool>(0) && !role.get::<_, bool>(1) && !role.get::<_, bool>(2));
    // BYPASSRLS, its one attribute: no table owner's row security policy runs in the pass.
    assert!(!role.get::<_, bool>(3) && role.get::<_, bool>(4) && !role.get::<_, bool>(5));
    assert_eq!(role.get::<_, i64>(6), 0);
    let privileges: Vec<String> = dba
        .query(
            "SELECT table_schema || '.' || table_name || ' ' || privilege_type
               FROM information_schema.role_table_grants
              WHERE grantee = 'ae_events_snapshot' ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(privileges.len(), 11, "{privileges:?}");
    assert!(
        privileges.iter().all(|p| p.ends_with(" SELECT")),
        "{privileges:?}"
    );
    assert!(!privileges.iter().any(|p| p.starts_with("ae_events.")));
    // A login as it is refused.
    let url = format!(
        "host=127.0.0.1 port={} user=ae_events_snapshot dbname={database}",
        Cluster::shared().port
    );
    assert!(postgres::Client::connect(&url, postgres::NoTls).is_err());
    // detach() takes the grants away again.
    dba.batch_execute("SELECT ae_events.detach()").unwrap();
    let left: i64 = dba
        .query_one(
            "SELECT count(*) FROM information_schema.role_table_grants
              WHERE grantee = 'ae_events_snapshot' AND table_catalog = current_database()",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
}

#[test]
fn a_reader_cannot_attach_the_extensions_trigger_functions_to_a_table_of_its_own() {
    let (database, mut dba) = seeded_database("forged_trigger");
    let reader = format!("{database}_reader");
    dba.batch_execute(&format!(
        "CREATE ROLE {reader} LOGIN IN ROLE ae_events_reader, ae_events_relay"
    ))
    .unwrap();
    let mut attacker = Cluster::shared().connect_as(&database, &reader);
    attacker
        .batch_execute("CREATE TEMP TABLE forged (id bigint, measurement_id bigint)")
        .unwrap();
    for function in [
        "ae_events.capture_instance_insert()",
        "ae_events.capture_change('ti.instance')",
        "ae_events.emit_pending_events()",
    ] {
        let error = attacker
            .batch_execute(&format!(
                "CREATE TRIGGER forged AFTER INSERT OR DELETE ON forged
                     FOR EACH ROW EXECUTE FUNCTION {function}"
            ))
            .unwrap_err();
        assert_eq!(sqlstate(&error), "42501", "{function}: {error}");
    }

    // Even where a trigger exists on another table (say a DBA put it there by mistake), the
    // function refuses to run there.
    dba.batch_execute(
        "CREATE TABLE public.other (id bigint, measurement_id bigint);
         CREATE TRIGGER forged_created AFTER INSERT ON public.other
             FOR EACH ROW EXECUTE FUNCTION ae_events.capture_instance_insert();
         CREATE TABLE public.other2 (id bigint);
         CREATE TRIGGER forged_changed AFTER DELETE ON public.other2
             FOR EACH ROW EXECUTE FUNCTION ae_events.capture_change('ti.instance');
         INSERT INTO public.other2 VALUES (789);",
    )
    .unwrap();
    let events_before = outbox_rows(&mut dba).len();
    for (statement, function) in [
        (
            "INSERT INTO public.other VALUES (789, 505)",
            "capture_instance_insert",
        ),
        ("DELETE FROM public.other2", "capture_change"),
    ] {
        let error = dba.batch_execute(statement).unwrap_err();
        assert_eq!(sqlstate(&error), "42501", "{statement}: {error}");
        let message = error_message(&error);
        assert!(
            message.starts_with("ae_events:") && message.contains(function),
            "{message}"
        );
    }
    assert_eq!(outbox_rows(&mut dba).len(), events_before);
    // 789's version state is intact: its next event is version 2.
    dba.batch_execute("UPDATE ti.instance SET score = 1 WHERE id = 789")
        .unwrap();
    let last = outbox_rows(&mut dba).pop().unwrap();
    assert_eq!((last.aggregate_id, last.snapshot_version), (789, 2));
}

/// An instance of the seed's candidate with a measurement of `attributes` attributes.
fn instance_with_attributes(client: &mut Client, id: i64, attributes: i64) {
    client
        .batch_execute(&format!(
            "BEGIN;
             INSERT INTO tcf.measurement VALUES ({id}, 'pending', '00:00:00', NULL, NULL, now(), NULL, NULL);
             INSERT INTO ti.instance (id, external_id, old_id, score, instance_status,
                 candidate_id, catalog_assessment_id, measurement_id, session_instance_id,
                 workflow_candidate_step_id, created_at, created_by, updated_at, updated_by)
             VALUES ({id}, NULL, NULL, NULL, 'in_progress', 101, 202, {id}, NULL, NULL, now(), 1, now(), 1);
             INSERT INTO tcf.measurement_attribute
             SELECT {id} * 1000000 + n, {id}, 10, NULL, n, NULL, 'remark ' || n, NULL,
                    jsonb_build_object('n', n), now(), 1, now(), 1
               FROM generate_series(1, {attributes}) AS n;
             COMMIT;"
        ))
        .unwrap();
}

#[test]
fn a_star_rule_over_thousands_of_attributes_is_linear() {
    let (_, mut dba) = seeded_database("star_rule");
    dba.batch_execute(
        "INSERT INTO ae_events.payload_rules VALUES
             ('measurement.measurement_attributes.*.remarks', 'null'),
             ('measurement.measurement_attributes.*.additional_attributes.n', 'sha256')",
    )
    .unwrap();
    // 0.4.0: one jsonb rewrite per attribute and rule, 60-105 s for 2,000 attributes.
    let started = Instant::now();
    instance_with_attributes(&mut dba, 900, 2_000);
    let elapsed = started.elapsed();
    let event = outbox_rows(&mut dba).pop().unwrap();
    let attributes = event.payload["measurement"]["measurement_attributes"]
        .as_array()
        .unwrap();
    assert_eq!(attributes.len(), 2_000);
    assert!(attributes.iter().all(|a| a["remarks"].is_null()));
    let digest: String = dba
        .query_one("SELECT encode(sha256('1'::bytea), 'hex')", &[])
        .unwrap()
        .get(0);
    assert_eq!(attributes[0]["additional_attributes"]["n"], digest.as_str());
    assert!(
        elapsed < Duration::from_secs(20),
        "2,000 attributes under a * rule took {elapsed:?}"
    );
}

#[test]
fn a_rule_skips_data_of_another_shape_instead_of_failing_the_write() {
    let (_, mut dba) = seeded_database("rule_shapes");
    dba.batch_execute(
        "INSERT INTO ae_events.payload_rules VALUES
             ('candidate.cf.ssn', 'remove'),
             ('candidate.cf.team.lead', 'sha256'),
             ('measurement.measurement_attributes.*.additional_attributes.rubric.level', 'null');
         INSERT INTO can.candidate (id, user_id, email, is_tnc_accepted, cf)
         VALUES (102, 8, 'array@example.com', true, '[\"ssn\", 1, 2]'),
                (103, 9, 'object@example.com', true,
                 '{\"ssn\": \"123-45-6789\", \"team\": \"blue\", \"keep\": 1}');
         INSERT INTO tcf.measurement_attribute VALUES
             (2, 505, 10, NULL, 1, NULL, NULL, NULL, '\"a string\"', now(), 1, now(), 1);",
    )
    .unwrap();
    // An array cf, a scalar where a key path goes on, a string where an object was expected:
    // the writes succeed and the rules apply where their paths exist.
    dba.batch_execute(
        "INSERT INTO ti.instance (id, external_id, old_id, score, instance_status, candidate_id,
             catalog_assessment_id, measurement_id, session_instance_id, workflow_candidate_step_id,
             created_at, created_by, updated_at, updated_by)
         VALUES (791, NULL, NULL, NULL, 'in_progress', 102, 202, 505, NULL, NULL, now(), 1, now(), 1),
                (792, NULL, NULL, NULL, 'in_progress', 103, 202, NULL, NULL, NULL, now(), 1, now(), 1);
         UPDATE can.candidate SET first_name = 'Arr' WHERE id = 102;",
    )
    .unwrap();
    let rows = outbox_rows(&mut dba);
    let payload = |id: i64| {
        rows.iter()
            .rfind(|row| row.aggregate_id == id)
            .unwrap()
            .payload
            .clone()
    };
    assert_eq!(
        payload(791)["candidate"]["cf"],
        serde_json::json!(["ssn", 1, 2])
    );
    assert_eq!(payload(791)["candidate"]["first_name"], "Arr");
    assert_eq!(
        payload(791)["measurement"]["measurement_attributes"][1]["additional_attributes"],
        "a string"
    );
    assert_eq!(
        payload(792)["candidate"]["cf"],
        serde_json::json!({"team": "blue", "keep": 1})
    );
}

#[test]
fn notifications_are_wake_ups_and_the_application_cannot_change_that() {
    let (database, mut dba) = seeded_database("quiet_notifications");
    let app = format!("{database}_app");
    let nobody = format!("{database}_nobody");
    dba.batch_execute(&format!(
        "CREATE ROLE {app} LOGIN; CREATE ROLE {nobody} LOGIN;
         GRANT USAGE ON SCHEMA ti TO {app}; GRANT INSERT ON ti.instance TO {app};"
    ))
    .unwrap();
    // A role with no grants at all listens.
    let mut listener = Cluster::shared().connect_as(&database, &nobody);
    listener.batch_execute("LISTEN ae_events").unwrap();
    let insert = |client: &mut Client, id: i64| {
        client
            .batch_execute(&format!(
                "INSERT INTO ti.instance (id, external_id, old_id, score, instance_status,
                     candidate_id, catalog_assessment_id, measurement_id, session_instance_id,
                     workflow_candidate_step_id, created_at, created_by, updated_at, updated_by)
                 VALUES ({id}, NULL, NULL, NULL, 'in_progress', 101, 202, 505, NULL, NULL,
                         now(), 1, now(), 1)"
            ))
            .unwrap()
    };
    // Before the library is loaded, SET only makes placeholders; PostgreSQL drops them when the
    // library defines the settings (superuser only), so the application's values never apply.
    let mut application = Cluster::shared().connect_as(&database, &app);
    application
        .batch_execute(
            "SET ae_events.notify = full; SET ae_events.notify_payload_budget = -1;
             SET ae_events.channel = elsewhere; SET ae_events.enabled = off;",
        )
        .unwrap();
    insert(&mut application, 793);
    let received = drain_notifications(&mut listener, Duration::from_secs(2));
    assert_eq!(received.len(), 1, "{received:?}");
    let message: serde_json::Value = serde_json::from_str(&received[0].1).unwrap();
    assert_eq!(message["aggregate_id"], 793);
    assert!(message.get("payload").is_none(), "{message}");
    assert!(!received[0].1.contains("candidate@example.com"));
    // Once loaded, each SET is refused outright.
    for setting in [
        "SET ae_events.notify = full",
        "SET ae_events.notify_payload_budget = -1",
        "SET ae_events.channel = elsewhere",
        "SET ae_events.enabled = off",
        "SELECT set_config('ae_events.notify', 'full', false)",
    ] {
        let error = application
            .batch_execute(setting)
            .expect_err(&format!("{setting} was allowed"));
        assert_eq!(sqlstate(&error), "42501", "{setting}: {error}");
    }
    insert(&mut application, 797);
    let received = drain_notifications(&mut listener, Duration::from_secs(2));
    assert_eq!(received.len(), 1, "{received:?}");
    assert!(!received[0].1.contains("\"payload\""), "{}", received[0].1);

    // The DBA may choose full for a role.
    dba.batch_execute(&format!("ALTER ROLE {app} SET ae_events.notify = full"))
        .unwrap();
    let mut application = Cluster::shared().connect_as(&database, &app);
    application
        .batch_execute(
            "INSERT INTO ti.instance (id, external_id, old_id, score, instance_status, candidate_id,
                 catalog_assessment_id, measurement_id, session_instance_id,
                 workflow_candidate_step_id, created_at, created_by, updated_at, updated_by)
             VALUES (794, NULL, NULL, NULL, 'in_progress', 101, 202, 505, NULL, NULL, now(), 1, now(), 1)",
        )
        .unwrap();
    let received = drain_notifications(&mut listener, Duration::from_secs(2));
    let message: serde_json::Value = serde_json::from_str(&received[0].1).unwrap();
    assert_eq!(message["payload"]["id"], 794);
}

#[test]
fn a_consumer_belongs_to_the_role_that_created_it() {
    let (database, mut dba) = seeded_database("consumer_owners");
    let first = format!("{database}_relay_a");
    let second = format!("{database}_relay_b");
    dba.batch_execute(&format!(
        "CREATE ROLE {first} LOGIN IN ROLE ae_events_relay;
         CREATE ROLE {second} LOGIN IN ROLE ae_events_relay;"
    ))
    .unwrap();
    let mut relay_a = Cluster::shared().connect_as(&database, &first);
    let mut relay_b = Cluster::shared().connect_as(&database, &second);
    relay_a
        .batch_execute("SELECT ae_events.create_consumer('a', true)")
        .unwrap();
    let event_id: i64 = dba
        .query_one("SELECT max(id) FROM ae_events.outbox", &[])
        .unwrap()
        .get(0);
    for statement in [
        "SELECT * FROM ae_events.poll('a')".to_owned(),
        format!("SELECT ae_events.ack('a', {event_id})"),
        "SELECT ae_events.drop_consumer('a')".to_owned(),
    ] {
        let error = relay_b.batch_execute(&statement).unwrap_err();
        assert_eq!(sqlstate(&error), "42501", "{statement}: {error}");
        assert!(error_message(&error).starts_with("ae_events:"));
    }
    // The owner, and the DBA, may.
    let polled = eventually(
        || {
            relay_a
                .query("SELECT id FROM ae_events.poll('a')", &[])
                .unwrap()
        },
        |rows| !rows.is_empty(),
    );
    assert_eq!(polled.len(), 1);
    let moved: bool = relay_a
        .query_one("SELECT ae_events.ack('a', $1)", &[&event_id])
        .unwrap()
        .get(0);
    assert!(moved);
    let dropped: bool = dba
        .query_one("SELECT ae_events.drop_consumer('a')", &[])
        .unwrap()
        .get(0);
    assert!(dropped);
}

#[test]
fn null_arguments_and_echoed_names_get_clear_errors() {
    let (_, mut dba) = seeded_database("null_arguments");
    dba.batch_execute("SELECT ae_events.create_consumer('c')")
        .unwrap();
    for statement in [
        "SELECT * FROM ae_events.poll(NULL, 10)",
        "SELECT ae_events.ack(NULL, 1)",
        "SELECT ae_events.ack('c', NULL)",
        "SELECT ae_events.create_consumer('d', NULL)",
        "SELECT ae_events.create_consumer(NULL)",
        "SELECT ae_events.drop_consumer(NULL)",
    ] {
        let error = dba.batch_execute(statement).unwrap_err();
        assert_eq!(sqlstate(&error), "22004", "{statement}: {error}");
        let message = error_message(&error);
        assert!(
            message.starts_with("ae_events:") && message.contains("NULL"),
            "{statement}: {message}"
        );
    }
    let hostile = "x'); DROP TABLE ae_events.outbox; --";
    let error = dba
        .query("SELECT * FROM ae_events.poll($1)", &[&hostile])
        .unwrap_err();
    let hint = error.as_db_error().unwrap().hint().unwrap().to_owned();
    assert_eq!(
        hint,
        "Create it with SELECT ae_events.create_consumer('x''); DROP TABLE ae_events.outbox; --');"
    );
    // The hint, run as it is, creates exactly that consumer and nothing else.
    dba.batch_execute(hint.trim_start_matches("Create it with "))
        .unwrap();
    let exists: bool = dba
        .query_one(
            "SELECT EXISTS (SELECT FROM ae_events.consumers WHERE consumer = $1)
                AND to_regclass('ae_events.outbox') IS NOT NULL",
            &[&hostile],
        )
        .unwrap()
        .get(0);
    assert!(exists);
}

#[test]
fn delivery_blockers_names_the_open_transaction_that_holds_consumers_back() {
    let (database, mut dba) = seeded_database("blockers");
    let app = format!("{database}_idle");
    let reader = format!("{database}_analyst");
    dba.batch_execute(&format!(
        "CREATE ROLE {app} LOGIN; CREATE ROLE {reader} LOGIN IN ROLE ae_events_reader;"
    ))
    .unwrap();
    let mut idle = Cluster::shared().connect_as(&database, &app);
    idle.batch_execute("BEGIN; SELECT pg_current_xact_id();")
        .unwrap();
    let idle_pid: i32 = idle
        .query_one("SELECT pg_backend_pid()", &[])
        .unwrap()
        .get(0);
    let mut analyst = Cluster::shared().connect_as(&database, &reader);
    let rows = analyst
        .query(
            "SELECT pid, role::text, state, holds_horizon, transaction_age >= interval '0'
               FROM ae_events.delivery_blockers()",
            &[],
        )
        .unwrap();
    let row = rows
        .iter()
        .find(|row| row.get::<_, i32>(0) == idle_pid)
        .expect("the idle transaction is listed");
    assert_eq!(row.get::<_, String>(1), app);
    assert_eq!(row.get::<_, String>(2), "idle in transaction");
    assert!(row.get::<_, bool>(3) && row.get::<_, bool>(4));
    idle.batch_execute("COMMIT").unwrap();
    // A role without the extension's roles may not look.
    let mut other = Cluster::shared().connect_as(&database, &app);
    let error = other
        .batch_execute("SELECT * FROM ae_events.delivery_blockers()")
        .unwrap_err();
    assert_eq!(sqlstate(&error), "42501");
}

#[test]
fn timestamps_outside_rfc_3339_years_use_iso_8601_expanded_years() {
    let (_, mut dba) = seeded_database("far_timestamps");
    dba.batch_execute(
        "INSERT INTO ti.instance (id, external_id, old_id, score, instance_status, candidate_id,
             catalog_assessment_id, measurement_id, session_instance_id, workflow_candidate_step_id,
             created_at, created_by, updated_at, updated_by)
         VALUES (795, NULL, NULL, NULL, 'in_progress', 101, 202, NULL, NULL, NULL,
                 '12345-06-07 08:09:10Z', 1, '4713-01-01 00:00:00Z BC', 1),
                (796, NULL, NULL, NULL, 'in_progress', 101, 202, NULL, NULL, NULL,
                 'infinity', 1, '0001-01-01 00:00:00Z BC', 1)",
    )
    .unwrap();
    let rows = outbox_rows(&mut dba);
    let payload = |id: i64| {
        rows.iter()
            .find(|r| r.aggregate_id == id)
            .unwrap()
            .payload
            .clone()
    };
    assert_eq!(payload(795)["created_at"], "+12345-06-07T08:09:10Z");
    // Astronomical year numbering: 4713 BC is -4712, 1 BC is 0000.
    assert_eq!(payload(795)["updated_at"], "-4712-01-01T00:00:00Z");
    assert_eq!(payload(796)["created_at"], "infinity");
    assert_eq!(payload(796)["updated_at"], "0000-01-01T00:00:00Z");
}

#[test]
fn a_role_that_can_only_connect_cannot_hold_up_commits() {
    let (database, mut dba) = seeded_database("stall_commits");
    let nobody = format!("{database}_nobody");
    dba.batch_execute(&format!("CREATE ROLE {nobody} LOGIN"))
        .unwrap();
    // Every key an advisory-lock interlock would use: (source table oid, bucket), exclusive,
    // held in an open transaction.
    let mut attacker = Cluster::shared().connect_as(&database, &nobody);
    attacker
        .batch_execute(
            "BEGIN;
             SELECT pg_advisory_xact_lock(c.oid::int4, b)
               FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace,
                    generate_series(-1, 255) AS b
              WHERE n.nspname IN ('ti', 'can', 'ae', 'tcf') AND c.relkind = 'r';",
        )
        .unwrap();
    let (done, finished) = std::sync::mpsc::channel();
    let application = {
        let database = database.clone();
        std::thread::spawn(move || {
            let mut client = Cluster::shared().connect(&database);
            client
                .batch_execute(
                    "INSERT INTO ti.instance (id, external_id, old_id, score, instance_status,
                         candidate_id, catalog_assessment_id, measurement_id, session_instance_id,
                         workflow_candidate_step_id, created_at, created_by, updated_at, updated_by)
                     VALUES (798, NULL, NULL, NULL, 'in_progress', 101, 202, 505, NULL, NULL,
                             now(), 1, now(), 1);
                     UPDATE can.candidate SET first_name = 'Still' WHERE id = 101;",
                )
                .unwrap();
            done.send(()).unwrap();
        })
    };
    let committed = finished.recv_timeout(Duration::from_secs(20)).is_ok();
    attacker.batch_execute("ROLLBACK").unwrap();
    application.join().unwrap();
    assert!(
        committed,
        "the application's commit waited for the attacker's locks"
    );
}

/// A connection as `user` whose notices and warnings are collected as "SEVERITY message".
fn connect_as_collecting_notices(
    database: &str,
    user: &str,
) -> (Client, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    let notices = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = notices.clone();
    let mut config: postgres::Config = Cluster::shared().url(database).parse().unwrap();
    config.user(user);
    config.notice_callback(move |notice| {
        seen.lock()
            .unwrap()
            .push(format!("{} {}", notice.severity(), notice.message()))
    });
    (config.connect(postgres::NoTls).unwrap(), notices)
}

/// Values of other services that the owner of can.candidate alone cannot read: instance
/// 789's external id and old id (ti), measurement 505's report URL (tcf).
const OTHER_SERVICES_SECRETS: &str =
    "UPDATE ti.instance SET external_id = 'SECRET-TI-789' WHERE id = 789;
     UPDATE tcf.measurement SET report_url = 'SECRET-TCF-505' WHERE id = 505;";

/// `svc` becomes the owner of can.candidate only (the DBA keeps the other ten tables and the
/// schemas), with a schema of its own for its functions and a sequence anyone may set.
fn hand_the_candidates_to(dba: &mut Client, svc: &str) {
    dba.batch_execute(&format!(
        "{OTHER_SERVICES_SECRETS}
         CREATE ROLE {svc} LOGIN;
         ALTER TABLE can.candidate OWNER TO {svc};
         GRANT USAGE, CREATE ON SCHEMA can TO {svc};
         CREATE SCHEMA svc AUTHORIZATION {svc};
         GRANT USAGE ON SCHEMA svc TO PUBLIC;"
    ))
    .unwrap();
}

/// The attack: `leak()` reads other services' rows and passes them on through every
/// channel a function has (a notice, NOTIFY, a session setting, a sequence, a session advisory
/// lock), and the owner plants it in a partial index predicate of its table, which the planner
/// folds while the pass plans its reads.
fn plant_the_leak(database: &str, svc: &str) {
    let mut attacker = Cluster::shared().connect_as(database, svc);
    attacker
        .batch_execute(
            "CREATE SEQUENCE svc.stolen;
             GRANT USAGE, UPDATE, SELECT ON SEQUENCE svc.stolen TO PUBLIC;
             CREATE FUNCTION svc.leak() RETURNS boolean IMMUTABLE LANGUAGE plpgsql AS $f$
             DECLARE
                 stolen text;
                 old_id bigint;
             BEGIN
                 SELECT string_agg(i.external_id, ',') || ';' ||
                        (SELECT string_agg(m.report_url, ',') FROM tcf.measurement AS m),
                        max(i.old_id)
                   INTO stolen, old_id FROM ti.instance AS i;
                 IF stolen IS NULL THEN
                     RETURN true; -- not inside the pass: the owner reads nothing of ti
                 END IF;
                 RAISE NOTICE 'stolen: %', stolen;
                 PERFORM pg_notify('svc_leak', stolen);
                 PERFORM set_config('svc.stolen', stolen, false);
                 PERFORM setval('svc.stolen', old_id);
                 PERFORM pg_try_advisory_lock(old_id);
                 RETURN true;
             EXCEPTION WHEN OTHERS THEN
                 RETURN true;
             END $f$;
             CREATE INDEX candidate_leak ON can.candidate (id) WHERE svc.leak();
             CREATE FUNCTION svc.one() RETURNS integer LANGUAGE plpgsql AS $f$
             BEGIN RETURN 1; END $f$;",
        )
        .unwrap();
}

fn insert_instance_of_candidate_101(client: &mut Client, id: i64) -> Result<(), postgres::Error> {
    client.batch_execute(&format!(
        "INSERT INTO ti.instance (id, external_id, old_id, score, instance_status, candidate_id,
             catalog_assessment_id, measurement_id, session_instance_id,
             workflow_candidate_step_id, created_at, created_by, updated_at, updated_by)
         VALUES ({id}, 'ext_{id}', NULL, NULL, 'in_progress', 101, 202, 505, NULL, NULL,
                 now(), 1, now(), 1)"
    ))
}

fn assert_refused_naming(error: &postgres::Error, function: &str, svc: &str) {
    assert_eq!(sqlstate(error), "42501", "{error:?}");
    let message = error_message(error);
    assert!(
        message.starts_with("ae_events: ")
            && message.contains(&format!(
                "the commit-time pass refuses to run function {function} (owned by {svc})"
            )),
        "{message}"
    );
    let hint = error
        .as_db_error()
        .and_then(|e| e.hint())
        .unwrap_or_default();
    assert!(hint.contains("docs/security.md"), "{hint}");
    assert!(!message.contains("SECRET"), "{message}");
}

#[test]
fn the_owner_of_one_source_table_learns_nothing_of_the_others_through_the_pass() {
    let (database, mut dba) = seeded_database("cross_owner");
    let svc = format!("{database}_can");
    hand_the_candidates_to(&mut dba, &svc);
    plant_the_leak(&database, &svc);
    let events_before = outbox_instances(&mut dba);
    // The owner listens on its channel from another session.
    let mut listener = Cluster::shared().connect_as(&database, &svc);
    listener.batch_execute("LISTEN svc_leak").unwrap();

    // The application creates an instance (a fresh session: the pass is the first to plan a
    // read of can.candidate there, so the planner folds the predicate inside the pass).
    let (mut application, application_notices) =
        connect_as_collecting_notices(&database, "postgres");
    let error = insert_instance_of_candidate_101(&mut application, 790).unwrap_err();
    assert_refused_naming(&error, "svc.leak()", &svc);

    // The owner changes its own row, so that the pass runs in its own session. (Its UPDATE
    // folds the predicate as the owner, which the index's relcache entry keeps: changing the
    // index makes the pass fold it again.)
    let (mut owner, owner_notices) = connect_as_collecting_notices(&database, &svc);
    let error = owner
        .batch_execute(
            "BEGIN;
             UPDATE can.candidate SET first_name = 'Changed' WHERE id = 101;
             ALTER INDEX can.candidate_leak SET (fillfactor = 90);
             COMMIT;",
        )
        .unwrap_err();
    assert_refused_naming(&error, "svc.leak()", &svc);
    owner.batch_execute("ROLLBACK").unwrap();

    // Nothing carries another service's value: notices, notifications, the owner's session
    // setting, the sequence (not transactional), session advisory locks.
    let notices: Vec<String> = application_notices
        .lock()
        .unwrap()
        .iter()
        .chain(owner_notices.lock().unwrap().iter())
        .cloned()
        .collect();
    assert!(
        notices.iter().all(|notice| !notice.contains("SECRET")),
        "{notices:?}"
    );
    let received = drain_notifications(&mut listener, Duration::from_secs(1));
    assert!(received.is_empty(), "{received:?}");
    for session in [&mut application, &mut owner] {
        let setting: Option<String> = session
            .query_one("SELECT current_setting('svc.stolen', true)", &[])
            .unwrap()
            .get(0);
        assert!(setting.unwrap_or_default().is_empty());
    }
    let (last_value, is_called): (i64, bool) = {
        let row = owner
            .query_one("SELECT last_value, is_called FROM svc.stolen", &[])
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!((last_value, is_called), (1, false), "the sequence was set");
    let advisory: i64 = dba
        .query_one(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = 1234",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(advisory, 0, "a session advisory lock carries the old id");
    // No event was written for either.
    assert_eq!(outbox_instances(&mut dba), events_before);

    // A SQL function is checked as well: the hook keeps the planner from inlining its body,
    // which here runs the query as whoever evaluates it (through query_to_xml: a server built
    // without libxml, as PyPI's PostgreSQL 16-18 are, cannot run it, so there this part is
    // skipped; Debian's 15 runs it).
    let has_xml = dba.simple_query("SELECT '<a/>'::xml").is_ok();
    if has_xml {
        Cluster::shared()
            .connect_as(&database, &svc)
            .batch_execute(
                "DROP INDEX can.candidate_leak;
                 CREATE FUNCTION svc.leak_sql() RETURNS boolean IMMUTABLE LANGUAGE sql AS $f$
                     SELECT query_to_xml(CASE WHEN current_user = 'ae_events_snapshot'
                         THEN 'SELECT pg_notify(''svc_leak'', string_agg(external_id, '','')) FROM ti.instance'
                         ELSE 'SELECT 1' END, false, false, '') IS NOT NULL
                 $f$;
                 CREATE INDEX candidate_leak_sql ON can.candidate (id) WHERE svc.leak_sql();",
            )
            .unwrap();
        let mut application = Cluster::shared().connect(&database);
        let error = insert_instance_of_candidate_101(&mut application, 791).unwrap_err();
        assert_refused_naming(&error, "svc.leak_sql()", &svc);
        let received = drain_notifications(&mut listener, Duration::from_millis(500));
        assert!(received.is_empty(), "{received:?}");
    } else {
        eprintln!("no libxml in this server: the SQL-function case is skipped");
    }

    // A refused pass inside a savepoint leaves nothing behind: outside the pass, the owner's
    // functions run as before.
    let mut session = Cluster::shared().connect(&database);
    session.batch_execute("BEGIN; SAVEPOINT before").unwrap();
    insert_instance_of_candidate_101(&mut session, 792).unwrap();
    let error = session
        .batch_execute("SET CONSTRAINTS ALL IMMEDIATE")
        .unwrap_err();
    // The function planted last: the SQL one, or the PL/pgSQL one where it was skipped.
    let planted = if has_xml {
        "svc.leak_sql()"
    } else {
        "svc.leak()"
    };
    assert_refused_naming(&error, planted, &svc);
    session
        .batch_execute("ROLLBACK TO SAVEPOINT before")
        .unwrap();
    let one: i32 = session.query_one("SELECT svc.one()", &[]).unwrap().get(0);
    assert_eq!(one, 1);
    session.batch_execute("COMMIT").unwrap();
}

#[test]
fn code_of_the_dba_or_of_a_role_that_reads_every_source_table_runs_in_the_pass() {
    let (database, mut dba) = seeded_database("trusted_code");
    let svc = format!("{database}_can");
    let reader = format!("{database}_reads_all");
    hand_the_candidates_to(&mut dba, &svc);
    // The DBA's function and one of a role that can read every source table, in partial index
    // predicates of the owner's table (the DBA creates the indexes: it may, as a superuser).
    dba.batch_execute(&format!(
        "CREATE ROLE {reader} LOGIN;
         GRANT USAGE ON SCHEMA ti, can, ae, tcf TO {reader};
         GRANT SELECT ON ALL TABLES IN SCHEMA ti, can, ae, tcf TO {reader};
         CREATE SCHEMA trusted AUTHORIZATION {reader};
         GRANT USAGE ON SCHEMA trusted TO PUBLIC;
         CREATE FUNCTION public.dba_check() RETURNS boolean IMMUTABLE LANGUAGE plpgsql AS $f$
         BEGIN RAISE NOTICE 'dba_check ran as %', current_user; RETURN true; END $f$;"
    ))
    .unwrap();
    Cluster::shared()
        .connect_as(&database, &reader)
        .batch_execute(
            "CREATE FUNCTION trusted.reader_check() RETURNS boolean IMMUTABLE LANGUAGE plpgsql AS $f$
             BEGIN RAISE NOTICE 'reader_check ran as %', current_user; RETURN true; END $f$;",
        )
        .unwrap();
    dba.batch_execute(
        "CREATE INDEX candidate_dba ON can.candidate (id) WHERE public.dba_check();
         CREATE INDEX candidate_reader ON can.candidate (user_id) WHERE trusted.reader_check();",
    )
    .unwrap();

    let (mut application, notices) = connect_as_collecting_notices(&database, "postgres");
    insert_instance_of_candidate_101(&mut application, 790).unwrap();
    let notices = notices.lock().unwrap().clone();
    for check in ["dba_check", "reader_check"] {
        assert!(
            notices.contains(&format!("NOTICE {check} ran as ae_events_snapshot")),
            "{check} did not run in the pass: {notices:?}"
        );
    }
    let rows = outbox_rows(&mut dba);
    let created = rows.iter().find(|row| row.aggregate_id == 790).unwrap();
    assert_eq!(
        created.payload["candidate"]["email"],
        "candidate@example.com"
    );
}

#[test]
fn row_security_policies_never_run_in_the_pass() {
    let (database, mut dba) = seeded_database("policies");
    let svc = format!("{database}_can");
    hand_the_candidates_to(&mut dba, &svc);
    let mut listener = Cluster::shared().connect_as(&database, &svc);
    listener.batch_execute("LISTEN svc_leak").unwrap();
    // Built-in functions only (the fmgr hook does not see them): the policy runs a query as the
    // role that reads, and NOTIFYs what it finds. A second policy hides candidate 101.
    Cluster::shared()
        .connect_as(&database, &svc)
        .batch_execute(
            "ALTER TABLE can.candidate ENABLE ROW LEVEL SECURITY;
             ALTER TABLE can.candidate FORCE ROW LEVEL SECURITY;
             CREATE POLICY leak ON can.candidate USING (
                 query_to_xml('SELECT pg_notify(''svc_leak'', string_agg(external_id, '',''))
                                 FROM ti.instance', false, false, '') IS NOT NULL);
             CREATE POLICY hide ON can.candidate AS RESTRICTIVE USING (id <> 101);",
        )
        .unwrap();

    insert_instance_of_candidate_101(&mut dba, 790).unwrap();
    dba.batch_execute("UPDATE can.candidate SET first_name = 'Changed' WHERE id = 101")
        .unwrap();

    let received = drain_notifications(&mut listener, Duration::from_secs(1));
    assert!(received.is_empty(), "the policy ran: {received:?}");
    // The pass sees every row: the events show the candidate the policy hides.
    let rows = outbox_rows(&mut dba);
    let created = rows.iter().find(|row| row.aggregate_id == 790).unwrap();
    assert_eq!(
        created.payload["candidate"]["email"],
        "candidate@example.com"
    );
    let updated = rows.iter().rfind(|row| row.aggregate_id == 789).unwrap();
    assert_eq!(updated.payload["candidate"]["first_name"], "Changed");
}

#[test]
fn a_view_in_a_source_tables_place_is_refused_before_the_pass_reads() {
    let (database, mut dba) = seeded_database("view_in_place");
    let mut listener = Cluster::shared().connect(&database);
    listener.batch_execute("LISTEN view_ran").unwrap();
    dba.batch_execute(
        "ALTER TABLE ae.catalog_assessment RENAME TO catalog_assessment_rows;
         CREATE VIEW ae.catalog_assessment AS
             SELECT * FROM ae.catalog_assessment_rows
              WHERE pg_notify('view_ran', current_user) IS NULL;
         GRANT SELECT ON ae.catalog_assessment TO ae_events_snapshot;",
    )
    .unwrap();
    let error = insert_instance_of_candidate_101(&mut dba, 790).unwrap_err();
    assert_eq!(sqlstate(&error), "42809", "{error:?}");
    assert_eq!(
        error_message(&error),
        "ae_events: ae.catalog_assessment is a view; the pass reads tables only"
    );
    let hint = error
        .as_db_error()
        .and_then(|e| e.hint())
        .unwrap_or_default();
    assert!(hint.contains("docs/security.md"), "{hint}");
    assert!(drain_notifications(&mut listener, Duration::from_millis(500)).is_empty());
    assert_eq!(outbox_instances(&mut dba), vec![789]);
    // A table again: events flow.
    dba.batch_execute(
        "DROP VIEW ae.catalog_assessment;
         ALTER TABLE ae.catalog_assessment_rows RENAME TO catalog_assessment;",
    )
    .unwrap();
    insert_instance_of_candidate_101(&mut dba, 790).unwrap();
    assert_eq!(outbox_instances(&mut dba), vec![789, 790]);
}

/// A row of `ae_events.source_owners()`.
type SourceOwnerRow = (String, Option<String>, Option<bool>, Option<bool>, String);

#[test]
fn a_relation_that_is_not_a_table_among_those_a_read_reaches_is_refused_as_it_starts() {
    // The names the pass reads are tables, but reading can.candidate also reads a foreign table
    // that inherits from it: the check where the executor starts each of the pass's queries
    // refuses it (as it would a view found there after a re-plan).
    let (_database, mut dba) = seeded_database("foreign_child");
    let has_file_fdw: bool = dba
        .query_one(
            "SELECT EXISTS (SELECT FROM pg_available_extensions WHERE name = 'file_fdw')",
            &[],
        )
        .unwrap()
        .get(0);
    if !has_file_fdw {
        // Some PostgreSQL builds of docs/postgres-versions.md come without contrib.
        eprintln!("skipped: this PostgreSQL has no file_fdw");
        return;
    }
    dba.batch_execute(
        "CREATE EXTENSION file_fdw;
         CREATE SERVER files FOREIGN DATA WRAPPER file_fdw;
         CREATE FOREIGN TABLE can.candidate_elsewhere () INHERITS (can.candidate)
             SERVER files OPTIONS (filename '/dev/null', format 'csv');",
    )
    .unwrap();
    let error = insert_instance_of_candidate_101(&mut dba, 790).unwrap_err();
    assert_eq!(sqlstate(&error), "42809", "{error:?}");
    assert!(
        error_message(&error)
            .ends_with("can.candidate_elsewhere is a foreign table; the pass reads tables only"),
        "{}",
        error_message(&error)
    );
    assert_eq!(outbox_instances(&mut dba), vec![789]);
    dba.batch_execute("DROP FOREIGN TABLE can.candidate_elsewhere")
        .unwrap();
    insert_instance_of_candidate_101(&mut dba, 790).unwrap();
    assert_eq!(outbox_instances(&mut dba), vec![789, 790]);
}

#[test]
fn source_owners_and_attach_say_which_tables_the_dba_does_not_own() {
    let (database, mut dba) = seeded_database("source_owners");
    let svc = format!("{database}_can");
    let reader = format!("{database}_reads_all");
    hand_the_candidates_to(&mut dba, &svc);
    dba.batch_execute(&format!(
        "CREATE ROLE {reader} LOGIN;
         GRANT USAGE ON SCHEMA ti, can, ae, tcf TO {reader};
         GRANT SELECT ON ALL TABLES IN SCHEMA ti, can, ae, tcf TO {reader};
         ALTER TABLE tcf.skill OWNER TO {reader};
         ALTER TABLE tcf.ordinal RENAME TO ordinal_gone;"
    ))
    .unwrap();
    let rows: Vec<SourceOwnerRow> = dba
        .query("SELECT * FROM ae_events.source_owners()", &[])
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4)))
        .collect();
    assert_eq!(rows.len(), 11, "{rows:?}");
    let row = |table: &str| rows.iter().find(|row| row.0 == table).unwrap().clone();
    let candidate = row("can.candidate");
    assert_eq!(
        (candidate.1.as_deref(), candidate.2, candidate.3),
        (Some(svc.as_str()), Some(false), Some(false))
    );
    assert!(candidate.4.contains("refuses"), "{}", candidate.4);
    let skill = row("tcf.skill");
    assert_eq!(
        (skill.1.as_deref(), skill.2, skill.3),
        (Some(reader.as_str()), Some(false), Some(true))
    );
    assert!(skill.4.contains("learn nothing new"), "{}", skill.4);
    let instance = row("ti.instance");
    assert_eq!(
        (instance.1.as_deref(), instance.2, instance.3),
        (Some("postgres"), Some(true), Some(true))
    );
    let ordinal = row("tcf.ordinal");
    assert_eq!((ordinal.1, ordinal.2, ordinal.3), (None, None, None));
    assert!(ordinal.4.contains("does not exist"), "{}", ordinal.4);

    // attach() names both kinds of owner, and what the pass does with their code.
    let (mut session, notices) = connect_as_collecting_notices(&database, "postgres");
    session.batch_execute("SELECT ae_events.attach()").unwrap();
    let notices = notices.lock().unwrap().clone();
    assert!(
        notices.iter().any(|notice| notice
            .starts_with("NOTICE ae_events: source tables can.candidate (owner ")
            && notice.contains(&svc)
            && notice.contains("refuses to run their functions")),
        "{notices:?}"
    );
    assert!(
        notices
            .iter()
            .any(|notice| notice.contains("tcf.skill (owner ")
                && notice.contains("learn nothing new")),
        "{notices:?}"
    );
    // Only the DBA may call it.
    let error = Cluster::shared()
        .connect_as(&database, &svc)
        .query("SELECT * FROM ae_events.source_owners()", &[])
        .unwrap_err();
    assert_eq!(sqlstate(&error), "42501");
}
