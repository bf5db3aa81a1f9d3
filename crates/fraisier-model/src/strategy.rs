//! Deployment strategies and their `strategy_config`, parsed strictly: an unknown key or a
//! value out of range is an error naming the key, and every default is written down here.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::duration::Millis;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Strategy {
    #[default]
    Rolling,
    BlueGreen,
    Canary,
    Recreate,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RollingConfig {
    pub max_instances_down: u32,
    pub max_surge: u32,
    pub health_check_delay: Millis,
    pub health_check_timeout: Millis,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BlueGreenConfig {
    pub health_check_timeout: Millis,
    pub scale_down_delay: Millis,
    pub smoke_test: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CanaryStep {
    /// Percentage of requests sent to the new version during this step (1–100).
    pub weight: u32,
    pub pause: Millis,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Analysis {
    /// Highest acceptable error rate, in percent.
    pub max_error_rate: f64,
    pub max_latency_p99_ms: Option<f64>,
    /// Fewer requests than this in a step's window: the step waits (up to its pause).
    pub min_requests: u64,
    /// Also fail when the canary's error rate exceeds stable's by more than `max_error_rate`.
    pub compare_to_stable: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CanaryConfig {
    /// The weights before 100%; 100 is always the last step and needs no entry.
    pub steps: Vec<CanaryStep>,
    pub analysis: Analysis,
    pub health_check_timeout: Millis,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RecreateConfig {
    pub health_check_timeout: Millis,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum StrategyConfig {
    Rolling(RollingConfig),
    BlueGreen(BlueGreenConfig),
    Canary(CanaryConfig),
    Recreate(RecreateConfig),
}

/// A `strategy_config` problem: the key at fault (relative to `strategy_config`) and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigKeyError {
    pub field: String,
    pub message: String,
}

// === impl Strategy ===

impl Strategy {
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Rolling => "rolling",
            Strategy::BlueGreen => "blue_green",
            Strategy::Canary => "canary",
            Strategy::Recreate => "recreate",
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Strategy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "rolling" => Ok(Strategy::Rolling),
            "blue_green" | "blue-green" => Ok(Strategy::BlueGreen),
            "canary" => Ok(Strategy::Canary),
            "recreate" => Ok(Strategy::Recreate),
            _ => Err(format!(
                "unknown strategy {s:?} (expected rolling, blue_green, canary or recreate)"
            )),
        }
    }
}

impl Serialize for Strategy {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Strategy {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

// === impl StrategyConfig ===

fn err(field: impl Into<String>, message: impl Into<String>) -> ConfigKeyError {
    ConfigKeyError {
        field: field.into(),
        message: message.into(),
    }
}

fn check_keys(
    map: &Map<String, Value>,
    allowed: &[&str],
    prefix: &str,
) -> Result<(), ConfigKeyError> {
    for key in map.keys() {
        if !allowed.contains(&key.as_str()) {
            return Err(err(
                format!("{prefix}{key}"),
                format!(
                    "unknown key {key:?} (expected one of: {})",
                    allowed.join(", ")
                ),
            ));
        }
    }
    Ok(())
}

fn duration_at(
    map: &Map<String, Value>,
    key: &str,
    default: Millis,
    prefix: &str,
) -> Result<Millis, ConfigKeyError> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => Millis::from_json(v).map_err(|m| err(format!("{prefix}{key}"), m)),
    }
}

fn uint_at(
    map: &Map<String, Value>,
    key: &str,
    default: u64,
    max: u64,
    prefix: &str,
) -> Result<u64, ConfigKeyError> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => match v.as_u64() {
            Some(n) if n <= max => Ok(n),
            _ => Err(err(
                format!("{prefix}{key}"),
                format!("expected an integer from 0 to {max}, got {v}"),
            )),
        },
    }
}

fn percent_at(
    map: &Map<String, Value>,
    key: &str,
    prefix: &str,
) -> Result<Option<f64>, ConfigKeyError> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_f64() {
            Some(n) if (0.0..=100.0).contains(&n) => Ok(Some(n)),
            _ => Err(err(
                format!("{prefix}{key}"),
                format!("expected a percentage from 0 to 100, got {v}"),
            )),
        },
    }
}

fn object<'a>(v: &'a Value, field: &str) -> Result<&'a Map<String, Value>, ConfigKeyError> {
    v.as_object()
        .ok_or_else(|| err(field, format!("expected an object, got {v}")))
}

impl StrategyConfig {
    /// Parses `strategy_config` for `strategy`, filling every default.
    pub fn parse(
        strategy: Strategy,
        map: &Map<String, Value>,
    ) -> Result<StrategyConfig, ConfigKeyError> {
        let timeout = Millis::from_secs(60);
        match strategy {
            Strategy::Rolling => {
                check_keys(
                    map,
                    &[
                        "max_instances_down",
                        "max_surge",
                        "health_check_delay",
                        "health_check_timeout",
                    ],
                    "",
                )?;
                let c = RollingConfig {
                    max_instances_down: uint_at(map, "max_instances_down", 1, 64, "")? as u32,
                    max_surge: uint_at(map, "max_surge", 1, 64, "")? as u32,
                    health_check_delay: duration_at(map, "health_check_delay", Millis(0), "")?,
                    health_check_timeout: duration_at(map, "health_check_timeout", timeout, "")?,
                };
                if c.max_instances_down == 0 && c.max_surge == 0 {
                    return Err(err(
                        "max_surge",
                        "max_surge and max_instances_down cannot both be 0",
                    ));
                }
                Ok(StrategyConfig::Rolling(c))
            }
            Strategy::BlueGreen => {
                check_keys(
                    map,
                    &["health_check_timeout", "scale_down_delay", "smoke_test"],
                    "",
                )?;
                let smoke_test = match map.get("smoke_test") {
                    None | Some(Value::Null) => None,
                    Some(Value::String(s)) if !s.trim().is_empty() => Some(s.clone()),
                    Some(v) => {
                        return Err(err(
                            "smoke_test",
                            format!("expected a command string, got {v}"),
                        ))
                    }
                };
                Ok(StrategyConfig::BlueGreen(BlueGreenConfig {
                    health_check_timeout: duration_at(map, "health_check_timeout", timeout, "")?,
                    scale_down_delay: duration_at(
                        map,
                        "scale_down_delay",
                        Millis::from_secs(30),
                        "",
                    )?,
                    smoke_test,
                }))
            }
            Strategy::Canary => {
                check_keys(
                    map,
                    &["steps", "stages", "analysis", "health_check_timeout"],
                    "",
                )?;
                let steps = match (map.get("steps"), map.get("stages")) {
                    (Some(_), Some(_)) => {
                        return Err(err("stages", "give either `steps` or `stages`, not both"))
                    }
                    (Some(v), None) => parse_steps(v)?,
                    (None, Some(v)) => parse_stages(v)?,
                    (None, None) => vec![
                        CanaryStep {
                            weight: 10,
                            pause: Millis::from_secs(30),
                        },
                        CanaryStep {
                            weight: 50,
                            pause: Millis::from_secs(30),
                        },
                    ],
                };
                let analysis = match map.get("analysis") {
                    None | Some(Value::Null) => Analysis::default(),
                    Some(v) => parse_analysis(object(v, "analysis")?)?,
                };
                Ok(StrategyConfig::Canary(CanaryConfig {
                    steps,
                    analysis,
                    health_check_timeout: duration_at(map, "health_check_timeout", timeout, "")?,
                }))
            }
            Strategy::Recreate => {
                check_keys(map, &["health_check_timeout"], "")?;
                Ok(StrategyConfig::Recreate(RecreateConfig {
                    health_check_timeout: duration_at(map, "health_check_timeout", timeout, "")?,
                }))
            }
        }
    }

    pub fn health_check_timeout(&self) -> Millis {
        match self {
            StrategyConfig::Rolling(c) => c.health_check_timeout,
            StrategyConfig::BlueGreen(c) => c.health_check_timeout,
            StrategyConfig::Canary(c) => c.health_check_timeout,
            StrategyConfig::Recreate(c) => c.health_check_timeout,
        }
    }
}

impl Default for Analysis {
    fn default() -> Self {
        Analysis {
            max_error_rate: 5.0,
            max_latency_p99_ms: None,
            min_requests: 20,
            compare_to_stable: true,
        }
    }
}

fn parse_analysis(map: &Map<String, Value>) -> Result<Analysis, ConfigKeyError> {
    let p = "analysis.";
    check_keys(
        map,
        &[
            "max_error_rate",
            "max_latency_p99_ms",
            "min_requests",
            "compare_to_stable",
        ],
        p,
    )?;
    let d = Analysis::default();
    let max_latency_p99_ms = match map.get("max_latency_p99_ms") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_f64() {
            Some(n) if n > 0.0 && n < 1.0e7 => Some(n),
            _ => {
                return Err(err(
                    "analysis.max_latency_p99_ms",
                    format!("expected a positive number of milliseconds, got {v}"),
                ))
            }
        },
    };
    let compare_to_stable = match map.get("compare_to_stable") {
        None | Some(Value::Null) => d.compare_to_stable,
        Some(Value::Bool(b)) => *b,
        Some(v) => {
            return Err(err(
                "analysis.compare_to_stable",
                format!("expected true or false, got {v}"),
            ))
        }
    };
    Ok(Analysis {
        max_error_rate: percent_at(map, "max_error_rate", p)?.unwrap_or(d.max_error_rate),
        max_latency_p99_ms,
        min_requests: uint_at(map, "min_requests", d.min_requests, 1_000_000_000, p)?,
        compare_to_stable,
    })
}

fn weight_of(v: Option<&Value>, field: String) -> Result<u32, ConfigKeyError> {
    match v.and_then(Value::as_u64) {
        Some(n) if (1..=100).contains(&n) => Ok(n as u32),
        _ => Err(err(
            field,
            format!(
                "expected a percentage from 1 to 100, got {}",
                v.unwrap_or(&Value::Null)
            ),
        )),
    }
}

fn finish_steps(mut steps: Vec<CanaryStep>, list: &str) -> Result<Vec<CanaryStep>, ConfigKeyError> {
    for pair in steps.windows(2) {
        if pair[1].weight <= pair[0].weight {
            return Err(err(list, "weights must increase from one step to the next"));
        }
    }
    // 100% is implied as the last step; writing it out is allowed and changes nothing.
    if steps.last().is_some_and(|s| s.weight == 100) {
        steps.pop();
    }
    Ok(steps)
}

fn parse_steps(v: &Value) -> Result<Vec<CanaryStep>, ConfigKeyError> {
    let list = v
        .as_array()
        .ok_or_else(|| err("steps", format!("expected a list of steps, got {v}")))?;
    let mut steps = Vec::new();
    for (i, s) in list.iter().enumerate() {
        let p = format!("steps[{i}].");
        let m = object(s, &format!("steps[{i}]"))?;
        check_keys(m, &["weight", "pause"], &p)?;
        steps.push(CanaryStep {
            weight: weight_of(m.get("weight"), format!("{p}weight"))?,
            pause: duration_at(m, "pause", Millis::from_secs(30), &p)?,
        });
    }
    finish_steps(steps, "steps")
}

/// Seed 003's `stages`: `percentage`, `duration` ("stable" on the last), `metrics`.
fn parse_stages(v: &Value) -> Result<Vec<CanaryStep>, ConfigKeyError> {
    let list = v
        .as_array()
        .ok_or_else(|| err("stages", format!("expected a list of stages, got {v}")))?;
    let mut steps = Vec::new();
    for (i, s) in list.iter().enumerate() {
        let p = format!("stages[{i}].");
        let m = object(s, &format!("stages[{i}]"))?;
        check_keys(
            m,
            &["percentage", "duration", "metrics", "name", "description"],
            &p,
        )?;
        let weight = weight_of(m.get("percentage"), format!("{p}percentage"))?;
        let pause = match m.get("duration") {
            Some(Value::String(s)) if s == "stable" => Millis(0),
            _ => duration_at(m, "duration", Millis::from_secs(30), &p)?,
        };
        if let Some(metrics) = m.get("metrics") {
            let names = metrics
                .as_array()
                .ok_or_else(|| err(format!("{p}metrics"), "expected a list of metric names"))?;
            for (j, name) in names.iter().enumerate() {
                match name.as_str() {
                    Some("error_rate" | "response_time" | "latency" | "all") => {}
                    _ => {
                        return Err(err(
                            format!("{p}metrics[{j}]"),
                            format!(
                                "metric {name} is not measured by the router (it measures error_rate and response_time)"
                            ),
                        ))
                    }
                }
            }
        }
        steps.push(CanaryStep { weight, pause });
    }
    finish_steps(steps, "stages")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(s: Strategy, v: Value) -> Result<StrategyConfig, ConfigKeyError> {
        StrategyConfig::parse(s, v.as_object().unwrap())
    }

    #[test]
    fn both_spellings_of_blue_green() {
        assert_eq!("blue-green".parse::<Strategy>(), Ok(Strategy::BlueGreen));
        assert_eq!("blue_green".parse::<Strategy>(), Ok(Strategy::BlueGreen));
        assert!("bluegreen".parse::<Strategy>().is_err());
    }

    #[test]
    fn rolling_defaults_and_seed_example() {
        let c = parse(
            Strategy::Rolling,
            json!({"max_instances_down": 1, "health_check_delay": 10, "health_check_timeout": 30}),
        )
        .unwrap();
        assert_eq!(
            c,
            StrategyConfig::Rolling(RollingConfig {
                max_instances_down: 1,
                max_surge: 1,
                health_check_delay: Millis(10_000),
                health_check_timeout: Millis(30_000),
            })
        );
    }

    #[test]
    fn unknown_key_is_named() {
        let e = parse(Strategy::Rolling, json!({"max_surge": 1, "surge": 2})).unwrap_err();
        assert_eq!(e.field, "surge");
        let e = parse(Strategy::Canary, json!({"analysis": {"max_errors": 1}})).unwrap_err();
        assert_eq!(e.field, "analysis.max_errors");
    }

    #[test]
    fn canary_steps_and_seed_stages_are_the_same() {
        let a = parse(
            Strategy::Canary,
            json!({"steps": [{"weight": 5, "pause": "10m"}, {"weight": 25, "pause": "30m"}]}),
        )
        .unwrap();
        let b = parse(
            Strategy::Canary,
            json!({"stages": [
            {"percentage": 5, "duration": "10m", "metrics": ["error_rate", "response_time"]},
            {"percentage": 25, "duration": "30m"},
            {"percentage": 100, "duration": "stable"}]}),
        )
        .unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn canary_refuses_unmeasured_metrics_and_bad_weights() {
        let e = parse(
            Strategy::Canary,
            json!({"stages": [{"percentage": 5, "metrics": ["cpu_usage"]}]}),
        )
        .unwrap_err();
        assert_eq!(e.field, "stages[0].metrics[0]");
        let e = parse(
            Strategy::Canary,
            json!({"steps": [{"weight": 50}, {"weight": 10}]}),
        )
        .unwrap_err();
        assert_eq!(e.field, "steps");
        let e = parse(Strategy::Canary, json!({"steps": [{"weight": 0}]})).unwrap_err();
        assert_eq!(e.field, "steps[0].weight");
    }

    #[test]
    fn negative_or_wrongly_typed_values_are_refused() {
        assert_eq!(
            parse(Strategy::Rolling, json!({"max_surge": -1}))
                .unwrap_err()
                .field,
            "max_surge"
        );
        assert_eq!(
            parse(Strategy::BlueGreen, json!({"scale_down_delay": "soon"}))
                .unwrap_err()
                .field,
            "scale_down_delay"
        );
        assert!(parse(
            Strategy::Rolling,
            json!({"max_surge": 0, "max_instances_down": 0})
        )
        .is_err());
    }
}

#[cfg(test)]
mod round_trip {
    use super::*;
    use serde_json::json;

    #[test]
    fn serialized_configs_parse_back_the_same() {
        for (s, v) in [
            (
                Strategy::Rolling,
                json!({"max_surge": 2, "health_check_delay": "1500ms"}),
            ),
            (
                Strategy::BlueGreen,
                json!({"smoke_test": "curl -f $FRAISIER_TARGET_URL"}),
            ),
            (
                Strategy::Canary,
                json!({"steps": [{"weight": 20, "pause": "2s"}], "analysis": {"max_latency_p99_ms": 300}}),
            ),
            (Strategy::Recreate, json!({})),
        ] {
            let c = StrategyConfig::parse(s, v.as_object().unwrap()).unwrap();
            let back = serde_json::to_value(&c).unwrap();
            assert_eq!(
                StrategyConfig::parse(s, back.as_object().unwrap()).unwrap(),
                c
            );
        }
    }
}
