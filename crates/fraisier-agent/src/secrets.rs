//! The secrets this agent opens as it starts a process: sealed values from the desired state,
//! opened with the key file the server shares with it (or `FRAISIER_SECRET_KEY`), and the
//! redaction of what they open to from the output it hands back. The file is read again when a
//! value names a key this agent has not seen, which is how a rotation reaches it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{PoisonError, RwLock};

use fraisier_model::secret::{self, Redactor, Sealed, SecretError, SecretKeys};

use crate::process::Identity;

pub struct AgentSecrets {
    path: Option<PathBuf>,
    keys: RwLock<Option<SecretKeys>>,
}

/// A release's secrets, opened: for one process's environment and its output's redaction.
#[derive(Default)]
pub struct Opened {
    pub values: Vec<(String, String)>,
}

// === impl AgentSecrets ===

impl AgentSecrets {
    /// Reads the keys at `path` (or `FRAISIER_SECRET_KEY`); none at all is fine until a
    /// release carries a secret.
    pub fn load(path: Option<PathBuf>) -> Result<AgentSecrets, SecretError> {
        let keys = match &path {
            Some(p) => SecretKeys::load(p)?,
            None => match std::env::var(secret::ENV_KEY_VAR) {
                Ok(k) if !k.is_empty() => Some(SecretKeys::from_env_key(&k)?),
                _ => None,
            },
        };
        Ok(AgentSecrets {
            path,
            keys: RwLock::new(keys),
        })
    }

    /// No keys: releases with secrets do not start.
    pub fn none() -> AgentSecrets {
        AgentSecrets {
            path: None,
            keys: RwLock::new(None),
        }
    }

    /// These keys, and no file to read again.
    pub fn with_keys(keys: SecretKeys) -> AgentSecrets {
        AgentSecrets {
            path: None,
            keys: RwLock::new(Some(keys)),
        }
    }

    /// Opens every secret of a release for `who`; an error names the secret and why.
    pub fn open(
        &self,
        who: Identity<'_>,
        secrets: &BTreeMap<String, Sealed>,
    ) -> Result<Opened, String> {
        let mut opened = Opened::default();
        for (name, sealed) in secrets {
            let slot = secret::slot(who.fraise, who.environment, name);
            let value = match self.open_one(&slot, sealed) {
                Err(SecretError::UnknownKey(_)) if self.reload() => self.open_one(&slot, sealed),
                r => r,
            }
            .map_err(|e| format!("cannot open secret {name}: {e}"))?;
            opened.values.push((name.clone(), value));
        }
        Ok(opened)
    }

    fn open_one(&self, slot: &str, sealed: &Sealed) -> Result<String, SecretError> {
        match self
            .keys
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
        {
            Some(k) => k.open(slot, sealed),
            None => Err(SecretError::NoKey),
        }
    }

    /// Reads the key file again; whether it gave keys.
    fn reload(&self) -> bool {
        let Some(path) = &self.path else { return false };
        match SecretKeys::load(path) {
            Ok(Some(k)) => {
                *self.keys.write().unwrap_or_else(PoisonError::into_inner) = Some(k);
                true
            }
            Ok(None) => false,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the secret keys");
                false
            }
        }
    }
}

// === impl Opened ===

impl Opened {
    pub fn redactor(&self) -> Redactor {
        Redactor::new(self.values.iter().map(|(n, v)| (n.as_str(), v.as_str())))
    }
}
