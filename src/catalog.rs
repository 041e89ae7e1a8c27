//! The event catalog (shared/contract/catalog.md §1): the JSON Schema (draft 2020-12) of each
//! subscription key's webhook body, and an OpenAPI 3.1 document of the webhooks.
//!
//! A key's schema is derived from the Rust type its payload is serialized from (`payload.rs`
//! derives `JsonSchema` beside `Serialize`, honouring the same serde attributes), so a field
//! cannot be added to a payload and not to its schema; the unit tests below compare the
//! schema's properties with the keys a serialized value has. schemars' output is then made
//! exact (`exact`): every field required, nullability as a type list (`["integer", "null"]`), no
//! unknown fields in the objects the payload defines, free shape for stored jsonb (`cf`,
//! `additional_attributes`). The payload rules in force change it (`apply_rules`): a removed
//! field is no longer required, a nulled one is nullable, a hashed one is a string.
//!
//! Adding a key (the operational events of the alerts issue) is one line in `EVENTS`: its
//! payload type (deriving `Serialize` and `JsonSchema`) and its example.

use crate::alerts::{
    DeliveryDeadLettered, EndpointDisabled, EndpointFailing, EndpointRecovered,
    DEAD_LETTERED_EXAMPLE, DISABLED_EXAMPLE, FAILING_EXAMPLE, RECOVERED_EXAMPLE,
};
use crate::errors::raise;
use crate::jsonb::StoredJsonb;
use crate::payload::TestInstance;
use crate::redaction::Rules;
use crate::rows::varlena_bytes;
use pgrx::prelude::*;
use pgrx::IntoDatum;
use schemars::generate::SchemaSettings;
use schemars::JsonSchema;
use serde_json::{json, Map, Value};

/// A subscription key the extension emits, with what the catalog says about it.
pub struct EventKind {
    pub key: &'static str,
    pub event_type: &'static str,
    pub aggregate_type: &'static str,
    pub description: &'static str,
    /// The payload type's schema, made exact, before rules.
    schema: fn() -> Value,
    /// The example payload (JSON text).
    example: &'static str,
    /// Whether payload rules shape it: the instance events' payloads, not the operational
    /// events' (alerts.rs), which SQL writes without them.
    ruled: bool,
}

impl EventKind {
    const fn of<T: JsonSchema>(
        key: &'static str,
        event_type: &'static str,
        aggregate_type: &'static str,
        description: &'static str,
        example: &'static str,
    ) -> EventKind {
        EventKind {
            key,
            event_type,
            aggregate_type,
            description,
            schema: payload_schema::<T>,
            example,
            ruled: true,
        }
    }

    /// An operational event's key (alerts.rs): payload rules do not apply to it.
    const fn operational<T: JsonSchema>(
        key: &'static str,
        description: &'static str,
        example: &'static str,
    ) -> EventKind {
        EventKind {
            ruled: false,
            ..EventKind::of::<T>(key, "", "endpoint", description, example)
        }
    }

    pub fn example(&self) -> Result<Value, String> {
        serde_json::from_str(self.example)
            .map_err(|error| format!("the example of {}: {error}", self.key))
    }
}

/// The seed's example (shared/contract/ae.test_instance.created.txt).
const SEED_EXAMPLE: &str = include_str!("../tests/seed_example_payload.json");

/// Every subscription key, one line each.
pub const EVENTS: &[EventKind] = &[
    EventKind::of::<TestInstance>(
        "ae.test_instance.created",
        "ae_test_instance_created",
        "test_instance",
        "A test instance (a candidate's assessment attempt) was created: one event per committed \
         insert into ti.instance, its snapshot joined with its candidate, catalog assessment and \
         measurement.",
        SEED_EXAMPLE,
    ),
    EventKind::of::<TestInstance>(
        "ae.test_instance.updated",
        "ae_test_instance_updated",
        "test_instance",
        "A test instance's snapshot changed (the instance or a row it joins, bubbled up): the \
         whole new snapshot, in the same shape as ae.test_instance.created; the ae-snapshot-version \
         header counts the instance's events.",
        SEED_EXAMPLE,
    ),
    EventKind {
        event_type: "ae_endpoint_failing",
        ..EventKind::operational::<EndpointFailing>(
            "ae.endpoint.failing",
            "Operational: an endpoint has failed for its alert_after (by default 3 attempts in a \
             row or 5 minutes since its first failure, whichever comes first). Once per failing \
             period; sent to the endpoints that name this key, never to the endpoint it is about.",
            FAILING_EXAMPLE,
        )
    },
    EventKind {
        event_type: "ae_endpoint_recovered",
        ..EventKind::operational::<EndpointRecovered>(
            "ae.endpoint.recovered",
            "Operational: an endpoint announced as failing delivered again. Once per failing \
             period; failing_since and failing_seconds say how long it failed.",
            RECOVERED_EXAMPLE,
        )
    },
    EventKind {
        event_type: "ae_endpoint_disabled",
        ..EventKind::operational::<EndpointDisabled>(
            "ae.endpoint.disabled",
            "Operational: an endpoint was disabled, by a 410 Gone (cause gone), by its \
             disable_after (cause disable_after) or by a DBA or operator (cause operator). Once \
             per disabling; ae_events.enable_endpoint resumes it.",
            DISABLED_EXAMPLE,
        )
    },
    EventKind {
        event_type: "ae_delivery_dead_lettered",
        ..EventKind::operational::<DeliveryDeadLettered>(
            "ae.delivery.dead_lettered",
            "Operational: an event was dead-lettered for an endpoint (every attempt of its retry \
             schedule failed); names the event (event_id, subscription_key, instance_id). Once \
             per event and endpoint; ae_events.redeliver sends it again.",
            DEAD_LETTERED_EXAMPLE,
        )
    },
];

pub fn event_kind(key: &str) -> Option<&'static EventKind> {
    EVENTS.iter().find(|kind| kind.key == key)
}

fn known_keys() -> String {
    EVENTS
        .iter()
        .map(|kind| kind.key)
        .collect::<Vec<_>>()
        .join(", ")
}

/// `T`'s schema as schemars derives it (subschemas inline), made exact.
fn payload_schema<T: JsonSchema>() -> Value {
    let generator = SchemaSettings::draft2020_12()
        .for_serialize()
        .with(|settings| settings.inline_subschemas = true)
        .into_generator();
    let mut schema = generator.into_root_schema_for::<T>().to_value();
    exact(&mut schema);
    schema
}

/// Make schemars' schema exact, in place: `anyOf: [X, {type: null}]` (an `Option` of an object)
/// becomes X with `null` in its type list; an object with properties requires them all and
/// allows no others.
fn exact(schema: &mut Value) {
    let Some(object) = schema.as_object_mut() else {
        return;
    };
    if let Some(merged) = object
        .get("anyOf")
        .and_then(Value::as_array)
        .and_then(|variants| nullable_variant(variants))
    {
        let description = object.get("description").cloned();
        *schema = merged;
        if let (Some(description), Some(object)) = (description, schema.as_object_mut()) {
            object.insert("description".into(), description);
        }
        exact(schema);
        return;
    }
    if let Some(Value::Object(properties)) = object.get_mut("properties") {
        for property in properties.values_mut() {
            exact(property);
        }
        let names: Vec<Value> = properties.keys().cloned().map(Value::from).collect();
        object.insert("required".into(), Value::Array(names));
        object.insert("additionalProperties".into(), Value::Bool(false));
    }
    if let Some(items) = object.get_mut("items") {
        exact(items);
    }
}

/// X with `null` added to its type, when `variants` is `[X, {"type": "null"}]` and X has a type.
fn nullable_variant(variants: &[Value]) -> Option<Value> {
    let [first, second] = variants else {
        return None;
    };
    let is_null = |v: &Value| v.get("type") == Some(&Value::from("null"));
    let other = match (is_null(first), is_null(second)) {
        (false, true) => first,
        (true, false) => second,
        _ => return None,
    };
    let mut merged = other.clone();
    add_null(&mut merged);
    Some(merged)
}

/// Allow `null` where a schema has a type (a schema without one, free shape, allows it).
fn add_null(schema: &mut Value) {
    let Some(object) = schema.as_object_mut() else {
        return;
    };
    match object.get_mut("type") {
        Some(Value::Array(types)) if !types.contains(&Value::from("null")) => {
            types.push(Value::from("null"));
        }
        Some(Value::String(single)) if single != "null" => {
            let single = std::mem::take(single);
            object.insert("type".into(), json!([single, "null"]));
        }
        _ => {}
    }
}

/// Whether a schema allows `null`.
fn allows_null(schema: &Value) -> bool {
    match schema.get("type") {
        Some(Value::String(single)) => single == "null",
        Some(Value::Array(types)) => types.contains(&Value::from("null")),
        // Free shape: anything, null included.
        _ => true,
    }
}

/// A payload rule: its path and its action (`remove`, `null`, `sha256`).
pub type Rule = (String, String);

/// Apply payload rules to a payload's schema, deepest paths first (a rule's action wins over
/// rules below it, as `redaction.rs` applies them). A path into free-form jsonb changes nothing:
/// its schema allows any value already.
fn apply_rules(schema: &mut Value, rules: &[Rule]) {
    let mut ordered: Vec<&Rule> = rules.iter().collect();
    ordered.sort_by_key(|(path, _)| std::cmp::Reverse(path.split('.').count()));
    for (path, action) in ordered {
        let segments: Vec<&str> = path.split('.').collect();
        let Some((last, parents)) = segments.split_last() else {
            continue;
        };
        let Some(parent) = at_path(schema, parents) else {
            continue;
        };
        if action == "remove" {
            if *last == "*" {
                // Elements left out: the array is shorter, its items' schema the same.
                continue;
            }
            if let Some(Value::Array(required)) = parent.get_mut("required") {
                required.retain(|name| name != *last);
            }
            continue;
        }
        let Some(target) = child(parent, last) else {
            continue;
        };
        match action.as_str() {
            "null" => {
                add_null(target);
                annotate(target, "set to null by a payload rule");
            }
            "sha256" => {
                // `null` stays `null`.
                let types = if allows_null(target) {
                    json!(["string", "null"])
                } else {
                    json!("string")
                };
                *target = json!({
                    "type": types,
                    "description": "the hex SHA-256 of the value's text (a payload rule)"
                });
            }
            _ => {}
        }
    }
}

/// `ae_events.erase_candidate` sets every field of `candidate` but `id` to null in stored events,
/// and a pending delivery is sent so (docs/privacy.md): those fields allow null.
fn allow_erasure(schema: &mut Value) {
    let Some(Value::Object(fields)) =
        child(schema, "candidate").and_then(|c| c.get_mut("properties"))
    else {
        return;
    };
    for (name, field) in fields.iter_mut() {
        if name != "id" && !allows_null(field) {
            add_null(field);
            annotate(field, "null once the candidate is erased (erase_candidate)");
        }
    }
}

/// The schema of a property (`*`: of an array's elements).
fn child<'a>(schema: &'a mut Value, segment: &str) -> Option<&'a mut Value> {
    if segment == "*" {
        schema.get_mut("items")
    } else {
        schema.get_mut("properties")?.get_mut(segment)
    }
}

fn at_path<'a>(schema: &'a mut Value, segments: &[&str]) -> Option<&'a mut Value> {
    match segments.split_first() {
        None => Some(schema),
        Some((first, rest)) => at_path(child(schema, first)?, rest),
    }
}

fn annotate(schema: &mut Value, note: &str) {
    if let Some(object) = schema.as_object_mut() {
        let text = match object.get("description").and_then(Value::as_str) {
            Some(description) => format!("{description}; {note}"),
            None => note.to_owned(),
        };
        object.insert("description".into(), Value::from(text));
    }
}

/// The JSON Schema of `kind`'s webhook body with `rules` applied, its example under `examples`
/// (the example with the rules applied, made by `ruled_example`).
pub fn event_schema_of(kind: &EventKind, rules: &[Rule], example: Value) -> Value {
    let mut schema = (kind.schema)();
    if kind.ruled {
        apply_rules(&mut schema, rules);
        allow_erasure(&mut schema);
    }
    if let Some(object) = schema.as_object_mut() {
        object.insert("title".into(), Value::from(kind.key));
        object.insert("description".into(), Value::from(kind.description));
        object.insert("examples".into(), json!([example]));
    }
    schema
}

/// The webhook headers of the contract (docs/webhooks.md, relay/src/http_sink.rs).
fn headers(kind: &EventKind) -> Vec<Value> {
    let header = |name: &str, required: bool, schema: Value, description: &str| {
        json!({
            "name": name,
            "in": "header",
            "required": required,
            "schema": schema,
            "description": description,
        })
    };
    vec![
        header(
            "webhook-id",
            true,
            json!({"type": "string", "format": "uuid"}),
            "The event's event_id: the same on every retry and redelivery; de-duplicate on it.",
        ),
        header(
            "webhook-timestamp",
            true,
            json!({"type": "string", "pattern": "^[0-9]+$"}),
            "The attempt's time in Unix seconds (signed: refuse requests far from now).",
        ),
        header(
            "webhook-signature",
            true,
            json!({"type": "string", "pattern": "^v1,[A-Za-z0-9+/=]+( v1,[A-Za-z0-9+/=]+)*$"}),
            "Standard Webhooks v1: `v1,<base64 HMAC-SHA256>` per active secret, space-separated \
             (two during a secret rotation: either verifying is enough). The HMAC's key is the \
             secret's bytes (base64 after `whsec_`), its message `{webhook-id}.{webhook-timestamp}.{raw body}`.",
        ),
        header(
            "ae-subscription-key",
            true,
            json!({"type": "string", "const": kind.key}),
            "The event's subscription key.",
        ),
        header(
            "ae-event-type",
            true,
            json!({"type": "string", "const": kind.event_type}),
            "The event's type (the outbox's event_type).",
        ),
        header(
            "ae-aggregate-id",
            true,
            json!({"type": "string", "pattern": "^-?[0-9]+$"}),
            &format!(
                "The id of the {} the event is about (the outbox's aggregate_id).",
                kind.aggregate_type
            ),
        ),
        header(
            "ae-snapshot-version",
            true,
            json!({"type": "string", "pattern": "^[0-9]+$"}),
            "1 for an aggregate's first event, then +1 with each event of it: events of one \
             aggregate arrive in this order.",
        ),
        header(
            "ae-test",
            false,
            json!({"type": "string", "enum": ["true"]}),
            "true on test events sent by ae_events.send_test_event (the key's example payload, \
             sent to one endpoint only); absent on real events.",
        ),
    ]
}

/// The answers a receiver may give and what the relay does with each (docs/webhooks.md,
/// "Outcomes and retries").
fn responses() -> Value {
    let retry_after = json!({
        "Retry-After": {
            "description": "Seconds, or an HTTP date: the next attempt is not before it (capped by the endpoint's longest retry delay).",
            "schema": {"type": "string"}
        }
    });
    json!({
        "2XX": {
            "description": "Delivered: answer 2xx once the event is stored. The body is not read."
        },
        "410": {
            "description": "Gone: the event stays pending and the endpoint is disabled (its disabled_reason says so); ae_events.enable_endpoint resumes with that event."
        },
        "429": {
            "description": "Failed, retried: not before Retry-After when given, else per the endpoint's retry schedule.",
            "headers": retry_after.clone()
        },
        "502": {
            "description": "Failed, retried as for 429 (Retry-After is honoured).",
            "headers": retry_after.clone()
        },
        "503": {
            "description": "Failed, retried as for 429 (Retry-After is honoured).",
            "headers": retry_after.clone()
        },
        "504": {
            "description": "Failed, retried as for 429 (Retry-After is honoured).",
            "headers": retry_after
        },
        "default": {
            "description": "Any other status (3xx included: redirects are not followed), a timeout, a refused connection or a TLS error: failed, retried per the endpoint's schedule; after the last attempt the event is dead-lettered for this endpoint and the aggregate's next event goes."
        }
    })
}

/// The OpenAPI 3.1 document: one webhook per key, its body's schema under
/// `components.schemas.<key>`.
pub fn openapi_of(schemas: &[(&EventKind, Value)]) -> Value {
    let mut webhooks = Map::new();
    let mut components = Map::new();
    for (kind, schema) in schemas {
        let mut schema = schema.clone();
        // The document's jsonSchemaDialect says it.
        if let Some(object) = schema.as_object_mut() {
            object.remove("$schema");
        }
        let example = schema
            .get("examples")
            .and_then(|examples| examples.get(0))
            .cloned()
            .unwrap_or(Value::Null);
        components.insert(kind.key.to_owned(), schema);
        webhooks.insert(
            kind.key.to_owned(),
            json!({
                "post": {
                    "operationId": kind.key,
                    "summary": kind.key,
                    "description": kind.description,
                    "parameters": headers(kind),
                    "security": [{"standardWebhooks": []}],
                    "requestBody": {
                        "required": true,
                        "description": "The event's payload: the stored jsonb's text, exactly (verify the signature over these raw bytes).",
                        "content": {
                            "application/json": {
                                "schema": {"$ref": format!("#/components/schemas/{}", kind.key)},
                                "example": example
                            }
                        }
                    },
                    "responses": responses()
                }
            }),
        );
    }
    json!({
        "openapi": "3.1.0",
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "info": {
            "title": "ae_events webhooks",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The webhooks ae-relay sends for ae_events: one signed POST per event, at least once, in order per aggregate. Generated by ae_events.openapi() from the types the payloads are built from; the payload rules in force when it was generated are applied."
        },
        "paths": {},
        "webhooks": webhooks,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "standardWebhooks": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "webhook-signature",
                    "description": "Standard Webhooks v1 (HMAC-SHA256): the signature is `v1,` and the base64 HMAC-SHA256, keyed with the endpoint secret's bytes (the base64 after `whsec_`), of `{webhook-id}.{webhook-timestamp}.{raw body}`. Any Standard Webhooks library verifies it; refuse timestamps more than a few minutes from now."
                }
            }
        }
    })
}

/// Rules from the SQL wrappers' arrays (the table's rows: path, action).
fn rules_of(paths: Vec<Option<String>>, actions: Vec<Option<String>>) -> Vec<Rule> {
    paths
        .into_iter()
        .zip(actions)
        .filter_map(|(path, action)| Some((path?, action?)))
        .collect()
}

/// The example with the rules applied by the same code that applies them to events.
fn ruled_example(kind: &EventKind, rules: &[Rule]) -> Value {
    let example = match kind.example() {
        Ok(example) => example,
        Err(error) => raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, error, None),
    };
    if rules.is_empty() || !kind.ruled {
        return example;
    }
    let compiled = Rules::from_pairs(rules.iter().map(|(p, a)| (p.as_str(), a.as_str())))
        .unwrap_or_else(|error| raise(PgSqlErrorCode::ERRCODE_DATA_EXCEPTION, error, None));
    // The example as PostgreSQL stores it (jsonb_in), its root container's bytes.
    let Some(datum) = pgrx::JsonB(example).into_datum() else {
        raise(
            PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
            format!("the example of {} is no jsonb", kind.key),
            None,
        );
    };
    // SAFETY: a non-null jsonb datum made just above.
    let encoded = unsafe { varlena_bytes(datum, false) };
    let ruled = compiled.apply(encoded).unwrap_or_else(|error| {
        raise(
            PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
            format!("the example of {}: {error}", kind.key),
            None,
        )
    });
    let text = StoredJsonb::from_container(&ruled).to_text();
    serde_json::from_str(&text).unwrap_or_else(|error| {
        raise(
            PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
            format!("the example of {}: {error}", kind.key),
            None,
        )
    })
}

/// `ae_events.event_schema(key)` (sql/src/catalog.sql) reads the rules in force and calls this.
#[pg_extern(immutable, parallel_safe)]
fn _event_schema(
    subscription_key: &str,
    rule_paths: Vec<Option<String>>,
    rule_actions: Vec<Option<String>>,
) -> pgrx::JsonB {
    let Some(kind) = event_kind(subscription_key) else {
        crate::errors::raise_with_hint(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("no event has the subscription key \"{subscription_key}\""),
            format!("The subscription keys are: {}.", known_keys()),
        );
    };
    let rules = rules_of(rule_paths, rule_actions);
    let example = ruled_example(kind, &rules);
    pgrx::JsonB(event_schema_of(kind, &rules, example))
}

/// `ae_events.openapi()` (sql/src/catalog.sql) reads the rules in force and calls this.
#[pg_extern(immutable, parallel_safe)]
fn _openapi(rule_paths: Vec<Option<String>>, rule_actions: Vec<Option<String>>) -> pgrx::JsonB {
    let rules = rules_of(rule_paths, rule_actions);
    let schemas: Vec<(&EventKind, Value)> = EVENTS
        .iter()
        .map(|kind| {
            let example = ruled_example(kind, &rules);
            (kind, event_schema_of(kind, &rules, example))
        })
        .collect();
    pgrx::JsonB(openapi_of(&schemas))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payload::*;
    use std::collections::BTreeSet;
    use std::rc::Rc;

    /// A payload with every optional part present (so that every field serializes), one
    /// attribute. The struct literals name every field: a new field must be added here too.
    fn full_payload() -> TestInstance {
        let number = || NumericValue::Special("NaN");
        let at = UtcTimestamp(0);
        let jsonb = || JsonbValue(Vec::new());
        TestInstance {
            id: 1,
            external_id: Some("x".into()),
            old_id: Some(1),
            score: Some(number()),
            instance_status: "in_progress".into(),
            candidate_id: 1,
            catalog_assessment_id: 1,
            measurement_id: Some(1),
            session_instance_id: Some(1),
            workflow_candidate_step_id: Some(1),
            created_at: at,
            created_by: 1,
            updated_at: at,
            updated_by: 1,
            candidate: Some(Rc::new(Candidate {
                id: 1,
                external_id: Some("x".into()),
                user_id: 1,
                email: "e".into(),
                first_name: Some("f".into()),
                last_name: Some("l".into()),
                middle_name: Some("m".into()),
                phone_number: Some("p".into()),
                country: Some("c".into()),
                is_tnc_accepted: true,
                is_recording_consent_accepted: Some(true),
                resume_file_id: Some(1),
                profile_pic_file_id: Some(1),
                cf: jsonb(),
            })),
            catalog_assessment: Some(Rc::new(Shared::new(CatalogAssessment {
                id: 1,
                assessment: Some(Assessment {
                    id: 1,
                    name: "a".into(),
                    level: "l".into(),
                    status: "s".into(),
                    created_at: at,
                    updated_at: at,
                }),
                catalog: Some(Catalog {
                    id: 1,
                    name: "c".into(),
                    description: Some("d".into()),
                }),
            }))),
            measurement: Some(Rc::new(Measurement {
                id: 1,
                status: "s".into(),
                time_taken: Some("00:00:00".into()),
                report_url: Some("u".into()),
                report_file_id: Some(1),
                measured_at: at,
                measured_by: Some(1),
                form_instance_id: Some(1),
                measurement_attributes: vec![MeasurementAttribute {
                    id: 1,
                    numerical_score: Some(number()),
                    percentile_score: Some(number()),
                    remarks: Some("r".into()),
                    description: Some("d".into()),
                    additional_attributes: Some(jsonb()),
                    created_at: at,
                    created_by: 1,
                    updated_at: at,
                    updated_by: 1,
                    section_configuration_attribute: Some(Rc::new(Shared::new(
                        SectionConfigurationAttribute {
                            id: 1,
                            kind: "numerical".into(),
                            recommended_value: Some(number()),
                            recommended_ordinal_id: Some(1),
                            attribute: Some(Attribute {
                                id: 1,
                                name: "n".into(),
                                attribute_type: "skill".into(),
                                is_required: true,
                                min_value: number(),
                                max_value: number(),
                                skill: Some(Skill {
                                    id: 1,
                                    name: "s".into(),
                                }),
                            }),
                        },
                    ))),
                    ordinal: Some(Rc::new(Shared::new(Ordinal {
                        id: 1,
                        label: "l".into(),
                        value: "v".into(),
                        sort_key: 1,
                        min_value: Some(number()),
                        max_value: Some(number()),
                    }))),
                }],
            })),
        }
    }

    const FREE_FORM: &[&str] = &[
        "candidate.cf",
        "measurement.measurement_attributes.*.additional_attributes",
    ];

    fn join(prefix: &str, key: &str) -> String {
        if prefix.is_empty() {
            key.to_owned()
        } else {
            format!("{prefix}.{key}")
        }
    }

    /// Every key path of a JSON value, arrays' elements as `*`, not below free-form jsonb.
    fn value_paths(value: &Value, prefix: &str, paths: &mut BTreeSet<String>) {
        if FREE_FORM.contains(&prefix) {
            return;
        }
        match value {
            Value::Object(fields) => {
                for (key, child) in fields {
                    paths.insert(join(prefix, key));
                    value_paths(child, &join(prefix, key), paths);
                }
            }
            Value::Array(elements) => {
                for element in elements.iter().take(1) {
                    paths.insert(join(prefix, "*"));
                    value_paths(element, &join(prefix, "*"), paths);
                }
            }
            _ => {}
        }
    }

    /// Every property path of a schema, `items` as `*`; also checks that each object requires
    /// all its properties and allows no others.
    fn schema_paths(schema: &Value, prefix: &str, paths: &mut BTreeSet<String>) {
        if let Some(Value::Object(properties)) = schema.get("properties") {
            let required: BTreeSet<&str> = schema["required"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap())
                .collect();
            assert_eq!(
                required,
                properties.keys().map(String::as_str).collect(),
                "{prefix}"
            );
            assert_eq!(
                schema["additionalProperties"],
                Value::Bool(false),
                "{prefix}"
            );
            for (key, child) in properties {
                paths.insert(join(prefix, key));
                schema_paths(child, &join(prefix, key), paths);
            }
        }
        if let Some(items) = schema.get("items") {
            paths.insert(join(prefix, "*"));
            schema_paths(items, &join(prefix, "*"), paths);
        }
    }

    fn seed() -> Value {
        serde_json::from_str(SEED_EXAMPLE).unwrap()
    }

    #[test]
    fn the_schema_has_exactly_the_serialized_fields() {
        let serialized = serde_json::to_value(full_payload()).unwrap();
        let mut from_value = BTreeSet::new();
        value_paths(&serialized, "", &mut from_value);
        for kind in EVENTS.iter().filter(|kind| kind.ruled) {
            let schema = event_schema_of(kind, &[], seed());
            let mut from_schema = BTreeSet::new();
            schema_paths(&schema, "", &mut from_schema);
            assert!(from_schema.len() > 70, "{from_schema:?}");
            assert_eq!(from_schema, from_value, "{}", kind.key);
            // The seed's example has no other fields (its ordinal is null).
            let mut from_seed = BTreeSet::new();
            value_paths(&seed(), "", &mut from_seed);
            assert!(from_seed.is_subset(&from_value));
            assert_eq!(from_value.difference(&from_seed).count(), 6);
        }
    }

    /// The operational events' schemas: exactly the serialized fields of their types, and their
    /// examples validate (the SQL's payloads are validated by tests/alerts.rs).
    #[test]
    fn operational_schemas_have_exactly_the_serialized_fields() {
        use crate::alerts::*;
        let state = || EndpointState {
            endpoint: "e".into(),
            endpoint_id: 1,
            url: "u".into(),
            at: UtcTimestamp(0),
            reason: "r".into(),
            last_status: Some(500),
            last_error: Some("x".into()),
            failing_since: Some(UtcTimestamp(0)),
            failing_seconds: Some(1.5),
            failed_attempts: 3,
            backlog: 1,
        };
        let values = [
            serde_json::to_value(EndpointFailing { state: state() }).unwrap(),
            serde_json::to_value(EndpointRecovered { state: state() }).unwrap(),
            serde_json::to_value(EndpointDisabled {
                state: state(),
                cause: DisableCause::DisableAfter,
            })
            .unwrap(),
            serde_json::to_value(DeliveryDeadLettered {
                state: state(),
                event_id: "01938f52-7a3e-7c41-9d2a-5b8e0f6c1d24".into(),
                subscription_key: "ae.test_instance.created".into(),
                instance_id: 789,
                attempts: 8,
            })
            .unwrap(),
        ];
        let operational: Vec<&EventKind> = EVENTS.iter().filter(|kind| !kind.ruled).collect();
        assert_eq!(operational.len(), 4);
        for (kind, value) in operational.into_iter().zip(values) {
            let schema = event_schema_of(kind, &[], kind.example().unwrap());
            let mut from_schema = BTreeSet::new();
            schema_paths(&schema, "", &mut from_schema);
            let mut from_value = BTreeSet::new();
            value_paths(&value, "", &mut from_value);
            assert_eq!(from_schema, from_value, "{}", kind.key);
            let validator = jsonschema::draft202012::new(&schema).unwrap();
            validator.validate(&value).unwrap();
            validator.validate(&kind.example().unwrap()).unwrap();
            assert_eq!(kind.event_type, kind.key.replace('.', "_"));
            // Rules do not touch them.
            let rules = vec![("endpoint".to_owned(), "remove".to_owned())];
            assert_eq!(
                event_schema_of(kind, &rules, kind.example().unwrap()),
                schema
            );
        }
    }

    #[test]
    fn types_and_nullability_follow_the_rust_types() {
        let schema = event_schema_of(&EVENTS[0], &[], seed());
        let at = |path: &str| -> Value {
            let mut node = &schema;
            for segment in path.split('.') {
                node = if segment == "*" {
                    &node["items"]
                } else {
                    &node["properties"][segment]
                };
            }
            node.clone()
        };
        assert_eq!(at("id")["type"], json!("integer"));
        assert_eq!(at("external_id")["type"], json!(["string", "null"]));
        assert_eq!(at("score")["type"], json!(["number", "string", "null"]));
        assert_eq!(at("created_at")["type"], json!("string"));
        assert_eq!(at("created_at")["format"], json!("date-time"));
        assert_eq!(at("candidate")["type"], json!(["object", "null"]));
        // Not null in the source; null once the candidate is erased (allow_erasure).
        assert_eq!(
            at("candidate.is_tnc_accepted")["type"],
            json!(["boolean", "null"])
        );
        assert_eq!(at("candidate.cf").get("type"), None);
        assert_eq!(
            at("measurement.measurement_attributes")["type"],
            json!("array")
        );
        assert_eq!(
            at("measurement.measurement_attributes.*.section_configuration_attribute.type")["type"],
            json!("string")
        );
        assert_eq!(
            at("measurement.measurement_attributes.*.ordinal")["type"],
            json!(["object", "null"])
        );
        assert_eq!(schema["examples"][0], seed());
        let validator = jsonschema::draft202012::new(&schema).unwrap();
        validator.validate(&seed()).unwrap();
    }

    #[test]
    fn rules_change_the_schema() {
        let rules: Vec<Rule> = [
            ("candidate.email", "remove"),
            ("candidate.phone_number", "sha256"),
            ("candidate.user_id", "sha256"),
            ("measurement.measurement_attributes.*.remarks", "null"),
            ("measurement.measurement_attributes.*.id", "null"),
            ("candidate.cf.ssn", "remove"),
            ("catalog_assessment", "sha256"),
            ("catalog_assessment.id", "null"),
        ]
        .iter()
        .map(|(p, a)| (p.to_string(), a.to_string()))
        .collect();
        let schema = event_schema_of(&EVENTS[0], &rules, seed());
        let candidate = &schema["properties"]["candidate"];
        let required = candidate["required"].as_array().unwrap();
        assert!(!required.contains(&json!("email")));
        assert!(required.contains(&json!("first_name")));
        assert!(candidate["properties"].get("email").is_some());
        assert_eq!(
            candidate["properties"]["phone_number"]["type"],
            json!(["string", "null"])
        );
        // Hashed, and null once the candidate is erased.
        assert_eq!(
            candidate["properties"]["user_id"]["type"],
            json!(["string", "null"])
        );
        let attribute = &schema["properties"]["measurement"]["properties"]
            ["measurement_attributes"]["items"]["properties"];
        assert_eq!(attribute["remarks"]["type"], json!(["string", "null"]));
        assert_eq!(attribute["id"]["type"], json!(["integer", "null"]));
        // The object rule wins over the one below it.
        assert_eq!(
            schema["properties"]["catalog_assessment"]["type"],
            json!(["string", "null"])
        );
    }

    #[test]
    fn every_key_is_in_the_openapi_document() {
        let schemas: Vec<(&EventKind, Value)> = EVENTS
            .iter()
            .map(|kind| (kind, event_schema_of(kind, &[], seed())))
            .collect();
        let document = openapi_of(&schemas);
        for kind in EVENTS {
            let post = &document["webhooks"][kind.key]["post"];
            assert_eq!(
                post["requestBody"]["content"]["application/json"]["schema"]["$ref"],
                json!(format!("#/components/schemas/{}", kind.key))
            );
            let names: Vec<&str> = post["parameters"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["name"].as_str().unwrap())
                .collect();
            for name in [
                "webhook-id",
                "webhook-timestamp",
                "webhook-signature",
                "ae-test",
            ] {
                assert!(names.contains(&name), "{name}");
            }
        }
    }
}
