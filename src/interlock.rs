//! The commit-time interlock between a transaction that builds an instance's event from rows it
//! refers to and a transaction that changes one of those rows.
//!
//! The race it closes: T1 creates instance 790 of candidate 101 and builds its event at commit;
//! T2 changes candidate 101 and, at its commit, looks for the instances of candidate 101 to give
//! them updated events. While T1 has not committed, T2's lookup cannot see 790; if T1 read the
//! candidate before T2 committed, 790's last event would show the old candidate for good.
//!
//! So both take transaction-level locks on the rows concerned, at commit, before they read
//! anything: a builder a shared lock on each row its new (or re-pointed) instances refer to, a
//! changer an exclusive lock on each row it changed. Whichever comes second waits until the
//! first has committed, and then reads with a new snapshot (the pass reads the latest committed
//! state, `rows::LatestSnapshots`): a changer's lookup then finds the builder's instance, or the
//! builder reads the changer's row. A changer holds its locks while it gives the instances it
//! found their events, so a creation waits for the end of a change's fan-out (taking them after
//! the fan-out and looking again was tried, and deadlocked with the version locks the fan-out
//! holds): at most `ae_events.fanout_inline_limit` instances; a larger fan-out is only recorded
//! under the locks and run after the commit (`fanout.rs`). Instances reached only through bubble-up are committed and
//! visible to every lookup: they need no lock (their passes are ordered by the version lock).
//!
//! Keys (`acquire` says what kind of lock): (the table's oid, the row's id modulo `BUCKETS`) for the instance-specific tables
//! (candidates, and measurements, which also stand for their attributes: an inserted or deleted
//! attribute has no row to lock before it exists); (the table's oid, `WHOLE_TABLE`) for
//! reference tables, which change rarely. Bucketing bounds the locks one transaction holds (a
//! bulk insert of any size takes at most `BUCKETS` per table), at the price of an occasional wait
//! for an unrelated row in the same bucket, for the length of a commit. Every pass takes its
//! locks in one ascending sweep before any other lock of the pass, so passes cannot deadlock on
//! them. Only sources whose bubble-up is enabled take part: a reference table that is off costs
//! nothing.

use crate::errors::EventError;
use crate::pending::Changes;
use crate::privileges::ExtensionCatalog;
use crate::rows::Connection;
use crate::snapshot;
use crate::sources::{table_oid, EnabledSources, Key, Source, SOURCES};
use pgrx::prelude::*;
use std::collections::BTreeSet;

/// Buckets per instance-specific table.
const BUCKETS: i64 = 128;
/// The key of a whole reference table.
const WHOLE_TABLE: u16 = u16::MAX;

/// The locks of one pass: shared for the rows that instances this transaction created or
/// re-pointed refer to, exclusive for the rows it changed.
#[derive(Default, Debug)]
pub struct Locks {
    referenced: BTreeSet<LockKey>,
    changed: BTreeSet<LockKey>,
}

/// (the table's oid, the bucket)
type LockKey = (u32, u16);

impl Locks {
    /// The locks for one pass over `changes` (reading as the snapshot role).
    pub fn for_changes(
        connection: Connection<'_>,
        changes: &Changes,
        enabled: EnabledSources,
    ) -> Result<Locks, EventError> {
        let mut locks = Locks::default();
        for (&key, ids) in &changes.touched {
            if let Some(source) = key_source(key) {
                add(&mut locks.changed, source, ids);
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
            return Ok(locks);
        }
        let candidates_on = enabled.contains(Source::Candidate);
        let measurements_on =
            enabled.contains(Source::Measurement) || enabled.contains(Source::MeasurementAttribute);
        if candidates_on || measurements_on {
            let (candidates, measurements) = snapshot::references(connection, &written)?;
            if candidates_on {
                add(&mut locks.referenced, Source::Candidate, &candidates);
            }
            if measurements_on {
                add(&mut locks.referenced, Source::Measurement, &measurements);
            }
        }
        for source in SOURCES.into_iter().filter(|source| source.is_reference()) {
            if enabled.contains(source) {
                add(&mut locks.referenced, source, &[]);
            }
        }
        Ok(locks)
    }

    /// Take the locks, before the pass reads anything, in one ascending sweep (so that two
    /// passes cannot deadlock on them): exclusive for changed rows, shared for the others.
    pub fn acquire(&self, catalog: &ExtensionCatalog) {
        for key in self.referenced.union(&self.changed) {
            let mode = if self.changed.contains(key) {
                pg_sys::ExclusiveLock
            } else {
                pg_sys::ShareLock
            };
            lock(catalog, *key, mode);
        }
    }
}

/// The key(s) of rows of `source`: one per bucket of the ids, or the whole table.
fn add(keys: &mut BTreeSet<LockKey>, source: Source, ids: &[i64]) {
    let class = table_oid(source);
    if class == pg_sys::InvalidOid {
        return; // the table does not exist: nothing to change or read there
    }
    let class = class.to_u32();
    if source.is_reference() {
        keys.insert((class, WHOLE_TABLE));
    } else {
        keys.extend(ids.iter().map(|id| (class, id.rem_euclid(BUCKETS) as u16)));
    }
}

/// Take one lock until the transaction ends. It is a heavyweight lock of PostgreSQL's lock
/// manager (deadlocks are detected) on an object tag that no SQL command can take: the class is
/// the outbox's oid, which no DDL locks as a catalog. Advisory locks would do the same, but any
/// role that can connect could take them and hold every commit up.
fn lock(catalog: &ExtensionCatalog, (class, bucket): LockKey, mode: u32) {
    let tag = pg_sys::LOCKTAG {
        // SAFETY: a backend global, set once the backend has connected.
        locktag_field1: unsafe { pg_sys::MyDatabaseId }.to_u32(),
        locktag_field2: catalog.lock_class().to_u32(),
        locktag_field3: class,
        locktag_field4: bucket,
        locktag_type: pg_sys::LockTagType::LOCKTAG_OBJECT as u8,
        locktag_lockmethodid: pg_sys::DEFAULT_LOCKMETHOD as u8,
    };
    // SAFETY: a transaction-level lock (released at commit or abort); waits, and raises an ERROR
    // on deadlock, like any lock PostgreSQL takes.
    unsafe { pg_sys::LockAcquire(&tag, mode as pg_sys::LOCKMODE, false, false) };
}

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
