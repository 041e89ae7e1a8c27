//! The event catalog (shared/contract/catalog.md §1): `ae_events.event_schema(key)` and
//! `ae_events.openapi()`, the committed docs/openapi.json and docs/schemas/, and the schema's
//! exactness: real payloads validate (the seed's, property-based ones with extreme values),
//! altered ones do not, and payload rules change it.

mod common;

use common::*;
use postgres::Client;
use proptest::prelude::*;
use serde_json::{json, Value};

const KEYS: &[&str] = &[
    "ae.test_instance.created",
    "ae.test_instance.updated",
    "ae.endpoint.failing",
    "ae.endpoint.recovered",
    "ae.endpoint.disabled",
    "ae.delivery.dead_lettered",
];

fn event_schema(client: &mut Client, key: &str) -> Value {
    client
        .query_one("SELECT ae_events.event_schema($1)", &[&key])
        .unwrap()
        .get(0)
}

fn openapi(client: &mut Client) -> Value {
    client
        .query_one("SELECT ae_events.openapi()", &[])
        .unwrap()
        .get(0)
}

/// The committed files are what a fresh install (no payload rules) gives. With
/// `AE_EVENTS_BLESS=1` the test writes them instead (after a change to the payload types).
#[test]
fn the_committed_openapi_document_and_schemas_are_a_fresh_installs() {
    let cluster = Cluster::shared();
    let database = cluster.database("catalog_files", ForeignKeys::Without);
    let mut client = cluster.connect(&database);
    let docs = repository_root().join("docs");
    let mut files = vec![(docs.join("openapi.json"), openapi(&mut client))];
    for key in KEYS {
        files.push((
            docs.join("schemas").join(format!("{key}.json")),
            event_schema(&mut client, key),
        ));
    }
    let bless = std::env::var("AE_EVENTS_BLESS").is_ok_and(|v| v == "1");
    for (path, generated) in files {
        if bless {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            let text = serde_json::to_string_pretty(&generated).unwrap() + "\n";
            std::fs::write(&path, text).unwrap();
            continue;
        }
        let committed: Value = std::fs::read_to_string(&path)
            .ok()
            .and_then(|text| serde_json::from_str(&text).ok())
            .unwrap_or(Value::Null);
        assert!(
            committed == generated,
            "{} is not what a fresh install's catalog gives: run \
             AE_EVENTS_BLESS=1 cargo test -p ae_events --test catalog the_committed and commit it",
            path.display()
        );
    }
    // The committed schemas are the ones the relay's tests and the helpers validate with.
    for key in KEYS {
        assert_eq!(builtin_schema(key), Some(event_schema(&mut client, key)));
    }
}

#[test]
fn an_unknown_key_is_refused_with_the_keys_in_the_hint() {
    let cluster = Cluster::shared();
    let database = cluster.database("catalog_unknown", ForeignKeys::Without);
    let mut client = cluster.connect(&database);
    let error = client
        .query_one(
            "SELECT ae_events.event_schema('ae.test_instance.deleted')",
            &[],
        )
        .unwrap_err();
    assert_eq!(sqlstate(&error), "22023");
    let db_error = error.as_db_error().unwrap();
    assert!(
        db_error.message().starts_with("ae_events: "),
        "{db_error:?}"
    );
    let hint = db_error.hint().unwrap_or_default();
    for key in KEYS {
        assert!(hint.contains(key), "{hint}");
    }
    // NULL in, NULL out (STRICT), as SQL functions do.
    let null: Option<Value> = client
        .query_one("SELECT ae_events.event_schema(NULL)", &[])
        .unwrap()
        .get(0);
    assert_eq!(null, None);
}

#[test]
fn readers_relays_and_operators_may_read_the_catalog_and_the_application_may_not() {
    let cluster = Cluster::shared();
    let database = cluster.database("catalog_grants", ForeignKeys::Without);
    let mut client = cluster.connect(&database);
    client
        .batch_execute(
            "DO $$ BEGIN
                 IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'catalog_reader') THEN
                     CREATE ROLE catalog_reader LOGIN IN ROLE ae_events_reader;
                 END IF;
                 IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'catalog_relay') THEN
                     CREATE ROLE catalog_relay LOGIN IN ROLE ae_events_relay;
                 END IF;
                 IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'catalog_operator') THEN
                     CREATE ROLE catalog_operator LOGIN IN ROLE ae_events_operator;
                 END IF;
                 IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'catalog_app') THEN
                     CREATE ROLE catalog_app LOGIN;
                 END IF;
             END $$;
             GRANT USAGE ON SCHEMA ae_events TO catalog_app;
             INSERT INTO ae_events.payload_rules VALUES ('candidate.email', 'remove');",
        )
        .unwrap();
    for role in ["catalog_reader", "catalog_relay", "catalog_operator"] {
        let mut as_role = cluster.connect_as(&database, role);
        // The rules in force apply, though the role cannot read them.
        let schema = event_schema(&mut as_role, "ae.test_instance.created");
        let required = &schema["properties"]["candidate"]["required"];
        assert!(!required.as_array().unwrap().contains(&json!("email")));
        assert!(openapi(&mut as_role)["webhooks"]["ae.test_instance.created"].is_object());
        let error = as_role
            .query_one("SELECT * FROM ae_events.payload_rules", &[])
            .unwrap_err();
        assert_eq!(sqlstate(&error), "42501", "{role}");
    }
    let mut app = cluster.connect_as(&database, "catalog_app");
    for query in [
        "SELECT ae_events.event_schema('ae.test_instance.created')",
        "SELECT ae_events.openapi()",
        "SELECT ae_events._openapi('{}', '{}')",
    ] {
        let error = app.query_one(query, &[]).unwrap_err();
        assert_eq!(sqlstate(&error), "42501", "{query}");
    }
}

/// A change made to the seed's example.
type Change = Box<dyn Fn(&mut Value)>;

/// The schema is not permissive: the seed's example validates, and the same with a field
/// left out, a wrong type or an unknown field at a level the seed fixes does not.
#[test]
fn altered_payloads_fail_validation() {
    let (_, mut client) = seeded_database("catalog_negative");
    let rows = outbox_rows(&mut client);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].payload, seed_example_payload());
    // The instance events' keys (the operational ones: relay/tests/alerts.rs and the unit tests).
    for key in KEYS
        .iter()
        .filter(|key| key.starts_with("ae.test_instance."))
    {
        let schema = event_schema(&mut client, key);
        assert_eq!(schema["examples"][0], seed_example_payload());
        assert_valid(&schema, key, &seed_example_payload());
        let altered = |change: &dyn Fn(&mut Value)| {
            let mut payload = seed_example_payload();
            change(&mut payload);
            schema_errors(&schema, &payload)
        };
        let must_fail: Vec<(&str, Change)> = vec![
            (
                "top-level field removed",
                Box::new(|p| {
                    p.as_object_mut().unwrap().remove("instance_status");
                }),
            ),
            (
                "nested field removed",
                Box::new(|p| {
                    p["candidate"].as_object_mut().unwrap().remove("email");
                }),
            ),
            (
                "attribute field removed",
                Box::new(|p| {
                    p["measurement"]["measurement_attributes"][0]
                        .as_object_mut()
                        .unwrap()
                        .remove("ordinal");
                }),
            ),
            ("string for a number", Box::new(|p| p["id"] = json!("789"))),
            (
                "null for a non-null",
                Box::new(|p| p["candidate_id"] = Value::Null),
            ),
            (
                "number for a string",
                Box::new(|p| p["candidate"]["email"] = json!(5)),
            ),
            (
                "a string that is no special numeric",
                Box::new(|p| p["score"] = json!("12.5")),
            ),
            (
                "a timestamp that is not one",
                Box::new(|p| p["created_at"] = json!("yesterday")),
            ),
            (
                "object for an array",
                Box::new(|p| p["measurement"]["measurement_attributes"] = json!({})),
            ),
            (
                "unknown top-level field",
                Box::new(|p| p["extra"] = json!(1)),
            ),
            (
                "unknown field in the candidate",
                Box::new(|p| p["candidate"]["nickname"] = json!("J")),
            ),
            (
                "unknown field in a skill",
                Box::new(|p| {
                    p["measurement"]["measurement_attributes"][0]
                        ["section_configuration_attribute"]["attribute"]["skill"]["level"] =
                        json!(1)
                }),
            ),
        ];
        for (what, change) in must_fail {
            assert!(!altered(&*change).is_empty(), "{key}: {what} validated");
        }
        let must_pass: Vec<(&str, Change)> = vec![
            (
                "free-form cf",
                Box::new(|p| p["candidate"]["cf"] = json!({"team": {"lead": [1, "x", null]}})),
            ),
            (
                "special numeric",
                Box::new(|p| p["score"] = json!("-Infinity")),
            ),
            (
                "expanded year",
                Box::new(|p| p["created_at"] = json!("+294276-01-01T00:00:00Z")),
            ),
            (
                "infinity",
                Box::new(|p| p["updated_at"] = json!("-infinity")),
            ),
            (
                "missing candidate row",
                Box::new(|p| p["candidate"] = Value::Null),
            ),
            (
                "no attributes",
                Box::new(|p| p["measurement"]["measurement_attributes"] = json!([])),
            ),
        ];
        for (what, change) in must_pass {
            assert_eq!(altered(&*change), Vec::<String>::new(), "{key}: {what}");
        }
    }
}

#[test]
fn payload_rules_change_the_schema_and_ruled_payloads_validate() {
    let cluster = Cluster::shared();
    let database = cluster.database("catalog_rules", ForeignKeys::Without);
    let mut client = cluster.connect(&database);
    let before = event_schema(&mut client, "ae.test_instance.created");
    client
        .batch_execute(
            "INSERT INTO ae_events.payload_rules VALUES
                 ('candidate.email', 'remove'),
                 ('candidate.user_id', 'sha256'),
                 ('candidate.phone_number', 'sha256'),
                 ('measurement.measurement_attributes.*.numerical_score', 'sha256'),
                 ('measurement.measurement_attributes.*.description', 'null'),
                 ('catalog_assessment.catalog.id', 'null'),
                 ('candidate.cf.ssn', 'remove');",
        )
        .unwrap();
    client.batch_execute(SEED_EXAMPLE).unwrap();
    let schema = event_schema(&mut client, "ae.test_instance.created");
    assert_ne!(schema, before);
    let candidate = &schema["properties"]["candidate"];
    let required = candidate["required"].as_array().unwrap();
    assert!(!required.contains(&json!("email")), "{required:?}");
    assert!(required.contains(&json!("user_id")));
    // Hashed; null once the candidate is erased (erase_candidate).
    assert_eq!(
        candidate["properties"]["user_id"]["type"],
        json!(["string", "null"])
    );
    assert_eq!(
        candidate["properties"]["phone_number"]["type"],
        json!(["string", "null"])
    );
    let attribute =
        &schema["properties"]["measurement"]["properties"]["measurement_attributes"]["items"];
    assert_eq!(
        attribute["properties"]["numerical_score"]["type"],
        json!(["string", "null"])
    );
    assert_eq!(
        attribute["properties"]["description"]["type"],
        json!(["string", "null"])
    );
    assert_eq!(
        schema["properties"]["catalog_assessment"]["properties"]["catalog"]["properties"]["id"]
            ["type"],
        json!(["integer", "null"])
    );
    // The example is shown as the rules make it: it validates.
    let example = &schema["examples"][0];
    assert!(example["candidate"].get("email").is_none());
    assert_eq!(
        example["candidate"]["user_id"].as_str().map(str::len),
        Some(64)
    );
    assert_valid(&schema, "ae.test_instance.created", example);
    // The event written under these rules validates (outbox_rows validates against the
    // schema in force), and would not against the schema without rules.
    let rows = outbox_rows(&mut client);
    assert_eq!(rows.len(), 1);
    assert!(rows[0].payload["candidate"].get("email").is_none());
    assert!(!schema_errors(&before, &rows[0].payload).is_empty());
    // The OpenAPI document carries the same schema.
    let document = openapi(&mut client);
    let mut in_document = schema.clone();
    in_document.as_object_mut().unwrap().remove("$schema");
    assert_eq!(
        document["components"]["schemas"]["ae.test_instance.created"],
        in_document
    );
}

/// A fresh database with reference rows for the property-based instances: candidates,
/// catalog assessments, measurements with attributes are written per case.
fn property_database() -> (String, Client) {
    let cluster = Cluster::shared();
    let database = cluster.database("catalog_properties", ForeignKeys::Without);
    let mut client = cluster.connect(&database);
    client.batch_execute(SEED_EXAMPLE).unwrap();
    (database, client)
}

/// One generated instance: its rows' values, as SQL literals where PostgreSQL parses them.
#[derive(Debug, Clone)]
struct Case {
    text: Option<String>,
    number: Option<String>,
    timestamp: String,
    interval: Option<String>,
    cf: Value,
    flag: Option<bool>,
    big: Option<i64>,
    attributes: usize,
    with_ordinal: bool,
    dangling: bool,
}

fn numbers() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        Just(None),
        Just(Some("NaN".to_owned())),
        Just(Some("Infinity".to_owned())),
        Just(Some("-Infinity".to_owned())),
        Just(Some("1e-1000".to_owned())),
        // 300 digits: beyond f64's range serde_json (the validator's input) cannot load it.
        Just(Some(format!("-9{}.5", "0".repeat(300)))),
        Just(Some("-0.000".to_owned())),
        any::<i64>().prop_map(|n| Some(n.to_string())),
        (any::<i32>(), 0u32..20).prop_map(|(n, scale)| Some(format!("{n}e-{scale}"))),
    ]
}

fn timestamps() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("4713-01-01 00:00:00+00 BC".to_owned()),
        Just("294276-12-31 23:59:59.999999+00".to_owned()),
        Just("infinity".to_owned()),
        Just("-infinity".to_owned()),
        Just("0001-01-01 00:00:00+00 BC".to_owned()),
        Just("9999-12-31 23:59:59.5+00".to_owned()),
        (0i64..4_000_000_000).prop_map(|s| format!("epoch {s}")),
    ]
    .prop_map(|t| match t.strip_prefix("epoch ") {
        Some(seconds) => format!("to_timestamp({seconds})"),
        None => format!("'{t}'::timestamptz"),
    })
}

fn intervals() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        Just(None),
        Just(Some("178000000 years".to_owned())),
        Just(Some("-178000000 years".to_owned())),
        Just(Some("1 day 02:03:04.5".to_owned())),
        Just(Some("-1 mons +2 days -00:00:01.000001".to_owned())),
        (any::<i32>(), any::<i32>(), any::<i32>())
            .prop_map(|(m, d, s)| Some(format!("{m} months {d} days {s} seconds"))),
    ]
}

fn texts() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        Just(None),
        Just(Some(String::new())),
        Just(Some(
            "Zoë 🦀 \u{202e}ﬁ \"quoted\" \\ back\\slash \n\t\u{1}".to_owned()
        )),
        proptest::collection::vec(any::<char>().prop_filter("no NUL", |c| *c != '\0'), 0..40)
            .prop_map(|chars| Some(chars.into_iter().collect())),
    ]
}

fn json_values() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        "[a-z]{0,8}".prop_map(Value::from),
    ];
    leaf.prop_recursive(8, 64, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            proptest::collection::btree_map("[a-z\u{e9}]{1,6}", inner, 0..4)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

/// cf: deep objects (a chain of 60 levels sometimes), or any JSON.
fn cfs() -> impl Strategy<Value = Value> {
    prop_oneof![
        json_values(),
        (1usize..60).prop_map(|depth| {
            let mut value = json!({"leaf": "deep"});
            for level in 0..depth {
                value = json!({ format!("l{level}"): value });
            }
            value
        }),
    ]
}

fn cases() -> impl Strategy<Value = Case> {
    (
        texts(),
        numbers(),
        timestamps(),
        intervals(),
        cfs(),
        proptest::option::of(any::<bool>()),
        proptest::option::of(any::<i64>()),
        0usize..4,
        any::<bool>(),
        proptest::bool::weighted(0.15),
    )
        .prop_map(
            |(
                text,
                number,
                timestamp,
                interval,
                cf,
                flag,
                big,
                attributes,
                with_ordinal,
                dangling,
            )| {
                Case {
                    text,
                    number,
                    timestamp,
                    interval,
                    cf,
                    flag,
                    big,
                    attributes,
                    with_ordinal,
                    dangling,
                }
            },
        )
}

/// Write one instance with its own candidate, catalog assessment and measurement from `case`
/// (ids from `n`), in one transaction; returns the instance's id.
fn write_case(client: &mut Client, n: i64, case: &Case) -> i64 {
    let id = 10_000 + n;
    let mut tx = client.transaction().unwrap();
    let text = case.text.clone();
    let number = case.number.clone();
    let interval = case.interval.clone();
    let cf = case.cf.clone();
    tx.execute(
        "INSERT INTO can.candidate VALUES ($1, $2, coalesce($3::bigint, 0), coalesce($2, 'e@example.com'),
                 $2, $2, $2, $2, $2, coalesce($4, false), $4, $3, $3, coalesce($5::jsonb, 'null'))",
        &[&id, &text, &case.big, &case.flag, &cf],
    )
    .unwrap();
    tx.batch_execute(&format!(
        "INSERT INTO ae.assessment VALUES ({id}, 'a', 'l', 's', {ts}, {ts});
         INSERT INTO ae.catalog VALUES ({id}, 'c', NULL);
         INSERT INTO ae.catalog_assessment VALUES ({id}, {id}, {id});
         INSERT INTO tcf.skill VALUES ({id}, 's');
         INSERT INTO tcf.ordinal VALUES ({id}, 'l', 'v', -2147483648, NULL, NULL);",
        ts = case.timestamp
    ))
    .unwrap();
    tx.execute(
        "INSERT INTO tcf.attribute VALUES ($1, 'n', 't', true, coalesce($2::text, '0')::numeric,
                 coalesce($2::text, 'NaN')::numeric, CASE WHEN $3 THEN NULL ELSE $1::bigint END)",
        &[&id, &number, &case.dangling],
    )
    .unwrap();
    tx.execute(
        "INSERT INTO tcf.section_configuration_attribute VALUES ($1, coalesce($2, ''),
                 $3::text::numeric, $4, $1)",
        &[&id, &text, &number, &case.big],
    )
    .unwrap();
    tx.execute(
        &format!(
            "INSERT INTO tcf.measurement VALUES ($1, 'st', $2::text::interval, $3, $4, {ts}, $4, $4)",
            ts = case.timestamp
        ),
        &[&id, &interval, &text, &case.big],
    )
    .unwrap();
    // A dangling reference (no such row) makes that part of the payload null.
    let measurement = if case.dangling { id + 1_000_000 } else { id };
    let candidate = if case.dangling { id + 1_000_000 } else { id };
    tx.execute(
        &format!(
            "INSERT INTO ti.instance VALUES ($1, $2, $3, $4::text::numeric, 'completed', $5, $1,
                 $6, $3, $3, {ts}, -1, {ts}, 9223372036854775807)",
            ts = case.timestamp
        ),
        &[&id, &text, &case.big, &number, &candidate, &measurement],
    )
    .unwrap();
    for a in 0..case.attributes as i64 {
        let ordinal: Option<i64> = case.with_ordinal.then_some(id);
        let additional: Option<Value> = (a % 2 == 0).then(|| case.cf.clone());
        tx.execute(
            &format!(
                "INSERT INTO tcf.measurement_attribute VALUES ($1, $2, $2, $3, $4::text::numeric,
                     $4::text::numeric, $5, $5, $6, {ts}, 0, {ts}, 0)",
                ts = case.timestamp
            ),
            &[&(id * 10 + a), &id, &ordinal, &number, &text, &additional],
        )
        .unwrap();
    }
    tx.commit().unwrap();
    id
}

/// Property-based payloads: nulls in every nullable field, extreme numerics (NaN, the
/// infinities, 1e-1000, 300 digits), unicode, deep and odd `cf`, timestamps outside
/// 0000-9999 and the infinities, long and negative intervals, missing referenced rows. Each
/// case's created event and an updated one validate against their schemas.
#[test]
fn property_based_payloads_validate() {
    let (_, mut client) = property_database();
    let created = event_schema(&mut client, "ae.test_instance.created");
    let updated = event_schema(&mut client, "ae.test_instance.updated");
    let counter = std::cell::Cell::new(0i64);
    let client = std::cell::RefCell::new(client);
    let config = ProptestConfig {
        cases: 48,
        max_shrink_iters: 32,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    proptest!(config, |(case in cases())| {
        let n = counter.get();
        counter.set(n + 1);
        let mut client = client.borrow_mut();
        let id = write_case(&mut client, n, &case);
        client
            .execute("UPDATE ti.instance SET updated_by = updated_by - 1 WHERE id = $1", &[&id])
            .unwrap();
        let payloads: Vec<(String, Value)> = client
            .query(
                "SELECT subscription_key, payload FROM ae_events.outbox
                  WHERE aggregate_id = $1 ORDER BY id",
                &[&id],
            )
            .unwrap()
            .iter()
            .map(|row| (row.get(0), row.get(1)))
            .collect();
        prop_assert_eq!(payloads.len(), 2, "{:?}", case);
        for (key, payload) in payloads {
            let schema = if key == "ae.test_instance.created" { &created } else { &updated };
            let errors = schema_errors(schema, &payload);
            prop_assert!(errors.is_empty(), "{:?}: {:#?}\n{}", case, errors, payload);
        }
    });
    // The shared helper validates them all again.
    assert!(outbox_rows(&mut client.borrow_mut()).len() >= 2 * 48);
}

/// The OpenAPI document passes a real OpenAPI 3.1 validator (PyPI openapi-spec-validator,
/// installed by scripts/setup.sh).
#[test]
fn the_openapi_document_passes_an_openapi_3_1_validator() {
    let cluster = Cluster::shared();
    let database = cluster.database("catalog_openapi", ForeignKeys::Without);
    let mut client = cluster.connect(&database);
    client
        .batch_execute("INSERT INTO ae_events.payload_rules VALUES ('candidate.email', 'sha256')")
        .unwrap();
    let document = openapi(&mut client);
    assert_eq!(document["openapi"], json!("3.1.0"));
    let tools = repository_root().join(".tools/openapi-spec-validator");
    assert!(
        tools.join("openapi_spec_validator").is_dir(),
        "{} is missing: run scripts/setup.sh",
        tools.display()
    );
    let validate = |file: &std::path::Path| {
        std::process::Command::new("python3")
            .args(["-m", "openapi_spec_validator"])
            .arg(file)
            .env("PYTHONPATH", &tools)
            .output()
            .unwrap()
    };
    let dir = std::env::temp_dir().join(format!("ae_events_openapi_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ruled = dir.join("openapi.json");
    std::fs::write(&ruled, serde_json::to_vec_pretty(&document).unwrap()).unwrap();
    for file in [ruled, repository_root().join("docs/openapi.json")] {
        let output = validate(&file);
        assert!(
            output.status.success(),
            "{}: {}{}",
            file.display(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    // And a broken one does not pass (the validator does check).
    let broken = dir.join("broken.json");
    let mut document = document;
    document["webhooks"]["ae.test_instance.created"]["post"]["responses"] = json!("none");
    std::fs::write(&broken, serde_json::to_vec(&document).unwrap()).unwrap();
    let output = validate(&broken);
    assert!(!output.status.success());
    let _ = std::fs::remove_dir_all(&dir);
}
