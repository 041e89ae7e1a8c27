//! Personal data (shared/contract/privacy.md): erase_candidate and ae_events.payload_retention in
//! SQL. Erasure while ae-relay delivers, and a pending delivery sent erased: relay/tests/privacy.rs.

mod common;

use common::*;
use postgres::Client;
use serde_json::{json, Value};

/// The seed's candidate 101 as the payload shows it.
const PERSONAL: [&str; 6] = [
    "candidate@example.com",
    "Jane",
    "Marie",
    "Doe",
    "+19876543210",
    "ext_can_101",
];

/// A plain-text `pg_dump --data-only` of the database.
fn data_dump(cluster: &Cluster, database: &str) -> String {
    String::from_utf8(pg_dump(cluster, database, "--data-only")).unwrap()
}

/// Every outbox row as stored: id, its tuple's place and writer (unchanged unless the row was
/// rewritten), and the payload's text.
fn stored_rows(client: &mut Client) -> Vec<(i64, i64, String, String, String)> {
    client
        .query(
            "SELECT id, aggregate_id, ctid::text, xmin::text, payload::text
               FROM ae_events.outbox ORDER BY id",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect()
}

fn payload_of(text: &str) -> Value {
    serde_json::from_str(text).unwrap()
}

/// Each statement in its own transaction (a multi-statement string is one transaction, and one
/// transaction's changes to an instance make one event).
fn each(client: &mut Client, statements: &[&str]) {
    for statement in statements {
        client.batch_execute(statement).unwrap();
    }
}

/// Candidate 102 with instance 790, and instance 791 of candidate 101 that is deleted again.
fn more_candidates(client: &mut Client) {
    each(
        client,
        &[
            "INSERT INTO can.candidate (id, external_id, user_id, email, first_name, last_name,
                 middle_name, phone_number, country, is_tnc_accepted, is_recording_consent_accepted,
                 resume_file_id, profile_pic_file_id, cf)
             VALUES (102, 'ext_can_102', 124, 'other@example.com', 'John', 'Roe', NULL,
                     '+15550000000', 'CAN', true, false, NULL, NULL, '{\"team\": \"blue\"}')",
            "INSERT INTO ti.instance (id, external_id, old_id, score, instance_status, candidate_id,
                 catalog_assessment_id, measurement_id, session_instance_id,
                 workflow_candidate_step_id, created_at, created_by, updated_at, updated_by)
             VALUES (790, 'ext_ti_790', NULL, NULL, 'in_progress', 102, 202, NULL, NULL, NULL,
                     now(), 1, now(), 1),
                    (791, 'ext_ti_791', NULL, NULL, 'in_progress', 101, 202, NULL, NULL, NULL,
                     now(), 1, now(), 1)",
            "UPDATE ti.instance SET instance_status = 'completed' WHERE id IN (789, 790)",
            "DELETE FROM ti.instance WHERE id = 791",
        ],
    );
}

#[test]
fn erase_candidate_rewrites_every_event_of_the_candidate_and_nothing_else() {
    let cluster = Cluster::shared();
    let (database, mut client) = seeded_database("erase");
    more_candidates(&mut client);
    // A receiver that echoed the payload in its error, and an operational event carrying it.
    client
        .batch_execute(
            "SELECT ae_events.create_endpoint('hook', 'http://127.0.0.1:9/hook');
             INSERT INTO ae_events.deliveries (endpoint, outbox_id, aggregate_id, status, attempts,
                                               first_attempt_at, last_attempt_at, last_status,
                                               last_error, next_attempt_at)
             SELECT 'hook', o.id, o.aggregate_id, 'pending', 1, now(), now(), 422,
                    'HTTP 422: bad email \"candidate@example.com\" (Jane Doe)', now() + interval '1 hour'
               FROM ae_events.outbox AS o WHERE o.aggregate_id = 789;
             INSERT INTO ae_events.deliveries (endpoint, outbox_id, aggregate_id, status, attempts,
                                               last_status, last_error)
             SELECT 'hook', o.id, o.aggregate_id, 'dead', 1, 500, 'HTTP 500: other@example.com'
               FROM ae_events.outbox AS o WHERE o.aggregate_id = 790;",
        )
        .unwrap();
    let before = stored_rows(&mut client);
    let of_101: Vec<i64> = before
        .iter()
        .filter(|r| payload_of(&r.4)["candidate_id"] == json!(101))
        .map(|r| r.0)
        .collect();
    assert!(
        before.iter().any(|r| r.1 == 791) && of_101.len() >= 3,
        "{before:?}"
    );

    let erased: i64 = client
        .query_one("SELECT ae_events.erase_candidate(101)", &[])
        .unwrap()
        .get(0);
    assert_eq!(erased, of_101.len() as i64);

    let after = stored_rows(&mut client);
    assert_eq!(after.len(), before.len());
    for (old, new) in before.iter().zip(&after) {
        if of_101.contains(&old.0) {
            let (old_payload, new_payload) = (payload_of(&old.4), payload_of(&new.4));
            let candidate = new_payload["candidate"].as_object().unwrap();
            assert_eq!(
                candidate.len(),
                old_payload["candidate"].as_object().unwrap().len()
            );
            for (field, value) in candidate {
                if field == "id" {
                    assert_eq!(value, &json!(101));
                } else {
                    assert_eq!(value, &Value::Null, "candidate.{field}");
                }
            }
            // Everything else as it was.
            let mut rest = new_payload.clone();
            rest["candidate"] = old_payload["candidate"].clone();
            assert_eq!(rest, old_payload);
        } else {
            assert_eq!(
                old, new,
                "another candidate's event is untouched, byte for byte"
            );
        }
    }
    let errors: Vec<(i64, String)> = client
        .query(
            "SELECT aggregate_id, last_error FROM ae_events.deliveries ORDER BY outbox_id",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert!(
        errors
            .iter()
            .all(|(i, e)| (*i == 789 && e == "[erased]") || (*i == 790 && e.contains("other@"))),
        "{errors:?}"
    );
    let status: Vec<(String, i32)> = client
        .query(
            "SELECT status, attempts FROM ae_events.deliveries WHERE aggregate_id = 789",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert!(status.iter().all(|s| s == &("pending".to_owned(), 1)));
    // An answer recorded after the erasure (an attempt that was in flight) is not kept either.
    let recorded: String = client
        .query_one(
            "UPDATE ae_events.deliveries SET last_error = 'HTTP 500: Jane Doe?'
              WHERE outbox_id = (SELECT min(outbox_id) FROM ae_events.deliveries
                                  WHERE aggregate_id = 789)
             RETURNING last_error",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(recorded, "[erased]");
    let record: (String, i64, i64, bool) = {
        let r = client
            .query_one(
                "SELECT erased_by::text, candidate_id, events,
                        erased_at BETWEEN now() - interval '1 minute' AND now()
                   FROM ae_events.erasures",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1), r.get(2), r.get(3))
    };
    assert_eq!(record, ("postgres".to_owned(), 101, erased, true));

    // The digest of the last snapshot is the source's, not the erased payload's: a change that
    // leaves the snapshot as it was writes no event (which would bring the values back) ...
    let count = |client: &mut Client| -> i64 {
        client
            .query_one("SELECT count(*) FROM ae_events.outbox", &[])
            .unwrap()
            .get(0)
    };
    let events = count(&mut client);
    client
        .batch_execute("UPDATE ti.instance SET external_id = external_id WHERE id = 789")
        .unwrap();
    assert_eq!(
        count(&mut client),
        events,
        "no event for an unchanged snapshot"
    );
    // ... and the application's own erasure is an event (the snapshot changed).
    client
        .batch_execute(
            "UPDATE can.candidate SET external_id = NULL, email = 'erased-101@invalid',
                 first_name = NULL, last_name = NULL, middle_name = NULL, phone_number = NULL,
                 country = NULL
              WHERE id = 101",
        )
        .unwrap();
    let last: String = client
        .query_one(
            "SELECT payload::text FROM ae_events.outbox ORDER BY id DESC LIMIT 1",
            &[],
        )
        .unwrap()
        .get(0);
    let last = payload_of(&last);
    assert_eq!(
        (
            last["id"].clone(),
            last["candidate"]["email"].clone(),
            last["candidate"]["first_name"].clone()
        ),
        (json!(789), json!("erased-101@invalid"), Value::Null)
    );
    assert_eq!(count(&mut client), events + 1);

    let dump = data_dump(cluster, &database);
    for value in PERSONAL {
        assert!(!dump.contains(value), "the dump still holds {value}");
    }
    assert!(dump.contains("other@example.com"), "candidate 102 is kept");

    // Again: the event written since carries the application's placeholder, which goes too;
    // then nothing is left to rewrite, and the calls are recorded all the same.
    for expected in [1, 0] {
        let again: i64 = client
            .query_one("SELECT ae_events.erase_candidate(101)", &[])
            .unwrap()
            .get(0);
        assert_eq!(again, expected);
    }
    let records: i64 = client
        .query_one("SELECT count(*) FROM ae_events.erasures", &[])
        .unwrap()
        .get(0);
    assert_eq!(records, 3);
}

#[test]
fn erase_candidate_finds_events_whose_candidate_a_payload_rule_hashed_or_removed() {
    let (_database, mut client) = seeded_database("erase_rules");
    // 789: before any rule. 790: candidate_id hashed, candidate.id removed. 791: both gone
    // (found through ti.instance). 792: candidate 102, both gone: not erased.
    client
        .batch_execute(
            "INSERT INTO can.candidate (id, user_id, email, first_name, is_tnc_accepted, cf)
             VALUES (102, 124, 'other@example.com', 'John', true, '{}');
             INSERT INTO ae_events.payload_rules VALUES ('candidate_id', 'sha256'),
                                                        ('candidate.id', 'remove');",
        )
        .unwrap();
    let instance = |client: &mut Client, id: i64, candidate: i64| {
        client
            .execute(
                "INSERT INTO ti.instance VALUES ($1, NULL, NULL, NULL, 'in_progress', $2, 202,
                                                NULL, NULL, NULL, now(), 1, now(), 1)",
                &[&id, &candidate],
            )
            .unwrap();
    };
    instance(&mut client, 790, 101);
    client
        .batch_execute(
            "UPDATE ae_events.payload_rules SET action = 'remove' WHERE path = 'candidate_id'",
        )
        .unwrap();
    instance(&mut client, 791, 101);
    instance(&mut client, 792, 102);
    let before = stored_rows(&mut client);
    assert_eq!(before.len(), 4);
    let hashed: bool = client
        .query_one(
            "SELECT payload->>'candidate_id' = encode(sha256('101'), 'hex') FROM ae_events.outbox WHERE aggregate_id = 790",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(hashed);

    let erased: i64 = client
        .query_one("SELECT ae_events.erase_candidate(101)", &[])
        .unwrap()
        .get(0);
    assert_eq!(erased, 3);
    let after = stored_rows(&mut client);
    for (old, new) in before.iter().zip(&after) {
        let email = &payload_of(&new.4)["candidate"]["email"];
        if old.1 == 792 {
            assert_eq!(old, new);
        } else {
            assert_eq!(email, &Value::Null, "instance {}", old.1);
        }
    }
}

#[test]
fn only_the_dba_and_roles_it_grants_may_erase_or_read_the_erasures() {
    let cluster = Cluster::shared();
    let (database, mut client) = seeded_database("erase_roles");
    client
        .batch_execute(&format!(
            "CREATE ROLE reader_{database} LOGIN IN ROLE ae_events_reader;
             CREATE ROLE relay_{database} LOGIN IN ROLE ae_events_relay;
             CREATE ROLE app_{database} LOGIN;
             CREATE ROLE dpo_{database} LOGIN;
             GRANT USAGE ON SCHEMA ae_events TO dpo_{database};
             GRANT EXECUTE ON FUNCTION ae_events.erase_candidate(bigint) TO dpo_{database};"
        ))
        .unwrap();
    for role in ["reader", "relay", "app"] {
        let mut other = cluster.connect_as(&database, &format!("{role}_{database}"));
        for query in [
            "SELECT ae_events.erase_candidate(101)",
            "SELECT count(*) FROM ae_events.erasures",
        ] {
            let error = other.query_one(query, &[]).unwrap_err();
            assert_eq!(sqlstate(&error), "42501", "{role}: {query}");
        }
    }
    let mut dpo = cluster.connect_as(&database, &format!("dpo_{database}"));
    let erased: i64 = dpo
        .query_one("SELECT ae_events.erase_candidate(101)", &[])
        .unwrap()
        .get(0);
    assert_eq!(erased, 1);
    let error = dpo
        .query_one("SELECT count(*) FROM ae_events.erasures", &[])
        .unwrap_err();
    assert_eq!(
        sqlstate(&error),
        "42501",
        "granted the call, not the records"
    );
    let by: String = client
        .query_one("SELECT erased_by::text FROM ae_events.erasures", &[])
        .unwrap()
        .get(0);
    assert_eq!(by, format!("dpo_{database}"));
    let error = client
        .query_one("SELECT ae_events.erase_candidate(NULL)", &[])
        .unwrap_err();
    assert_eq!(sqlstate(&error), "22004");
    assert!(error_message(&error).starts_with("ae_events: "));
}

#[test]
fn retention_expires_payloads_once_delivered_and_acknowledged_and_keeps_the_rest() {
    let cluster = Cluster::shared();
    let (database, mut client) = seeded_database("retention");
    // The setting: a superuser's, an interval, checked when it is set (in sessions that load the
    // library at start, as the README recommends).
    client
        .batch_execute(&format!(
            "CREATE ROLE app_{database} LOGIN;
             ALTER DATABASE {database} SET session_preload_libraries = 'ae_events';"
        ))
        .unwrap();
    let mut app = cluster.connect_as(&database, &format!("app_{database}"));
    let error = app
        .batch_execute("SET ae_events.payload_retention = '1d'")
        .unwrap_err();
    assert_eq!(sqlstate(&error), "42501");
    let error = client
        .batch_execute("SET ae_events.payload_retention = 'a while'")
        .unwrap_err();
    assert_eq!(sqlstate(&error), "22023");

    // Five events of instance 789 and 790 (1 = the seed's), all old; a consumer that has
    // acknowledged the first four, an endpoint that has passed all but has the 2nd pending.
    each(
        &mut client,
        &[
            "SELECT ae_events.create_consumer('analytics', from_start => true)",
            // Disabled before the later events: never reaches them.
            "SELECT ae_events.create_endpoint('paused', 'http://127.0.0.1:9/paused')",
            "SELECT ae_events.disable_endpoint('paused', 'maintenance')",
            "INSERT INTO ti.instance VALUES (790, NULL, NULL, NULL, 'in_progress', 101, 202,
                                             NULL, NULL, NULL, now(), 1, now(), 1)",
            "UPDATE ti.instance SET instance_status = 'completed' WHERE id = 789",
            "UPDATE ti.instance SET instance_status = 'completed' WHERE id = 790",
            "UPDATE ti.instance SET instance_status = 'expired' WHERE id = 789",
            "UPDATE ae_events.outbox SET occurred_at = now() - interval '3 days'",
        ],
    );
    let ids: Vec<(i64, String)> = client
        .query(
            "SELECT id, event_id::text FROM ae_events.outbox
              WHERE aggregate_type = 'test_instance' ORDER BY txid, id",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(ids.len(), 5);
    eventually(
        || {
            client
                .query("SELECT * FROM ae_events.poll('analytics', 10)", &[])
                .unwrap()
                .len()
        },
        |n| *n >= 5,
    );
    client
        .execute("SELECT ae_events.ack('analytics', $1)", &[&ids[3].0])
        .unwrap();
    client
        .batch_execute(&format!(
            "SELECT ae_events.create_endpoint('hook', 'http://127.0.0.1:9/hook');
             INSERT INTO ae_events.deliveries (endpoint, outbox_id, aggregate_id, status, attempts,
                                               last_status, next_attempt_at)
             SELECT 'hook', id, aggregate_id, 'pending', 1, 500, now() FROM ae_events.outbox
              WHERE id = {};
             INSERT INTO ae_events.deliveries (endpoint, outbox_id, aggregate_id, status, attempts,
                                               last_status, delivered_at)
             SELECT 'hook', id, aggregate_id, 'delivered', 1, 200, now() FROM ae_events.outbox
              WHERE id = {};",
            ids[1].0, ids[0].0
        ))
        .unwrap();
    let cursor_passed: bool = client
        .query_one(
            "SELECT cursor_id >= (SELECT max(id) FROM ae_events.outbox) OR cursor_txid >= (SELECT max(txid) FROM ae_events.outbox)
               FROM ae_events.endpoints WHERE endpoint = 'hook'",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(cursor_passed, "the endpoint starts after the events");

    let expired = |client: &mut Client| -> Vec<(i64, bool, bool, bool)> {
        client
            .query(
                "SELECT o.id, o.payload = 'null'::jsonb, e.payload_expired, i.payload_expired
                   FROM ae_events.outbox AS o
                   JOIN ae_events.events AS e USING (id)
                   JOIN ae_events.instance_events AS i USING (id)
                  ORDER BY o.txid, o.id",
                &[],
            )
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
            .collect()
    };
    // Unset: nothing expires.
    let pruned: i64 = client
        .query_one("SELECT ae_events.prune('30 days')", &[])
        .unwrap()
        .get(0);
    assert_eq!(pruned, 0);
    assert!(expired(&mut client).iter().all(|e| !e.1 && !e.2 && !e.3));

    // Longer than the events' age: nothing either.
    client
        .batch_execute("SET ae_events.payload_retention = '4d'; SELECT ae_events.prune('30 days')")
        .unwrap();
    assert!(expired(&mut client).iter().all(|e| !e.1));

    client
        .batch_execute("SET ae_events.payload_retention = '2d'; SELECT ae_events.prune('30 days')")
        .unwrap();
    let now = expired(&mut client);
    let flags: Vec<bool> = now.iter().map(|e| e.1).collect();
    // 1st: delivered, acknowledged; 2nd: pending; 3rd, 4th: passed by the endpoint's cursor,
    // acknowledged; 5th: not acknowledged.
    assert_eq!(flags, [true, false, true, true, false], "{now:?}");
    assert!(now.iter().all(|e| e.1 == e.2 && e.1 == e.3), "{now:?}");
    let paused: Vec<(i64, String, String)> = client
        .query(
            "SELECT id, status, last_error FROM ae_events.delivery_status
              WHERE endpoint = 'paused' ORDER BY id",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let dead_ids: Vec<i64> = paused.iter().map(|p| p.0).collect();
    let mut expected = vec![ids[2].0, ids[3].0];
    expected.sort();
    assert_eq!(dead_ids, expected, "{paused:?}");
    assert!(paused
        .iter()
        .all(|p| p.1 == "dead" && p.2.contains("payload expired")));
    let kept: (i64, String, i64) = {
        let r = client
            .query_one(
                "SELECT count(*), min(status), min(snapshot_version)
                   FROM ae_events.delivery_status WHERE id = $1",
                &[&ids[0].0],
            )
            .unwrap();
        (r.get(0), r.get(1), r.get::<_, i32>(2) as i64)
    };
    assert_eq!(
        kept,
        (1, "delivered".to_owned(), 1),
        "metadata and history stay"
    );
    let metadata: (String, i64, i32) = {
        let r = client
            .query_one(
                "SELECT event, instance_id, snapshot_version FROM ae_events.events WHERE id = $1",
                &[&ids[0].0],
            )
            .unwrap();
        (r.get(0), r.get(1), r.get(2))
    };
    assert_eq!(metadata, ("ae.test_instance.created".to_owned(), 789, 1));

    // Sending an expired payload again: redeliver refuses it, replay passes over it.
    let error = client
        .execute(
            "SELECT ae_events.redeliver('hook', ARRAY[$1::text::uuid])",
            &[&ids[0].1],
        )
        .unwrap_err();
    assert_eq!(sqlstate(&error), "55000");
    assert!(error_message(&error).starts_with("ae_events: "));
    let (mut notices_client, notices) = connect_collecting_notices(cluster, &database);
    let replayed: i64 = notices_client
        .query_one(
            "SELECT ae_events.replay_endpoint('hook', now() - interval '10 days')",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(replayed, 2, "the three unexpired events");
    let said = notices.lock().unwrap().join("\n");
    assert!(
        said.contains("3 events") && said.contains("expired"),
        "{said}"
    );

    // Delivered and acknowledged at last: the rest expire.
    client
        .batch_execute(&format!(
            "UPDATE ae_events.deliveries SET status = 'delivered', next_attempt_at = NULL;
             SELECT ae_events.ack('analytics', {});
             SET ae_events.payload_retention = '2d'; SELECT ae_events.prune('30 days');",
            ids[4].0
        ))
        .unwrap();
    assert!(expired(&mut client).iter().all(|e| e.1 && e.2 && e.3));
}

#[test]
fn erase_candidate_finds_a_candidates_events_by_index_in_a_large_outbox() {
    let (_database, mut client) = seeded_database("erase_large");
    // 20,000 events of 1,000 candidates (20 each), written directly.
    client
        .batch_execute(
            "INSERT INTO ae_events.outbox (event_id, subscription_key, event_type, aggregate_type,
                                           aggregate_id, snapshot_version, payload, occurred_at, txid)
             SELECT gen_random_uuid(), 'ae.test_instance.updated', 'ae_test_instance_updated',
                    'test_instance', 10000 + g, 2,
                    jsonb_build_object('id', 10000 + g, 'candidate_id', 1000 + g % 1000,
                                       'candidate', jsonb_build_object('id', 1000 + g % 1000,
                                                                       'email', 'p' || g || '@example.com')),
                    now(), pg_current_xact_id()
               FROM generate_series(1, 20000) AS g;
             ANALYZE ae_events.outbox;",
        )
        .unwrap();
    let plan: String = client
        .query(
            "EXPLAIN SELECT o.id FROM ae_events.outbox AS o
              WHERE coalesce(NULLIF(o.payload OPERATOR(pg_catalog.->) 'candidate_id', 'null'::jsonb),
                             NULLIF(o.payload OPERATOR(pg_catalog.#>) '{candidate,id}', 'null'::jsonb))
                    OPERATOR(pg_catalog.=) '1042'::jsonb
                AND o.id OPERATOR(pg_catalog.>) -1
              ORDER BY 1 LIMIT 1000",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(plan.contains("outbox_candidate_idx"), "{plan}");
    assert!(!plan.contains("Seq Scan"), "{plan}");
    let erased: i64 = client
        .query_one("SELECT ae_events.erase_candidate(1042)", &[])
        .unwrap()
        .get(0);
    assert_eq!(erased, 20);
    let left: i64 = client
        .query_one(
            "SELECT count(*) FROM ae_events.outbox
              WHERE payload #>> '{candidate,email}' IS NOT NULL",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(
        left,
        20_000 - 20 + 1,
        "the others' and the seed's events keep theirs"
    );
}

#[test]
fn erase_candidate_waits_for_a_recording_in_progress_and_clears_what_it_recorded() {
    let cluster = Cluster::shared();
    let (database, _client) = seeded_database("erase_recording");
    // A relay recording an outcome (relay_record locks its endpoint's row first): a failed
    // attempt whose error text echoes the payload, not committed yet.
    let mut relay = cluster.connect(&database);
    relay
        .batch_execute("SELECT ae_events.create_endpoint('hook', 'http://127.0.0.1:9/hook')")
        .unwrap();
    relay
        .batch_execute(
            "BEGIN;
             SELECT FROM ae_events.endpoints WHERE endpoint = 'hook' FOR UPDATE;
             INSERT INTO ae_events.deliveries (endpoint, outbox_id, aggregate_id, status, attempts,
                                               last_status, last_error, next_attempt_at)
             SELECT 'hook', id, aggregate_id, 'pending', 1, 400,
                    'HTTP 400: bad email candidate@example.com', now()
               FROM ae_events.outbox;",
        )
        .unwrap();
    let erasing = {
        let url = cluster.url(&database);
        std::thread::spawn(move || {
            let mut dba = Client::connect(&url, postgres::NoTls).unwrap();
            dba.query_one("SELECT ae_events.erase_candidate(101)", &[])
                .unwrap()
                .get::<_, i64>(0)
        })
    };
    wait_until_a_session_waits_for_a_lock(cluster, &database);
    relay.batch_execute("COMMIT").unwrap();
    assert_eq!(erasing.join().unwrap(), 1);
    let error: String = relay
        .query_one("SELECT last_error FROM ae_events.deliveries", &[])
        .unwrap()
        .get(0);
    assert_eq!(
        error, "[erased]",
        "recorded before the erasure's commit, cleared by it"
    );
}
