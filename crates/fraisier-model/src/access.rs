//! Who may do what: permissions, roles as data (seed 003's seven, plus `admin`), environment
//! scopes and restrictions, and the one pure judgement over them, [`judge`].
//!
//! A permission is `resource:action` (`deployment:create`). A role grants patterns of them
//! (`deployment:*`, `*:read`, `*`) in a set of environments. Users, workspaces and signing keys
//! are *administration*: a wildcard resource (`*`, `*:read`) never reaches them, only a pattern
//! that names them (`user:*`), which the `admin` role holds. Seed 003's `deployment_admin`
//! ("full deployment administration", `*`) therefore administers deployments, not people.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// Everything a route or an operation can require. The wire form is `resource:action`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Permission {
    DeploymentRead,
    DeploymentCreate,
    /// Cancel a run, change a service deployment's plain environment variables.
    DeploymentUpdate,
    DeploymentApprove,
    RollbackCreate,
    LogsRead,
    MetricsRead,
    EnvironmentRead,
    /// Create an environment.
    EnvironmentCreate,
    /// Change an environment's settings, lock and unlock it, manage its freeze windows.
    EnvironmentUpdate,
    /// Delete an environment.
    EnvironmentDelete,
    SecretRead,
    SecretUpdate,
    AuditRead,
    ProjectRead,
    ProjectCreate,
    ProjectUpdate,
    ProjectDelete,
    UserRead,
    UserCreate,
    UserUpdate,
    UserDelete,
    WorkspaceRead,
    WorkspaceCreate,
    WorkspaceUpdate,
    WorkspaceDelete,
    /// Rotate the token signing key.
    AuthRotate,
    ArtifactRead,
    /// Upload artifacts and versions.
    ArtifactPush,
    ArtifactDelete,
    /// The record of git hosts' webhook deliveries.
    WebhookRead,
    /// The record of notifications sent about runs.
    NotificationRead,
    /// The agents of the workspace: hosts, status, labels.
    AgentRead,
    /// Make join tokens, with which new agents register.
    AgentCreate,
    /// Change an agent's labels, drain it.
    AgentUpdate,
    /// Revoke an agent's credential.
    AgentDelete,
}

/// A role's grant: `resource:action`, either part `*`, or `*` alone for everything of the
/// deployment domain.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PermissionPattern {
    resource: Option<String>,
    action: Option<String>,
}

/// Where a role may act.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EnvironmentScope {
    All,
    Only(Vec<String>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Role {
    pub name: String,
    pub permissions: Vec<PermissionPattern>,
    pub environments: EnvironmentScope,
    pub description: String,
}

/// A custom role under `roles:` in `fraisier.yaml`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RoleConfig {
    pub permissions: Vec<String>,
    #[serde(default = "all_environments")]
    pub environments: Vec<String>,
    #[serde(default)]
    pub description: Option<String>,
}

/// What an environment asks of whoever changes it (seed 003 `environmentRestrictions`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EnvironmentRules<'a> {
    pub name: &'a str,
    /// One of these roles (or a role granting `*`) is needed to deploy, roll back, cancel,
    /// approve or change secrets here; empty means no such restriction.
    pub required_roles: &'a [String],
}

/// Why a caller was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Denial {
    /// No role of the caller grants the permission.
    Permission { permission: Permission },
    /// A role grants it, but not in this environment.
    Environment {
        permission: Permission,
        environment: String,
        reason: String,
    },
}

/// The roles every server knows, from seed 003 ("Authorization Model"), plus `admin`.
pub const BUILTIN_ROLES: &[(&str, &[&str], &[&str], &str)] = &[
    (
        "admin",
        &["*", "user:*", "workspace:*", "auth:*"],
        &["*"],
        "Everything, including users, workspaces and signing keys",
    ),
    (
        "deployment_admin",
        &["*"],
        &["*"],
        "Full deployment administration",
    ),
    (
        "release_manager",
        &[
            "deployment:*",
            "version:*",
            "rollback:*",
            "environment:production",
        ],
        &["production", "staging"],
        "Release management and production deployments",
    ),
    (
        "devops_engineer",
        &[
            "deployment:create",
            "deployment:update",
            "deployment:scale",
            "kubernetes:*",
            "artifact:*",
        ],
        &["staging", "development"],
        "DevOps operations and automation",
    ),
    (
        "developer",
        &[
            "deployment:read",
            "deployment:create",
            "artifact:push",
            "logs:read",
        ],
        &["development"],
        "Development deployments and testing",
    ),
    (
        "sre_engineer",
        &[
            "monitoring:*",
            "logs:*",
            "metrics:*",
            "alerts:*",
            "deployment:read",
        ],
        &["*"],
        "Site reliability and monitoring",
    ),
    (
        "cost_analyst",
        &["cost:read", "resource:read", "deployment:read"],
        &["*"],
        "Cost analysis and optimization",
    ),
    ("viewer", &["*:read"], &["*"], "Read-only access"),
];

/// Seed 003's `environmentRestrictions`, applied to environments of these names unless
/// `environments.<name>.required_roles` says otherwise.
pub fn default_required_roles(environment: &str) -> &'static [&'static str] {
    match environment {
        "production" => &["deployment_admin", "release_manager"],
        "staging" => &["devops_engineer", "release_manager"],
        "development" => &["developer", "devops_engineer"],
        _ => &[],
    }
}

/// Resources a wildcard resource does not reach.
const ADMINISTRATION: &[&str] = &["user", "workspace", "auth"];

fn all_environments() -> Vec<String> {
    vec!["*".into()]
}

// === impl Permission ===

impl Permission {
    pub const ALL: &'static [Permission] = &[
        Permission::DeploymentRead,
        Permission::DeploymentCreate,
        Permission::DeploymentUpdate,
        Permission::DeploymentApprove,
        Permission::RollbackCreate,
        Permission::LogsRead,
        Permission::MetricsRead,
        Permission::EnvironmentRead,
        Permission::EnvironmentCreate,
        Permission::EnvironmentUpdate,
        Permission::EnvironmentDelete,
        Permission::SecretRead,
        Permission::SecretUpdate,
        Permission::AuditRead,
        Permission::ProjectRead,
        Permission::ProjectCreate,
        Permission::ProjectUpdate,
        Permission::ProjectDelete,
        Permission::UserRead,
        Permission::UserCreate,
        Permission::UserUpdate,
        Permission::UserDelete,
        Permission::WorkspaceRead,
        Permission::WorkspaceCreate,
        Permission::WorkspaceUpdate,
        Permission::WorkspaceDelete,
        Permission::AuthRotate,
        Permission::ArtifactRead,
        Permission::ArtifactPush,
        Permission::ArtifactDelete,
        Permission::WebhookRead,
        Permission::NotificationRead,
        Permission::AgentRead,
        Permission::AgentCreate,
        Permission::AgentUpdate,
        Permission::AgentDelete,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Permission::DeploymentRead => "deployment:read",
            Permission::DeploymentCreate => "deployment:create",
            Permission::DeploymentUpdate => "deployment:update",
            Permission::DeploymentApprove => "deployment:approve",
            Permission::RollbackCreate => "rollback:create",
            Permission::LogsRead => "logs:read",
            Permission::MetricsRead => "metrics:read",
            Permission::EnvironmentRead => "environment:read",
            Permission::EnvironmentCreate => "environment:create",
            Permission::EnvironmentUpdate => "environment:update",
            Permission::EnvironmentDelete => "environment:delete",
            Permission::SecretRead => "secret:read",
            Permission::SecretUpdate => "secret:update",
            Permission::AuditRead => "audit:read",
            Permission::ProjectRead => "project:read",
            Permission::ProjectCreate => "project:create",
            Permission::ProjectUpdate => "project:update",
            Permission::ProjectDelete => "project:delete",
            Permission::UserRead => "user:read",
            Permission::UserCreate => "user:create",
            Permission::UserUpdate => "user:update",
            Permission::UserDelete => "user:delete",
            Permission::WorkspaceRead => "workspace:read",
            Permission::WorkspaceCreate => "workspace:create",
            Permission::WorkspaceUpdate => "workspace:update",
            Permission::WorkspaceDelete => "workspace:delete",
            Permission::AuthRotate => "auth:rotate",
            Permission::ArtifactRead => "artifact:read",
            Permission::ArtifactPush => "artifact:push",
            Permission::ArtifactDelete => "artifact:delete",
            Permission::WebhookRead => "webhook:read",
            Permission::NotificationRead => "notification:read",
            Permission::AgentRead => "agent:read",
            Permission::AgentCreate => "agent:create",
            Permission::AgentUpdate => "agent:update",
            Permission::AgentDelete => "agent:delete",
        }
    }

    fn parts(self) -> (&'static str, &'static str) {
        self.as_str()
            .split_once(':')
            .expect("every permission is resource:action")
    }

    /// Whether an environment's `required_roles` apply: the operations that change what runs
    /// there.
    pub fn is_restricted_by_environment(self) -> bool {
        matches!(
            self,
            Permission::DeploymentCreate
                | Permission::DeploymentUpdate
                | Permission::DeploymentApprove
                | Permission::RollbackCreate
                | Permission::SecretUpdate
                | Permission::EnvironmentUpdate
                | Permission::EnvironmentDelete
        )
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// === impl PermissionPattern ===

impl PermissionPattern {
    /// `*`, `resource:*`, `*:action` or `resource:action`, in lower-case letters, digits and `_`.
    pub fn parse(s: &str) -> Result<PermissionPattern, String> {
        let part = |p: &str| -> Result<Option<String>, String> {
            if p == "*" {
                return Ok(None);
            }
            if p.is_empty()
                || !p
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            {
                return Err(format!(
                    "invalid permission {s:?}: expected resource:action such as deployment:create, deployment:*, *:read or *"
                ));
            }
            Ok(Some(p.to_string()))
        };
        if s == "*" {
            return Ok(PermissionPattern {
                resource: None,
                action: None,
            });
        }
        let (resource, action) = s.split_once(':').ok_or_else(|| {
            format!("invalid permission {s:?}: expected resource:action such as deployment:create, deployment:*, *:read or *")
        })?;
        Ok(PermissionPattern {
            resource: part(resource)?,
            action: part(action)?,
        })
    }

    pub fn grants(&self, permission: Permission) -> bool {
        let (resource, action) = permission.parts();
        let resource_ok = match &self.resource {
            Some(r) => r == resource,
            None => !ADMINISTRATION.contains(&resource),
        };
        resource_ok && self.action.as_deref().is_none_or(|a| a == action)
    }

    /// `*`: every permission of the deployment domain.
    pub fn is_everything(&self) -> bool {
        self.resource.is_none() && self.action.is_none()
    }
}

impl fmt::Display for PermissionPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.resource, &self.action) {
            (None, None) => f.write_str("*"),
            (r, a) => write!(
                f,
                "{}:{}",
                r.as_deref().unwrap_or("*"),
                a.as_deref().unwrap_or("*")
            ),
        }
    }
}

// === impl EnvironmentScope ===

impl EnvironmentScope {
    fn from_list(list: &[String]) -> EnvironmentScope {
        if list.iter().any(|e| e == "*") {
            EnvironmentScope::All
        } else {
            EnvironmentScope::Only(list.to_vec())
        }
    }

    pub fn contains(&self, environment: &str) -> bool {
        match self {
            EnvironmentScope::All => true,
            EnvironmentScope::Only(list) => list.iter().any(|e| e == environment),
        }
    }

    pub fn to_list(&self) -> Vec<String> {
        match self {
            EnvironmentScope::All => vec!["*".into()],
            EnvironmentScope::Only(list) => list.clone(),
        }
    }
}

// === impl Role ===

impl Role {
    pub fn grants(&self, permission: Permission) -> bool {
        self.permissions.iter().any(|p| p.grants(permission))
    }

    /// Holds `*`: satisfies any environment's `required_roles` (seed 003's deployment_admin
    /// acts in every environment).
    pub fn is_unrestricted(&self) -> bool {
        self.permissions
            .iter()
            .any(PermissionPattern::is_everything)
            && self.environments == EnvironmentScope::All
    }

    fn from_config(name: &str, c: &RoleConfig) -> Result<Role, String> {
        let permissions = c
            .permissions
            .iter()
            .map(|p| PermissionPattern::parse(p))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Role {
            name: name.to_string(),
            permissions,
            environments: EnvironmentScope::from_list(&c.environments),
            description: c.description.clone().unwrap_or_default(),
        })
    }
}

/// Every role a server knows: the built-in ones and `roles:` from `fraisier.yaml`.
#[derive(Clone, Debug)]
pub struct Roles {
    roles: BTreeMap<String, Role>,
}

// === impl Roles ===

impl Roles {
    /// The built-in roles plus custom ones; a custom role may not redefine a built-in one.
    pub fn new(custom: &BTreeMap<String, RoleConfig>) -> Result<Roles, Vec<(String, String)>> {
        let mut roles = BTreeMap::new();
        for (name, permissions, environments, description) in BUILTIN_ROLES {
            roles.insert(
                name.to_string(),
                Role {
                    name: name.to_string(),
                    permissions: permissions
                        .iter()
                        .map(|p| PermissionPattern::parse(p).expect("built-in patterns parse"))
                        .collect(),
                    environments: EnvironmentScope::from_list(
                        &environments
                            .iter()
                            .map(|e| e.to_string())
                            .collect::<Vec<_>>(),
                    ),
                    description: description.to_string(),
                },
            );
        }
        let mut problems = Vec::new();
        for (name, c) in custom {
            if roles.contains_key(name) {
                problems.push((
                    name.clone(),
                    format!("{name} is a built-in role and cannot be redefined; pick another name"),
                ));
                continue;
            }
            if crate::names::name_problem(name).is_some() {
                problems.push((
                    name.clone(),
                    "role names are 1 to 63 letters, digits, '_' or '-', starting with a letter"
                        .into(),
                ));
                continue;
            }
            match Role::from_config(name, c) {
                Ok(r) => {
                    roles.insert(name.clone(), r);
                }
                Err(e) => problems.push((format!("{name}.permissions"), e)),
            }
        }
        if problems.is_empty() {
            Ok(Roles { roles })
        } else {
            Err(problems)
        }
    }

    pub fn builtin() -> Roles {
        Roles::new(&BTreeMap::new()).expect("built-in roles are valid")
    }

    pub fn get(&self, name: &str) -> Option<&Role> {
        self.roles.get(name)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.roles.contains_key(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Role> {
        self.roles.values()
    }

    /// The names in `names` that are not roles.
    pub fn unknown<'a>(&self, names: &'a [String]) -> Vec<&'a str> {
        names
            .iter()
            .filter(|n| !self.roles.contains_key(n.as_str()))
            .map(String::as_str)
            .collect()
    }

    /// The permission patterns of `names`, deduplicated, for tokens.
    pub fn patterns_of(&self, names: &[String]) -> Vec<String> {
        let mut out: Vec<String> = names
            .iter()
            .filter_map(|n| self.roles.get(n))
            .flat_map(|r| r.permissions.iter().map(ToString::to_string))
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// Whether roles `sub` grant nothing `sup` does not: every permission and environment of
    /// each role in `sub` is covered by some role in `sup` (API keys never exceed their maker).
    pub fn within(&self, sub: &[String], sup: &[String]) -> bool {
        let sup: Vec<&Role> = sup.iter().filter_map(|n| self.roles.get(n)).collect();
        sub.iter().all(|name| {
            if sup.iter().any(|r| &r.name == name) {
                return true;
            }
            let Some(role) = self.roles.get(name) else {
                return false;
            };
            Permission::ALL
                .iter()
                .filter(|p| role.grants(**p))
                .all(|p| {
                    let granting: Vec<&&Role> = sup.iter().filter(|r| r.grants(*p)).collect();
                    match &role.environments {
                        EnvironmentScope::All => granting
                            .iter()
                            .any(|r| r.environments == EnvironmentScope::All),
                        EnvironmentScope::Only(envs) => envs
                            .iter()
                            .all(|e| granting.iter().any(|r| r.environments.contains(e))),
                    }
                })
        })
    }

    /// The judgement: may a caller holding `roles` do `permission`, in `environment` when the
    /// operation is about one?
    pub fn judge(
        &self,
        roles: &[String],
        permission: Permission,
        environment: Option<&EnvironmentRules<'_>>,
    ) -> Result<(), Denial> {
        judge(
            &roles
                .iter()
                .filter_map(|n| self.roles.get(n))
                .collect::<Vec<_>>(),
            permission,
            environment,
        )
    }
}

/// See [`Roles::judge`].
pub fn judge(
    roles: &[&Role],
    permission: Permission,
    environment: Option<&EnvironmentRules<'_>>,
) -> Result<(), Denial> {
    let granting: Vec<&&Role> = roles.iter().filter(|r| r.grants(permission)).collect();
    if granting.is_empty() {
        return Err(Denial::Permission { permission });
    }
    let Some(env) = environment else {
        return Ok(());
    };
    let in_scope: Vec<&&&Role> = granting
        .iter()
        .filter(|r| r.environments.contains(env.name))
        .collect();
    if in_scope.is_empty() {
        let scopes: Vec<String> = granting
            .iter()
            .map(|r| format!("{} ({})", r.name, r.environments.to_list().join(", ")))
            .collect();
        return Err(Denial::Environment {
            permission,
            environment: env.name.to_string(),
            reason: format!(
                "{permission} is granted only in other environments: {}",
                scopes.join("; ")
            ),
        });
    }
    if permission.is_restricted_by_environment() && !env.required_roles.is_empty() {
        let allowed = in_scope
            .iter()
            .any(|r| r.is_unrestricted() || env.required_roles.contains(&r.name));
        if !allowed {
            return Err(Denial::Environment {
                permission,
                environment: env.name.to_string(),
                reason: format!(
                    "{} requires one of the roles {}",
                    env.name,
                    env.required_roles.join(", ")
                ),
            });
        }
    }
    Ok(())
}

// === impl Denial ===

impl Denial {
    pub fn permission(&self) -> Permission {
        match self {
            Denial::Permission { permission } | Denial::Environment { permission, .. } => {
                *permission
            }
        }
    }
}

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Denial::Permission { permission } => {
                write!(f, "permission {permission} is required")
            }
            Denial::Environment {
                environment,
                reason,
                ..
            } => write!(f, "not allowed in environment {environment}: {reason}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roles() -> Roles {
        Roles::builtin()
    }

    fn env<'a>(name: &'a str, required: &'a [String]) -> EnvironmentRules<'a> {
        EnvironmentRules {
            name,
            required_roles: required,
        }
    }

    fn required(name: &str) -> Vec<String> {
        default_required_roles(name)
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    fn r(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn patterns_parse_and_match() {
        let p = PermissionPattern::parse("deployment:*").unwrap();
        assert!(p.grants(Permission::DeploymentCreate));
        assert!(!p.grants(Permission::LogsRead));
        let p = PermissionPattern::parse("*:read").unwrap();
        assert!(p.grants(Permission::LogsRead));
        assert!(!p.grants(Permission::DeploymentCreate));
        // Administration is only reached by naming it.
        assert!(!p.grants(Permission::UserRead));
        assert!(!PermissionPattern::parse("*")
            .unwrap()
            .grants(Permission::UserCreate));
        assert!(PermissionPattern::parse("user:*")
            .unwrap()
            .grants(Permission::UserCreate));
        for bad in [
            "",
            "deployment",
            "Deployment:read",
            "a:b:c",
            "de ploy:read",
            ":read",
        ] {
            assert!(PermissionPattern::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            PermissionPattern::parse("*:read").unwrap().to_string(),
            "*:read"
        );
    }

    #[test]
    fn the_seed_roles_keep_their_exact_permission_strings() {
        let roles = roles();
        let dev = roles.get("developer").unwrap();
        let strings: Vec<String> = dev.permissions.iter().map(|p| p.to_string()).collect();
        assert_eq!(
            strings,
            [
                "deployment:read",
                "deployment:create",
                "artifact:push",
                "logs:read"
            ]
        );
        assert_eq!(
            dev.environments,
            EnvironmentScope::Only(vec!["development".into()])
        );
        assert_eq!(roles.iter().count(), 8);
    }

    #[test]
    fn a_developer_deploys_to_development_only() {
        let roles = roles();
        let dev = r(&["developer"]);
        let ok = roles.judge(
            &dev,
            Permission::DeploymentCreate,
            Some(&env("development", &required("development"))),
        );
        assert_eq!(ok, Ok(()));
        let refused = roles
            .judge(
                &dev,
                Permission::DeploymentCreate,
                Some(&env("production", &required("production"))),
            )
            .unwrap_err();
        assert!(
            matches!(&refused, Denial::Environment { environment, .. } if environment == "production"),
            "{refused:?}"
        );
        // Reads are not environment-restricted; a permission the role lacks is refused as such.
        assert_eq!(roles.judge(&dev, Permission::DeploymentRead, None), Ok(()));
        assert_eq!(
            roles.judge(&dev, Permission::RollbackCreate, None),
            Err(Denial::Permission {
                permission: Permission::RollbackCreate
            })
        );
    }

    #[test]
    fn production_needs_a_release_role_and_deployment_admin_goes_anywhere() {
        let roles = roles();
        let prod = required("production");
        let staging = required("staging");
        for (who, env_name, required, allowed) in [
            ("release_manager", "production", &prod, true),
            ("deployment_admin", "production", &prod, true),
            ("deployment_admin", "staging", &staging, true),
            ("admin", "production", &prod, true),
            ("devops_engineer", "production", &prod, false),
            ("devops_engineer", "staging", &staging, true),
            ("sre_engineer", "production", &prod, false),
            ("viewer", "staging", &staging, false),
        ] {
            let got = roles.judge(
                &r(&[who]),
                Permission::DeploymentCreate,
                Some(&env(env_name, required)),
            );
            assert_eq!(got.is_ok(), allowed, "{who} in {env_name}: {got:?}");
        }
        // required_roles configured away: the role's own scope still applies.
        let got = roles.judge(
            &r(&["devops_engineer"]),
            Permission::DeploymentCreate,
            Some(&env("production", &[])),
        );
        assert!(matches!(got, Err(Denial::Environment { .. })), "{got:?}");
        // A custom production role named in required_roles.
        let mut custom = BTreeMap::new();
        custom.insert(
            "shipper".to_string(),
            RoleConfig {
                permissions: vec!["deployment:create".into()],
                environments: vec!["production".into()],
                description: None,
            },
        );
        let roles = Roles::new(&custom).unwrap();
        let shipper = r(&["shipper"]);
        assert!(roles
            .judge(
                &shipper,
                Permission::DeploymentCreate,
                Some(&env("production", &prod))
            )
            .is_err());
        let with_shipper = r(&["shipper"]);
        assert!(roles
            .judge(
                &shipper,
                Permission::DeploymentCreate,
                Some(&env("production", &with_shipper))
            )
            .is_ok());
    }

    #[test]
    fn custom_roles_are_validated() {
        let mut custom = BTreeMap::new();
        custom.insert(
            "viewer".to_string(),
            RoleConfig {
                permissions: vec!["*".into()],
                environments: vec!["*".into()],
                description: None,
            },
        );
        custom.insert(
            "bad".to_string(),
            RoleConfig {
                permissions: vec!["deploy".into()],
                environments: vec!["*".into()],
                description: None,
            },
        );
        let problems = Roles::new(&custom).unwrap_err();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert_eq!(problems[0].0, "bad.permissions");
        assert_eq!(problems[1].0, "viewer");
    }

    #[test]
    fn api_key_roles_stay_within_their_maker() {
        let roles = roles();
        assert!(roles.within(&r(&["viewer"]), &r(&["admin"])));
        assert!(roles.within(&r(&["developer"]), &r(&["deployment_admin"])));
        assert!(roles.within(&r(&["developer"]), &r(&["developer"])));
        assert!(!roles.within(&r(&["release_manager"]), &r(&["developer"])));
        assert!(!roles.within(&r(&["admin"]), &r(&["deployment_admin"])));
        assert!(!roles.within(&r(&["nope"]), &r(&["admin"])));
    }
}
