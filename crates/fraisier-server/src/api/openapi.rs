//! The OpenAPI 3.1 document, generated from the handlers' annotations.

use std::sync::OnceLock;

use axum::Json;
use serde_json::{json, Value};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::routes::{self, Need};
use super::{
    agents, api_keys, approvals, artifacts, audit, auth, deployments, environment_admin,
    environments, error, fraises, notifications, params, projects, services, sources, system,
    target_groups, targets, users, variables, webhooks, workspaces,
};

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-API-Key"))),
        );
        components.add_security_scheme(
            "agent",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-Agent-Token"))),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Fraisier REST API", version = "0.1.0", description = "Deploy fraises to environments with zero downtime. Base path /api/v1; bearer tokens from /auth/token or `fraisier auth:token`."),
    paths(
        auth::token, auth::login, auth::refresh, auth::logout, auth::me, auth::rotate,
        users::list, users::create, users::get, users::update, users::delete, users::set_password, users::roles,
        api_keys::create, api_keys::list, api_keys::revoke,
        audit::list, audit::of_deployment,
        approvals::approve, approvals::reject, approvals::mine,
        variables::secrets, variables::set_secrets, variables::env, variables::set_env, variables::rotate_key,
        variables::workspace_secrets, variables::set_workspace_secret, variables::delete_workspace_secret,
        artifacts::push, artifacts::list, artifacts::get, artifacts::update, artifacts::versions, artifacts::push_version, artifacts::promote, artifacts::version, artifacts::delete_version,
        artifacts::delete, artifacts::download, artifacts::sign, artifacts::signature, artifacts::signing_key, artifacts::scan, artifacts::vulnerabilities,
        artifacts::storage, artifacts::storage_usage, artifacts::storage_costs, artifacts::storage_cleanup, artifacts::types, artifacts::type_get, artifacts::type_artifacts, artifacts::blob,
        workspaces::list, workspaces::create, workspaces::get, workspaces::update, workspaces::delete,
        projects::list, projects::create, projects::get, projects::update, projects::delete,
        deployments::list, deployments::get, deployments::create, deployments::cancel, deployments::rollback, deployments::logs, deployments::events,
        services::create, services::validate, services::health, services::rollback, services::progress,
        fraises::list, fraises::get, fraises::status, fraises::history,
        variables::environment_variables, variables::set_environment_variables,
        environments::list, environments::get, environment_admin::create, environment_admin::update, environment_admin::delete, environments::status, environments::lock, environments::unlock,
        environments::add_freeze_window, environments::freeze_windows, environments::delete_freeze_window,
        environments::limits, environments::set_limits, environments::health, environments::metrics,
        environments::deployments, environments::config, environments::set_config,
        agents::create_join_token, agents::register, agents::heartbeat, agents::task_stream, agents::list, agents::get, agents::update, agents::revoke,
        targets::list, targets::get, targets::health_check, targets::sticker,
        targets::create, targets::update, targets::delete, targets::drift,
        target_groups::create, target_groups::list, target_groups::get, target_groups::update, target_groups::delete,
        webhooks::receive, webhooks::receive_any, webhooks::deliveries, notifications::deliveries,
        sources::list, sources::validate, sources::github, sources::direct, sources::helm,
        system::health, system::metrics, document,
    ),
    components(schemas(error::ErrorBody, error::ErrorDetail, params::RunSortKey, params::AuditOutcomeName, params::Name, params::SecretName, params::Tag,
        fraisier_model::run::LogLevel, fraisier_model::run::Component, fraisier_model::run::RunStatus,
        fraisier_model::run::ServiceState, fraisier_model::FraiseType, fraisier_model::artifact::ArtifactKind,
        fraisier_model::webhook::GitHost, webhooks::DeliveryOutcome,
        notifications::NotificationStatusName, notifications::NotifyEventName,
        targets::TargetHealth, fraisier_model::target::TargetType, targets::LabelFilter,
        targets::TargetBody, targets::TargetUpdate, targets::DriftView, targets::DriftExpected,
        targets::DriftActual, targets::DriftComponent, targets::DriftFile, target_groups::TargetGroupView, target_groups::TargetGroupList,
        target_groups::TargetGroupBody, target_groups::TargetGroupUpdate,
        variables::EnvironmentVariablesView, variables::EnvironmentVariablesUpdated,
        environment_admin::EnvironmentView, environment_admin::EnvironmentCreateBody, environment_admin::EnvironmentSettingsBody, environment_admin::EnvironmentTimingsView,
        environment_admin::EnvironmentTimingsBody, environment_admin::DefinedIn, fraisier_model::environment::PromotionPolicy, fraisier_model::agent::AgentStatus)),
    modifiers(&BearerAuth),
    security(("bearer" = []), ("api_key" = [])),
    tags((name = "agents", description = "Agents on the hosts, joining and reporting (seed 002)"), (name = "targets", description = "Where fraises run: the agents, as seed 004's targets"), (name = "deployments", description = "Deployment runs (seed 000)"), (name = "service deployments", description = "A fraise in an environment (seed 001)")),
)]
pub struct ApiDoc;

#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "system", security(()), responses((status = 200, description = "this document", body = Object)))]
pub async fn document() -> Json<Value> {
    Json(document_json().clone())
}

/// The served document: the handlers' annotations, completed with what the gate adds to every
/// route — 401 and 429 on every route that needs a credential, 403 where a permission is
/// needed, 400 and 413 wherever a body is read — so that no status goes undocumented.
pub fn document_json() -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(|| {
        let mut doc = serde_json::to_value(ApiDoc::openapi()).expect("the document serializes");
        complete(&mut doc);
        doc
    })
}

fn complete(doc: &mut Value) {
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else {
        return;
    };
    for (path, item) in paths.iter_mut() {
        let shape = routes::shape(path.strip_prefix("/api/v1").unwrap_or(path));
        let Some(item) = item.as_object_mut() else {
            continue;
        };
        for (method, op) in item.iter_mut() {
            let Some(route) = routes::ROUTES
                .iter()
                .find(|r| r.method.eq_ignore_ascii_case(method) && routes::shape(r.path) == shape)
            else {
                continue;
            };
            let has_body = op.get("requestBody").is_some();
            let has_query = op
                .get("parameters")
                .and_then(Value::as_array)
                .is_some_and(|ps| ps.iter().any(|p| p["in"] == "query"));
            let Some(responses) = op.get_mut("responses").and_then(Value::as_object_mut) else {
                continue;
            };
            let mut add = |status: &str, description: &str| {
                responses.entry(status.to_string()).or_insert_with(|| {
                    json!({
                        "description": description,
                        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/ErrorBody" } } }
                    })
                });
            };
            if has_body || has_query {
                add("400", "INVALID_PARAMETERS: malformed JSON or query, a wrong type or value, or an unknown field (details.field names it)");
            }
            if has_body {
                add("413", "INVALID_PARAMETERS: the body is larger than 1 MiB");
            }
            match route.need {
                Need::Public => {}
                Need::Signed => add(
                    "401",
                    "UNAUTHORIZED: no valid signature of the git host over the body",
                ),
                Need::Authenticated => {
                    add(
                        "401",
                        "UNAUTHORIZED: no credential, or a forged, expired or revoked one",
                    );
                    add("429", "RATE_LIMIT_EXCEEDED: see Retry-After");
                }
                Need::Agent => {
                    add("401", "UNAUTHORIZED: no agent credential, or a revoked one");
                    add("403", "PERMISSION_DENIED: not an agent's credential");
                    add("429", "RATE_LIMIT_EXCEEDED: see Retry-After");
                }
                Need::Permission(_) => {
                    add(
                        "401",
                        "UNAUTHORIZED: no credential, or a forged, expired or revoked one",
                    );
                    add("403", "PERMISSION_DENIED: the credential lacks the permission (details.permission), or may not act in that environment");
                    add("429", "RATE_LIMIT_EXCEEDED: see Retry-After");
                }
            }
            // utoipa writes a link's fields in snake_case; OpenAPI spells them in camelCase.
            for response in responses.values_mut() {
                let Some(links) = response.get_mut("links").and_then(Value::as_object_mut) else {
                    continue;
                };
                for link in links.values_mut() {
                    let Some(link) = link.as_object_mut() else {
                        continue;
                    };
                    for (from, to) in [
                        ("operation_id", "operationId"),
                        ("operation_ref", "operationRef"),
                        ("request_body", "requestBody"),
                    ] {
                        if let Some(v) = link.remove(from) {
                            link.insert(to.to_string(), v);
                        }
                    }
                }
            }
        }
    }
}
