//! Credentials: password hashing, the signing keys in the data dir (rotated by `kid`), JWT
//! access tokens, and API keys.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use chrono::{DateTime, Utc};
use fraisier_model::config::TokenAlgorithm;
use jsonwebtoken::{
    decode, decode_header, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What an access token says about its bearer (seed 002: user id, tenant, roles,
/// permissions). The server looks the user up on every request anyway: a token is proof of a
/// sign-in, not a frozen grant.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Claims {
    /// The user's id.
    pub sub: String,
    /// The username, for people reading a token.
    pub name: String,
    /// The workspace the token is for.
    pub tenant_id: String,
    pub roles: Vec<String>,
    pub permissions: Vec<String>,
    pub exp: i64,
    pub iat: i64,
    pub jti: String,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot read or write the signing keys at {path}: {source}")]
    Keys {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid or expired token")]
    InvalidToken,
    #[error("password hashing failed")]
    Hash,
    #[error("cannot read or write {path}: {source}")]
    KeyFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no randomness: {0}")]
    Random(String),
}

/// One signing key. A rotated-out key keeps verifying the tokens it signed until they can no
/// longer be refreshed, then it is dropped.
#[derive(Clone, Serialize, Deserialize)]
struct SigningKey {
    kid: String,
    /// Hex of 64 random bytes.
    secret: String,
    created_at: DateTime<Utc>,
    #[serde(default)]
    retired_at: Option<DateTime<Utc>>,
}

#[derive(Serialize, Deserialize)]
struct KeyFile {
    keys: Vec<SigningKey>,
}

/// The signing keys, kept in `<data_dir>/jwt-keys.json` (0600) so that tokens survive
/// restarts and `fraisier auth:token` on the server's host can mint one without the server.
#[derive(Clone)]
pub struct Keys {
    inner: Arc<RwLock<Vec<SigningKey>>>,
    path: PathBuf,
    algorithm: Algorithm,
    pub ttl_secs: i64,
}

pub const KEY_FILE: &str = "jwt-keys.json";
/// The single key of earlier versions; removed when the key set is created.
const LEGACY_KEY_FILE: &str = "jwt.key";
pub const ADMIN_PASSWORD_FILE: &str = "admin-password";
pub const ADMIN_USER: &str = "admin";

/// How long after expiry a token may still be exchanged at `/auth/refresh`.
pub const REFRESH_GRACE_SECS: i64 = 24 * 3600;

/// API keys: `fsk_` and 40 hex characters; the first 12 characters are shown in listings.
pub const API_KEY_PREFIX: &str = "fsk_";
const API_KEY_SHOWN: usize = 12;

// === impl Keys ===

impl Keys {
    /// Loads the key set, creating it (one random key, 0600) on first start.
    pub fn load_or_create(
        data_dir: &Path,
        algorithm: TokenAlgorithm,
        ttl_secs: i64,
    ) -> Result<Keys, AuthError> {
        let path = data_dir.join(KEY_FILE);
        if !path.exists() {
            let keys = Keys {
                inner: Arc::new(RwLock::new(vec![new_key()?])),
                path: path.clone(),
                algorithm: jwt_algorithm(algorithm),
                ttl_secs,
            };
            std::fs::create_dir_all(data_dir).map_err(|source| AuthError::Keys {
                path: path.clone(),
                source,
            })?;
            keys.save()?;
            let _ = std::fs::remove_file(data_dir.join(LEGACY_KEY_FILE));
            return Ok(keys);
        }
        Keys::load(data_dir, algorithm, ttl_secs)
    }

    /// Only loads: for the CLI, which must not invent keys the server does not know.
    pub fn load(
        data_dir: &Path,
        algorithm: TokenAlgorithm,
        ttl_secs: i64,
    ) -> Result<Keys, AuthError> {
        let path = data_dir.join(KEY_FILE);
        let err = |source| AuthError::Keys {
            path: path.clone(),
            source,
        };
        let text = std::fs::read_to_string(&path).map_err(err)?;
        let file: KeyFile = serde_json::from_str(&text)
            .map_err(|e| err(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))?;
        if file.keys.is_empty() || file.keys.iter().any(|k| k.secret.len() < 64) {
            return Err(err(std::io::Error::other(
                "the key set holds no usable key",
            )));
        }
        Ok(Keys {
            inner: Arc::new(RwLock::new(file.keys)),
            path,
            algorithm: jwt_algorithm(algorithm),
            ttl_secs,
        })
    }

    fn save(&self) -> Result<(), AuthError> {
        let file = KeyFile {
            keys: self.read().clone(),
        };
        let text = serde_json::to_string_pretty(&file).expect("plain data serializes");
        write_private(&self.path, text.as_bytes()).map_err(|source| AuthError::Keys {
            path: self.path.clone(),
            source,
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<SigningKey>> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    /// A new current key; the old ones keep verifying until the tokens they signed can no
    /// longer be refreshed. Returns the new key's id.
    pub fn rotate(&self) -> Result<String, AuthError> {
        let now = Utc::now();
        let horizon = chrono::Duration::seconds(self.ttl_secs.max(0) + REFRESH_GRACE_SECS);
        let key = new_key()?;
        let kid = key.kid.clone();
        {
            let mut keys = self.inner.write().unwrap_or_else(|e| e.into_inner());
            for k in keys.iter_mut() {
                k.retired_at.get_or_insert(now);
            }
            keys.retain(|k| k.retired_at.is_none_or(|t| t + horizon > now));
            keys.push(key);
        }
        self.save()?;
        Ok(kid)
    }

    /// Ids of the keys that verify tokens, the current (signing) one last.
    pub fn kids(&self) -> Vec<String> {
        self.read().iter().map(|k| k.kid.clone()).collect()
    }

    pub fn mint(
        &self,
        user_id: i64,
        username: &str,
        workspace: &str,
        roles: &[String],
        permissions: Vec<String>,
    ) -> (String, Claims) {
        let now = Utc::now().timestamp();
        let claims = Claims {
            sub: user_id.to_string(),
            name: username.to_string(),
            tenant_id: workspace.to_string(),
            roles: roles.to_vec(),
            permissions,
            exp: now + self.ttl_secs,
            iat: now,
            jti: random_hex(12),
        };
        let keys = self.read();
        let key = keys.last().expect("a key set is never empty");
        let mut header = Header::new(self.algorithm);
        header.kid = Some(key.kid.clone());
        let token = encode(
            &header,
            &claims,
            &EncodingKey::from_secret(key.secret.as_bytes()),
        )
        .expect("HMAC encoding of plain claims cannot fail");
        (token, claims)
    }

    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        self.decode_with(token, 0)
    }

    /// Accepts a token up to a day past expiry, so a client can renew without the password.
    pub fn verify_for_refresh(&self, token: &str) -> Result<Claims, AuthError> {
        self.decode_with(token, REFRESH_GRACE_SECS as u64)
    }

    fn decode_with(&self, token: &str, leeway: u64) -> Result<Claims, AuthError> {
        let header = decode_header(token).map_err(|_| AuthError::InvalidToken)?;
        // Only the configured algorithm: no `none`, no algorithm confusion.
        if header.alg != self.algorithm {
            return Err(AuthError::InvalidToken);
        }
        let kid = header.kid.ok_or(AuthError::InvalidToken)?;
        let secret = self
            .read()
            .iter()
            .find(|k| k.kid == kid)
            .map(|k| k.secret.clone())
            .ok_or(AuthError::InvalidToken)?;
        let mut v = Validation::new(self.algorithm);
        v.leeway = leeway;
        v.validate_exp = true;
        v.set_required_spec_claims(&["exp", "sub"]);
        decode::<Claims>(token, &DecodingKey::from_secret(secret.as_bytes()), &v)
            .map(|d| d.claims)
            .map_err(|_| AuthError::InvalidToken)
    }
}

fn jwt_algorithm(a: TokenAlgorithm) -> Algorithm {
    match a {
        TokenAlgorithm::HS256 => Algorithm::HS256,
        TokenAlgorithm::HS384 => Algorithm::HS384,
        TokenAlgorithm::HS512 => Algorithm::HS512,
    }
}

fn new_key() -> Result<SigningKey, AuthError> {
    let mut secret = [0u8; 64];
    getrandom::getrandom(&mut secret).map_err(|_| AuthError::Hash)?;
    Ok(SigningKey {
        kid: format!("k{}", random_hex(4)),
        secret: hex::encode(secret),
        created_at: Utc::now(),
        retired_at: None,
    })
}

pub fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    getrandom::getrandom(&mut b).expect("the OS has randomness");
    hex::encode(b)
}

pub fn hash_password(password: &str) -> Result<String, AuthError> {
    let mut salt = [0u8; 16];
    getrandom::getrandom(&mut salt).map_err(|_| AuthError::Hash)?;
    let salt = SaltString::encode_b64(&salt).map_err(|_| AuthError::Hash)?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|_| AuthError::Hash)
}

pub fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash)
        .map(|h| {
            Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
}

/// A random password of URL-safe characters.
pub fn generate_password() -> String {
    random_hex(18)
}

/// A new API key: (the key, shown once; the prefix kept for listings; the hash stored).
pub fn new_api_key() -> (String, String, String) {
    let key = format!("{API_KEY_PREFIX}{}", random_hex(20));
    let prefix = key[..API_KEY_SHOWN].to_string();
    let hash = api_key_hash(&key);
    (key, prefix, hash)
}

/// Keys carry 160 random bits, so a plain digest is as strong as a slow hash would be.
pub fn api_key_hash(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// Compares two secrets in time that depends only on their lengths.
pub fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The credential agents present to fetch artifacts, kept in the data dir (0600) so that an
/// agent linked before a restart of the server keeps fetching.
pub fn agent_token(data_dir: &Path) -> Result<String, AuthError> {
    let path = data_dir.join(AGENT_TOKEN_FILE);
    if let Ok(t) = std::fs::read_to_string(&path) {
        let t = t.trim().to_string();
        if !t.is_empty() {
            return Ok(t);
        }
    }
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes).map_err(|e| AuthError::Random(e.to_string()))?;
    let token = format!("fat_{}", hex::encode(bytes));
    write_private(&path, format!("{token}\n").as_bytes()).map_err(|source| AuthError::KeyFile {
        path: path.clone(),
        source,
    })?;
    Ok(token)
}

/// Where [`agent_token`] keeps it.
pub const AGENT_TOKEN_FILE: &str = "agent-token";

/// Writes a file only its owner can read, atomically.
pub fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(dir: &Path, ttl: i64) -> Keys {
        Keys::load_or_create(dir, TokenAlgorithm::HS256, ttl).unwrap()
    }

    fn mint(k: &Keys) -> String {
        k.mint(7, "alice", "default", &["admin".into()], vec!["*".into()])
            .0
    }

    #[test]
    fn tokens_round_trip_and_tampering_fails() {
        let dir = tempfile::tempdir().unwrap();
        let k = keys(dir.path(), 3600);
        let token = mint(&k);
        let claims = k.verify(&token).unwrap();
        assert_eq!((claims.sub.as_str(), claims.name.as_str()), ("7", "alice"));
        assert_eq!(claims.exp - claims.iat, 3600);
        let mut bad = token.clone();
        bad.pop();
        assert!(k.verify(&bad).is_err());
        let other_dir = tempfile::tempdir().unwrap();
        assert!(keys(other_dir.path(), 3600).verify(&token).is_err());
        // The same keys are read back from the data dir.
        let again = Keys::load(dir.path(), TokenAlgorithm::HS256, 3600).unwrap();
        assert!(again.verify(&token).is_ok());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn only_the_configured_algorithm_is_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let k = keys(dir.path(), 3600);
        let token = mint(&k);
        let hs512 = Keys::load(dir.path(), TokenAlgorithm::HS512, 3600).unwrap();
        assert!(hs512.verify(&token).is_err());
        // An unsigned token ("alg":"none") with valid claims.
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let claims = token.split('.').nth(1).unwrap();
        let kid = &k.kids()[0];
        let header = b64.encode(format!(r#"{{"alg":"none","typ":"JWT","kid":"{kid}"}}"#));
        assert!(k.verify(&format!("{header}.{claims}.")).is_err());
        // A token without kid.
        let header = b64.encode(r#"{"alg":"HS256","typ":"JWT"}"#);
        let sig = token.split('.').nth(2).unwrap();
        assert!(k.verify(&format!("{header}.{claims}.{sig}")).is_err());
    }

    #[test]
    fn rotation_keeps_old_tokens_valid_and_signs_with_the_new_key() {
        let dir = tempfile::tempdir().unwrap();
        let k = keys(dir.path(), 3600);
        let old = mint(&k);
        let kid = k.rotate().unwrap();
        assert_eq!(k.kids().len(), 2);
        assert_eq!(k.kids().last(), Some(&kid));
        let new = mint(&k);
        assert_eq!(
            decode_header(&new).unwrap().kid.as_deref(),
            Some(kid.as_str())
        );
        assert!(k.verify(&old).is_ok(), "tokens of the old key still work");
        assert!(k.verify(&new).is_ok());
        // The CLI reading the file sees the new key.
        let cli = Keys::load(dir.path(), TokenAlgorithm::HS256, 3600).unwrap();
        assert!(cli.verify(&new).is_ok());
    }

    #[test]
    fn expired_tokens_are_refused_but_refreshable() {
        let dir = tempfile::tempdir().unwrap();
        let k = keys(dir.path(), -120);
        let token = mint(&k);
        assert!(k.verify(&token).is_err());
        assert!(k.verify_for_refresh(&token).is_ok());
    }

    #[test]
    fn passwords_hash_and_verify() {
        let h = hash_password("s3cret").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("s3cret", &h));
        assert!(!verify_password("wrong", &h));
    }

    #[test]
    fn api_keys_are_stored_as_hashes() {
        let (key, prefix, hash) = new_api_key();
        assert!(key.starts_with("fsk_") && key.len() == 44);
        assert!(key.starts_with(&prefix));
        assert_eq!(api_key_hash(&key), hash);
        assert_ne!(new_api_key().0, key);
    }
}
