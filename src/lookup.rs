//! The commit-time lookup from changed rows to the instances whose snapshots include them: one
//! set-based query per kind of key (`Key`), prepared once per backend; it runs inside the pass,
//! reading as `ae_events_snapshot`.

use crate::errors::EventError;
use crate::rows::{int8_array, sorted_unique, Connection, KeptPlan};
use crate::sources::Key;
use pgrx::prelude::*;
use std::cell::RefCell;

thread_local! {
    static INSTANCE_QUERIES: RefCell<Vec<(Key, KeptPlan)>> = const { RefCell::new(Vec::new()) };
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

/// The instances whose snapshots include the rows with these keys. Schema-qualified, with
/// qualified operators, like every query of the extension.
fn instances_query(key: Key) -> Option<&'static str> {
    Some(match key {
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

/// The instances whose snapshots include the touched rows, ascending, without duplicates.
/// (Runs inside the pass, reading as `ae_events_snapshot`.)
pub fn affected_instances(
    connection: Connection<'_>,
    touched: &std::collections::BTreeMap<Key, Vec<i64>>,
) -> Result<Vec<i64>, EventError> {
    let mut instances = Vec::new();
    for (&key, ids) in touched {
        let Some(sql) = instances_query(key) else {
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
                        let plan = KeptPlan::prepare_planned_per_call(
                            connection,
                            sql,
                            &[pg_sys::INT8ARRAYOID],
                        )?;
                        queries.push((key, plan));
                        queries.len() - 1
                    }
                };
                queries[position]
                    .1
                    .run_freeing(connection, vec![int8_array(ids)?])?
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
        assert_eq!(instances_query(Key::Instance), None);
        for key in keys {
            let sql = instances_query(key).unwrap_or_default();
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
