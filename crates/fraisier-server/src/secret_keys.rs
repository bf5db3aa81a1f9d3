//! The server's secret keys: the key file in the data dir (0600, created on first start), or
//! the one key in `FRAISIER_SECRET_KEY`. The local agent reads the same file.

use std::path::{Path, PathBuf};

use fraisier_model::secret::{SecretError, SecretKeys, KEY_FILE, KEY_LEN};

use crate::auth::write_private;

#[derive(Debug, thiserror::Error)]
pub enum SecretKeyError {
    #[error(transparent)]
    Keys(#[from] SecretError),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no randomness for a new key: {0}")]
    Random(String),
}

pub fn key_file(data_dir: &Path) -> PathBuf {
    data_dir.join(KEY_FILE)
}

/// The keys, creating the key file with one fresh key if there is none.
pub fn load_or_create(data_dir: &Path) -> Result<SecretKeys, SecretKeyError> {
    let path = key_file(data_dir);
    if let Some(keys) = SecretKeys::load(&path)? {
        return Ok(keys);
    }
    let mut keys = SecretKeys::default();
    let (kid, key) = new_key()?;
    keys.push(kid, key);
    save(&path, &keys)?;
    tracing::info!(path = %path.display(), "created the secret key file");
    Ok(keys)
}

/// `current` with a new key that seals from now on, written to the key file first so that
/// the agent can open what is sealed with it. Old keys stay: values sealed with them (in
/// desired states already handed out) keep opening.
pub fn add_key(data_dir: &Path, current: &SecretKeys) -> Result<SecretKeys, SecretError> {
    if current.from_env() {
        return Err(SecretError::External);
    }
    let mut keys = current.clone();
    let (kid, key) = new_key().map_err(|e| SecretError::Random(e.to_string()))?;
    keys.push(kid, key);
    save(&key_file(data_dir), &keys).map_err(|e| SecretError::KeyFile(e.to_string()))?;
    Ok(keys)
}

fn save(path: &Path, keys: &SecretKeys) -> Result<(), SecretKeyError> {
    write_private(path, keys.to_file_text().as_bytes()).map_err(|source| SecretKeyError::Write {
        path: path.to_path_buf(),
        source,
    })
}

fn new_key() -> Result<(String, [u8; KEY_LEN]), SecretKeyError> {
    let mut key = [0u8; KEY_LEN];
    let mut tag = [0u8; 3];
    getrandom::getrandom(&mut key).map_err(|e| SecretKeyError::Random(e.to_string()))?;
    getrandom::getrandom(&mut tag).map_err(|e| SecretKeyError::Random(e.to_string()))?;
    let kid = format!(
        "s{}-{}",
        chrono::Utc::now().format("%Y%m%d%H%M%S"),
        hex::encode(tag)
    );
    Ok((kid, key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use fraisier_model::secret::{slot, NONCE_LEN};

    #[test]
    fn the_key_file_is_private_and_rotation_keeps_old_keys() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create(dir.path()).unwrap();
        let mode = std::fs::metadata(key_file(dir.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(load_or_create(dir.path()).unwrap().kids(), first.kids());
        let s = slot("api", "production", "X");
        let sealed = first.seal(&s, "v", [0; NONCE_LEN]).unwrap();
        let second = add_key(dir.path(), &first).unwrap();
        assert_eq!(second.kids().len(), 2);
        assert_ne!(second.current_kid(), first.current_kid());
        let reread = load_or_create(dir.path()).unwrap();
        assert_eq!(reread.open(&s, &sealed).unwrap(), "v");
        assert_eq!(reread.current_kid(), second.current_kid());
    }
}
