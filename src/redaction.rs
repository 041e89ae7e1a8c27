//! Payload visibility rules (`ae_events.payload_rules`): a path into the payload and what to do
//! with the value there: `remove` it, set it to `null`, or replace it by the hex SHA-256 of its
//! text (`sha256`). They are applied to the encoded payload before it is stored, digested or
//! notified, so neither the outbox nor a webhook carries the raw value. `*` stands for every
//! element of `measurement.measurement_attributes`; below `candidate.cf` and an attribute's
//! `additional_attributes` (free-form jsonb) any key path is allowed.
//!
//! The rules are applied with PostgreSQL's own jsonb functions (`jsonb_delete_path`,
//! `jsonb_set`, `jsonb_extract_path_text`, `sha256`), so "the value's text" is exactly what
//! `payload #>> path` shows; with no rules the payload is not touched.

use crate::errors::EventError;
use crate::rows::{varlena_bytes, with_kept_plan, KeptPlan};
use pgrx::prelude::*;
use std::cell::RefCell;

/// Every field path of the payload (the seed's type showcase), `*` for an attribute.
const PAYLOAD_PATHS: &[&str] = &[
    "candidate",
    "candidate.cf",
    "candidate.country",
    "candidate.email",
    "candidate.external_id",
    "candidate.first_name",
    "candidate.id",
    "candidate.is_recording_consent_accepted",
    "candidate.is_tnc_accepted",
    "candidate.last_name",
    "candidate.middle_name",
    "candidate.phone_number",
    "candidate.profile_pic_file_id",
    "candidate.resume_file_id",
    "candidate.user_id",
    "candidate_id",
    "catalog_assessment",
    "catalog_assessment.assessment",
    "catalog_assessment.assessment.created_at",
    "catalog_assessment.assessment.id",
    "catalog_assessment.assessment.level",
    "catalog_assessment.assessment.name",
    "catalog_assessment.assessment.status",
    "catalog_assessment.assessment.updated_at",
    "catalog_assessment.catalog",
    "catalog_assessment.catalog.description",
    "catalog_assessment.catalog.id",
    "catalog_assessment.catalog.name",
    "catalog_assessment.id",
    "catalog_assessment_id",
    "created_at",
    "created_by",
    "external_id",
    "id",
    "instance_status",
    "measurement",
    "measurement.form_instance_id",
    "measurement.id",
    "measurement.measured_at",
    "measurement.measured_by",
    "measurement.measurement_attributes",
    "measurement.measurement_attributes.*",
    "measurement.measurement_attributes.*.additional_attributes",
    "measurement.measurement_attributes.*.created_at",
    "measurement.measurement_attributes.*.created_by",
    "measurement.measurement_attributes.*.description",
    "measurement.measurement_attributes.*.id",
    "measurement.measurement_attributes.*.numerical_score",
    "measurement.measurement_attributes.*.ordinal",
    "measurement.measurement_attributes.*.ordinal.id",
    "measurement.measurement_attributes.*.ordinal.label",
    "measurement.measurement_attributes.*.ordinal.max_value",
    "measurement.measurement_attributes.*.ordinal.min_value",
    "measurement.measurement_attributes.*.ordinal.sort_key",
    "measurement.measurement_attributes.*.ordinal.value",
    "measurement.measurement_attributes.*.percentile_score",
    "measurement.measurement_attributes.*.remarks",
    "measurement.measurement_attributes.*.section_configuration_attribute",
    "measurement.measurement_attributes.*.section_configuration_attribute.attribute",
    "measurement.measurement_attributes.*.section_configuration_attribute.attribute.attribute_type",
    "measurement.measurement_attributes.*.section_configuration_attribute.attribute.id",
    "measurement.measurement_attributes.*.section_configuration_attribute.attribute.is_required",
    "measurement.measurement_attributes.*.section_configuration_attribute.attribute.max_value",
    "measurement.measurement_attributes.*.section_configuration_attribute.attribute.min_value",
    "measurement.measurement_attributes.*.section_configuration_attribute.attribute.name",
    "measurement.measurement_attributes.*.section_configuration_attribute.attribute.skill",
    "measurement.measurement_attributes.*.section_configuration_attribute.attribute.skill.id",
    "measurement.measurement_attributes.*.section_configuration_attribute.attribute.skill.name",
    "measurement.measurement_attributes.*.section_configuration_attribute.id",
    "measurement.measurement_attributes.*.section_configuration_attribute.recommended_ordinal_id",
    "measurement.measurement_attributes.*.section_configuration_attribute.recommended_value",
    "measurement.measurement_attributes.*.section_configuration_attribute.type",
    "measurement.measurement_attributes.*.updated_at",
    "measurement.measurement_attributes.*.updated_by",
    "measurement.report_file_id",
    "measurement.report_url",
    "measurement.status",
    "measurement.time_taken",
    "measurement_id",
    "old_id",
    "score",
    "session_instance_id",
    "updated_at",
    "updated_by",
    "workflow_candidate_step_id",
];

/// Stored jsonb whose inner keys vary: any key path below these is accepted.
const FREE_FORM: &[&str] = &[
    "candidate.cf",
    "measurement.measurement_attributes.*.additional_attributes",
];

/// The segments before the one `*` may stand in.
const ATTRIBUTES: [&str; 2] = ["measurement", "measurement_attributes"];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    Remove,
    Null,
    Sha256,
}

#[derive(Debug)]
struct Rule {
    segments: Vec<String>,
    action: Action,
}

/// The rules in force for one pass (read once per pass, in path order).
#[derive(Debug, Default)]
pub struct Rules(Vec<Rule>);

/// Whether `path` names a field of the payload (or a key path inside its free-form jsonb).
pub fn path_is_valid(path: &str) -> bool {
    if path.split('.').any(str::is_empty) {
        return false;
    }
    PAYLOAD_PATHS.contains(&path)
        || FREE_FORM.iter().any(|prefix| {
            path.strip_prefix(prefix)
                .is_some_and(|rest| rest.starts_with('.'))
        })
}

/// The CHECK of `ae_events.payload_rules`: true, or an error that says what is wrong, so that a
/// misspelt path is refused instead of silently redacting nothing.
#[pg_extern(immutable, strict, parallel_safe)]
fn check_payload_rule(path: &str, action: &str) -> bool {
    if !path_is_valid(path) {
        crate::errors::raise(
            PgSqlErrorCode::ERRCODE_CHECK_VIOLATION,
            format!("ae_events: the payload rule path \"{path}\" names nothing in the payload"),
            Some(
                "A path is field names joined by '.', with '*' for every element of \
                 measurement.measurement_attributes, e.g. candidate.email, \
                 measurement.measurement_attributes.*.remarks, candidate.cf.<key>."
                    .to_owned(),
            ),
        );
    }
    if !matches!(action, "remove" | "null" | "sha256") {
        crate::errors::raise(
            PgSqlErrorCode::ERRCODE_CHECK_VIOLATION,
            format!(
                "ae_events: the payload rule action \"{action}\" is not remove, null or sha256"
            ),
            None,
        );
    }
    true
}

const RULES_QUERY: &str = "
SELECT r.path::pg_catalog.text, r.action::pg_catalog.text
  FROM ae_events.payload_rules AS r
 ORDER BY r.path";

thread_local! {
    static QUERY: RefCell<Option<KeptPlan>> = const { RefCell::new(None) };
}

impl Rules {
    /// Read the rules (inside an SPI connection, as the extension's owner).
    pub fn load() -> Result<Rules, EventError> {
        crate::outbox::ensure_current_sql_objects()?;
        let mut rules = Vec::new();
        with_kept_plan(&QUERY, RULES_QUERY, |query| {
            query.run(&mut [])?.for_each(|row| {
                let path: Option<String> = row.get(1).map_err(EventError::internal)?;
                let action: Option<String> = row.get(2).map_err(EventError::internal)?;
                let (Some(path), Some(action)) = (path, action) else {
                    return Ok(());
                };
                let action = match action.as_str() {
                    "remove" => Action::Remove,
                    "null" => Action::Null,
                    "sha256" => Action::Sha256,
                    other => {
                        return Err(EventError::BadValue {
                            what: format!("the payload rule for {path}: action {other}"),
                        })
                    }
                };
                rules.push(Rule {
                    segments: path.split('.').map(str::to_owned).collect(),
                    action,
                });
                Ok(())
            })
        })
        .map_err(|error| error.context("cannot read ae_events.payload_rules"))?;
        Ok(Rules(rules))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Apply the rules to an encoded payload (a jsonb root container) of an instance with
    /// `attributes` measurement attributes; returns the new container.
    pub fn apply(&self, container: Vec<u8>, attributes: usize) -> Result<Vec<u8>, EventError> {
        if self.is_empty() {
            return Ok(container);
        }
        let mut payload = crate::outbox::StoredJsonb::from_container(&container).datum();
        for rule in &self.0 {
            for path in rule.paths(attributes) {
                payload = apply_one(payload, &path, rule.action)?;
            }
        }
        // SAFETY: a complete jsonb datum.
        Ok(unsafe { varlena_bytes(payload, false) })
    }
}

impl Rule {
    /// The concrete paths: `*` expanded to every attribute index, last first (so that removing
    /// one element does not shift the ones still to visit).
    fn paths(&self, attributes: usize) -> Vec<Vec<String>> {
        let each =
            self.segments.len() > 2 && self.segments[..2] == ATTRIBUTES && self.segments[2] == "*";
        if !each {
            return vec![self.segments.clone()];
        }
        (0..attributes)
            .rev()
            .map(|index| {
                let mut path = self.segments.clone();
                path[2] = index.to_string();
                path
            })
            .collect()
    }
}

fn text_array(path: &[String]) -> Result<pg_sys::Datum, EventError> {
    path.to_vec()
        .into_datum()
        .ok_or_else(|| EventError::internal("a null path"))
}

fn call(
    function: unsafe fn(pg_sys::FunctionCallInfo) -> pg_sys::Datum,
    arguments: &[Option<pg_sys::Datum>],
) -> Option<pg_sys::Datum> {
    // SAFETY: each call site passes the arguments the function's SQL signature takes.
    unsafe { pgrx::fcinfo::direct_function_call_as_datum(function, arguments) }
}

fn jsonb_from_text(json: &str) -> Result<pg_sys::Datum, EventError> {
    let text = std::ffi::CString::new(json)
        .map_err(|_| EventError::internal("a JSON literal holds a NUL byte"))?;
    call(
        pg_sys::jsonb_in,
        &[Some(pg_sys::Datum::from(text.as_ptr()))],
    )
    .ok_or_else(|| EventError::internal("jsonb_in returned null"))
}

fn apply_one(
    payload: pg_sys::Datum,
    path: &[String],
    action: Action,
) -> Result<pg_sys::Datum, EventError> {
    let path_datum = text_array(path)?;
    let set = |value: pg_sys::Datum| {
        call(
            pg_sys::jsonb_set,
            &[
                Some(payload),
                Some(path_datum),
                Some(value),
                false.into_datum(),
            ],
        )
    };
    let result = match action {
        Action::Remove => call(
            pg_sys::jsonb_delete_path,
            &[Some(payload), Some(path_datum)],
        ),
        Action::Null => {
            // jsonb_set replaces only what exists (create_missing = false).
            set(jsonb_from_text("null")?)
        }
        Action::Sha256 => {
            match call(
                pg_sys::jsonb_extract_path_text,
                &[Some(payload), Some(path_datum)],
            ) {
                // Missing or JSON null: nothing to hide.
                None => Some(payload),
                Some(text) => {
                    let digest = crate::versions::sha256(text)?;
                    let hex: String = digest.iter().map(|byte| format!("{byte:02x}")).collect();
                    set(jsonb_from_text(&format!("\"{hex}\""))?)
                }
            }
        }
    };
    result.ok_or_else(|| EventError::BadValue {
        what: format!("the payload rule for {}", path.join(".")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every path of the seed's example (the contract's payload), arrays as `*`.
    fn seed_paths() -> Vec<String> {
        let seed: serde_json::Value =
            serde_json::from_str(include_str!("../tests/seed_example_payload.json")).unwrap();
        let mut paths = Vec::new();
        fn walk(value: &serde_json::Value, prefix: &str, paths: &mut Vec<String>) {
            let join = |key: &str| {
                if prefix.is_empty() {
                    key.to_owned()
                } else {
                    format!("{prefix}.{key}")
                }
            };
            match value {
                serde_json::Value::Object(fields) => {
                    for (key, child) in fields {
                        paths.push(join(key));
                        walk(child, &join(key), paths);
                    }
                }
                serde_json::Value::Array(elements) => {
                    for element in elements.iter().take(1) {
                        paths.push(join("*"));
                        walk(element, &join("*"), paths);
                    }
                }
                _ => {}
            }
        }
        walk(&seed, "", &mut paths);
        paths
    }

    #[test]
    fn every_path_of_the_seed_is_valid() {
        let paths = seed_paths();
        assert!(paths.len() > 70);
        for path in paths {
            assert!(path_is_valid(&path), "{path}");
        }
    }

    #[test]
    fn paths_outside_the_payload_are_refused() {
        for (path, valid) in [
            ("candidate.email", true),
            ("measurement.measurement_attributes.*.remarks", true),
            ("measurement.measurement_attributes.*.ordinal.label", true),
            ("candidate.cf.team", true),
            ("candidate.cf.team.lead", true),
            (
                "measurement.measurement_attributes.*.additional_attributes.rubric",
                true,
            ),
            ("candidate.emial", false),
            ("candidate.", false),
            (".candidate", false),
            ("candidate..email", false),
            ("", false),
            ("candidate.cf.", false),
            ("measurement.measurement_attributes.0.remarks", false),
            ("candidate.*", false),
            ("payload", false),
        ] {
            assert_eq!(path_is_valid(path), valid, "{path}");
        }
    }

    #[test]
    fn a_star_expands_to_every_attribute_last_first() {
        let rule = Rule {
            segments: ["measurement", "measurement_attributes", "*", "remarks"]
                .map(str::to_owned)
                .to_vec(),
            action: Action::Null,
        };
        let paths: Vec<String> = rule.paths(3).iter().map(|p| p.join(".")).collect();
        assert_eq!(
            paths,
            [
                "measurement.measurement_attributes.2.remarks",
                "measurement.measurement_attributes.1.remarks",
                "measurement.measurement_attributes.0.remarks"
            ]
        );
        assert!(rule.paths(0).is_empty());
        let plain = Rule {
            segments: ["candidate", "email"].map(str::to_owned).to_vec(),
            action: Action::Sha256,
        };
        assert_eq!(plain.paths(5), vec![plain.segments.clone()]);
    }
}
