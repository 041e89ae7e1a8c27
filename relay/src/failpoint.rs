//! Failures forced by the tests, in debug builds only (a release build has none of this): the
//! relay's isolation of one endpoint's worker is shown by making it panic.
//!
//! - `AE_RELAY_FAIL_ENDPOINT=<name>`: that endpoint's worker panics as it starts.
//! - `AE_RELAY_FAIL_ATTEMPT=<name>`: every attempt to deliver to that endpoint panics.

/// Where a failure can be forced.
#[derive(Clone, Copy, Debug)]
pub enum At {
    WorkerStart,
    Attempt,
}

/// Panic here when the environment asks for it for this endpoint (debug builds only).
#[cfg(debug_assertions)]
pub fn check(at: At, endpoint: &str) {
    let variable = match at {
        At::WorkerStart => "AE_RELAY_FAIL_ENDPOINT",
        At::Attempt => "AE_RELAY_FAIL_ATTEMPT",
    };
    if std::env::var_os(variable).is_some_and(|name| name == endpoint) {
        panic!("failpoint {variable}: forced panic ({at:?})");
    }
}

#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn check(_at: At, _endpoint: &str) {}
