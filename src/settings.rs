//! The settings of shared/contract/events.md §5. Each is validated by PostgreSQL when it is set: `notify` is an
//! enum, `channel` has a check hook. Every one may only be changed by a superuser (or the DBA
//! through `ALTER SYSTEM`, `ALTER DATABASE ... SET`, `ALTER ROLE ... SET`): the application's
//! role must not turn events off, move them to another channel, or make notifications carry
//! payloads (which any role that can connect may LISTEN to).

use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use pgrx::prelude::*;
use std::ffi::{CStr, CString};

#[derive(Clone, Copy, PartialEq, Eq, Debug, PostgresGucEnum)]
pub enum NotifyMode {
    /// The whole message of §4, payload included when it fits.
    #[name = c"full"]
    Full,
    /// The message without the payload: relays read the row from the outbox.
    #[name = c"reference"]
    Reference,
    /// No NOTIFY at all; the outbox only.
    #[name = c"off"]
    Off,
}

static ENABLED: GucSetting<bool> = GucSetting::<bool>::new(true);
static CHANNEL: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"ae_events"));
static NOTIFY: GucSetting<NotifyMode> = GucSetting::<NotifyMode>::new(NotifyMode::Reference);
/// In kB; -1 means no limit.
static NOTIFY_PAYLOAD_BUDGET: GucSetting<i32> = GucSetting::<i32>::new(1024);
/// In ms: with notify = reference, no wake-up within this long of the backend's last one.
static NOTIFY_INTERVAL: GucSetting<i32> = GucSetting::<i32>::new(5);
/// Instances a transaction's changes may reach before their updated events are deferred.
static FANOUT_INLINE_LIMIT: GucSetting<i32> = GucSetting::<i32>::new(1000);
/// In minutes; -1: payloads are kept until their events are pruned (`prune()`, docs/privacy.md).
static PAYLOAD_RETENTION: GucSetting<i32> = GucSetting::<i32>::new(-1);

pub fn register() {
    GucRegistry::define_bool_guc(
        c"ae_events.enabled",
        c"Emit created and updated events for changes to ti.instance and its source tables.",
        c"When off, changes yield no event at all. Only a superuser may change it.",
        &ENABLED,
        GucContext::Suset,
        GucFlags::default(),
    );
    // SAFETY: the check hook is a plain function with the signature PostgreSQL expects.
    unsafe {
        GucRegistry::define_string_guc_with_hooks(
            c"ae_events.channel",
            c"The channel that pg_notify announces events on.",
            c"A non-empty name shorter than 64 bytes, as LISTEN accepts it. Only a superuser may change it.",
            &CHANNEL,
            GucContext::Suset,
            GucFlags::default(),
            Some(check_channel),
            None,
            None,
        );
    }
    GucRegistry::define_enum_guc(
        c"ae_events.notify",
        c"What the notification carries: reference (default), full or off.",
        c"reference: a wake-up without the payload; full: the message with the payload when it fits \
          (any role that can connect may LISTEN); off: no NOTIFY. Only a superuser may change it.",
        &NOTIFY,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"ae_events.notify_payload_budget",
        c"Payload bytes that one transaction's notifications may carry (notify = full).",
        c"Once a transaction's notifications carry this much payload, its further notifications \
          omit the payload (\"payload_omitted\": true) and relays read the outbox row. Bounds the \
          memory and notification-queue space of bulk inserts. -1: no limit. Only a superuser may \
          change it.",
        &NOTIFY_PAYLOAD_BUDGET,
        -1,
        i32::MAX,
        GucContext::Suset,
        GucFlags::UNIT_KB,
    );
    GucRegistry::define_int_guc(
        c"ae_events.notify_interval",
        c"With notify = reference: how long after a backend's last wake-up its commits send none.",
        c"A reference notification only wakes listeners up, and one per commit serializes commits. \
          A transaction sends at most one, and none within this interval of the backend's last \
          committed one; listeners poll once more shortly after each notification (ae-relay 25 ms \
          later). 0: one per transaction that writes events. Only a superuser may change it.",
        &NOTIFY_INTERVAL,
        0,
        60_000,
        GucContext::Suset,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"ae_events.fanout_inline_limit",
        c"Instances that the changes of one transaction may reach before their updated events are deferred.",
        c"A change to a candidate, measurement or reference row whose instances number more than \
          this is recorded in ae_events.fanouts at commit, and ae_events.run_fanouts() (run by the \
          relays) writes the updated events afterwards, a page at a time: the commit, and the \
          instance creations that wait for it, stay short. 0 defers every such change. Only a \
          superuser may change it.",
        &FANOUT_INLINE_LIMIT,
        0,
        i32::MAX,
        GucContext::Suset,
        GucFlags::default(),
    );
    // An interval as PostgreSQL's own time settings take one ('30d', '12h', '90min'), checked
    // when it is set; a superuser's, like the others: it decides how long personal data stays.
    GucRegistry::define_int_guc(
        c"ae_events.payload_retention",
        c"How long event payloads are kept: ae_events.prune() replaces older ones by JSON null.",
        c"Only once every enabled endpoint has delivered or dead-lettered the event and every \
          consumer has acknowledged it; the event's metadata and delivery history stay. -1 (the \
          default): payloads are kept until their events are pruned. Only a superuser may change it.",
        &PAYLOAD_RETENTION,
        -1,
        i32::MAX,
        GucContext::Suset,
        GucFlags::UNIT_MIN,
    );
    // SAFETY: called from _PG_init with a static, NUL-terminated prefix.
    unsafe { pg_sys::MarkGUCPrefixReserved(c"ae_events".as_ptr()) };
}

/// A PostgreSQL setting changed for a scope of the extension's own (its GUC nest level); `end`
/// restores it. If an error aborts the transaction first, PostgreSQL restores it.
pub struct ScopedSetting {
    nest_level: i32,
}

impl ScopedSetting {
    pub fn set(name: &CStr, value: &CStr) -> ScopedSetting {
        Self::set_many(&[(name, value)])
    }

    /// Several settings in one scope.
    pub fn set_many(settings: &[(&CStr, &CStr)]) -> ScopedSetting {
        // SAFETY: a new GUC nest level, popped by `end` (or by transaction abort);
        // set_config_option copies its arguments.
        unsafe {
            let nest_level = pg_sys::NewGUCNestLevel();
            for (name, value) in settings {
                pg_sys::set_config_option(
                    name.as_ptr(),
                    value.as_ptr(),
                    pg_sys::GucContext::PGC_USERSET,
                    pg_sys::GucSource::PGC_S_SESSION,
                    pg_sys::GucAction::GUC_ACTION_SAVE,
                    true,
                    0,
                    false,
                );
            }
            ScopedSetting { nest_level }
        }
    }

    pub fn end(self) {
        // SAFETY: pops the nest level `set` pushed, restoring the previous value.
        unsafe { pg_sys::AtEOXact_GUC(true, self.nest_level) };
    }

    /// Run `work` with `settings` in effect, then restore them.
    pub fn around<T>(settings: &[(&CStr, &CStr)], work: impl FnOnce() -> T) -> T {
        let scope = Self::set_many(settings);
        let result = work();
        scope.end();
        result
    }
}

pub fn enabled() -> bool {
    ENABLED.get()
}

/// With notify = reference: the quiet interval after a backend's wake-up (`notification.rs`).
pub fn notify_interval() -> std::time::Duration {
    std::time::Duration::from_millis(u64::try_from(NOTIFY_INTERVAL.get()).unwrap_or(0))
}

/// How many instances a transaction's changes may reach and still get their updated events in
/// that transaction (`fanout.rs`).
pub fn fanout_inline_limit() -> usize {
    usize::try_from(FANOUT_INLINE_LIMIT.get()).unwrap_or(0)
}

/// ae_events.payload_retention as an interval; NULL when unset (-1). A function, not
/// current_setting(): calling it loads the library, so the setting is parsed with its unit even
/// in a session that has not loaded it yet.
#[pg_extern(stable, parallel_safe)]
fn _payload_retention() -> Option<Interval> {
    let minutes = PAYLOAD_RETENTION.get();
    if minutes < 0 {
        return None;
    }
    Interval::new(0, 0, i64::from(minutes) * 60_000_000).ok()
}

pub fn notify_mode() -> NotifyMode {
    NOTIFY.get()
}

/// The notification payload budget of a transaction in bytes; None: no limit.
pub fn notify_payload_budget() -> Option<u64> {
    let kilobytes = NOTIFY_PAYLOAD_BUDGET.get();
    u64::try_from(kilobytes).ok().map(|kb| kb * 1024)
}

/// The channel to notify on; the check hook guarantees it is a valid channel name.
pub fn channel() -> String {
    CHANNEL
        .get()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_else(|| "ae_events".to_owned())
}

/// PostgreSQL accepts channel names shorter than NAMEDATALEN (64) bytes, and not empty.
pub fn channel_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("the channel name must not be empty")
    } else if name.len() >= pg_sys::NAMEDATALEN as usize {
        Some("the channel name must be shorter than 64 bytes")
    } else {
        None
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn check_channel(
    newval: *mut *mut std::ffi::c_char,
    _extra: *mut *mut std::ffi::c_void,
    _source: pg_sys::GucSource::Type,
) -> bool {
    // SAFETY: PostgreSQL passes a pointer to the proposed value, NULL or a C string.
    let proposed = unsafe {
        if newval.is_null() || (*newval).is_null() {
            ""
        } else {
            CStr::from_ptr(*newval).to_str().unwrap_or("")
        }
    };
    match channel_problem(proposed) {
        None => true,
        Some(problem) => {
            // SAFETY: GUC_check_errmsg_string is the documented way for a check hook to explain.
            unsafe {
                pg_sys::GUC_check_errcode(
                    pg_sys::errcodes::PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE as i32,
                );
                pg_sys::GUC_check_errmsg_string = pg_sys::pstrdup(
                    CString::new(crate::errors::prefixed(problem))
                        .unwrap_or_default()
                        .as_ptr(),
                );
            }
            false
        }
    }
}
