//! Content-addressed files: an artifact's bytes, stored once under their sha256 in the data
//! dir (`blobs/sha256/ab/abcdef…`), streamed in and out so that no artifact is ever held in
//! memory whole. A blob is written to a temporary file while it is hashed, flushed to disk,
//! then renamed into place: a crash leaves either the whole blob or none of it.

use std::io;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

/// Bytes read from a stream at a time.
const CHUNK: usize = 64 * 1024;

#[derive(Clone, Debug)]
pub struct BlobStore {
    root: PathBuf,
}

/// A stored blob: `sha256:<hex>` and its size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobRef {
    pub digest: String,
    pub size: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("the upload is larger than {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("the upload is empty")]
    Empty,
    /// The bytes could not be read from the uploader (it broke off, or its framing was bad).
    #[error("{0}")]
    Read(io::Error),
    #[error("{0:?} is not a sha256 digest (sha256:<64 hex digits>)")]
    BadDigest(String),
    #[error("blob store {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The hex part of `sha256:<64 hex>`, if that is what `digest` is.
pub fn digest_hex(digest: &str) -> Option<&str> {
    let hex = digest.strip_prefix("sha256:")?;
    (hex.len() == 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
    .then_some(hex)
}

// === impl BlobStore ===

impl BlobStore {
    pub fn new(root: impl Into<PathBuf>) -> BlobStore {
        BlobStore { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where a blob lives; `None` for a string that is not a digest.
    pub fn path(&self, digest: &str) -> Option<PathBuf> {
        let hex = digest_hex(digest)?;
        Some(self.root.join("sha256").join(&hex[..2]).join(hex))
    }

    /// Streams `reader` into the store, at most `limit` bytes; returns its digest and size.
    /// Storing bytes already there costs the hashing and nothing else.
    pub async fn put(
        &self,
        mut reader: impl AsyncRead + Unpin,
        limit: u64,
    ) -> Result<BlobRef, BlobError> {
        let tmp_dir = self.root.join("tmp");
        tokio::fs::create_dir_all(&tmp_dir)
            .await
            .map_err(|source| io_error(&tmp_dir, source))?;
        let tmp = tmp_dir.join(format!("upload-{}", unique()));
        let result = self.write_tmp(&mut reader, &tmp, limit).await;
        let blob = match result {
            Ok(b) => b,
            Err(e) => {
                let _ = tokio::fs::remove_file(&tmp).await;
                return Err(e);
            }
        };
        let dest = self.path(&blob.digest).expect("a digest we made");
        if tokio::fs::try_exists(&dest).await.unwrap_or(false) {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Ok(blob);
        }
        let parent = dest.parent().expect("blob paths have a parent");
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(|source| io_error(parent, source))?;
        tokio::fs::rename(&tmp, &dest)
            .await
            .map_err(|source| io_error(&dest, source))?;
        Ok(blob)
    }

    async fn write_tmp(
        &self,
        reader: &mut (impl AsyncRead + Unpin),
        tmp: &Path,
        limit: u64,
    ) -> Result<BlobRef, BlobError> {
        let mut file = tokio::fs::File::create(tmp)
            .await
            .map_err(|source| io_error(tmp, source))?;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = reader.read(&mut buf).await.map_err(BlobError::Read)?;
            if n == 0 {
                break;
            }
            size += n as u64;
            if size > limit {
                return Err(BlobError::TooLarge { limit });
            }
            hasher.update(&buf[..n]);
            file.write_all(&buf[..n])
                .await
                .map_err(|source| io_error(tmp, source))?;
        }
        if size == 0 {
            return Err(BlobError::Empty);
        }
        file.sync_all()
            .await
            .map_err(|source| io_error(tmp, source))?;
        Ok(BlobRef {
            digest: format!("sha256:{}", hex::encode(hasher.finalize())),
            size,
        })
    }

    /// Opens a stored blob for reading; `Ok(None)` when the store does not have it.
    pub async fn open(&self, digest: &str) -> Result<Option<(tokio::fs::File, u64)>, BlobError> {
        let path = self
            .path(digest)
            .ok_or_else(|| BlobError::BadDigest(digest.to_string()))?;
        match tokio::fs::File::open(&path).await {
            Ok(f) => {
                let size = f
                    .metadata()
                    .await
                    .map_err(|source| io_error(&path, source))?
                    .len();
                Ok(Some((f, size)))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(io_error(&path, source)),
        }
    }

    /// Removes a blob; removing one that is not there is fine.
    pub async fn remove(&self, digest: &str) -> Result<(), BlobError> {
        let path = self
            .path(digest)
            .ok_or_else(|| BlobError::BadDigest(digest.to_string()))?;
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(io_error(&path, source)),
        }
    }
}

fn io_error(path: &Path, source: io::Error) -> BlobError {
    BlobError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A name no other upload in flight has: the process id, the time and a counter.
fn unique() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{}-{nanos}-{n}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn blobs_are_stored_once_by_content_and_streamed_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::new(dir.path());
        let data = vec![7u8; 300_000];
        let a = store.put(&data[..], 1 << 20).await.unwrap();
        assert_eq!(a.size, 300_000);
        assert_eq!(
            a.digest,
            format!("sha256:{}", hex::encode(Sha256::digest(&data)))
        );
        let b = store.put(&data[..], 1 << 20).await.unwrap();
        assert_eq!(a, b);
        let (mut f, size) = store.open(&a.digest).await.unwrap().unwrap();
        assert_eq!(size, 300_000);
        let mut back = Vec::new();
        f.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, data);
        // Nothing is left behind in the temporary directory.
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );

        assert!(matches!(
            store.put(&data[..], 1000).await,
            Err(BlobError::TooLarge { limit: 1000 })
        ));
        assert!(matches!(
            store.put(&b""[..], 1000).await,
            Err(BlobError::Empty)
        ));
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );

        store.remove(&a.digest).await.unwrap();
        assert!(store.open(&a.digest).await.unwrap().is_none());
        assert!(matches!(
            store.open("sha256:../../etc/passwd").await,
            Err(BlobError::BadDigest(_))
        ));
        assert_eq!(digest_hex(&format!("sha256:{}", "A".repeat(64))), None);
    }
}
