//! On-demand snapshots and replay: `ae_events.snapshot(instance_id)` returns what an event
//! would carry now, and `ae_events.resend(instance_ids)` writes updated events with the current
//! snapshots, for a relay that lost data.

use crate::emitter;
use crate::errors::{self, EventError};
use crate::jsonb::Encoder;
use crate::jsonb::StoredJsonb;
use crate::privileges::{ExtensionCatalog, OwnerPrivileges};
use crate::rows::Connection;
use crate::snapshot;
use pgrx::prelude::*;

/// The current snapshot of an instance, the same jsonb (to the byte) that an event written now
/// would carry, payload rules applied; NULL when the instance does not exist. Reads the rows
/// with the caller's privileges.
#[pg_extern(volatile, strict, parallel_unsafe)]
fn snapshot(instance_id: i64) -> Option<StoredJsonb> {
    let action = format!("build the snapshot of ti.instance {instance_id}");
    let encoded = PgTryBuilder::new(|| {
        // The rules are the owner's to read; the rows are read with the caller's privileges.
        let rules = {
            let catalog = ExtensionCatalog::current();
            let _privileges = OwnerPrivileges::enter(catalog.owner);
            emitter::payload_rules()
        };
        Spi::connect(|client| {
            let connection = Connection::of(client);
            let Some(snapshot) = snapshot::build(connection, &[instance_id])?.pop() else {
                return Ok(None);
            };
            emitter::encode_one(&mut Encoder::default(), &rules, &snapshot).map(Some)
        })
        .unwrap_or_else(|error: EventError| error.report())
    })
    // A caller without SELECT on a source table, say: the error says what was asked.
    .catch_others(|caught| errors::raise_naming(caught, &action))
    .execute();
    // Built outside the SPI connection, whose memory is freed when it ends.
    encoded.map(|container| StoredJsonb::from_container(&container))
}

/// Write an `ae.test_instance.updated` event with the current snapshot of each instance, even
/// if it is unchanged (the next version each); ids that do not exist are skipped. Returns the
/// number of events written; they commit with the calling transaction.
#[pg_extern(volatile, strict, parallel_unsafe)]
fn resend(instance_ids: Array<'_, i64>) -> i64 {
    let mut ids = Vec::with_capacity(instance_ids.len());
    for id in instance_ids.iter() {
        match id {
            Some(id) => ids.push(id),
            None => errors::raise(
                PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
                "resend() needs instance ids; the array holds a NULL".to_owned(),
                None,
            ),
        }
    }
    emitter::resend(ids)
}
