//! Artifacts fetched from the server by digest: the agent asks the server it is linked to
//! (`PUT /v1/server` tells it where, and with what credential; the link is kept in the state
//! dir, 0600, for when the agent restarts alone), streams the bytes to a file while hashing
//! them, and keeps the file only if the hash is the digest it asked for.

use std::path::{Path, PathBuf};
use std::sync::{PoisonError, RwLock};

use fraisier_model::service::ServerLink;
use futures_util::StreamExt;
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt;

use crate::state_dir::{read_json, write_json_atomic, PRIVATE_FILE_MODE};

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("this agent is not linked to a server, so it cannot fetch artifact {0}")]
    NoServer(String),
    #[error("cannot fetch artifact {digest} from {url}: {reason}")]
    Failed {
        digest: String,
        url: String,
        reason: String,
    },
    #[error("artifact {expected} arrived as {got}: refused")]
    DigestMismatch { expected: String, got: String },
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub struct Fetcher {
    record: PathBuf,
    link: RwLock<Option<ServerLink>>,
    /// HTTPS (rustls) when the server's URL is: an agent on another host fetches over it.
    client: reqwest::Client,
}

// === impl Fetcher ===

impl Fetcher {
    /// The link kept at `record`, if any.
    pub fn load(record: PathBuf) -> Fetcher {
        let link = read_json::<ServerLink>(&record).ok().flatten();
        Fetcher {
            record,
            link: RwLock::new(link),
            client: crate::membership::http_client(),
        }
    }

    /// Links the agent to a server, and remembers it.
    pub fn link(&self, link: ServerLink) -> std::io::Result<()> {
        write_json_atomic(&self.record, &link, PRIVATE_FILE_MODE)?;
        *self.link.write().unwrap_or_else(PoisonError::into_inner) = Some(link);
        Ok(())
    }

    /// The link as it is now.
    pub fn current(&self) -> Option<ServerLink> {
        self.link
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn linked_to(&self) -> Option<String> {
        self.link
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|l| l.url.clone())
    }

    /// Streams the blob `digest` into `dest` (created), checking its hash on the way.
    pub async fn fetch(&self, digest: &str, dest: &Path) -> Result<(), FetchError> {
        let link = self
            .link
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or_else(|| FetchError::NoServer(digest.to_string()))?;
        let url = format!("{}/blobs/{digest}", link.url.trim_end_matches('/'));
        let failed = |reason: String| FetchError::Failed {
            digest: digest.to_string(),
            url: url.clone(),
            reason,
        };
        let resp = self
            .client
            .get(&url)
            .header("x-agent-token", &link.token)
            .send()
            .await
            .map_err(|e| failed(e.to_string()))?;
        let status = resp.status();
        if !status.is_success() {
            let text: String = resp
                .text()
                .await
                .map(|t| t.chars().take(300).collect())
                .unwrap_or_default();
            return Err(failed(format!("the server answered {status}: {text}")));
        }
        let mut body = resp.bytes_stream();
        let io = |action| {
            move |source| FetchError::Io {
                action,
                path: dest.to_path_buf(),
                source,
            }
        };
        let mut file = tokio::fs::File::create(dest).await.map_err(io("create"))?;
        let mut hasher = Sha256::new();
        while let Some(chunk) = body.next().await {
            let data = chunk.map_err(|e| failed(format!("the download broke off: {e}")))?;
            hasher.update(&data);
            file.write_all(&data).await.map_err(io("write"))?;
        }
        file.sync_all().await.map_err(io("sync"))?;
        let got = format!("sha256:{}", hex::encode(hasher.finalize()));
        if got != digest {
            let _ = tokio::fs::remove_file(dest).await;
            return Err(FetchError::DigestMismatch {
                expected: digest.to_string(),
                got,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{HeaderMap, StatusCode};
    use axum::routing::get;

    #[tokio::test]
    async fn only_bytes_of_the_asked_digest_are_kept() {
        let app = axum::Router::new().route(
            "/api/v1/blobs/{digest}",
            get(|headers: HeaderMap| async move {
                if headers.get("x-agent-token").and_then(|v| v.to_str().ok()) != Some("t0k") {
                    return (StatusCode::UNAUTHORIZED, "invalid agent token".to_string());
                }
                (StatusCode::OK, "release bytes".to_string())
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let dir = tempfile::tempdir().unwrap();
        let fetcher = Fetcher::load(dir.path().join("server.json"));
        let dest = dir.path().join("artifact");
        let good = format!("sha256:{}", hex::encode(Sha256::digest(b"release bytes")));
        assert!(matches!(
            fetcher.fetch(&good, &dest).await,
            Err(FetchError::NoServer(_))
        ));
        let link = |token: &str| ServerLink {
            url: format!("http://{addr}/api/v1"),
            token: token.into(),
            agent_id: None,
        };
        fetcher.link(link("wrong")).unwrap();
        let err = fetcher.fetch(&good, &dest).await.unwrap_err();
        assert!(err.to_string().contains("401"), "{err}");
        fetcher.link(link("t0k")).unwrap();
        fetcher.fetch(&good, &dest).await.unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"release bytes");
        let other = format!("sha256:{}", "0".repeat(64));
        assert!(matches!(
            fetcher.fetch(&other, &dest).await,
            Err(FetchError::DigestMismatch { .. })
        ));
        assert!(!dest.exists(), "bytes of another digest are not kept");
        // The link survives a restart of the agent, and is private.
        let again = Fetcher::load(dir.path().join("server.json"));
        assert_eq!(again.linked_to(), Some(format!("http://{addr}/api/v1")));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("server.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
