//! The OpenAPI 3.1 document, generated from the handlers' annotations.

use axum::Json;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{
    api_keys, approvals, audit, auth, deployments, environments, error, fraises, services, system,
    users,
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
        deployments::list, deployments::get, deployments::create, deployments::cancel, deployments::rollback, deployments::logs, deployments::events,
        services::create, services::validate, services::health, services::rollback, services::progress,
        fraises::list, fraises::get, fraises::status, fraises::history,
        environments::list, environments::get, environments::status,
        system::health, system::metrics, document,
    ),
    components(schemas(error::ErrorBody, error::ErrorDetail)),
    modifiers(&BearerAuth),
    security(("bearer" = []), ("api_key" = [])),
    tags((name = "deployments", description = "Deployment runs (seed 000)"), (name = "service deployments", description = "A fraise in an environment (seed 001)")),
)]
pub struct ApiDoc;

#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "system", security(()), responses((status = 200, description = "this document", body = Object)))]
pub async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
