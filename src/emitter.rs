//! The commit-time pass: turns the transaction's recorded changes into events. Created instances
//! get their created event (version 1); changes to the rows of existing instances bubble up to
//! those instances, which get one updated event each if their snapshot changed. Instances are
//! built and written chunk by chunk so that memory stays bounded however many instances one
//! transaction reaches.
//!
//! The pass writes as the extension's owner and reads the application's tables as
//! `ae_events_snapshot`, with `search_path` set to `pg_catalog, pg_temp` (`privileges.rs`).

use crate::capture::{require_trigger_on, TriggerResult};
use crate::digest::PayloadKey;
use crate::errors::{self, EventError};
use crate::interlock::Locks;
use crate::jsonb::Encoder;
use crate::outbox::{self, Event, EventKind, WriteContext};
use crate::payload::TestInstance;
use crate::privileges::{ExtensionCatalog, OwnerPrivileges, SnapshotReader};
use crate::redaction::Rules;
use crate::rows::{sorted_unique, Connection};
use crate::sources::SOURCES;
use crate::versions::{self, NewState};
use crate::{capture, fanout, isolation, lookup, pending, settings, snapshot};
use pgrx::prelude::*;
use std::panic::AssertUnwindSafe;
use std::rc::Rc;

/// Instances built and written per set-based pass.
const CHUNK_SIZE: usize = 1000;
/// Measurement attributes built and written per set-based pass, at most (unless one instance has
/// more): memory is bounded per attribute as well as per instance.
const CHUNK_ATTRIBUTES: i64 = 20_000;

/// Whether an updated event is written when the snapshot equals the last event's.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Unchanged {
    Skip,
    Emit,
}

/// Deferred constraint trigger: at commit, the first firing emits the events of every change
/// recorded in the transaction; the later firings find nothing left to do.
#[pg_trigger]
pub fn emit_pending_events<'a>(trigger: &'a PgTrigger<'a>) -> TriggerResult<'a> {
    require_trigger_on(trigger, "ae_events.emit_pending_events()", &SOURCES);
    emit_pending();
    Ok(None)
}

/// Emit the events of every change recorded and not yet emitted in this transaction.
pub fn emit_pending() {
    if !pending::has_unemitted() {
        return;
    }
    let catalog = ExtensionCatalog::current();
    let _privileges = OwnerPrivileges::enter(catalog.owner);
    let encoding = Encoding::in_force();
    // A DBA's trigger on the outbox could change sources: loop until nothing is left.
    loop {
        // At the commit of a single statement nothing has advanced the command counter since
        // that statement's changes (nor, later, since a DBA's trigger's), and the pass reads
        // with snapshots of the current command (`rows::LatestSnapshots`): advance it, so that
        // they see those changes.
        // SAFETY: what SPI does before each statement that is not read-only.
        unsafe { pg_sys::CommandCounterIncrement() };
        let changes = pending::take_unemitted();
        if changes.is_empty() {
            break;
        }
        isolation::require_tables();
        interlock_locks(&catalog, &changes).acquire(&catalog);
        in_chunks(
            &catalog,
            EventKind::Created,
            &changes.created,
            |connection, chunk, budget| {
                emit_created(connection, &catalog, &encoding, chunk, budget)
            },
        );
        // Re-inserted ids were created again: their created event resets the state.
        let gone = difference(&changes.deleted, &changes.created);
        guarded(EventKind::Updated, &gone, |connection| {
            versions::forget(connection, &gone)
        });
        if changes.touched.is_empty() {
            continue;
        }
        let touched = instances_to_update(&catalog, &changes.touched);
        // An instance created in this pass already shows the final state in its created
        // event; a deleted one has nothing to show.
        let updated = difference(&difference(&touched, &changes.created), &gone);
        updated_in_chunks(&catalog, &encoding, &updated, Unchanged::Skip);
    }
}

/// The instances whose updated events this pass writes: those the touched rows reach, unless
/// they are more than `ae_events.fanout_inline_limit`; then the changes are recorded as deferred
/// fan-outs (`fanout.rs`) and only the instances changed themselves are updated here. (The
/// interlock's exclusive locks are held, so the record is what a creation waits for, not the
/// fan-out.)
fn instances_to_update(
    catalog: &ExtensionCatalog,
    touched: &std::collections::BTreeMap<crate::sources::Key, Vec<i64>>,
) -> Vec<i64> {
    let limit = settings::fanout_inline_limit();
    let within = read_sources(catalog, |connection| {
        lookup::affected_instances_within(connection, touched, limit)
    });
    if let Some(instances) = within {
        return instances;
    }
    let recorded = Spi::connect_mut(|client| fanout::record(Connection::of(client), touched));
    if let Err(error) = recorded {
        error.report();
    }
    touched
        .get(&crate::sources::Key::Instance)
        .cloned()
        .unwrap_or_default()
}

/// Give each instance an updated event if its snapshot changed since its last event (for a
/// deferred fan-out's page, `fanout.rs`).
pub fn update_instances(instance_ids: &[i64]) -> usize {
    let catalog = ExtensionCatalog::current();
    let _privileges = OwnerPrivileges::enter(catalog.owner);
    let encoding = Encoding::in_force();
    updated_in_chunks(&catalog, &encoding, instance_ids, Unchanged::Skip)
}

/// The interlock's locks for this pass (`interlock.rs`).
fn interlock_locks(catalog: &ExtensionCatalog, changes: &pending::Changes) -> Locks {
    if changes.created.is_empty() && changes.touched.is_empty() {
        return Locks::default();
    }
    let enabled = capture::enabled_sources();
    read_sources(catalog, |connection| {
        Locks::for_changes(connection, changes, enabled)
    })
}

/// Read the application's tables in an SPI connection of its own, as `ae_events_snapshot`
/// (`privileges::SnapshotReader`); an error fails the transaction.
fn read_sources<T>(
    catalog: &ExtensionCatalog,
    read: impl FnOnce(Connection<'_>) -> Result<T, EventError>,
) -> T {
    let result = Spi::connect(|client| {
        let _reader = SnapshotReader::enter(catalog);
        read(Connection::of(client))
    });
    match result {
        Ok(value) => value,
        Err(error) => error.report(),
    }
}

/// Write an updated event for each instance that exists, even if its snapshot is unchanged;
/// returns how many were written. (For `ae_events.resend`.)
pub fn resend(instance_ids: Vec<i64>) -> i64 {
    let instance_ids = sorted_unique(instance_ids);
    let catalog = ExtensionCatalog::current();
    let _privileges = OwnerPrivileges::enter(catalog.owner);
    let encoding = Encoding::in_force();
    isolation::require_tables();
    updated_in_chunks(&catalog, &encoding, &instance_ids, Unchanged::Emit) as i64
}

/// The updated events of ascending instance ids, chunk by chunk (`in_chunks`); returns how many
/// were written.
fn updated_in_chunks(
    catalog: &ExtensionCatalog,
    encoding: &Encoding,
    instance_ids: &[i64],
    unchanged: Unchanged,
) -> usize {
    in_chunks(
        catalog,
        EventKind::Updated,
        instance_ids,
        |connection, chunk, budget| {
            emit_updated(connection, catalog, encoding, chunk, budget, unchanged)
        },
    )
}

/// Emit ascending instance ids chunk by chunk, so that memory stays bounded: chunks of at most
/// `CHUNK_SIZE` instances, each built within `CHUNK_ATTRIBUTES` attributes. A chunk beyond that
/// budget (the build gives up as soon as it sees so, `snapshot::build_within`) is cut into groups
/// by its instances' attribute counts (`snapshot::group_by_attributes`; an instance with more is
/// a group of its own), each emitted without a budget. Returns how many events were written.
fn in_chunks(
    catalog: &ExtensionCatalog,
    kind: EventKind,
    instance_ids: &[i64],
    mut emit: impl FnMut(Connection<'_>, &[i64], Option<i64>) -> Result<usize, EventError>,
) -> usize {
    let mut written = 0;
    for chunk in instance_ids.chunks(CHUNK_SIZE) {
        let budget = (chunk.len() > 1).then_some(CHUNK_ATTRIBUTES);
        if let Some(count) = guarded(kind, chunk, |connection| emit(connection, chunk, budget)) {
            written += count;
            continue;
        }
        let groups = read_sources(catalog, |connection| {
            snapshot::group_by_attributes(connection, chunk, CHUNK_ATTRIBUTES)
        });
        for group in groups {
            written += guarded(kind, group, |connection| emit(connection, group, None))
                .unwrap_or_default();
        }
    }
    written
}

/// Run one chunk's work in its own SPI connection and return what it returns; `None` when it
/// gave up over its attribute budget (`EventError::AttributeBudget`, having written nothing).
/// Any other error fails the transaction with a message naming the chunk's instances (or the one
/// whose row was being written).
fn guarded<T: Default>(
    kind: EventKind,
    chunk: &[i64],
    work: impl FnOnce(Connection<'_>) -> Result<T, EventError>,
) -> Option<T> {
    if chunk.is_empty() {
        return Some(T::default());
    }
    let mut work = Some(work);
    PgTryBuilder::new(AssertUnwindSafe(|| {
        // One SPI connection per chunk: what the chunk pallocs in SPI's procedure context
        // (digests, array elements, values read) is freed when the chunk ends, not at the end of
        // the pass, so memory stays bounded over any number of chunks.
        let result = Spi::connect_mut(|client| {
            let connection = Connection::of(client);
            work.take().map(|work| work(connection))
        });
        match result {
            Some(Ok(value)) => Some(value),
            Some(Err(EventError::AttributeBudget)) => None,
            Some(Err(error)) => error.report(),
            None => Some(T::default()),
        }
    }))
    .catch_others(|caught| {
        let what = match outbox::event_being_written() {
            Some((kind, instance_id)) => {
                format!(
                    "write the {} event of ti.instance {instance_id}",
                    kind.noun()
                )
            }
            None => format!(
                "write the {} events of ti.instance {}",
                kind.noun(),
                describe_ids(chunk)
            ),
        };
        errors::raise_naming(caught, &what)
    })
    .execute()
}

/// `left` without the ids in `right` (both ascending).
fn difference(left: &[i64], right: &[i64]) -> Vec<i64> {
    left.iter()
        .copied()
        .filter(|id| right.binary_search(id).is_err())
        .collect()
}

/// An instance's payload encoded as stored, with its digest.
struct Encoded {
    instance_id: i64,
    payload: Vec<u8>,
    digest: Vec<u8>,
}

/// The payload rules in force for this pass (cached per backend, `Rules::in_force`; read as the
/// owner; an error fails the transaction).
pub fn payload_rules() -> Rc<Rules> {
    match Rules::in_force() {
        Ok(rules) => rules,
        Err(error) => error.report(),
    }
}

/// What a pass encodes payloads with: the payload rules and the digest key in force (both cached
/// per backend; read as the owner; an error fails the transaction). The key is read when a
/// payload is first digested, so that a pass that writes no event does not need it.
struct Encoding {
    rules: Rc<Rules>,
    key: std::cell::OnceCell<Rc<PayloadKey>>,
}

impl Encoding {
    fn in_force() -> Encoding {
        Encoding {
            rules: payload_rules(),
            key: std::cell::OnceCell::new(),
        }
    }

    fn digest(&self, payload: &[u8]) -> Result<Vec<u8>, EventError> {
        let key = match self.key.get() {
            Some(key) => key,
            None => {
                let key = PayloadKey::in_force()?;
                self.key.get_or_init(|| key)
            }
        };
        key.digest(payload)
    }
}

/// Encode a snapshot as stored: binary jsonb with the payload rules applied.
pub fn encode_one(
    encoder: &mut Encoder,
    rules: &Rules,
    snapshot: &TestInstance,
) -> Result<Vec<u8>, EventError> {
    let container = encoder
        .encode(snapshot)
        .map_err(|error| EventError::BadValue {
            what: format!("the payload of ti.instance {}: {error}", snapshot.id),
        })?
        .to_vec();
    rules
        .apply(container)
        .map_err(|error| error.context(format!("ti.instance {}", snapshot.id)))
}

fn encode(snapshots: Vec<TestInstance>, encoding: &Encoding) -> Result<Vec<Encoded>, EventError> {
    let mut encoder = Encoder::default();
    snapshots
        .into_iter()
        .map(|snapshot| {
            let payload = encode_one(&mut encoder, &encoding.rules, &snapshot)?;
            let digest = encoding.digest(&payload)?;
            Ok(Encoded {
                instance_id: snapshot.id,
                payload,
                digest,
            })
        })
        .collect()
}

fn write_context(catalog: &ExtensionCatalog) -> WriteContext {
    WriteContext {
        outbox: catalog.outbox(),
        id_sequence: catalog.id_sequence,
        // SAFETY: reads the clock.
        occurred_at: unsafe { pg_sys::GetCurrentTimestamp() },
        notify: settings::notify_mode(),
        channel: settings::channel(),
        notify_payload_budget: settings::notify_payload_budget(),
        notify_interval: settings::notify_interval(),
    }
}

/// Write the events, then record their versions.
fn write(
    connection: Connection<'_>,
    catalog: &ExtensionCatalog,
    kind: EventKind,
    events: Vec<(Encoded, i32)>,
) -> Result<usize, EventError> {
    if events.is_empty() {
        return Ok(0);
    }
    let mut states = Vec::with_capacity(events.len());
    let events: Vec<Event> = events
        .into_iter()
        .map(|(encoded, version)| {
            states.push(NewState {
                instance_id: encoded.instance_id,
                version,
                digest: encoded.digest,
            });
            Event {
                kind,
                instance_id: encoded.instance_id,
                snapshot_version: version,
                payload: encoded.payload,
            }
        })
        .collect();
    outbox::write(connection, write_context(catalog), events)?;
    let rows = match kind {
        EventKind::Created => versions::Rows::MaybeMissing,
        // emit_updated locked (and if need be added) every row first.
        EventKind::Updated => versions::Rows::Locked,
    };
    versions::record(connection, &states, rows)?;
    Ok(states.len())
}

/// The instances' snapshots, read as `ae_events_snapshot`.
fn read_snapshots(
    connection: Connection<'_>,
    catalog: &ExtensionCatalog,
    instance_ids: &[i64],
    attribute_budget: Option<i64>,
) -> Result<Vec<TestInstance>, EventError> {
    let _reader = SnapshotReader::enter(catalog);
    snapshot::build_within(connection, instance_ids, attribute_budget)
}

fn emit_created(
    connection: Connection<'_>,
    catalog: &ExtensionCatalog,
    encoding: &Encoding,
    instance_ids: &[i64],
    attribute_budget: Option<i64>,
) -> Result<usize, EventError> {
    let snapshots = read_snapshots(connection, catalog, instance_ids, attribute_budget)?;
    let encoded = encode(snapshots, encoding)?;
    let events = encoded.into_iter().map(|encoded| (encoded, 1)).collect();
    write(connection, catalog, EventKind::Created, events)
}

/// Lock the instances' versions, then read their snapshots (so that they include what a
/// concurrent transaction holding the lock committed) and write those that changed.
fn emit_updated(
    connection: Connection<'_>,
    catalog: &ExtensionCatalog,
    encoding: &Encoding,
    instance_ids: &[i64],
    attribute_budget: Option<i64>,
    unchanged: Unchanged,
) -> Result<usize, EventError> {
    let mut states = versions::lock(connection, instance_ids)?;
    let snapshots = read_snapshots(connection, catalog, instance_ids, attribute_budget)?;
    let encoded = encode(snapshots, encoding)?;
    let mut events = Vec::with_capacity(encoded.len());
    for encoded in encoded {
        let Some(state) = states.remove(&encoded.instance_id) else {
            return Err(EventError::internal(format!(
                "ti.instance {} has no locked state",
                encoded.instance_id
            )));
        };
        if unchanged == Unchanged::Skip {
            if let Some(recorded) = &state.digest {
                if crate::digest::same_payload(recorded, &encoded.payload, &encoded.digest)? {
                    continue;
                }
            }
        }
        events.push((encoded, state.version + 1));
    }
    // What is left was not built: the instance no longer exists (deleted concurrently).
    let vanished = sorted_unique(states.into_keys().collect());
    versions::forget(connection, &vanished)?;
    write(connection, catalog, EventKind::Updated, events)
}

/// "789" or "1, 2, 3", or "1, 2, 3, ... (1000 instances)" for long lists.
fn describe_ids(ids: &[i64]) -> String {
    const SHOWN: usize = 5;
    let shown: Vec<String> = ids.iter().take(SHOWN).map(i64::to_string).collect();
    if ids.len() > SHOWN {
        format!("{}, ... ({} instances)", shown.join(", "), ids.len())
    } else {
        shown.join(", ")
    }
}
