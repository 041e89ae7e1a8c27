//! Event ids: time-ordered UUIDs, version 7 (RFC 9562 §5.7), made in the writer. The first 48
//! bits are the Unix time in milliseconds, so the outbox's unique index on `event_id` grows at
//! its right edge (as the `id` index does) instead of taking each new id at a random page, as
//! random (version 4) ids did. Within a backend they also increase strictly: the 12 bits after
//! the version are a counter (RFC 9562 §6.2, method 1) that starts at a random value below 2^11
//! each millisecond, and the last 62 bits are random. Randomness comes from
//! `pg_strong_random` (what `gen_random_uuid()` uses), read 4 kB at a time.

use crate::errors::EventError;
use pgrx::prelude::*;
use std::cell::RefCell;

const POOL: usize = 4096;

struct State {
    pool: [u8; POOL],
    used: usize,
    /// The process the pool was filled in (a forked child never reuses its parent's bytes).
    filled_by: i32,
    last_millis: u64,
    counter: u16,
}

thread_local! {
    static STATE: RefCell<State> = const {
        RefCell::new(State { pool: [0; POOL], used: POOL, filled_by: 0, last_millis: 0, counter: 0 })
    };
}

impl State {
    fn random<const N: usize>(&mut self) -> Result<[u8; N], EventError> {
        // SAFETY: reads this backend's pid.
        let pid = unsafe { pg_sys::MyProcPid };
        if self.used + N > POOL || self.filled_by != pid {
            // SAFETY: fills the buffer it is given, of the length given.
            let filled = unsafe { pg_sys::pg_strong_random(self.pool.as_mut_ptr().cast(), POOL) };
            if !filled {
                return Err(EventError::internal("could not generate random bytes"));
            }
            self.used = 0;
            self.filled_by = pid;
        }
        let mut bytes = [0; N];
        bytes.copy_from_slice(&self.pool[self.used..self.used + N]);
        self.used += N;
        Ok(bytes)
    }
}

/// The next event id of this backend.
pub fn next() -> Result<pgrx::Uuid, EventError> {
    // SAFETY: reads the clock.
    let now = unsafe { pg_sys::GetCurrentTimestamp() };
    // PostgreSQL's epoch (2000-01-01) in Unix milliseconds, plus its microseconds.
    let unix_millis = (now / 1000 + 946_684_800_000).max(0) as u64;
    STATE.with_borrow_mut(|state| {
        let [r0, r1, r2, r3, r4, r5, r6, r7, r8, r9] = state.random::<10>()?;
        let (millis, counter) = step(
            (state.last_millis, state.counter),
            unix_millis,
            u16::from_be_bytes([r8, r9]),
        );
        state.last_millis = millis;
        state.counter = counter;
        Ok(layout(millis, counter, [r0, r1, r2, r3, r4, r5, r6, r7]))
    })
}

/// The (millisecond, counter) of the next id after `last`, at time `now`.
fn step(last: (u64, u16), now: u64, random: u16) -> (u64, u16) {
    let (last_millis, counter) = last;
    if now > last_millis {
        (now, random & 0x07ff)
    } else if counter < 0x0fff {
        // The same millisecond (or the clock went back): count on.
        (last_millis, counter + 1)
    } else {
        // 4096 ids in one millisecond: borrow the next one.
        (last_millis + 1, 0)
    }
}

/// Timestamp (48 bits), version 7, counter (12 bits), variant 0b10, random (62 bits).
fn layout(unix_millis: u64, counter: u16, random: [u8; 8]) -> pgrx::Uuid {
    let millis = unix_millis.to_be_bytes();
    let mut bytes = [0u8; 16];
    bytes[..6].copy_from_slice(&millis[2..]);
    bytes[6] = 0x70 | ((counter >> 8) as u8 & 0x0f);
    bytes[7] = counter as u8;
    bytes[8..].copy_from_slice(&random);
    bytes[8] = 0x80 | (bytes[8] & 0x3f);
    pgrx::Uuid::from_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_version_7_variant_2_and_increase_within_a_backend() {
        let mut state = (0u64, 0u16);
        let mut last = [0u8; 16];
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for i in 0..20_000u64 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            // Several ids per millisecond, and once the clock going back.
            let now = if i == 10_000 {
                1_700_000_000_000
            } else {
                1_700_000_000_000 + i / 7
            };
            state = step(state, now, seed as u16);
            let id = *layout(state.0, state.1, seed.to_be_bytes()).as_bytes();
            assert_eq!(id[6] >> 4, 7, "version");
            assert_eq!(id[8] >> 6, 0b10, "variant");
            assert!(id > last, "increasing at {i}");
            last = id;
        }
        let id = layout(1_700_000_000_000, 0, [0; 8]);
        assert_eq!(
            &id.as_bytes()[..6],
            &1_700_000_000_000u64.to_be_bytes()[2..]
        );
    }

    #[test]
    fn a_full_millisecond_borrows_the_next() {
        assert_eq!(step((5, 0x0fff), 5, 0), (6, 0));
        assert_eq!(step((5, 0x0ffe), 5, 0), (5, 0x0fff));
        assert_eq!(step((5, 3), 9, 0xffff), (9, 0x07ff));
    }
}
