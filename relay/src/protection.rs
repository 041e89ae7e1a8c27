//! Protecting receivers (and the relay): a per-endpoint rate limit and a circuit breaker. The
//! worker asks the gate before it starts each request; neither counts as an attempt, so an
//! event held back here keeps its retry schedule.
//!
//! The circuit breaker: after `failures` failed attempts in a row the endpoint's circuit opens
//! and no request starts for the cool-down; then one request is sent as a probe (half-open).
//! A success closes the circuit; a failure opens it again for twice as long, up to
//! `max_cooldown`. An endpoint that fails everything gets one request per cool-down, not
//! `max_in_flight` requests per retry round.

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use std::num::NonZeroU32;
use std::time::Duration;
use tokio::time::Instant;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BreakerSettings {
    /// Failed attempts in a row that open the circuit; 0: never.
    pub failures: u32,
    /// The first cool-down; it doubles each time a probe fails.
    pub cooldown: Duration,
    pub max_cooldown: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum CircuitState {
    Closed,
    Open,
    HalfOpen,
}

impl CircuitState {
    /// The value of the ae_relay_circuit_state gauge.
    pub fn gauge(self) -> i64 {
        match self {
            CircuitState::Closed => 0,
            CircuitState::Open => 1,
            CircuitState::HalfOpen => 2,
        }
    }
}

#[derive(Debug)]
enum Breaker {
    Closed { failures_in_a_row: u32 },
    Open { until: Instant, cooldown: Duration },
    HalfOpen { probing: bool, cooldown: Duration },
}

/// What the worker asks before each request.
pub struct Gate {
    settings: BreakerSettings,
    breaker: Breaker,
    /// Requests per second, and its limiter; None: no limit.
    rate: Option<(f64, DefaultDirectRateLimiter)>,
    /// When the limiter said its next permit comes (it cannot be asked without taking one).
    rate_wait_until: Option<Instant>,
}

/// What a settled attempt did to the circuit, for logs and metrics.
#[derive(Debug, PartialEq)]
pub enum Transition {
    None,
    Opened { cooldown: Duration },
    Closed,
}

impl Gate {
    pub fn new(settings: BreakerSettings, rate_limit: Option<f64>) -> Gate {
        let mut gate = Gate {
            settings,
            breaker: Breaker::Closed {
                failures_in_a_row: 0,
            },
            rate: None,
            rate_wait_until: None,
        };
        gate.set_rate_limit(rate_limit);
        gate
    }

    /// Follow a change of the endpoint's rate_limit (a new limiter starts full).
    pub fn set_rate_limit(&mut self, rate_limit: Option<f64>) {
        // By bits: a NaN is the same NaN as before (`==` would rebuild a full limiter each time).
        if self.rate.as_ref().map(|(rate, _)| rate.to_bits()) == rate_limit.map(f64::to_bits) {
            return;
        }
        self.rate = rate_limit.and_then(|rate| Some((rate, RateLimiter::direct(quota(rate)?))));
        self.rate_wait_until = None;
    }

    pub fn state(&self) -> CircuitState {
        match self.breaker {
            Breaker::Closed { .. } => CircuitState::Closed,
            Breaker::Open { .. } => CircuitState::Open,
            Breaker::HalfOpen { .. } => CircuitState::HalfOpen,
        }
    }

    /// Whether the circuit lets a request start now (it may still wait for the rate limit).
    pub fn circuit_allows(&self, now: Instant) -> bool {
        match self.breaker {
            Breaker::Closed { .. } => true,
            Breaker::Open { until, .. } => now >= until,
            Breaker::HalfOpen { probing, .. } => !probing,
        }
    }

    /// How many requests could start now at most: one while probing, the rate limit's burst.
    pub fn room(&self, now: Instant) -> usize {
        if !self.circuit_allows(now) {
            return 0;
        }
        if !matches!(self.breaker, Breaker::Closed { .. }) {
            return 1;
        }
        self.rate.as_ref().map_or(usize::MAX, |(rate, _)| {
            effective_rate(*rate).map_or(usize::MAX, |rate| burst(rate).get() as usize)
        })
    }

    /// Take a permit for one request now; false: wait (see `next_chance`).
    pub fn try_start(&mut self, now: Instant) -> bool {
        if !self.circuit_allows(now) {
            return false;
        }
        if let Some((_, limiter)) = &self.rate {
            if let Err(not_until) = limiter.check() {
                let clock = DefaultClock::default();
                self.rate_wait_until = Some(now + not_until.wait_time_from(clock.now()));
                return false;
            }
        }
        match self.breaker {
            Breaker::Open { cooldown, .. } => {
                self.breaker = Breaker::HalfOpen {
                    probing: true,
                    cooldown,
                }
            }
            Breaker::HalfOpen { cooldown, .. } => {
                self.breaker = Breaker::HalfOpen {
                    probing: true,
                    cooldown,
                }
            }
            Breaker::Closed { .. } => {}
        }
        true
    }

    /// When a request could start, if not now: the end of the cool-down or the rate limit's
    /// next permit. None: now, or only when a probe in flight settles.
    pub fn next_chance(&self, now: Instant) -> Option<Instant> {
        let circuit = match self.breaker {
            Breaker::Open { until, .. } if until > now => Some(until),
            Breaker::HalfOpen { probing: true, .. } => return None,
            _ => None,
        };
        let rate = self.rate_wait_until.filter(|at| *at > now);
        match (circuit, rate) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }

    /// An attempt's result: successes close the circuit, failures in a row open it.
    pub fn settled(&mut self, succeeded: bool, now: Instant) -> Transition {
        if self.settings.failures == 0 {
            return Transition::None;
        }
        let first = self.settings.cooldown;
        match (&mut self.breaker, succeeded) {
            (Breaker::Closed { failures_in_a_row }, true) => {
                *failures_in_a_row = 0;
                Transition::None
            }
            (Breaker::Closed { failures_in_a_row }, false) => {
                *failures_in_a_row += 1;
                if *failures_in_a_row >= self.settings.failures {
                    self.open(first, now)
                } else {
                    Transition::None
                }
            }
            (_, true) => {
                self.breaker = Breaker::Closed {
                    failures_in_a_row: 0,
                };
                Transition::Closed
            }
            (Breaker::HalfOpen { cooldown, .. }, false) => {
                let longer = cooldown.saturating_mul(2).min(self.settings.max_cooldown);
                self.open(longer, now)
            }
            // A request started before the circuit opened failed too: it stays open.
            (Breaker::Open { .. }, false) => Transition::None,
        }
    }

    fn open(&mut self, cooldown: Duration, now: Instant) -> Transition {
        // Flags bound the cool-down; saturating all the same (Instant + a huge one panics).
        let until = now
            .checked_add(cooldown)
            .unwrap_or_else(|| now + Duration::from_secs(86_400 * 365));
        self.breaker = Breaker::Open { until, cooldown };
        Transition::Opened { cooldown }
    }
}

/// The slowest rate acted on: one request a day. The database bounds `rate_limit`, but the
/// relay takes whatever it is handed: a slower (or subnormal) rate would make a period the
/// limiter cannot hold (it panicked on 1e-12 and 5e-324).
pub const MIN_RATE: f64 = 1.0 / 86_400.0;

/// The fastest rate acted on (one request a nanosecond, the limiter's resolution); above it,
/// as for +infinity, there is no limit.
pub const MAX_RATE: f64 = 1e9;

/// The rate a limiter is built for, from any f64: None (no limit) for rates above MAX_RATE;
/// rates below MIN_RATE, zero, negative or NaN (none of which the database accepts) are held
/// to MIN_RATE, the safe side for a receiver that asked to be protected.
fn effective_rate(rate: f64) -> Option<f64> {
    if rate > MAX_RATE {
        return None;
    }
    if rate >= MIN_RATE {
        Some(rate)
    } else {
        Some(MIN_RATE)
    }
}

/// A tenth of a second's requests may go at once (at least one): bursts stay within 1 % of a
/// ten-second window, and high rates are not held to the timer's resolution.
fn burst(rate: f64) -> NonZeroU32 {
    NonZeroU32::new((rate / 10.0).floor().clamp(1.0, u32::MAX as f64) as u32)
        .unwrap_or(NonZeroU32::MIN)
}

fn quota(rate: f64) -> Option<Quota> {
    let rate = effective_rate(rate)?;
    let burst = burst(rate);
    // One permit every 1/rate seconds (at most a day, at least a nanosecond: both within what
    // Duration and the limiter hold), up to `burst` saved.
    let period = Duration::try_from_secs_f64(1.0 / rate).ok()?;
    Quota::with_period(period).map(|quota| quota.allow_burst(burst))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> BreakerSettings {
        BreakerSettings {
            failures: 3,
            cooldown: Duration::from_secs(1),
            max_cooldown: Duration::from_secs(4),
        }
    }

    #[test]
    fn failures_in_a_row_open_the_circuit_and_a_success_in_between_resets_them() {
        let now = Instant::now();
        let mut gate = Gate::new(settings(), None);
        assert_eq!(gate.settled(false, now), Transition::None);
        assert_eq!(gate.settled(false, now), Transition::None);
        assert_eq!(gate.settled(true, now), Transition::None);
        assert_eq!(gate.settled(false, now), Transition::None);
        assert_eq!(gate.settled(false, now), Transition::None);
        assert_eq!(
            gate.settled(false, now),
            Transition::Opened {
                cooldown: Duration::from_secs(1)
            }
        );
        assert_eq!(gate.state(), CircuitState::Open);
        assert!(!gate.try_start(now));
        assert_eq!(gate.next_chance(now), Some(now + Duration::from_secs(1)));
    }

    #[test]
    fn after_the_cooldown_one_probe_goes_and_its_failure_doubles_the_cooldown_up_to_the_cap() {
        let start = Instant::now();
        let mut gate = Gate::new(settings(), None);
        for _ in 0..3 {
            gate.settled(false, start);
        }
        let mut now = start + Duration::from_secs(1);
        for expected in [2, 4, 4] {
            assert!(gate.try_start(now), "the probe");
            assert_eq!(gate.state(), CircuitState::HalfOpen);
            assert!(!gate.try_start(now), "only one probe at a time");
            assert_eq!(gate.room(now), 0);
            assert_eq!(
                gate.settled(false, now),
                Transition::Opened {
                    cooldown: Duration::from_secs(expected)
                }
            );
            assert!(!gate.try_start(now + Duration::from_secs(expected) - Duration::from_millis(1)));
            now += Duration::from_secs(expected);
        }
        assert!(gate.try_start(now));
        assert_eq!(gate.settled(true, now), Transition::Closed);
        assert_eq!(gate.state(), CircuitState::Closed);
        assert!(
            gate.try_start(now) && gate.try_start(now),
            "closed: no limit"
        );
    }

    #[test]
    fn zero_failures_turns_the_breaker_off() {
        let now = Instant::now();
        let mut gate = Gate::new(
            BreakerSettings {
                failures: 0,
                ..settings()
            },
            None,
        );
        for _ in 0..100 {
            assert_eq!(gate.settled(false, now), Transition::None);
        }
        assert!(gate.try_start(now));
    }

    #[test]
    fn any_rate_the_database_could_hand_over_is_acted_on_without_panicking() {
        let now = Instant::now();
        let day = Duration::from_secs(86_400);
        for rate in [
            5e-324,
            1e-12,
            f64::MIN_POSITIVE,
            f64::EPSILON,
            1e-6,
            0.0,
            -0.0,
            -1.0,
            f64::NAN,
            f64::NEG_INFINITY,
        ] {
            // Held to one request a day: the first goes, the next one a day later.
            let mut gate = Gate::new(settings(), Some(rate));
            assert_eq!(gate.room(now), 1, "{rate:e}");
            assert!(gate.try_start(now), "{rate:e}");
            assert!(!gate.try_start(now), "{rate:e}");
            let next = gate.next_chance(now).expect("a wait");
            assert!(next > now + day - Duration::from_secs(2), "{rate:e}");
            assert!(next <= now + day + Duration::from_secs(2), "{rate:e}");
        }
        for rate in [f64::INFINITY, f64::MAX, 1e300, 1e10] {
            let mut gate = Gate::new(settings(), Some(rate));
            assert_eq!(gate.room(now), usize::MAX, "{rate:e}");
            assert!((0..1000).all(|_| gate.try_start(now)), "{rate:e}: no limit");
        }
        // The fastest rate acted on, and changes between extremes on a running gate.
        let mut gate = Gate::new(settings(), Some(MAX_RATE));
        assert!(gate.try_start(now));
        for rate in [1e-12, 5e-324, 1e9, f64::NAN, 2.0, f64::INFINITY, 1e-300] {
            gate.set_rate_limit(Some(rate));
            let _ = gate.try_start(now);
            let _ = gate.next_chance(now);
            let _ = gate.room(now);
        }
    }

    #[test]
    fn the_rate_limit_allows_a_tenth_of_a_second_at_once_then_waits() {
        let now = Instant::now();
        let mut gate = Gate::new(settings(), Some(50.0));
        let started = (0..100).take_while(|_| gate.try_start(now)).count();
        assert_eq!(started, 5);
        let next = gate.next_chance(now).expect("a wait");
        assert!(
            next > now && next <= now + Duration::from_millis(25),
            "{:?}",
            next - now
        );
        gate.set_rate_limit(None);
        assert!((0..100).all(|_| gate.try_start(now)));
        assert_eq!(gate.next_chance(now), None);
    }
}
