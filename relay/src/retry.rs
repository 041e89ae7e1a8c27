//! When to try again (webhooks.md §3): the endpoint's schedule with jitter, and a receiver's
//! `Retry-After` (seconds or an HTTP date), capped by the schedule's longest delay.

use std::time::{Duration, SystemTime};

/// The delay before the next attempt after `attempts_made` attempts, or None when the schedule
/// is exhausted (the event is dead-lettered).
pub fn next_delay(
    schedule: &[Duration],
    jitter: f64,
    attempts_made: usize,
    retry_after: Option<Duration>,
) -> Option<Duration> {
    let planned = *schedule.get(attempts_made.checked_sub(1)?)?;
    let factor = 1.0 + jitter.clamp(0.0, 1.0) * (fastrand::f64() * 2.0 - 1.0);
    let jittered = planned.mul_f64(factor.max(0.0));
    let longest = schedule.iter().copied().max().unwrap_or_default();
    Some(match retry_after {
        Some(asked) => jittered.max(asked.min(longest)),
        None => jittered,
    })
}

/// A `Retry-After` value: delay-seconds or an HTTP date (RFC 9110 §10.2.3).
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let date = httpdate::parse_http_date(value).ok()?;
    Some(date.duration_since(now).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn the_schedule_then_dead_letter() {
        let schedule = [MS(100), MS(1000)];
        assert_eq!(next_delay(&schedule, 0.0, 1, None), Some(MS(100)));
        assert_eq!(next_delay(&schedule, 0.0, 2, None), Some(MS(1000)));
        assert_eq!(next_delay(&schedule, 0.0, 3, None), None);
        assert_eq!(next_delay(&[], 0.0, 1, None), None);
    }

    #[test]
    fn jitter_stays_within_its_share() {
        for _ in 0..1000 {
            let delay = next_delay(&[MS(1000)], 0.2, 1, None).unwrap();
            assert!(delay >= MS(800) && delay <= MS(1200), "{delay:?}");
        }
    }

    #[test]
    fn retry_after_is_honoured_up_to_the_longest_delay() {
        let schedule = [MS(100), MS(5000)];
        assert_eq!(
            next_delay(&schedule, 0.0, 1, Some(MS(2000))),
            Some(MS(2000))
        );
        assert_eq!(
            next_delay(&schedule, 0.0, 1, Some(MS(60_000))),
            Some(MS(5000))
        );
        assert_eq!(next_delay(&schedule, 0.0, 2, Some(MS(10))), Some(MS(5000)));
    }

    #[test]
    fn retry_after_in_seconds_or_as_a_date() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_480);
        assert_eq!(parse_retry_after("2", now), Some(Duration::from_secs(2)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:27:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }
}
