//! Reads the rows behind a set of instances with SPI and assembles their payloads.
//!
//! One pass reads a whole chunk of instances with five queries (instances, candidates, catalog
//! assessments, measurements, measurement attributes), each `= ANY($1)` over the chunk's ids (the
//! first three, when their ids are dense, over the range between the first and the last), so
//! that a bulk insert costs five queries per chunk, not per row. The queries are prepared once per
//! backend and kept; every name in them is schema-qualified, operators included, so that a
//! caller's `search_path` cannot change what they read.

use crate::errors::EventError;
use crate::payload::*;
use crate::rows::{int8_array, sorted_unique, with_kept_plan, ColumnValue, Connection, KeptPlan};
use crate::settings::ScopedSetting;
use pgrx::prelude::*;
use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::CStr;
use std::rc::Rc;

// Every column is cast to the type the extension reads (a no-op for the reference schema), so
// that a DBA's variant (an int4 id, a varchar name) still reads correctly. Each table's columns
// are one macro, so that the combined query below reads them in the same order.
macro_rules! instance_columns {
    () => {
        "i.id::pg_catalog.int8, i.external_id::pg_catalog.text, i.old_id::pg_catalog.int8,
       i.score::pg_catalog.numeric, i.instance_status::pg_catalog.text,
       i.candidate_id::pg_catalog.int8, i.catalog_assessment_id::pg_catalog.int8,
       i.measurement_id::pg_catalog.int8, i.session_instance_id::pg_catalog.int8,
       i.workflow_candidate_step_id::pg_catalog.int8, i.created_at::pg_catalog.timestamptz,
       i.created_by::pg_catalog.int8, i.updated_at::pg_catalog.timestamptz,
       i.updated_by::pg_catalog.int8"
    };
}

macro_rules! candidate_columns {
    () => {
        "c.id::pg_catalog.int8, c.external_id::pg_catalog.text, c.user_id::pg_catalog.int8,
       c.email::pg_catalog.text, c.first_name::pg_catalog.text, c.last_name::pg_catalog.text,
       c.middle_name::pg_catalog.text, c.phone_number::pg_catalog.text,
       c.country::pg_catalog.text, c.is_tnc_accepted::pg_catalog.bool,
       c.is_recording_consent_accepted::pg_catalog.bool, c.resume_file_id::pg_catalog.int8,
       c.profile_pic_file_id::pg_catalog.int8, c.cf::pg_catalog.jsonb"
    };
}

macro_rules! catalog_assessment_columns {
    () => {
        "ca.id::pg_catalog.int8, ca.assessment_id::pg_catalog.int8, ca.catalog_id::pg_catalog.int8,
       a.id::pg_catalog.int8, a.name::pg_catalog.text, a.level::pg_catalog.text,
       a.status::pg_catalog.text, a.created_at::pg_catalog.timestamptz,
       a.updated_at::pg_catalog.timestamptz,
       cat.id::pg_catalog.int8, cat.name::pg_catalog.text, cat.description::pg_catalog.text"
    };
}

macro_rules! catalog_assessment_joins {
    () => {
        "LEFT JOIN ae.assessment AS a ON a.id OPERATOR(pg_catalog.=) ca.assessment_id
  LEFT JOIN ae.catalog AS cat ON cat.id OPERATOR(pg_catalog.=) ca.catalog_id"
    };
}

macro_rules! measurement_columns {
    () => {
        "m.id::pg_catalog.int8, m.status::pg_catalog.text, m.time_taken::pg_catalog.interval,
       m.report_url::pg_catalog.text, m.report_file_id::pg_catalog.int8,
       m.measured_at::pg_catalog.timestamptz, m.measured_by::pg_catalog.int8,
       m.form_instance_id::pg_catalog.int8"
    };
}

/// The rows whose key is in the range `$1[1]..=$1[2]` (see `for_each_row_by_key`).
macro_rules! key_in_range {
    ($key:literal) => {
        concat!(
            $key,
            " OPERATOR(pg_catalog.>=) ($1)[1] AND ",
            $key,
            " OPERATOR(pg_catalog.<=) ($1)[2]"
        )
    };
}

const INSTANCES: &str = concat!(
    "SELECT ",
    instance_columns!(),
    "
  FROM ti.instance AS i
 WHERE i.id OPERATOR(pg_catalog.=) ANY ($1)"
);

const INSTANCES_IN_RANGE: &str = concat!(
    "SELECT ",
    instance_columns!(),
    "
  FROM ti.instance AS i
 WHERE ",
    key_in_range!("i.id")
);

const CANDIDATES: &str = concat!(
    "SELECT ",
    candidate_columns!(),
    "
  FROM can.candidate AS c
 WHERE c.id OPERATOR(pg_catalog.=) ANY ($1)"
);

const CANDIDATES_IN_RANGE: &str = concat!(
    "SELECT ",
    candidate_columns!(),
    "
  FROM can.candidate AS c
 WHERE ",
    key_in_range!("c.id")
);

const CATALOG_ASSESSMENTS: &str = concat!(
    "SELECT ",
    catalog_assessment_columns!(),
    "
  FROM ae.catalog_assessment AS ca
  ",
    catalog_assessment_joins!(),
    "
 WHERE ca.id OPERATOR(pg_catalog.=) ANY ($1)"
);

const MEASUREMENTS: &str = concat!(
    "SELECT ",
    measurement_columns!(),
    "
  FROM tcf.measurement AS m
 WHERE m.id OPERATOR(pg_catalog.=) ANY ($1)"
);

const MEASUREMENTS_IN_RANGE: &str = concat!(
    "SELECT ",
    measurement_columns!(),
    "
  FROM tcf.measurement AS m
 WHERE ",
    key_in_range!("m.id")
);

/// For few instances: the four queries above as one (each instance's row, then its candidate's,
/// catalog assessment's and measurement's columns), saving three executions per commit.
const INSTANCES_WITH_REFERENCES: &str = concat!(
    "SELECT ",
    instance_columns!(),
    ",
       ",
    candidate_columns!(),
    ",
       ",
    catalog_assessment_columns!(),
    ",
       ",
    measurement_columns!(),
    "
  FROM ti.instance AS i
  LEFT JOIN can.candidate AS c ON c.id OPERATOR(pg_catalog.=) i.candidate_id
  LEFT JOIN ae.catalog_assessment AS ca ON ca.id OPERATOR(pg_catalog.=) i.catalog_assessment_id
  ",
    catalog_assessment_joins!(),
    "
  LEFT JOIN tcf.measurement AS m ON m.id OPERATOR(pg_catalog.=) i.measurement_id
 WHERE i.id OPERATOR(pg_catalog.=) ANY ($1)"
);

/// The number of columns in a column list: its commas plus one (a list holds no other comma).
const fn column_count(list: &str) -> usize {
    let bytes = list.as_bytes();
    let mut count = 1;
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b',' {
            count += 1;
        }
        index += 1;
    }
    count
}

/// Where each table's columns start in a row of `INSTANCES_WITH_REFERENCES`, derived from the
/// column lists it is made of.
const CANDIDATE_OFFSET: usize = column_count(instance_columns!());
const CATALOG_ASSESSMENT_OFFSET: usize = CANDIDATE_OFFSET + column_count(candidate_columns!());
const MEASUREMENT_OFFSET: usize =
    CATALOG_ASSESSMENT_OFFSET + column_count(catalog_assessment_columns!());

macro_rules! measurement_attribute_columns {
    () => {
        "ma.id::pg_catalog.int8, ma.measurement_id::pg_catalog.int8,
       ma.numerical_score::pg_catalog.numeric, ma.percentile_score::pg_catalog.numeric,
       ma.remarks::pg_catalog.text, ma.description::pg_catalog.text,
       ma.additional_attributes::pg_catalog.jsonb, ma.created_at::pg_catalog.timestamptz,
       ma.created_by::pg_catalog.int8, ma.updated_at::pg_catalog.timestamptz,
       ma.updated_by::pg_catalog.int8, ma.section_configuration_attribute_id::pg_catalog.int8,
       ma.ordinal_id::pg_catalog.int8"
    };
}

macro_rules! section_configuration_attribute_columns {
    () => {
        "sca.id::pg_catalog.int8, sca.type::pg_catalog.text,
       sca.recommended_value::pg_catalog.numeric, sca.recommended_ordinal_id::pg_catalog.int8,
       sca.attribute_id::pg_catalog.int8,
       at.id::pg_catalog.int8, at.name::pg_catalog.text, at.attribute_type::pg_catalog.text,
       at.is_required::pg_catalog.bool, at.min_value::pg_catalog.numeric,
       at.max_value::pg_catalog.numeric, at.skill_id::pg_catalog.int8,
       sk.id::pg_catalog.int8, sk.name::pg_catalog.text"
    };
}

macro_rules! section_configuration_attribute_joins {
    () => {
        "LEFT JOIN tcf.attribute AS at ON at.id OPERATOR(pg_catalog.=) sca.attribute_id
  LEFT JOIN tcf.skill AS sk ON sk.id OPERATOR(pg_catalog.=) at.skill_id"
    };
}

macro_rules! ordinal_columns {
    () => {
        "o.id::pg_catalog.int8, o.label::pg_catalog.text, o.value::pg_catalog.text,
       o.sort_key::pg_catalog.int4, o.min_value::pg_catalog.numeric,
       o.max_value::pg_catalog.numeric"
    };
}

/// For many instances: the attributes alone; the reference rows they share are read once each
/// (`SECTION_CONFIGURATION_ATTRIBUTES`, `ORDINALS`) instead of repeated on every attribute row.
const MEASUREMENT_ATTRIBUTES: &str = concat!(
    "SELECT ",
    measurement_attribute_columns!(),
    "
  FROM tcf.measurement_attribute AS ma
 WHERE ma.measurement_id OPERATOR(pg_catalog.=) ANY ($1)"
);

const SECTION_CONFIGURATION_ATTRIBUTES: &str = concat!(
    "SELECT ",
    section_configuration_attribute_columns!(),
    "
  FROM tcf.section_configuration_attribute AS sca
  ",
    section_configuration_attribute_joins!(),
    "
 WHERE sca.id OPERATOR(pg_catalog.=) ANY ($1)"
);

const ORDINALS: &str = concat!(
    "SELECT ",
    ordinal_columns!(),
    "
  FROM tcf.ordinal AS o
 WHERE o.id OPERATOR(pg_catalog.=) ANY ($1)"
);

/// For few instances: the attributes with their reference rows, in one query.
const MEASUREMENT_ATTRIBUTES_WITH_REFERENCES: &str = concat!(
    "SELECT ",
    measurement_attribute_columns!(),
    ",
       ",
    section_configuration_attribute_columns!(),
    ",
       ",
    ordinal_columns!(),
    "
  FROM tcf.measurement_attribute AS ma
  LEFT JOIN tcf.section_configuration_attribute AS sca
         ON sca.id OPERATOR(pg_catalog.=) ma.section_configuration_attribute_id
  ",
    section_configuration_attribute_joins!(),
    "
  LEFT JOIN tcf.ordinal AS o ON o.id OPERATOR(pg_catalog.=) ma.ordinal_id
 WHERE ma.measurement_id OPERATOR(pg_catalog.=) ANY ($1)"
);

/// Where the reference rows' columns start in a row of `MEASUREMENT_ATTRIBUTES_WITH_REFERENCES`.
const SECTION_CONFIGURATION_ATTRIBUTE_OFFSET: usize =
    column_count(measurement_attribute_columns!());
const ORDINAL_OFFSET: usize = SECTION_CONFIGURATION_ATTRIBUTE_OFFSET
    + column_count(section_configuration_attribute_columns!());

/// The plans for few instances: each instance with its referenced rows, and the attributes with
/// theirs, in one query each.
struct FewPlans {
    instances_with_references: KeptPlan,
    measurement_attributes_with_references: KeptPlan,
}

/// The plans for many instances: one query per table, over the distinct ids of a chunk.
struct ManyPlans {
    instances: KeyPlans,
    candidates: KeyPlans,
    catalog_assessments: KeptPlan,
    measurements: KeyPlans,
    measurement_attributes: KeptPlan,
    section_configuration_attributes: KeptPlan,
    ordinals: KeptPlan,
}

/// A table's rows by primary key: over an array of ids, or over a range of them
/// (`for_each_row_by_key`).
struct KeyPlans {
    by_ids: KeptPlan,
    in_range: KeptPlan,
}

/// Up to this many instances, the pass uses plans made for few rows.
const FEW_INSTANCES: usize = 16;

/// Two generic plan sets of the same queries, each planned and run with its own planner settings
/// (in effect whenever PostgreSQL re-plans them too). A generic plan cannot know how many ids the
/// array holds, and it is kept for the life of the session: it must not depend on statistics
/// taken when the tables were small (a plan made when `ti.instance` was empty would scan the
/// whole table at every commit once it has grown). So lookups by id always use their index
/// (`enable_seqscan = off`); the set for few instances also probes the reference tables' indexes
/// instead of hash-joining them whole (right for a chunk of 1000, several times too slow for a
/// single-row transaction), with plain nested loops (no memoize or materialize node to set up
/// for a handful of rows).
struct PlanSets {
    few: FewPlans,
    many: ManyPlans,
}

/// The planner settings each set is planned and run with.
const FEW_PLANNER_SETTINGS: &[(&CStr, &CStr)] = &[
    (c"enable_seqscan", c"off"),
    (c"enable_hashjoin", c"off"),
    (c"enable_mergejoin", c"off"),
    (c"enable_memoize", c"off"),
    (c"enable_material", c"off"),
];
const MANY_PLANNER_SETTINGS: &[(&CStr, &CStr)] = &[(c"enable_seqscan", c"off")];

thread_local! {
    static PLANS: RefCell<Option<Rc<PlanSets>>> = const { RefCell::new(None) };
}

fn prepare(connection: Connection<'_>, sql: &str) -> Result<KeptPlan, EventError> {
    KeptPlan::prepare(connection, sql, &[pg_sys::INT8ARRAYOID])
}

/// The backend's prepared plans (generic, kept); PostgreSQL's plan cache re-plans them after DDL.
fn plan_sets(connection: Connection<'_>) -> Result<Rc<PlanSets>, EventError> {
    if let Some(plans) = PLANS.with_borrow(|plans| plans.clone()) {
        return Ok(plans);
    }
    let plans = Rc::new(PlanSets {
        few: FewPlans {
            instances_with_references: prepare(connection, INSTANCES_WITH_REFERENCES)?,
            measurement_attributes_with_references: prepare(
                connection,
                MEASUREMENT_ATTRIBUTES_WITH_REFERENCES,
            )?,
        },
        many: ManyPlans {
            instances: KeyPlans {
                by_ids: prepare(connection, INSTANCES)?,
                in_range: prepare(connection, INSTANCES_IN_RANGE)?,
            },
            candidates: KeyPlans {
                by_ids: prepare(connection, CANDIDATES)?,
                in_range: prepare(connection, CANDIDATES_IN_RANGE)?,
            },
            catalog_assessments: prepare(connection, CATALOG_ASSESSMENTS)?,
            measurements: KeyPlans {
                by_ids: prepare(connection, MEASUREMENTS)?,
                in_range: prepare(connection, MEASUREMENTS_IN_RANGE)?,
            },
            measurement_attributes: prepare(connection, MEASUREMENT_ATTRIBUTES)?,
            section_configuration_attributes: prepare(
                connection,
                SECTION_CONFIGURATION_ATTRIBUTES,
            )?,
            ordinals: prepare(connection, ORDINALS)?,
        },
    });
    PLANS.with_borrow_mut(|slot| *slot = Some(Rc::clone(&plans)));
    Ok(plans)
}

/// Typed access to one table's columns in a result row (from `offset`); `table` and `id` name the
/// row in error messages.
struct Row<'a> {
    row: &'a crate::rows::Row,
    table: &'static str,
    id: i64,
    offset: usize,
}

impl<'a> Row<'a> {
    fn opt<T: ColumnValue>(&self, ordinal: usize) -> Result<Option<T>, EventError> {
        // The message is built only on failure: this runs for every column of every row.
        self.row
            .get::<T>(ordinal + self.offset)
            .map_err(|error| EventError::BadValue {
                what: format!("column {ordinal} of {} {}: {error}", self.table, self.id),
            })
    }

    fn req<T: ColumnValue>(&self, ordinal: usize, column: &str) -> Result<T, EventError> {
        self.opt(ordinal)?.ok_or_else(|| self.null_value(column))
    }

    /// Another table's columns in the same row, from `offset` (its id first); None when the
    /// LEFT JOIN found no row.
    fn joined(
        &self,
        table: &'static str,
        offset: usize,
    ) -> Result<Option<(i64, Row<'a>)>, EventError> {
        let part = Row {
            row: self.row,
            table,
            id: 0,
            offset,
        };
        Ok(part.opt::<i64>(1)?.map(|id| (id, Row { id, ..part })))
    }

    fn null_value(&self, column: &str) -> EventError {
        EventError::BadValue {
            what: format!("{column} of {} {} is null", self.table, self.id),
        }
    }
}

/// Warn that a referenced row is missing (the services' foreign keys are optional); the object
/// is `null` in the payload and the event is still written (shared/contract/events.md §2).
fn warn_missing(instance_id: i64, reference: &str, id: i64) {
    crate::errors::warn(format!(
        "ti.instance {instance_id} refers to {reference} {id}, which does not exist; its event carries null there"
    ));
}

/// Run one of the prepared queries over `ids` and hand each row, named by its id in column 1,
/// to `read`.
fn for_each_row(
    connection: Connection<'_>,
    plan: &KeptPlan,
    ids: &[i64],
    table: &'static str,
    mut read: impl FnMut(i64, &Row<'_>) -> Result<(), EventError>,
) -> Result<(), EventError> {
    plan.for_each_streamed(connection, vec![int8_array(ids)?], |row| {
        read_named(row, table, &mut read)
    })
    .map_err(|error| error.context(format!("cannot read {table}")))?
}

/// `for_each_row` over a table's rows by primary key. Ids that are dense (a bulk insert's, from
/// one sequence) are read with one range scan of the key, skipping the rows in the range that
/// were not asked for, instead of one index descent per id (before PostgreSQL 17, a scan over an
/// array descends once per element). The range holds at most twice as many keys as there are
/// ids; sparser ids are read with the array.
fn for_each_row_by_key(
    connection: Connection<'_>,
    plans: &KeyPlans,
    ids: &[i64],
    table: &'static str,
    mut read: impl FnMut(i64, &Row<'_>) -> Result<(), EventError>,
) -> Result<(), EventError> {
    let Some(range) = dense_range(ids) else {
        return for_each_row(connection, &plans.by_ids, ids, table, read);
    };
    for_each_row(connection, &plans.in_range, &range, table, |id, row| {
        if ids.binary_search(&id).is_ok() {
            read(id, row)
        } else {
            Ok(())
        }
    })
}

/// The first and last of `ids` when they ascend strictly (so that a row's id can be looked up
/// in them) and the range between them holds at most twice as many keys as there are ids.
fn dense_range(ids: &[i64]) -> Option<[i64; 2]> {
    let (&first, &last) = (ids.first()?, ids.last()?);
    let keys = i128::from(last) - i128::from(first) + 1;
    let dense = keys <= 2 * ids.len() as i128 && ids.windows(2).all(|pair| pair[0] < pair[1]);
    dense.then_some([first, last])
}

/// `for_each_row` for the attribute queries (any number per instance): each row is read as the
/// executor produces it, none kept (memory bounded per attribute, not per query), and the
/// budget, if any, stops the query as soon as it is spent.
fn for_each_attribute_row(
    connection: Connection<'_>,
    plan: &KeptPlan,
    measurement_ids: &[i64],
    mut budget: Option<Budget>,
    mut read: impl FnMut(i64, &Row<'_>) -> Result<(), EventError>,
) -> Result<(), EventError> {
    let table = "tcf.measurement_attribute";
    plan.for_each_streamed(connection, vec![int8_array(measurement_ids)?], |row| {
        if let Some(budget) = &mut budget {
            budget.spend(row)?;
        }
        read_named(row, table, &mut read)
    })
    .and_then(|read| read)
    .map_err(|error| error.context(format!("cannot read {table}")))
}

fn read_named(
    row: &crate::rows::Row,
    table: &'static str,
    read: &mut impl FnMut(i64, &Row<'_>) -> Result<(), EventError>,
) -> Result<(), EventError> {
    let first = Row {
        row,
        table,
        id: 0,
        offset: 0,
    };
    let id: i64 = first.req(1, "id")?;
    read(id, &Row { id, ..first })
}

/// The candidate and measurement that instances refer to (for the interlock, `interlock.rs`).
const REFERENCES: &str = "
SELECT i.candidate_id::pg_catalog.int8, i.measurement_id::pg_catalog.int8
  FROM ti.instance AS i
 WHERE i.id OPERATOR(pg_catalog.=) ANY ($1)";

thread_local! {
    static REFERENCES_PLAN: RefCell<Option<KeptPlan>> = const { RefCell::new(None) };
}

/// The candidates and measurements that the instances refer to.
pub fn references(
    connection: Connection<'_>,
    instance_ids: &[i64],
) -> Result<(Vec<i64>, Vec<i64>), EventError> {
    let mut candidates = Vec::with_capacity(instance_ids.len());
    let mut measurements = Vec::with_capacity(instance_ids.len());
    read_by_ids(
        connection,
        &REFERENCES_PLAN,
        REFERENCES,
        instance_ids,
        |row| {
            if let Some(candidate) = row.get::<i64>(1).map_err(EventError::internal)? {
                candidates.push(candidate);
            }
            if let Some(measurement) = row.get::<i64>(2).map_err(EventError::internal)? {
                measurements.push(measurement);
            }
            Ok(())
        },
    )
    .map_err(|error| error.context("cannot read the references of ti.instance rows"))?;
    Ok((candidates, measurements))
}

/// Run a query over ids, prepared once in `slot` and planned and run with the settings for many
/// instances; each result row goes to `read`.
fn read_by_ids(
    connection: Connection<'_>,
    slot: &'static std::thread::LocalKey<RefCell<Option<KeptPlan>>>,
    sql: &str,
    ids: &[i64],
    read: impl FnMut(&crate::rows::Row) -> Result<(), EventError>,
) -> Result<(), EventError> {
    ScopedSetting::around(MANY_PLANNER_SETTINGS, || {
        with_kept_plan(connection, slot, sql, &[pg_sys::INT8ARRAYOID], |plan| {
            plan.run_freeing(connection, vec![int8_array(ids)?])?
                .for_each(read)
        })
    })
}

/// How many measurement attributes each instance has, to cut a chunk of instances into groups
/// whose attributes fit a budget.
const ATTRIBUTE_COUNTS: &str = "
SELECT i.id::pg_catalog.int8,
       (SELECT pg_catalog.count(*) FROM tcf.measurement_attribute AS ma
         WHERE ma.measurement_id OPERATOR(pg_catalog.=) i.measurement_id)::pg_catalog.int8
  FROM ti.instance AS i
 WHERE i.id OPERATOR(pg_catalog.=) ANY ($1)";

thread_local! {
    static ATTRIBUTE_COUNTS_PLAN: RefCell<Option<KeptPlan>> = const { RefCell::new(None) };
}

/// Cut ascending instance ids into consecutive groups whose instances have at most `budget`
/// measurement attributes together (an instance with more is a group of its own), so that the
/// memory a group takes is bounded by attributes as well as by instances. One instance needs no
/// question.
pub fn group_by_attributes<'ids>(
    connection: Connection<'_>,
    instance_ids: &'ids [i64],
    budget: i64,
) -> Result<Vec<&'ids [i64]>, EventError> {
    if instance_ids.len() <= 1 {
        return Ok(vec![instance_ids]);
    }
    let mut counts = HashMap::with_capacity(instance_ids.len());
    read_by_ids(
        connection,
        &ATTRIBUTE_COUNTS_PLAN,
        ATTRIBUTE_COUNTS,
        instance_ids,
        |row| {
            let id: Option<i64> = row.get(1).map_err(EventError::internal)?;
            let count: Option<i64> = row.get(2).map_err(EventError::internal)?;
            if let (Some(id), Some(count)) = (id, count) {
                counts.insert(id, count);
            }
            Ok(())
        },
    )
    .map_err(|error| error.context("cannot count the attributes of ti.instance rows"))?;
    let mut groups = Vec::new();
    let (mut start, mut attributes) = (0, 0);
    for (index, id) in instance_ids.iter().enumerate() {
        let count = counts.get(id).copied().unwrap_or(0);
        if index > start && attributes + count > budget {
            groups.push(&instance_ids[start..index]);
            (start, attributes) = (index, 0);
        }
        attributes += count;
    }
    groups.push(&instance_ids[start..]);
    Ok(groups)
}

/// Build the payloads of the given instances, in ascending id order. Instances that no longer
/// exist (deleted later in the same transaction) are left out.
pub fn build(
    connection: Connection<'_>,
    instance_ids: &[i64],
) -> Result<Vec<TestInstance>, EventError> {
    build_within(connection, instance_ids, None)
}

/// `build`, giving up with `EventError::AttributeBudget` as soon as the chunk's attributes
/// exceed `attribute_budget` (each attribute counted once per instance that shows it, as
/// `group_by_attributes` counts): the attributes are counted as they are read, so that a chunk
/// within its budget, the usual case, costs no counting query, and one beyond it never holds
/// more than the budget.
pub fn build_within(
    connection: Connection<'_>,
    instance_ids: &[i64],
    attribute_budget: Option<i64>,
) -> Result<Vec<TestInstance>, EventError> {
    let plan_sets = plan_sets(connection)?;
    let few = instance_ids.len() <= FEW_INSTANCES;
    let chunk = if few {
        ScopedSetting::around(FEW_PLANNER_SETTINGS, || {
            read_together(connection, &plan_sets.few, instance_ids, attribute_budget)
        })
    } else {
        ScopedSetting::around(MANY_PLANNER_SETTINGS, || {
            read_table_by_table(connection, &plan_sets.many, instance_ids, attribute_budget)
        })
    };
    chunk.map(assemble)
}

/// What is left of a chunk's attribute budget, and how many of its instances show each
/// measurement.
struct Budget {
    remaining: i64,
    shown_by: HashMap<i64, i64>,
}

impl Budget {
    /// Count an attribute row (its measurement id in column 2): once per instance that shows it.
    fn spend(&mut self, row: &crate::rows::Row) -> Result<(), EventError> {
        let measurement_id: Option<i64> = row.get(2).map_err(EventError::internal)?;
        let shown_by = measurement_id.and_then(|id| self.shown_by.get(&id).copied());
        self.remaining -= shown_by.unwrap_or(1);
        if self.remaining < 0 {
            return Err(EventError::AttributeBudget);
        }
        Ok(())
    }
}

/// The rows behind a chunk of instances, each referenced row once.
#[derive(Default)]
struct ChunkRows {
    instances: Vec<TestInstance>,
    candidates: HashMap<i64, Rc<Candidate>>,
    catalog_assessments: HashMap<i64, Rc<Shared<CatalogAssessment>>>,
    measurements: HashMap<i64, Measurement>,
}

impl ChunkRows {
    /// Read the attributes of the chunk's measurements with `read` (within the budget made from
    /// `attribute_budget`, if any) and attach them.
    fn with_attributes(
        mut self,
        attribute_budget: Option<i64>,
        read: impl FnOnce(
            Vec<i64>,
            Option<Budget>,
        ) -> Result<Vec<(i64, MeasurementAttribute)>, EventError>,
    ) -> Result<ChunkRows, EventError> {
        let measurement_ids = sorted_unique(self.measurements.keys().copied().collect());
        if measurement_ids.is_empty() {
            return Ok(self);
        }
        let budget = attribute_budget.map(|limit| {
            let mut shown_by = HashMap::new();
            for measurement_id in self.instances.iter().filter_map(|i| i.measurement_id) {
                *shown_by.entry(measurement_id).or_default() += 1;
            }
            Budget {
                remaining: limit,
                shown_by,
            }
        });
        let attributes = read(measurement_ids, budget)?;
        // As many per measurement as on average (the lists are short: one allocation each
        // rather than a few).
        let expected = attributes.len() / self.measurements.len().max(1);
        for (measurement_id, attribute) in attributes {
            if let Some(measurement) = self.measurements.get_mut(&measurement_id) {
                let list = &mut measurement.measurement_attributes;
                if list.capacity() == 0 {
                    list.reserve(expected.max(1));
                }
                list.push(attribute);
            }
        }
        Ok(self)
    }
}

/// Few instances: one query for the instances and the rows they refer to.
fn read_together(
    connection: Connection<'_>,
    plans: &FewPlans,
    instance_ids: &[i64],
    attribute_budget: Option<i64>,
) -> Result<ChunkRows, EventError> {
    let mut chunk = ChunkRows::default();
    let query = &plans.instances_with_references;
    for_each_row(connection, query, instance_ids, "ti.instance", |id, row| {
        chunk.instances.push(instance_from(id, row)?);
        if let Some((id, part)) = row.joined("can.candidate", CANDIDATE_OFFSET)? {
            chunk
                .candidates
                .insert(id, Rc::new(candidate_from(id, &part)?));
        }
        if let Some((id, part)) = row.joined("ae.catalog_assessment", CATALOG_ASSESSMENT_OFFSET)? {
            let catalog_assessment = catalog_assessment_from(id, &part)?;
            chunk
                .catalog_assessments
                .insert(id, Rc::new(Shared::new(catalog_assessment)));
        }
        if let Some((id, part)) = row.joined("tcf.measurement", MEASUREMENT_OFFSET)? {
            chunk.measurements.insert(id, measurement_from(id, &part)?);
        }
        Ok(())
    })?;
    chunk.with_attributes(attribute_budget, |ids, budget| {
        read_attributes_together(connection, plans, ids, budget)
    })
}

/// Many instances: one query per table, each over the distinct ids the chunk refers to.
fn read_table_by_table(
    connection: Connection<'_>,
    plans: &ManyPlans,
    instance_ids: &[i64],
    attribute_budget: Option<i64>,
) -> Result<ChunkRows, EventError> {
    // Sized ahead (one row per id at most): a bulk pass fills these once per chunk.
    let mut chunk = ChunkRows {
        instances: Vec::with_capacity(instance_ids.len()),
        ..ChunkRows::default()
    };
    for_each_row_by_key(
        connection,
        &plans.instances,
        instance_ids,
        "ti.instance",
        |id, row| {
            chunk.instances.push(instance_from(id, row)?);
            Ok(())
        },
    )?;
    if chunk.instances.is_empty() {
        return Ok(chunk);
    }
    let instances = &chunk.instances;
    let ids = sorted_unique(instances.iter().map(|i| i.candidate_id).collect());
    chunk.candidates.reserve(ids.len());
    for_each_row_by_key(
        connection,
        &plans.candidates,
        &ids,
        "can.candidate",
        |id, row| {
            chunk
                .candidates
                .insert(id, Rc::new(candidate_from(id, row)?));
            Ok(())
        },
    )?;
    let ids = sorted_unique(instances.iter().map(|i| i.catalog_assessment_id).collect());
    chunk.catalog_assessments.reserve(ids.len());
    let table = "ae.catalog_assessment";
    for_each_row(
        connection,
        &plans.catalog_assessments,
        &ids,
        table,
        |id, row| {
            let catalog_assessment = catalog_assessment_from(id, row)?;
            chunk
                .catalog_assessments
                .insert(id, Rc::new(Shared::new(catalog_assessment)));
            Ok(())
        },
    )?;
    let ids = sorted_unique(instances.iter().filter_map(|i| i.measurement_id).collect());
    chunk.measurements.reserve(ids.len());
    if !ids.is_empty() {
        for_each_row_by_key(
            connection,
            &plans.measurements,
            &ids,
            "tcf.measurement",
            |id, row| {
                chunk.measurements.insert(id, measurement_from(id, row)?);
                Ok(())
            },
        )?;
    }
    chunk.with_attributes(attribute_budget, |ids, budget| {
        read_attributes_table_by_table(connection, plans, ids, budget)
    })
}

/// Give each instance its referenced rows (a WARNING for each that does not exist).
fn assemble(chunk: ChunkRows) -> Vec<TestInstance> {
    let measurements: HashMap<i64, Rc<Measurement>> = chunk
        .measurements
        .into_iter()
        .map(|(id, mut measurement)| {
            measurement
                .measurement_attributes
                .sort_unstable_by_key(|attribute| attribute.id);
            (id, Rc::new(measurement))
        })
        .collect();

    let mut instances = chunk.instances;
    instances.sort_unstable_by_key(|instance| instance.id);
    for instance in &mut instances {
        instance.candidate = chunk.candidates.get(&instance.candidate_id).cloned();
        if instance.candidate.is_none() {
            warn_missing(instance.id, "can.candidate", instance.candidate_id);
        }
        instance.catalog_assessment = chunk
            .catalog_assessments
            .get(&instance.catalog_assessment_id)
            .cloned();
        if instance.catalog_assessment.is_none() {
            warn_missing(
                instance.id,
                "ae.catalog_assessment",
                instance.catalog_assessment_id,
            );
        }
        if let Some(measurement_id) = instance.measurement_id {
            instance.measurement = measurements.get(&measurement_id).cloned();
            if instance.measurement.is_none() {
                warn_missing(instance.id, "tcf.measurement", measurement_id);
            }
        }
    }
    instances
}

fn instance_from(id: i64, row: &Row<'_>) -> Result<TestInstance, EventError> {
    Ok(TestInstance {
        id,
        external_id: row.opt(2)?,
        old_id: row.opt(3)?,
        score: row.opt(4)?,
        instance_status: row.req(5, "instance_status")?,
        candidate_id: row.req(6, "candidate_id")?,
        catalog_assessment_id: row.req(7, "catalog_assessment_id")?,
        measurement_id: row.opt(8)?,
        session_instance_id: row.opt(9)?,
        workflow_candidate_step_id: row.opt(10)?,
        created_at: row.req(11, "created_at")?,
        created_by: row.req(12, "created_by")?,
        updated_at: row.req(13, "updated_at")?,
        updated_by: row.req(14, "updated_by")?,
        candidate: None,
        catalog_assessment: None,
        measurement: None,
    })
}

fn candidate_from(id: i64, row: &Row<'_>) -> Result<Candidate, EventError> {
    Ok(Candidate {
        id,
        external_id: row.opt(2)?,
        user_id: row.req(3, "can.candidate.user_id")?,
        email: row.req(4, "can.candidate.email")?,
        first_name: row.opt(5)?,
        last_name: row.opt(6)?,
        middle_name: row.opt(7)?,
        phone_number: row.opt(8)?,
        country: row.opt(9)?,
        is_tnc_accepted: row.req(10, "can.candidate.is_tnc_accepted")?,
        is_recording_consent_accepted: row.opt(11)?,
        resume_file_id: row.opt(12)?,
        profile_pic_file_id: row.opt(13)?,
        cf: row.req(14, "cf")?,
    })
}

fn catalog_assessment_from(id: i64, row: &Row<'_>) -> Result<CatalogAssessment, EventError> {
    let assessment = match row.opt::<i64>(4)? {
        Some(assessment_id) => Some(Assessment {
            id: assessment_id,
            name: row.req(5, "ae.assessment.name")?,
            level: row.req(6, "ae.assessment.level")?,
            status: row.req(7, "ae.assessment.status")?,
            created_at: row.req(8, "ae.assessment.created_at")?,
            updated_at: row.req(9, "ae.assessment.updated_at")?,
        }),
        None => {
            let missing = row.req(2, "assessment_id")?;
            warn_missing_reference("ae.catalog_assessment", id, "ae.assessment", missing);
            None
        }
    };
    let catalog = match row.opt::<i64>(10)? {
        Some(catalog_id) => Some(Catalog {
            id: catalog_id,
            name: row.req(11, "ae.catalog.name")?,
            description: row.opt(12)?,
        }),
        None => {
            let missing = row.req(3, "catalog_id")?;
            warn_missing_reference("ae.catalog_assessment", id, "ae.catalog", missing);
            None
        }
    };
    Ok(CatalogAssessment {
        id,
        assessment,
        catalog,
    })
}

fn measurement_from(id: i64, row: &Row<'_>) -> Result<Measurement, EventError> {
    let time_taken: Option<IntervalText> = row.opt(3)?;
    Ok(Measurement {
        id,
        status: row.req(2, "tcf.measurement.status")?,
        time_taken: time_taken.map(|text| text.0),
        report_url: row.opt(4)?,
        report_file_id: row.opt(5)?,
        measured_at: row.req(6, "tcf.measurement.measured_at")?,
        measured_by: row.opt(7)?,
        form_instance_id: row.opt(8)?,
        measurement_attributes: Vec::new(),
    })
}

/// A row inside another service's data refers to a row that does not exist.
fn warn_missing_reference(table: &str, id: i64, reference: &str, reference_id: i64) {
    crate::errors::warn(format!(
        "{table} {id} refers to {reference} {reference_id}, which does not exist; events carry null there"
    ));
}

/// Few instances: the attributes with their reference rows in one query; each reference row is
/// built once (later rows share it).
fn read_attributes_together(
    connection: Connection<'_>,
    plans: &FewPlans,
    measurement_ids: Vec<i64>,
    budget: Option<Budget>,
) -> Result<Vec<(i64, MeasurementAttribute)>, EventError> {
    let mut scas: HashMap<i64, Rc<Shared<SectionConfigurationAttribute>>> = HashMap::new();
    let mut ordinals: HashMap<i64, Rc<Shared<Ordinal>>> = HashMap::new();
    let mut attributes = Vec::new();
    let query = &plans.measurement_attributes_with_references;
    for_each_attribute_row(connection, query, &measurement_ids, budget, |id, row| {
        let table = "tcf.section_configuration_attribute";
        let sca = match row.joined(table, SECTION_CONFIGURATION_ATTRIBUTE_OFFSET)? {
            Some((sca_id, part)) => Some(match scas.get(&sca_id) {
                Some(built) => Rc::clone(built),
                None => {
                    let built = Rc::new(Shared::new(sca_from(sca_id, &part)?));
                    scas.insert(sca_id, Rc::clone(&built));
                    built
                }
            }),
            None => None,
        };
        let ordinal = match row.joined("tcf.ordinal", ORDINAL_OFFSET)? {
            Some((ordinal_id, part)) => Some(match ordinals.get(&ordinal_id) {
                Some(built) => Rc::clone(built),
                None => {
                    let built = Rc::new(Shared::new(ordinal_from(ordinal_id, &part)?));
                    ordinals.insert(ordinal_id, Rc::clone(&built));
                    built
                }
            }),
            None => None,
        };
        let sca_id: i64 = row.req(12, "section_configuration_attribute_id")?;
        let ordinal_id: Option<i64> = row.opt(13)?;
        warn_missing_attribute_references(
            id,
            sca.is_none().then_some(sca_id),
            ordinal_id.filter(|_| ordinal.is_none()),
        );
        let measurement_id: i64 = row.req(2, "measurement_id")?;
        attributes.push((measurement_id, attribute_from(id, row, sca, ordinal)?));
        Ok(())
    })?;
    Ok(attributes)
}

thread_local! {
    /// Attributes per measurement in the last chunk read (`read_attributes_table_by_table`).
    static ATTRIBUTES_PER_MEASUREMENT: std::cell::Cell<usize> = const { std::cell::Cell::new(1) };
}

/// The most attributes per measurement reserved ahead (a chunk's attribute budget bounds what is
/// read anyway).
const MAX_EXPECTED_ATTRIBUTES: usize = 20;

/// Many instances: the attributes, then the reference rows they use, each read once.
fn read_attributes_table_by_table(
    connection: Connection<'_>,
    plans: &ManyPlans,
    measurement_ids: Vec<i64>,
    budget: Option<Budget>,
) -> Result<Vec<(i64, MeasurementAttribute)>, EventError> {
    struct Unresolved {
        measurement_id: i64,
        id: i64,
        attribute: MeasurementAttribute,
        sca_id: i64,
        ordinal_id: Option<i64>,
    }
    // Sized for as many attributes per measurement as the last chunk had (bounded), so that a
    // bulk pass does not grow (and copy) its list of attributes a dozen times per chunk.
    let expected = ATTRIBUTES_PER_MEASUREMENT
        .get()
        .min(MAX_EXPECTED_ATTRIBUTES);
    let mut unresolved = Vec::with_capacity(measurement_ids.len().saturating_mul(expected));
    let query = &plans.measurement_attributes;
    for_each_attribute_row(connection, query, &measurement_ids, budget, |id, row| {
        unresolved.push(Unresolved {
            measurement_id: row.req(2, "measurement_id")?,
            id,
            attribute: attribute_from(id, row, None, None)?,
            sca_id: row.req(12, "section_configuration_attribute_id")?,
            ordinal_id: row.opt(13)?,
        });
        Ok(())
    })?;
    if !measurement_ids.is_empty() {
        ATTRIBUTES_PER_MEASUREMENT.set(unresolved.len().div_ceil(measurement_ids.len()));
    }
    let mut scas = HashMap::new();
    let ids = sorted_unique(unresolved.iter().map(|a| a.sca_id).collect());
    let query = &plans.section_configuration_attributes;
    for_each_row(
        connection,
        query,
        &ids,
        "tcf.section_configuration_attribute",
        |id, row| {
            scas.insert(id, Rc::new(Shared::new(sca_from(id, row)?)));
            Ok(())
        },
    )?;
    let mut ordinals = HashMap::new();
    let ids = sorted_unique(unresolved.iter().filter_map(|a| a.ordinal_id).collect());
    if !ids.is_empty() {
        for_each_row(
            connection,
            &plans.ordinals,
            &ids,
            "tcf.ordinal",
            |id, row| {
                ordinals.insert(id, Rc::new(Shared::new(ordinal_from(id, row)?)));
                Ok(())
            },
        )?;
    }
    Ok(unresolved
        .into_iter()
        .map(|mut pending| {
            let sca = scas.get(&pending.sca_id).cloned();
            let ordinal = pending.ordinal_id.and_then(|id| ordinals.get(&id).cloned());
            warn_missing_attribute_references(
                pending.id,
                sca.is_none().then_some(pending.sca_id),
                pending.ordinal_id.filter(|_| ordinal.is_none()),
            );
            pending.attribute.section_configuration_attribute = sca;
            pending.attribute.ordinal = ordinal;
            (pending.measurement_id, pending.attribute)
        })
        .collect())
}

/// Warn about reference rows a measurement attribute names and that do not exist.
fn warn_missing_attribute_references(id: i64, sca_id: Option<i64>, ordinal_id: Option<i64>) {
    let table = "tcf.measurement_attribute";
    if let Some(missing) = sca_id {
        warn_missing_reference(table, id, "tcf.section_configuration_attribute", missing);
    }
    if let Some(missing) = ordinal_id {
        warn_missing_reference(table, id, "tcf.ordinal", missing);
    }
}

/// A section configuration attribute with its attribute and skill (14 columns, from `row`'s
/// offset).
fn sca_from(id: i64, row: &Row<'_>) -> Result<SectionConfigurationAttribute, EventError> {
    let attribute = match row.opt::<i64>(6)? {
        Some(attribute_id) => Some(Attribute {
            id: attribute_id,
            name: row.req(7, "tcf.attribute.name")?,
            attribute_type: row.req(8, "tcf.attribute.attribute_type")?,
            is_required: row.req(9, "tcf.attribute.is_required")?,
            min_value: row.req(10, "tcf.attribute.min_value")?,
            max_value: row.req(11, "tcf.attribute.max_value")?,
            skill: match (row.opt::<i64>(13)?, row.opt::<i64>(12)?) {
                (Some(skill_id), _) => Some(Skill {
                    id: skill_id,
                    name: row.req(14, "tcf.skill.name")?,
                }),
                (None, Some(missing)) => {
                    warn_missing_reference("tcf.attribute", attribute_id, "tcf.skill", missing);
                    None
                }
                (None, None) => None,
            },
        }),
        None => {
            let missing = row.req(5, "attribute_id")?;
            let table = "tcf.section_configuration_attribute";
            warn_missing_reference(table, id, "tcf.attribute", missing);
            None
        }
    };
    Ok(SectionConfigurationAttribute {
        id,
        kind: row.req(2, "tcf.section_configuration_attribute.type")?,
        recommended_value: row.opt(3)?,
        recommended_ordinal_id: row.opt(4)?,
        attribute,
    })
}

/// An ordinal (6 columns, from `row`'s offset).
fn ordinal_from(id: i64, row: &Row<'_>) -> Result<Ordinal, EventError> {
    Ok(Ordinal {
        id,
        label: row.req(2, "tcf.ordinal.label")?,
        value: row.req(3, "tcf.ordinal.value")?,
        sort_key: row.req(4, "tcf.ordinal.sort_key")?,
        min_value: row.opt(5)?,
        max_value: row.opt(6)?,
    })
}

/// A measurement attribute (its 13 columns) with the reference rows found for it.
fn attribute_from(
    id: i64,
    row: &Row<'_>,
    sca: Option<Rc<Shared<SectionConfigurationAttribute>>>,
    ordinal: Option<Rc<Shared<Ordinal>>>,
) -> Result<MeasurementAttribute, EventError> {
    Ok(MeasurementAttribute {
        id,
        numerical_score: row.opt(3)?,
        percentile_score: row.opt(4)?,
        remarks: row.opt(5)?,
        description: row.opt(6)?,
        additional_attributes: row.opt(7)?,
        created_at: row.req(8, "tcf.measurement_attribute.created_at")?,
        created_by: row.req(9, "tcf.measurement_attribute.created_by")?,
        updated_at: row.req(10, "tcf.measurement_attribute.updated_at")?,
        updated_by: row.req(11, "tcf.measurement_attribute.updated_by")?,
        section_configuration_attribute: sca,
        ordinal,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dense_ids_are_read_as_a_range_and_sparse_or_unordered_ones_as_an_array() {
        use super::dense_range;
        assert_eq!(dense_range(&[5, 6, 7, 8]), Some([5, 8]));
        assert_eq!(dense_range(&[1, 2, 4, 8]), Some([1, 8]), "8 keys for 4 ids");
        assert_eq!(dense_range(&[1, 2, 4, 9]), None, "9 keys for 4 ids");
        assert_eq!(dense_range(&[7]), Some([7, 7]));
        assert_eq!(dense_range(&[]), None);
        assert_eq!(dense_range(&[6, 5, 7, 8]), None, "not ascending");
        assert_eq!(dense_range(&[5, 5, 6, 7]), None, "not distinct");
        assert_eq!(dense_range(&[i64::MIN, i64::MAX]), None);
    }

    #[test]
    fn column_offsets_follow_the_column_lists() {
        // The readers take each table's columns by position: instance 14, candidate 14,
        // catalog assessment 12, measurement 8; attribute 13, section configuration attribute
        // 14, ordinal 6.
        assert_eq!(
            (
                CANDIDATE_OFFSET,
                CATALOG_ASSESSMENT_OFFSET,
                MEASUREMENT_OFFSET
            ),
            (14, 28, 40)
        );
        assert_eq!(column_count(measurement_columns!()), 8);
        assert_eq!(
            (SECTION_CONFIGURATION_ATTRIBUTE_OFFSET, ORDINAL_OFFSET),
            (13, 27)
        );
        assert_eq!(column_count(ordinal_columns!()), 6);
        assert_eq!(column_count("a"), 1);
        assert_eq!(column_count("a, b,\n c"), 3);
    }
}
