//! Workspaces (seed 003; tenants in seed 002): what each holds, and their making and unmaking
//! by the server's administrators (the `admin`s of `default`). A caller sees its own workspace;
//! another answers 404, as if it did not exist.

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use fraisier_model::access::{Denial, Permission};
use fraisier_model::config::DEFAULT_WORKSPACE;
use fraisier_store::{Group, GroupFields, RunFilter, StoreError};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;

use super::error::{ApiError, ErrorBody};
use super::extract::{check_text, JsonBody, OptionalBody};
use super::gate::{AuditNote, Caller};
use super::views::ts;
use super::{AppState, Params};

#[derive(Serialize, ToSchema)]
pub struct WorkspaceView {
    pub name: String,
    pub display_name: String,
    pub description: Option<String>,
    /// Written in fraisier.yaml (changed there, not here).
    pub declared: bool,
    pub environments: Vec<String>,
    pub fraises: Vec<String>,
    pub members: u64,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Serialize, ToSchema)]
pub struct WorkspaceList {
    pub workspaces: Vec<WorkspaceView>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewWorkspace {
    #[schema(value_type = super::params::Name)]
    pub name: String,
    #[schema(max_length = 200)]
    pub display_name: Option<String>,
    #[schema(max_length = 2000)]
    pub description: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkspaceChange {
    #[schema(max_length = 200)]
    pub display_name: Option<String>,
    #[schema(max_length = 2000)]
    pub description: Option<String>,
}

/// The `admin`s of `default` administer the server: they make and delete workspaces and see
/// them all.
pub fn server_admin(state: &AppState, who: &Caller) -> bool {
    who.workspace == DEFAULT_WORKSPACE
        && state
            .roles
            .judge(&who.roles, Permission::WorkspaceCreate, None)
            .is_ok()
}

pub fn not_found(name: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "WORKSPACE_NOT_FOUND",
        format!("Workspace {name} not found"),
    )
    .with_details(json!({ "workspace": name }))
}

fn only_server_admins(permission: Permission) -> ApiError {
    ApiError::denied(&Denial::Permission { permission }).with_details(json!({
        "permission": permission.as_str(),
        "reason": "only the admins of the default workspace make and delete workspaces",
    }))
}

/// The workspace `name` if the caller may see it; 404 otherwise.
async fn visible(state: &AppState, who: &Caller, name: &str) -> Result<Group, ApiError> {
    if name != who.workspace && !server_admin(state, who) {
        return Err(not_found(name));
    }
    match state.engine.store().workspace(name).await {
        Ok(w) => Ok(w),
        Err(StoreError::NotFound) => Err(not_found(name)),
        Err(e) => Err(e.into()),
    }
}

async fn view(state: &AppState, w: Group) -> Result<WorkspaceView, ApiError> {
    let live = state.config();
    let scope = live.scope(&w.name);
    let members = state.engine.store().members(&w.name).await?.len() as u64;
    Ok(WorkspaceView {
        display_name: w.display_name.clone().unwrap_or_else(|| w.name.clone()),
        environments: scope.environments.keys().cloned().collect(),
        fraises: scope.fraises.keys().cloned().collect(),
        members,
        description: w.description,
        declared: w.declared,
        created_at: ts(w.created_at),
        updated_at: ts(w.updated_at),
        name: w.name,
    })
}

fn noted(mut r: Response, name: &str) -> Response {
    r.extensions_mut().insert(AuditNote {
        resource: Some(format!("workspace:{name}")),
        ..AuditNote::default()
    });
    r
}

#[utoipa::path(get, path = "/api/v1/workspaces", tag = "workspaces",
    responses((status = 200, body = WorkspaceList, description = "the caller's workspace; every workspace for the admins of default")))]
pub async fn list(
    State(state): State<AppState>,
    who: Caller,
) -> Result<Json<WorkspaceList>, ApiError> {
    let all = state.engine.store().workspaces().await?;
    let admin = server_admin(&state, &who);
    let mut out = Vec::new();
    for w in all.into_iter().filter(|w| admin || w.name == who.workspace) {
        out.push(view(&state, w).await?);
    }
    Ok(Json(WorkspaceList { workspaces: out }))
}

#[utoipa::path(get, path = "/api/v1/workspaces/{name}", tag = "workspaces", operation_id = "get_workspace",
    params(("name" = String, Path)),
    responses((status = 200, body = WorkspaceView), (status = 404, body = ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    who: Caller,
    Params(name): Params<String>,
) -> Result<Json<WorkspaceView>, ApiError> {
    let w = visible(&state, &who, &name).await?;
    Ok(Json(view(&state, w).await?))
}

#[utoipa::path(post, path = "/api/v1/workspaces", tag = "workspaces", request_body = NewWorkspace,
    responses((status = 201, body = WorkspaceView, headers(("Location" = String)),
                  links(("GetWorkspace" = (operation_id = "get_workspace", parameters(("name" = "$response.body#/name")))))),
              (status = 403, body = ErrorBody, description = "only the admins of default make workspaces"),
              (status = 409, body = ErrorBody, description = "the name is taken")))]
pub async fn create(
    State(state): State<AppState>,
    who: Caller,
    JsonBody(body): JsonBody<NewWorkspace>,
) -> Result<Response, ApiError> {
    if !server_admin(&state, &who) {
        return Err(only_server_admins(Permission::WorkspaceCreate));
    }
    if let Some(p) = fraisier_model::names::name_problem(&body.name) {
        return Err(ApiError::invalid(
            "name",
            format!("invalid workspace name: {p}"),
        ));
    }
    check_text("display_name", &body.display_name, 200)?;
    check_text("description", &body.description, 2000)?;
    let made = match state
        .engine
        .store()
        .create_workspace(&GroupFields {
            name: body.name.clone(),
            display_name: body.display_name,
            description: body.description,
        })
        .await
    {
        Ok(w) => w,
        Err(StoreError::AlreadyExists(_)) => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "WORKSPACE_EXISTS",
                format!("workspace {} exists", body.name),
            )
            .with_details(json!({ "workspace": body.name })))
        }
        Err(e) => return Err(e.into()),
    };
    let name = made.name.clone();
    let mut r = (StatusCode::CREATED, Json(view(&state, made).await?)).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("/api/v1/workspaces/{name}")) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    Ok(noted(r, &name))
}

#[utoipa::path(put, path = "/api/v1/workspaces/{name}", tag = "workspaces", request_body = Option<WorkspaceChange>,
    params(("name" = String, Path)),
    responses((status = 200, body = WorkspaceView), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody, description = "WORKSPACE_DECLARED: change it in fraisier.yaml")))]
pub async fn update(
    State(state): State<AppState>,
    who: Caller,
    Params(name): Params<String>,
    OptionalBody(body): OptionalBody<WorkspaceChange>,
) -> Result<Response, ApiError> {
    let w = visible(&state, &who, &name).await?;
    if w.declared {
        return Err(declared(&name));
    }
    check_text("display_name", &body.display_name, 200)?;
    check_text("description", &body.description, 2000)?;
    let changed = state
        .engine
        .store()
        .update_workspace(&GroupFields {
            name: name.clone(),
            display_name: body.display_name.or(w.display_name),
            description: body.description.or(w.description),
        })
        .await?;
    Ok(noted(
        Json(view(&state, changed).await?).into_response(),
        &name,
    ))
}

fn declared(name: &str) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "WORKSPACE_DECLARED",
        format!("workspace {name} is declared in fraisier.yaml: change it there"),
    )
    .with_details(json!({ "workspace": name }))
}

#[utoipa::path(delete, path = "/api/v1/workspaces/{name}", tag = "workspaces",
    params(("name" = String, Path)),
    responses((status = 204, description = "deleted"), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody, description = "declared in fraisier.yaml, or it still has members or runs")))]
pub async fn delete(
    State(state): State<AppState>,
    who: Caller,
    Params(name): Params<String>,
) -> Result<Response, ApiError> {
    if !server_admin(&state, &who) {
        return Err(only_server_admins(Permission::WorkspaceDelete));
    }
    let w = visible(&state, &who, &name).await?;
    if w.declared || name == DEFAULT_WORKSPACE {
        return Err(declared(&name));
    }
    let store = state.engine.store();
    let members = store.members(&name).await?.len();
    let (_, runs) = store
        .list_runs(
            &name,
            &RunFilter {
                limit: 1,
                ..RunFilter::default()
            },
        )
        .await?;
    let environments = store
        .environment_records_of(&name)
        .await?
        .iter()
        .filter(|r| r.deleted_at.is_none())
        .count();
    if members > 0 || runs > 0 || environments > 0 {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "WORKSPACE_NOT_EMPTY",
            format!("workspace {name} still has {members} member(s), {environments} environment(s) and {runs} run(s): remove its members and environments first; runs are its history"),
        )
        .with_details(json!({ "workspace": name, "members": members, "environments": environments, "runs": runs })));
    }
    match store.delete_workspace(&name).await {
        Ok(()) => Ok(noted(StatusCode::NO_CONTENT.into_response(), &name)),
        Err(StoreError::NotFound) => Err(not_found(&name)),
        Err(e) => Err(e.into()),
    }
}
