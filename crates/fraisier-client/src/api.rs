//! The REST API's client: JSON in and out, errors carrying the API's code and message.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum ApiClientError {
    #[error("cannot reach the Fraisier server at {url}: {source}")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// The server answered with an error body.
    #[error("{code}: {message}")]
    Api {
        status: u16,
        code: String,
        message: String,
        details: Value,
    },
    #[error("unexpected answer from the server ({status}): {body}")]
    Decode { status: u16, body: String },
}

#[derive(Clone)]
pub struct ApiClient {
    base: String,
    token: Option<String>,
    /// Sent as `X-API-Key` instead of a bearer token.
    api_key: Option<String>,
    http: reqwest::Client,
}

// === impl ApiClient ===

impl ApiClient {
    /// `server` is the server's root (`http://127.0.0.1:8000`) or its API base (`…/api/v1`).
    pub fn new(server: &str, token: Option<String>) -> ApiClient {
        let server = server.trim_end_matches('/');
        let base = if server.ends_with("/api/v1") {
            server.to_string()
        } else {
            format!("{server}/api/v1")
        };
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .expect("a plain reqwest client builds");
        ApiClient {
            base,
            token,
            api_key: None,
            http,
        }
    }

    /// A client that authenticates with an API key.
    pub fn with_api_key(server: &str, key: String) -> ApiClient {
        ApiClient {
            api_key: Some(key),
            ..ApiClient::new(server, None)
        }
    }

    fn authorize(&self, mut req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(k) = &self.api_key {
            req = req.header("x-api-key", k);
        }
        req
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    pub fn api_key(&self) -> Option<&str> {
        self.api_key.as_deref()
    }

    /// Sends a request; `Ok((status, body))` for 2xx, the API's error otherwise.
    pub async fn send<B: Serialize>(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&B>,
    ) -> Result<(StatusCode, Value), ApiClientError> {
        let url = format!("{}{}", self.base, path);
        let mut req = self.authorize(self.http.request(method, &url).query(query));
        if let Some(b) = body {
            req = req.json(b);
        }
        self.answer(req, url).await
    }

    /// POSTs raw bytes (an artifact: a file, streamed) with a content type.
    pub async fn post_body(
        &self,
        path: &str,
        query: &[(&str, String)],
        body: reqwest::Body,
        content_type: &str,
    ) -> Result<(StatusCode, Value), ApiClientError> {
        let url = format!("{}{}", self.base, path);
        let req = self
            .authorize(self.http.post(&url).query(query))
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(body);
        self.answer(req, url).await
    }

    async fn answer(
        &self,
        req: reqwest::RequestBuilder,
        url: String,
    ) -> Result<(StatusCode, Value), ApiClientError> {
        let resp = req
            .send()
            .await
            .map_err(|source| ApiClientError::Unreachable {
                url: url.clone(),
                source,
            })?;
        let status = resp.status();
        let text = resp
            .text()
            .await
            .map_err(|source| ApiClientError::Unreachable { url, source })?;
        let value: Value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).map_err(|_| ApiClientError::Decode {
                status: status.as_u16(),
                body: text.chars().take(500).collect(),
            })?
        };
        if status.is_success() {
            return Ok((status, value));
        }
        let err = &value["error"];
        Err(ApiClientError::Api {
            status: status.as_u16(),
            code: err["code"].as_str().unwrap_or("UNKNOWN").to_string(),
            message: err["message"].as_str().unwrap_or("").to_string(),
            details: err["details"].clone(),
        })
    }

    pub async fn get(&self, path: &str, query: &[(&str, String)]) -> Result<Value, ApiClientError> {
        self.send::<Value>(Method::GET, path, query, None)
            .await
            .map(|(_, v)| v)
    }

    pub async fn post<B: Serialize>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<(StatusCode, Value), ApiClientError> {
        self.send(Method::POST, path, &[], Some(body)).await
    }

    pub async fn put<B: Serialize>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<(StatusCode, Value), ApiClientError> {
        self.send(Method::PUT, path, &[], Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> Result<(StatusCode, Value), ApiClientError> {
        self.send::<Value>(Method::DELETE, path, &[], None).await
    }

    /// Raw GET for non-JSON answers (Prometheus metrics, SSE streams).
    pub async fn get_raw(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<reqwest::Response, ApiClientError> {
        let url = format!("{}{}", self.base, path);
        self.authorize(self.http.get(&url).query(query))
            .send()
            .await
            .map_err(|source| ApiClientError::Unreachable { url, source })
    }
}
