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

/// A workspace secret's name: a variable's name.
#[derive(ToSchema)]
#[schema(value_type = String, pattern = r"^(?!FRAISIER_)(?!PORT$)[A-Za-z_][A-Za-z0-9_]{0,127}$")]
#[allow(dead_code)]
pub struct SecretName(String);

/// A tag of an artifact: 1 to 100 characters, none of them a control character.
#[derive(ToSchema)]
#[schema(value_type = String, pattern = r"^[^\u0000-\u001f\u007f-\u009f]{1,100}$")]
#[allow(dead_code)]
pub struct Tag(String);

/// A name of a fraise, environment, workspace or project: a letter, then letters, digits,
/// `_` and `-`; not `dep_…`, not a word the API uses (names::RESERVED, which a test keeps in
/// step with this pattern).
#[derive(ToSchema)]
#[schema(
    value_type = String,
    pattern = r"^(?!dep_)(?!(rollback|validate|health|logs|events|start|stop|restart|scale|promote|versions|config|secrets|env|history|audit|timeline|progress|direct|helm|github|sources|status|approve|reject)$)[A-Za-z][A-Za-z0-9_-]{0,62}$"
)]
#[allow(dead_code)]
pub struct Name(String);

/// The body of `PUT …/secrets` and `PUT …/env`: variable names (as
/// `secret::variable_name_problem` allows them) to a value, or `null` to remove one.
#[allow(dead_code)]
pub struct VariablesBody;

impl utoipa::PartialSchema for VariablesBody {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        let schema = serde_json::json!({
            "type": "object",
            "description": "NAME → value (merged with the variables already set), or NAME → null to remove it",
            "maxProperties": super::variables::MAX_NAMES,
            "propertyNames": { "type": "string", "pattern": VARIABLE_NAME_PATTERN },
            "additionalProperties": {
                "type": ["string", "null"],
                "maxLength": super::variables::MAX_VALUE_CHARS,
                "pattern": "^[^\\u0000]*$"
            }
        });
        utoipa::openapi::RefOr::T(serde_json::from_value(schema).expect("a valid schema"))
    }
}

impl ToSchema for VariablesBody {}

/// What `secret::variable_name_problem` accepts.
pub const VARIABLE_NAME_PATTERN: &str = r"^(?!FRAISIER_)(?!PORT$)[A-Za-z_][A-Za-z0-9_]{0,127}$";

#[cfg(test)]
mod tests {
    #[test]
    fn the_name_pattern_lists_every_reserved_word() {
        let doc = super::super::openapi::document_json();
        let pattern = doc["components"]["schemas"]["Name"]["pattern"]
            .as_str()
            .expect("Name has a pattern");
        let words = pattern
            .split("(?!(")
            .nth(1)
            .and_then(|s| s.split(")$)").next())
            .unwrap();
        let mut listed: Vec<&str> = words.split('|').collect();
        let mut reserved = fraisier_model::names::RESERVED.to_vec();
        listed.sort();
        reserved.sort();
        assert_eq!(listed, reserved);
    }
}
