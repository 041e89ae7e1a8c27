//! The commit-time lookup from changed rows to the instances whose snapshots include them: one
//! set-based query per kind of key (`Key`), prepared once per backend; it runs inside the pass,
//! reading as `ae_events_snapshot`.

use crate::errors::EventError;
use crate::rows::{int8_array, sorted_unique, Connection, Cursor, KeptPlan};
use crate::sources::Key;
use pgrx::prelude::*;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::thread::LocalKey;

/// Plans kept per key, prepared on first use in the session.
type KeyPlans = RefCell<Vec<(Key, KeptPlan)>>;

thread_local! {
    static BOUNDED_QUERIES: KeyPlans = const { RefCell::new(Vec::new()) };
    static EXPANSION_QUERIES: KeyPlans = const { RefCell::new(Vec::new()) };
}

/// Run `use_plan` with `slot`'s plan for `key`, preparing `sql` there on first use.
fn with_key_plan<R>(
    slot: &'static LocalKey<KeyPlans>,
    connection: Connection<'_>,
    key: Key,
    sql: impl FnOnce() -> String,
    argument_types: &[pg_sys::Oid],
    use_plan: impl FnOnce(&KeptPlan) -> Result<R, EventError>,
) -> Result<R, EventError> {
    slot.with_borrow_mut(|plans| {
        let position = match plans.iter().position(|(known, _)| *known == key) {
            Some(position) => position,
            None => {
                let plan = KeptPlan::prepare_planned_per_call(connection, &sql(), argument_types)?;
                plans.push((key, plan));
                plans.len() - 1
            }
        };
        use_plan(&plans[position].1)
    })
}

fn lookup_context(key: Key) -> impl FnOnce(EventError) -> EventError {
    move |error| {
        error.context(format!(
            "cannot find the instances of the changed {} rows",
            key.describe()
        ))
    }
}

/// The instances the touched rows reach, ascending, if they are at most `limit` (the direct
/// changes of instances not counted: they are the transaction's own); `None` beyond, having read
/// at most `limit + 1` rows, so that the answer costs little however many there are.
pub fn affected_instances_within(
    connection: Connection<'_>,
    touched: &BTreeMap<Key, Vec<i64>>,
    limit: usize,
) -> Result<Option<Vec<i64>>, EventError> {
    let mut instances = Vec::new();
    let mut reached = 0usize;
    for (&key, ids) in touched {
        let Some(sql) = instances_query(key) else {
            instances.extend_from_slice(ids);
            continue;
        };
        let remaining = i64::try_from(limit - reached)
            .unwrap_or(i64::MAX)
            .saturating_add(1);
        with_key_plan(
            &BOUNDED_QUERIES,
            connection,
            key,
            || format!("SELECT q.id FROM ({sql}) AS q LIMIT $2"),
            &[pg_sys::INT8ARRAYOID, pg_sys::INT8OID],
            |plan| {
                let mut arguments = vec![int8_array(ids)?, pg_sys::Datum::from(remaining)];
                let rows = plan.run(connection, &mut arguments);
                // SAFETY: the array was palloc'd for this run; the int8 is passed by value.
                unsafe { pg_sys::pfree(arguments[0].cast_mut_ptr()) };
                rows?.for_each(|row| {
                    if let Some(id) = row.get::<i64>(1).map_err(EventError::internal)? {
                        instances.push(id);
                        reached += 1;
                    }
                    Ok(())
                })
            },
        )
        .map_err(lookup_context(key))?;
        if reached > limit {
            return Ok(None);
        }
    }
    Ok(Some(sorted_unique(instances)))
}

/// A cursor over the instances the rows of `key` with these ids reach, ascending and without
/// duplicates (for a deferred fan-out, `fanout.rs`).
pub fn open_affected_instances<'conn>(
    connection: Connection<'conn>,
    key: Key,
    ids: &[i64],
) -> Result<Cursor<'conn>, EventError> {
    let Some(sql) = instances_query(key) else {
        return Err(EventError::internal(format!(
            "{} rows reach no other instances",
            key.describe()
        )));
    };
    with_key_plan(
        &EXPANSION_QUERIES,
        connection,
        key,
        || format!("SELECT DISTINCT q.id FROM ({sql}) AS q ORDER BY q.id"),
        &[pg_sys::INT8ARRAYOID],
        |plan| plan.open_cursor(connection, vec![int8_array(ids)?]),
    )
    .map_err(lookup_context(key))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_but_the_instance_has_a_schema_qualified_lookup() {
        assert_eq!(instances_query(Key::Instance), None);
        for key in Key::ALL.into_iter().filter(|key| *key != Key::Instance) {
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
