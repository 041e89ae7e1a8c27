//! ae_events: enriched `ae.test_instance.created` and `ae.test_instance.updated` events, built
//! in the changing transaction, written to `ae_events.outbox` and announced with `pg_notify`.
//!
//! This file only wires the modules and the SQL files together. The modules are grouped by
//! stage of the pipeline (docs/architecture.md); a module uses only modules of its own group or
//! of the groups above it (tests/architecture.rs).

use pgrx::prelude::*;

// Shared infrastructure: errors and the `ae_events:` prefix, the GUCs, PostgreSQL's binary
// jsonb, SPI plans and typed rows, payload digests, time formats, who the pass runs as, the
// configuration tables' per-backend caches.
mod config_cache;
mod digest;
mod errors;
mod jsonb;
mod privileges;
mod rows;
mod settings;
mod timefmt;

// The model: which tables bubble up, and what their keys identify; what may run while the pass
// reads them (cross-owner isolation).
mod isolation;
mod sources;

// Capture: immediate row triggers record changes in the transaction's memory.
mod capture;
mod pending;

// Build: changed rows -> instance ids -> rows -> payloads (encoded as jsonb, rules applied);
// the catalog: each payload's JSON Schema and the webhooks' OpenAPI, derived from its types.
mod alerts;
mod catalog;
mod lookup;
mod payload;
mod redaction;
mod snapshot;

// Write: the commit-time pass: interlock, outbox, versions, notifications.
mod emitter;
mod eventid;
mod fanout;
mod interlock;
mod notification;
mod outbox;
mod versions;

// Install and on demand: attach()/detach(), snapshot()/resend(), run_fanouts().
mod attach;
mod fanout_runner;
mod replay;

// Deliver: webhook endpoints' secrets and egress keys (the endpoints and delivery state are
// SQL, served by ae-relay).
mod egress_keys;
mod payload_size;
mod secrets;

::pgrx::pg_module_magic!(name, version);

extension_sql_file!("../sql/src/outbox.sql", name = "outbox", bootstrap);
extension_sql_file!(
    "../sql/src/instance_state.sql",
    name = "instance_state",
    requires = [
        config_cache::configuration_changed,
        secrets::strong_random_bytes
    ]
);
extension_sql_file!(
    "../sql/src/bubble_up.sql",
    name = "bubble_up",
    requires = [config_cache::configuration_changed]
);
extension_sql_file!("../sql/src/consumers.sql", name = "consumers");
extension_sql_file!(
    "../sql/src/analytics.sql",
    name = "analytics",
    requires = ["consumers"]
);
extension_sql_file!(
    "../sql/src/payload_rules.sql",
    name = "payload_rules",
    requires = [
        redaction::check_payload_rule,
        config_cache::configuration_changed
    ]
);
extension_sql_file!(
    "../sql/src/endpoints.sql",
    name = "endpoints",
    requires = [
        "consumers",
        "analytics",
        secrets::strong_random_bytes,
        egress_keys::check_client_certificate,
        egress_keys::ed25519_public_key,
        "payload_size"
    ]
);
extension_sql_file!(
    "../sql/src/alerts.sql",
    name = "alerts",
    requires = ["endpoints"]
);
extension_sql_file!(
    "../sql/src/fanout.sql",
    name = "fanout",
    requires = ["consumers", fanout_runner::run_fanouts]
);
extension_sql_file!(
    "../sql/src/test_events.sql",
    name = "test_events",
    requires = ["endpoints"]
);
extension_sql_file!(
    "../sql/src/instance_events.sql",
    name = "instance_events",
    requires = ["consumers", "analytics"]
);
extension_sql_file!(
    "../sql/src/catalog.sql",
    name = "catalog",
    requires = [
        "consumers",
        "payload_rules",
        "test_events",
        catalog::_event_schema,
        catalog::_openapi
    ]
);
extension_sql_file!(
    "../sql/src/privacy.sql",
    name = "privacy",
    requires = ["consumers", "endpoints", settings::_payload_retention]
);
extension_sql_file!(
    "../sql/src/console.sql",
    name = "console",
    requires = ["endpoints", "test_events", "analytics", "privacy"]
);
extension_sql_file!("../sql/src/install.sql", name = "install", finalize);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    settings::register();
    config_cache::register_invalidation_callback();
    isolation::register_hooks();
    capture::register_utility_hook();
    // SAFETY: the callbacks are plain functions that live as long as the library.
    unsafe {
        pg_sys::RegisterXactCallback(Some(on_transaction_end), std::ptr::null_mut());
        pg_sys::RegisterSubXactCallback(Some(on_subtransaction_end), std::ptr::null_mut());
    }
}

/// What a rolled-back subtransaction takes with it (its recorded changes, a wake-up it queued):
/// one callback for both, as for the transaction's end.
#[pg_guard]
unsafe extern "C-unwind" fn on_subtransaction_end(
    event: pg_sys::SubXactEvent::Type,
    my_subid: pg_sys::SubTransactionId,
    _parent_subid: pg_sys::SubTransactionId,
    _arg: *mut std::ffi::c_void,
) {
    if event == pg_sys::SubXactEvent::SUBXACT_EVENT_ABORT_SUB {
        pending::forget_subtransaction(my_subid);
        notification::subtransaction_aborted(my_subid);
    }
}

/// What a transaction's end resets, wherever it lives (capture's records, the notification
/// budget): one callback for both, so that neither module depends on the other.
#[pg_guard]
unsafe extern "C-unwind" fn on_transaction_end(
    event: pg_sys::XactEvent::Type,
    _arg: *mut std::ffi::c_void,
) {
    use pg_sys::XactEvent::*;
    if matches!(
        event,
        XACT_EVENT_COMMIT | XACT_EVENT_ABORT | XACT_EVENT_PREPARE
    ) {
        pending::forget_transaction();
        notification::transaction_ended(event == XACT_EVENT_COMMIT);
        privileges::forget_readers();
    }
}
