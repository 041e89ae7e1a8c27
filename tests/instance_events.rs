//! `ae_events.instance_events` (shared/contract/catalog.md §3): one row per ae.test_instance.*
//! event with the payload's scalar fields as typed columns. The columns are derived here from
//! the seed's example payload (every scalar field outside arrays and the free-shape JSONB
//! objects), so a field the view leaves out, misnames or reads from the wrong path fails.

mod common;

use common::*;
use serde_json::Value;

/// Every scalar field of a payload: its path and the view's column for it, `<object>_<field>`
/// (`instance_` for the top level, whose `instance_status` keeps its name).
fn scalar_fields(payload: &Value) -> Vec<(Vec<String>, String)> {
    fn walk(value: &Value, path: &mut Vec<String>, out: &mut Vec<(Vec<String>, String)>) {
        match value {
            Value::Object(map) => {
                for (key, field) in map {
                    // cf and additional_attributes are JSONB of free shape: not columns.
                    if key == "cf" || key == "additional_attributes" {
                        continue;
                    }
                    path.push(key.clone());
                    walk(field, path, out);
                    path.pop();
                }
            }
            Value::Array(_) => {} // measurement_attributes: rows of their own, not columns
            _ => {
                let field = path.last().unwrap().clone();
                let column = match path.len() {
                    1 if field == "instance_status" => field,
                    1 => format!("instance_{field}"),
                    n => format!("{}_{field}", path[n - 2]),
                };
                out.push((path.clone(), column));
            }
        }
    }
    let mut out = Vec::new();
    walk(payload, &mut Vec::new(), &mut out);
    out
}

/// The view's row of an event as JSON (times in UTC, intervals in PostgreSQL's style).
fn view_row(client: &mut postgres::Client, event_id: &str) -> serde_json::Map<String, Value> {
    let text: String = client
        .query_one(
            "SELECT row_to_json(v)::text FROM ae_events.instance_events AS v
              WHERE event_id = $1::text::uuid",
            &[&event_id],
        )
        .unwrap()
        .get(0);
    match serde_json::from_str(&text).unwrap() {
        Value::Object(map) => map,
        other => panic!("{other}"),
    }
}

/// Each column equals the payload's value at its path (null where the payload has none).
fn assert_columns_equal_payload(
    fields: &[(Vec<String>, String)],
    row: &serde_json::Map<String, Value>,
    payload: &Value,
) {
    for (path, column) in fields {
        let expected = path
            .iter()
            .try_fold(payload, |value, key| value.get(key))
            .cloned()
            .unwrap_or(Value::Null);
        let actual = row
            .get(column)
            .unwrap_or_else(|| panic!("no column {column} for {}", path.join(".")));
        // timestamptz as JSON: +00:00 in UTC where the payload writes Z.
        let actual = match actual {
            Value::String(text) if text.ends_with("+00:00") => {
                Value::String(text.replace("+00:00", "Z"))
            }
            other => other.clone(),
        };
        assert_eq!(actual, expected, "{column} ({})", path.join("."));
    }
}

fn event_of(client: &mut postgres::Client, instance: i64) -> (String, Value) {
    let row = client
        .query_one(
            "SELECT event_id::text, payload::text FROM ae_events.outbox
              WHERE aggregate_id = $1 ORDER BY id DESC LIMIT 1",
            &[&instance],
        )
        .unwrap();
    (
        row.get(0),
        serde_json::from_str(row.get::<_, &str>(1)).unwrap(),
    )
}

#[test]
fn instance_events_columns_equal_the_payload_for_the_seed_and_for_every_nullable_field_null() {
    let (_database, mut client) = seeded_database("instance_events");
    client
        .batch_execute(
            "SET TimeZone = 'UTC'; SET IntervalStyle = 'postgres';
             INSERT INTO ae.assessment VALUES (1, 'A', 'basic', 'published', now(), now());
             INSERT INTO ae.catalog VALUES (1, 'C', NULL);
             INSERT INTO ae.catalog_assessment VALUES (1, 1, 1);
             INSERT INTO can.candidate
             VALUES (1, NULL, 7, 'c@example.com', NULL, NULL, NULL, NULL, NULL, true, NULL, NULL, NULL, '{}');
             INSERT INTO tcf.measurement (id, status, time_taken, report_url, report_file_id,
                                          measured_at, measured_by, form_instance_id)
             VALUES (2, 'pending', NULL, NULL, NULL, '2024-02-29T12:34:56.5Z', NULL, NULL);
             INSERT INTO ti.instance
             VALUES (2, NULL, NULL, NULL, 'in_progress', 1, 1, 2, NULL, NULL, now(), 1, now(), 1);",
        )
        .unwrap();
    let seed = seed_example_payload();
    let fields = scalar_fields(&seed);
    assert_eq!(fields.len(), 45, "{fields:?}");

    let (seed_event, seed_payload) = event_of(&mut client, 789);
    assert_eq!(seed_payload, seed);
    assert_columns_equal_payload(&fields, &view_row(&mut client, &seed_event), &seed);

    let (null_event, null_payload) = event_of(&mut client, 2);
    for path in [
        "/external_id",
        "/score",
        "/candidate/first_name",
        "/candidate/is_recording_consent_accepted",
        "/catalog_assessment/catalog/description",
        "/measurement/time_taken",
        "/measurement/measured_by",
    ] {
        assert_eq!(null_payload.pointer(path), Some(&Value::Null), "{path}");
    }
    let row = view_row(&mut client, &null_event);
    assert_columns_equal_payload(&fields, &row, &null_payload);

    // Typed: numbers, booleans, times and the interval as such, whatever the session's style.
    let types: Vec<(String, String)> = client
        .query(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod)
               FROM pg_attribute AS a
              WHERE a.attrelid = 'ae_events.instance_events'::regclass AND a.attnum > 0
                AND a.attname IN ('instance_id', 'instance_score', 'instance_created_at',
                                  'candidate_is_tnc_accepted', 'assessment_updated_at',
                                  'measurement_time_taken', 'measurement_measured_at',
                                  'candidate_email')
              ORDER BY a.attname",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let expected: Vec<(String, String)> = [
        ("assessment_updated_at", "timestamp with time zone"),
        ("candidate_email", "text"),
        ("candidate_is_tnc_accepted", "boolean"),
        ("instance_created_at", "timestamp with time zone"),
        ("instance_id", "bigint"),
        ("instance_score", "numeric"),
        ("measurement_measured_at", "timestamp with time zone"),
        ("measurement_time_taken", "interval"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(types, expected);
    let typed: (i64, bool, String) = {
        let r = client
            .query_one(
                "SELECT instance_id, measurement_time_taken = interval '0' AND
                        instance_created_at = timestamptz '2023-11-05 10:00:00+00',
                        measurement_measured_at::text
                   FROM ae_events.instance_events WHERE instance_id = 789",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1), r.get(2))
    };
    assert_eq!(typed, (789, true, "2023-11-05 10:00:00+00".to_owned()));

    // Rules as the payload was stored: a hashed text field shows its hash, a hashed time is
    // NULL in its typed column, a removed field is NULL; only ae.test_instance.* events.
    client
        .batch_execute(
            "INSERT INTO ae_events.payload_rules VALUES
                 ('candidate.email', 'sha256'), ('created_at', 'sha256'),
                 ('candidate.phone_number', 'remove');
             UPDATE ti.instance SET instance_status = 'completed' WHERE id = 789;",
        )
        .unwrap();
    let (ruled_event, ruled_payload) = event_of(&mut client, 789);
    let row = view_row(&mut client, &ruled_event);
    assert_eq!(
        row["candidate_email"], ruled_payload["candidate"]["email"],
        "the hash"
    );
    assert_ne!(row["candidate_email"], seed["candidate"]["email"]);
    assert!(ruled_payload["created_at"].is_string());
    assert_eq!(row["instance_created_at"], Value::Null);
    assert_eq!(ruled_payload["candidate"].get("phone_number"), None);
    assert_eq!(row["candidate_phone_number"], Value::Null);
    assert_eq!(row["instance_status"], "completed");
    assert_eq!(row["event"], "ae.test_instance.updated");
    let counts: (i64, i64) = {
        let r = client
            .query_one(
                "SELECT (SELECT count(*) FROM ae_events.instance_events),
                        (SELECT count(*) FROM ae_events.outbox
                          WHERE subscription_key LIKE 'ae.test\\_instance.%')",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(counts, (3, 3));

    // Readable by ae_events_reader.
    client.batch_execute("SET ROLE ae_events_reader").unwrap();
    let rows: i64 = client
        .query_one("SELECT count(*) FROM ae_events.instance_events", &[])
        .unwrap()
        .get(0);
    assert_eq!(rows, 3);
}
