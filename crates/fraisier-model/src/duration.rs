//! Durations as users write them: "500ms", "2s", "1m", "1h" or a bare number of seconds.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A duration with millisecond precision that parses from the human forms above and serializes
/// back to the shortest exact form (`"1500ms"`, `"2s"`, `"1m"`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Millis(pub u64);

// === impl Millis ===

impl Millis {
    pub const fn from_secs(s: u64) -> Self {
        Millis(s * 1000)
    }

    pub fn as_duration(self) -> Duration {
        Duration::from_millis(self.0)
    }

    pub fn as_secs_f64(self) -> f64 {
        self.0 as f64 / 1000.0
    }

    /// Parses "500ms", "2s", "1.5s", "1m", "1h" or "30" (seconds).
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (num, unit) = match s.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
            Some(i) => (&s[..i], s[i..].trim()),
            None => (s, "s"),
        };
        let value: f64 = num.parse().map_err(|_| {
            format!("invalid duration {s:?} (expected e.g. 500ms, 2s, 1m or a number of seconds)")
        })?;
        let factor = match unit {
            "ms" => 1.0,
            "s" | "sec" | "secs" => 1000.0,
            "m" | "min" | "mins" => 60_000.0,
            "h" => 3_600_000.0,
            _ => {
                return Err(format!(
                    "invalid duration unit {unit:?} in {s:?} (expected ms, s, m or h)"
                ))
            }
        };
        let ms = value * factor;
        if !ms.is_finite() || !(0.0..=1.0e12).contains(&ms) {
            return Err(format!("duration {s:?} is out of range"));
        }
        Ok(Millis(ms.round() as u64))
    }

    /// Accepts a JSON number (seconds) or string, as configuration and request bodies both do.
    pub fn from_json(v: &serde_json::Value) -> Result<Self, String> {
        match v {
            serde_json::Value::Number(n) => match n.as_f64() {
                Some(f) if (0.0..=1.0e9).contains(&f) => Ok(Millis((f * 1000.0).round() as u64)),
                _ => Err(format!("duration {n} is out of range (0 to 1e9 seconds)")),
            },
            serde_json::Value::String(s) => Millis::parse(s),
            other => Err(format!(
                "expected a duration such as \"2s\" or a number of seconds, got {other}"
            )),
        }
    }
}

impl fmt::Display for Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0;
        if ms == 0 {
            write!(f, "0s")
        } else if ms % 3_600_000 == 0 {
            write!(f, "{}h", ms / 3_600_000)
        } else if ms % 60_000 == 0 {
            write!(f, "{}m", ms / 60_000)
        } else if ms % 1000 == 0 {
            write!(f, "{}s", ms / 1000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

impl Serialize for Millis {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Millis {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Millis;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as \"500ms\", \"2s\", \"1m\" or a number of seconds")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Millis, E> {
                v.checked_mul(1000)
                    .map(Millis)
                    .ok_or_else(|| E::custom("duration out of range"))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Millis, E> {
                if v < 0 {
                    return Err(E::custom("duration must not be negative"));
                }
                self.visit_u64(v as u64)
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Millis, E> {
                Millis::from_json(&serde_json::json!(v)).map_err(E::custom)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Millis, E> {
                Millis::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_human_forms() {
        assert_eq!(Millis::parse("500ms"), Ok(Millis(500)));
        assert_eq!(Millis::parse("2s"), Ok(Millis(2000)));
        assert_eq!(Millis::parse("1.5s"), Ok(Millis(1500)));
        assert_eq!(Millis::parse("1m"), Ok(Millis(60_000)));
        assert_eq!(Millis::parse("30"), Ok(Millis(30_000)));
        assert!(Millis::parse("5x").is_err());
        assert!(Millis::parse("").is_err());
        assert!(Millis::parse("-1s").is_err());
    }

    #[test]
    fn displays_shortest_exact_form() {
        assert_eq!(Millis(1500).to_string(), "1500ms");
        assert_eq!(Millis(2000).to_string(), "2s");
        assert_eq!(Millis(120_000).to_string(), "2m");
    }

    #[test]
    fn deserializes_numbers_and_strings() {
        let v: Millis = serde_json::from_str("10").unwrap();
        assert_eq!(v, Millis(10_000));
        let v: Millis = serde_json::from_str("\"250ms\"").unwrap();
        assert_eq!(v, Millis(250));
        assert!(serde_json::from_str::<Millis>("-3").is_err());
    }
}
