//! The demo app's settings: environment variables, each overridable per release by a
//! `KEY=VALUE` line in `$FRAISIER_RELEASE_DIR/demo.env`.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

pub const PORT: &str = "PORT";
pub const HOST: &str = "DEMO_HOST";
pub const VERSION: &str = "DEMO_VERSION";
pub const FRAISIER_VERSION: &str = "FRAISIER_VERSION";
pub const INSTANCE: &str = "FRAISIER_INSTANCE";
pub const RELEASE_DIR: &str = "FRAISIER_RELEASE_DIR";
pub const STARTUP_DELAY: &str = "DEMO_STARTUP_DELAY";
pub const ERROR_RATE: &str = "DEMO_ERROR_RATE";
pub const LATENCY_MS: &str = "DEMO_LATENCY_MS";
pub const HEALTHY: &str = "DEMO_HEALTHY";
pub const CRASH_AFTER: &str = "DEMO_CRASH_AFTER";
/// Names of variables whose values every answer shows (comma-separated): how the tests see
/// what environment an instance was started with.
pub const SHOW: &str = "DEMO_SHOW";

/// The file in the release directory whose lines override the environment.
pub const ENV_FILE: &str = "demo.env";

#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub host: IpAddr,
    pub port: u16,
    pub version: String,
    pub instance: String,
    /// `/health` answers 503 until this has passed since start.
    pub startup_delay: Duration,
    /// Percent (0–100) of non-health requests answered 500, spread evenly.
    pub error_rate: u8,
    pub latency: Duration,
    /// `false`: `/health` never turns 200.
    pub healthy: bool,
    /// Exit with status 1 after this long.
    pub crash_after: Option<Duration>,
    /// The variables named by `DEMO_SHOW`, with their values (absent ones left out).
    pub show: Vec<(String, String)>,
}

/// Every bad key, each with its value, so one run reports them all.
#[derive(Debug, PartialEq)]
pub struct ConfigError(pub Vec<String>);

// === impl Config ===

impl Config {
    /// Reads the process environment, then `demo.env` of the release directory if present.
    pub fn load() -> Result<Config, ConfigError> {
        let mut vars: HashMap<String, String> = std::env::vars().collect();
        if let Some(dir) = vars.get(RELEASE_DIR).filter(|d| !d.is_empty()) {
            let path = Path::new(dir).join(ENV_FILE);
            match std::fs::read_to_string(&path) {
                Ok(text) => vars.extend(parse_env_file(&text)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(ConfigError(vec![format!("{}: {e}", path.display())]));
                }
            }
        }
        Config::from_vars(|key| vars.get(key).cloned())
    }

    /// Parses every key through `get`, collecting every error before failing.
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let mut errors = Vec::new();
        let mut field = |key: &str, default: &str, parse: &dyn Fn(&str) -> Option<()>| {
            let value = get(key).unwrap_or_else(|| default.to_string());
            if parse(value.trim()).is_none() {
                errors.push(format!("{key}={value:?} is invalid"));
            }
        };
        // Validate first (all keys), then build from values known to parse.
        field(HOST, "127.0.0.1", &|v| v.parse::<IpAddr>().ok().map(drop));
        field(STARTUP_DELAY, "0", &|v| parse_duration(v).map(drop));
        field(ERROR_RATE, "0", &|v| {
            v.parse::<u8>().ok().filter(|r| *r <= 100).map(drop)
        });
        field(LATENCY_MS, "0", &|v| v.parse::<u64>().ok().map(drop));
        field(HEALTHY, "true", &|v| parse_bool(v).map(drop));
        field(CRASH_AFTER, "", &|v| {
            (v.is_empty() || parse_duration(v).is_some()).then_some(())
        });
        match get(PORT) {
            None => errors.push(format!("{PORT} is required")),
            Some(p) if p.trim().parse::<u16>().is_err() => {
                errors.push(format!("{PORT}={p:?} is invalid"));
            }
            Some(_) => {}
        }
        if !errors.is_empty() {
            return Err(ConfigError(errors));
        }

        let value = |key: &str, default: &str| get(key).unwrap_or_else(|| default.into());
        let value = |key: &str, default: &str| value(key, default).trim().to_string();
        let version = get(VERSION)
            .or_else(|| get(FRAISIER_VERSION))
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| "dev".into());
        let crash_after = value(CRASH_AFTER, "");
        Ok(Config {
            host: value(HOST, "127.0.0.1")
                .parse()
                .unwrap_or([127, 0, 0, 1].into()),
            port: value(PORT, "").parse().unwrap_or_default(),
            version,
            instance: get(INSTANCE).unwrap_or_default(),
            startup_delay: parse_duration(&value(STARTUP_DELAY, "0")).unwrap_or_default(),
            error_rate: value(ERROR_RATE, "0").parse().unwrap_or_default(),
            latency: Duration::from_millis(value(LATENCY_MS, "0").parse().unwrap_or_default()),
            healthy: parse_bool(&value(HEALTHY, "true")).unwrap_or(true),
            crash_after: parse_duration(&crash_after).filter(|_| !crash_after.is_empty()),
            show: get(SHOW)
                .unwrap_or_default()
                .split(',')
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .filter_map(|n| get(n).map(|v| (n.to_string(), v)))
                .collect(),
        })
    }
}

/// Whether request number `n` (1-based, health checks excluded) fails at `rate` percent:
/// exactly `rate` of every 100 consecutive requests do, evenly spaced (20 → every 5th).
pub fn fails(n: u64, rate: u8) -> bool {
    let rate = u64::from(rate);
    n * rate / 100 > (n - 1) * rate / 100
}

/// `KEY=VALUE` lines; blank lines and `#` comments skipped, `export ` and quotes tolerated.
pub fn parse_env_file(text: &str) -> impl Iterator<Item = (String, String)> + '_ {
    text.lines().filter_map(|line| {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            return None;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let (key, value) = line.split_once('=')?;
        let value = value.trim();
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .or_else(|| value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
            .unwrap_or(value);
        Some((key.trim().to_string(), value.to_string()))
    })
}

/// "500ms", "2s", "1m", "1h", or a bare number of seconds.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let value: f64 = s[..split].parse().ok()?;
    let seconds = match s[split..].trim() {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return None,
    };
    Duration::try_from_secs_f64(seconds).ok()
}

fn parse_bool(s: &str) -> Option<bool> {
    match s.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Some(true),
        "false" | "0" | "no" | "off" => Some(false),
        _ => None,
    }
}

// === impl ConfigError ===

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid configuration: {}", self.0.join("; "))
    }
}

impl std::error::Error for ConfigError {}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let vars: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_vars(|k| vars.get(k).cloned())
    }

    #[test]
    fn defaults_need_only_a_port() {
        let c = config(&[(PORT, "8080"), (FRAISIER_VERSION, "1.2.0")]).unwrap();
        assert_eq!(c.port, 8080);
        assert_eq!(c.version, "1.2.0");
        assert_eq!(c.startup_delay, Duration::ZERO);
        assert_eq!(
            (c.error_rate, c.latency, c.healthy),
            (0, Duration::ZERO, true)
        );
        assert_eq!(c.crash_after, None);
        assert_eq!(config(&[(PORT, "1")]).unwrap().version, "dev");
    }

    #[test]
    fn every_bad_key_is_reported_with_its_value() {
        let err = config(&[
            (ERROR_RATE, "120"),
            (STARTUP_DELAY, "soon"),
            (HEALTHY, "maybe"),
            (CRASH_AFTER, "2x"),
        ])
        .unwrap_err();
        assert_eq!(err.0.len(), 5, "{err}");
        let text = err.to_string();
        for needle in [
            "PORT is required",
            "\"120\"",
            "\"soon\"",
            "\"maybe\"",
            "\"2x\"",
        ] {
            assert!(text.contains(needle), "{needle} missing from {text}");
        }
    }

    #[test]
    fn values_parse() {
        let c = config(&[
            (PORT, "9000"),
            (VERSION, "2.0.0"),
            (FRAISIER_VERSION, "ignored"),
            (STARTUP_DELAY, "500ms"),
            (ERROR_RATE, "20"),
            (LATENCY_MS, "15"),
            (HEALTHY, "false"),
            (CRASH_AFTER, "2s"),
            (INSTANCE, "api-3"),
        ])
        .unwrap();
        assert_eq!(c.version, "2.0.0");
        assert_eq!(c.startup_delay, Duration::from_millis(500));
        assert_eq!((c.error_rate, c.latency), (20, Duration::from_millis(15)));
        assert!(!c.healthy);
        assert_eq!(c.crash_after, Some(Duration::from_secs(2)));
        assert_eq!(c.instance, "api-3");
    }

    #[test]
    fn env_file_lines() {
        let text = "# comment\n\nDEMO_ERROR_RATE=50\nexport DEMO_VERSION=\"3.0\"\n junk \nX='y'\n";
        let pairs: Vec<_> = parse_env_file(text).collect();
        assert_eq!(
            pairs,
            vec![
                ("DEMO_ERROR_RATE".into(), "50".into()),
                ("DEMO_VERSION".into(), "3.0".into()),
                ("X".into(), "y".into()),
            ]
        );
    }

    #[test]
    fn error_rate_is_exact_and_even() {
        let failing: Vec<u64> = (1..=20).filter(|n| fails(*n, 20)).collect();
        assert_eq!(failing, vec![5, 10, 15, 20]);
        for rate in [0u8, 1, 7, 33, 50, 99, 100] {
            let count = (1..=100).filter(|n| fails(*n, rate)).count();
            assert_eq!(count, usize::from(rate), "rate {rate}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("2s"), Some(Duration::from_secs(2)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("1m"), Some(Duration::from_secs(60)));
        assert_eq!(parse_duration("-1s"), None);
        assert_eq!(parse_duration(""), None);
    }
}
