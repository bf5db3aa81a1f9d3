//! An environment's settings that may be changed through the API (seed 004's environment
//! object), as a sparse overlay on what fraisier.yaml declares, and how one is checked.
//!
//! fraisier.yaml declares environments; the API creates, changes and deletes them. The store
//! keeps the API's side as one [`EnvironmentSettings`] per environment holding only the fields
//! the API set, applied over the file's declaration (or over defaults, for one the file does not
//! declare). A field set through the API therefore keeps its API value across restarts, even
//! when the file says otherwise; the rest of the environment (roles, notifications, change
//! windows) is the file's alone.

use serde::{Deserialize, Serialize};

use crate::config::{EnvironmentConfig, MAX_REQUIRED_APPROVALS};
use crate::duration::Millis;

/// Where a promotion into an environment may come from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PromotionPolicy {
    /// From any environment (seed 004's `"default"`).
    #[default]
    Default,
    /// Only from the environment just before it by `order_index`, which must run the version.
    Sequential,
}

/// The fields of an environment the API may set; `None` leaves a field as it is.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EnvironmentSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_index: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_production: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub required_approvals: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub require_sod: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment_timeout: Option<Millis>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check_interval: Option<Millis>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promotion_policy: Option<PromotionPolicy>,
}

/// Longest display name and description, in characters.
pub const MAX_DISPLAY_NAME: usize = 100;
pub const MAX_DESCRIPTION: usize = 1000;
/// Bounds of `deployment_timeout` (a run's default time limit there).
pub const DEPLOYMENT_TIMEOUT_RANGE: (Millis, Millis) =
    (Millis::from_secs(1), Millis::from_secs(7 * 24 * 3600));
/// Bounds of `health_check_interval` (how often instances are probed there by default).
pub const HEALTH_CHECK_INTERVAL_RANGE: (Millis, Millis) = (Millis(100), Millis::from_secs(3600));

// === impl EnvironmentSettings ===

impl EnvironmentSettings {
    /// Whether no field is set.
    pub fn is_empty(&self) -> bool {
        *self == EnvironmentSettings::default()
    }

    /// `other`'s fields over these.
    pub fn merge(&mut self, other: &EnvironmentSettings) {
        fn over<T: Clone>(mine: &mut Option<T>, theirs: &Option<T>) {
            if theirs.is_some() {
                mine.clone_from(theirs);
            }
        }
        over(&mut self.display_name, &other.display_name);
        over(&mut self.description, &other.description);
        over(&mut self.order_index, &other.order_index);
        over(&mut self.is_production, &other.is_production);
        over(&mut self.required_approvals, &other.required_approvals);
        over(&mut self.require_sod, &other.require_sod);
        over(&mut self.deployment_timeout, &other.deployment_timeout);
        over(
            &mut self.health_check_interval,
            &other.health_check_interval,
        );
        over(&mut self.promotion_policy, &other.promotion_policy);
    }

    /// Sets the fields these hold on an environment.
    pub fn apply_to(&self, e: &mut EnvironmentConfig) {
        if let Some(v) = &self.display_name {
            e.display_name = Some(v.clone());
        }
        if let Some(v) = &self.description {
            e.description = Some(v.clone());
        }
        if let Some(v) = self.order_index {
            e.order_index = Some(v);
        }
        if let Some(v) = self.is_production {
            e.is_production = Some(v);
        }
        if let Some(v) = self.required_approvals {
            e.required_approvals = v;
        }
        if let Some(v) = self.require_sod {
            e.require_sod = v;
        }
        if let Some(v) = self.deployment_timeout {
            e.deployment_timeout = Some(v);
        }
        if let Some(v) = self.health_check_interval {
            e.health_check_interval = Some(v);
        }
        if let Some(v) = self.promotion_policy {
            e.promotion_policy = v;
        }
    }

    /// The fields these set whose value differs from an environment's: what the API holds
    /// against the file.
    pub fn differences(&self, e: &EnvironmentConfig) -> Vec<&'static str> {
        let mut changed = e.clone();
        self.apply_to(&mut changed);
        let mut out = Vec::new();
        let mut check = |field, differs: bool| {
            if differs {
                out.push(field);
            }
        };
        check("display_name", changed.display_name != e.display_name);
        check("description", changed.description != e.description);
        check("order_index", changed.order_index != e.order_index);
        check("is_production", changed.is_production != e.is_production);
        check(
            "required_approvals",
            changed.required_approvals != e.required_approvals,
        );
        check("require_sod", changed.require_sod != e.require_sod);
        check(
            "deployment_timeout",
            changed.deployment_timeout != e.deployment_timeout,
        );
        check(
            "health_check_interval",
            changed.health_check_interval != e.health_check_interval,
        );
        check(
            "promotion_policy",
            changed.promotion_policy != e.promotion_policy,
        );
        out
    }

    /// Every field out of bounds, by name, with what is expected.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if let Some(v) = &self.display_name {
            if v.is_empty() || v.chars().count() > MAX_DISPLAY_NAME {
                out.push((
                    "display_name",
                    format!("1 to {MAX_DISPLAY_NAME} characters"),
                ));
            }
        }
        if self
            .description
            .as_ref()
            .is_some_and(|v| v.chars().count() > MAX_DESCRIPTION)
        {
            out.push((
                "description",
                format!("at most {MAX_DESCRIPTION} characters"),
            ));
        }
        if self.order_index.is_some_and(|v| v > 10_000) {
            out.push(("order_index", "must be between 0 and 10000".into()));
        }
        if self
            .required_approvals
            .is_some_and(|v| v > MAX_REQUIRED_APPROVALS)
        {
            out.push((
                "required_approvals",
                format!("must be at most {MAX_REQUIRED_APPROVALS}"),
            ));
        }
        let (low, high) = DEPLOYMENT_TIMEOUT_RANGE;
        if self.deployment_timeout.is_some_and(|v| v < low || v > high) {
            out.push((
                "deployment_timeout",
                "must be between 1 second and 7 days (a number of seconds, or \"10m\")".into(),
            ));
        }
        let (low, high) = HEALTH_CHECK_INTERVAL_RANGE;
        if self
            .health_check_interval
            .is_some_and(|v| v < low || v > high)
        {
            out.push((
                "health_check_interval",
                "must be between 100ms and 1 hour (a number of seconds, or \"500ms\")".into(),
            ));
        }
        out
    }

    /// The settings an environment of the file holds, all fields set: what an environment
    /// made through the API starts from is [`EnvironmentConfig::made`]'s.
    pub fn of(e: &EnvironmentConfig) -> EnvironmentSettings {
        EnvironmentSettings {
            display_name: e.display_name.clone(),
            description: e.description.clone(),
            order_index: e.order_index,
            is_production: e.is_production,
            required_approvals: Some(e.required_approvals),
            require_sod: Some(e.require_sod),
            deployment_timeout: e.deployment_timeout,
            health_check_interval: e.health_check_interval,
            promotion_policy: Some(e.promotion_policy),
        }
    }
}

/// Where an environment of this name stands in the usual order when none is set.
pub fn default_order(name: &str) -> u32 {
    match name {
        "development" | "dev" => 1,
        "test" | "qa" => 2,
        "staging" => 3,
        "production" | "prod" => 4,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_applies_and_names_differences() {
        let mut e = EnvironmentConfig::made("staging");
        assert_eq!(e.order(), 3);
        assert!(!e.production());
        let mut s = EnvironmentSettings {
            required_approvals: Some(2),
            ..EnvironmentSettings::default()
        };
        s.merge(&EnvironmentSettings {
            is_production: Some(true),
            order_index: Some(7),
            ..EnvironmentSettings::default()
        });
        assert_eq!(s.required_approvals, Some(2));
        assert_eq!(
            s.differences(&e),
            ["order_index", "is_production", "required_approvals"]
        );
        s.apply_to(&mut e);
        assert!(e.production());
        assert_eq!((e.order(), e.required_approvals), (7, 2));
        assert!(s.differences(&e).is_empty());
    }

    #[test]
    fn order_decides_the_environment_before_and_the_probe_interval_falls_back() {
        let c = crate::config::Config::parse(
            "environments:\n  development: {}\n  staging: {}\n  production: {}\n  \
             qa: { order_index: 2, health_check_interval: 250ms, deployment_timeout: 10m }\n\
             fraises:\n  app:\n    command: x\n    health_check: { type: tcp }\n    \
             environments:\n      qa: { port: 9100 }\n",
        )
        .unwrap();
        let ws = c.scope("default");
        let order: Vec<&str> = ws
            .environments_in_order()
            .into_iter()
            .map(|(n, _)| n.as_str())
            .collect();
        assert_eq!(order, ["development", "qa", "staging", "production"]);
        assert_eq!(ws.environment_before("production"), Some("staging"));
        assert_eq!(ws.environment_before("staging"), Some("qa"));
        assert_eq!(ws.environment_before("development"), None);
        let qa = &ws.environments["qa"];
        let spec = ws.fraises["app"]
            .health_check_spec(qa.health_check_interval)
            .unwrap();
        assert_eq!(spec.interval_ms, 250);
        let spec = ws.fraises["app"].health_check_spec(None).unwrap();
        assert_eq!(spec.interval_ms, 1000);
        assert_eq!(qa.deployment_timeout, Some(Millis::from_secs(600)));
        let bad = crate::config::Config::parse(
            "environments:\n  qa: { health_check_interval: 2h, required_approvals: 11 }\n",
        )
        .unwrap_err();
        let keys: Vec<&str> = bad.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "environments.qa.required_approvals",
                "environments.qa.health_check_interval"
            ]
        );
    }

    #[test]
    fn reads_seed_values_and_refuses_out_of_bounds() {
        let s: EnvironmentSettings = serde_json::from_value(serde_json::json!({
            "deployment_timeout": 600, "health_check_interval": 30, "promotion_policy": "default"
        }))
        .unwrap();
        assert_eq!(s.deployment_timeout, Some(Millis::from_secs(600)));
        assert!(s.problems().is_empty());
        let bad = EnvironmentSettings {
            display_name: Some(String::new()),
            required_approvals: Some(11),
            deployment_timeout: Some(Millis(10)),
            health_check_interval: Some(Millis::from_secs(7200)),
            ..EnvironmentSettings::default()
        };
        let fields: Vec<_> = bad.problems().into_iter().map(|(f, _)| f).collect();
        assert_eq!(
            fields,
            [
                "display_name",
                "required_approvals",
                "deployment_timeout",
                "health_check_interval"
            ]
        );
        assert!(
            serde_json::from_value::<EnvironmentSettings>(serde_json::json!({"name": "x"}))
                .is_err()
        );
    }
}
