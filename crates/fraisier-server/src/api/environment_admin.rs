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

use super::environments::noted;
use super::error::{ApiError, ErrorBody};
use super::extract::{JsonBody, OptionalBody};
use super::gate::{authorize, Caller};
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

/// The settings `POST /environments` and `PUT /environments/{name}` take; absent or null
/// leaves one as it is.
#[derive(Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnvironmentSettingsBody {
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
    #[serde(default, deserialize_with = "super::extract::object_or_null")]
    pub config: Option<EnvironmentTimingsBody>,
    #[serde(default)]
    pub promotion_policy: Option<PromotionPolicy>,
}

/// `POST /environments`: seed 004's body, `name` and the settings.
pub struct EnvironmentCreateBody {
    pub name: String,
    pub settings: EnvironmentSettingsBody,
}

/// The settings' schema with a required `name`: one object, closed to other fields (an
/// `allOf` of two closed objects would accept nothing).
impl utoipa::PartialSchema for EnvironmentCreateBody {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        let to_json = |s| serde_json::to_value(s).expect("a schema serializes");
        let mut schema = to_json(EnvironmentSettingsBody::schema());
        schema["properties"]["name"] =
            to_json(<super::params::Name as utoipa::PartialSchema>::schema());
        schema["required"] = json!(["name"]);
        schema["description"] = json!("seed 004's body: a name and the environment's settings");
        utoipa::openapi::RefOr::T(serde_json::from_value(schema).expect("a valid schema"))
    }
}

impl ToSchema for EnvironmentCreateBody {}

/// By hand: serde's `flatten` would let unknown fields through, which every other body
/// refuses.
impl<'de> Deserialize<'de> for EnvironmentCreateBody {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut fields = serde_json::Map::<String, serde_json::Value>::deserialize(d)?;
        let name = match fields.remove("name") {
            Some(serde_json::Value::String(name)) => name,
            Some(_) => return Err(D::Error::custom("name: a string is expected")),
            None => return Err(D::Error::missing_field("name")),
        };
        let settings = EnvironmentSettingsBody::deserialize(serde_json::Value::Object(fields))
            .map_err(D::Error::custom)?;
        Ok(EnvironmentCreateBody { name, settings })
    }
}

impl EnvironmentSettingsBody {
    pub fn settings(self) -> EnvironmentSettings {
        let timings = self.config.unwrap_or_default();
        EnvironmentSettings {
            display_name: self.display_name,
            description: self.description,
            order_index: self.order_index,
            is_production: self.is_production,
            required_approvals: self.required_approvals,
            require_sod: self.require_sod,
            deployment_timeout: timings.deployment_timeout,
            health_check_interval: timings.health_check_interval,
            promotion_policy: self.promotion_policy,
        }
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

#[utoipa::path(post, path = "/api/v1/environments", tag = "environments",
    request_body = EnvironmentCreateBody,
    responses((status = 201, body = EnvironmentView), (status = 400, body = ErrorBody),
              (status = 409, body = ErrorBody, description = "ENVIRONMENT_EXISTS")))]
pub async fn create(
    State(state): State<AppState>,
    who: Caller,
    JsonBody(body): JsonBody<EnvironmentCreateBody>,
) -> Result<Response, ApiError> {
    let (name, settings) = (body.name, body.settings.settings());
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
    request_body(content = Option<EnvironmentSettingsBody>, description = "the fields to change; an environment is not renamed"),
    responses((status = 200, body = EnvironmentView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn update(
    State(state): State<AppState>,
    who: Caller,
    Params(name): Params<String>,
    OptionalBody(body): OptionalBody<EnvironmentSettingsBody>,
) -> Result<Response, ApiError> {
    super::environments::lookup(&state, &who, &name)?;
    authorize(&state, &who, Permission::EnvironmentUpdate, &name)?;
    let changes = body.settings();
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
    super::environments::lookup(&state, &who, &name)?;
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
