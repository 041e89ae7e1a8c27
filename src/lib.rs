//! ae_events: enriched `ae.test_instance.created` and `ae.test_instance.updated` events, built
//! in the changing transaction, written to `ae_events.outbox` and announced with `pg_notify`.
//!
//! This file only wires the modules and the SQL files together; each module owns one concern.

use pgrx::prelude::*;

mod attach;
mod emitter;
mod errors;
mod interlock;
mod jsonb;
mod notification;
mod outbox;
mod payload;
mod pending;
mod privileges;
mod redaction;
mod replay;
mod rows;
mod settings;
mod snapshot;
mod sources;
mod timefmt;
mod versions;

::pgrx::pg_module_magic!(name, version);

extension_sql_file!("../sql/outbox.sql", name = "outbox", bootstrap);
extension_sql_file!("../sql/instance_state.sql", name = "instance_state");
extension_sql_file!("../sql/bubble_up.sql", name = "bubble_up");
extension_sql_file!("../sql/consumers.sql", name = "consumers");
extension_sql_file!(
    "../sql/analytics.sql",
    name = "analytics",
    requires = ["consumers"]
);
extension_sql_file!(
    "../sql/payload_rules.sql",
    name = "payload_rules",
    requires = [redaction::check_payload_rule]
);
extension_sql_file!("../sql/install.sql", name = "install", finalize);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    settings::register();
    pending::register_transaction_callbacks();
}

/// Required by `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec![]
    }
}
