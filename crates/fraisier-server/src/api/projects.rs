//! Projects (seed 003): named groups of a workspace's fraises — the `project:` label in
//! fraisier.yaml, or made here — that listings filter by (`?project=`).

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use fraisier_store::{Group, GroupFields, StoreError};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;

use super::error::{ApiError, ErrorBody};
use super::extract::{check_text, JsonBody, OptionalBody};
use super::gate::{AuditNote, Caller};
use super::views::ts;
use super::{AppState, Params};

#[derive(Serialize, ToSchema)]
pub struct ProjectView {
    pub name: String,
    pub display_name: String,
    pub description: Option<String>,
    /// Named by a fraise in fraisier.yaml.
    pub declared: bool,
    pub fraises: Vec<String>,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Serialize, ToSchema)]
pub struct ProjectList {
    pub projects: Vec<ProjectView>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewProject {
    #[schema(value_type = super::params::Name)]
    pub name: String,
    #[schema(max_length = 200)]
    pub display_name: Option<String>,
    #[schema(max_length = 2000)]
    pub description: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProjectChange {
    #[schema(max_length = 200)]
    pub display_name: Option<String>,
    #[schema(max_length = 2000)]
    pub description: Option<String>,
}

fn not_found(name: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "PROJECT_NOT_FOUND",
        format!("Project {name} not found"),
    )
    .with_details(json!({ "project": name }))
}

/// A project of the caller's workspace, or 404.
pub async fn find(state: &AppState, who: &Caller, name: &str) -> Result<Group, ApiError> {
    match state.engine.store().project(&who.workspace, name).await {
        Ok(p) => Ok(p),
        Err(StoreError::NotFound) => Err(not_found(name)),
        Err(e) => Err(e.into()),
    }
}

fn fraises_of(state: &AppState, who: &Caller, project: &str) -> Vec<String> {
    state
        .config()
        .scope(&who.workspace)
        .fraises
        .iter()
        .filter(|(_, f)| f.project.as_deref() == Some(project))
        .map(|(n, _)| n.clone())
        .collect()
}

fn view(state: &AppState, who: &Caller, p: Group) -> ProjectView {
    ProjectView {
        display_name: p.display_name.clone().unwrap_or_else(|| p.name.clone()),
        fraises: fraises_of(state, who, &p.name),
        description: p.description,
        declared: p.declared,
        created_at: ts(p.created_at),
        updated_at: ts(p.updated_at),
        name: p.name,
    }
}

fn noted(mut r: Response, name: &str) -> Response {
    r.extensions_mut().insert(AuditNote {
        resource: Some(format!("project:{name}")),
        ..AuditNote::default()
    });
    r
}

#[utoipa::path(get, path = "/api/v1/projects", tag = "workspaces",
    responses((status = 200, body = ProjectList)))]
pub async fn list(
    State(state): State<AppState>,
    who: Caller,
) -> Result<Json<ProjectList>, ApiError> {
    let projects = state.engine.store().projects(&who.workspace).await?;
    Ok(Json(ProjectList {
        projects: projects
            .into_iter()
            .map(|p| view(&state, &who, p))
            .collect(),
    }))
}

#[utoipa::path(get, path = "/api/v1/projects/{name}", tag = "workspaces", operation_id = "get_project",
    params(("name" = String, Path)),
    responses((status = 200, body = ProjectView), (status = 404, body = ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    who: Caller,
    Params(name): Params<String>,
) -> Result<Json<ProjectView>, ApiError> {
    let p = find(&state, &who, &name).await?;
    Ok(Json(view(&state, &who, p)))
}

#[utoipa::path(post, path = "/api/v1/projects", tag = "workspaces", request_body = NewProject,
    responses((status = 201, body = ProjectView, headers(("Location" = String)),
                  links(("GetProject" = (operation_id = "get_project", parameters(("name" = "$response.body#/name")))))),
              (status = 409, body = ErrorBody, description = "the name is taken")))]
pub async fn create(
    State(state): State<AppState>,
    who: Caller,
    JsonBody(body): JsonBody<NewProject>,
) -> Result<Response, ApiError> {
    if let Some(p) = fraisier_model::names::name_problem(&body.name) {
        return Err(ApiError::invalid(
            "name",
            format!("invalid project name: {p}"),
        ));
    }
    check_text("display_name", &body.display_name, 200)?;
    check_text("description", &body.description, 2000)?;
    let made = match state
        .engine
        .store()
        .create_project(
            &who.workspace,
            &GroupFields {
                name: body.name.clone(),
                display_name: body.display_name,
                description: body.description,
            },
        )
        .await
    {
        Ok(p) => p,
        Err(StoreError::AlreadyExists(_)) => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "PROJECT_EXISTS",
                format!("project {} exists", body.name),
            )
            .with_details(json!({ "project": body.name })))
        }
        Err(e) => return Err(e.into()),
    };
    let name = made.name.clone();
    let mut r = (StatusCode::CREATED, Json(view(&state, &who, made))).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("/api/v1/projects/{name}")) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    Ok(noted(r, &name))
}

#[utoipa::path(put, path = "/api/v1/projects/{name}", tag = "workspaces", request_body = Option<ProjectChange>,
    params(("name" = String, Path)),
    responses((status = 200, body = ProjectView), (status = 404, body = ErrorBody)))]
pub async fn update(
    State(state): State<AppState>,
    who: Caller,
    Params(name): Params<String>,
    OptionalBody(body): OptionalBody<ProjectChange>,
) -> Result<Response, ApiError> {
    let p = find(&state, &who, &name).await?;
    check_text("display_name", &body.display_name, 200)?;
    check_text("description", &body.description, 2000)?;
    let changed = state
        .engine
        .store()
        .update_project(
            &who.workspace,
            &GroupFields {
                name: name.clone(),
                display_name: body.display_name.or(p.display_name),
                description: body.description.or(p.description),
            },
        )
        .await?;
    Ok(noted(
        Json(view(&state, &who, changed)).into_response(),
        &name,
    ))
}

#[utoipa::path(delete, path = "/api/v1/projects/{name}", tag = "workspaces",
    params(("name" = String, Path)),
    responses((status = 204, description = "deleted"), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody, description = "PROJECT_IN_USE: fraises in fraisier.yaml name it")))]
pub async fn delete(
    State(state): State<AppState>,
    who: Caller,
    Params(name): Params<String>,
) -> Result<Response, ApiError> {
    find(&state, &who, &name).await?;
    let fraises = fraises_of(&state, &who, &name);
    if !fraises.is_empty() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "PROJECT_IN_USE",
            format!(
                "fraises name project {name} in fraisier.yaml: {}",
                fraises.join(", ")
            ),
        )
        .with_details(json!({ "project": name, "fraises": fraises })));
    }
    match state
        .engine
        .store()
        .delete_project(&who.workspace, &name)
        .await
    {
        Ok(()) => Ok(noted(StatusCode::NO_CONTENT.into_response(), &name)),
        Err(StoreError::NotFound) => Err(not_found(&name)),
        Err(e) => Err(e.into()),
    }
}
