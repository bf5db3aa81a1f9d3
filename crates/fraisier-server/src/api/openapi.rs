//! The OpenAPI 3.1 document, generated from the handlers' annotations.

use axum::Json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{auth, deployments, environments, error, fraises, services, system};

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
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Fraisier REST API", version = "0.1.0", description = "Deploy fraises to environments with zero downtime. Base path /api/v1; bearer tokens from /auth/token or `fraisier auth:token`."),
    paths(
        auth::token, auth::login, auth::refresh,
        deployments::list, deployments::get, deployments::create, deployments::cancel, deployments::rollback, deployments::logs, deployments::events,
        services::create, services::validate, services::health, services::rollback, services::progress,
        fraises::list, fraises::get, fraises::status, fraises::history,
        environments::list, environments::get, environments::status,
        system::health, system::metrics, document,
    ),
    components(schemas(error::ErrorBody, error::ErrorDetail)),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    tags((name = "deployments", description = "Deployment runs (seed 000)"), (name = "service deployments", description = "A fraise in an environment (seed 001)")),
)]
pub struct ApiDoc;

#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "system", responses((status = 200, description = "this document", body = Object)))]
pub async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
