//! Every route of the API and what it needs of its caller, in one table: the gate reads it for
//! each request, and a test checks it against the OpenAPI document, both ways.

use axum::http::Method;
use fraisier_model::access::Permission;

/// What a route needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// Anyone (health, sign-in, the API document).
    Public,
    /// A git host's webhook: no credential; the handler checks the host's signature over the
    /// body against the secrets in `fraisier.yaml`.
    Signed,
    /// Any valid credential; the handler decides what the caller may touch (their own keys,
    /// their own password).
    Authenticated,
    Permission(Permission),
    /// An agent's own credential (`X-Agent-Token`); the handler checks it is the agent named.
    Agent,
}

#[derive(Clone, Copy, Debug)]
pub struct RouteAccess {
    pub method: &'static str,
    /// The pattern as the router declares it, under `/api/v1`.
    pub path: &'static str,
    pub need: Need,
    /// The action the audit trail records (`deployment.create`).
    pub action: &'static str,
}

const fn route(
    method: &'static str,
    path: &'static str,
    need: Need,
    action: &'static str,
) -> RouteAccess {
    RouteAccess {
        method,
        path,
        need,
        action,
    }
}

use Need::{Agent, Authenticated, Public, Signed};
use Permission as P;

const fn may(p: Permission) -> Need {
    Need::Permission(p)
}

#[rustfmt::skip]
pub const ROUTES: &[RouteAccess] = &[
    route("GET", "/health", Public, "health.read"),
    route("GET", "/openapi.json", Public, "openapi.read"),
    route("POST", "/auth/token", Public, "auth.token"),
    route("POST", "/auth/login", Public, "auth.login"),
    route("POST", "/auth/refresh", Public, "auth.refresh"),
    route("POST", "/auth/logout", Authenticated, "auth.logout"),
    route("GET", "/auth/me", Authenticated, "auth.me"),
    route("POST", "/auth/keys/rotate", may(P::AuthRotate), "auth.rotate_key"),
    route("GET", "/deployments", may(P::DeploymentRead), "deployment.list"),
    route("POST", "/deployments", may(P::DeploymentCreate), "deployment.create"),
    route("POST", "/deployments/validate", may(P::DeploymentRead), "deployment.validate"),
    route("GET", "/deployments/sources", may(P::DeploymentRead), "source.list"),
    route("POST", "/deployments/sources/validate", may(P::DeploymentRead), "source.validate"),
    route("POST", "/deployments/github", may(P::DeploymentCreate), "deployment.create"),
    route("POST", "/deployments/direct", may(P::DeploymentCreate), "deployment.create"),
    // The same refusal for every caller: nothing is deployed, nothing is read.
    route("POST", "/deployments/helm", Authenticated, "deployment.helm"),
    route("GET", "/deployments/{id}", may(P::DeploymentRead), "deployment.read"),
    route("DELETE", "/deployments/{id}", may(P::DeploymentUpdate), "deployment.cancel"),
    route("GET", "/deployments/{id}/logs", may(P::LogsRead), "deployment.logs"),
    route("GET", "/deployments/{id}/events", may(P::DeploymentRead), "deployment.events"),
    route("GET", "/deployments/{id}/audit", may(P::AuditRead), "deployment.audit"),
    route("GET", "/deployments/{id}/health", may(P::DeploymentRead), "deployment.health"),
    route("GET", "/deployments/{id}/progress", may(P::DeploymentRead), "deployment.progress"),
    route("POST", "/deployments/{id}/rollback", may(P::RollbackCreate), "deployment.rollback"),
    route("POST", "/deployments/{id}/approve", may(P::DeploymentApprove), "deployment.approve"),
    route("POST", "/deployments/{id}/reject", may(P::DeploymentApprove), "deployment.reject"),
    route("POST", "/deployments/{id}/{environment}", may(P::DeploymentCreate), "deployment.create"),
    route("POST", "/deployments/{id}/{environment}/rollback", may(P::RollbackCreate), "deployment.rollback"),
    route("GET", "/deployments/{id}/secrets", may(P::SecretRead), "secret.list"),
    route("PUT", "/deployments/{id}/secrets", may(P::SecretUpdate), "secret.update"),
    route("GET", "/deployments/{id}/env", may(P::DeploymentRead), "env.read"),
    route("PUT", "/deployments/{id}/env", may(P::DeploymentUpdate), "env.update"),
    route("POST", "/secrets/keys/rotate", may(P::AuthRotate), "secret.rotate_key"),
    route("GET", "/secrets", may(P::SecretRead), "secret.workspace_list"),
    route("PUT", "/secrets/{name}", may(P::SecretUpdate), "secret.workspace_set"),
    route("DELETE", "/secrets/{name}", may(P::SecretUpdate), "secret.workspace_delete"),
    route("GET", "/my/pending-approvals", Authenticated, "approval.list"),
    route("GET", "/artifacts", may(P::ArtifactRead), "artifact.list"),
    route("GET", "/artifacts/signing-key", may(P::ArtifactRead), "artifact.signing_key"),
    route("GET", "/artifacts/storage", may(P::ArtifactRead), "artifact.storage"),
    route("GET", "/artifacts/storage/usage", may(P::ArtifactRead), "artifact.storage_usage"),
    route("GET", "/artifacts/storage/costs", may(P::ArtifactRead), "artifact.storage_costs"),
    route("POST", "/artifacts/storage/cleanup", may(P::ArtifactDelete), "artifact.cleanup"),
    route("POST", "/artifacts/{name}/sign", may(P::ArtifactPush), "artifact.sign"),
    route("GET", "/artifacts/{name}/signature", may(P::ArtifactRead), "artifact.signature"),
    route("POST", "/artifacts/{name}/scan", may(P::ArtifactPush), "artifact.scan"),
    route("GET", "/artifacts/{name}/vulnerabilities", may(P::ArtifactRead), "artifact.vulnerabilities"),
    route("POST", "/webhook", Signed, "webhook.receive"),
    route("POST", "/webhooks/{provider}", Signed, "webhook.receive"),
    route("GET", "/webhooks/deliveries", may(P::WebhookRead), "webhook.deliveries"),
    route("GET", "/notifications/deliveries", may(P::NotificationRead), "notification.deliveries"),
    route("POST", "/artifacts", may(P::ArtifactPush), "artifact.push"),
    route("GET", "/artifacts/types", may(P::ArtifactRead), "artifact.types"),
    route("GET", "/artifacts/types/{type}", may(P::ArtifactRead), "artifact.type"),
    route("GET", "/artifacts/types/{type}/artifacts", may(P::ArtifactRead), "artifact.list_by_type"),
    route("GET", "/artifacts/{name}", may(P::ArtifactRead), "artifact.read"),
    route("PUT", "/artifacts/{name}", may(P::ArtifactPush), "artifact.update"),
    route("DELETE", "/artifacts/{name}", may(P::ArtifactDelete), "artifact.delete"),
    route("GET", "/artifacts/{name}/versions", may(P::ArtifactRead), "artifact.versions"),
    route("POST", "/artifacts/{name}/versions", may(P::ArtifactPush), "artifact.push_version"),
    route("POST", "/artifacts/{name}/promote", may(P::DeploymentCreate), "artifact.promote"),
    route("GET", "/artifacts/{name}/versions/{version}", may(P::ArtifactRead), "artifact.version"),
    route("DELETE", "/artifacts/{name}/versions/{version}", may(P::ArtifactDelete), "artifact.delete_version"),
    route("GET", "/artifacts/{name}/download", may(P::ArtifactRead), "artifact.download"),
    route("GET", "/blobs/{digest}", may(P::ArtifactRead), "blob.read"),
    route("GET", "/fraises", may(P::DeploymentRead), "fraise.list"),
    route("GET", "/fraises/{name}", may(P::DeploymentRead), "fraise.read"),
    route("GET", "/fraises/{name}/status", may(P::DeploymentRead), "fraise.status"),
    route("GET", "/fraises/{name}/history", may(P::DeploymentRead), "fraise.history"),
    route("GET", "/environments", may(P::EnvironmentRead), "environment.list"),
    route("POST", "/environments", may(P::EnvironmentCreate), "environment.create"),
    route("GET", "/environments/{name}", may(P::EnvironmentRead), "environment.read"),
    route("PUT", "/environments/{name}", may(P::EnvironmentUpdate), "environment.update"),
    route("DELETE", "/environments/{name}", may(P::EnvironmentDelete), "environment.delete"),
    route("GET", "/environments/{name}/status", may(P::EnvironmentRead), "environment.status"),
    route("POST", "/agents/join-tokens", may(P::AgentCreate), "agent.join_token"),
    // The join token in the body is the credential; the handler checks it.
    route("POST", "/agents/register", Public, "agent.register"),
    route("GET", "/agents", may(P::AgentRead), "agent.list"),
    route("GET", "/agents/{id}", may(P::AgentRead), "agent.read"),
    route("PUT", "/agents/{id}", may(P::AgentUpdate), "agent.update"),
    route("DELETE", "/agents/{id}", may(P::AgentDelete), "agent.revoke"),
    route("POST", "/agents/{id}/heartbeat", Agent, "agent.heartbeat"),
    route("GET", "/agents/{id}/task-stream", Agent, "agent.task_stream"),
    route("GET", "/targets", may(P::AgentRead), "target.list"),
    route("POST", "/targets", may(P::AgentCreate), "target.create"),
    route("GET", "/targets/{id}", may(P::AgentRead), "target.read"),
    route("PUT", "/targets/{id}", may(P::AgentUpdate), "target.update"),
    route("DELETE", "/targets/{id}", may(P::AgentDelete), "target.delete"),
    route("GET", "/environments/{name}/target-groups", may(P::EnvironmentRead), "target_group.list"),
    route("POST", "/environments/{name}/target-groups", may(P::EnvironmentUpdate), "target_group.create"),
    route("GET", "/target-groups/{id}", may(P::EnvironmentRead), "target_group.read"),
    route("PUT", "/target-groups/{id}", may(P::EnvironmentUpdate), "target_group.update"),
    route("DELETE", "/target-groups/{id}", may(P::EnvironmentUpdate), "target_group.delete"),
    route("POST", "/targets/{id}/health-check", may(P::AgentRead), "target.health_check"),
    route("GET", "/targets/{id}/sticker", may(P::AgentRead), "target.sticker"),
    route("GET", "/targets/{id}/drift", may(P::AgentRead), "target.drift"),
    route("POST", "/environments/{name}/lock", may(P::EnvironmentUpdate), "environment.lock"),
    route("POST", "/environments/{name}/unlock", may(P::EnvironmentUpdate), "environment.unlock"),
    route("GET", "/environments/{name}/limits", may(P::EnvironmentRead), "environment.limits"),
    route("GET", "/environments/{name}/health", may(P::EnvironmentRead), "environment.health"),
    route("GET", "/environments/{name}/config", may(P::EnvironmentRead), "environment.config"),
    route("PUT", "/environments/{name}/config", may(P::EnvironmentUpdate), "environment.set_config"),
    route("GET", "/environments/{name}/variables", may(P::EnvironmentRead), "environment.variables"),
    route("PUT", "/environments/{name}/variables", may(P::DeploymentUpdate), "environment.set_variables"),
    route("GET", "/environments/{name}/metrics", may(P::MetricsRead), "environment.metrics"),
    route("GET", "/environments/{name}/deployments", may(P::DeploymentRead), "environment.deployments"),
    route("PUT", "/environments/{name}/limits", may(P::EnvironmentUpdate), "environment.set_limits"),
    route("GET", "/environments/{name}/freeze-windows", may(P::EnvironmentRead), "environment.freeze_windows"),
    route("POST", "/environments/{name}/freeze-windows", may(P::EnvironmentUpdate), "environment.freeze"),
    route("DELETE", "/environments/{name}/freeze-windows/{window}", may(P::EnvironmentUpdate), "environment.unfreeze"),
    route("GET", "/metrics", may(P::MetricsRead), "metrics.read"),
    route("GET", "/users", may(P::UserRead), "user.list"),
    route("POST", "/users", may(P::UserCreate), "user.create"),
    route("GET", "/users/{username}", may(P::UserRead), "user.read"),
    route("PUT", "/users/{username}", may(P::UserUpdate), "user.update"),
    route("DELETE", "/users/{username}", may(P::UserDelete), "user.delete"),
    route("POST", "/users/{username}/password", Authenticated, "user.set_password"),
    route("GET", "/roles", Authenticated, "role.list"),
    route("GET", "/api-keys", Authenticated, "api_key.list"),
    route("POST", "/api-keys", Authenticated, "api_key.create"),
    route("DELETE", "/api-keys/{id}", Authenticated, "api_key.revoke"),
    route("GET", "/audit", may(P::AuditRead), "audit.list"),
    route("GET", "/workspaces", Authenticated, "workspace.list"),
    route("POST", "/workspaces", may(P::WorkspaceCreate), "workspace.create"),
    route("GET", "/workspaces/{name}", Authenticated, "workspace.read"),
    route("PUT", "/workspaces/{name}", may(P::WorkspaceUpdate), "workspace.update"),
    route("DELETE", "/workspaces/{name}", may(P::WorkspaceDelete), "workspace.delete"),
    route("GET", "/projects", may(P::ProjectRead), "project.list"),
    route("POST", "/projects", may(P::ProjectCreate), "project.create"),
    route("GET", "/projects/{name}", may(P::ProjectRead), "project.read"),
    route("PUT", "/projects/{name}", may(P::ProjectUpdate), "project.update"),
    route("DELETE", "/projects/{name}", may(P::ProjectDelete), "project.delete"),
];

/// The table's entry for a request; HEAD is answered by GET routes.
pub fn find(method: &Method, pattern: &str) -> Option<&'static RouteAccess> {
    let path = pattern.strip_prefix("/api/v1").unwrap_or(pattern);
    let method = if method == Method::HEAD {
        "GET"
    } else {
        method.as_str()
    };
    ROUTES.iter().find(|r| r.method == method && r.path == path)
}

/// Whether the table lists any method of this route pattern.
pub fn declared(pattern: &str) -> bool {
    let path = pattern.strip_prefix("/api/v1").unwrap_or(pattern);
    ROUTES.iter().any(|r| r.path == path)
}

/// `/deployments/{id}/logs` and `/deployments/{deployment_id}/logs` are the same route.
pub fn shape(path: &str) -> String {
    path.split('/')
        .map(|seg| if seg.starts_with('{') { "{}" } else { seg })
        .collect::<Vec<_>>()
        .join("/")
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn every_documented_operation_is_in_the_table_and_back() {
        let doc = crate::api::openapi::document_json();
        let mut documented = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            let path = path
                .strip_prefix("/api/v1")
                .expect("paths are under /api/v1");
            for method in ["get", "post", "put", "delete", "patch"] {
                if item.get(method).is_some() {
                    documented.insert((method.to_uppercase(), shape(path)));
                }
            }
        }
        let table: BTreeSet<(String, String)> = ROUTES
            .iter()
            .map(|r| (r.method.to_string(), shape(r.path)))
            .collect();
        assert_eq!(table.len(), ROUTES.len(), "a route is listed twice");
        let undocumented: Vec<_> = table.difference(&documented).collect();
        let undeclared: Vec<_> = documented.difference(&table).collect();
        assert!(
            undocumented.is_empty(),
            "in the table, not in the OpenAPI document: {undocumented:?}"
        );
        assert!(
            undeclared.is_empty(),
            "documented, not in the table: {undeclared:?}"
        );
    }

    #[test]
    fn only_health_sign_in_registration_and_the_document_are_public() {
        let public: Vec<&str> = ROUTES
            .iter()
            .filter(|r| r.need == Need::Public)
            .map(|r| r.path)
            .collect();
        assert_eq!(
            public,
            [
                "/health",
                "/openapi.json",
                "/auth/token",
                "/auth/login",
                "/auth/refresh",
                "/agents/register",
            ]
        );
    }
}
