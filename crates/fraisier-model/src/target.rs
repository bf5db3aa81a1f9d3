//! Targets (seed 004): the kinds of place a fraise can run, and what a target of each kind
//! must say about how it is reached. Only `fraisier_agent` has a provider; the others are
//! kept as data, so a fleet can be described before Fraisier can deploy to all of it.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Seed 004's target types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TargetType {
    /// A host running `fraisier agent`; it joins with a token rather than being created.
    FraisierAgent,
    DockerHost,
    ComposeHost,
    EcsService,
    NomadJob,
}

impl TargetType {
    pub const ALL: [TargetType; 5] = [
        TargetType::FraisierAgent,
        TargetType::DockerHost,
        TargetType::ComposeHost,
        TargetType::EcsService,
        TargetType::NomadJob,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TargetType::FraisierAgent => "fraisier_agent",
            TargetType::DockerHost => "docker_host",
            TargetType::ComposeHost => "compose_host",
            TargetType::EcsService => "ecs_service",
            TargetType::NomadJob => "nomad_job",
        }
    }

    /// Whether Fraisier can deploy to targets of this type today.
    pub fn has_provider(self) -> bool {
        self == TargetType::FraisierAgent
    }

    /// The connection keys a target of this type cannot do without.
    pub fn required_connection(self) -> &'static [&'static str] {
        match self {
            TargetType::FraisierAgent => &[],
            TargetType::DockerHost | TargetType::ComposeHost => &["host"],
            TargetType::EcsService => &["cluster", "service"],
            TargetType::NomadJob => &["address", "job"],
        }
    }

    pub fn names() -> String {
        Self::ALL.map(Self::as_str).join(", ")
    }
}

impl fmt::Display for TargetType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TargetType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| format!("must be one of {}, got {s:?}", Self::names()))
    }
}

/// How a target is reached: scalar values by key (`host`, `port`, `tlsEnabled`, …).
pub type Connection = serde_json::Map<String, serde_json::Value>;

const MAX_CONNECTION_KEYS: usize = 32;

/// Words that mark a key as holding a secret. A connection is shown to anyone who may read
/// targets, so a credential has no place in it.
const SECRET_WORDS: &[&str] = &[
    "password",
    "secret",
    "token",
    "privatekey",
    "private_key",
    "apikey",
    "api_key",
    "credential",
];

/// The first problem of a target's connection, with the key at fault (`connection.host`).
pub fn connection_problem(kind: TargetType, connection: &Connection) -> Option<(String, String)> {
    if connection.len() > MAX_CONNECTION_KEYS {
        return Some((
            "connection".into(),
            format!("at most {MAX_CONNECTION_KEYS} keys"),
        ));
    }
    for (k, v) in connection {
        let at = format!("connection.{k}");
        if k.is_empty()
            || k.len() > 63
            || !k
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Some((at, "keys are 1 to 63 letters, digits, '_' or '-'".into()));
        }
        let lower = k.to_ascii_lowercase();
        if SECRET_WORDS.iter().any(|w| lower.contains(w)) {
            return Some((
                at,
                "a connection is readable by everyone who may list targets: keep credentials in secrets (PUT /api/v1/secrets/{name}), not here".into(),
            ));
        }
        match v {
            serde_json::Value::String(s) if s.len() > 1024 => {
                return Some((at, "at most 1024 characters".into()))
            }
            serde_json::Value::String(_)
            | serde_json::Value::Number(_)
            | serde_json::Value::Bool(_) => {}
            _ => return Some((at, "must be a string, a number or a boolean".into())),
        }
    }
    kind.required_connection()
        .iter()
        .find(|k| {
            connection
                .get(**k)
                .is_none_or(|v| v.as_str().is_some_and(str::is_empty))
        })
        .map(|k| {
            (
                format!("connection.{k}"),
                format!("a {kind} target needs connection.{k}"),
            )
        })
}

/// The first problem of a deployment directory: an absolute path without `..`.
pub fn directory_problem(dir: &str) -> Option<String> {
    if !dir.starts_with('/') {
        return Some("must be an absolute path".into());
    }
    if dir.len() > 1024 {
        return Some("at most 1024 characters".into());
    }
    if dir.split('/').any(|c| c == "..") || dir.contains('\0') {
        return Some("must not contain '..'".into());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn conn(v: serde_json::Value) -> Connection {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn types_round_trip_by_their_seed_names() {
        for t in TargetType::ALL {
            assert_eq!(t.as_str().parse::<TargetType>(), Ok(t));
            assert_eq!(serde_json::to_value(t).unwrap(), json!(t.as_str()));
        }
        assert!("kubernetes"
            .parse::<TargetType>()
            .unwrap_err()
            .contains("docker_host"));
        assert!(TargetType::FraisierAgent.has_provider());
        assert!(!TargetType::DockerHost.has_provider());
    }

    #[test]
    fn a_connection_names_the_key_at_fault() {
        let ok = conn(json!({"host": "10.0.0.5", "port": 2375, "tlsEnabled": true}));
        assert_eq!(connection_problem(TargetType::DockerHost, &ok), None);
        let missing = conn(json!({"port": 2375}));
        assert_eq!(
            connection_problem(TargetType::DockerHost, &missing)
                .unwrap()
                .0,
            "connection.host"
        );
        let secret = conn(json!({"host": "h", "registryPassword": "x"}));
        assert_eq!(
            connection_problem(TargetType::DockerHost, &secret)
                .unwrap()
                .0,
            "connection.registryPassword"
        );
        let nested = conn(json!({"host": {"name": "h"}}));
        assert_eq!(
            connection_problem(TargetType::DockerHost, &nested)
                .unwrap()
                .0,
            "connection.host"
        );
        let ecs = conn(json!({"cluster": "prod"}));
        assert_eq!(
            connection_problem(TargetType::EcsService, &ecs).unwrap().0,
            "connection.service"
        );
    }

    #[test]
    fn a_deployment_directory_is_absolute_and_stays_put() {
        assert_eq!(directory_problem("/opt/deployments"), None);
        assert!(directory_problem("opt").is_some());
        assert!(directory_problem("/opt/../etc").is_some());
    }
}
