//! Time as integers with units: `UnixMillis`, calendar arithmetic for billing periods, and the
//! two text forms the gateway reads and writes (RFC 3339 and HTTP-date).
//!
//! Nothing here reads a clock: `Clock` is implemented by the edge (Date.now) and by tests.

use std::fmt;

/// Milliseconds since the Unix epoch, UTC.
///
/// ```
/// use hf_gate::core::time::UnixMillis;
/// let t = UnixMillis(1_000);
/// assert_eq!(t.saturating_add_ms(500), UnixMillis(1_500));
/// assert_eq!(UnixMillis(1_500).millis_since(t), 500);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct UnixMillis(pub u64);

impl UnixMillis {
    pub fn saturating_add_ms(self, ms: u64) -> Self {
        UnixMillis(self.0.saturating_add(ms))
    }

    /// Milliseconds from `earlier` to `self`, zero if `earlier` is later.
    pub fn millis_since(self, earlier: UnixMillis) -> u64 {
        self.0.saturating_sub(earlier.0)
    }

    /// Whole days since 1970-01-01.
    pub fn day_index(self) -> u32 {
        (self.0 / MS_PER_DAY) as u32
    }
}

/// Where "now" comes from.
pub trait Clock {
    fn now(&self) -> UnixMillis;
}

/// A clock for tests: it stands still until told to move.
#[derive(Debug, Default)]
pub struct FakeClock {
    now: std::cell::Cell<u64>,
}

impl FakeClock {
    pub fn at(now: UnixMillis) -> Self {
        FakeClock { now: std::cell::Cell::new(now.0) }
    }
    pub fn advance_ms(&self, ms: u64) {
        self.now.set(self.now.get().saturating_add(ms));
    }
}

impl Clock for FakeClock {
    fn now(&self) -> UnixMillis {
        UnixMillis(self.now.get())
    }
}

pub const MS_PER_DAY: u64 = 86_400_000;

/// A civil (proleptic Gregorian) date.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Date {
    pub year: i64,
    pub month: u32,
    pub day: u32,
}

/// Days since 1970-01-01 for a civil date (Howard Hinnant's algorithm).
pub fn days_from_civil(d: Date) -> i64 {
    let y = if d.month <= 2 { d.year - 1 } else { d.year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(d.month);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + i64::from(d.day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The civil date of a day index (inverse of `days_from_civil`).
pub fn civil_from_days(z: i64) -> Date {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    Date { year, month, day }
}

/// The calendar month (UTC) that contains an instant: `[start, end)`.
///
/// ```
/// use hf_gate::core::time::{BillingPeriod, UnixMillis};
/// // 2026-12-31T23:59:59.999Z belongs to December; the next period starts on 2027-01-01.
/// let p = BillingPeriod::containing(UnixMillis(1_798_761_599_999));
/// assert_eq!(p.start.to_string(), "2026-12-01T00:00:00Z");
/// assert_eq!(p.end.to_string(), "2027-01-01T00:00:00Z");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BillingPeriod {
    pub start: UnixMillis,
    pub end: UnixMillis,
}

impl BillingPeriod {
    pub fn containing(now: UnixMillis) -> Self {
        let d = civil_from_days(i64::from(now.day_index()));
        let first = Date { year: d.year, month: d.month, day: 1 };
        let next = if d.month == 12 {
            Date { year: d.year + 1, month: 1, day: 1 }
        } else {
            Date { year: d.year, month: d.month + 1, day: 1 }
        };
        BillingPeriod { start: millis_of(first), end: millis_of(next) }
    }

    /// The period just before this one.
    pub fn previous(self) -> Self {
        BillingPeriod::containing(UnixMillis(self.start.0.saturating_sub(1)))
    }
}

fn millis_of(d: Date) -> UnixMillis {
    UnixMillis((days_from_civil(d).max(0) as u64).saturating_mul(MS_PER_DAY))
}

impl fmt::Display for UnixMillis {
    /// RFC 3339 in UTC, whole seconds: `2026-11-22T13:00:00Z`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let days = self.0 / MS_PER_DAY;
        let secs = (self.0 % MS_PER_DAY) / 1000;
        let d = civil_from_days(days as i64);
        write!(
            f,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
            d.year,
            d.month,
            d.day,
            secs / 3600,
            (secs / 60) % 60,
            secs % 60
        )
    }
}

/// The date part (`YYYY-MM-DD`) of a day index.
pub fn format_day(day_index: u32) -> String {
    let d = civil_from_days(i64::from(day_index));
    format!("{:04}-{:02}-{:02}", d.year, d.month, d.day)
}

const MONTHS: [&str; 12] = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"];

/// Parses an IMF-fixdate HTTP-date (`Sun, 06 Nov 1994 08:49:37 GMT`), the form RFC 9110 says
/// senders must use. Obsolete forms are refused (`None`) rather than guessed at.
pub fn parse_http_date(s: &str) -> Option<UnixMillis> {
    let s = s.trim();
    let (_, rest) = s.split_once(", ")?;
    let mut parts = rest.split(' ');
    let day: u32 = parse_digits(parts.next()?, 2)?;
    let month_name = parts.next()?.to_ascii_lowercase();
    let month = MONTHS.iter().position(|m| *m == month_name)? as u32 + 1;
    let year: u32 = parse_digits(parts.next()?, 4)?;
    let mut hms = parts.next()?.split(':');
    let h: u32 = parse_digits(hms.next()?, 2)?;
    let m: u32 = parse_digits(hms.next()?, 2)?;
    let sec: u32 = parse_digits(hms.next()?, 2)?;
    if parts.next()? != "GMT" || parts.next().is_some() || hms.next().is_some() {
        return None;
    }
    if !(1..=31).contains(&day) || h > 23 || m > 59 || sec > 60 || year < 1970 {
        return None;
    }
    let days = days_from_civil(Date { year: i64::from(year), month, day });
    let secs = (days as u64) * 86_400 + u64::from(h) * 3600 + u64::from(m) * 60 + u64::from(sec);
    Some(UnixMillis(secs.checked_mul(1000)?))
}

fn parse_digits(s: &str, len: usize) -> Option<u32> {
    if s.len() != len || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

crate::core::wire::json_newtype!(UnixMillis);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_round_trips_across_four_centuries() {
        for z in (-800_000..800_000).step_by(97) {
            assert_eq!(days_from_civil(civil_from_days(z)), z);
        }
    }

    #[test]
    fn formats_rfc3339() {
        assert_eq!(UnixMillis(0).to_string(), "1970-01-01T00:00:00Z");
        assert_eq!(UnixMillis(1_795_352_400_000).to_string(), "2026-11-22T13:00:00Z");
    }

    #[test]
    fn parses_imf_fixdate_and_refuses_other_forms() {
        assert_eq!(parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"), Some(UnixMillis(784_111_777_000)));
        assert_eq!(parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT"), None);
        assert_eq!(parse_http_date("Sun Nov  6 08:49:37 1994"), None);
        assert_eq!(parse_http_date("Sun, 06 Nov 1994 08:49:37 UTC"), None);
        assert_eq!(parse_http_date("Sun, 32 Nov 1994 08:49:37 GMT"), None);
        assert_eq!(parse_http_date(""), None);
    }

    #[test]
    fn leap_day_belongs_to_february() {
        let feb29 = millis_of(Date { year: 2028, month: 2, day: 29 });
        let p = BillingPeriod::containing(feb29.saturating_add_ms(MS_PER_DAY - 1));
        assert_eq!(p.start.to_string(), "2028-02-01T00:00:00Z");
        assert_eq!(p.end.to_string(), "2028-03-01T00:00:00Z");
    }
}
