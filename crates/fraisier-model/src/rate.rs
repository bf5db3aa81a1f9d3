//! Rate limits: how users write them (`"2000/h"`, `"10/15m"`, `off`) and the fixed-window
//! count that enforces one, as a pure function of the time it is given.

use std::fmt;

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize, Serializer};

use crate::duration::Millis;

/// At most `count` requests per `period`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    pub count: u32,
    pub period: Millis,
}

/// `server.rate_limits` (seed 000 "Rate Limiting"): per identity, every request counts against
/// `authenticated` and against `read` (GET, HEAD) or `write` (the other methods); `login`
/// counts failed sign-ins per username and per source address. `None` is `off`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct RateLimits {
    pub authenticated: Option<RateLimit>,
    pub read: Option<RateLimit>,
    pub write: Option<RateLimit>,
    pub login: Option<RateLimit>,
}

/// One identity's use of one limit: the window it started and what it spent in it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Window {
    pub started_ms: i64,
    pub used: u32,
}

/// What a request learned from a limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    pub limit: u32,
    pub remaining: u32,
    /// Unix time (ms) at which the window ends.
    pub reset_ms: i64,
}

// === impl RateLimit ===

impl RateLimit {
    /// `"1000/h"`, `"100/1m"`, `"10/15m"`, `"5/30s"`.
    pub fn parse(s: &str) -> Result<RateLimit, String> {
        let (count, period) = s.split_once('/').ok_or_else(|| {
            format!(
                "invalid rate limit {s:?}: expected COUNT/PERIOD such as 1000/h or 10/15m, or off"
            )
        })?;
        let count: u32 = count.trim().parse().map_err(|_| {
            format!("invalid rate limit {s:?}: the count must be a whole number from 1")
        })?;
        if count == 0 {
            return Err(format!(
                "invalid rate limit {s:?}: the count must be at least 1 (use off for no limit)"
            ));
        }
        let period = period.trim();
        // "h", "m", "s" alone mean one of them.
        let period = if period.starts_with(|c: char| c.is_ascii_digit()) {
            Millis::parse(period)?
        } else {
            Millis::parse(&format!("1{period}"))?
        };
        if period.0 < 1000 {
            return Err(format!(
                "invalid rate limit {s:?}: the period must be at least 1s"
            ));
        }
        Ok(RateLimit { count, period })
    }

    /// Counts one request at `now_ms` against `window` if it fits; the verdict says whether
    /// it did and what remains. A window starts with the first request after the last one ended.
    pub fn take(&self, window: &mut Window, now_ms: i64) -> Verdict {
        let period = self.period.0 as i64;
        if window.used == 0 || now_ms >= window.started_ms + period || now_ms < window.started_ms {
            *window = Window {
                started_ms: now_ms,
                used: 0,
            };
        }
        let allowed = window.used < self.count;
        if allowed {
            window.used += 1;
        }
        Verdict {
            allowed,
            limit: self.count,
            remaining: self.count - window.used,
            reset_ms: window.started_ms + period,
        }
    }
}

impl fmt::Display for RateLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.count, self.period)
    }
}

impl Serialize for RateLimit {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

fn limit_or_off<'de, D: Deserializer<'de>>(d: D) -> Result<Option<RateLimit>, D::Error> {
    let s = String::deserialize(d)?;
    if s.trim() == "off" {
        return Ok(None);
    }
    RateLimit::parse(&s).map(Some).map_err(de::Error::custom)
}

// === impl RateLimits ===

impl RateLimits {
    pub const OFF: RateLimits = RateLimits {
        authenticated: None,
        read: None,
        write: None,
        login: None,
    };
}

/// Seed 000's defaults, and 10 failed sign-ins per 15 minutes.
impl Default for RateLimits {
    fn default() -> Self {
        let per_hour = |count| {
            Some(RateLimit {
                count,
                period: Millis::from_secs(3600),
            })
        };
        RateLimits {
            authenticated: per_hour(1000),
            read: per_hour(2000),
            write: per_hour(100),
            login: Some(RateLimit {
                count: 10,
                period: Millis::from_secs(900),
            }),
        }
    }
}

impl<'de> Deserialize<'de> for RateLimits {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Fields {
            #[serde(default, deserialize_with = "limit_or_off")]
            authenticated: Option<RateLimit>,
            #[serde(default, deserialize_with = "limit_or_off")]
            read: Option<RateLimit>,
            #[serde(default, deserialize_with = "limit_or_off")]
            write: Option<RateLimit>,
            #[serde(default, deserialize_with = "limit_or_off")]
            login: Option<RateLimit>,
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            Word(String),
            Map(serde_yaml::Value),
        }
        match Form::deserialize(d)? {
            Form::Word(w) if w == "off" => Ok(RateLimits::OFF),
            Form::Word(w) => Err(de::Error::custom(format!(
                "expected off or a map of read, write, authenticated and login limits, got {w:?}"
            ))),
            Form::Map(v) => {
                // A key left out keeps its default; a key set to off turns that limit off.
                let defaults = RateLimits::default();
                let keys: Vec<String> = v
                    .as_mapping()
                    .map(|m| {
                        m.keys()
                            .filter_map(|k| k.as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default();
                let f: Fields = serde_yaml::from_value(v).map_err(de::Error::custom)?;
                let pick = |key: &str, given: Option<RateLimit>, default: Option<RateLimit>| {
                    if keys.iter().any(|k| k == key) {
                        given
                    } else {
                        default
                    }
                };
                Ok(RateLimits {
                    authenticated: pick("authenticated", f.authenticated, defaults.authenticated),
                    read: pick("read", f.read, defaults.read),
                    write: pick("write", f.write, defaults.write),
                    login: pick("login", f.login, defaults.login),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_parse_as_written() {
        assert_eq!(
            RateLimit::parse("2000/h").unwrap(),
            RateLimit {
                count: 2000,
                period: Millis::from_secs(3600)
            }
        );
        assert_eq!(
            RateLimit::parse("10/15m").unwrap().period,
            Millis::from_secs(900)
        );
        for bad in ["", "10", "0/h", "x/h", "10/x", "10/0s", "-1/h"] {
            assert!(RateLimit::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_config_form_keeps_defaults_for_keys_left_out() {
        let l: RateLimits = serde_yaml::from_str("{ write: 5/m, read: off }").unwrap();
        assert_eq!(l.write.unwrap().count, 5);
        assert_eq!(l.read, None);
        assert_eq!(l.authenticated, RateLimits::default().authenticated);
        let off: RateLimits = serde_yaml::from_str("off").unwrap();
        assert_eq!(off, RateLimits::OFF);
        assert!(serde_yaml::from_str::<RateLimits>("{ bogus: 1/h }").is_err());
        assert!(serde_yaml::from_str::<RateLimits>("sometimes").is_err());
    }

    #[test]
    fn a_window_counts_exactly_and_resets() {
        let limit = RateLimit::parse("3/10s").unwrap();
        let mut w = Window::default();
        let verdicts: Vec<bool> = (0..5)
            .map(|i| limit.take(&mut w, 1000 + i).allowed)
            .collect();
        assert_eq!(verdicts, [true, true, true, false, false]);
        let v = limit.take(&mut w, 5000);
        assert_eq!((v.allowed, v.remaining, v.reset_ms), (false, 0, 11_000));
        let v = limit.take(&mut w, 11_000);
        assert_eq!((v.allowed, v.remaining, v.reset_ms), (true, 2, 21_000));
    }
}
