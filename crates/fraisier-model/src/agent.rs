//! Agents as members of a server: their names and labels, what they report in a heartbeat,
//! and the one judgement of whether an agent is online, offline or draining.
//!
//! An *agent* is a `fraisier agent` process on one host. It joins a server once with a join
//! token an admin made, receives its own credential, and then reports every heartbeat
//! interval. The server never asks it whether it is alive: an agent whose last heartbeat is
//! older than `offline_after` is offline, worked out whenever someone looks.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::Millis;

/// Key = value pairs an agent carries (`role=web`), which target groups and fraises select by.
pub type Labels = BTreeMap<String, String>;

/// At most this many labels per agent.
pub const MAX_LABELS: usize = 32;

/// Whether the server may place new work on an agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AgentStatus {
    /// Heartbeating, and open to new work.
    Online,
    /// No heartbeat within `offline_after`: nothing new is placed there until it returns.
    Offline,
    /// Heartbeating, but an operator asked that nothing new be placed there.
    Draining,
}

/// Facts about the host an agent runs on, as it reports them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default)]
pub struct HostFacts {
    #[schema(max_length = 255)]
    pub hostname: String,
    #[schema(max_length = 64)]
    pub os: String,
    #[schema(max_length = 64)]
    pub arch: String,
    pub cpus: u32,
    /// Total memory of the host, in bytes (0 when unknown).
    pub memory_bytes: u64,
}

/// What an agent says every heartbeat interval (`POST /agents/{id}/heartbeat`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    /// The agent's own version (the `fraisier` binary's).
    #[serde(default)]
    #[schema(max_length = 64)]
    pub version: String,
    /// What it can do: `process` (supervise instances), `router`, `exec`.
    #[serde(default)]
    #[schema(max_items = 32)]
    pub capabilities: Vec<String>,
    #[serde(default)]
    pub host: HostFacts,
    /// Services it keeps, and their instances, right now.
    #[serde(default)]
    pub services: u32,
    #[serde(default)]
    pub instances: u32,
}

/// `POST /agents/register`: a new agent joining with a join token.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Registration {
    /// The join token an admin made with `POST /agents/join-tokens`.
    #[schema(min_length = 1, max_length = 200)]
    pub join_token: String,
    /// Unique among the workspace's agents: `web-1`.
    #[schema(min_length = 1, max_length = 63, pattern = "^[A-Za-z][A-Za-z0-9_-]*$")]
    pub name: String,
    #[serde(default)]
    #[schema(schema_with = labels_schema)]
    pub labels: Labels,
    /// The agent's own version.
    #[serde(default)]
    #[schema(max_length = 64)]
    pub version: String,
    #[serde(default)]
    #[schema(max_items = 32)]
    pub capabilities: Vec<String>,
    #[serde(default)]
    pub host: HostFacts,
}

impl Registration {
    /// What the registration says of the agent, as its first heartbeat (it runs nothing yet).
    pub fn heartbeat(&self) -> Heartbeat {
        Heartbeat {
            version: self.version.clone(),
            capabilities: self.capabilities.clone(),
            host: self.host.clone(),
            services: 0,
            instances: 0,
        }
    }
}

/// What a registration answers: who the agent now is, and the credential it presents from
/// now on (shown this once; the server keeps only its digest).
#[derive(Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Membership {
    pub id: String,
    pub name: String,
    pub workspace: String,
    /// Sent as `X-Agent-Token` on agent routes, and good for nothing else.
    pub credential: String,
    /// How often the server expects a heartbeat.
    pub heartbeat_interval_ms: u64,
}

/// The credential never prints.
impl fmt::Debug for Membership {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Membership")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("workspace", &self.workspace)
            .finish_non_exhaustive()
    }
}

/// What a heartbeat answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HeartbeatAck {
    pub status: AgentStatus,
    pub heartbeat_interval_ms: u64,
}

// === impl AgentStatus ===

impl AgentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AgentStatus::Online => "online",
            AgentStatus::Offline => "offline",
            AgentStatus::Draining => "draining",
        }
    }

    pub fn parse(s: &str) -> Option<AgentStatus> {
        match s {
            "online" => Some(AgentStatus::Online),
            "offline" => Some(AgentStatus::Offline),
            "draining" => Some(AgentStatus::Draining),
            _ => None,
        }
    }

    /// The judgement: offline once the last heartbeat is older than `offline_after` (or there
    /// never was one), whatever an operator asked; otherwise draining if they asked for it.
    pub fn judge(
        last_heartbeat: Option<DateTime<Utc>>,
        draining: bool,
        now: DateTime<Utc>,
        offline_after: Millis,
    ) -> AgentStatus {
        let fresh = last_heartbeat.is_some_and(|at| {
            now.signed_duration_since(at).num_milliseconds() <= offline_after.0 as i64
        });
        match (fresh, draining) {
            (false, _) => AgentStatus::Offline,
            (true, true) => AgentStatus::Draining,
            (true, false) => AgentStatus::Online,
        }
    }
}

impl fmt::Display for AgentStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The name of the agent `fraisier serve` starts on its own host.
pub const LOCAL: &str = "local";

/// Why an agent name is refused: the rules of fraise names, not `agt_…`, which agent ids use
/// (a path segment may be either), and not `local`, the server's own agent.
pub fn name_problem(name: &str) -> Option<String> {
    if name.starts_with("agt_") {
        return Some("must not start with 'agt_' (reserved for agent ids)".into());
    }
    if name == LOCAL {
        return Some("'local' is the server's own agent".into());
    }
    crate::names::name_problem(name)
}

/// Why a label is refused. Keys are 1–63 characters of letters, digits, `-`, `_`, `.` and
/// `/`, starting with a letter; values 0–63 of letters, digits, `-`, `_` and `.`.
pub fn label_problem(key: &str, value: &str) -> Option<String> {
    let key_ok = !key.is_empty()
        && key.len() <= 63
        && key.starts_with(|c: char| c.is_ascii_alphabetic())
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
    if !key_ok {
        return Some(format!(
            "label key {key:?} must be 1 to 63 letters, digits, '-', '_', '.' or '/', starting with a letter"
        ));
    }
    let value_ok = value.len() <= 63
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !value_ok {
        return Some(format!(
            "label {key}: value {value:?} must be at most 63 letters, digits, '-', '_' or '.'"
        ));
    }
    None
}

/// What [`label_problem`] accepts, as JSON Schema: for the API document.
pub fn labels_schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    labels_schema_of("object")
}

/// [`labels_schema`], or `null`.
pub fn optional_labels_schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    labels_schema_of(serde_json::json!(["object", "null"]))
}

fn labels_schema_of(
    kind: impl Into<serde_json::Value>,
) -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    let schema = serde_json::json!({
        "type": kind.into(),
        "description": "key → value: keys a letter then letters, digits, '-', '_', '.', '/' (at most 63); values at most 63 letters, digits, '-', '_', '.'",
        "maxProperties": MAX_LABELS,
        "propertyNames": { "type": "string", "pattern": "^[A-Za-z][A-Za-z0-9._/-]{0,62}$" },
        "additionalProperties": { "type": "string", "pattern": "^[A-Za-z0-9._-]{0,63}$" }
    });
    utoipa::openapi::RefOr::T(serde_json::from_value(schema).expect("a valid schema"))
}

/// The first problem of a label set.
pub fn labels_problem(labels: &Labels) -> Option<String> {
    if labels.len() > MAX_LABELS {
        return Some(format!("at most {MAX_LABELS} labels"));
    }
    labels.iter().find_map(|(k, v)| label_problem(k, v))
}

/// Parses `role=web,zone=a` (the command line's form).
pub fn parse_labels(s: &str) -> Result<Labels, String> {
    let mut labels = Labels::new();
    for pair in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| format!("label {pair:?} is not key=value"))?;
        let (k, v) = (k.trim(), v.trim());
        if let Some(p) = label_problem(k, v) {
            return Err(p);
        }
        if labels.insert(k.to_string(), v.to_string()).is_some() {
            return Err(format!("label {k} is given twice"));
        }
    }
    if labels.len() > MAX_LABELS {
        return Err(format!("at most {MAX_LABELS} labels"));
    }
    Ok(labels)
}

/// Whether `labels` carry every pair of `selector`.
pub fn matches(labels: &Labels, selector: &Labels) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(s: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + s, 0).unwrap()
    }

    #[test]
    fn an_agent_is_offline_once_its_heartbeat_is_stale_whatever_was_asked() {
        let after = Millis::from_secs(15);
        assert_eq!(
            AgentStatus::judge(Some(at(0)), false, at(15), after),
            AgentStatus::Online
        );
        assert_eq!(
            AgentStatus::judge(Some(at(0)), false, at(16), after),
            AgentStatus::Offline
        );
        assert_eq!(
            AgentStatus::judge(Some(at(0)), true, at(5), after),
            AgentStatus::Draining
        );
        assert_eq!(
            AgentStatus::judge(Some(at(0)), true, at(60), after),
            AgentStatus::Offline
        );
        assert_eq!(
            AgentStatus::judge(None, false, at(0), after),
            AgentStatus::Offline
        );
        for s in [
            AgentStatus::Online,
            AgentStatus::Offline,
            AgentStatus::Draining,
        ] {
            assert_eq!(AgentStatus::parse(s.as_str()), Some(s));
        }
    }

    #[test]
    fn labels_parse_from_the_command_line_and_bad_ones_are_named() {
        let l = parse_labels("role=web, zone=a,").unwrap();
        assert_eq!(l.get("role").map(String::as_str), Some("web"));
        assert_eq!(l.len(), 2);
        assert!(parse_labels("role").unwrap_err().contains("key=value"));
        assert!(parse_labels("role=a,role=b").unwrap_err().contains("twice"));
        assert!(parse_labels("1x=a").unwrap_err().contains("label key"));
        assert!(parse_labels("zone=a b").unwrap_err().contains("zone"));
        assert!(parse_labels("").unwrap().is_empty());
        let many: Vec<String> = (0..40).map(|i| format!("k{i}=v")).collect();
        assert!(parse_labels(&many.join(",")).is_err());
        assert!(matches(&l, &parse_labels("role=web").unwrap()));
        assert!(!matches(&l, &parse_labels("role=db").unwrap()));
        assert!(matches(&l, &Labels::new()));
    }

    #[test]
    fn agent_names_keep_clear_of_ids() {
        assert!(name_problem("web-1").is_none());
        assert!(name_problem("agt_7").is_some());
        assert!(name_problem("local").is_some());
        assert!(name_problem("-x").is_some());
    }

    #[test]
    fn the_credential_never_prints() {
        let m = Membership {
            id: "agt_1".into(),
            name: "web-1".into(),
            workspace: "default".into(),
            credential: "fag_secret".into(),
            heartbeat_interval_ms: 5000,
        };
        assert!(!format!("{m:?}").contains("fag_secret"));
    }
}
