//! Secrets at rest and on their way to instances: each value sealed with XChaCha20-Poly1305
//! under a key named by its id, and bound to its slot (the fraise as the agent knows it, the
//! environment, the variable's name), so a sealed value copied into another slot does not
//! open. The keys live in a key file (`{"keys": [{"kid", "key"}]}`, hex) the server and its
//! agent read (or one key in `FRAISIER_SECRET_KEY`); the newest seals, every one listed
//! opens. Callers bring the nonces.

use std::fmt;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use serde::{Deserialize, Serialize};

/// Bytes of a key and of a nonce.
pub const KEY_LEN: usize = 32;
pub const NONCE_LEN: usize = 24;

/// A sealed value: which key, the nonce, and the ciphertext with its tag (hex).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sealed {
    pub kid: String,
    pub nonce: String,
    pub ciphertext: String,
}

/// Keys by id; the last one seals.
#[derive(Clone, Default)]
pub struct SecretKeys {
    keys: Vec<(String, [u8; KEY_LEN])>,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("no secret key {0:?} is known here (was the key file replaced?)")]
    UnknownKey(String),
    #[error("the sealed value does not open: altered, or sealed for another slot")]
    Corrupt,
    #[error("no secret key is configured")]
    NoKey,
    #[error("invalid key file: {0}")]
    KeyFile(String),
    #[error("no randomness for a nonce: {0}")]
    Random(String),
    /// The key comes from `FRAISIER_SECRET_KEY`: the operator's to change, not ours.
    #[error("the secret key comes from FRAISIER_SECRET_KEY; it cannot be rotated here. Unset it to use a key file in the data dir (existing secrets must then be set again)")]
    External,
}

#[derive(Serialize, Deserialize)]
struct KeyFile {
    keys: Vec<KeyEntry>,
}

#[derive(Serialize, Deserialize)]
struct KeyEntry {
    kid: String,
    key: String,
}

/// The slot a value is sealed for: what the agent calls the fraise (`workspace.fraise`
/// outside `default`), the environment, the variable.
pub fn slot(agent_name: &str, environment: &str, name: &str) -> String {
    format!("{agent_name}/{environment}/{name}")
}

/// Names of environment variables: a letter or `_`, then letters, digits and `_`, at most 128.
pub fn variable_name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() || name.len() > 128 {
        return Some("must be 1 to 128 characters long");
    }
    if !name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
        return Some("must start with a letter or '_'");
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Some("may contain only letters, digits and '_'");
    }
    if name.starts_with("FRAISIER_") || name == "PORT" {
        return Some("PORT and FRAISIER_* are set by the agent");
    }
    None
}

// === impl SecretKeys ===

impl SecretKeys {
    pub fn new(keys: Vec<(String, [u8; KEY_LEN])>) -> SecretKeys {
        SecretKeys { keys }
    }

    /// Reads the key file's text.
    pub fn from_file_text(text: &str) -> Result<SecretKeys, SecretError> {
        let file: KeyFile =
            serde_json::from_str(text).map_err(|e| SecretError::KeyFile(e.to_string()))?;
        let mut keys = Vec::new();
        for k in file.keys {
            keys.push((
                k.kid.clone(),
                parse_key(&k.key).map_err(SecretError::KeyFile)?,
            ));
        }
        if keys.is_empty() {
            return Err(SecretError::KeyFile("it lists no key".into()));
        }
        Ok(SecretKeys { keys })
    }

    /// The one key given in `FRAISIER_SECRET_KEY` (64 hex digits).
    pub fn from_env_key(text: &str) -> Result<SecretKeys, SecretError> {
        let key = parse_key(text)
            .map_err(|e| SecretError::KeyFile(format!("FRAISIER_SECRET_KEY: {e}")))?;
        Ok(SecretKeys::new(vec![(ENV_KID.to_string(), key)]))
    }

    /// `FRAISIER_SECRET_KEY` when it is set, else the key file; `Ok(None)` when the file does
    /// not exist.
    pub fn load(path: &std::path::Path) -> Result<Option<SecretKeys>, SecretError> {
        if let Ok(k) = std::env::var(ENV_KEY_VAR) {
            if !k.is_empty() {
                return SecretKeys::from_env_key(&k).map(Some);
            }
        }
        match std::fs::read_to_string(path) {
            Ok(text) => SecretKeys::from_file_text(&text)
                .map(Some)
                .map_err(|e| SecretError::KeyFile(format!("{}: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(SecretError::KeyFile(format!("{}: {e}", path.display()))),
        }
    }

    /// Whether the keys came from `FRAISIER_SECRET_KEY` (and so cannot be rotated here).
    pub fn from_env(&self) -> bool {
        self.keys.len() == 1 && self.keys[0].0 == ENV_KID
    }

    pub fn to_file_text(&self) -> String {
        let file = KeyFile {
            keys: self
                .keys
                .iter()
                .map(|(kid, key)| KeyEntry {
                    kid: kid.clone(),
                    key: hex::encode(key),
                })
                .collect(),
        };
        serde_json::to_string_pretty(&file).expect("plain data serializes")
    }

    /// Adds a key, which seals from now on.
    pub fn push(&mut self, kid: String, key: [u8; KEY_LEN]) {
        self.keys.push((kid, key));
    }

    pub fn current_kid(&self) -> Option<&str> {
        self.keys.last().map(|(kid, _)| kid.as_str())
    }

    pub fn kids(&self) -> Vec<String> {
        self.keys.iter().map(|(k, _)| k.clone()).collect()
    }

    pub fn seal(
        &self,
        slot: &str,
        plaintext: &str,
        nonce: [u8; NONCE_LEN],
    ) -> Result<Sealed, SecretError> {
        let (kid, key) = self.keys.last().ok_or(SecretError::NoKey)?;
        let cipher = XChaCha20Poly1305::new(key.into());
        let ciphertext = cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plaintext.as_bytes(),
                    aad: slot.as_bytes(),
                },
            )
            .map_err(|_| SecretError::Corrupt)?;
        Ok(Sealed {
            kid: kid.clone(),
            nonce: hex::encode(nonce),
            ciphertext: hex::encode(ciphertext),
        })
    }

    pub fn open(&self, slot: &str, sealed: &Sealed) -> Result<String, SecretError> {
        let key = self
            .keys
            .iter()
            .find(|(kid, _)| *kid == sealed.kid)
            .map(|(_, k)| k)
            .ok_or_else(|| SecretError::UnknownKey(sealed.kid.clone()))?;
        let nonce = hex::decode(&sealed.nonce).map_err(|_| SecretError::Corrupt)?;
        let ciphertext = hex::decode(&sealed.ciphertext).map_err(|_| SecretError::Corrupt)?;
        if nonce.len() != NONCE_LEN {
            return Err(SecretError::Corrupt);
        }
        let plain = XChaCha20Poly1305::new(key.into())
            .decrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: &ciphertext,
                    aad: slot.as_bytes(),
                },
            )
            .map_err(|_| SecretError::Corrupt)?;
        String::from_utf8(plain).map_err(|_| SecretError::Corrupt)
    }
}

/// The id of a key given through `FRAISIER_SECRET_KEY` rather than a key file.
pub const ENV_KID: &str = "env";

/// The variable that, when set, holds the one secret key instead of the key file.
pub const ENV_KEY_VAR: &str = "FRAISIER_SECRET_KEY";

/// The key file's name in the server's data dir.
pub const KEY_FILE: &str = "secret-keys.json";

/// Shortest secret value redacted from output: shorter ones would blank out ordinary words
/// and say more about the secret than they hide.
pub const MIN_REDACTED_LEN: usize = 4;

/// Replaces the values of secrets in output (hook, job, scheduled execution lines) with
/// `[secret NAME]`, longest value first so that one secret containing another is hidden whole.
/// Output is redacted line by line, so each line of a multi-line value (a PEM key) is hidden
/// on its own too.
#[derive(Clone, Default)]
pub struct Redactor {
    values: Vec<(String, String)>,
}

/// Names only.
impl fmt::Debug for Redactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Redactor")
            .field(
                "names",
                &self.values.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Redactor {
    pub fn new<'a>(secrets: impl IntoIterator<Item = (&'a str, &'a str)>) -> Redactor {
        let mut values: Vec<(String, String)> = secrets
            .into_iter()
            .flat_map(|(n, v)| {
                let lines = v.lines().filter(move |l| *l != v);
                std::iter::once((n, v)).chain(lines.map(move |l| (n, l.trim_end_matches('\r'))))
            })
            .filter(|(_, v)| v.len() >= MIN_REDACTED_LEN)
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        values.dedup();
        values.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then(a.0.cmp(&b.0)));
        Redactor { values }
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    pub fn redact(&self, line: &str) -> String {
        let mut out = line.to_string();
        for (name, value) in &self.values {
            if out.contains(value.as_str()) {
                out = out.replace(value.as_str(), &format!("[secret {name}]"));
            }
        }
        out
    }
}

/// A key as written: 64 hex digits.
pub fn parse_key(text: &str) -> Result<[u8; KEY_LEN], String> {
    let bytes = hex::decode(text.trim()).map_err(|_| "a key is 64 hex digits".to_string())?;
    bytes
        .try_into()
        .map_err(|_| "a key is 64 hex digits (32 bytes)".to_string())
}

/// Keys never print.
impl fmt::Debug for SecretKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretKeys")
            .field("kids", &self.kids())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> SecretKeys {
        SecretKeys::new(vec![("k1".into(), [7; KEY_LEN])])
    }

    #[test]
    fn sealed_values_open_in_their_slot_only() {
        let k = keys();
        let slot_a = slot("api", "production", "DB_PASSWORD");
        let sealed = k.seal(&slot_a, "s3cret", [1; NONCE_LEN]).unwrap();
        assert!(!sealed.ciphertext.contains(&hex::encode("s3cret")));
        assert_eq!(k.open(&slot_a, &sealed).unwrap(), "s3cret");
        // Moved to another fraise, environment or name: it does not open.
        for other in [
            slot("team-a.api", "production", "DB_PASSWORD"),
            slot("api", "staging", "DB_PASSWORD"),
            slot("api", "production", "API_TOKEN"),
        ] {
            assert_eq!(k.open(&other, &sealed), Err(SecretError::Corrupt));
        }
        let mut flipped = sealed.clone();
        flipped.ciphertext.replace_range(0..2, "00");
        assert_eq!(k.open(&slot_a, &flipped), Err(SecretError::Corrupt));
    }

    #[test]
    fn rotation_keeps_old_values_open_and_seals_with_the_new_key() {
        let mut k = keys();
        let s = slot("api", "production", "X");
        let old = k.seal(&s, "before", [2; NONCE_LEN]).unwrap();
        k.push("k2".into(), [9; KEY_LEN]);
        let new = k.seal(&s, "after", [3; NONCE_LEN]).unwrap();
        assert_eq!((old.kid.as_str(), new.kid.as_str()), ("k1", "k2"));
        assert_eq!(k.open(&s, &old).unwrap(), "before");
        assert_eq!(k.open(&s, &new).unwrap(), "after");
        let text = k.to_file_text();
        let back = SecretKeys::from_file_text(&text).unwrap();
        assert_eq!(back.open(&s, &new).unwrap(), "after");
        assert!(!format!("{back:?}").contains(&hex::encode([9u8; KEY_LEN])));
        let only_new = SecretKeys::new(vec![("k2".into(), [9; KEY_LEN])]);
        assert_eq!(
            only_new.open(&s, &old),
            Err(SecretError::UnknownKey("k1".into()))
        );
    }

    #[test]
    fn redaction_hides_values_whole_and_leaves_short_ones() {
        let r = Redactor::new([("A", "hunter2"), ("B", "hunter2-extended"), ("C", "no")]);
        assert_eq!(
            r.redact("pw=hunter2-extended and hunter2, no"),
            "pw=[secret B] and [secret A], no"
        );
        assert!(Redactor::new([("C", "abc")]).is_empty());
        let pem = "-----BEGIN KEY-----\nMIIEvQIBADANBgkq\n-----END KEY-----";
        let r = Redactor::new([("TLS_KEY", pem)]);
        assert_eq!(r.redact("MIIEvQIBADANBgkq"), "[secret TLS_KEY]");
        assert!(!format!("{r:?}").contains("MIIE"));
    }

    #[test]
    fn variable_names() {
        assert_eq!(variable_name_problem("DB_PASSWORD"), None);
        assert_eq!(variable_name_problem("_x1"), None);
        for bad in ["", "1X", "A-B", "PORT", "FRAISIER_VERSION", "A B"] {
            assert!(variable_name_problem(bad).is_some(), "{bad}");
        }
    }
}
