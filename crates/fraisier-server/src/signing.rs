//! The server's artifact-signing key: Ed25519, made on first use and kept in the data dir
//! (PKCS#8, mode 0600). Its public half is published (`GET /artifacts/signing-key`) so that
//! anyone can check a signature offline (`fraisier artifact verify`).

use std::path::Path;

use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair};

pub const SIGNING_KEY_FILE: &str = "artifact-signing-key.pk8";

pub struct SigningKey {
    pair: Ed25519KeyPair,
}

#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    #[error("cannot read or write the artifact signing key at {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("the artifact signing key at {0} is not an Ed25519 PKCS#8 key")]
    Invalid(String),
}

impl SigningKey {
    pub fn load_or_create(data_dir: &Path) -> Result<SigningKey, SigningError> {
        let path = data_dir.join(SIGNING_KEY_FILE);
        let shown = path.display().to_string();
        let io = |source| SigningError::Io {
            path: shown.clone(),
            source,
        };
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
                    .map_err(|_| SigningError::Invalid(shown.clone()))?;
                crate::auth::write_private(&path, doc.as_ref()).map_err(io)?;
                doc.as_ref().to_vec()
            }
            Err(e) => return Err(io(e)),
        };
        let pair = Ed25519KeyPair::from_pkcs8(&bytes).map_err(|_| SigningError::Invalid(shown))?;
        Ok(SigningKey { pair })
    }

    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        self.pair.sign(message).as_ref().to_vec()
    }

    /// The public key, base64 (standard alphabet, padded).
    pub fn public_key(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.pair.public_key().as_ref())
    }
}
