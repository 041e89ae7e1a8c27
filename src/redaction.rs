//! Payload visibility rules (`ae_events.payload_rules`): a path into the payload and what to do
//! with the value there: `remove` it, set it to `null`, or replace it by the hex SHA-256 of its
//! text (`sha256`). They are applied to the encoded payload before it is stored, digested or
//! notified, so neither the outbox nor a webhook carries the raw value. `*` stands for every
//! element of `measurement.measurement_attributes`; below `candidate.cf` and an attribute's
//! `additional_attributes` (free-form jsonb) any key path is allowed.
//!
//! The rules are applied in one pass over the encoded payload (`Rules::apply`): a tree of the
//! rules' paths is walked beside the jsonb, subtrees no rule reaches are copied as they are, so
//! the cost is linear in the payload's size however many attributes a `*` rule reaches. A rule
//! applies where its path exists; where the data has another shape (a key path into an array or
//! a scalar, say) it is skipped, so a rule never fails a write because of what a row holds.
//! "The value's text" for `sha256` is what `payload #>> path` shows (strings unquoted,
//! containers as jsonb prints them); a JSON null stays null. With no rules the payload is not
//! touched.

use crate::config_cache::{self, ConfigTable};
use crate::errors::EventError;
use crate::jsonb::{container_text, read_container, Child, EncodeError, Encoder, Kind};
use crate::rows::{with_kept_plan, Connection, KeptPlan};
use pgrx::prelude::*;
use std::cell::RefCell;
use std::rc::Rc;

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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    Remove,
    Null,
    Sha256,
}

/// The rules as a tree of path segments: a node's action applies to the value at its path
/// (a rule's action wins over rules below it); `*` stands for every element of an array.
#[derive(Debug, Default)]
struct Node {
    action: Option<Action>,
    children: Vec<(String, Node)>,
}

/// The rules in force (read once per backend and again after a change: `Rules::in_force`).
#[derive(Debug, Default)]
pub struct Rules {
    root: Node,
}

impl Node {
    fn insert(&mut self, segments: &[&str], action: Action) {
        let Some((first, rest)) = segments.split_first() else {
            self.action = Some(action);
            return;
        };
        let position = match self.children.iter().position(|(key, _)| key == first) {
            Some(position) => position,
            None => {
                self.children.push(((*first).to_owned(), Node::default()));
                self.children.len() - 1
            }
        };
        self.children[position].1.insert(rest, action);
    }

    /// The node for an object's member `key`.
    fn member(&self, key: &[u8]) -> Option<&Node> {
        self.children
            .iter()
            .find(|(segment, _)| segment.as_bytes() == key)
            .map(|(_, node)| node)
    }

    /// The node for element `index` of an array of `len`: `*`, or an integer segment (negative
    /// counts from the end, as `jsonb_set` reads it).
    fn element(&self, index: usize, len: usize) -> Option<&Node> {
        self.children.iter().find_map(|(segment, node)| {
            let matches = segment == "*"
                || segment.parse::<i64>().is_ok_and(|wanted| {
                    let wanted = if wanted < 0 {
                        len as i64 + wanted
                    } else {
                        wanted
                    };
                    wanted == index as i64
                });
            matches.then_some(node)
        })
    }
}

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
            format!("the payload rule path \"{path}\" names nothing in the payload"),
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
            format!("the payload rule action \"{action}\" is not remove, null or sha256"),
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
    static CACHED: RefCell<Option<config_cache::Entry<Rules>>> = const { RefCell::new(None) };
}

impl Rules {
    /// The rules in force: read once per backend and again after any change to them
    /// (`config_cache.rs`), in an SPI connection of their own, as the current role (the pass
    /// runs as the extension's owner).
    pub fn in_force() -> Result<Rc<Rules>, EventError> {
        config_cache::get_or_read(&CACHED, ConfigTable::PayloadRules, || {
            Spi::connect(|client| Rules::load(Connection::of(client)))
        })
    }

    fn load(connection: Connection<'_>) -> Result<Rules, EventError> {
        crate::privileges::ensure_current_sql_objects()?;
        let mut rules = Rules::default();
        with_kept_plan(connection, &QUERY, RULES_QUERY, &[], |query| {
            query.run(connection, &mut [])?.for_each(|row| {
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
                rules.add(&path, action);
                Ok(())
            })
        })
        .map_err(|error| error.context("cannot read ae_events.payload_rules"))?;
        Ok(rules)
    }

    /// Rules given as (path, action) pairs, as the table holds them (the catalog applies the
    /// rules in force to its examples: `catalog.rs`).
    pub fn from_pairs<'a>(
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Rules, String> {
        let mut rules = Rules::default();
        for (path, action) in pairs {
            let action = match action {
                "remove" => Action::Remove,
                "null" => Action::Null,
                "sha256" => Action::Sha256,
                other => return Err(format!("the payload rule for {path}: action {other}")),
            };
            rules.add(path, action);
        }
        Ok(rules)
    }

    fn add(&mut self, path: &str, action: Action) {
        let segments: Vec<&str> = path.split('.').collect();
        self.root.insert(&segments, action);
    }

    pub fn is_empty(&self) -> bool {
        self.root.children.is_empty() && self.root.action.is_none()
    }

    /// Apply the rules to an encoded payload (a jsonb root container); returns the new
    /// container. One pass: linear in the payload's size.
    pub fn apply(&self, container: Vec<u8>) -> Result<Vec<u8>, EventError> {
        if self.is_empty() {
            return Ok(container);
        }
        let mut encoder = Encoder::default();
        let mut path = Vec::new();
        let root = rewrite(&mut encoder, &container, &self.root, &mut path).map_err(|error| {
            EventError::BadValue {
                what: format!("the payload rule at {}: {error}", path.join(".")),
            }
        })?;
        Ok(encoder.root(root).to_vec())
    }
}

/// Copy `container` into `encoder` with the rules below `node` applied; `path` names where the
/// walk is (for an error message).
fn rewrite(
    encoder: &mut Encoder,
    container: &[u8],
    node: &Node,
    path: &mut Vec<String>,
) -> Result<crate::jsonb::Value, EncodeError> {
    let (is_object, children) = read_container(container)?;
    let mark = encoder.begin_container();
    let len = children.len();
    for (index, child) in children.iter().enumerate() {
        let rule = if is_object {
            node.member(child.key)
        } else {
            node.element(index, len)
        };
        let Some(rule) = rule else {
            encoder.add(child.key, child.kind, child.bytes);
            continue;
        };
        path.push(if is_object {
            String::from_utf8_lossy(child.key).into_owned()
        } else {
            index.to_string()
        });
        match rule.action {
            Some(Action::Remove) => {}
            Some(Action::Null) => encoder.add(child.key, Kind::Null, &[]),
            Some(Action::Sha256) => match text_of(child)? {
                Some(text) => {
                    let hex = sha256_hex(text.as_bytes())?;
                    encoder.add(child.key, Kind::String, hex.as_bytes());
                }
                None => encoder.add(child.key, child.kind, child.bytes),
            },
            None if child.kind == Kind::Container && !rule.children.is_empty() => {
                let value = rewrite(encoder, child.bytes, rule, path)?;
                encoder.add_value(child.key, value);
            }
            // A path into a scalar: this data has another shape; nothing to do.
            None => encoder.add(child.key, child.kind, child.bytes),
        }
        path.pop();
    }
    encoder.end_container(mark, is_object)
}

/// The hex SHA-256 of bytes (PostgreSQL's implementation).
fn sha256_hex(bytes: &[u8]) -> Result<String, EncodeError> {
    let digest =
        crate::digest::digest(bytes).map_err(|error| EncodeError::new(error.to_string()))?;
    Ok(digest.iter().map(|byte| format!("{byte:02x}")).collect())
}

/// The text of a stored value as `#>>` shows it (None for a JSON null); numerics and
/// containers are printed by PostgreSQL (`numeric_out`, `JsonbToCString`).
fn text_of(child: &Child<'_>) -> Result<Option<String>, EncodeError> {
    Ok(Some(match child.kind {
        Kind::Null => return Ok(None),
        Kind::String => String::from_utf8_lossy(child.bytes).into_owned(),
        Kind::True => "true".to_owned(),
        Kind::False => "false".to_owned(),
        Kind::Numeric => {
            let numeric = aligned_copy(child.bytes);
            // SAFETY: a numeric varlena (4-byte header) in a 4-aligned buffer that outlives the
            // call; numeric_out returns a palloc'd C string, freed once copied.
            unsafe {
                let out = pgrx::fcinfo::direct_function_call_as_datum(
                    pg_sys::numeric_out,
                    &[Some(pg_sys::Datum::from(numeric.as_ptr()))],
                )
                .ok_or_else(|| EncodeError::new("numeric_out returned null"))?;
                let text = out.cast_mut_ptr::<std::ffi::c_char>();
                let owned = std::ffi::CStr::from_ptr(text)
                    .to_string_lossy()
                    .into_owned();
                pg_sys::pfree(text.cast());
                owned
            }
        }
        Kind::Container => {
            let container = aligned_copy(child.bytes);
            // SAFETY: a complete jsonb container in a 4-aligned buffer that outlives the call.
            unsafe {
                container_text(
                    container.as_ptr().cast_mut().cast(),
                    child.bytes.len() as i32,
                )
            }
        }
    }))
}

/// `bytes` in a 4-byte aligned buffer (jsonb's numerics and containers are read in place).
fn aligned_copy(bytes: &[u8]) -> Vec<u32> {
    let mut words = vec![0u32; bytes.len().div_ceil(4)];
    // SAFETY: the buffer holds at least bytes.len() bytes.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), words.as_mut_ptr().cast(), bytes.len());
    }
    words
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

    /// Every field path of the contract's type showcase (`ae.test_instance.created.txt`, the
    /// source of truth for the payload), arrays as `*`.
    fn contract_paths() -> Vec<String> {
        let page = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../shared/contract/ae.test_instance.created.txt");
        let text = std::fs::read_to_string(&page)
            .unwrap_or_else(|e| panic!("the contract page {}: {e}", page.display()));
        let showcase = &text[text.find("\n{\n  id: number;").expect("the type showcase")..];
        let mut paths: Vec<String> = Vec::new();
        // The open objects: (field name, index of their first child path).
        let mut open: Vec<(String, usize)> = Vec::new();
        for line in showcase.lines().skip(2) {
            let line = line.trim();
            if line.starts_with('}') {
                let Some((name, first)) = open.pop() else {
                    break;
                };
                if line.starts_with("}[]") {
                    // An array of objects: its children are under `*`.
                    let prefix: String = open
                        .iter()
                        .map(|(n, _)| format!("{n}."))
                        .chain([format!("{name}.")])
                        .collect();
                    for path in &mut paths[first..] {
                        *path = format!("{prefix}*.{}", &path[prefix.len()..]);
                    }
                    paths.insert(first, format!("{prefix}*"));
                }
                continue;
            }
            let Some((name, rest)) = line.split_once(':') else {
                continue;
            };
            let prefix: String = open.iter().map(|(n, _)| format!("{n}.")).collect();
            paths.push(format!("{prefix}{name}"));
            if rest.trim() == "{" {
                open.push((name.to_owned(), paths.len()));
            }
        }
        paths
    }

    #[test]
    fn the_rule_paths_are_exactly_the_contracts_fields() {
        let contract: std::collections::BTreeSet<String> = contract_paths().into_iter().collect();
        let known: std::collections::BTreeSet<String> =
            PAYLOAD_PATHS.iter().map(|p| p.to_string()).collect();
        assert!(contract.len() > 70, "{contract:?}");
        assert_eq!(
            contract.difference(&known).collect::<Vec<_>>(),
            Vec::<&String>::new(),
            "fields of the contract a rule cannot name"
        );
        assert_eq!(
            known.difference(&contract).collect::<Vec<_>>(),
            Vec::<&String>::new(),
            "rule paths the contract does not have"
        );
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
    fn a_star_matches_every_element_and_integers_match_their_index() {
        let mut rules = Rules::default();
        rules.add("measurement.measurement_attributes.*.remarks", Action::Null);
        rules.add("candidate.cf.tags.-1", Action::Remove);
        rules.add("candidate.cf.ssn", Action::Remove);
        let attributes = rules
            .root
            .member(b"measurement")
            .and_then(|node| node.member(b"measurement_attributes"))
            .unwrap();
        for index in [0, 1, 499] {
            let element = attributes.element(index, 500).unwrap();
            assert_eq!(
                element.member(b"remarks").unwrap().action,
                Some(Action::Null)
            );
        }
        let cf = rules
            .root
            .member(b"candidate")
            .and_then(|n| n.member(b"cf"))
            .unwrap();
        let tags = cf.member(b"tags").unwrap();
        assert!(tags.element(2, 3).is_some());
        assert!(tags.element(1, 3).is_none());
        // "ssn" is no index: where cf is an array, the rule does not apply (no error).
        assert!(cf.element(0, 1).is_none());
    }
}
