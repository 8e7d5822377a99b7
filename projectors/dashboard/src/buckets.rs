//! Event time → buckets, and windows → the buckets they sum. Pure: every function takes
//! the time it works on, so the window edges are unit-tested at the millisecond.
//!
//! Three granularities, each kept as long as the longest view that reads it:
//! - seconds, kept 10 minutes: the events/s chart, the 1-minute window;
//! - minutes, kept 48 hours: the volume chart, the 15-minute and 1-hour windows;
//! - hours, kept 48 hours: the 24-hour window (24 buckets instead of 1,440).
//!
//! A window of length L at granularity g is the L/g buckets ending with the one holding the
//! reference time: "the last 15 minutes" at 18:40:20 is 18:26:00–18:40:59, the current
//! partial minute included. Distinct accounts are counted per UTC hour and UTC day.
//!
//! A bucket's key expires at the end of its bucket plus its retention (and a margin), in
//! event time: memory stays bounded however long the service runs, and an event older than
//! the retention changes nothing that a view could read. The retention of minute and hour
//! buckets is configurable (`[dashboard] retention_hours`, 48 by default: the longest
//! series); tests that fold events of a fixed past date keep them longer.

use chrono::{DateTime, Utc};

/// A bucket size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Grain {
    Second,
    Minute,
    Hour,
    Day,
}

impl Grain {
    pub const fn seconds(self) -> i64 {
        match self {
            Grain::Second => 1,
            Grain::Minute => 60,
            Grain::Hour => 3_600,
            Grain::Day => 86_400,
        }
    }

    /// The one-letter tag in key names (`s`, `m`, `h`, `d`).
    pub const fn tag(self) -> &'static str {
        match self {
            Grain::Second => "s",
            Grain::Minute => "m",
            Grain::Hour => "h",
            Grain::Day => "d",
        }
    }

    pub fn parse_tag(tag: &str) -> Option<Self> {
        match tag {
            "s" => Some(Grain::Second),
            "m" => Some(Grain::Minute),
            "h" => Some(Grain::Hour),
            "d" => Some(Grain::Day),
            _ => None,
        }
    }

    /// How long a bucket's keys are kept after the bucket ends, in seconds, when minute
    /// and hour buckets are kept `hours` (`[dashboard] retention_hours`).
    pub const fn retention(self, hours: i64) -> i64 {
        match self {
            Grain::Second => SECONDS_KEPT,
            Grain::Minute | Grain::Hour => hours * 3_600,
            // Day buckets hold only distinct-account counts (today and the days before).
            Grain::Day => {
                if hours * 3_600 > DAYS_KEPT_S {
                    hours * 3_600
                } else {
                    DAYS_KEPT_S
                }
            }
        }
    }

    /// The bucket number holding `time` (buckets count from the Unix epoch, UTC).
    pub fn bucket(self, time: DateTime<Utc>) -> i64 {
        time.timestamp().div_euclid(self.seconds())
    }

    /// When bucket `n` starts.
    pub fn start(self, n: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(n.saturating_mul(self.seconds()), 0).unwrap_or_default()
    }

    /// How long a bucket's top lists are kept after the bucket ends, in seconds: only as
    /// long as the longest window that reads them (1 minute of seconds, 1 hour of minutes,
    /// 24 hours of hours); nothing else reads them, and they are the model's largest keys.
    pub const fn top_retention(self) -> i64 {
        match self {
            Grain::Second => 60,
            Grain::Minute => 3_600,
            Grain::Hour | Grain::Day => 86_400,
        }
    }

    /// Unix time (s) at which bucket `n`'s top lists expire.
    pub fn top_expires_at(self, n: i64) -> i64 {
        (n + 1)
            .saturating_mul(self.seconds())
            .saturating_add(self.top_retention())
            .saturating_add(EXPIRY_MARGIN_S)
    }

    /// Unix time (s) at which bucket `n`'s keys expire: its end, its retention (minute
    /// and hour buckets kept `hours`) and a margin (so a view reading the oldest bucket
    /// never races the expiry).
    pub fn expires_at(self, n: i64, hours: i64) -> i64 {
        (n + 1)
            .saturating_mul(self.seconds())
            .saturating_add(self.retention(hours))
            .saturating_add(EXPIRY_MARGIN_S)
    }
}

/// How long per-second buckets are kept after they end (the events/s chart's span).
pub const SECONDS_KEPT: i64 = 600;
/// How long per-minute and per-hour buckets are kept after they end, in hours, by default
/// (the longest series, 48 h, needs that much).
pub const HOURS_KEPT: i64 = 48;
/// How long per-day distinct counts are kept at least, in seconds.
pub const DAYS_KEPT_S: i64 = 7 * 86_400;
/// Added to every retention.
pub const EXPIRY_MARGIN_S: i64 = 60;

/// A rolling window of the summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Window {
    OneMinute,
    FifteenMinutes,
    OneHour,
    OneDay,
}

impl Window {
    pub const ALL: [Window; 4] = [
        Window::OneMinute,
        Window::FifteenMinutes,
        Window::OneHour,
        Window::OneDay,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Window::OneMinute => "1m",
            Window::FifteenMinutes => "15m",
            Window::OneHour => "1h",
            Window::OneDay => "24h",
        }
    }

    /// The granularity it is summed at and how many buckets.
    pub const fn shape(self) -> (Grain, i64) {
        match self {
            Window::OneMinute => (Grain::Second, 60),
            Window::FifteenMinutes => (Grain::Minute, 15),
            Window::OneHour => (Grain::Minute, 60),
            Window::OneDay => (Grain::Hour, 24),
        }
    }

    /// The bucket numbers it sums at reference time `now`, oldest first.
    pub fn buckets(self, now: DateTime<Utc>) -> std::ops::RangeInclusive<i64> {
        let (grain, count) = self.shape();
        let last = grain.bucket(now);
        (last - count + 1)..=last
    }
}

/// A span of the series endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Span {
    TenMinutes,
    OneHour,
    OneDay,
    TwoDays,
}

impl Span {
    pub const NAMES: [&'static str; 4] = ["10m", "1h", "24h", "48h"];

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "10m" => Some(Span::TenMinutes),
            "1h" => Some(Span::OneHour),
            "24h" => Some(Span::OneDay),
            "48h" => Some(Span::TwoDays),
            _ => None,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Span::TenMinutes => "10m",
            Span::OneHour => "1h",
            Span::OneDay => "24h",
            Span::TwoDays => "48h",
        }
    }

    /// Granularity and number of points.
    pub const fn shape(self) -> (Grain, i64) {
        match self {
            Span::TenMinutes => (Grain::Second, 600),
            Span::OneHour => (Grain::Minute, 60),
            Span::OneDay => (Grain::Minute, 1_440),
            Span::TwoDays => (Grain::Minute, 2_880),
        }
    }

    pub fn buckets(self, now: DateTime<Utc>) -> std::ops::RangeInclusive<i64> {
        let (grain, count) = self.shape();
        let last = grain.bucket(now);
        (last - count + 1)..=last
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("test time")
            .with_timezone(&Utc)
    }

    #[test]
    fn the_last_millisecond_of_a_day_and_midnight_fall_in_different_buckets_of_every_size() {
        let before = at("2026-11-28T23:59:59.999Z");
        let midnight = at("2026-11-29T00:00:00Z");
        for grain in [Grain::Second, Grain::Minute, Grain::Hour, Grain::Day] {
            assert_eq!(
                grain.bucket(before) + 1,
                grain.bucket(midnight),
                "{grain:?}: consecutive buckets"
            );
            assert_eq!(grain.start(grain.bucket(midnight)), midnight);
        }
        assert_eq!(
            Grain::Second.start(Grain::Second.bucket(before)),
            at("2026-11-28T23:59:59Z"),
            "the millisecond is dropped, not rounded up"
        );
    }

    #[test]
    fn a_window_ends_with_the_bucket_of_the_reference_time_and_has_its_length() {
        let now = at("2026-11-29T00:00:00.000Z");
        let w = Window::OneMinute.buckets(now);
        assert_eq!(w.clone().count(), 60);
        assert_eq!(*w.end(), Grain::Second.bucket(now));
        // At midnight the 1-minute window holds 23:59:01 … 00:00:00: 23:59:59.999 is in it,
        // 23:59:00.500 is not.
        assert!(w.contains(&Grain::Second.bucket(at("2026-11-28T23:59:59.999Z"))));
        assert!(!w.contains(&Grain::Second.bucket(at("2026-11-28T23:59:00.500Z"))));
        let day = Window::OneDay.buckets(at("2026-11-29T00:30:00Z"));
        assert_eq!(day.clone().count(), 24);
        assert_eq!(Grain::Hour.start(*day.start()), at("2026-11-28T01:00:00Z"));
        let quarter = Window::FifteenMinutes.buckets(at("2026-11-28T18:40:20Z"));
        assert_eq!(
            Grain::Minute.start(*quarter.start()),
            at("2026-11-28T18:26:00Z")
        );
    }

    #[test]
    fn keys_expire_after_their_bucket_its_retention_and_the_margin() {
        let n = Grain::Second.bucket(at("2026-11-28T12:00:00Z"));
        assert_eq!(
            Grain::Second.expires_at(n, HOURS_KEPT),
            Utc.with_ymd_and_hms(2026, 11, 28, 12, 11, 1)
                .single()
                .expect("time")
                .timestamp()
        );
        let m = Grain::Minute.bucket(at("2026-11-28T12:00:30Z"));
        assert_eq!(
            Grain::Minute.expires_at(m, HOURS_KEPT) - Grain::Minute.start(m).timestamp(),
            60 + 48 * 3_600 + EXPIRY_MARGIN_S
        );
    }

    #[test]
    fn times_before_the_epoch_still_bucket_downwards() {
        let t = at("1969-12-31T23:59:59.500Z");
        assert_eq!(Grain::Second.bucket(t), -1);
        assert_eq!(Grain::Day.bucket(t), -1);
    }
}
