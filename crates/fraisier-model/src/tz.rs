//! Time zones for schedules: UTC, fixed offsets, and the system's tz database (TZif files,
//! RFC 8536), including the POSIX TZ rule in a file's footer that gives daylight-saving
//! changes beyond its table — "slim" files, zic's default, list no transitions after the
//! rules last changed and rely on it.
//!
//! Local time ↔ UTC: `to_local` is exact; `to_utc` gives the earliest instant with that local
//! time, or `None` for a local time skipped by a change (a gap).

use std::path::{Path, PathBuf};

use chrono::{DateTime, Datelike, Duration, FixedOffset, NaiveDate, NaiveDateTime, Offset, Utc};

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
    Named { name: String, table: ZoneTable },
}

/// What a TZif file says: the offset (seconds east of UTC) before the first transition,
/// the transitions (UTC instant, offset from then on), and the rule for instants after the
/// last one.
#[derive(Clone, Debug, PartialEq)]
pub struct ZoneTable {
    initial_offset: i32,
    transitions: Vec<(i64, i32)>,
    rule: Option<PosixRule>,
}

/// A POSIX TZ string such as `CET-1CEST,M3.5.0,M10.5.0/3`.
#[derive(Clone, Debug, PartialEq)]
struct PosixRule {
    /// Seconds east of UTC (the string's sign is the opposite).
    std_offset: i32,
    dst: Option<DstRule>,
}

#[derive(Clone, Debug, PartialEq)]
struct DstRule {
    offset: i32,
    /// When daylight saving starts, in standard local time, and ends, in daylight local time.
    start: (DayRule, i32),
    end: (DayRule, i32),
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum DayRule {
    /// `Jn`: day 1–365, 29 February never counted.
    Julian1(u32),
    /// `n`: day 0–365, 29 February counted.
    Julian0(u32),
    /// `Mm.w.d`: day `d` (0 = Sunday) of week `w` (5 = the last) of month `m`.
    MonthWeekDay { month: u32, week: u32, weekday: u32 },
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
        let table = parse_tzif(&data)
            .ok_or_else(|| format!("{} is not a valid TZif file", path.display()))?;
        Ok(ScheduleZone::Named {
            name: name.to_string(),
            table,
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
            ScheduleZone::Named { table, .. } => table.offset_at(utc_secs),
        }
    }

    pub(crate) fn to_local(&self, t: DateTime<Utc>) -> NaiveDateTime {
        t.naive_utc() + Duration::seconds(i64::from(self.offset_at(t.timestamp())))
    }

    /// The first UTC instant whose local time is `local`; `None` inside a gap.
    pub(crate) fn to_utc(&self, local: NaiveDateTime) -> Option<DateTime<Utc>> {
        let naive_secs = local.and_utc().timestamp();
        // Every offset in force within a day of that time, earliest instant first.
        let mut offsets = vec![
            self.offset_at(naive_secs - 86_400),
            self.offset_at(naive_secs),
            self.offset_at(naive_secs + 86_400),
        ];
        offsets.sort_unstable();
        offsets.dedup();
        let mut candidates: Vec<i64> = offsets
            .into_iter()
            .map(|o| naive_secs - i64::from(o))
            .collect();
        candidates.sort_unstable();
        candidates
            .into_iter()
            .find(|utc| i64::from(self.offset_at(*utc)) == naive_secs - utc)
            .and_then(|utc| DateTime::from_timestamp(utc, 0))
    }
}

// === impl ZoneTable ===

impl ZoneTable {
    fn offset_at(&self, utc_secs: i64) -> i32 {
        let i = self.transitions.partition_point(|(at, _)| *at <= utc_secs);
        if i == self.transitions.len() {
            if let Some(rule) = &self.rule {
                return rule.offset_at(utc_secs);
            }
        }
        match i {
            0 => self.initial_offset,
            i => self.transitions[i - 1].1,
        }
    }
}

// === impl PosixRule ===

impl PosixRule {
    fn offset_at(&self, utc_secs: i64) -> i32 {
        let Some(dst) = &self.dst else {
            return self.std_offset;
        };
        let local_std = utc_secs + i64::from(self.std_offset);
        let Some(year) = DateTime::from_timestamp(local_std, 0).map(|t| t.year()) else {
            return self.std_offset;
        };
        let (Some(start), Some(end)) = (
            dst.start.0.local_midnight(year),
            dst.end.0.local_midnight(year),
        ) else {
            return self.std_offset;
        };
        // Start is given in standard time, end in daylight time.
        let start = start + i64::from(dst.start.1) - i64::from(self.std_offset);
        let end = end + i64::from(dst.end.1) - i64::from(dst.offset);
        let in_dst = if start < end {
            start <= utc_secs && utc_secs < end
        } else {
            // Southern hemisphere: daylight time spans the new year.
            !(end <= utc_secs && utc_secs < start)
        };
        if in_dst {
            dst.offset
        } else {
            self.std_offset
        }
    }

    /// Parses e.g. `EST5EDT,M3.2.0,M11.1.0`, `<+0330>-3:30`, `CET-1CEST,M3.5.0,M10.5.0/3`.
    fn parse(s: &str) -> Option<PosixRule> {
        let mut rest = s;
        skip_name(&mut rest)?;
        let std_offset = -parse_hms(&mut rest)?;
        if rest.is_empty() {
            return Some(PosixRule {
                std_offset,
                dst: None,
            });
        }
        skip_name(&mut rest)?;
        let offset = if rest.starts_with(',') {
            std_offset + 3600
        } else {
            -parse_hms(&mut rest)?
        };
        let mut rule = || -> Option<(DayRule, i32)> {
            rest = rest.strip_prefix(',')?;
            let day = DayRule::parse(&mut rest)?;
            let time = match rest.strip_prefix('/') {
                Some(r) => {
                    rest = r;
                    parse_hms(&mut rest)?
                }
                None => 7200,
            };
            Some((day, time))
        };
        let start = rule()?;
        let end = rule()?;
        rest.is_empty().then_some(PosixRule {
            std_offset,
            dst: Some(DstRule { offset, start, end }),
        })
    }
}

// === impl DayRule ===

impl DayRule {
    fn parse(rest: &mut &str) -> Option<DayRule> {
        if let Some(r) = rest.strip_prefix('M') {
            *rest = r;
            let month = take_number(rest)?;
            *rest = rest.strip_prefix('.')?;
            let week = take_number(rest)?;
            *rest = rest.strip_prefix('.')?;
            let weekday = take_number(rest)?;
            ((1..=12).contains(&month) && (1..=5).contains(&week) && weekday <= 6).then_some(
                DayRule::MonthWeekDay {
                    month,
                    week,
                    weekday,
                },
            )
        } else if let Some(r) = rest.strip_prefix('J') {
            *rest = r;
            let n = take_number(rest)?;
            (1..=365).contains(&n).then_some(DayRule::Julian1(n))
        } else {
            let n = take_number(rest)?;
            (n <= 365).then_some(DayRule::Julian0(n))
        }
    }

    /// Midnight (local) of the rule's day in `year`, as seconds since the epoch of that local
    /// wall-clock time.
    fn local_midnight(self, year: i32) -> Option<i64> {
        let date = match self {
            DayRule::Julian1(n) => {
                let jan1 = NaiveDate::from_ymd_opt(year, 1, 1)?;
                let leap_skip = u32::from(jan1.leap_year() && n >= 60);
                jan1 + Duration::days(i64::from(n - 1 + leap_skip))
            }
            DayRule::Julian0(n) => {
                NaiveDate::from_ymd_opt(year, 1, 1)? + Duration::days(i64::from(n))
            }
            DayRule::MonthWeekDay {
                month,
                week,
                weekday,
            } => {
                let first = NaiveDate::from_ymd_opt(year, month, 1)?;
                let first_wd = first.weekday().num_days_from_sunday();
                let mut day = 1 + (weekday + 7 - first_wd) % 7 + (week - 1) * 7;
                while NaiveDate::from_ymd_opt(year, month, day).is_none() {
                    day -= 7;
                }
                NaiveDate::from_ymd_opt(year, month, day)?
            }
        };
        Some(date.and_hms_opt(0, 0, 0)?.and_utc().timestamp())
    }
}

fn skip_name(rest: &mut &str) -> Option<()> {
    if let Some(r) = rest.strip_prefix('<') {
        let end = r.find('>')?;
        *rest = &r[end + 1..];
        return Some(());
    }
    let len = rest.chars().take_while(|c| c.is_ascii_alphabetic()).count();
    (len >= 3).then(|| *rest = &rest[len..])
}

fn take_number(rest: &mut &str) -> Option<u32> {
    let len = rest.chars().take_while(|c| c.is_ascii_digit()).count();
    if len == 0 || len > 4 {
        return None;
    }
    let n = rest[..len].parse().ok()?;
    *rest = &rest[len..];
    Some(n)
}

/// `[+-]hh[:mm[:ss]]` in seconds, hours up to 167 (RFC 8536's extension).
fn parse_hms(rest: &mut &str) -> Option<i32> {
    let sign = match rest.chars().next() {
        Some('-') => {
            *rest = &rest[1..];
            -1
        }
        Some('+') => {
            *rest = &rest[1..];
            1
        }
        _ => 1,
    };
    let hours = take_number(rest)?;
    let mut secs = hours.checked_mul(3600).filter(|_| hours <= 167)?;
    for unit in [60, 1] {
        match rest.strip_prefix(':') {
            Some(r) => {
                *rest = r;
                let n = take_number(rest).filter(|n| *n < 60)?;
                secs += n * unit;
            }
            None => break,
        }
    }
    Some(sign * i32::try_from(secs).ok()?)
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

/// Reads a TZif file (versions 1 to 4): the 64-bit section and footer when there are, else
/// the 32-bit one. Every count is checked against the file's length before it is used, so a
/// malformed file is refused, never trusted.
fn parse_tzif(data: &[u8]) -> Option<ZoneTable> {
    let be32 = |at: usize| -> Option<u32> {
        Some(u32::from_be_bytes(
            data.get(at..at.checked_add(4)?)?.try_into().ok()?,
        ))
    };
    // counts: isutcnt, isstdcnt, leapcnt, timecnt, typecnt, charcnt
    let header = |at: usize| -> Option<(u8, [usize; 6])> {
        if data.get(at..at.checked_add(4)?)? != b"TZif" {
            return None;
        }
        let version = *data.get(at + 4)?;
        let mut counts = [0usize; 6];
        for (i, c) in counts.iter_mut().enumerate() {
            *c = usize::try_from(be32(at + 20 + i * 4)?).ok()?;
        }
        Some((version, counts))
    };
    let block_len = |c: &[usize; 6], time_size: usize| -> Option<usize> {
        let [isut, isstd, leap, time, ty, chars] = *c;
        time.checked_mul(time_size + 1)?
            .checked_add(ty.checked_mul(6)?)?
            .checked_add(chars)?
            .checked_add(leap.checked_mul(time_size + 4)?)?
            .checked_add(isstd)?
            .checked_add(isut)
    };
    let (version, v1) = header(0)?;
    let (start, counts, time_size) = if version >= b'2' {
        let second = 44usize.checked_add(block_len(&v1, 4)?)?;
        let (_, counts) = header(second)?;
        (second + 44, counts, 8)
    } else {
        (44, v1, 4)
    };
    let end = start.checked_add(block_len(&counts, time_size)?)?;
    if end > data.len() {
        return None;
    }
    let [_, _, _, timecnt, typecnt, _] = counts;
    if typecnt == 0 {
        return None;
    }
    let indices_at = start + timecnt * time_size;
    let types_at = indices_at + timecnt;
    let offset_of = |ty: usize| -> Option<i32> { be32(types_at + ty * 6).map(|v| v as i32) };
    let mut transitions = Vec::with_capacity(timecnt);
    for i in 0..timecnt {
        let at = if time_size == 8 {
            let o = start + i * 8;
            i64::from_be_bytes(data.get(o..o + 8)?.try_into().ok()?)
        } else {
            i64::from(be32(start + i * 4)? as i32)
        };
        let ty = usize::from(*data.get(indices_at + i)?);
        if ty >= typecnt {
            return None;
        }
        transitions.push((at, offset_of(ty)?));
    }
    // The footer: "\n<POSIX TZ string>\n" after the 64-bit block.
    let rule = if version >= b'2' {
        data.get(end..)
            .and_then(|f| f.strip_prefix(b"\n"))
            .and_then(|f| f.split(|b| *b == b'\n').next())
            .and_then(|f| std::str::from_utf8(f).ok())
            .filter(|f| !f.is_empty())
            .and_then(PosixRule::parse)
    } else {
        None
    };
    // RFC 8536: before the first transition, local time type 0 applies.
    Some(ZoneTable {
        initial_offset: offset_of(0)?,
        transitions,
        rule,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> i64 {
        DateTime::parse_from_rfc3339(s).unwrap().timestamp()
    }

    #[test]
    fn posix_rules_give_daylight_saving_in_both_hemispheres() {
        let paris = PosixRule::parse("CET-1CEST,M3.5.0,M10.5.0/3").unwrap();
        assert_eq!(paris.offset_at(at("2030-01-15T12:00:00Z")), 3600);
        assert_eq!(paris.offset_at(at("2030-07-15T12:00:00Z")), 7200);
        // 2030-03-31 01:00 UTC (02:00 CET) is the change.
        assert_eq!(paris.offset_at(at("2030-03-31T00:59:59Z")), 3600);
        assert_eq!(paris.offset_at(at("2030-03-31T01:00:00Z")), 7200);
        // 2030-10-27 01:00 UTC (03:00 CEST) is the change back.
        assert_eq!(paris.offset_at(at("2030-10-27T00:59:59Z")), 7200);
        assert_eq!(paris.offset_at(at("2030-10-27T01:00:00Z")), 3600);

        let new_york = PosixRule::parse("EST5EDT,M3.2.0,M11.1.0").unwrap();
        assert_eq!(new_york.offset_at(at("2030-01-15T12:00:00Z")), -5 * 3600);
        assert_eq!(new_york.offset_at(at("2030-07-15T12:00:00Z")), -4 * 3600);

        let sydney = PosixRule::parse("AEST-10AEDT,M10.1.0,M4.1.0/3").unwrap();
        assert_eq!(sydney.offset_at(at("2030-01-15T12:00:00Z")), 11 * 3600);
        assert_eq!(sydney.offset_at(at("2030-07-15T12:00:00Z")), 10 * 3600);

        let tehran = PosixRule::parse("<+0330>-3:30").unwrap();
        assert_eq!(
            tehran.offset_at(at("2030-07-15T12:00:00Z")),
            3 * 3600 + 1800
        );
        assert!(PosixRule::parse("CET-1CEST,M13.5.0,M10.5.0").is_none());
        assert!(PosixRule::parse("X1").is_none());
    }

    #[test]
    fn malformed_files_are_refused() {
        assert!(parse_tzif(b"").is_none());
        assert!(parse_tzif(b"TZif2").is_none());
        // A header claiming 2^32-1 transitions in a file of 44 bytes.
        let mut huge = b"TZif\0".to_vec();
        huge.resize(44, 0);
        huge[32..36].copy_from_slice(&u32::MAX.to_be_bytes());
        huge[36..40].copy_from_slice(&1u32.to_be_bytes());
        assert!(parse_tzif(&huge).is_none());
    }

    #[test]
    fn a_slim_file_uses_its_footer_after_the_table() {
        // Version 2, no 32-bit data, one local time type (CET), no transitions, and the rule.
        let mut v2 = b"TZif2".to_vec();
        v2.resize(44, 0); // an empty 32-bit header (all counts 0)...
        let mut second = b"TZif2".to_vec();
        second.resize(44, 0);
        second[36..40].copy_from_slice(&1u32.to_be_bytes()); // typecnt
        second[40..44].copy_from_slice(&4u32.to_be_bytes()); // charcnt
        v2.extend(second);
        v2.extend(3600i32.to_be_bytes());
        v2.extend([0, 0]); // isdst, abbreviation index
        v2.extend(b"CET\0");
        v2.extend(b"\nCET-1CEST,M3.5.0,M10.5.0/3\n");
        let table = parse_tzif(&v2).unwrap();
        assert_eq!(table.offset_at(at("2030-07-15T12:00:00Z")), 7200);
        assert_eq!(table.offset_at(at("2030-01-15T12:00:00Z")), 3600);
    }

    #[test]
    fn the_system_database_agrees_with_the_rule_it_ships() {
        let dir = zoneinfo_dir();
        let Ok(ScheduleZone::Named { table, .. }) = ScheduleZone::parse("Europe/Paris", &dir)
        else {
            eprintln!("no tz database here; skipped");
            return;
        };
        assert!(table.rule.is_some(), "the footer is read");
        // Beyond any table (2037 in full files), the rule carries on.
        assert_eq!(table.offset_at(at("2050-07-15T12:00:00Z")), 7200);
        assert_eq!(table.offset_at(at("2050-01-15T12:00:00Z")), 3600);
    }
}
