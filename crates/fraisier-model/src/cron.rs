//! Cron schedules of `scheduled` fraises: the five-field expressions of cron(8) (minute, hour,
//! day of month, month, day of week), with an optional leading seconds field as in Quartz and
//! most cron libraries, and the `@hourly`-style shorthands; parsed once at config load, and
//! the next time a schedule fires after a given instant.
//!
//! Times are matched in the schedule's time zone: UTC, a fixed offset (`+02:00`) or an IANA
//! name (`Europe/Paris`) read from the system's tz database. A local time that does not exist
//! (skipped by a daylight-saving change) does not fire; a local time that happens twice fires
//! the first time only — as in most crons.

use std::fmt;

use chrono::{DateTime, Datelike, Duration, NaiveDate, Timelike, Utc};

pub use crate::tz::{zoneinfo_dir, ScheduleZone};

/// How far ahead `next_after` looks: every satisfiable expression fires within eight years
/// (29 February, across a century year that is not a leap year); one like `0 0 30 2 *` never
/// does and gets `None`.
const HORIZON_DAYS: i64 = 8 * 366 + 1;

/// A parsed cron expression.
#[derive(Clone, PartialEq, Eq)]
pub struct CronSchedule {
    source: String,
    /// `{0}` for five-field expressions.
    seconds: u64,
    minutes: u64,
    hours: u64,
    days_of_month: u64,
    months: u64,
    /// 0 = Sunday; 7 is folded into 0 when parsed.
    days_of_week: u64,
    /// cron(8): when both day fields are restricted, a day matches either.
    dom_restricted: bool,
    dow_restricted: bool,
}

struct Field {
    name: &'static str,
    min: u32,
    max: u32,
    names: &'static [&'static str],
}

const SECOND: Field = Field {
    name: "second",
    min: 0,
    max: 59,
    names: &[],
};
const MINUTE: Field = Field {
    name: "minute",
    min: 0,
    max: 59,
    names: &[],
};
const HOUR: Field = Field {
    name: "hour",
    min: 0,
    max: 23,
    names: &[],
};
const DAY_OF_MONTH: Field = Field {
    name: "day of month",
    min: 1,
    max: 31,
    names: &[],
};
const MONTH: Field = Field {
    name: "month",
    min: 1,
    max: 12,
    names: &[
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ],
};
const DAY_OF_WEEK: Field = Field {
    name: "day of week",
    min: 0,
    max: 7,
    names: &["sun", "mon", "tue", "wed", "thu", "fri", "sat"],
};

// === impl CronSchedule ===

impl CronSchedule {
    /// Parses `expr`; the error says which field is wrong and why.
    pub fn parse(expr: &str) -> Result<CronSchedule, String> {
        let trimmed = expr.trim();
        let expanded = match trimmed.to_ascii_lowercase().as_str() {
            "@yearly" | "@annually" => "0 0 1 1 *".to_string(),
            "@monthly" => "0 0 1 * *".to_string(),
            "@weekly" => "0 0 * * 0".to_string(),
            "@daily" | "@midnight" => "0 0 * * *".to_string(),
            "@hourly" => "0 * * * *".to_string(),
            s if s.starts_with('@') => {
                return Err(format!(
                    "unknown shorthand {trimmed:?} (expected @yearly, @monthly, @weekly, @daily or @hourly)"
                ))
            }
            _ => trimmed.to_string(),
        };
        let mut fields: Vec<&str> = expanded.split_whitespace().collect();
        let seconds = match fields.len() {
            5 => 1,
            6 => parse_field(fields.remove(0), &SECOND)?,
            n => {
                return Err(format!(
                    "expected 5 fields (minute hour day-of-month month day-of-week), or 6 with seconds first; got {n}"
                ))
            }
        };
        let mut days_of_week = parse_field(fields[4], &DAY_OF_WEEK)?;
        if days_of_week & (1 << 7) != 0 {
            days_of_week = (days_of_week & !(1 << 7)) | 1;
        }
        Ok(CronSchedule {
            source: trimmed.to_string(),
            seconds,
            minutes: parse_field(fields[0], &MINUTE)?,
            hours: parse_field(fields[1], &HOUR)?,
            days_of_month: parse_field(fields[2], &DAY_OF_MONTH)?,
            months: parse_field(fields[3], &MONTH)?,
            days_of_week,
            dom_restricted: !fields[2].starts_with('*'),
            dow_restricted: !fields[4].starts_with('*'),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// The first time strictly after `after` at which the schedule fires in `zone`.
    pub fn next_after(&self, after: DateTime<Utc>, zone: &ScheduleZone) -> Option<DateTime<Utc>> {
        let local = zone.to_local(after);
        // The next whole second after `after`, in local wall-clock time.
        let mut t = local
            .with_nanosecond(0)?
            .checked_add_signed(Duration::seconds(1))?;
        let horizon = local.checked_add_signed(Duration::days(HORIZON_DAYS))?;
        while t <= horizon {
            if !self.day_matches(t.date()) {
                t = t.date().succ_opt()?.and_hms_opt(0, 0, 0)?;
                continue;
            }
            if !bit(self.hours, t.hour()) {
                t = t.date().and_hms_opt(t.hour(), 0, 0)? + Duration::hours(1);
                continue;
            }
            if !bit(self.minutes, t.minute()) {
                t = t.date().and_hms_opt(t.hour(), t.minute(), 0)? + Duration::minutes(1);
                continue;
            }
            if bit(self.seconds, t.second()) {
                if let Some(utc) = zone.to_utc(t) {
                    if utc > after {
                        return Some(utc);
                    }
                }
            }
            t += Duration::seconds(1);
        }
        None
    }

    fn day_matches(&self, date: NaiveDate) -> bool {
        if !bit(self.months, date.month()) {
            return false;
        }
        let dom = bit(self.days_of_month, date.day());
        let dow = bit(self.days_of_week, date.weekday().num_days_from_sunday());
        // cron(8): a day field starting with `*` (even `*/2`) makes the two fields combine
        // with AND; when both are restricted, either matching is enough.
        if self.dom_restricted && self.dow_restricted {
            dom || dow
        } else {
            dom && dow
        }
    }
}

impl fmt::Debug for CronSchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CronSchedule({:?})", self.source)
    }
}

fn bit(set: u64, n: u32) -> bool {
    set & (1u64 << n) != 0
}

/// One field: `*`, `a`, `a-b`, any of them with `/step`, comma-separated; names where the
/// field has them (`mon-fri`, `jan,jul`).
fn parse_field(text: &str, field: &Field) -> Result<u64, String> {
    let mut set = 0u64;
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => {
                let step: u32 = s
                    .parse()
                    .ok()
                    .filter(|s| *s > 0 && *s <= field.max)
                    .ok_or_else(|| {
                        format!(
                            "{}: invalid step {s:?} in {part:?} (expected 1 to {})",
                            field.name, field.max
                        )
                    })?;
                (r, Some(step))
            }
            None => (part, None),
        };
        let (lo, hi) = if range == "*" {
            (field.min, field.max)
        } else if let Some((a, b)) = range.split_once('-') {
            (value(a, field)?, value(b, field)?)
        } else {
            let v = value(range, field)?;
            // `5/15` means from 5 to the end in steps of 15.
            (v, if step.is_some() { field.max } else { v })
        };
        if lo > hi {
            return Err(format!(
                "{}: range {range:?} goes backwards ({lo} > {hi})",
                field.name
            ));
        }
        let step = step.unwrap_or(1);
        let mut v = lo;
        while v <= hi {
            set |= 1u64 << v;
            v += step;
        }
    }
    Ok(set)
}

fn value(text: &str, field: &Field) -> Result<u32, String> {
    let lower = text.to_ascii_lowercase();
    if let Some(i) = field.names.iter().position(|n| *n == lower) {
        let offset = if field.min == 1 { 1 } else { 0 };
        return Ok(u32::try_from(i).unwrap_or(0) + offset);
    }
    let v: u32 = text.parse().map_err(|_| {
        let names = if field.names.is_empty() {
            String::new()
        } else {
            format!(" or a name ({})", field.names.join(", "))
        };
        format!(
            "{}: {text:?} is not a number from {} to {}{names}",
            field.name, field.min, field.max
        )
    })?;
    if v < field.min || v > field.max {
        return Err(format!(
            "{}: {v} is out of range ({}–{})",
            field.name, field.min, field.max
        ));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Offset;
    use std::path::Path;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn next(expr: &str, after: &str, zone: &ScheduleZone) -> String {
        CronSchedule::parse(expr)
            .unwrap()
            .next_after(utc(after), zone)
            .map(|t| t.to_rfc3339())
            .unwrap_or_else(|| "never".into())
    }

    fn z() -> ScheduleZone {
        ScheduleZone::Fixed(Utc.fix())
    }

    #[test]
    fn every_minute_fires_on_the_next_whole_minute() {
        assert_eq!(
            next("* * * * *", "2026-01-01T10:00:00Z", &z()),
            "2026-01-01T10:01:00+00:00"
        );
        assert_eq!(
            next("* * * * *", "2026-01-01T10:00:59.999Z", &z()),
            "2026-01-01T10:01:00+00:00"
        );
    }

    #[test]
    fn steps_ranges_lists_and_names() {
        assert_eq!(
            next("*/15 * * * *", "2026-01-01T10:07:00Z", &z()),
            "2026-01-01T10:15:00+00:00"
        );
        assert_eq!(
            next("5/20 * * * *", "2026-01-01T10:26:00Z", &z()),
            "2026-01-01T10:45:00+00:00"
        );
        // 2026-01-03 is a Saturday: the next weekday 09:30 is Monday the 5th.
        assert_eq!(
            next("30 9 * * mon-fri", "2026-01-02T09:30:00Z", &z()),
            "2026-01-05T09:30:00+00:00"
        );
        assert_eq!(
            next("0 0 1 jan,jul *", "2026-02-01T00:00:00Z", &z()),
            "2026-07-01T00:00:00+00:00"
        );
        assert_eq!(
            next("0 12 * * 7", "2026-01-01T00:00:00Z", &z()),
            "2026-01-04T12:00:00+00:00"
        );
    }

    #[test]
    fn an_optional_seconds_field() {
        assert_eq!(
            next("*/2 * * * * *", "2026-01-01T10:00:00.5Z", &z()),
            "2026-01-01T10:00:02+00:00"
        );
        assert_eq!(
            next("30 0 9 * * *", "2026-01-01T09:00:30Z", &z()),
            "2026-01-02T09:00:30+00:00"
        );
    }

    #[test]
    fn shorthands() {
        assert_eq!(
            next("@hourly", "2026-01-01T10:00:00Z", &z()),
            "2026-01-01T11:00:00+00:00"
        );
        assert_eq!(
            next("@daily", "2026-01-01T10:00:00Z", &z()),
            "2026-01-02T00:00:00+00:00"
        );
        assert_eq!(
            next("@yearly", "2026-01-01T10:00:00Z", &z()),
            "2027-01-01T00:00:00+00:00"
        );
    }

    #[test]
    fn restricted_day_fields_match_either() {
        // The 13th, or any Friday: after Thu 2026-02-12 comes Fri the 13th, then Fri the 20th.
        assert_eq!(
            next("0 0 13 * fri", "2026-02-12T00:00:00Z", &z()),
            "2026-02-13T00:00:00+00:00"
        );
        assert_eq!(
            next("0 0 13 * fri", "2026-02-13T00:00:00Z", &z()),
            "2026-02-20T00:00:00+00:00"
        );
    }

    #[test]
    fn a_stepped_star_in_a_day_field_restricts_it() {
        // Odd days of the month: after the 1st comes the 3rd.
        assert_eq!(
            next("0 0 */2 * *", "2026-01-01T00:00:00Z", &z()),
            "2026-01-03T00:00:00+00:00"
        );
        // Days 1–10 that are also Sunday, Tuesday, Thursday or Saturday (AND, as `*` starts
        // the day-of-week field): 2026-03-01 is a Sunday, the 2nd a Monday, the 3rd a Tuesday.
        assert_eq!(
            next("0 0 1-10 * */2", "2026-03-01T00:00:00Z", &z()),
            "2026-03-03T00:00:00+00:00"
        );
    }

    #[test]
    fn leap_days_and_impossible_dates() {
        assert_eq!(
            next("0 0 29 2 *", "2026-03-01T00:00:00Z", &z()),
            "2028-02-29T00:00:00+00:00"
        );
        assert_eq!(next("0 0 30 2 *", "2026-03-01T00:00:00Z", &z()), "never");
        // 2100 is not a leap year: eight years from the last 29 February to the next.
        assert_eq!(
            next("0 0 29 2 *", "2096-03-01T00:00:00Z", &z()),
            "2104-02-29T00:00:00+00:00"
        );
    }

    #[test]
    fn fixed_offsets() {
        let zone = ScheduleZone::parse("+02:00", Path::new("/nonexistent")).unwrap();
        assert_eq!(
            next("0 9 * * *", "2026-01-01T08:00:00Z", &zone),
            "2026-01-02T07:00:00+00:00"
        );
    }

    #[test]
    fn errors_name_the_field() {
        for (expr, want) in [
            ("* * * *", "expected 5 fields"),
            ("* * * * * * *", "got 7"),
            ("60 * * * * *", "second: 60 is out of range"),
            ("60 * * * *", "minute: 60 is out of range"),
            ("* 24 * * *", "hour: 24 is out of range"),
            ("* * 0 * *", "day of month: 0 is out of range"),
            ("* * * foo *", "month: \"foo\" is not a number"),
            ("* * * * 8", "day of week: 8 is out of range"),
            ("*/0 * * * *", "minute: invalid step"),
            ("1/4294967295 * * * *", "minute: invalid step"),
            ("5-1 * * * *", "goes backwards"),
            ("@every5m", "unknown shorthand"),
        ] {
            let err = CronSchedule::parse(expr).unwrap_err();
            assert!(err.contains(want), "{expr}: {err}");
        }
    }

    #[test]
    fn zone_names_are_checked() {
        let dir = Path::new("/nonexistent");
        assert!(ScheduleZone::parse("../etc/passwd", dir)
            .unwrap_err()
            .contains("not a time zone"));
        assert!(ScheduleZone::parse("Mars/Olympus", dir)
            .unwrap_err()
            .contains("unknown time zone"));
        assert!(ScheduleZone::parse("+25:00", dir).is_err());
    }

    #[test]
    fn daylight_saving_in_a_named_zone() {
        let dir = Path::new("/usr/share/zoneinfo");
        if !dir.join("Europe/Paris").exists() {
            eprintln!("no tz database here; skipped");
            return;
        }
        let paris = ScheduleZone::parse("Europe/Paris", dir).unwrap();
        // Winter (UTC+1) and summer (UTC+2).
        assert_eq!(
            next("0 9 * * *", "2026-01-15T00:00:00Z", &paris),
            "2026-01-15T08:00:00+00:00"
        );
        assert_eq!(
            next("0 9 * * *", "2026-07-15T00:00:00Z", &paris),
            "2026-07-15T07:00:00+00:00"
        );
        // 2026-03-29 02:30 does not exist in Paris: skipped, next is the 30th.
        assert_eq!(
            next("30 2 * * *", "2026-03-28T12:00:00Z", &paris),
            "2026-03-30T00:30:00+00:00"
        );
        // 2026-10-25 02:30 happens twice: the first (UTC+2) only.
        assert_eq!(
            next("30 2 * * *", "2026-10-24T12:00:00Z", &paris),
            "2026-10-25T00:30:00+00:00"
        );
        assert_eq!(
            next("30 2 * * *", "2026-10-25T00:30:00Z", &paris),
            "2026-10-26T01:30:00+00:00"
        );
    }
}
