//! Rendering of date/time values into the payload (shared/contract/events.md §2), independent of the session's
//! `TimeZone`, `DateStyle` and `IntervalStyle`.

use pgrx::prelude::*;

const MICROS_PER_SECOND: i64 = 1_000_000;
const MICROS_PER_DAY: i64 = 86_400 * MICROS_PER_SECOND;
/// Days from 1970-01-01 to 2000-01-01, PostgreSQL's timestamp epoch.
const POSTGRES_EPOCH_DAYS_AFTER_UNIX: i64 = 10_957;

/// A `timestamptz` as PostgreSQL stores it (microseconds since 2000-01-01 00:00 UTC), rendered as
/// RFC 3339 in UTC with `Z`; a non-zero fraction keeps its digits, trailing zeros trimmed.
/// The infinities render as PostgreSQL's `to_jsonb` renders them.
pub fn rfc3339_utc(postgres_micros: i64) -> String {
    let mut buffer = TimestampBuffer::default();
    rfc3339_utc_in(postgres_micros, &mut buffer).to_owned()
}

/// Room for the longest rendering (a signed expanded year, micros and `Z`), and how much is used.
pub struct TimestampBuffer {
    bytes: [u8; 40],
    len: usize,
}

impl Default for TimestampBuffer {
    fn default() -> Self {
        TimestampBuffer {
            bytes: [0; 40],
            len: 0,
        }
    }
}

impl TimestampBuffer {
    fn digits(&mut self, value: u64, width: usize) {
        let mut rest = value;
        for i in (0..width).rev() {
            self.bytes[self.len + i] = b'0' + (rest % 10) as u8;
            rest /= 10;
        }
        self.len += width;
    }

    fn byte(&mut self, byte: u8) {
        self.bytes[self.len] = byte;
        self.len += 1;
    }
}

/// `rfc3339_utc` without allocating: digits are written straight into `buffer` (this runs for
/// every timestamp of every payload).
pub fn rfc3339_utc_in(postgres_micros: i64, out: &mut TimestampBuffer) -> &str {
    if postgres_micros == i64::MAX {
        return "infinity";
    }
    if postgres_micros == i64::MIN {
        return "-infinity";
    }
    let days = postgres_micros.div_euclid(MICROS_PER_DAY) + POSTGRES_EPOCH_DAYS_AFTER_UNIX;
    let micros_of_day = postgres_micros.rem_euclid(MICROS_PER_DAY);
    let (year, month, day) = civil_from_unix_days(days);
    let seconds_of_day = (micros_of_day / MICROS_PER_SECOND) as u64;
    let fraction = (micros_of_day % MICROS_PER_SECOND) as u64;

    out.len = 0;
    if (0..=9999).contains(&year) {
        out.digits(year as u64, 4);
    } else {
        // Outside RFC 3339's range: ISO 8601's expanded, signed year (at least 4 digits).
        out.byte(if year < 0 { b'-' } else { b'+' });
        let magnitude = year.unsigned_abs();
        let width = magnitude.checked_ilog10().map_or(1, |log| log as usize + 1);
        out.digits(magnitude, width.max(4));
    }
    out.byte(b'-');
    out.digits(u64::from(month), 2);
    out.byte(b'-');
    out.digits(u64::from(day), 2);
    out.byte(b'T');
    out.digits(seconds_of_day / 3600, 2);
    out.byte(b':');
    out.digits(seconds_of_day / 60 % 60, 2);
    out.byte(b':');
    out.digits(seconds_of_day % 60, 2);
    if fraction != 0 {
        out.byte(b'.');
        let (mut trimmed, mut width) = (fraction, 6);
        while trimmed % 10 == 0 {
            trimmed /= 10;
            width -= 1;
        }
        out.digits(trimmed, width);
    }
    out.byte(b'Z');
    // Only ASCII digits and separators were written.
    std::str::from_utf8(&out.bytes[..out.len]).unwrap_or("")
}

/// Proleptic Gregorian (year, month, day) of a count of days since 1970-01-01
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_unix_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * shifted_month + 2) / 5 + 1) as u32;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// An `interval` as PostgreSQL prints it with `IntervalStyle = postgres` (`00:00:00`,
/// `1 day 02:03:04.5`), whatever the session's `IntervalStyle`: PostgreSQL's own encoder is
/// called with the style given explicitly.
pub fn interval_postgres_style(interval: &pg_sys::Interval) -> String {
    let mut itm = pg_sys::pg_itm::default();
    let mut buffer = [0 as std::ffi::c_char; pg_sys::MAXDATELEN as usize + 1];
    // SAFETY: interval2itm only reads the interval; EncodeInterval writes at most MAXDATELEN
    // bytes plus the terminator into the buffer.
    unsafe {
        pg_sys::interval2itm(*interval, &mut itm);
        pg_sys::EncodeInterval(
            &mut itm,
            pg_sys::INTSTYLE_POSTGRES as i32,
            buffer.as_mut_ptr(),
        );
        std::ffi::CStr::from_ptr(buffer.as_ptr())
            .to_string_lossy()
            .into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::rfc3339_utc;

    const POSTGRES_EPOCH_UNIX_SECONDS: i64 = 946_684_800;

    fn micros(unix_seconds: i64, micros: i64) -> i64 {
        (unix_seconds - POSTGRES_EPOCH_UNIX_SECONDS) * 1_000_000 + micros
    }

    #[test]
    fn timestamps_render_as_rfc3339_utc() {
        let cases: &[(i64, &str)] = &[
            (micros(1_699_178_400, 0), "2023-11-05T10:00:00Z"),
            (micros(1_699_178_400, 250_000), "2023-11-05T10:00:00.25Z"),
            (
                micros(1_699_178_400, 123_456),
                "2023-11-05T10:00:00.123456Z",
            ),
            (micros(1_699_178_400, 1), "2023-11-05T10:00:00.000001Z"),
            (0, "2000-01-01T00:00:00Z"),
            (-1, "1999-12-31T23:59:59.999999Z"),
            (micros(951_782_400, 0), "2000-02-29T00:00:00Z"),
            (micros(0, 0), "1970-01-01T00:00:00Z"),
            (micros(253_402_300_799, 0), "9999-12-31T23:59:59Z"),
            (micros(-62_135_596_800, 0), "0001-01-01T00:00:00Z"),
            (micros(-62_198_755_200, 0), "-0001-01-01T00:00:00Z"),
            (micros(253_402_300_800, 500_000), "+10000-01-01T00:00:00.5Z"),
            (i64::MAX, "infinity"),
            (i64::MIN, "-infinity"),
        ];
        for (value, expected) in cases {
            assert_eq!(rfc3339_utc(*value), *expected, "postgres micros {value}");
        }
    }
}
