//! Bubble-up: the source tables whose rows are part of an instance's snapshot, the DBA's
//! per-table choice of which of them emit updated events (`ae_events.bubble_up`), the capture
//! trigger that records their changes, and the commit-time lookup from changed rows to the
//! instances whose snapshots they are part of.

use crate::errors::{self, EventError};
use crate::pending::{self, Change};
use crate::privileges::{ExtensionCatalog, OwnerPrivileges};
use crate::rows::{int8_array, sorted_unique, with_kept_plan, KeptPlan};
use crate::settings;
use pgrx::heap_tuple::PgHeapTuple;
use pgrx::pgbox::AllocatedByPostgres;
use pgrx::prelude::*;
use std::cell::RefCell;
use std::ffi::CStr;

/// A table whose changes bubble up to instances (its name is the trigger's argument and the key
/// of `ae_events.bubble_up`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Instance,
    Candidate,
    Measurement,
    MeasurementAttribute,
    CatalogAssessment,
    Assessment,
    Catalog,
    SectionConfigurationAttribute,
    Attribute,
    Skill,
    Ordinal,
}

pub const SOURCES: [Source; 11] = [
    Source::Instance,
    Source::Candidate,
    Source::Measurement,
    Source::MeasurementAttribute,
    Source::CatalogAssessment,
    Source::Assessment,
    Source::Catalog,
    Source::SectionConfigurationAttribute,
    Source::Attribute,
    Source::Skill,
    Source::Ordinal,
];

impl Source {
    pub fn table(self) -> &'static str {
        match self {
            Source::Instance => "ti.instance",
            Source::Candidate => "can.candidate",
            Source::Measurement => "tcf.measurement",
            Source::MeasurementAttribute => "tcf.measurement_attribute",
            Source::CatalogAssessment => "ae.catalog_assessment",
            Source::Assessment => "ae.assessment",
            Source::Catalog => "ae.catalog",
            Source::SectionConfigurationAttribute => "tcf.section_configuration_attribute",
            Source::Attribute => "tcf.attribute",
            Source::Skill => "tcf.skill",
            Source::Ordinal => "tcf.ordinal",
        }
    }

    fn from_table(table: &[u8]) -> Option<Source> {
        SOURCES
            .into_iter()
            .find(|source| source.table().as_bytes() == table)
    }

    /// The operations that change an instance's snapshot through this table. (Inserting or
    /// deleting a referenced row leaves the instances pointing at nothing or at a new id: only
    /// attributes are collected by their measurement, so only they count when added or removed.)
    pub fn operations(self) -> &'static str {
        match self {
            Source::MeasurementAttribute => "INSERT OR UPDATE OR DELETE",
            _ => "UPDATE",
        }
    }

    /// What a changed row's key identifies.
    fn key(self) -> Key {
        match self {
            Source::Instance => Key::Instance,
            Source::Candidate => Key::Candidate,
            Source::Measurement | Source::MeasurementAttribute => Key::Measurement,
            Source::CatalogAssessment => Key::CatalogAssessment,
            Source::Assessment => Key::Assessment,
            Source::Catalog => Key::Catalog,
            Source::SectionConfigurationAttribute => Key::SectionConfigurationAttribute,
            Source::Attribute => Key::Attribute,
            Source::Skill => Key::Skill,
            Source::Ordinal => Key::Ordinal,
        }
    }

    /// The column of a changed row that holds its key.
    fn key_column(self) -> &'static str {
        match self {
            Source::MeasurementAttribute => "measurement_id",
            _ => "id",
        }
    }

    /// Whether bubble-up from this table is on when `ae_events.bubble_up` has no row for it:
    /// instance-specific tables on, reference data off (renaming a catalog would otherwise fan
    /// out to every instance ever taken).
    pub fn enabled_by_default(self) -> bool {
        matches!(
            self,
            Source::Instance
                | Source::Candidate
                | Source::Measurement
                | Source::MeasurementAttribute
        )
    }

    fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

/// The instances whose column `$column` is one of the keys.
macro_rules! instances_by_column {
    ($column:literal) => {
        concat!(
            "SELECT i.id::pg_catalog.int8 FROM ti.instance AS i WHERE i.",
            $column,
            " OPERATOR(pg_catalog.=) ANY ($1)"
        )
    };
}

/// The instances of the catalog assessments whose `$key_column` is one of the keys.
macro_rules! instances_by_catalog_assessment {
    ($key_column:literal) => {
        concat!(
            "SELECT i.id::pg_catalog.int8
               FROM ae.catalog_assessment AS ca
               JOIN ti.instance AS i ON i.catalog_assessment_id OPERATOR(pg_catalog.=) ca.id
              WHERE ",
            $key_column,
            " OPERATOR(pg_catalog.=) ANY ($1)"
        )
    };
}

/// The instances of the measurements of the attributes (`ma`, reached from `$from`) whose
/// `$key_column` is one of the keys.
macro_rules! instances_by_attributes {
    ($from:literal, $key_column:literal) => {
        concat!(
            "SELECT i.id::pg_catalog.int8
               FROM ",
            $from,
            "
               JOIN ti.instance AS i
                 ON i.measurement_id OPERATOR(pg_catalog.=) ma.measurement_id
              WHERE ",
            $key_column,
            " OPERATOR(pg_catalog.=) ANY ($1)"
        )
    };
}

/// What the key of a changed row identifies; each kind has one lookup to instance ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Key {
    Instance,
    Candidate,
    Measurement,
    CatalogAssessment,
    Assessment,
    Catalog,
    SectionConfigurationAttribute,
    Attribute,
    Skill,
    Ordinal,
}

impl Key {
    fn describe(self) -> &'static str {
        match self {
            Key::Instance => "ti.instance",
            Key::Candidate => "can.candidate",
            Key::Measurement => "tcf.measurement",
            Key::CatalogAssessment => "ae.catalog_assessment",
            Key::Assessment => "ae.assessment",
            Key::Catalog => "ae.catalog",
            Key::SectionConfigurationAttribute => "tcf.section_configuration_attribute",
            Key::Attribute => "tcf.attribute",
            Key::Skill => "tcf.skill",
            Key::Ordinal => "tcf.ordinal",
        }
    }

    /// The instances whose snapshots include the rows with these keys. Schema-qualified, with
    /// qualified operators, like every query of the extension.
    fn instances_query(self) -> Option<&'static str> {
        Some(match self {
            Key::Instance => return None,
            Key::Candidate => instances_by_column!("candidate_id"),
            Key::Measurement => instances_by_column!("measurement_id"),
            Key::CatalogAssessment => instances_by_column!("catalog_assessment_id"),
            Key::Assessment => instances_by_catalog_assessment!("ca.assessment_id"),
            Key::Catalog => instances_by_catalog_assessment!("ca.catalog_id"),
            Key::SectionConfigurationAttribute => instances_by_attributes!(
                "tcf.measurement_attribute AS ma",
                "ma.section_configuration_attribute_id"
            ),
            Key::Attribute => instances_by_attributes!(
                "tcf.section_configuration_attribute AS sca
                   JOIN tcf.measurement_attribute AS ma
                     ON ma.section_configuration_attribute_id OPERATOR(pg_catalog.=) sca.id",
                "sca.attribute_id"
            ),
            Key::Skill => instances_by_attributes!(
                "tcf.attribute AS a
                   JOIN tcf.section_configuration_attribute AS sca
                     ON sca.attribute_id OPERATOR(pg_catalog.=) a.id
                   JOIN tcf.measurement_attribute AS ma
                     ON ma.section_configuration_attribute_id OPERATOR(pg_catalog.=) sca.id",
                "a.skill_id"
            ),
            Key::Ordinal => {
                instances_by_attributes!("tcf.measurement_attribute AS ma", "ma.ordinal_id")
            }
        })
    }
}

/// The sources whose changes bubble up in this transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EnabledSources(u16);

impl EnabledSources {
    fn defaults() -> EnabledSources {
        EnabledSources(
            SOURCES
                .into_iter()
                .filter(|source| source.enabled_by_default())
                .fold(0, |bits, source| bits | source.bit()),
        )
    }

    fn set(&mut self, source: Source, enabled: bool) {
        if enabled {
            self.0 |= source.bit();
        } else {
            self.0 &= !source.bit();
        }
    }

    pub fn contains(self, source: Source) -> bool {
        self.0 & source.bit() != 0
    }
}

const BUBBLE_UP_SETTINGS: &str = "
SELECT b.source_table::pg_catalog.text, b.enabled::pg_catalog.bool FROM ae_events.bubble_up AS b";

thread_local! {
    static SETTINGS_QUERY: RefCell<Option<KeptPlan>> = const { RefCell::new(None) };
    static INSTANCE_QUERIES: RefCell<Vec<(Key, KeptPlan)>> = const { RefCell::new(Vec::new()) };
}

/// Read `ae_events.bubble_up` (as the extension's owner: the application's role has no
/// privilege on it). Rows for tables it does not know are ignored; a missing row means the
/// table's default.
fn read_enabled_sources() -> Result<EnabledSources, EventError> {
    let catalog = ExtensionCatalog::current();
    let _privileges = OwnerPrivileges::enter(catalog.owner);
    let mut enabled = EnabledSources::defaults();
    Spi::connect(|_| {
        with_kept_plan(&SETTINGS_QUERY, BUBBLE_UP_SETTINGS, |query| {
            query.run(&mut [])?.for_each(|row| {
                let table: Option<String> = row.get(1).map_err(EventError::internal)?;
                let on: Option<bool> = row.get(2).map_err(EventError::internal)?;
                if let (Some(source), Some(on)) =
                    (table.and_then(|t| Source::from_table(t.as_bytes())), on)
                {
                    enabled.set(source, on);
                }
                Ok(())
            })
        })
    })
    .map_err(|error| error.context("cannot read ae_events.bubble_up"))?;
    Ok(enabled)
}

/// The bubble-up settings of this transaction (read once, when first needed).
pub fn enabled_sources() -> EnabledSources {
    pending::enabled_sources(|| match read_enabled_sources() {
        Ok(enabled) => enabled,
        Err(error) => error.report(),
    })
}

fn bubbles_up(source: Source) -> bool {
    enabled_sources().contains(source)
}

/// What the extension's row triggers return: nothing (they are AFTER triggers).
pub type TriggerResult<'a> =
    Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, std::convert::Infallible>;

/// The source table named by the trigger's argument.
fn trigger_source(trigger: &PgTrigger<'_>) -> Source {
    let definition = trigger.trigger();
    let argument = (definition.tgnargs >= 1)
        // SAFETY: tgargs holds tgnargs NUL-terminated strings.
        .then(|| unsafe { CStr::from_ptr(*definition.tgargs) });
    match argument.and_then(|table| Source::from_table(table.to_bytes())) {
        Some(source) => source,
        None => errors::raise(
            PgSqlErrorCode::ERRCODE_TRIGGERED_ACTION_EXCEPTION,
            "capture_change() needs the name of a source table as its argument".to_owned(),
            None,
        ),
    }
}

/// The oid of a source table (InvalidOid when it does not exist), from the system caches.
pub fn table_oid(source: Source) -> pg_sys::Oid {
    let Some((schema, name)) = source.table().split_once('.') else {
        return pg_sys::InvalidOid;
    };
    let (Ok(schema), Ok(name)) = (std::ffi::CString::new(schema), std::ffi::CString::new(name))
    else {
        return pg_sys::InvalidOid;
    };
    // SAFETY: syscache lookups by name; missing_ok returns InvalidOid instead of raising.
    unsafe {
        let namespace = pg_sys::get_namespace_oid(schema.as_ptr(), true);
        pg_sys::get_relname_relid(name.as_ptr(), namespace)
    }
}

/// Whether `relation` is the source table: its name, then its schema (one syscache lookup, only
/// when the name matches: this runs for every row a trigger sees).
fn is_table(relation: &pgrx::PgRelation, source: Source) -> bool {
    let Some((schema, name)) = source.table().split_once('.') else {
        return false;
    };
    if relation.name() != name {
        return false;
    }
    let Ok(schema) = std::ffi::CString::new(schema) else {
        return false;
    };
    // SAFETY: rd_rel is the open relation's pg_class row; a syscache lookup by name, missing_ok.
    unsafe { (*relation.rd_rel).relnamespace == pg_sys::get_namespace_oid(schema.as_ptr(), true) }
}

/// The extension's trigger functions record changes for the pass, which writes events as the
/// extension's owner: each runs only on the table `attach()` attached it to (`allowed`), so that
/// nobody can forge a change by attaching it to a table of their own (42501 otherwise).
pub fn require_trigger_on(trigger: &PgTrigger<'_>, function: &str, allowed: &[Source]) {
    let relation = match trigger.relation() {
        Ok(relation) => relation,
        Err(error) => errors::raise(
            PgSqlErrorCode::ERRCODE_TRIGGERED_ACTION_EXCEPTION,
            format!("{function} cannot read its trigger's table: {error}"),
            None,
        ),
    };
    if allowed.iter().any(|source| is_table(&relation, *source)) {
        return;
    }
    let expected: Vec<&str> = allowed.iter().map(|source| source.table()).collect();
    errors::raise(
        PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
        format!(
            "{function} runs only on {}, where ae_events.attach() puts it, not on \"{}\"",
            expected.join(", "),
            relation.name()
        ),
        None,
    )
}

/// The key of a trigger's row (`None` without a row, or for a NULL key); an error if the column
/// is missing or not a bigint.
pub fn key_of(source: Source, row: Option<PgHeapTuple<'_, AllocatedByPostgres>>) -> Option<i64> {
    let row = row?;
    match row.get_by_name::<i64>(source.key_column()) {
        Ok(key) => key,
        Err(error) => errors::raise(
            PgSqlErrorCode::ERRCODE_TRIGGERED_ACTION_EXCEPTION,
            format!(
                "cannot read the bigint \"{}\" of a {} row: {error}",
                source.key_column(),
                source.table()
            ),
            None,
        ),
    }
}

/// AFTER ... FOR EACH ROW on each source table (argument: the table's name): record what the
/// change touches, for the commit-time pass. Deleting an instance is always recorded (its
/// version state is dropped); other changes only when the table bubbles up in this transaction.
#[pg_trigger]
fn capture_change<'a>(trigger: &'a PgTrigger<'a>) -> TriggerResult<'a> {
    if !settings::enabled() {
        return Ok(None);
    }
    let source = trigger_source(trigger);
    require_trigger_on(trigger, "ae_events.capture_change()", &[source]);
    let old_key = key_of(source, trigger.old());
    let new_key = key_of(source, trigger.new());
    if source == Source::Instance {
        // An instance whose id disappears (DELETE, or an UPDATE of the id) loses its state.
        if let Some(old) = old_key.filter(|old| Some(*old) != new_key) {
            pending::capture(Change::Deleted(old));
        }
        if let Some(new) = new_key.filter(|_| bubbles_up(source)) {
            pending::capture(Change::Touched(Key::Instance, new));
        }
        return Ok(None);
    }
    if !bubbles_up(source) {
        return Ok(None);
    }
    let key = source.key();
    for id in [old_key, new_key.filter(|new| Some(*new) != old_key)]
        .into_iter()
        .flatten()
    {
        pending::capture(Change::Touched(key, id));
    }
    Ok(None)
}

/// The instances whose snapshots include the touched rows, ascending, without duplicates.
/// (Runs inside the pass: as the owner, in an SPI connection.)
pub fn affected_instances(
    touched: &std::collections::BTreeMap<Key, Vec<i64>>,
) -> Result<Vec<i64>, EventError> {
    let mut instances = Vec::new();
    for (&key, ids) in touched {
        let Some(sql) = key.instances_query() else {
            instances.extend_from_slice(ids);
            continue;
        };
        let context = |error: EventError| {
            error.context(format!(
                "cannot find the instances of the changed {} rows",
                key.describe()
            ))
        };
        INSTANCE_QUERIES
            .with_borrow_mut(|queries| {
                let position = match queries.iter().position(|(known, _)| *known == key) {
                    Some(position) => position,
                    None => {
                        let plan =
                            KeptPlan::prepare_planned_per_call(sql, &[pg_sys::INT8ARRAYOID])?;
                        queries.push((key, plan));
                        queries.len() - 1
                    }
                };
                queries[position]
                    .1
                    .run_freeing(vec![int8_array(ids)?])?
                    .for_each(|row| {
                        if let Some(id) = row.get::<i64>(1).map_err(EventError::internal)? {
                            instances.push(id);
                        }
                        Ok(())
                    })
            })
            .map_err(context)?;
    }
    Ok(sorted_unique(instances))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_source_is_found_by_its_table_name_and_nothing_else_is() {
        for source in SOURCES {
            assert_eq!(Source::from_table(source.table().as_bytes()), Some(source));
        }
        for other in [
            "",
            "ti.instances",
            "public.instance",
            "TI.INSTANCE",
            "instance",
        ] {
            assert_eq!(Source::from_table(other.as_bytes()), None, "{other}");
        }
    }

    #[test]
    fn instance_specific_tables_are_on_by_default_and_reference_data_off() {
        let defaults = EnabledSources::defaults();
        let expected = [
            (Source::Instance, true, "UPDATE", Key::Instance),
            (Source::Candidate, true, "UPDATE", Key::Candidate),
            (Source::Measurement, true, "UPDATE", Key::Measurement),
            (
                Source::MeasurementAttribute,
                true,
                "INSERT OR UPDATE OR DELETE",
                Key::Measurement,
            ),
            (
                Source::CatalogAssessment,
                false,
                "UPDATE",
                Key::CatalogAssessment,
            ),
            (Source::Assessment, false, "UPDATE", Key::Assessment),
            (Source::Catalog, false, "UPDATE", Key::Catalog),
            (
                Source::SectionConfigurationAttribute,
                false,
                "UPDATE",
                Key::SectionConfigurationAttribute,
            ),
            (Source::Attribute, false, "UPDATE", Key::Attribute),
            (Source::Skill, false, "UPDATE", Key::Skill),
            (Source::Ordinal, false, "UPDATE", Key::Ordinal),
        ];
        assert_eq!(expected.len(), SOURCES.len());
        for (source, on, operations, key) in expected {
            assert_eq!(defaults.contains(source), on, "{source:?}");
            assert_eq!(source.operations(), operations, "{source:?}");
            assert_eq!(source.key(), key, "{source:?}");
        }
    }

    #[test]
    fn a_setting_switches_only_its_own_table() {
        let mut enabled = EnabledSources::defaults();
        enabled.set(Source::Catalog, true);
        enabled.set(Source::Candidate, false);
        for source in SOURCES {
            let expected = match source {
                Source::Catalog => true,
                Source::Candidate => false,
                other => other.enabled_by_default(),
            };
            assert_eq!(enabled.contains(source), expected, "{source:?}");
        }
    }

    #[test]
    fn every_key_but_the_instance_has_a_schema_qualified_lookup() {
        let keys = [
            Key::Candidate,
            Key::Measurement,
            Key::CatalogAssessment,
            Key::Assessment,
            Key::Catalog,
            Key::SectionConfigurationAttribute,
            Key::Attribute,
            Key::Skill,
            Key::Ordinal,
        ];
        assert_eq!(Key::Instance.instances_query(), None);
        for key in keys {
            let sql = key.instances_query().unwrap_or_default();
            assert!(
                sql.starts_with("SELECT i.id::pg_catalog.int8"),
                "{key:?}: {sql}"
            );
            assert!(
                sql.ends_with("OPERATOR(pg_catalog.=) ANY ($1)"),
                "{key:?}: {sql}"
            );
            assert!(
                !sql.contains(" = "),
                "unqualified operator in {key:?}: {sql}"
            );
        }
    }
}
