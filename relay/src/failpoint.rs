//! Failures forced by the tests, in debug builds only (a release build has none of this): the
//! relay's isolation of one endpoint's worker is shown by making it panic.
//!
//! - `AE_RELAY_FAIL_ENDPOINT=<name>`: that endpoint's worker panics as it starts.
//! - `AE_RELAY_FAIL_ATTEMPT=<name>`: every attempt to deliver to that endpoint panics.
//! - `AE_RELAY_SLOW_FETCH_MS=<ms>`: every fetch's answer reaches its worker that much later
//!   (a fetch taken after writes that landed meanwhile).

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

/// Hold a fetch's answer back when the environment asks for it (debug builds only).
#[cfg(debug_assertions)]
pub async fn slow_fetch() {
    let delay = std::env::var("AE_RELAY_SLOW_FETCH_MS")
        .ok()
        .and_then(|ms| ms.parse::<u64>().ok());
    if let Some(ms) = delay {
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    }
}

#[cfg(not(debug_assertions))]
#[inline(always)]
pub async fn slow_fetch() {}
