//! Target groups (seed 004): named sets of an environment's targets, holding them by
//! membership, by labels, or both. A fraise placed with `targets: {group: web}` runs on the
//! agents of its environment's group `web`.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use fraisier_model::access::Permission;
use fraisier_model::agent::{labels_problem, matches, Labels};
use fraisier_store::{
    parse_target_group_id, NewTargetGroup, StoreError, TargetGroup, TargetGroupChange,
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;

use super::error::{ApiError, ErrorBody};
use super::extract::{check_text, JsonBody, OptionalBody};
use super::gate::{authorize, AuditNote, Caller};
use super::targets::{resolve_member, Member};
use super::views::ts;
use super::{AppState, Params};

#[derive(Serialize, ToSchema)]
pub struct TargetGroupView {
    /// `tgg_…`.
    pub id: String,
    /// The environment's name.
    pub environment_id: String,
    pub name: String,
    pub description: Option<String>,
    /// Every target carrying all of them is in the group (none: members only).
    #[schema(schema_with = fraisier_model::agent::labels_schema)]
    pub labels: BTreeMap<String, String>,
    /// Its members by id (`agt_…`, `tgt_…`), as set.
    pub member_ids: Vec<String>,
    /// What it holds now: its members and the targets its labels select.
    pub target_ids: Vec<String>,
    /// `fraise` placed on it by `targets: {group: …}`.
    pub used_by: Vec<String>,
    pub created_by: String,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Serialize, ToSchema)]
pub struct TargetGroupList {
    pub target_groups: Vec<TargetGroupView>,
    pub total: u64,
}

/// `POST /environments/{name}/target-groups`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TargetGroupBody {
    #[schema(value_type = super::params::Name)]
    pub name: String,
    #[serde(default)]
    #[schema(max_length = 500)]
    pub description: Option<String>,
    #[serde(default)]
    #[schema(schema_with = fraisier_model::agent::optional_labels_schema)]
    pub labels: Option<Labels>,
    /// Members: `agt_…`, `tgt_…` or a target's name.
    #[serde(default)]
    #[schema(max_items = 256)]
    pub target_ids: Vec<String>,
}

/// `PUT /target-groups/{id}`: what is given changes, the rest stays.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TargetGroupUpdate {
    #[serde(default)]
    #[schema(value_type = Option<super::params::Name>)]
    pub name: Option<String>,
    /// `null` removes it.
    #[serde(default, deserialize_with = "super::extract::present")]
    #[schema(value_type = Option<String>, nullable, max_length = 500)]
    pub description: Option<Option<String>>,
    /// Replaces the labels (`{}`: members only).
    #[serde(default)]
    #[schema(schema_with = fraisier_model::agent::optional_labels_schema)]
    pub labels: Option<Labels>,
    /// Replaces the members.
    #[serde(default)]
    #[schema(max_items = 256)]
    pub target_ids: Option<Vec<String>>,
}

fn noted(mut r: Response, id: &str) -> Response {
    r.extensions_mut().insert(AuditNote {
        resource: Some(format!("target_group:{id}")),
        ..AuditNote::default()
    });
    r
}

fn not_found(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "TARGET_GROUP_NOT_FOUND",
        format!("no target group {id:?} in this workspace (ids are tgg_…; see GET /api/v1/environments/{{name}}/target-groups)"),
    )
}

/// An environment of the caller's workspace, or 404 naming it.
pub(super) fn known_environment(
    state: &AppState,
    who: &Caller,
    name: &str,
) -> Result<(), ApiError> {
    if fraisier_model::names::is_valid_name(name)
        && state
            .config()
            .scope(&who.workspace)
            .environments
            .contains_key(name)
    {
        Ok(())
    } else {
        Err(ApiError::environment_not_found(name))
    }
}

/// The fraises placed on a group (by its environment and name).
fn used_by(state: &AppState, who: &Caller, environment: &str, name: &str) -> Vec<String> {
    state
        .config()
        .scope(&who.workspace)
        .fraises
        .iter()
        .filter(|(_, f)| {
            f.environments
                .get(environment)
                .and_then(|fe| fe.targets.as_ref())
                .and_then(|t| t.group.as_deref())
                == Some(name)
        })
        .map(|(n, _)| n.clone())
        .collect()
}

async fn view(
    state: &AppState,
    who: &Caller,
    g: &TargetGroup,
) -> Result<TargetGroupView, ApiError> {
    let store = state.engine.store();
    let mut target_ids = g.members.clone();
    if !g.labels.is_empty() {
        let agents = store.agents(&who.workspace).await?;
        let described = store.targets(&who.workspace).await?;
        let selected = agents
            .iter()
            .filter(|a| matches(&a.labels, &g.labels))
            .map(|a| format!("agt_{}", a.id))
            .chain(
                described
                    .iter()
                    .filter(|t| t.environment.as_deref().is_none_or(|e| e == g.environment))
                    .filter(|t| matches(&t.labels, &g.labels))
                    .map(|t| t.reference()),
            );
        for id in selected {
            if !target_ids.contains(&id) {
                target_ids.push(id);
            }
        }
    }
    Ok(TargetGroupView {
        id: g.reference(),
        environment_id: g.environment.clone(),
        name: g.name.clone(),
        description: g.description.clone(),
        labels: g.labels.clone(),
        member_ids: g.members.clone(),
        target_ids,
        used_by: used_by(state, who, &g.environment, &g.name),
        created_by: g.created_by.clone(),
        created_at: ts(g.created_at),
        updated_at: ts(g.updated_at),
    })
}

/// Members by canonical id; each must exist and, if it is tied to an environment, to this one.
async fn members(
    state: &AppState,
    who: &Caller,
    environment: &str,
    refs: &[String],
) -> Result<Vec<String>, ApiError> {
    let mut out: Vec<String> = Vec::new();
    for (i, r) in refs.iter().enumerate() {
        let field = format!("targetIds[{i}]");
        let id = match resolve_member(state, who, r).await? {
            None => {
                return Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "TARGET_NOT_FOUND",
                    format!("{field}: no target {r:?} in this workspace"),
                )
                .with_details(json!({ "field": field })))
            }
            Some(Member::Described(t)) => {
                if let Some(e) = t.environment.as_deref().filter(|e| *e != environment) {
                    return Err(ApiError::new(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "TARGET_ENVIRONMENT_MISMATCH",
                        format!("{field}: target {} serves {e}, not {environment}", t.name),
                    )
                    .with_details(json!({ "field": field })));
                }
                t.reference()
            }
            Some(Member::Agent(a)) => format!("agt_{}", a.id),
        };
        if !out.contains(&id) {
            out.push(id);
        }
    }
    Ok(out)
}

fn check_fields(
    name: Option<&str>,
    description: &Option<String>,
    labels: Option<&Labels>,
) -> Result<(), ApiError> {
    if let Some(p) = name.and_then(fraisier_model::names::name_problem) {
        return Err(ApiError::invalid("name", format!("name {p}")));
    }
    check_text("description", description, 500)?;
    if let Some(p) = labels.and_then(labels_problem) {
        return Err(ApiError::invalid("labels", p));
    }
    Ok(())
}

fn conflict(e: StoreError) -> ApiError {
    match e {
        StoreError::AlreadyExists(what) => ApiError::new(
            StatusCode::CONFLICT,
            "TARGET_GROUP_EXISTS",
            format!("{what} already exists"),
        ),
        e => e.into(),
    }
}

async fn find(state: &AppState, who: &Caller, id: &str) -> Result<TargetGroup, ApiError> {
    let n = parse_target_group_id(id).ok_or_else(|| not_found(id))?;
    match state.engine.store().target_group(&who.workspace, n).await {
        Err(StoreError::NotFound) => Err(not_found(id)),
        r => Ok(r?),
    }
}

#[utoipa::path(post, path = "/api/v1/environments/{environment_name}/target-groups", tag = "targets",
    params(("environment_name" = String, Path)), request_body = TargetGroupBody,
    responses((status = 201, body = TargetGroupView, headers(("Location" = String, description = "the group"))),
              (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody, description = "TARGET_GROUP_EXISTS"),
              (status = 422, body = ErrorBody, description = "a member that does not exist or serves another environment")))]
pub async fn create(
    State(state): State<AppState>,
    who: Caller,
    Params(environment): Params<String>,
    JsonBody(body): JsonBody<TargetGroupBody>,
) -> Result<Response, ApiError> {
    known_environment(&state, &who, &environment)?;
    authorize(&state, &who, Permission::EnvironmentUpdate, &environment)?;
    check_fields(Some(&body.name), &body.description, body.labels.as_ref())?;
    let members = members(&state, &who, &environment, &body.target_ids).await?;
    let g = state
        .engine
        .store()
        .create_target_group(&NewTargetGroup {
            workspace: who.workspace.clone(),
            environment: environment.clone(),
            name: body.name,
            description: body.description,
            labels: body.labels.unwrap_or_default(),
            members,
            created_by: who.username.clone(),
        })
        .await
        .map_err(conflict)?;
    let v = view(&state, &who, &g).await?;
    let mut r = (StatusCode::CREATED, Json(&v)).into_response();
    if let Ok(h) = HeaderValue::from_str(&format!("/api/v1/target-groups/{}", v.id)) {
        r.headers_mut().insert(header::LOCATION, h);
    }
    Ok(noted(r, &v.id))
}

#[utoipa::path(get, path = "/api/v1/environments/{environment_name}/target-groups", tag = "targets",
    params(("environment_name" = String, Path)),
    responses((status = 200, body = TargetGroupList), (status = 404, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    who: Caller,
    Params(environment): Params<String>,
) -> Result<Json<TargetGroupList>, ApiError> {
    known_environment(&state, &who, &environment)?;
    authorize(&state, &who, Permission::EnvironmentRead, &environment)?;
    let mut target_groups = Vec::new();
    for g in state
        .engine
        .store()
        .target_groups(&who.workspace, Some(&environment))
        .await?
    {
        target_groups.push(view(&state, &who, &g).await?);
    }
    Ok(Json(TargetGroupList {
        total: target_groups.len() as u64,
        target_groups,
    }))
}

#[utoipa::path(get, path = "/api/v1/target-groups/{target_group_id}", tag = "targets",
    params(("target_group_id" = String, Path, description = "tgg_…")),
    responses((status = 200, body = TargetGroupView), (status = 404, body = ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    who: Caller,
    Params(id): Params<String>,
) -> Result<Json<TargetGroupView>, ApiError> {
    let g = find(&state, &who, &id).await?;
    authorize(&state, &who, Permission::EnvironmentRead, &g.environment)?;
    Ok(Json(view(&state, &who, &g).await?))
}

#[utoipa::path(put, path = "/api/v1/target-groups/{target_group_id}", tag = "targets",
    params(("target_group_id" = String, Path, description = "tgg_…")),
    request_body(content = Option<TargetGroupUpdate>, description = "no body, or {}, changes nothing"),
    responses((status = 200, body = TargetGroupView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody, description = "TARGET_GROUP_EXISTS, or TARGET_GROUP_IN_USE: renaming a group fraises are placed on"),
              (status = 422, body = ErrorBody)))]
pub async fn update(
    State(state): State<AppState>,
    who: Caller,
    Params(id): Params<String>,
    OptionalBody(body): OptionalBody<TargetGroupUpdate>,
) -> Result<Response, ApiError> {
    let g = find(&state, &who, &id).await?;
    authorize(&state, &who, Permission::EnvironmentUpdate, &g.environment)?;
    check_fields(
        body.name.as_deref(),
        &body.description.clone().flatten(),
        body.labels.as_ref(),
    )?;
    if body.name.as_ref().is_some_and(|n| *n != g.name) {
        in_use(&state, &who, &g, "renamed")?;
    }
    let members = match &body.target_ids {
        Some(refs) => Some(members(&state, &who, &g.environment, refs).await?),
        None => None,
    };
    let g = state
        .engine
        .store()
        .update_target_group(
            &who.workspace,
            g.id,
            &TargetGroupChange {
                name: body.name,
                description: body.description,
                labels: body.labels,
                members,
            },
        )
        .await
        .map_err(conflict)?;
    Ok(noted(
        Json(view(&state, &who, &g).await?).into_response(),
        &id,
    ))
}

/// A group fraises are placed on keeps its name: `fraisier.yaml` names it.
fn in_use(state: &AppState, who: &Caller, g: &TargetGroup, what: &str) -> Result<(), ApiError> {
    let users = used_by(state, who, &g.environment, &g.name);
    if users.is_empty() {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::CONFLICT,
        "TARGET_GROUP_IN_USE",
        format!(
            "target group {} cannot be {what}: {} in {} is placed on it (targets: {{group: {}}} in fraisier.yaml)",
            g.name,
            users.join(", "),
            g.environment,
            g.name
        ),
    )
    .with_details(json!({ "fraises": users })))
}

#[utoipa::path(delete, path = "/api/v1/target-groups/{target_group_id}", tag = "targets",
    params(("target_group_id" = String, Path, description = "tgg_…")),
    responses((status = 200, body = Object, description = "{\"deleted\": true}; its targets stay"),
              (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody, description = "TARGET_GROUP_IN_USE: a fraise is placed on it")))]
pub async fn delete(
    State(state): State<AppState>,
    who: Caller,
    Params(id): Params<String>,
) -> Result<Response, ApiError> {
    let g = find(&state, &who, &id).await?;
    authorize(&state, &who, Permission::EnvironmentUpdate, &g.environment)?;
    in_use(&state, &who, &g, "deleted")?;
    if !state
        .engine
        .store()
        .delete_target_group(&who.workspace, g.id)
        .await?
    {
        return Err(not_found(&id));
    }
    Ok(noted(
        Json(json!({ "deleted": true, "id": g.reference() })).into_response(),
        &id,
    ))
}
