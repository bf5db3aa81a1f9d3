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
use std::path::{Path, PathBuf};

use chrono::{
    DateTime, Datelike, Duration, FixedOffset, NaiveDate, NaiveDateTime, Offset, Timelike, Utc,
};

/// How far ahead `next_after` looks: every valid expression fires within four years (29 Feb);
/// an expression like `0 0 30 2 *` never does and gets `None`.
const HORIZON_DAYS: i64 = 4 * 366 + 1;

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
        match (self.dom_restricted, self.dow_restricted) {
            (true, true) => dom || dow,
            (true, false) => dom,
            (false, true) => dow,
            (false, false) => true,
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
                    .filter(|s| *s > 0)
                    .ok_or_else(|| format!("{}: invalid step {s:?} in {part:?}", field.name))?;
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

/// Where tz database files are: `$TZDIR`, else `/usr/share/zoneinfo`.
pub fn zoneinfo_dir() -> PathBuf {
    std::env::var_os("TZDIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/share/zoneinfo"))
}

/// The time zone a schedule is read in.
#[derive(Clone, Debug, PartialEq)]
pub enum ScheduleZone {
    Fixed(FixedOffset),
    /// Transitions from a TZif file: UTC instants at which the offset changes, and the
    /// offset (seconds east of UTC) that applies from each.
    Named {
        name: String,
        initial_offset: i32,
        transitions: Vec<(i64, i32)>,
    },
}

// === impl ScheduleZone ===

impl ScheduleZone {
    /// `UTC` (the default), `+02:00`/`-0530`, or an IANA name found under `zoneinfo_dir`
    /// (normally `/usr/share/zoneinfo`).
    pub fn parse(name: &str, zoneinfo_dir: &Path) -> Result<ScheduleZone, String> {
        let name = name.trim();
        if name.eq_ignore_ascii_case("utc") || name == "Z" || name.eq_ignore_ascii_case("gmt") {
            return Ok(ScheduleZone::Fixed(Utc.fix()));
        }
        if name.starts_with('+') || name.starts_with('-') {
            return parse_offset(name)
                .map(ScheduleZone::Fixed)
                .ok_or_else(|| format!("invalid UTC offset {name:?} (expected e.g. +02:00)"));
        }
        let valid = !name.is_empty()
            && !name.starts_with('/')
            && name.split('/').all(|part| {
                !part.is_empty()
                    && part != ".."
                    && part
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "_-+.".contains(c))
            });
        if !valid {
            return Err(format!("{name:?} is not a time zone name"));
        }
        let path = zoneinfo_dir.join(name);
        let data = std::fs::read(&path).map_err(|e| {
            format!(
                "unknown time zone {name:?}: {} ({e}); use UTC, an offset like +02:00, or a name from the tz database such as Europe/Paris",
                path.display()
            )
        })?;
        let (initial_offset, transitions) =
            parse_tzif(&data).ok_or_else(|| format!("{} is not a TZif file", path.display()))?;
        Ok(ScheduleZone::Named {
            name: name.to_string(),
            initial_offset,
            transitions,
        })
    }

    /// `UTC`, `+02:00` or the zone's name, for display.
    pub fn name(&self) -> String {
        match self {
            ScheduleZone::Fixed(o) if o.local_minus_utc() == 0 => "UTC".into(),
            ScheduleZone::Fixed(o) => o.to_string(),
            ScheduleZone::Named { name, .. } => name.clone(),
        }
    }

    /// The offset in force at `utc_secs`.
    fn offset_at(&self, utc_secs: i64) -> i32 {
        match self {
            ScheduleZone::Fixed(o) => o.local_minus_utc(),
            ScheduleZone::Named {
                initial_offset,
                transitions,
                ..
            } => {
                let i = transitions.partition_point(|(at, _)| *at <= utc_secs);
                if i == 0 {
                    *initial_offset
                } else {
                    transitions[i - 1].1
                }
            }
        }
    }

    fn to_local(&self, t: DateTime<Utc>) -> NaiveDateTime {
        t.naive_utc() + Duration::seconds(i64::from(self.offset_at(t.timestamp())))
    }

    /// The first UTC instant whose local time is `local`; `None` inside a gap.
    fn to_utc(&self, local: NaiveDateTime) -> Option<DateTime<Utc>> {
        let naive_secs = local.and_utc().timestamp();
        // Try every offset in force around that time, earliest instant first.
        let mut candidates: Vec<i64> = match self {
            ScheduleZone::Fixed(o) => vec![naive_secs - i64::from(o.local_minus_utc())],
            ScheduleZone::Named { .. } => {
                let mut offsets = vec![
                    self.offset_at(naive_secs - 86_400),
                    self.offset_at(naive_secs),
                    self.offset_at(naive_secs + 86_400),
                ];
                offsets.dedup();
                offsets
                    .into_iter()
                    .map(|o| naive_secs - i64::from(o))
                    .collect()
            }
        };
        candidates.sort_unstable();
        candidates
            .into_iter()
            .find(|utc| self.offset_at(*utc) == i32::try_from(naive_secs - utc).unwrap_or(i32::MAX))
            .and_then(|utc| DateTime::from_timestamp(utc, 0))
    }
}

fn parse_offset(s: &str) -> Option<FixedOffset> {
    let sign = if s.starts_with('-') { -1 } else { 1 };
    let digits: String = s[1..].chars().filter(|c| *c != ':').collect();
    if digits.len() != 4 || !digits.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let hours: i32 = digits[..2].parse().ok()?;
    let minutes: i32 = digits[2..].parse().ok()?;
    if hours > 23 || minutes > 59 {
        return None;
    }
    FixedOffset::east_opt(sign * (hours * 3600 + minutes * 60))
}

/// The offsets and transitions of a TZif file (RFC 8536), from its 64-bit section when it has
/// one. Instants after the last transition use the last offset: the POSIX TZ footer that
/// extends rules beyond the table is not read, and distributions' files list transitions
/// up to 2037.
fn parse_tzif(data: &[u8]) -> Option<(i32, Vec<(i64, i32)>)> {
    let header = |at: usize| -> Option<(u8, [usize; 6])> {
        if data.get(at..at + 4)? != b"TZif" {
            return None;
        }
        let version = *data.get(at + 4)?;
        let mut counts = [0usize; 6];
        for (i, c) in counts.iter_mut().enumerate() {
            let o = at + 20 + i * 4;
            *c = u32::from_be_bytes(data.get(o..o + 4)?.try_into().ok()?) as usize;
        }
        Some((version, counts))
    };
    // counts: isutcnt, isstdcnt, leapcnt, timecnt, typecnt, charcnt
    let (version, v1) = header(0)?;
    let (start, counts, time_size) = if version >= b'2' {
        let v1_len = v1[3] * 4 + v1[3] + v1[4] * 6 + v1[5] + v1[2] * 8 + v1[1] + v1[0];
        let second = 44 + v1_len;
        let (_, counts) = header(second)?;
        (second + 44, counts, 8)
    } else {
        (44, v1, 4)
    };
    let [_, _, _, timecnt, typecnt, _] = counts;
    if typecnt == 0 {
        return None;
    }
    let times_at = start;
    let indices_at = times_at + timecnt * time_size;
    let types_at = indices_at + timecnt;
    let offset_of = |ty: usize| -> Option<i32> {
        let o = types_at + ty * 6;
        Some(i32::from_be_bytes(data.get(o..o + 4)?.try_into().ok()?))
    };
    let mut transitions = Vec::with_capacity(timecnt);
    for i in 0..timecnt {
        let at = if time_size == 8 {
            let o = times_at + i * 8;
            i64::from_be_bytes(data.get(o..o + 8)?.try_into().ok()?)
        } else {
            let o = times_at + i * 4;
            i64::from(i32::from_be_bytes(data.get(o..o + 4)?.try_into().ok()?))
        };
        let ty = usize::from(*data.get(indices_at + i)?);
        if ty >= typecnt {
            return None;
        }
        transitions.push((at, offset_of(ty)?));
    }
    // RFC 8536: before the first transition, local time type 0 applies.
    Some((offset_of(0)?, transitions))
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn leap_days_and_impossible_dates() {
        assert_eq!(
            next("0 0 29 2 *", "2026-03-01T00:00:00Z", &z()),
            "2028-02-29T00:00:00+00:00"
        );
        assert_eq!(next("0 0 30 2 *", "2026-03-01T00:00:00Z", &z()), "never");
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
