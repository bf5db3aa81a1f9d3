//! Request parsing that fails precisely: JSON bodies (size, UTF-8, syntax, camelCase keys,
//! field paths in errors) and query strings (each value checked, the key named).

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use fraisier_store::blobs::BlobRef;

use super::error::ApiError;

pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// A JSON body the route requires (`required` in the document): an object. A missing body
/// (nothing, or `null`) is refused — by the first field it lacks, or where every field is
/// optional, as a missing body.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        parse_json(&read_body(req, state).await?).map(JsonBody)
    }
}

/// A body the route may go without (an `Option<…>` body in the document, which allows
/// `null`): nothing, `null` and `{}` all read as `{}` — the seed's `curl -X POST` without `-d`.
pub struct OptionalBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for OptionalBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        parse_optional_json(&read_body(req, state).await?).map(OptionalBody)
    }
}

/// A required JSON object whose keys belong to the user (variable names): taken as sent,
/// with no camelCase folding.
pub struct UserMap(pub Map<String, Value>);

impl<S: Send + Sync> FromRequest<S> for UserMap {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        parse_object(&read_body(req, state).await?)?
            .map(UserMap)
            .ok_or_else(body_missing)
    }
}

async fn read_body<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, ApiError> {
    Bytes::from_request(req, state).await.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "INVALID_PARAMETERS",
                format!("request body is larger than {MAX_BODY_BYTES} bytes"),
            )
            .with_details(serde_json::json!({ "field": "body", "max_bytes": MAX_BODY_BYTES }))
        } else {
            ApiError::invalid("body", format!("cannot read the request body: {e}"))
        }
    })
}

/// A required body, typed.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    match parse_object(bytes)? {
        Some(map) => typed(Value::Object(map)),
        // `{}` names the first field a missing body lacks; when it lacks none, the body itself.
        None => typed::<T>(Value::Object(Map::new())).and(Err(body_missing())),
    }
}

/// A body the route may go without, typed: nothing and `null` read as `{}`.
pub fn parse_optional_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    typed(Value::Object(parse_object(bytes)?.unwrap_or_default()))
}

fn typed<T: DeserializeOwned>(mut value: Value) -> Result<T, ApiError> {
    normalize_keys(&mut value);
    integral_numbers(&mut value);
    deserialize(value).map_err(|(field, message)| ApiError::invalid(field, message))
}

fn body_missing() -> ApiError {
    ApiError::invalid("body", "this route needs a request body: a JSON object")
}

/// For validation, which reports every problem at once: each field that does not parse is
/// reported and left out, and the rest parsed again. `None` when the body itself is unusable
/// or a required field is at fault.
pub fn parse_json_lenient<T: DeserializeOwned>(bytes: &[u8]) -> (Option<T>, Vec<(String, String)>) {
    let (missing, mut value) = match parse_object(bytes) {
        Ok(map) => (map.is_none(), Value::Object(map.unwrap_or_default())),
        Err(e) => return (None, vec![(field_of(&e), e.message)]),
    };
    normalize_keys(&mut value);
    integral_numbers(&mut value);
    let mut problems = Vec::new();
    loop {
        match deserialize(value.clone()) {
            Ok(_) if missing => {
                let e = body_missing();
                return (None, vec![(field_of(&e), e.message)]);
            }
            Ok(t) => return (Some(t), problems),
            Err((field, message)) => {
                // `strategy_config.steps[0]` → the top-level key `strategy_config`.
                let key = field
                    .split(['.', '['])
                    .next()
                    .unwrap_or_default()
                    .to_string();
                let removed = value.as_object_mut().and_then(|m| m.remove(&key)).is_some();
                problems.push((field, message));
                if !removed {
                    return (None, problems);
                }
            }
        }
    }
}

fn field_of(e: &ApiError) -> String {
    e.details
        .get("field")
        .and_then(Value::as_str)
        .unwrap_or("body")
        .to_string()
}

/// Typed, with the field at fault (`strategy_config.steps[0].weight`) and a message.
fn deserialize<T: DeserializeOwned>(value: Value) -> Result<T, (String, String)> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        let field = if path == "." {
            unknown_field_name(&inner).unwrap_or_else(|| "body".into())
        } else {
            path
        };
        let message = format!("{field}: {inner}");
        (field, message)
    })
}

/// The body as a JSON object; `None` when there is none (nothing, or `null`).
fn parse_object(bytes: &[u8]) -> Result<Option<Map<String, Value>>, ApiError> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        ApiError::invalid(
            "body",
            format!(
                "request body is not valid UTF-8 (at byte {})",
                e.valid_up_to()
            ),
        )
    })?;
    // Only JSON's own whitespace makes an empty body (not a form feed, which Rust's trim takes).
    if text
        .bytes()
        .all(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
    {
        return Ok(None);
    }
    let value: Value = serde_json::from_str(text)
        .map_err(|e| ApiError::invalid("body", format!("malformed JSON: {e}")))?;
    match value {
        Value::Null => Ok(None),
        Value::Object(map) => Ok(Some(map)),
        _ => Err(ApiError::invalid(
            "body",
            "the request body must be a JSON object",
        )),
    }
}

fn unknown_field_name(message: &str) -> Option<String> {
    let rest = message
        .strip_prefix("unknown field `")
        .or_else(|| message.strip_prefix("missing field `"))?;
    Some(rest.split('`').next()?.to_string())
}

/// Free-form maps whose keys belong to the user: taken as sent.
const USER_MAPS: &[&str] = &["metadata", "env", "configuration", "labels", "connection"];

/// camelCase keys become snake_case (DESIGN §4), except inside free-form maps whose keys
/// belong to the user.
pub fn normalize_keys(v: &mut Value) {
    if let Value::Object(map) = v {
        let old = std::mem::take(map);
        for (k, mut val) in old {
            let key = to_snake(&k);
            if !USER_MAPS.contains(&key.as_str()) {
                normalize_keys(&mut val);
            }
            map.insert(key, val);
        }
    } else if let Value::Array(items) = v {
        items.iter_mut().for_each(normalize_keys);
    }
}

/// `5.0` is the integer 5 (JSON does not tell them apart; JSON Schema's `integer` accepts
/// both), except inside maps whose values belong to the user.
fn integral_numbers(v: &mut Value) {
    match v {
        Value::Number(n) => {
            if let Some(f) = n.as_f64().filter(|_| !n.is_i64() && !n.is_u64()) {
                if f.fract() == 0.0 && f.abs() < 9.007_199_254_740_992e15 {
                    *v = Value::from(f as i64);
                }
            }
        }
        Value::Object(map) => {
            for (k, val) in map.iter_mut() {
                if !USER_MAPS.contains(&k.as_str()) {
                    integral_numbers(val);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(integral_numbers),
        _ => {}
    }
}

fn to_snake(s: &str) -> String {
    if !s.bytes().any(|b| b.is_ascii_uppercase()) {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len() + 4);
    for (i, c) in s.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// A free text field of at most `max` characters (a display name, a description).
pub fn check_text(field: &str, v: &Option<String>, max: usize) -> Result<(), ApiError> {
    match v {
        Some(t) if t.chars().count() > max => Err(ApiError::invalid(
            field,
            format!("{field}: at most {max} characters"),
        )),
        _ => Ok(()),
    }
}

/// The query string as key/value pairs, with typed accessors that name the key at fault.
pub struct QueryMap(pub Vec<(String, String)>);

impl<S: Send + Sync> FromRequestParts<S> for QueryMap {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let q = parts.uri.query().unwrap_or("");
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(q)
            .map_err(|e| ApiError::invalid("query", format!("malformed query string: {e}")))?;
        let pairs = pairs.into_iter().map(|(k, v)| (to_snake(&k), v)).collect();
        Ok(QueryMap(pairs))
    }
}

impl QueryMap {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// A non-empty string value.
    pub fn text(&self, key: &str) -> Option<String> {
        self.get(key).filter(|v| !v.is_empty()).map(str::to_string)
    }

    pub fn int(&self, key: &str, default: u64, min: u64, max: u64) -> Result<u64, ApiError> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => match v.parse::<i64>() {
                Ok(n) if n >= min as i64 && n <= max as i64 => Ok(n as u64),
                _ => Err(ApiError::invalid(
                    key,
                    format!("{key} must be an integer from {min} to {max}, got {v:?}"),
                )),
            },
        }
    }

    pub fn bool(&self, key: &str) -> Result<bool, ApiError> {
        match self.get(key) {
            None => Ok(false),
            Some("true" | "1" | "yes") => Ok(true),
            Some("false" | "0" | "no") => Ok(false),
            Some(v) => Err(ApiError::invalid(
                key,
                format!("{key} must be true or false, got {v:?}"),
            )),
        }
    }

    pub fn time(&self, key: &str) -> Result<Option<DateTime<Utc>>, ApiError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => DateTime::parse_from_rfc3339(v)
                .map(|t| Some(t.with_timezone(&Utc)))
                .map_err(|_| ApiError::invalid(key, format!("{key} must be an RFC 3339 timestamp such as 2024-01-22T10:00:00Z, got {v:?}"))),
        }
    }

    /// One of the wire spellings of an enum.
    pub fn one_of<T: DeserializeOwned>(
        &self,
        key: &str,
        allowed: &str,
    ) -> Result<Option<T>, ApiError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => fraisier_model::run::from_wire(v).map(Some).ok_or_else(|| {
                ApiError::invalid(key, format!("{key} must be one of {allowed}, got {v:?}"))
            }),
        }
    }

    /// `limit`/`offset`, or `page`/`page_size` (1-based pages), as DESIGN §4 allows.
    pub fn pagination(&self, default_limit: u64) -> Result<(u32, u64), ApiError> {
        let limit = match self.get("page_size") {
            Some(_) if self.get("limit").is_none() => {
                self.int("page_size", default_limit, 1, 500)?
            }
            _ => self.int("limit", default_limit, 1, 500)?,
        };
        let offset = if self.get("offset").is_none() && self.get("page").is_some() {
            let page = self.int("page", 1, 1, 1_000_000)?;
            (page - 1) * limit
        } else {
            self.int("offset", 0, 0, i64::MAX as u64)?
        };
        Ok((limit as u32, offset))
    }
}

/// An upload's bytes: the raw body, or the `file` part of a `multipart/form-data` form whose
/// other parts read like query parameters. Streamed either way.
pub struct Upload {
    raw: Option<axum::body::Body>,
    form: Option<multer::Multipart<'static>>,
}

/// Bytes a form field other than the file may hold, and all of them together.
const MAX_FORM_FIELD: usize = 8 * 1024;
const MAX_FORM_FIELDS_BYTES: usize = 64 * 1024;

impl Upload {
    pub fn of(req: Request) -> Result<Upload, ApiError> {
        let content_type = req
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        if !content_type
            .to_ascii_lowercase()
            .starts_with("multipart/form-data")
        {
            return Ok(Upload {
                raw: Some(req.into_body()),
                form: None,
            });
        }
        let boundary = multer::parse_boundary(&content_type).map_err(|e| {
            ApiError::invalid(
                "content-type",
                format!("a multipart upload needs its boundary: {e}"),
            )
        })?;
        let stream = req.into_body().into_data_stream();
        Ok(Upload {
            raw: None,
            form: Some(multer::Multipart::new(stream, boundary)),
        })
    }

    /// A form names what it carries only as it is read; a raw body is named by the query.
    pub fn is_form(&self) -> bool {
        self.form.is_some()
    }

    /// Reads the whole upload: the bytes (the raw body, or the form's `file` part) streamed
    /// into the blob store, and the form's other parts — only those in `fields`, in any order
    /// — added to `q`. A field also in the query is refused: one place says it. On an error
    /// nothing is kept.
    pub async fn store(
        self,
        q: &mut QueryMap,
        fields: &[&str],
        engine: &fraisier_engine::Engine,
        limit: u64,
    ) -> Result<BlobRef, ApiError> {
        use futures_util::TryStreamExt;
        if let Some(body) = self.raw {
            let stream = body.into_data_stream().map_err(std::io::Error::other);
            let reader = tokio_util::io::StreamReader::new(stream);
            return Ok(engine.put_upload(reader, limit).await?);
        }
        let mut form = self
            .form
            .ok_or_else(|| ApiError::internal("an upload without a body"))?;
        let mut blob = None;
        let read = read_form(&mut form, q, fields, engine, limit, &mut blob).await;
        match (read, blob) {
            (Ok(()), Some(blob)) => Ok(blob),
            (Ok(()), None) => Err(ApiError::invalid(
                "file",
                "the form has no part named file: send the bytes in it",
            )),
            (Err(e), Some(blob)) => {
                engine.discard_upload(&blob).await;
                Err(e)
            }
            (Err(e), None) => Err(e),
        }
    }
}

async fn read_form(
    form: &mut multer::Multipart<'static>,
    q: &mut QueryMap,
    fields: &[&str],
    engine: &fraisier_engine::Engine,
    limit: u64,
    blob: &mut Option<BlobRef>,
) -> Result<(), ApiError> {
    use futures_util::TryStreamExt;
    let bad = |e: multer::Error| ApiError::invalid("body", format!("the multipart form: {e}"));
    let mut fields_bytes = 0usize;
    while let Some(mut field) = form.next_field().await.map_err(bad)? {
        let name = field.name().unwrap_or_default().to_string();
        if name == "file" {
            if blob.is_some() {
                return Err(ApiError::invalid(
                    "file",
                    "the form has two parts named file",
                ));
            }
            let stream = field.map_err(std::io::Error::other);
            let reader = tokio_util::io::StreamReader::new(stream);
            *blob = Some(engine.put_upload(reader, limit).await?);
            continue;
        }
        if !fields.contains(&name.as_str()) {
            return Err(ApiError::invalid(
                name.clone(),
                format!(
                    "the form has an unknown part {name:?}: it takes {} and file",
                    fields.join(", ")
                ),
            ));
        }
        if name != "tag" && q.get(&name).is_some() {
            return Err(ApiError::invalid(
                name.clone(),
                format!("{name} is given twice (in the query or the form)"),
            ));
        }
        let mut value = Vec::new();
        while let Some(chunk) = field.chunk().await.map_err(bad)? {
            value.extend_from_slice(&chunk);
            fields_bytes += chunk.len();
            if value.len() > MAX_FORM_FIELD {
                return Err(ApiError::invalid(
                    name,
                    format!("a form field holds at most {MAX_FORM_FIELD} bytes"),
                ));
            }
            if fields_bytes > MAX_FORM_FIELDS_BYTES {
                return Err(ApiError::invalid(
                    "body",
                    format!("the form's fields hold at most {MAX_FORM_FIELDS_BYTES} bytes in all"),
                ));
            }
        }
        let value = String::from_utf8(value)
            .map_err(|_| ApiError::invalid(name.clone(), "must be UTF-8 text"))?;
        q.0.push((name, value));
    }
    Ok(())
}

/// A field that is there, even as `null` (`Some(None)`), apart from one that is absent
/// (`None`): for `PUT` bodies where `null` removes a value.
pub fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    <Option<String> as serde::Deserialize>::deserialize(d).map(Some)
}

/// A field that must be there, though it may be `null`: serde would take an absent
/// `Option` for `null`, so a body of `{}` would pass for a deliberate `null`.
pub fn nullable<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    <Option<T> as serde::Deserialize>::deserialize(d)
}

/// A nested object, or `null`: serde would also fill a struct from an array, by position.
pub fn object_or_null<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::de::DeserializeOwned,
{
    use serde::de::Error;
    match <Value as serde::Deserialize>::deserialize(d)? {
        Value::Null => Ok(None),
        v @ Value::Object(_) => serde_json::from_value(v)
            .map(Some)
            .map_err(D::Error::custom),
        _ => Err(D::Error::custom("an object is expected")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    struct Body {
        #[serde(default)]
        skip_health_check: bool,
        #[serde(default)]
        metadata: Value,
    }

    #[test]
    fn camel_case_keys_are_accepted_but_metadata_is_untouched() {
        let b: Body =
            parse_json(br#"{"skipHealthCheck": true, "metadata": {"ticketId": 1}}"#).unwrap();
        assert!(b.skip_health_check);
        assert!(b.metadata.get("ticketId").is_some());
    }

    #[test]
    fn errors_name_the_field() {
        let e = parse_json::<Body>(br#"{"skip_health_check": "yes"}"#).unwrap_err();
        assert_eq!(e.details["field"], "skip_health_check");
        let e = parse_json::<Body>(br#"{"bogus": 1}"#).unwrap_err();
        assert_eq!(e.details["field"], "bogus");
        let e = parse_json::<Body>(b"{not json").unwrap_err();
        assert_eq!(e.code, "INVALID_PARAMETERS");
        let e = parse_json::<Body>(b"{\"a\": \"\xff\"}").unwrap_err();
        assert!(e.message.contains("UTF-8"));
        assert!(parse_optional_json::<Body>(b"").is_ok());
        #[derive(serde::Deserialize)]
        struct Timeout {
            timeout: u64,
        }
        assert_eq!(
            parse_json::<Timeout>(br#"{"timeout": 60.0}"#)
                .unwrap()
                .timeout,
            60
        );
        assert!(parse_json::<Timeout>(br#"{"timeout": 60.5}"#).is_err());
        assert!(parse_json::<Body>(b"[1]").is_err());
    }

    #[test]
    fn a_required_body_is_an_object_and_an_optional_one_may_be_nothing() {
        // Every field of `Body` is optional, so `{}` is a whole body either way. Where the
        // document requires a body, nothing and `null` are refused (the fuzzer's ST201: a `PUT`
        // of `null` was taken for "change nothing"); where it allows `null`, both read as `{}`.
        for missing in [&b""[..], b" \r\n", b"null", b" null "] {
            let shown = String::from_utf8_lossy(missing);
            let e = parse_json::<Body>(missing).unwrap_err();
            assert_eq!(e.details["field"], "body", "{shown:?}");
            assert!(e.message.contains("needs a request body"), "{}", e.message);
            assert!(parse_optional_json::<Body>(missing).is_ok(), "{shown:?}");
        }
        assert!(parse_json::<Body>(b"{}").is_ok());
        assert!(parse_optional_json::<Body>(b"{}").is_ok());
        for bad in [&b"\"x\""[..], b"1", b"true", b"[]"] {
            for e in [
                parse_json::<Body>(bad).unwrap_err(),
                parse_optional_json::<Body>(bad).unwrap_err(),
            ] {
                assert_eq!(e.details["field"], "body");
                assert!(e.message.contains("JSON object"), "{}", e.message);
            }
        }
        // A missing body where a field is required names that field, not the body.
        #[derive(serde::Deserialize, Debug)]
        struct Named {
            #[allow(dead_code)]
            name: String,
        }
        assert_eq!(
            parse_json::<Named>(b"").unwrap_err().details["field"],
            "name"
        );
        assert_eq!(
            parse_json::<Named>(b"null").unwrap_err().details["field"],
            "name"
        );
        let (parsed, problems) = parse_json_lenient::<Body>(b"");
        assert!(parsed.is_none());
        assert_eq!(problems[0].0, "body");
    }
}
