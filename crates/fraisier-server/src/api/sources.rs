//! Seed 003's deployment sources: where each fraise's releases come from
//! (`GET /deployments/sources`), checking a source without deploying it
//! (`POST /deployments/sources/validate`), and deploying from git (`POST /deployments/github`)
//! or from an artifact, uploaded or in the store (`POST /deployments/direct`). Helm charts need
//! a Kubernetes provider, which Fraisier does not have: `POST /deployments/helm` says so.

use axum::extract::{FromRequest, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use fraisier_engine::{ArtifactPush, DeployRequest, SourceCheck};
use fraisier_model::access::Permission;
use fraisier_model::artifact::ArtifactKind;
use fraisier_model::webhook::Repository;
use fraisier_model::Strategy;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use utoipa::ToSchema;

use super::artifacts::receive;
use super::deployments::{created, noted, Created};
use super::error::{ApiError, ErrorBody};
use super::extract::{check_text, JsonBody, QueryMap, Upload};
use super::gate::{authorize, Caller};
use super::params::{StrategyName, Version};
use super::AppState;

#[derive(Serialize, ToSchema)]
pub struct FollowView {
    pub environment: String,
    /// A push to this branch deploys here.
    pub branch: Option<String>,
    /// A pushed tag deploys here.
    pub tags: bool,
}

#[derive(Serialize, ToSchema)]
pub struct SourceView {
    pub fraise: String,
    /// git | artifact_path | registry
    #[serde(rename = "type")]
    pub kind: String,
    pub url: Option<String>,
    pub branch: Option<String>,
    pub build: Option<String>,
    pub artifact_path: Option<String>,
    /// The environments webhooks deploy.
    pub follows: Vec<FollowView>,
}

#[derive(Serialize, ToSchema)]
pub struct SourceList {
    pub sources: Vec<SourceView>,
    /// Where git hosts deliver pushes.
    pub webhook_path: String,
    /// The kinds of source this server deploys from.
    pub supported: Vec<String>,
}

/// Body of `POST /deployments/sources/validate`: `fraise` (and `ref`), `url` (and `ref`), or
/// `artifact` and `version`.
#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ValidateSourceBody {
    #[schema(value_type = Option<super::params::Name>)]
    pub fraise: Option<String>,
    #[schema(min_length = 1, max_length = 2048)]
    pub url: Option<String>,
    #[serde(rename = "ref")]
    #[schema(min_length = 1, max_length = 255)]
    pub reference: Option<String>,
    #[schema(value_type = Option<super::params::Name>)]
    pub artifact: Option<String>,
    #[schema(value_type = Option<Version>)]
    pub version: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct CheckView {
    /// repository | ref | artifact
    pub check: String,
    pub ok: bool,
    pub message: String,
}

#[derive(Serialize, ToSchema)]
pub struct SourceReportView {
    pub valid: bool,
    pub commit: Option<String>,
    pub version: Option<String>,
    pub checks: Vec<CheckView>,
}

/// Body of `POST /deployments/github`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GitDeployBody {
    #[schema(max_length = 63)]
    pub fraise: String,
    #[schema(max_length = 63)]
    pub environment: String,
    /// `owner/name` or a URL; when given, it must be the fraise's repository.
    #[schema(max_length = 2048)]
    pub repository: Option<String>,
    /// A branch or tag (default: the fraise's branch).
    #[serde(rename = "ref")]
    #[schema(max_length = 255)]
    pub reference: Option<String>,
    /// A commit (full or abbreviated) instead of a ref.
    #[schema(max_length = 64)]
    pub commit: Option<String>,
    #[serde(default)]
    pub force: bool,
    #[schema(value_type = Option<StrategyName>)]
    pub strategy: Option<Strategy>,
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Map<String, Value>>,
}

/// Body of `POST /deployments/direct` as JSON: deploy a version the artifact store has.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DirectBody {
    #[schema(max_length = 63)]
    pub fraise: String,
    #[schema(max_length = 63)]
    pub environment: String,
    #[schema(value_type = Version)]
    pub version: String,
    /// The artifact holding that version (default: the fraise's own).
    #[schema(max_length = 128)]
    pub artifact: Option<String>,
    #[schema(value_type = Option<StrategyName>)]
    pub strategy: Option<Strategy>,
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Map<String, Value>>,
}

#[utoipa::path(get, path = "/api/v1/deployments/sources", tag = "sources",
    responses((status = 200, body = SourceList), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn list(State(state): State<AppState>, who: Caller) -> Json<SourceList> {
    let sources = state
        .engine
        .sources(&who.workspace)
        .into_iter()
        .map(|s| SourceView {
            fraise: s.fraise,
            kind: s.kind.to_string(),
            url: s.url,
            branch: s.branch,
            build: s.build,
            artifact_path: s.artifact_path,
            follows: s
                .follows
                .into_iter()
                .map(|f| FollowView {
                    environment: f.environment,
                    branch: f.branch,
                    tags: f.tags,
                })
                .collect(),
        })
        .collect();
    Json(SourceList {
        sources,
        webhook_path: "/api/v1/webhook".into(),
        supported: ["git", "artifact", "upload"]
            .into_iter()
            .map(String::from)
            .collect(),
    })
}

#[utoipa::path(post, path = "/api/v1/deployments/sources/validate", tag = "sources",
    request_body = ValidateSourceBody,
    responses((status = 200, body = SourceReportView, description = "`valid` says whether every check passed"),
              (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn validate(
    State(state): State<AppState>,
    who: Caller,
    JsonBody(body): JsonBody<ValidateSourceBody>,
) -> Result<Json<SourceReportView>, ApiError> {
    // The document's lengths: an empty url or ref is left out, not checked.
    for (field, value, max) in [("url", &body.url, 2048), ("ref", &body.reference, 255)] {
        check_text(field, value, max)?;
        if value.as_deref() == Some("") {
            return Err(ApiError::invalid(
                field,
                format!("{field}: empty; leave it out for the fraise's own"),
            ));
        }
    }
    let check = SourceCheck {
        fraise: body.fraise,
        url: body.url,
        reference: body.reference,
        artifact: body.artifact,
        version: body.version,
    };
    let report = state.engine.validate_source(&who.workspace, &check).await?;
    Ok(Json(SourceReportView {
        valid: report.valid,
        commit: report.commit,
        version: report.version,
        checks: report
            .checks
            .into_iter()
            .map(|c| CheckView {
                check: c.check.to_string(),
                ok: c.ok,
                message: c.message,
            })
            .collect(),
    }))
}

#[utoipa::path(post, path = "/api/v1/deployments/github", tag = "sources",
    request_body = GitDeployBody,
    responses((status = 202, body = Created, headers(("Location" = String, description = "the run"))),
              (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
              (status = 422, body = ErrorBody), (status = 502, body = ErrorBody, description = "SOURCE_UNAVAILABLE: the repository cannot be fetched")))]
pub async fn github(
    State(state): State<AppState>,
    who: Caller,
    JsonBody(body): JsonBody<GitDeployBody>,
) -> Result<Response, ApiError> {
    authorize(
        &state,
        &who,
        Permission::DeploymentCreate,
        &body.environment,
    )?;
    if let Some(repository) = &body.repository {
        let live = state.config();
        let config = live.scope(&who.workspace);
        let f = config
            .fraises
            .get(&body.fraise)
            .ok_or_else(|| ApiError::fraise_not_found(&body.fraise))?;
        let named = Repository {
            full_name: Some(repository.clone()),
            urls: vec![repository.clone()],
        };
        if !named.is(f.git_url().as_deref(), f.git_repo.as_deref()) {
            return Err(ApiError::invalid(
                "repository",
                format!(
                    "{} is built from {}, not {repository}",
                    body.fraise,
                    f.git_url().unwrap_or_else(|| "no repository".into())
                ),
            ));
        }
    }
    if body.reference.is_some() && body.commit.is_some() {
        return Err(ApiError::invalid(
            "commit",
            "give a ref or a commit, not both",
        ));
    }
    let req = DeployRequest {
        tenant: who.workspace.clone(),
        fraise: body.fraise,
        environment: body.environment,
        version: body.commit,
        git_ref: body.reference,
        force: body.force,
        strategy: body.strategy,
        metadata: Value::Object(body.metadata.unwrap_or_default()),
        triggered_by: who.username.clone(),
        trigger_type: "api".into(),
        ..DeployRequest::default()
    };
    let run = state.engine.submit(req).await?;
    Ok(noted(
        (StatusCode::ACCEPTED, Json(created(&run))).into_response(),
        &run,
    ))
}

/// An upload as a form: the fields first (each may instead be in the query), the bytes last.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct DirectForm {
    fraise: Option<String>,
    environment: Option<String>,
    version: Option<String>,
    /// The bytes: a .tar.gz, a .zip, or one file.
    #[schema(value_type = String, format = Binary)]
    file: Vec<u8>,
}

#[utoipa::path(post, path = "/api/v1/deployments/direct", tag = "sources",
    params(("fraise" = Option<String>, Query, description = "with an upload"), ("environment" = Option<String>, Query, description = "with an upload"),
           ("version" = Option<Version>, Query, description = "with an upload")),
    request_body(content((DirectBody = "application/json"), (Vec<u8> = "application/octet-stream"), (DirectForm = "multipart/form-data")),
        description = "JSON: a version in the artifact store; or the artifact's bytes (a .tar.gz, a .zip or one file), as the body or a form's file part, stored as that version of the fraise's artifact and deployed"),
    responses((status = 202, body = Created, headers(("Location" = String, description = "the run"))),
              (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
              (status = 413, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn direct(
    State(state): State<AppState>,
    who: Caller,
    mut q: QueryMap,
    req: Request,
) -> Result<Response, ApiError> {
    let json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|ct| ct.starts_with("application/json"));
    let (fraise, environment, version, strategy, metadata) = if json {
        let JsonBody(body) = JsonBody::<DirectBody>::from_request(req, &()).await?;
        authorize(
            &state,
            &who,
            Permission::DeploymentCreate,
            &body.environment,
        )?;
        let from = body.artifact.as_deref().unwrap_or(&body.fraise);
        if from != body.fraise {
            // It records a new version of the fraise's artifact.
            state
                .roles
                .judge(&who.roles, Permission::ArtifactPush, None)
                .map_err(|d| ApiError::denied(&d))?;
        }
        state
            .engine
            .adopt_artifact(
                &who.workspace,
                &body.fraise,
                from,
                &body.version,
                &who.username,
            )
            .await?;
        (
            body.fraise,
            body.environment,
            body.version,
            body.strategy,
            body.metadata.unwrap_or_default(),
        )
    } else {
        let upload = Upload::of(req)?;
        state
            .roles
            .judge(&who.roles, Permission::ArtifactPush, None)
            .map_err(|d| ApiError::denied(&d))?;
        let plan = |q: &QueryMap| {
            let need = |k: &str| {
                q.text(k).ok_or_else(|| {
                    ApiError::invalid(k, format!("{k} is required (?{k}=…) with an upload"))
                })
            };
            let (fraise, environment, version) =
                (need("fraise")?, need("environment")?, need("version")?);
            authorize(&state, &who, Permission::DeploymentCreate, &environment)?;
            let live = state.config();
            let config = live.scope(&who.workspace);
            let f = config
                .fraises
                .get(&fraise)
                .ok_or_else(|| ApiError::fraise_not_found(&fraise))?;
            if !config.environments.contains_key(&environment) {
                return Err(ApiError::environment_not_found(&environment));
            }
            let push = ArtifactPush {
                tenant: who.workspace.clone(),
                name: fraise,
                kind: ArtifactKind::of_fraise(f.kind),
                version,
                description: f.description.clone(),
                tags: Vec::new(),
                metadata: json!({ "source": "upload" }),
                by: who.username.clone(),
                limit: state.config().server.max_artifact_bytes,
            };
            state.engine.check_push(&push)?;
            Ok(push)
        };
        let fields = ["fraise", "environment", "version"];
        let (push, _) = receive(&state, upload, &mut q, &fields, plan).await?;
        let environment = q.text("environment").unwrap_or_default();
        (push.name, environment, push.version, None, Map::new())
    };
    let req = DeployRequest {
        tenant: who.workspace.clone(),
        fraise,
        environment,
        version: Some(version),
        from_store: true,
        strategy,
        metadata: Value::Object(metadata),
        triggered_by: who.username.clone(),
        trigger_type: "api".into(),
        ..DeployRequest::default()
    };
    let run = state.engine.submit(req).await?;
    Ok(noted(
        (StatusCode::ACCEPTED, Json(created(&run))).into_response(),
        &run,
    ))
}

#[utoipa::path(post, path = "/api/v1/deployments/helm", tag = "sources",
    request_body(content = Option<Object>, description = "a chart; not supported"),
    responses((status = 422, body = ErrorBody, description = "PROVIDER_UNSUPPORTED: no Kubernetes provider")))]
pub async fn helm() -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "PROVIDER_UNSUPPORTED",
        "Helm charts deploy to Kubernetes, and this server has no Kubernetes provider: deploy from git (POST /deployments/github) or an artifact (POST /deployments/direct)",
    )
}
