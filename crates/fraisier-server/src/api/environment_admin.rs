//! Environments made, changed and deleted through the API (seeds 003 and 004): the settings
//! of [`EnvironmentSettings`], kept in the store over what fraisier.yaml declares
//! (`fraisier_engine::environments` says which wins).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use fraisier_model::access::Permission;
use fraisier_model::config::EnvironmentConfig;
use fraisier_model::duration::Millis;
use fraisier_model::environment::{EnvironmentSettings, PromotionPolicy};
use fraisier_store::EnvironmentRecord;
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;

use super::error::{ApiError, ErrorBody};
use super::extract::JsonBody;
use super::gate::{authorize, AuditNote, Caller};
use super::views::ts;
use super::{AppState, Params};

/// Where an environment's settings come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DefinedIn {
    /// fraisier.yaml alone.
    File,
    /// The API alone: the file does not declare it.
    Api,
    /// fraisier.yaml, with fields set through the API over it.
    FileAndApi,
}

/// An environment's timings (seed 004's `config`), in seconds.
#[derive(Serialize, ToSchema)]
pub struct EnvironmentTimingsView {
    /// A run's time limit here when the request gives none.
    pub deployment_timeout: u64,
    /// How often instances are probed when a fraise's health check sets no interval; null:
    /// the fraise's own default (1 s).
    pub health_check_interval: Option<f64>,
}

/// An environment (seed 004's shape).
#[derive(Serialize, ToSchema)]
pub struct EnvironmentView {
    /// Its name: environments are addressed by name.
    pub id: String,
    pub name: String,
    pub display_name: String,
    pub description: Option<String>,
    pub order_index: u32,
    pub is_production: bool,
    pub required_approvals: u32,
    pub require_sod: bool,
    /// Seed 004's name for `require_sod`.
    pub require_separation_of_duties: bool,
    pub config: EnvironmentTimingsView,
    pub promotion_policy: PromotionPolicy,
    pub defined_in: DefinedIn,
    /// When the API created it (absent for one only the file declares).
    pub created_at: Option<String>,
    pub created_by: Option<String>,
    pub updated_at: Option<String>,
    pub updated_by: Option<String>,
}

/// Seed 004's `config` in a request: seconds, or a duration such as `"10m"`.
#[derive(Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnvironmentTimingsBody {
    #[serde(default)]
    #[schema(value_type = Option<u64>, minimum = 1, maximum = 604800)]
    pub deployment_timeout: Option<Millis>,
    #[serde(default)]
    #[schema(value_type = Option<u64>, minimum = 1, maximum = 3600)]
    pub health_check_interval: Option<Millis>,
}

/// `POST /environments` (`name` required) and `PUT /environments/{name}` (every field
/// optional; absent or null leaves it as it is).
#[derive(Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnvironmentBody {
    #[serde(default)]
    #[schema(value_type = Option<super::params::Name>)]
    pub name: Option<String>,
    #[serde(default)]
    #[schema(min_length = 1, max_length = 100)]
    pub display_name: Option<String>,
    #[serde(default)]
    #[schema(max_length = 1000)]
    pub description: Option<String>,
    #[serde(default)]
    #[schema(maximum = 10000)]
    pub order_index: Option<u32>,
    #[serde(default)]
    pub is_production: Option<bool>,
    #[serde(default)]
    #[schema(maximum = 10)]
    pub required_approvals: Option<u32>,
    #[serde(default)]
    pub require_sod: Option<bool>,
    /// Seed 004's name for `require_sod`.
    #[serde(default)]
    pub require_separation_of_duties: Option<bool>,
    #[serde(default)]
    pub config: Option<EnvironmentTimingsBody>,
    #[serde(default)]
    pub promotion_policy: Option<PromotionPolicy>,
}

impl EnvironmentBody {
    fn settings(self) -> Result<(Option<String>, EnvironmentSettings), ApiError> {
        let require_sod = match (self.require_sod, self.require_separation_of_duties) {
            (Some(a), Some(b)) if a != b => {
                return Err(ApiError::invalid(
                    "require_separation_of_duties",
                    "require_sod and require_separation_of_duties name one setting: give one, or the same value",
                ))
            }
            (a, b) => a.or(b),
        };
        let timings = self.config.unwrap_or_default();
        Ok((
            self.name,
            EnvironmentSettings {
                display_name: self.display_name,
                description: self.description,
                order_index: self.order_index,
                is_production: self.is_production,
                required_approvals: self.required_approvals,
                require_sod,
                deployment_timeout: timings.deployment_timeout,
                health_check_interval: timings.health_check_interval,
                promotion_policy: self.promotion_policy,
            },
        ))
    }
}

/// An environment as configured now, with its row, if the API wrote one.
pub fn view(
    state: &AppState,
    tenant: &str,
    name: &str,
    e: &EnvironmentConfig,
    record: Option<&EnvironmentRecord>,
) -> EnvironmentView {
    let record = record.filter(|r| r.deleted_at.is_none());
    let in_file = state.engine.declared_environment(tenant, name).is_some();
    let defined_in = match (in_file, record) {
        (true, Some(r)) if !r.settings.is_empty() => DefinedIn::FileAndApi,
        (true, _) => DefinedIn::File,
        (false, _) => DefinedIn::Api,
    };
    let record = record.filter(|_| defined_in != DefinedIn::File);
    EnvironmentView {
        id: name.to_string(),
        name: name.to_string(),
        display_name: e.display_name.clone().unwrap_or_else(|| name.to_string()),
        description: e.description.clone(),
        order_index: e.order(),
        is_production: e.production(),
        required_approvals: e.required_approvals,
        require_sod: e.require_sod,
        require_separation_of_duties: e.require_sod,
        config: EnvironmentTimingsView {
            deployment_timeout: state.engine.default_timeout_secs(tenant, name),
            health_check_interval: e.health_check_interval.map(|i| i.0 as f64 / 1000.0),
        },
        promotion_policy: e.promotion_policy,
        defined_in,
        created_at: record.map(|r| ts(r.created_at)),
        created_by: record.map(|r| r.created_by.clone()),
        updated_at: record.map(|r| ts(r.updated_at)),
        updated_by: record.map(|r| r.updated_by.clone()),
    }
}

/// An environment's view, read now.
pub async fn view_of(
    state: &AppState,
    tenant: &str,
    name: &str,
) -> Result<EnvironmentView, ApiError> {
    let e = state
        .engine
        .environment(tenant, name)
        .map_err(|_| ApiError::environment_not_found(name))?;
    let record = state
        .engine
        .store()
        .environment_record(tenant, name)
        .await?;
    Ok(view(state, tenant, name, &e, record.as_ref()))
}

fn noted(mut r: Response, environment: &str) -> Response {
    r.extensions_mut().insert(AuditNote {
        resource: Some(format!("environment:{environment}")),
        ..AuditNote::default()
    });
    r
}

#[utoipa::path(post, path = "/api/v1/environments", tag = "environments",
    request_body = EnvironmentBody,
    responses((status = 201, body = EnvironmentView), (status = 400, body = ErrorBody),
              (status = 409, body = ErrorBody, description = "ENVIRONMENT_EXISTS")))]
pub async fn create(
    State(state): State<AppState>,
    who: Caller,
    JsonBody(body): JsonBody<EnvironmentBody>,
) -> Result<Response, ApiError> {
    let (name, settings) = body.settings()?;
    let name = name.ok_or_else(|| ApiError::invalid("name", "name is required"))?;
    authorize(&state, &who, Permission::EnvironmentCreate, &name)?;
    state
        .engine
        .create_environment(&who.workspace, &name, &settings, &who.username)
        .await?;
    let v = view_of(&state, &who.workspace, &name).await?;
    Ok(noted((StatusCode::CREATED, Json(v)).into_response(), &name))
}

#[utoipa::path(put, path = "/api/v1/environments/{environment_name}", tag = "environments",
    params(("environment_name" = String, Path)),
    request_body(content = Option<EnvironmentBody>, description = "the fields to change; `name` may only repeat the path's"),
    responses((status = 200, body = EnvironmentView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn update(
    State(state): State<AppState>,
    who: Caller,
    Params(name): Params<String>,
    JsonBody(body): JsonBody<EnvironmentBody>,
) -> Result<Response, ApiError> {
    state
        .engine
        .environment(&who.workspace, &name)
        .map_err(|_| ApiError::environment_not_found(&name))?;
    authorize(&state, &who, Permission::EnvironmentUpdate, &name)?;
    let (renamed, changes) = body.settings()?;
    if renamed.is_some_and(|n| n != name) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "ENVIRONMENT_RENAME_UNSUPPORTED",
            "an environment is not renamed: runs, locks and fraisier.yaml name it; create one of the new name instead",
        )
        .with_details(json!({ "field": "name" })));
    }
    state
        .engine
        .update_environment(&who.workspace, &name, &changes, &who.username)
        .await?;
    let v = view_of(&state, &who.workspace, &name).await?;
    Ok(noted(Json(v).into_response(), &name))
}

#[utoipa::path(delete, path = "/api/v1/environments/{environment_name}", tag = "environments",
    params(("environment_name" = String, Path)),
    responses((status = 200, body = Object, description = "{\"deleted\": true}; its lock, freeze windows, limits and variables go with it, its runs stay"),
              (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody, description = "ENVIRONMENT_IN_USE: a fraise is configured for it, or it has target groups")))]
pub async fn delete(
    State(state): State<AppState>,
    who: Caller,
    Params(name): Params<String>,
) -> Result<Response, ApiError> {
    state
        .engine
        .environment(&who.workspace, &name)
        .map_err(|_| ApiError::environment_not_found(&name))?;
    authorize(&state, &who, Permission::EnvironmentDelete, &name)?;
    state
        .engine
        .delete_environment(&who.workspace, &name, &who.username)
        .await?;
    Ok(noted(
        Json(json!({ "deleted": true })).into_response(),
        &name,
    ))
}
