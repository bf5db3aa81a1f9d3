//! Shapes of query values and request fields for the OpenAPI document only, where the Rust
//! type the handler parses with says less than the wire accepts (a sort key with its sign,
//! both spellings of blue-green, a version's characters).

use utoipa::ToSchema;

/// `sort` of run listings: a field, `-` in front for descending.
#[derive(ToSchema)]
#[allow(dead_code)]
pub enum RunSortKey {
    #[schema(rename = "created_at")]
    CreatedAt,
    #[schema(rename = "-created_at")]
    CreatedAtDesc,
    #[schema(rename = "updated_at")]
    UpdatedAt,
    #[schema(rename = "-updated_at")]
    UpdatedAtDesc,
    #[schema(rename = "status")]
    Status,
    #[schema(rename = "-status")]
    StatusDesc,
}

/// How an audited request ended.
#[derive(ToSchema)]
#[allow(dead_code)]
#[schema(rename_all = "snake_case")]
pub enum AuditOutcomeName {
    Success,
    Failure,
    Unauthenticated,
    Denied,
    RateLimited,
}

/// A strategy, in either spelling of blue-green.
#[derive(ToSchema)]
#[allow(dead_code)]
pub enum StrategyName {
    #[schema(rename = "rolling")]
    Rolling,
    #[schema(rename = "blue_green")]
    BlueGreen,
    #[schema(rename = "blue-green")]
    BlueGreenDash,
    #[schema(rename = "canary")]
    Canary,
    #[schema(rename = "recreate")]
    Recreate,
}

/// A version as releases are named: letters, digits, `.`, `_`, `-`, `+`; not `.` or `..`.
#[derive(ToSchema)]
#[schema(value_type = String, pattern = r"^(?!\.{1,2}$)[A-Za-z0-9._+-]{1,128}$")]
#[allow(dead_code)]
pub struct Version(String);

/// A fraise, optionally `@environment`.
#[derive(ToSchema)]
#[schema(
    value_type = String,
    pattern = r"^[A-Za-z][A-Za-z0-9_-]{0,62}(@[A-Za-z][A-Za-z0-9_-]{0,62})?$"
)]
#[allow(dead_code)]
pub struct ServiceName(String);

/// One Server-Sent Event of a `follow=true` stream: `log` or `event` frames (JSON in `data`),
/// `lagged` when the follower fell behind, and a last `end` (`{"status": …}`).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct SseFrame {
    /// log | event | lagged | end
    event: Option<String>,
    id: Option<String>,
    data: String,
}
