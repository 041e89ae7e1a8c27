//! The notification of shared/contract/events.md §4: JSON text with its keys in the contract's order, the payload
//! embedded when the whole message stays under PostgreSQL's 8000-byte limit.

use pgrx::prelude::*;
use serde::Serialize;
use std::cell::Cell;

/// PostgreSQL rejects a notification payload of this many bytes or more.
pub const NOTIFY_PAYLOAD_LIMIT: usize = 8000;

/// The fields that every message carries, in the contract's order (`payload` follows them).
#[derive(Serialize)]
pub struct Envelope<'a> {
    pub id: i64,
    pub event_id: &'a str,
    pub subscription_key: &'a str,
    pub event_type: &'a str,
    pub aggregate_type: &'a str,
    pub aggregate_id: i64,
    pub snapshot_version: i32,
    pub occurred_at: &'a str,
}

/// The message text: the envelope, then `"payload": <payload>` when a payload is given and the
/// message fits, otherwise `"payload_omitted": true` (the relay reads the outbox row).
pub fn message(envelope: &Envelope<'_>, payload_json: Option<&str>) -> String {
    let mut text = serde_json::to_string(envelope).unwrap_or_default();
    text.pop(); // the closing brace; the payload (or its absence) goes last
    const PAYLOAD_KEY: &str = ",\"payload\":";
    match payload_json {
        Some(payload)
            if text.len() + PAYLOAD_KEY.len() + payload.len() + 1 < NOTIFY_PAYLOAD_LIMIT =>
        {
            text.push_str(PAYLOAD_KEY);
            text.push_str(payload);
            EMBEDDED_BYTES.set(EMBEDDED_BYTES.get().saturating_add(payload.len() as u64));
        }
        _ => text.push_str(",\"payload_omitted\":true"),
    }
    text.push('}');
    text
}

thread_local! {
    /// Payload bytes the current transaction's notifications carry so far.
    static EMBEDDED_BYTES: Cell<u64> = const { Cell::new(0) };
}

/// Whether the transaction's notifications may still carry payloads (`ae_events.notify_payload_budget`).
/// PostgreSQL keeps every notification of a transaction in memory until commit and then copies it
/// into the cluster-wide queue, so a bulk insert with payloads in every message would cost memory
/// and queue space in proportion to its size.
pub fn budget_allows(budget: Option<u64>) -> bool {
    budget.is_none_or(|budget| EMBEDDED_BYTES.get() < budget)
}

/// Called when the transaction ends (`lib.rs`): the next one's payload budget starts empty, and
/// a committed wake-up starts this backend's quiet interval.
pub fn transaction_ended(committed: bool) {
    EMBEDDED_BYTES.set(0);
    if ANNOUNCED_IN.take().is_some() && committed {
        LAST_WAKE_UP.set(Some(std::time::Instant::now()));
    }
}

thread_local! {
    /// The subtransaction that queued this transaction's wake-up (`notify = reference`), if any.
    static ANNOUNCED_IN: Cell<Option<pg_sys::SubTransactionId>> = const { Cell::new(None) };
    /// When this backend last committed a wake-up.
    static LAST_WAKE_UP: Cell<Option<std::time::Instant>> = const { Cell::new(None) };
}

/// With `notify = reference` a notification only wakes listeners up, and one per commit
/// serializes commits (PostgreSQL takes a cluster-wide lock for it): a transaction announces its
/// events once, and not at all within `interval` of this backend's last committed wake-up. A
/// listener that polls once more shortly after each notification (ae-relay does, 25 ms later)
/// misses nothing: a skipped commit is one that came within `interval` after one it was woken
/// for. Returns whether to send.
pub fn wake_up_due(interval: std::time::Duration) -> bool {
    if ANNOUNCED_IN.get().is_some() {
        return false;
    }
    if LAST_WAKE_UP
        .get()
        .is_some_and(|last| last.elapsed() < interval)
    {
        return false;
    }
    // SAFETY: plain read of the transaction state.
    ANNOUNCED_IN.set(Some(unsafe { pg_sys::GetCurrentSubTransactionId() }));
    true
}

/// Called when a subtransaction rolls back (`lib.rs`): it takes its queued notifications with
/// it, so if it (or one inside it) queued the wake-up, the transaction's later events must
/// announce again. Subtransaction ids grow, and every id at or above the aborted one belongs to
/// it.
pub fn subtransaction_aborted(aborted: pg_sys::SubTransactionId) {
    if ANNOUNCED_IN
        .get()
        .is_some_and(|announced| announced >= aborted)
    {
        ANNOUNCED_IN.set(None);
    }
}

/// Queue the notification; PostgreSQL delivers it when the transaction commits.
pub fn send(channel: &str, message: &str) {
    // SAFETY: pg_notify takes two text arguments and returns void.
    unsafe {
        pgrx::fcinfo::direct_function_call_as_datum(
            pg_sys::pg_notify,
            &[channel.into_datum(), message.into_datum()],
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope() -> Envelope<'static> {
        Envelope {
            id: 1,
            event_id: "00000000-0000-4000-8000-000000000000",
            subscription_key: "ae.test_instance.created",
            event_type: "ae_test_instance_created",
            aggregate_type: "test_instance",
            aggregate_id: 789,
            snapshot_version: 1,
            occurred_at: "2023-11-05T10:00:00Z",
        }
    }

    #[test]
    fn keys_follow_the_contract_order() {
        let text = message(&envelope(), Some("{\"id\":789}"));
        let keys = [
            "\"id\"",
            "\"event_id\"",
            "\"subscription_key\"",
            "\"event_type\"",
            "\"aggregate_type\"",
            "\"aggregate_id\"",
            "\"snapshot_version\"",
            "\"occurred_at\"",
            "\"payload\"",
        ];
        let positions: Vec<usize> = keys.iter().map(|key| text.find(key).unwrap()).collect();
        assert!(positions.windows(2).all(|pair| pair[0] < pair[1]), "{text}");
        assert!(text.ends_with(",\"payload\":{\"id\":789}}"), "{text}");
    }

    #[test]
    fn payload_left_out_at_the_limit_and_in_reference_mode() {
        let head = message(&envelope(), None);
        assert!(head.ends_with(",\"payload_omitted\":true}"));
        let envelope_len = message(&envelope(), Some("0")).len() - 1;
        let fits = "1".repeat(NOTIFY_PAYLOAD_LIMIT - 1 - envelope_len);
        let full = message(&envelope(), Some(&fits));
        assert_eq!(full.len(), NOTIFY_PAYLOAD_LIMIT - 1);
        assert!(full.contains("\"payload\":"));
        let too_big = format!("{fits}1");
        let omitted = message(&envelope(), Some(&too_big));
        assert!(
            omitted.contains("\"payload_omitted\":true") && omitted.len() < NOTIFY_PAYLOAD_LIMIT
        );
    }
}
