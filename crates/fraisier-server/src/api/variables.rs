//! `/deployments/{ref}/secrets` and `/deployments/{ref}/env` (seed 003): a service
//! deployment's variables set through the API. Secrets are shown by name only; a change is
//! released by a `config` run, whose id the answer gives. And `/secrets/{name}`: the
//! workspace's own secrets, which the server uses (git tokens, webhook secrets).

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use fraisier_engine::{
    EnvironmentVariablesChanged, VariableChange, VariableKind, VariablesChanged,
};
use fraisier_model::access::Permission;
use fraisier_store::{run_id_string, Variable};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::deployments::{created, noted, Created};
use super::error::ApiError;
use super::extract::{JsonBody, UserMap};
use super::gate::{authorize, AuditNote, Caller};
use super::reference::DeploymentRef;
use super::views;
use super::{AppState, Params};

/// What a secret's value reads as.
pub const MASK: &str = "********";

/// Names per request, and characters per value: environments are not a blob store.
pub const MAX_NAMES: usize = 100;
/// Characters a value may hold: the document's `maxLength`, which counts characters, so the
/// server counts them too (at up to 4 bytes each, a value stays within 32 KiB).
pub const MAX_VALUE_CHARS: usize = 8 * 1024;

#[derive(Serialize, ToSchema)]
pub struct VariableView {
    pub name: String,
    /// The value; for a secret always `********`.
    pub value: String,
    pub updated_at: String,
    pub updated_by: String,
}

#[derive(Serialize, ToSchema)]
pub struct SecretsView {
    pub fraise: String,
    pub environment: String,
    pub secrets: Vec<VariableView>,
}

#[derive(Serialize, ToSchema)]
pub struct EnvView {
    pub fraise: String,
    pub environment: String,
    /// Set through the API; these win over `configured`.
    pub env: Vec<VariableView>,
    /// From fraisier.yaml (`fraises.<name>.env` and its environment's `env`), read-only here.
    #[schema(value_type = Object)]
    pub configured: BTreeMap<String, String>,
}

/// A change's outcome: the names that changed and, when the fraise runs there, the `config`
/// run releasing them (202); otherwise 200 and they apply at the next deploy.
#[derive(Serialize, ToSchema)]
pub struct VariablesUpdated {
    pub fraise: String,
    pub environment: String,
    pub changed: Vec<String>,
    /// The run releasing the change; absent when none was needed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deployment: Option<Created>,
    pub message: String,
}

fn view(v: &Variable) -> VariableView {
    VariableView {
        name: v.name.clone(),
        value: if v.secret {
            MASK.to_string()
        } else {
            v.value.clone()
        },
        updated_at: views::ts(v.updated_at),
        updated_by: v.updated_by.clone(),
    }
}

/// `{"NAME": "value" | null}`: each value a string, or null to remove the name.
fn changes(
    body: serde_json::Map<String, Value>,
) -> Result<BTreeMap<String, Option<String>>, ApiError> {
    if body.len() > MAX_NAMES {
        return Err(ApiError::invalid(
            "body",
            format!("at most {MAX_NAMES} variables per request"),
        ));
    }
    body.into_iter()
        .map(|(name, v)| match v {
            Value::Null => Ok((name, None)),
            Value::String(s) if s.chars().count() > MAX_VALUE_CHARS => Err(ApiError::invalid(
                name.clone(),
                format!("the value of {name} is over {MAX_VALUE_CHARS} characters"),
            )),
            Value::String(s) => Ok((name, Some(s))),
            _ => Err(ApiError::invalid(
                name.clone(),
                format!("the value of {name} must be a string, or null to remove it"),
            )),
        })
        .collect()
}

#[utoipa::path(get, path = "/api/v1/deployments/{deployment_id}/secrets", tag = "deployments",
    params(("deployment_id" = String, Path, description = "a fraise, fraise@environment, or a run id"), ("environment" = Option<String>, Query)),
    responses((status = 200, body = SecretsView), (status = 404, body = super::error::ErrorBody), (status = 409, body = super::error::ErrorBody)))]
pub async fn secrets(
    State(state): State<AppState>,
    who: Caller,
    target: DeploymentRef,
) -> Result<Json<SecretsView>, ApiError> {
    let (fraise, environment) = target.service();
    let list = state
        .engine
        .variables(&who.workspace, fraise, environment, VariableKind::Secret)
        .await?;
    Ok(Json(SecretsView {
        fraise: fraise.to_string(),
        environment: environment.to_string(),
        secrets: list.iter().map(view).collect(),
    }))
}

#[utoipa::path(put, path = "/api/v1/deployments/{deployment_id}/secrets", tag = "deployments",
    params(("deployment_id" = String, Path, description = "a fraise, fraise@environment, or a run id"), ("environment" = Option<String>, Query)),
    request_body(content = super::params::VariablesBody),
    responses((status = 202, body = VariablesUpdated, headers(("Location" = String, description = "the config run")), description = "changed; a config run releases it"),
              (status = 200, body = VariablesUpdated, description = "nothing to release now (no change, or never deployed there)"),
              (status = 400, body = super::error::ErrorBody), (status = 404, body = super::error::ErrorBody),
              (status = 409, body = super::error::ErrorBody, description = "a run is active there, the name is a plain variable, or the ref is ambiguous"), (status = 422, body = super::error::ErrorBody, description = "ENVIRONMENT_LOCKED or ENVIRONMENT_FROZEN")))]
pub async fn set_secrets(
    State(state): State<AppState>,
    who: Caller,
    target: DeploymentRef,
    UserMap(body): UserMap,
) -> Result<Response, ApiError> {
    change(
        &state,
        &who,
        &target,
        VariableKind::Secret,
        Permission::SecretUpdate,
        body,
    )
    .await
}

#[utoipa::path(get, path = "/api/v1/deployments/{deployment_id}/env", tag = "deployments",
    params(("deployment_id" = String, Path, description = "a fraise, fraise@environment, or a run id"), ("environment" = Option<String>, Query)),
    responses((status = 200, body = EnvView), (status = 404, body = super::error::ErrorBody), (status = 409, body = super::error::ErrorBody)))]
pub async fn env(
    State(state): State<AppState>,
    who: Caller,
    target: DeploymentRef,
) -> Result<Json<EnvView>, ApiError> {
    let (fraise, environment) = target.service();
    let list = state
        .engine
        .variables(&who.workspace, fraise, environment, VariableKind::Plain)
        .await?;
    Ok(Json(EnvView {
        fraise: fraise.to_string(),
        environment: environment.to_string(),
        env: list.iter().map(view).collect(),
        configured: state
            .engine
            .configured_env(&who.workspace, fraise, environment)?,
    }))
}

#[utoipa::path(put, path = "/api/v1/deployments/{deployment_id}/env", tag = "deployments",
    params(("deployment_id" = String, Path, description = "a fraise, fraise@environment, or a run id"), ("environment" = Option<String>, Query)),
    request_body(content = super::params::VariablesBody),
    responses((status = 202, body = VariablesUpdated, headers(("Location" = String, description = "the config run")), description = "changed; a config run releases it"),
              (status = 200, body = VariablesUpdated, description = "nothing to release now (no change, or never deployed there)"),
              (status = 400, body = super::error::ErrorBody), (status = 404, body = super::error::ErrorBody),
              (status = 409, body = super::error::ErrorBody, description = "a run is active there, the name is a secret, or the ref is ambiguous"), (status = 422, body = super::error::ErrorBody, description = "ENVIRONMENT_LOCKED or ENVIRONMENT_FROZEN")))]
pub async fn set_env(
    State(state): State<AppState>,
    who: Caller,
    target: DeploymentRef,
    UserMap(body): UserMap,
) -> Result<Response, ApiError> {
    change(
        &state,
        &who,
        &target,
        VariableKind::Plain,
        Permission::DeploymentUpdate,
        body,
    )
    .await
}

async fn change(
    state: &AppState,
    who: &Caller,
    target: &DeploymentRef,
    kind: VariableKind,
    permission: Permission,
    body: serde_json::Map<String, Value>,
) -> Result<Response, ApiError> {
    let (fraise, environment) = target.service();
    authorize(state, who, permission, environment)?;
    let values = changes(body)?;
    let VariablesChanged { changed, run } = state
        .engine
        .change_variables(VariableChange {
            tenant: who.workspace.clone(),
            fraise: fraise.to_string(),
            environment: environment.to_string(),
            kind,
            values,
            triggered_by: who.username.clone(),
            trigger_type: "api".into(),
        })
        .await?;
    let message = match (&run, changed.is_empty()) {
        (Some(r), _) => format!(
            "{} changed; {} rolls it out",
            changed.join(", "),
            run_id_string(r.id)
        ),
        (None, true) => "nothing changed".to_string(),
        (None, false) => format!(
            "{} changed; {fraise} does not run in {environment} yet, its first deploy takes it",
            changed.join(", ")
        ),
    };
    let body = VariablesUpdated {
        fraise: fraise.to_string(),
        environment: environment.to_string(),
        changed,
        deployment: run.as_ref().map(created),
        message,
    };
    Ok(match run {
        Some(r) => noted((StatusCode::ACCEPTED, Json(body)).into_response(), &r),
        None => {
            let mut resp = Json(body).into_response();
            resp.extensions_mut().insert(AuditNote {
                service: Some(format!("{fraise}@{environment}")),
                ..AuditNote::default()
            });
            resp
        }
    })
}

/// An environment's own variables (seed 003's `/environments/{id}/variables`): every fraise
/// there gets them, below its own.
#[derive(Serialize, ToSchema)]
pub struct EnvironmentVariablesView {
    pub environment: String,
    pub variables: Vec<VariableView>,
}

/// A change of an environment's variables: what changed, and the `config` run releasing it to
/// each fraise running there.
#[derive(Serialize, ToSchema)]
pub struct EnvironmentVariablesUpdated {
    pub environment: String,
    pub changed: Vec<String>,
    pub deployments: Vec<Created>,
    pub message: String,
}

#[utoipa::path(get, path = "/api/v1/environments/{environment_name}/variables", tag = "environments",
    params(("environment_name" = String, Path)),
    responses((status = 200, body = EnvironmentVariablesView), (status = 404, body = super::error::ErrorBody)))]
pub async fn environment_variables(
    State(state): State<AppState>,
    who: Caller,
    Params(environment): Params<String>,
) -> Result<Json<EnvironmentVariablesView>, ApiError> {
    let list = state
        .engine
        .environment_variables(&who.workspace, &environment)
        .await?;
    Ok(Json(EnvironmentVariablesView {
        environment,
        variables: list.iter().map(view).collect(),
    }))
}

#[utoipa::path(put, path = "/api/v1/environments/{environment_name}/variables", tag = "environments",
    params(("environment_name" = String, Path)),
    request_body(content = super::params::VariablesBody),
    responses((status = 202, body = EnvironmentVariablesUpdated, description = "changed; a config run per fraise running there releases it"),
              (status = 200, body = EnvironmentVariablesUpdated, description = "nothing to release now (no change, or nothing runs there)"),
              (status = 400, body = super::error::ErrorBody), (status = 404, body = super::error::ErrorBody),
              (status = 409, body = super::error::ErrorBody, description = "a run is active there"),
              (status = 422, body = super::error::ErrorBody, description = "ENVIRONMENT_LOCKED or ENVIRONMENT_FROZEN")))]
pub async fn set_environment_variables(
    State(state): State<AppState>,
    who: Caller,
    Params(environment): Params<String>,
    UserMap(body): UserMap,
) -> Result<Response, ApiError> {
    super::environments::lookup(&state, &who, &environment)?;
    authorize(&state, &who, Permission::DeploymentUpdate, &environment)?;
    let values = changes(body)?;
    let EnvironmentVariablesChanged { changed, runs } = state
        .engine
        .change_environment_variables(&who.workspace, &environment, &values, &who.username)
        .await?;
    let message = match (runs.is_empty(), changed.is_empty()) {
        (_, true) => "nothing changed".to_string(),
        (false, false) => format!(
            "{} changed; {} roll it out",
            changed.join(", "),
            runs.iter()
                .map(|r| run_id_string(r.id))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        (true, false) => format!(
            "{} changed; nothing runs in {environment} yet, each fraise's first deploy takes it",
            changed.join(", ")
        ),
    };
    let status = if runs.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    let body = EnvironmentVariablesUpdated {
        environment: environment.clone(),
        changed,
        deployments: runs.iter().map(created).collect(),
        message,
    };
    Ok(super::environments::noted(
        (status, Json(body)).into_response(),
        &environment,
    ))
}

#[derive(Serialize, ToSchema)]
pub struct SecretKeyRotated {
    /// The key that seals from now on.
    pub key_id: String,
    /// Every key that still opens values, oldest first.
    pub key_ids: Vec<String>,
    /// Stored secrets re-sealed with the new key.
    pub resealed: usize,
}

#[utoipa::path(post, path = "/api/v1/secrets/keys/rotate", tag = "auth",
    responses((status = 200, body = SecretKeyRotated), (status = 409, body = super::error::ErrorBody, description = "the key comes from FRAISIER_SECRET_KEY")))]
pub async fn rotate_key(State(state): State<AppState>) -> Result<Json<SecretKeyRotated>, ApiError> {
    let data_dir = &state.config().server.data_dir;
    let (keys, resealed) = state
        .engine
        .rotate_secret_keys(|current| crate::secret_keys::add_key(data_dir, current))
        .await?;
    Ok(Json(SecretKeyRotated {
        key_id: keys.current_kid().unwrap_or_default().to_string(),
        key_ids: keys.kids(),
        resealed,
    }))
}

/// A workspace secret, by name: its value is never shown.
#[derive(Serialize, ToSchema)]
pub struct WorkspaceSecretView {
    pub name: String,
    /// Always `********`.
    pub value: &'static str,
    /// How fraisier.yaml names it.
    pub reference: String,
    pub updated_at: String,
    pub updated_by: String,
}

#[derive(Serialize, ToSchema)]
pub struct WorkspaceSecretsView {
    pub workspace: String,
    pub secrets: Vec<WorkspaceSecretView>,
}

/// `PUT /secrets/{name}`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkspaceSecretBody {
    /// At most 16384 characters (an SSH key or a certificate chain fits; 64 KiB at most).
    #[schema(min_length = 1, max_length = 16384, pattern = "^[^\\u0000]*$")]
    pub value: String,
}

// The schema's `max_length` must be a literal; it is the engine's limit.
const _: () = assert!(fraisier_engine::MAX_SECRET_CHARS == 16384);

fn workspace_view(v: &Variable) -> WorkspaceSecretView {
    WorkspaceSecretView {
        reference: format!("${{secret:{}}}", v.name),
        name: v.name.clone(),
        value: MASK,
        updated_at: views::ts(v.updated_at),
        updated_by: v.updated_by.clone(),
    }
}

/// A workspace secret reaches every environment (a git token builds them all): changing one
/// takes `secret:update` in each of them. One that top-level configuration names (a webhook
/// secret) guards every workspace: only a server admin (`auth:rotate`) changes it.
fn authorize_everywhere(state: &AppState, who: &Caller, name: &str) -> Result<(), ApiError> {
    for environment in state.config().scope(&who.workspace).environments.keys() {
        authorize(state, who, Permission::SecretUpdate, environment)?;
    }
    if state.engine.guards_the_server(&who.workspace, name) {
        state
            .roles
            .judge(&who.roles, Permission::AuthRotate, None)
            .map_err(|d| ApiError::denied(&d))?;
    }
    Ok(())
}

#[utoipa::path(get, path = "/api/v1/secrets", tag = "secrets",
    responses((status = 200, body = WorkspaceSecretsView)))]
pub async fn workspace_secrets(
    State(state): State<AppState>,
    who: Caller,
) -> Result<Json<WorkspaceSecretsView>, ApiError> {
    let list = state.engine.workspace_secrets(&who.workspace).await?;
    Ok(Json(WorkspaceSecretsView {
        workspace: who.workspace.clone(),
        secrets: list.iter().map(workspace_view).collect(),
    }))
}

#[utoipa::path(put, path = "/api/v1/secrets/{name}", tag = "secrets",
    params(("name" = super::params::SecretName, Path)),
    request_body = WorkspaceSecretBody,
    responses((status = 200, body = WorkspaceSecretView),
              (status = 400, body = super::error::ErrorBody),
              (status = 403, body = super::error::ErrorBody, description = "secret:update is not held in every environment")))]
pub async fn set_workspace_secret(
    State(state): State<AppState>,
    who: Caller,
    Params(name): Params<String>,
    JsonBody(body): JsonBody<WorkspaceSecretBody>,
) -> Result<Response, ApiError> {
    authorize_everywhere(&state, &who, &name)?;
    state
        .engine
        .set_workspace_secret(&who.workspace, &name, Some(&body.value), &who.username)
        .await?;
    let list = state.engine.workspace_secrets(&who.workspace).await?;
    let v = list
        .iter()
        .find(|v| v.name == name)
        .ok_or_else(|| ApiError::internal("a secret just set is not there"))?;
    Ok(secret_noted(Json(workspace_view(v)).into_response(), &name))
}

#[utoipa::path(delete, path = "/api/v1/secrets/{name}", tag = "secrets",
    params(("name" = super::params::SecretName, Path)),
    responses((status = 204, description = "deleted"), (status = 400, body = super::error::ErrorBody, description = "not a secret's name"),
              (status = 404, body = super::error::ErrorBody), (status = 403, body = super::error::ErrorBody)))]
pub async fn delete_workspace_secret(
    State(state): State<AppState>,
    who: Caller,
    Params(name): Params<String>,
) -> Result<Response, ApiError> {
    authorize_everywhere(&state, &who, &name)?;
    let removed = state
        .engine
        .set_workspace_secret(&who.workspace, &name, None, &who.username)
        .await?;
    if !removed {
        return Err(fraisier_engine::EngineError::SecretNotFound {
            workspace: who.workspace.clone(),
            name,
        }
        .into());
    }
    Ok(secret_noted(StatusCode::NO_CONTENT.into_response(), &name))
}

fn secret_noted(mut r: Response, name: &str) -> Response {
    r.extensions_mut().insert(AuditNote {
        resource: Some(format!("secret:{name}")),
        ..AuditNote::default()
    });
    r
}
