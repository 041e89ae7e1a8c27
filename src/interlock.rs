//! The commit-time interlock between a transaction that builds an instance's event from rows it
//! refers to and a transaction that changes one of those rows.
//!
//! The race it closes: T1 creates instance 790 of candidate 101 and builds its event at commit;
//! T2 changes candidate 101 and, at its commit, looks for the instances of candidate 101 to give
//! them updated events. While T1 has not committed, T2's lookup cannot see 790; if T1 read the
//! candidate before T2 committed, 790's last event would show the old candidate for good.
//!
//! So both take transaction-level advisory locks on the rows concerned, at commit, before they
//! read anything: a builder a shared lock on each row its new (or re-pointed) instances refer
//! to, a changer an exclusive lock on each row it changed. Whichever comes second waits until the
//! first has committed, and then reads with a new snapshot (the pass reads the latest committed
//! state, `rows::LatestSnapshots`): a changer's lookup then finds the builder's instance, or the
//! builder reads the changer's row. Instances reached only through bubble-up are committed and
//! visible to every lookup: they need no lock (their passes are ordered by the version lock).
//!
//! Keys: (the table's oid, the row's id modulo `BUCKETS`) for the instance-specific tables
//! (candidates, and measurements, which also stand for their attributes: an inserted or deleted
//! attribute has no row to lock before it exists); (the table's oid, `WHOLE_TABLE`) for
//! reference tables, which change rarely. Bucketing bounds the locks one transaction holds (a
//! bulk insert of any size takes at most `BUCKETS` per table), at the price of an occasional wait
//! for an unrelated row in the same bucket, for the length of a commit. Every transaction takes
//! its locks in one ascending sweep, so the interlock cannot deadlock with itself. Only sources
//! whose bubble-up is enabled take part: a reference table that is off costs nothing.

use crate::errors::EventError;
use crate::pending::Changes;
use crate::snapshot;
use crate::sources::{table_oid, EnabledSources, Key, Source};
use pgrx::prelude::*;
use std::collections::BTreeMap;

/// Buckets per instance-specific table.
const BUCKETS: i64 = 256;
/// The key of a whole reference table.
const WHOLE_TABLE: i32 = -1;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Mode {
    Shared,
    Exclusive,
}

/// The locks one pass takes, the strongest mode per key.
#[derive(Default, Debug)]
pub struct Sweep {
    keys: BTreeMap<(u32, i32), Mode>,
}

impl Sweep {
    /// The locks for one pass over `changes` (inside an SPI connection, reading as the snapshot
    /// role): exclusive for the changed rows, shared for the rows that the instances this
    /// transaction created or re-pointed refer to.
    pub fn for_changes(changes: &Changes, enabled: EnabledSources) -> Result<Sweep, EventError> {
        let mut sweep = Sweep::default();
        for (&key, ids) in &changes.touched {
            if let Some(source) = key_source(key) {
                sweep.add(source, ids, Mode::Exclusive);
            }
        }
        let written: Vec<i64> = {
            let mut ids = changes.created.clone();
            if let Some(updated) = changes.touched.get(&Key::Instance) {
                ids.extend_from_slice(updated);
            }
            crate::rows::sorted_unique(ids)
        };
        if written.is_empty() {
            return Ok(sweep);
        }
        let candidates_on = enabled.contains(Source::Candidate);
        let measurements_on =
            enabled.contains(Source::Measurement) || enabled.contains(Source::MeasurementAttribute);
        if candidates_on || measurements_on {
            let (candidates, measurements) = snapshot::references(&written)?;
            if candidates_on {
                sweep.add(Source::Candidate, &candidates, Mode::Shared);
            }
            if measurements_on {
                sweep.add(Source::Measurement, &measurements, Mode::Shared);
            }
        }
        for source in REFERENCE_SOURCES {
            if enabled.contains(source) {
                sweep.add(source, &[], Mode::Shared);
            }
        }
        Ok(sweep)
    }

    fn add(&mut self, source: Source, ids: &[i64], mode: Mode) {
        let class = table_oid(source);
        if class == pg_sys::InvalidOid {
            return; // the table does not exist: nothing to change or read there
        }
        let class = class.to_u32();
        let mut insert = |bucket: i32| {
            let entry = self.keys.entry((class, bucket)).or_insert(mode);
            *entry = (*entry).max(mode);
        };
        if REFERENCE_SOURCES.contains(&source) {
            insert(WHOLE_TABLE);
        } else {
            for id in ids {
                insert(id.rem_euclid(BUCKETS) as i32);
            }
        }
    }

    /// Take the locks, in ascending order of key; each is held until the transaction ends.
    pub fn acquire(self) {
        for ((class, bucket), mode) in self.keys {
            let function = match mode {
                Mode::Shared => pg_sys::pg_advisory_xact_lock_shared_int4,
                Mode::Exclusive => pg_sys::pg_advisory_xact_lock_int4,
            };
            // SAFETY: the SQL functions pg_advisory_xact_lock[_shared](int4, int4), called with
            // two int4 arguments; they return void.
            unsafe {
                pgrx::fcinfo::direct_function_call_as_datum(
                    function,
                    &[(class as i32).into_datum(), bucket.into_datum()],
                );
            }
        }
    }
}

/// The reference tables: one lock for each whole table.
const REFERENCE_SOURCES: [Source; 7] = [
    Source::CatalogAssessment,
    Source::Assessment,
    Source::Catalog,
    Source::SectionConfigurationAttribute,
    Source::Attribute,
    Source::Skill,
    Source::Ordinal,
];

/// The table whose rows a changed key names (measurements stand for their attributes); none
/// for instances (their passes are ordered by the version lock).
fn key_source(key: Key) -> Option<Source> {
    Some(match key {
        Key::Instance => return None,
        Key::Candidate => Source::Candidate,
        Key::Measurement => Source::Measurement,
        Key::CatalogAssessment => Source::CatalogAssessment,
        Key::Assessment => Source::Assessment,
        Key::Catalog => Source::Catalog,
        Key::SectionConfigurationAttribute => Source::SectionConfigurationAttribute,
        Key::Attribute => Source::Attribute,
        Key::Skill => Source::Skill,
        Key::Ordinal => Source::Ordinal,
    })
}
