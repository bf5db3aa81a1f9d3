//! Workspace secrets: credentials the server itself uses — a git token, a webhook secret —
//! kept sealed like a deployment's secrets, named in fraisier.yaml as `${secret:NAME}` and
//! opened only at the moment they are used. Never handed to an instance, never returned by
//! the API, never written anywhere in clear.

use fraisier_model::config::{
    stored_secret_name, FraiseConfig, GitCredential, HostSecrets, DEFAULT_WORKSPACE,
};
use fraisier_model::names::agent_name;
use fraisier_model::secret::{self, Sealed};
use fraisier_model::webhook::GitHost;
use fraisier_store::{StoreError, Variable};

use crate::git::GitAuth;
use crate::{Engine, EngineError};

/// Where workspace secrets sit among the variables: a fraise and an environment no name can
/// be, so none is ever part of a desired state.
pub const WORKSPACE_SCOPE: &str = "*";

/// Characters a workspace secret may hold (an SSH key or a certificate chain fits): the API
/// document's `maxLength`, which counts characters, not bytes.
pub const MAX_SECRET_CHARS: usize = 16 * 1024;

// === impl Engine ===

impl Engine {
    /// A workspace's secrets, values still sealed.
    pub async fn workspace_secrets(&self, tenant: &str) -> Result<Vec<Variable>, EngineError> {
        Ok(self
            .store()
            .variables(tenant, WORKSPACE_SCOPE, WORKSPACE_SCOPE)
            .await?)
    }

    /// Sets (`Some`) or removes (`None`) a workspace secret; whether anything changed.
    pub async fn set_workspace_secret(
        &self,
        tenant: &str,
        name: &str,
        value: Option<&str>,
        by: &str,
    ) -> Result<bool, EngineError> {
        if let Some(p) = secret::variable_name_problem(name) {
            return Err(EngineError::InvalidParameters {
                field: "name".into(),
                message: format!("secret name {name:?} {p}"),
            });
        }
        let stored = match value {
            None => None,
            Some(v) => {
                let problem = if v.is_empty() {
                    Some("is empty".to_string())
                } else if v.contains('\0') {
                    Some("contains a NUL character".to_string())
                } else if v.chars().count() > MAX_SECRET_CHARS {
                    Some(format!("is longer than {MAX_SECRET_CHARS} characters"))
                } else {
                    None
                };
                if let Some(p) = problem {
                    return Err(EngineError::InvalidParameters {
                        field: "value".into(),
                        message: format!("the value {p}"),
                    });
                }
                Some(self.seal_text(&slot(tenant, name), v)?)
            }
        };
        let changed = self
            .store()
            .change_variables(
                tenant,
                WORKSPACE_SCOPE,
                WORKSPACE_SCOPE,
                true,
                &[(name.to_string(), stored)],
                by,
            )
            .await?;
        Ok(!changed.is_empty())
    }

    /// A workspace secret's value.
    pub async fn open_workspace_secret(
        &self,
        tenant: &str,
        name: &str,
    ) -> Result<String, EngineError> {
        let found = self
            .workspace_secrets(tenant)
            .await?
            .into_iter()
            .find(|v| v.name == name)
            .ok_or_else(|| EngineError::SecretNotFound {
                workspace: tenant.to_string(),
                name: name.to_string(),
            })?;
        let sealed: Sealed = serde_json::from_str(&found.value)
            .map_err(|e| EngineError::Store(StoreError::Corrupt(e.to_string())))?;
        self.secret_keys()
            .open(&slot(tenant, name), &sealed)
            .map_err(EngineError::Secret)
    }

    /// A value as written in fraisier.yaml, with `${secret:NAME}` opened.
    pub async fn configured_value(&self, tenant: &str, value: &str) -> Result<String, EngineError> {
        match stored_secret_name(value) {
            Some(name) => self.open_workspace_secret(tenant, name).await,
            None => Ok(value.to_string()),
        }
    }

    /// How the server authenticates to a fraise's repository.
    pub(crate) async fn git_auth(
        &self,
        tenant: &str,
        f: &FraiseConfig,
    ) -> Result<GitAuth, EngineError> {
        let Some(git) = f.source.as_ref().map(|s| &s.git) else {
            return Ok(GitAuth::Anonymous);
        };
        match git.credential(f.git_provider.as_deref()) {
            // What a file or a terminal adds around a token is not part of it.
            GitCredential::Token { username, value } => Ok(GitAuth::Token {
                username: username.to_string(),
                token: self
                    .configured_value(tenant, value)
                    .await?
                    .trim()
                    .to_string(),
            }),
            GitCredential::SshKey(key) => Ok(GitAuth::SshKey {
                key: self.configured_value(tenant, key).await?,
            }),
            GitCredential::None => Ok(GitAuth::Anonymous),
        }
    }

    /// A git host's webhook secrets with each `${secret:NAME}` opened (from the `default`
    /// workspace: `webhooks` is top-level). A secret that cannot be opened is left out, with a
    /// warning: the others still verify deliveries. A signing token that cannot be opened
    /// leaves the host with nothing: every delivery is refused rather than checked less.
    pub async fn webhook_secrets(&self, host: GitHost) -> Option<HostSecrets> {
        let mut secrets = self.config().webhooks.host(host)?.clone();
        let mut values: Vec<(bool, &mut String)> = Vec::new();
        values.extend(secrets.secret.as_mut().map(|v| (false, v)));
        values.extend(secrets.token.as_mut().map(|v| (false, v)));
        values.extend(secrets.secrets.iter_mut().map(|v| (false, v)));
        values.extend(secrets.signing_token.as_mut().map(|v| (true, v)));
        let mut unusable = false;
        for (signing, v) in values {
            let Some(name) = stored_secret_name(v).map(str::to_string) else {
                continue;
            };
            match self.open_workspace_secret(DEFAULT_WORKSPACE, &name).await {
                Ok(plain) => *v = plain.trim().to_string(),
                Err(e) => {
                    tracing::warn!(host = host.as_str(), secret = %name, error = %e,
                        "a webhook secret cannot be opened; deliveries are checked without it");
                    v.clear();
                    unusable |= signing;
                }
            }
        }
        if unusable {
            return Some(HostSecrets::default());
        }
        Some(secrets)
    }

    /// Whether top-level configuration (webhook secrets) names this stored secret of the
    /// `default` workspace: it then guards every workspace, and only a server admin changes it.
    pub fn guards_the_server(&self, tenant: &str, name: &str) -> bool {
        if tenant != DEFAULT_WORKSPACE {
            return false;
        }
        let live = self.config();
        let w = &live.webhooks;
        let guards = [&w.github, &w.gitlab, &w.gitea, &w.bitbucket]
            .into_iter()
            .flatten()
            .any(|h| {
                h.secret
                    .iter()
                    .chain(&h.token)
                    .chain(&h.secrets)
                    .chain(&h.signing_token)
                    .any(|v| stored_secret_name(v) == Some(name))
            });
        guards
    }
}

fn slot(tenant: &str, name: &str) -> String {
    secret::slot(&agent_name(tenant, WORKSPACE_SCOPE), WORKSPACE_SCOPE, name)
}
