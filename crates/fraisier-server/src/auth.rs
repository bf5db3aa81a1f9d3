//! Who is calling: password hashing, the signing key in the data dir, and JWT access tokens.

use std::path::{Path, PathBuf};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// What an access token says about its bearer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub tenant_id: String,
    pub roles: Vec<String>,
    pub permissions: Vec<String>,
    pub exp: i64,
    pub iat: i64,
    pub jti: String,
}

/// The authenticated caller, as handlers see it.
#[derive(Clone, Debug)]
pub struct Identity {
    pub username: String,
    pub tenant: String,
    pub roles: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot read or create the signing key at {path}: {source}")]
    Key {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid or expired token")]
    InvalidToken,
    #[error("password hashing failed")]
    Hash,
}

/// The HS256 signing key, kept in `<data_dir>/jwt.key` (0600) so tokens survive restarts and
/// `fraisier auth:token` on the same host can mint tokens without the server.
#[derive(Clone)]
pub struct Keys {
    secret: Vec<u8>,
    pub ttl_secs: i64,
}

pub const KEY_FILE: &str = "jwt.key";
pub const ADMIN_PASSWORD_FILE: &str = "admin-password";
pub const ADMIN_USER: &str = "admin";

/// How long after expiry a token may still be exchanged at `/auth/refresh`.
const REFRESH_GRACE_SECS: u64 = 24 * 3600;

// === impl Keys ===

impl Keys {
    /// Loads the key, creating it (random, 0600) on first start.
    pub fn load_or_create(data_dir: &Path, ttl_secs: i64) -> Result<Keys, AuthError> {
        let path = data_dir.join(KEY_FILE);
        let err = |source| AuthError::Key {
            path: path.clone(),
            source,
        };
        let secret = match std::fs::read(&path) {
            Ok(s) if s.len() >= 32 => s,
            Ok(_) | Err(_) if !path.exists() => {
                std::fs::create_dir_all(data_dir).map_err(err)?;
                let mut s = vec![0u8; 64];
                getrandom::getrandom(&mut s).map_err(|e| err(std::io::Error::other(e)))?;
                let hex = hex::encode(&s).into_bytes();
                write_private(&path, &hex).map_err(err)?;
                hex
            }
            Ok(_) => return Err(err(std::io::Error::other("key file is too short"))),
            Err(e) => return Err(err(e)),
        };
        Ok(Keys { secret, ttl_secs })
    }

    /// Only loads: for the CLI, which must not invent a key the server does not know.
    pub fn load(data_dir: &Path, ttl_secs: i64) -> Result<Keys, AuthError> {
        let path = data_dir.join(KEY_FILE);
        let secret = std::fs::read(&path).map_err(|source| AuthError::Key { path, source })?;
        Ok(Keys { secret, ttl_secs })
    }

    pub fn mint(&self, username: &str, tenant: &str, roles: &[String]) -> (String, i64) {
        let now = chrono::Utc::now().timestamp();
        let mut jti = [0u8; 12];
        let _ = getrandom::getrandom(&mut jti);
        let claims = Claims {
            sub: username.to_string(),
            tenant_id: tenant.to_string(),
            roles: roles.to_vec(),
            permissions: vec!["*".into()],
            exp: now + self.ttl_secs,
            iat: now,
            jti: hex::encode(jti),
        };
        let token = encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(&self.secret),
        )
        .expect("HS256 encoding of plain claims cannot fail");
        (token, self.ttl_secs)
    }

    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        self.decode_with(token, 0)
    }

    /// Accepts a token up to a day past expiry, so a client can renew without the password.
    pub fn verify_for_refresh(&self, token: &str) -> Result<Claims, AuthError> {
        self.decode_with(token, REFRESH_GRACE_SECS)
    }

    fn decode_with(&self, token: &str, leeway: u64) -> Result<Claims, AuthError> {
        let mut v = Validation::new(Algorithm::HS256);
        v.leeway = leeway;
        v.validate_exp = true;
        v.set_required_spec_claims(&["exp", "sub"]);
        decode::<Claims>(token, &DecodingKey::from_secret(&self.secret), &v)
            .map(|d| d.claims)
            .map_err(|_| AuthError::InvalidToken)
    }
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
    let mut bytes = [0u8; 18];
    let _ = getrandom::getrandom(&mut bytes);
    hex::encode(bytes)
}

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

    #[test]
    fn tokens_round_trip_and_tampering_fails() {
        let dir = tempfile::tempdir().unwrap();
        let dir = dir.path();
        let keys = Keys::load_or_create(dir, 3600).unwrap();
        let (token, ttl) = keys.mint("admin", "default", &["admin".into()]);
        assert_eq!(ttl, 3600);
        let claims = keys.verify(&token).unwrap();
        assert_eq!(claims.sub, "admin");
        let mut bad = token.clone();
        bad.pop();
        assert!(keys.verify(&bad).is_err());
        let other_dir = tempfile::tempdir().unwrap();
        let other = Keys::load_or_create(other_dir.path(), 3600).unwrap();
        assert!(other.verify(&token).is_err());
        // The same key is read back from the data dir.
        assert!(Keys::load(dir, 3600).unwrap().verify(&token).is_ok());
    }

    #[test]
    fn expired_tokens_are_refused_but_refreshable() {
        let dir = tempfile::tempdir().unwrap();
        let keys = Keys::load_or_create(dir.path(), -120).unwrap();
        let (token, _) = keys.mint("admin", "default", &[]);
        assert!(keys.verify(&token).is_err());
        assert!(keys.verify_for_refresh(&token).is_ok());
    }

    #[test]
    fn passwords_hash_and_verify() {
        let h = hash_password("s3cret").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("s3cret", &h));
        assert!(!verify_password("wrong", &h));
    }
}
