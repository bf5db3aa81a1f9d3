//! `/artifacts` (seed 003's registry): push a version (the raw body or a multipart form's
//! file), list, read and update artifacts and their versions, promote a version into an
//! environment, download a version's bytes, delete what nothing runs, and the artifact types.
//! Bytes are streamed in and out, never held whole.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use fraisier_engine::{ArtifactPush, Promotion};
use fraisier_model::access::Permission;
use fraisier_model::artifact::ArtifactKind;
use fraisier_model::Strategy;
use fraisier_store::{Artifact, ArtifactFilter, ArtifactVersion};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio_util::io::ReaderStream;
use utoipa::ToSchema;

use super::deployments::{created, Created};
use super::error::{ApiError, ErrorBody};
use super::extract::{check_text, JsonBody, OptionalBody, QueryMap, Upload};
use super::gate::{authorize, AuditNote, Caller};
use super::params::StrategyName;
use super::views;
use super::{AppState, Params};

#[derive(Serialize, ToSchema)]
pub struct VersionView {
    pub version: String,
    /// `sha256:<hex>` of the bytes.
    pub digest: String,
    pub size: u64,
    /// tar.gz | zip | file
    pub format: String,
    #[schema(value_type = Object)]
    pub metadata: Value,
    pub created_at: String,
    pub created_by: String,
    pub download_url: String,
}

#[derive(Serialize, ToSchema)]
pub struct ArtifactView {
    /// The artifact's name, which is also its id in paths.
    pub id: String,
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub status: &'static str,
    pub description: Option<String>,
    pub tags: Vec<String>,
    pub created: String,
    pub updated: String,
    pub creator: String,
    pub versions: u64,
    pub latest_version: Option<String>,
    /// Bytes of all its versions.
    pub size: u64,
}

#[derive(Serialize, ToSchema)]
pub struct ArtifactDetails {
    #[serde(flatten)]
    pub artifact: ArtifactView,
    pub version_list: Vec<VersionView>,
}

#[derive(Serialize, ToSchema)]
pub struct ArtifactList {
    pub artifacts: Vec<ArtifactView>,
    pub total: u64,
    pub limit: u32,
    pub offset: u64,
}

#[derive(Serialize, ToSchema)]
pub struct VersionList {
    pub artifact: String,
    pub versions: Vec<VersionView>,
}

/// A pushed version, with its artifact.
#[derive(Serialize, ToSchema)]
pub struct PushedView {
    pub artifact: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(flatten)]
    pub version: VersionView,
    /// false when these bytes were already this version.
    pub created: bool,
}

#[derive(Serialize, ToSchema)]
pub struct TypeView {
    pub name: &'static str,
    pub description: &'static str,
    pub artifacts: u64,
}

#[derive(Serialize, ToSchema)]
pub struct TypeList {
    pub types: Vec<TypeView>,
}

fn artifact_view(a: &Artifact) -> ArtifactView {
    ArtifactView {
        id: a.name.clone(),
        name: a.name.clone(),
        kind: a.kind.clone(),
        status: "active",
        description: a.description.clone(),
        tags: a.tags.clone(),
        created: views::ts(a.created_at),
        updated: views::ts(a.updated_at),
        creator: a.created_by.clone(),
        versions: a.versions,
        latest_version: a.latest.clone(),
        size: a.size,
    }
}

fn version_view(name: &str, v: &ArtifactVersion) -> VersionView {
    VersionView {
        version: v.version.clone(),
        digest: v.digest.clone(),
        size: v.size,
        format: v.format.clone(),
        metadata: v.metadata.clone(),
        created_at: views::ts(v.created_at),
        created_by: v.created_by.clone(),
        download_url: format!("/api/v1/artifacts/{name}/download?version={}", v.version),
    }
}

fn noted(mut r: Response, name: &str) -> Response {
    r.extensions_mut().insert(AuditNote {
        resource: Some(format!("artifact:{name}")),
        ..AuditNote::default()
    });
    r
}

/// A multipart upload: the fields (each may instead be in the query) and the bytes.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct UploadForm {
    name: Option<String>,
    version: Option<String>,
    #[schema(value_type = Option<ArtifactKind>)]
    r#type: Option<String>,
    description: Option<String>,
    tag: Option<String>,
    /// The bytes: a .tar.gz, a .zip, or one file.
    #[schema(value_type = String, format = Binary)]
    file: Vec<u8>,
}

/// A multipart upload of a new version of an artifact that exists.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct VersionForm {
    version: Option<String>,
    description: Option<String>,
    tag: Option<String>,
    /// The bytes: a .tar.gz, a .zip, or one file.
    #[schema(value_type = String, format = Binary)]
    file: Vec<u8>,
}

/// The form fields `POST /artifacts` reads.
const PUSH_FIELDS: &[&str] = &["name", "version", "type", "description", "tag"];

#[utoipa::path(post, path = "/api/v1/artifacts", tag = "artifacts",
    params(("name" = super::params::Name, Query, description = "the artifact (a fraise's artifact carries its name); not `types` or `storage`"),
           ("version" = super::params::Version, Query), ("type" = Option<ArtifactKind>, Query, description = "default api"),
           ("description" = Option<String>, Query), ("tag" = Option<super::params::Tag>, Query, description = "repeat for several")),
    request_body(content((Vec<u8> = "application/octet-stream"), (UploadForm = "multipart/form-data")),
        description = "the bytes (a .tar.gz, a .zip, or one file) as the body, or as a form's file part"),
    responses((status = 201, body = PushedView, headers(("Location" = String, description = "the version")),
                  links(("GetArtifact" = (operation_id = "get_artifact", parameters(("name" = "$response.body#/artifact")))))),
              (status = 200, body = PushedView, description = "these bytes were already this version"),
              (status = 400, body = ErrorBody), (status = 409, body = ErrorBody, description = "the version exists with other bytes, or the artifact has another type"),
              (status = 413, body = ErrorBody)))]
pub async fn push(
    State(state): State<AppState>,
    who: Caller,
    mut q: QueryMap,
    req: Request,
) -> Result<Response, ApiError> {
    let upload = Upload::of(req)?;
    let plan = |q: &QueryMap| {
        let name = q
            .text("name")
            .ok_or_else(|| ApiError::invalid("name", "name is required (?name=…)"))?;
        let kind = q
            .one_of::<ArtifactKind>("type", "api, model, client, server")?
            .unwrap_or(ArtifactKind::Api);
        version_push(&state, &who, q, name, kind)
    };
    let (push, pushed) = receive(&state, upload, &mut q, PUSH_FIELDS, plan).await?;
    Ok(pushed_response(&push, pushed))
}

/// The form fields `POST /artifacts/{name}/versions` reads.
const VERSION_FIELDS: &[&str] = &["version", "description", "tag"];

#[utoipa::path(post, path = "/api/v1/artifacts/{name}/versions", tag = "artifacts",
    params(("name" = String, Path, description = "an artifact that exists (POST /artifacts makes one)"),
           ("version" = super::params::Version, Query), ("tag" = Option<super::params::Tag>, Query, description = "repeat for several")),
    request_body(content((Vec<u8> = "application/octet-stream"), (VersionForm = "multipart/form-data")),
        description = "the bytes (a .tar.gz, a .zip, or one file) as the body, or as a form's file part"),
    responses((status = 201, body = PushedView, headers(("Location" = String, description = "the version"))),
              (status = 200, body = PushedView, description = "these bytes were already this version"),
              (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody, description = "the version exists with other bytes"),
              (status = 413, body = ErrorBody)))]
pub async fn push_version(
    State(state): State<AppState>,
    who: Caller,
    Params(name): Params<String>,
    mut q: QueryMap,
    req: Request,
) -> Result<Response, ApiError> {
    let upload = Upload::of(req)?;
    let artifact = state.engine.artifact(&who.workspace, &name).await?;
    let kind = ArtifactKind::parse(&artifact.kind)
        .ok_or_else(|| ApiError::internal(format!("stored artifact type {:?}", artifact.kind)))?;
    let plan = |q: &QueryMap| version_push(&state, &who, q, name.clone(), kind);
    let (push, pushed) = receive(&state, upload, &mut q, VERSION_FIELDS, plan).await?;
    Ok(pushed_response(&push, pushed))
}

/// The version of artifact `name` the query (and form) describe.
fn version_push(
    state: &AppState,
    who: &Caller,
    q: &QueryMap,
    name: String,
    kind: ArtifactKind,
) -> Result<ArtifactPush, ApiError> {
    let version = q
        .text("version")
        .ok_or_else(|| ApiError::invalid("version", "version is required (?version=…)"))?;
    let description = q.text("description");
    check_text("description", &description, 2000)?;
    let tags: Vec<String> =
        q.0.iter()
            .filter(|(k, _)| k == "tag")
            .map(|(_, v)| v.clone())
            .collect();
    check_tags("tag", &tags)?;
    let push = ArtifactPush {
        tenant: who.workspace.clone(),
        name,
        kind,
        version,
        description,
        tags,
        metadata: json!({}),
        by: who.username.clone(),
        limit: state.config().server.max_artifact_bytes,
    };
    state.engine.check_push(&push)?;
    Ok(push)
}

/// Receives an upload and records it as the version `plan` reads from the query and form. A
/// raw body whose query is wrong is refused before a byte is read; a form is read whole
/// first (it may name what it carries after its file), and its bytes dropped if refused.
pub(super) async fn receive(
    state: &AppState,
    upload: Upload,
    q: &mut QueryMap,
    fields: &[&str],
    plan: impl Fn(&QueryMap) -> Result<ArtifactPush, ApiError>,
) -> Result<(ArtifactPush, fraisier_engine::Pushed), ApiError> {
    let early = if upload.is_form() {
        None
    } else {
        Some(plan(q)?)
    };
    let limit = state.config().server.max_artifact_bytes;
    let blob = upload.store(q, fields, &state.engine, limit).await?;
    let push = match early.map_or_else(|| plan(q), Ok) {
        Ok(push) => push,
        Err(e) => {
            state.engine.discard_upload(&blob).await;
            return Err(e);
        }
    };
    let pushed = state.engine.record_push(&push, &blob).await?;
    Ok((push, pushed))
}

fn pushed_response(push: &ArtifactPush, pushed: fraisier_engine::Pushed) -> Response {
    let view = PushedView {
        artifact: push.name.clone(),
        kind: push.kind.as_str().to_string(),
        version: version_view(&push.name, &pushed.version),
        created: pushed.created,
    };
    let status = if pushed.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let mut r = (status, Json(view)).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!(
        "/api/v1/artifacts/{}/versions/{}",
        push.name, push.version
    )) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    noted(r, &push.name)
}

#[utoipa::path(get, path = "/api/v1/artifacts", tag = "artifacts",
    params(("type" = Option<ArtifactKind>, Query), ("q" = Option<String>, Query), ("limit" = Option<u32>, Query, minimum = 1, maximum = 500), ("offset" = Option<u64>, Query)),
    responses((status = 200, body = ArtifactList), (status = 400, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    who: Caller,
    q: QueryMap,
) -> Result<Json<ArtifactList>, ApiError> {
    let (limit, offset) = q.pagination(50)?;
    let kind = q.one_of::<ArtifactKind>("type", "api, model, client, server")?;
    let filter = ArtifactFilter {
        kind: kind.map(|k| k.as_str().to_string()),
        q: q.text("q"),
        limit,
        offset,
    };
    let (artifacts, total) = state.engine.artifacts(&who.workspace, &filter).await?;
    Ok(Json(ArtifactList {
        artifacts: artifacts.iter().map(artifact_view).collect(),
        total,
        limit,
        offset,
    }))
}

#[utoipa::path(get, path = "/api/v1/artifacts/{name}", tag = "artifacts", operation_id = "get_artifact",
    params(("name" = String, Path)),
    responses((status = 200, body = ArtifactDetails), (status = 404, body = ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    who: Caller,
    Params(name): Params<String>,
) -> Result<Json<ArtifactDetails>, ApiError> {
    let a = state.engine.artifact(&who.workspace, &name).await?;
    let versions = state
        .engine
        .artifact_versions(&who.workspace, &name)
        .await?;
    Ok(Json(ArtifactDetails {
        artifact: artifact_view(&a),
        version_list: versions.iter().map(|v| version_view(&name, v)).collect(),
    }))
}

/// `PUT /artifacts/{name}`: what is given changes, the rest stays.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ArtifactUpdate {
    /// `null` removes it.
    #[serde(default, deserialize_with = "super::extract::present")]
    #[schema(value_type = Option<String>, nullable, max_length = 2000)]
    pub description: Option<Option<String>>,
    /// Replaces the tags.
    #[serde(default)]
    #[schema(value_type = Option<Vec<super::params::Tag>>, max_items = 50)]
    pub tags: Option<Vec<String>>,
}

#[utoipa::path(put, path = "/api/v1/artifacts/{name}", tag = "artifacts",
    params(("name" = String, Path)),
    request_body(content = Option<ArtifactUpdate>, description = "no body, or {}, changes nothing"),
    responses((status = 200, body = ArtifactView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn update(
    State(state): State<AppState>,
    who: Caller,
    Params(name): Params<String>,
    OptionalBody(body): OptionalBody<ArtifactUpdate>,
) -> Result<Response, ApiError> {
    if let Some(d) = &body.description {
        check_text("description", d, 2000)?;
    }
    if let Some(tags) = &body.tags {
        check_tags("tags", tags)?;
    }
    let a = state
        .engine
        .update_artifact(
            &who.workspace,
            &name,
            body.description.as_ref().map(Option::as_deref),
            body.tags.as_deref(),
        )
        .await?;
    Ok(noted(Json(artifact_view(&a)).into_response(), &name))
}

/// Tags as `PUT` (`tags[i]`) or a push's query (`tag`) gives them; `field` names them.
fn check_tags(field: &str, tags: &[String]) -> Result<(), ApiError> {
    if tags.len() > 50 {
        return Err(ApiError::invalid(field, "at most 50 tags"));
    }
    for (i, t) in tags.iter().enumerate() {
        if t.is_empty() || t.chars().count() > 100 || t.chars().any(char::is_control) {
            return Err(ApiError::invalid(
                if field == "tags" {
                    format!("tags[{i}]")
                } else {
                    field.to_string()
                },
                "a tag is 1 to 100 characters, none of them control characters",
            ));
        }
    }
    Ok(())
}

/// `POST /artifacts/{name}/promote`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PromoteBody {
    /// The version to promote; default, with `from`, what runs there.
    #[serde(default)]
    #[schema(value_type = Option<super::params::Version>)]
    pub version: Option<String>,
    /// The environment the version was proven in: it must be what runs there.
    #[serde(default)]
    pub from: Option<String>,
    /// The environment it is deployed into.
    pub to: String,
    #[serde(default)]
    #[schema(value_type = Option<StrategyName>)]
    pub strategy: Option<Strategy>,
}

#[utoipa::path(post, path = "/api/v1/artifacts/{name}/promote", tag = "artifacts",
    params(("name" = String, Path, description = "a fraise's artifact")), request_body = PromoteBody,
    responses((status = 202, body = Created, description = "the deploy into `to`", headers(("Location" = String, description = "the run"))),
              (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody, description = "NOT_PROMOTABLE: not a fraise's artifact, or not what runs in `from`; or a deploy is in progress"),
              (status = 422, body = ErrorBody, description = "PROMOTION_BLOCKED: `to` takes promotions only from the environment before it; or a guard refuses")))]
pub async fn promote(
    State(state): State<AppState>,
    who: Caller,
    Params(name): Params<String>,
    JsonBody(body): JsonBody<PromoteBody>,
) -> Result<Response, ApiError> {
    authorize(&state, &who, Permission::DeploymentCreate, &body.to)?;
    let run = state
        .engine
        .promote(&Promotion {
            tenant: who.workspace.clone(),
            artifact: name,
            version: body.version,
            from: body.from,
            to: body.to,
            strategy: body.strategy,
            by: who.username.clone(),
        })
        .await?;
    Ok(super::deployments::noted(
        (StatusCode::ACCEPTED, Json(created(&run))).into_response(),
        &run,
    ))
}

#[utoipa::path(get, path = "/api/v1/artifacts/{name}/versions", tag = "artifacts",
    params(("name" = String, Path)),
    responses((status = 200, body = VersionList), (status = 404, body = ErrorBody)))]
pub async fn versions(
    State(state): State<AppState>,
    who: Caller,
    Params(name): Params<String>,
) -> Result<Json<VersionList>, ApiError> {
    let versions = state
        .engine
        .artifact_versions(&who.workspace, &name)
        .await?;
    Ok(Json(VersionList {
        versions: versions.iter().map(|v| version_view(&name, v)).collect(),
        artifact: name,
    }))
}

#[utoipa::path(get, path = "/api/v1/artifacts/{name}/versions/{version}", tag = "artifacts",
    params(("name" = String, Path), ("version" = String, Path)),
    responses((status = 200, body = VersionView), (status = 404, body = ErrorBody)))]
pub async fn version(
    State(state): State<AppState>,
    who: Caller,
    Params((name, version)): Params<(String, String)>,
) -> Result<Json<VersionView>, ApiError> {
    let v = state
        .engine
        .artifact_version(&who.workspace, &name, Some(&version))
        .await?;
    Ok(Json(version_view(&name, &v)))
}

#[utoipa::path(delete, path = "/api/v1/artifacts/{name}/versions/{version}", tag = "artifacts",
    params(("name" = String, Path), ("version" = String, Path)),
    responses((status = 204, description = "deleted"), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody, description = "a service deployment runs it")))]
pub async fn delete_version(
    State(state): State<AppState>,
    who: Caller,
    Params((name, version)): Params<(String, String)>,
) -> Result<Response, ApiError> {
    state
        .engine
        .delete_artifact(&who.workspace, &name, Some(&version))
        .await?;
    Ok(noted(StatusCode::NO_CONTENT.into_response(), &name))
}

#[utoipa::path(delete, path = "/api/v1/artifacts/{name}", tag = "artifacts",
    params(("name" = String, Path)),
    responses((status = 204, description = "deleted with all its versions"), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody, description = "a service deployment runs one of its versions")))]
pub async fn delete(
    State(state): State<AppState>,
    who: Caller,
    Params(name): Params<String>,
) -> Result<Response, ApiError> {
    state
        .engine
        .delete_artifact(&who.workspace, &name, None)
        .await?;
    Ok(noted(StatusCode::NO_CONTENT.into_response(), &name))
}

#[utoipa::path(get, path = "/api/v1/artifacts/{name}/download", tag = "artifacts",
    params(("name" = String, Path), ("version" = Option<String>, Query, description = "default: the newest")),
    responses((status = 200, description = "the bytes, with their digest in `X-Checksum-Sha256`", content_type = "application/octet-stream", body = Vec<u8>),
              (status = 404, body = ErrorBody)))]
pub async fn download(
    State(state): State<AppState>,
    who: Caller,
    Params(name): Params<String>,
    q: QueryMap,
) -> Result<Response, ApiError> {
    let version = q.text("version");
    let v = state
        .engine
        .artifact_version(&who.workspace, &name, version.as_deref())
        .await?;
    let (file, size) = state
        .engine
        .blobs()
        .open(&v.digest)
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(|| {
            ApiError::internal(format!(
                "the bytes of {name} {} ({}) are missing from the blob store",
                v.version, v.digest
            ))
        })?;
    let extension = match v.format.as_str() {
        "tar.gz" => ".tar.gz",
        "zip" => ".zip",
        _ => "",
    };
    let mut r = Body::from_stream(ReaderStream::new(file)).into_response();
    let headers = r.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    if let Some(hex) = v.digest.strip_prefix("sha256:") {
        if let Ok(h) = HeaderValue::from_str(hex) {
            headers.insert("x-checksum-sha256", h);
        }
    }
    if let Ok(h) = HeaderValue::from_str(&format!(
        "attachment; filename=\"{name}-{}{extension}\"",
        v.version
    )) {
        headers.insert(header::CONTENT_DISPOSITION, h);
    }
    Ok(r)
}

#[utoipa::path(get, path = "/api/v1/blobs/{digest}", tag = "artifacts",
    security(("bearer" = []), ("api_key" = []), ("agent" = [])),
    params(("digest" = String, Path, description = "sha256:<64 hex digits>")),
    responses((status = 200, description = "the bytes; agents fetch releases here (X-Agent-Token), users the blobs of their workspace", content_type = "application/octet-stream", body = Vec<u8>),
              (status = 404, body = ErrorBody)))]
pub async fn blob(
    State(state): State<AppState>,
    who: Caller,
    Params(digest): Params<String>,
) -> Result<Response, ApiError> {
    let missing = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "ARTIFACT_NOT_FOUND",
            format!("no blob {digest}"),
        )
        .with_details(json!({ "digest": digest }))
    };
    // The server's own agent serves every workspace; anyone else (a user, an agent that
    // joined a workspace) sees the bytes of their workspace's versions only.
    let everywhere = matches!(
        who.credential,
        super::gate::Credential::Agent { local: true, .. }
    );
    if fraisier_store::blobs::digest_hex(&digest).is_none()
        || (!everywhere
            && !state
                .engine
                .store()
                .blob_in_workspace(&who.workspace, &digest)
                .await?)
    {
        return Err(missing());
    }
    let (file, size) = state
        .engine
        .blobs()
        .open(&digest)
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(missing)?;
    let mut r = Body::from_stream(ReaderStream::new(file)).into_response();
    let headers = r.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    Ok(r)
}

#[utoipa::path(get, path = "/api/v1/artifacts/types", tag = "artifacts",
    responses((status = 200, body = TypeList)))]
pub async fn types(State(state): State<AppState>, who: Caller) -> Result<Json<TypeList>, ApiError> {
    let mut types = Vec::new();
    for k in ArtifactKind::ALL {
        types.push(type_view(&state, &who, k).await?);
    }
    Ok(Json(TypeList { types }))
}

async fn type_view(state: &AppState, who: &Caller, k: ArtifactKind) -> Result<TypeView, ApiError> {
    let filter = ArtifactFilter {
        kind: Some(k.as_str().to_string()),
        limit: 1,
        ..ArtifactFilter::default()
    };
    let (_, n) = state.engine.artifacts(&who.workspace, &filter).await?;
    Ok(TypeView {
        name: k.as_str(),
        description: k.description(),
        artifacts: n,
    })
}

fn kind_of(name: &str) -> Result<ArtifactKind, ApiError> {
    ArtifactKind::parse(name).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            format!("no artifact type {name:?}: the types are api, model, client, server"),
        )
    })
}

#[utoipa::path(get, path = "/api/v1/artifacts/types/{type}", tag = "artifacts",
    params(("type" = ArtifactKind, Path)),
    responses((status = 200, body = TypeView), (status = 404, body = ErrorBody)))]
pub async fn type_get(
    State(state): State<AppState>,
    who: Caller,
    Params(name): Params<String>,
) -> Result<Json<TypeView>, ApiError> {
    let k = kind_of(&name)?;
    Ok(Json(type_view(&state, &who, k).await?))
}

#[utoipa::path(get, path = "/api/v1/artifacts/types/{type}/artifacts", tag = "artifacts",
    params(("type" = ArtifactKind, Path), ("limit" = Option<u32>, Query, minimum = 1, maximum = 500), ("offset" = Option<u64>, Query)),
    responses((status = 200, body = ArtifactList), (status = 404, body = ErrorBody)))]
pub async fn type_artifacts(
    State(state): State<AppState>,
    who: Caller,
    Params(name): Params<String>,
    q: QueryMap,
) -> Result<Json<ArtifactList>, ApiError> {
    let k = kind_of(&name)?;
    let (limit, offset) = q.pagination(50)?;
    let filter = ArtifactFilter {
        kind: Some(k.as_str().to_string()),
        limit,
        offset,
        ..ArtifactFilter::default()
    };
    let (artifacts, total) = state.engine.artifacts(&who.workspace, &filter).await?;
    Ok(Json(ArtifactList {
        artifacts: artifacts.iter().map(artifact_view).collect(),
        total,
        limit,
        offset,
    }))
}

/// A version's signature by the server's key, as `fraisier artifact verify` reads it.
#[derive(Serialize, serde::Deserialize, ToSchema)]
pub struct SignatureView {
    pub workspace: String,
    pub artifact: String,
    pub version: String,
    /// `sha256:<hex>` of the bytes.
    pub digest: String,
    /// ed25519
    pub algorithm: String,
    /// The signing key's public half, base64.
    pub public_key: String,
    /// Over `statement`, base64.
    pub signature: String,
    /// What was signed: name, version and digest, one per line.
    pub statement: String,
    pub signed_at: String,
    pub signed_by: String,
}

#[derive(Serialize, ToSchema)]
pub struct SigningKeyView {
    /// ed25519
    pub algorithm: String,
    /// base64
    pub public_key: String,
}

/// The version `?version=` names (default: the newest) of an artifact of the caller's
/// workspace.
async fn requested_version(
    state: &AppState,
    who: &Caller,
    name: &str,
    q: &QueryMap,
) -> Result<ArtifactVersion, ApiError> {
    let version = version_param(q)?;
    Ok(state
        .engine
        .artifact_version(&who.workspace, name, version.as_deref())
        .await?)
}

/// `?version=`, when given, is a version name (an empty one too is refused).
fn version_param(q: &QueryMap) -> Result<Option<String>, ApiError> {
    match q.get("version") {
        None => Ok(None),
        Some(v) => match fraisier_model::names::version_problem(v) {
            None => Ok(Some(v.to_string())),
            Some(p) => Err(ApiError::invalid("version", format!("version {v:?}: {p}"))),
        },
    }
}

#[utoipa::path(post, path = "/api/v1/artifacts/{name}/sign", tag = "artifacts",
    params(("name" = String, Path), ("version" = Option<super::params::Version>, Query, description = "default: the newest")),
    responses((status = 200, body = SignatureView), (status = 404, body = ErrorBody)))]
pub async fn sign(
    State(state): State<AppState>,
    who: Caller,
    Params(name): Params<String>,
    q: QueryMap,
) -> Result<Response, ApiError> {
    let v = requested_version(&state, &who, &name, &q).await?;
    let statement =
        fraisier_model::artifact::signed_statement(&who.workspace, &name, &v.version, &v.digest);
    let b64 = base64::engine::general_purpose::STANDARD;
    let view = SignatureView {
        workspace: who.workspace.clone(),
        artifact: name.clone(),
        version: v.version.clone(),
        digest: v.digest.clone(),
        algorithm: "ed25519".into(),
        public_key: state.signing.public_key(),
        signature: base64::Engine::encode(&b64, state.signing.sign(statement.as_bytes())),
        statement,
        signed_at: views::ts(chrono::Utc::now()),
        signed_by: who.username.clone(),
    };
    let mut metadata = v.metadata.clone();
    if !metadata.is_object() {
        metadata = json!({});
    }
    metadata["signature"] = serde_json::to_value(&view).unwrap_or(Value::Null);
    state
        .engine
        .store()
        .set_version_metadata(&who.workspace, &name, &v.version, &metadata)
        .await?;
    Ok(noted(Json(view).into_response(), &name))
}

#[utoipa::path(get, path = "/api/v1/artifacts/{name}/signature", tag = "artifacts",
    params(("name" = String, Path), ("version" = Option<super::params::Version>, Query, description = "default: the newest")),
    responses((status = 200, body = SignatureView), (status = 404, body = ErrorBody, description = "no such version, or SIGNATURE_NOT_FOUND: not signed")))]
pub async fn signature(
    State(state): State<AppState>,
    who: Caller,
    Params(name): Params<String>,
    q: QueryMap,
) -> Result<Json<SignatureView>, ApiError> {
    let v = requested_version(&state, &who, &name, &q).await?;
    serde_json::from_value(v.metadata["signature"].clone())
        .map(Json)
        .map_err(|_| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "SIGNATURE_NOT_FOUND",
                format!(
                    "version {} of {name} is not signed: POST /artifacts/{name}/sign?version={}",
                    v.version, v.version
                ),
            )
        })
}

#[utoipa::path(get, path = "/api/v1/artifacts/signing-key", tag = "artifacts",
    responses((status = 200, body = SigningKeyView)))]
pub async fn signing_key(State(state): State<AppState>) -> Json<SigningKeyView> {
    Json(SigningKeyView {
        algorithm: "ed25519".into(),
        public_key: state.signing.public_key(),
    })
}

#[derive(Serialize, ToSchema)]
pub struct StorageView {
    pub artifacts: u64,
    pub versions: u64,
    /// Sum of the versions' sizes.
    pub bytes: u64,
    /// On disk (versions with the same bytes share them).
    pub stored_bytes: u64,
    /// Versions of each artifact a cleanup keeps by default.
    pub retention: u32,
}

#[derive(Serialize, ToSchema)]
pub struct UsageItem {
    pub artifact: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub versions: u64,
    pub bytes: u64,
}

#[derive(Serialize, ToSchema)]
pub struct UsageView {
    /// Largest first.
    pub usage: Vec<UsageItem>,
}

#[derive(Serialize, ToSchema)]
pub struct CostView {
    pub stored_gib: f64,
    pub rate_per_gib_month: f64,
    pub currency: String,
    pub monthly: f64,
}

/// Body of `POST /artifacts/storage/cleanup`.
#[derive(serde::Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CleanupBody {
    /// Versions of each artifact to keep, newest first (default `server.artifact_retention`).
    #[schema(minimum = 1, maximum = 100000)]
    pub keep: Option<u32>,
    /// Report what would go, delete nothing.
    #[serde(default)]
    pub dry_run: bool,
}

#[derive(Serialize, ToSchema)]
pub struct CleanupItemView {
    pub artifact: String,
    pub version: String,
    pub size: u64,
    /// Why it was kept.
    pub reason: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct CleanupView {
    pub dry_run: bool,
    pub keep: u32,
    pub deleted: Vec<CleanupItemView>,
    pub protected: Vec<CleanupItemView>,
    pub freed_bytes: u64,
}

#[utoipa::path(get, path = "/api/v1/artifacts/storage", tag = "artifacts",
    responses((status = 200, body = StorageView)))]
pub async fn storage(
    State(state): State<AppState>,
    who: Caller,
) -> Result<Json<StorageView>, ApiError> {
    let s = state.engine.storage_stats(&who.workspace).await?;
    Ok(Json(StorageView {
        artifacts: s.artifacts,
        versions: s.versions,
        bytes: s.bytes,
        stored_bytes: s.stored_bytes,
        retention: state.config().server.artifact_retention,
    }))
}

#[utoipa::path(get, path = "/api/v1/artifacts/storage/usage", tag = "artifacts",
    responses((status = 200, body = UsageView)))]
pub async fn storage_usage(
    State(state): State<AppState>,
    who: Caller,
) -> Result<Json<UsageView>, ApiError> {
    let filter = ArtifactFilter {
        limit: u32::MAX,
        ..ArtifactFilter::default()
    };
    let (list, _) = state.engine.artifacts(&who.workspace, &filter).await?;
    let mut usage: Vec<UsageItem> = list
        .iter()
        .map(|a| UsageItem {
            artifact: a.name.clone(),
            kind: a.kind.clone(),
            versions: a.versions,
            bytes: a.size,
        })
        .collect();
    usage.sort_by(|a, b| b.bytes.cmp(&a.bytes).then(a.artifact.cmp(&b.artifact)));
    Ok(Json(UsageView { usage }))
}

#[utoipa::path(get, path = "/api/v1/artifacts/storage/costs", tag = "artifacts",
    responses((status = 200, body = CostView), (status = 422, body = ErrorBody, description = "COSTS_NOT_CONFIGURED: no server.storage_cost_per_gib_month")))]
pub async fn storage_costs(
    State(state): State<AppState>,
    who: Caller,
) -> Result<Json<CostView>, ApiError> {
    let Some(rate) = state.config().server.storage_cost_per_gib_month else {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "COSTS_NOT_CONFIGURED",
            "no storage rate is configured: set server.storage_cost_per_gib_month in fraisier.yaml",
        ));
    };
    let s = state.engine.storage_stats(&who.workspace).await?;
    let gib = s.stored_bytes as f64 / (1u64 << 30) as f64;
    Ok(Json(CostView {
        stored_gib: (gib * 1e6).round() / 1e6,
        rate_per_gib_month: rate,
        currency: state.config().server.storage_currency.clone(),
        monthly: (gib * rate * 100.0).round() / 100.0,
    }))
}

#[utoipa::path(post, path = "/api/v1/artifacts/storage/cleanup", tag = "artifacts",
    request_body = Option<CleanupBody>,
    responses((status = 200, body = CleanupView), (status = 400, body = ErrorBody)))]
pub async fn storage_cleanup(
    State(state): State<AppState>,
    who: Caller,
    OptionalBody(body): OptionalBody<CleanupBody>,
) -> Result<Response, ApiError> {
    let keep = body
        .keep
        .unwrap_or(state.config().server.artifact_retention);
    if !(1..=100_000).contains(&keep) {
        return Err(ApiError::invalid("keep", "keep is 1 to 100000 versions"));
    }
    let r = state
        .engine
        .cleanup_artifacts(&who.workspace, keep, body.dry_run)
        .await?;
    let item = |i: &fraisier_engine::CleanupItem| CleanupItemView {
        artifact: i.artifact.clone(),
        version: i.version.clone(),
        size: i.size,
        reason: i.reason.clone(),
    };
    let view = CleanupView {
        dry_run: r.dry_run,
        keep: r.keep,
        deleted: r.deleted.iter().map(item).collect(),
        protected: r.protected.iter().map(item).collect(),
        freed_bytes: r.freed_bytes,
    };
    Ok(noted(Json(view).into_response(), "storage"))
}

#[utoipa::path(post, path = "/api/v1/artifacts/{name}/scan", tag = "artifacts",
    params(("name" = String, Path), ("version" = Option<super::params::Version>, Query, description = "default: the newest")),
    responses((status = 200, description = "the findings: {artifact, version, digest, scanned_at, total, by_severity, vulnerabilities}", body = Object),
              (status = 404, body = ErrorBody), (status = 422, body = ErrorBody, description = "SCANNER_NOT_CONFIGURED"),
              (status = 502, body = ErrorBody, description = "SCAN_FAILED: the scanner did not run or printed no JSON")))]
pub async fn scan(
    State(state): State<AppState>,
    who: Caller,
    Params(name): Params<String>,
    q: QueryMap,
) -> Result<Response, ApiError> {
    let version = version_param(&q)?;
    let record = state
        .engine
        .scan_artifact(&who.workspace, &name, version.as_deref(), &who.username)
        .await?;
    Ok(noted(Json(record).into_response(), &name))
}

#[utoipa::path(get, path = "/api/v1/artifacts/{name}/vulnerabilities", tag = "artifacts",
    params(("name" = String, Path), ("version" = Option<super::params::Version>, Query, description = "default: the newest")),
    responses((status = 200, description = "the last scan's findings", body = Object),
              (status = 404, body = ErrorBody, description = "no such version, or NOT_SCANNED")))]
pub async fn vulnerabilities(
    State(state): State<AppState>,
    who: Caller,
    Params(name): Params<String>,
    q: QueryMap,
) -> Result<Json<Value>, ApiError> {
    let v = requested_version(&state, &who, &name, &q).await?;
    match v.metadata.get("scan") {
        Some(scan) if scan.is_object() => Ok(Json(scan.clone())),
        _ => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "NOT_SCANNED",
            format!(
                "version {} of {name} was not scanned: POST /artifacts/{name}/scan?version={}",
                v.version, v.version
            ),
        )),
    }
}
