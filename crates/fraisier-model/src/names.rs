//! Names of fraises and environments: which spellings can exist.

/// Words the API uses as sub-resources (DESIGN §5); they can never name a fraise or environment.
pub const RESERVED: &[&str] = &[
    "rollback", "validate", "health", "logs", "events", "start", "stop", "restart", "scale",
    "promote", "versions", "config", "secrets", "env", "history", "audit", "timeline", "progress",
    "direct", "helm", "github", "sources", "status", "approve", "reject",
];

/// Why a name is refused, or `None` when it is a valid fraise or environment name.
///
/// Names are 1–63 characters of ASCII letters, digits, `_` and `-`, starting with a letter, so
/// they are safe in paths, file names and metric labels; `dep_…` is kept for run ids.
pub fn name_problem(name: &str) -> Option<String> {
    if name.is_empty() || name.len() > 63 {
        return Some("must be 1 to 63 characters long".into());
    }
    if !name.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return Some("must start with a letter".into());
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Some("may contain only letters, digits, '_' and '-'".into());
    }
    if name.starts_with("dep_") {
        return Some("must not start with 'dep_' (reserved for deployment ids)".into());
    }
    if RESERVED.contains(&name) {
        return Some(format!("'{name}' is a reserved word of the API"));
    }
    None
}

pub fn is_valid_name(name: &str) -> bool {
    name_problem(name).is_none()
}

/// The name a fraise has on an agent: the fraise's own in the `default` workspace,
/// `workspace.fraise` in any other — so that two workspaces' fraises of one name never meet
/// on a host (names cannot contain `.`).
pub fn agent_name(workspace: &str, fraise: &str) -> String {
    if workspace == crate::config::DEFAULT_WORKSPACE {
        fraise.to_string()
    } else {
        format!("{workspace}.{fraise}")
    }
}

/// (workspace, fraise) of an agent-side name.
pub fn split_agent_name(name: &str) -> (&str, &str) {
    name.split_once('.')
        .unwrap_or((crate::config::DEFAULT_WORKSPACE, name))
}

/// Why an agent-side name is refused: a fraise name, or `workspace.fraise` of two.
pub fn agent_name_problem(name: &str) -> Option<String> {
    let (workspace, fraise) = split_agent_name(name);
    name_problem(workspace)
        .map(|p| format!("workspace {workspace:?}: {p}"))
        .or_else(|| name_problem(fraise))
}

/// Versions end up in directory names: refuse anything that could escape one.
pub fn version_problem(version: &str) -> Option<String> {
    if version.is_empty() || version.len() > 128 {
        return Some("must be 1 to 128 characters long".into());
    }
    if version == "." || version == ".." {
        return Some("must not be '.' or '..'".into());
    }
    if !version
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '+'))
    {
        return Some("may contain only letters, digits, '.', '_', '-' and '+'".into());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_names() {
        assert!(is_valid_name("my_api"));
        assert!(is_valid_name("production"));
        assert!(is_valid_name("svc-2"));
    }

    #[test]
    fn refuses_what_cannot_exist() {
        for bad in [
            "",
            "../x",
            "a/b",
            "rollback",
            "dep_00001",
            "1abc",
            "a b",
            "é",
        ] {
            assert!(!is_valid_name(bad), "{bad:?} should be refused");
        }
        assert!(version_problem("../1").is_some());
        assert_eq!(agent_name("default", "api"), "api");
        assert_eq!(agent_name("team-a", "api"), "team-a.api");
        assert_eq!(split_agent_name("team-a.api"), ("team-a", "api"));
        assert_eq!(split_agent_name("api"), ("default", "api"));
        assert!(agent_name_problem("team-a.api").is_none());
        for bad in ["a.b.c", ".api", "team.", "../x", "a./b"] {
            assert!(agent_name_problem(bad).is_some(), "{bad}");
        }
        assert!(version_problem("2.0.0+build.1").is_none());
    }
}
