//! Users of the caller's workspace (admins), their roles and passwords, and the roles there are.

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use fraisier_model::access::Permission;
use fraisier_store::{Member, StoreError};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;

use super::error::{ApiError, ErrorBody};
use super::extract::{JsonBody, OptionalBody, QueryMap};
use super::gate::{AuditNote, Caller};
use super::views::{ts, Pagination};
use super::{AppState, Params};
use crate::auth::{hash_password, verify_password};

#[derive(Serialize, ToSchema)]
pub struct UserView {
    pub username: String,
    pub workspace: String,
    pub roles: Vec<String>,
    pub disabled: bool,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Serialize, ToSchema)]
pub struct UserList {
    pub users: Vec<UserView>,
    pub pagination: Pagination,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    #[schema(pattern = r"^[a-z0-9][a-z0-9._-]{0,63}$")]
    pub username: String,
    #[schema(min_length = 8, max_length = 1024)]
    pub password: String,
    #[serde(default)]
    pub roles: Vec<String>,
    /// Default: the caller's workspace.
    pub workspace: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserChange {
    /// The user's roles in the workspace (replaces them; makes them a member if they were not).
    pub roles: Option<Vec<String>>,
    /// A disabled user cannot sign in; their tokens and API keys stop working at once.
    pub disabled: Option<bool>,
    /// Default: the caller's workspace.
    pub workspace: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordChange {
    #[schema(min_length = 8, max_length = 1024)]
    pub password: String,
    /// Needed when changing one's own password without `user:update`.
    pub current_password: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct RoleView {
    pub name: String,
    pub description: String,
    pub permissions: Vec<String>,
    pub environments: Vec<String>,
    pub builtin: bool,
}

#[derive(Serialize, ToSchema)]
pub struct RoleList {
    pub roles: Vec<RoleView>,
}

const MIN_PASSWORD: usize = 8;
const MAX_PASSWORD: usize = 1024;

pub fn view(m: &Member) -> UserView {
    UserView {
        username: m.user.username.clone(),
        workspace: m.workspace.clone(),
        roles: m.roles.clone(),
        disabled: m.user.disabled,
        created_at: ts(m.user.created_at),
        updated_at: ts(m.user.updated_at),
    }
}

fn user_not_found(username: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "USER_NOT_FOUND",
        format!("User {username} not found"),
    )
    .with_details(json!({ "username": username }))
}

/// Usernames: 1–64 of `a-z`, `0-9`, `.`, `_`, `-`, starting with a letter or digit.
fn username_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() || name.len() > 64 {
        return Some("must be 1 to 64 characters long");
    }
    if !name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit()) {
        return Some("must start with a lower-case letter or a digit");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Some("may contain only a-z, 0-9, '.', '_' and '-'");
    }
    None
}

fn check_password(field: &str, p: &str) -> Result<(), ApiError> {
    let n = p.chars().count();
    if !(MIN_PASSWORD..=MAX_PASSWORD).contains(&n) {
        return Err(ApiError::invalid(
            field,
            format!("{field} must be {MIN_PASSWORD} to {MAX_PASSWORD} characters long"),
        ));
    }
    Ok(())
}

/// Every role must exist: 422 `UNKNOWN_ROLE` naming the first that does not (a schema cannot
/// list the roles, which configuration may add to).
pub fn check_roles(state: &AppState, roles: &[String]) -> Result<(), ApiError> {
    for (i, r) in roles.iter().enumerate() {
        if !state.roles.contains(r) {
            let known: Vec<&str> = state.roles.iter().map(|r| r.name.as_str()).collect();
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "UNKNOWN_ROLE",
                format!("unknown role {r:?}; roles are {}", known.join(", ")),
            )
            .with_details(json!({ "field": format!("roles[{i}]"), "role": r })));
        }
    }
    Ok(())
}

/// The workspace a request about users acts in: the caller's own, or another existing one for
/// the administrators of `default` (the server's own workspace).
async fn target_workspace(
    state: &AppState,
    who: &Caller,
    asked: Option<String>,
) -> Result<String, ApiError> {
    let w = plain_target(who, asked)?;
    if w != who.workspace {
        match state.engine.store().workspace(&w).await {
            Ok(_) => {}
            Err(StoreError::NotFound) => return Err(super::workspaces::not_found(&w)),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(w)
}

fn plain_target(who: &Caller, asked: Option<String>) -> Result<String, ApiError> {
    match asked {
        None => Ok(who.workspace.clone()),
        Some(w) if w == who.workspace => Ok(w),
        Some(w) => {
            if who.workspace == fraisier_store::DEFAULT_TENANT
                && who.roles.iter().any(|r| r == "admin")
            {
                if fraisier_model::names::name_problem(&w).is_some() {
                    return Err(ApiError::new(
                        StatusCode::NOT_FOUND,
                        "WORKSPACE_NOT_FOUND",
                        format!("Workspace {w} not found"),
                    )
                    .with_details(json!({ "workspace": w })));
                }
                Ok(w)
            } else {
                Err(
                    ApiError::denied(&fraisier_model::access::Denial::Permission {
                        permission: Permission::WorkspaceUpdate,
                    })
                    .with_details(json!({ "permission": "workspace:update", "workspace": w })),
                )
            }
        }
    }
}

fn noted(mut r: Response, username: &str) -> Response {
    r.extensions_mut().insert(AuditNote {
        resource: Some(format!("user:{username}")),
        ..AuditNote::default()
    });
    r
}

/// Refuses a change that would leave the workspace without an enabled admin.
async fn keep_an_admin(
    state: &AppState,
    workspace: &str,
    username: &str,
    still_admin: bool,
) -> Result<(), ApiError> {
    if still_admin {
        return Ok(());
    }
    let members = state.engine.store().members(workspace).await?;
    let target_is_admin = members
        .iter()
        .any(|m| m.user.username == username && m.roles.iter().any(|r| r == "admin"));
    let others = members.iter().any(|m| {
        m.user.username != username && !m.user.disabled && m.roles.iter().any(|r| r == "admin")
    });
    if target_is_admin && !others {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "LAST_ADMIN",
            format!("{username} is the last admin of workspace {workspace}; make someone else admin first"),
        )
        .with_details(json!({ "username": username, "workspace": workspace })));
    }
    Ok(())
}

#[utoipa::path(get, path = "/api/v1/users", tag = "users",
    params(("limit" = Option<u32>, Query, minimum = 1, maximum = 500), ("offset" = Option<u64>, Query)),
    responses((status = 200, body = UserList), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    who: Caller,
    q: QueryMap,
) -> Result<Json<UserList>, ApiError> {
    let (limit, offset) = q.pagination(50)?;
    let members = state.engine.store().members(&who.workspace).await?;
    let total = members.len() as u64;
    Ok(Json(UserList {
        users: members
            .iter()
            .skip(offset as usize)
            .take(limit as usize)
            .map(view)
            .collect(),
        pagination: Pagination::new(total, limit, offset),
    }))
}

#[utoipa::path(post, path = "/api/v1/users", tag = "users", request_body = NewUser,
    responses((status = 201, body = UserView, headers(("Location" = String, description = "the new user")),
                  links(("GetUser" = (operation_id = "get_user", parameters(("username" = "$response.body#/username")))))),
              (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody, description = "WORKSPACE_NOT_FOUND"),
              (status = 409, body = ErrorBody, description = "the username is taken"), (status = 413, body = ErrorBody),
              (status = 422, body = ErrorBody, description = "UNKNOWN_ROLE"), (status = 429, body = ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    who: Caller,
    JsonBody(body): JsonBody<NewUser>,
) -> Result<Response, ApiError> {
    if let Some(p) = username_problem(&body.username) {
        return Err(ApiError::invalid("username", format!("username {p}")));
    }
    check_password("password", &body.password)?;
    check_roles(&state, &body.roles)?;
    let workspace = target_workspace(&state, &who, body.workspace).await?;
    let hash = hash_password(&body.password).map_err(ApiError::internal)?;
    let member = match state
        .engine
        .store()
        .create_user(&body.username, &hash, &workspace, &body.roles)
        .await
    {
        Ok(m) => m,
        Err(StoreError::AlreadyExists(_)) => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "USER_EXISTS",
                format!("the username {} is taken", body.username),
            )
            .with_details(json!({ "username": body.username })))
        }
        Err(e) => return Err(e.into()),
    };
    let mut r = (StatusCode::CREATED, Json(view(&member))).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("/api/v1/users/{}", member.user.username)) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    Ok(noted(r, &member.user.username))
}

#[utoipa::path(get, path = "/api/v1/users/{username}", tag = "users", operation_id = "get_user",
    params(("username" = String, Path)),
    responses((status = 200, body = UserView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    who: Caller,
    Params(username): Params<String>,
) -> Result<Json<UserView>, ApiError> {
    member_of(&state, &who.workspace, &username)
        .await
        .map(|m| Json(view(&m)))
}

async fn member_of(state: &AppState, workspace: &str, username: &str) -> Result<Member, ApiError> {
    match state.engine.store().member(workspace, username).await {
        Ok(m) => Ok(m),
        Err(StoreError::NotFound) => Err(user_not_found(username)),
        Err(e) => Err(e.into()),
    }
}

#[utoipa::path(put, path = "/api/v1/users/{username}", tag = "users", request_body = Option<UserChange>,
    params(("username" = String, Path)),
    responses((status = 200, body = UserView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody, description = "the last admin cannot lose the role or be disabled; nobody disables themselves"),
              (status = 413, body = ErrorBody), (status = 422, body = ErrorBody, description = "UNKNOWN_ROLE"), (status = 429, body = ErrorBody)))]
pub async fn update(
    State(state): State<AppState>,
    who: Caller,
    Params(username): Params<String>,
    OptionalBody(body): OptionalBody<UserChange>,
) -> Result<Response, ApiError> {
    let workspace = target_workspace(&state, &who, body.workspace).await?;
    let store = state.engine.store();
    // Joining another workspace is for server admins; otherwise the user must be ours.
    let joining = workspace != who.workspace;
    let existing = match store.member(&workspace, &username).await {
        Ok(m) => Some(m),
        Err(StoreError::NotFound) if joining && body.roles.is_some() => {
            store.user_by_name(&username).await.map_err(|e| match e {
                StoreError::NotFound => user_not_found(&username),
                e => e.into(),
            })?;
            None
        }
        Err(StoreError::NotFound) => return Err(user_not_found(&username)),
        Err(e) => return Err(e.into()),
    };
    if let Some(roles) = &body.roles {
        check_roles(&state, roles)?;
    }
    if body.disabled == Some(true) && username == who.username {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "CANNOT_CHANGE_SELF",
            "you cannot disable yourself",
        )
        .with_details(json!({ "field": "disabled" })));
    }
    if existing.is_some() {
        let still_admin = body
            .roles
            .as_ref()
            .is_none_or(|r| r.iter().any(|r| r == "admin"))
            && body.disabled != Some(true);
        keep_an_admin(&state, &workspace, &username, still_admin).await?;
    }
    if let Some(roles) = &body.roles {
        store.set_roles(&workspace, &username, roles).await?;
    }
    if let Some(d) = body.disabled {
        store.set_disabled(&username, d).await?;
    }
    let m = member_of(&state, &workspace, &username).await?;
    Ok(noted(Json(view(&m)).into_response(), &username))
}

#[utoipa::path(delete, path = "/api/v1/users/{username}", tag = "users",
    params(("username" = String, Path)),
    responses((status = 204, description = "removed from the workspace (and deleted when in no other)"),
              (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn delete(
    State(state): State<AppState>,
    who: Caller,
    Params(username): Params<String>,
) -> Result<Response, ApiError> {
    if username == who.username {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "CANNOT_CHANGE_SELF",
            "you cannot delete yourself",
        )
        .with_details(json!({ "username": username })));
    }
    member_of(&state, &who.workspace, &username).await?;
    keep_an_admin(&state, &who.workspace, &username, false).await?;
    match state
        .engine
        .store()
        .remove_member(&who.workspace, &username)
        .await
    {
        Ok(()) => Ok(noted(StatusCode::NO_CONTENT.into_response(), &username)),
        Err(StoreError::NotFound) => Err(user_not_found(&username)),
        Err(e) => Err(e.into()),
    }
}

/// Sets a password: one's own (with the current one), or anyone's in the workspace with
/// `user:update`.
#[utoipa::path(post, path = "/api/v1/users/{username}/password", tag = "users", request_body = PasswordChange,
    params(("username" = String, Path)),
    responses((status = 204, description = "changed"), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 413, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn set_password(
    State(state): State<AppState>,
    who: Caller,
    Params(username): Params<String>,
    JsonBody(body): JsonBody<PasswordChange>,
) -> Result<Response, ApiError> {
    check_password("password", &body.password)?;
    let admin = state.roles.judge(&who.roles, Permission::UserUpdate, None);
    if username != who.username {
        admin.clone().map_err(|d| ApiError::denied(&d))?;
    }
    let member = member_of(&state, &who.workspace, &username).await?;
    if admin.is_err() {
        let current = body.current_password.as_deref().ok_or_else(|| {
            ApiError::invalid(
                "current_password",
                "give your current password to change it",
            )
        })?;
        if !verify_password(current, &member.user.password_hash) {
            return Err(ApiError::invalid(
                "current_password",
                "the current password is wrong",
            ));
        }
    }
    let hash = hash_password(&body.password).map_err(ApiError::internal)?;
    match state.engine.store().set_password(&username, &hash).await {
        Ok(()) => {}
        Err(StoreError::NotFound) => return Err(user_not_found(&username)),
        Err(e) => return Err(e.into()),
    }
    Ok(noted(StatusCode::NO_CONTENT.into_response(), &username))
}

#[utoipa::path(get, path = "/api/v1/roles", tag = "users",
    responses((status = 200, body = RoleList), (status = 401, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn roles(State(state): State<AppState>, _who: Caller) -> Json<RoleList> {
    let builtin: Vec<&str> = fraisier_model::access::BUILTIN_ROLES
        .iter()
        .map(|r| r.0)
        .collect();
    Json(RoleList {
        roles: state
            .roles
            .iter()
            .map(|r| RoleView {
                name: r.name.clone(),
                description: r.description.clone(),
                permissions: r.permissions.iter().map(ToString::to_string).collect(),
                environments: r.environments.to_list(),
                builtin: builtin.contains(&r.name.as_str()),
            })
            .collect(),
    })
}
