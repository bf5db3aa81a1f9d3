//! `fraisier.yaml`: typed, deserialized strictly, then validated as a whole, with every problem
//! reported by file and key path before anything starts.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::access::{default_required_roles, EnvironmentRules, RoleConfig, Roles};
use crate::duration::Millis;
use crate::names::{name_problem, version_problem};
use crate::rate::RateLimits;
use crate::service::{HealthCheckSpec, ProbeKind};
use crate::strategy::{Strategy, StrategyConfig};

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    /// Custom roles beside the built-in ones (seed 003's seven and `admin`).
    #[serde(default)]
    pub roles: BTreeMap<String, RoleConfig>,
    /// The `default` workspace's environments, as written at the top level; moved into
    /// `workspaces` when parsed (read them through [`Config::scope`]).
    #[serde(default, rename = "environments", skip_serializing)]
    default_environments: BTreeMap<String, EnvironmentConfig>,
    #[serde(default, rename = "fraises", skip_serializing)]
    default_fraises: BTreeMap<String, FraiseConfig>,
    /// Every workspace, `default` included once parsed.
    #[serde(default)]
    pub workspaces: BTreeMap<String, WorkspaceConfig>,
    /// What git hosts sign their webhook deliveries with.
    #[serde(default, skip_serializing)]
    pub webhooks: WebhooksConfig,
    /// Told of every run's events (as well as the environment's and the fraise's own).
    #[serde(default, skip_serializing)]
    pub notifications: Vec<NotificationConfig>,
    /// The mail server `email` notifications are sent through.
    #[serde(default, skip_serializing)]
    pub smtp: Option<SmtpConfig>,
}

/// The SMTP server that sends `email` notifications. `password` may be `${ENV}`, read at load.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpConfig {
    pub host: String,
    /// Default: 587 with `starttls`, 465 with `tls`, 25 with `none`.
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub tls: SmtpTls,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    /// The sender, `Name <address>` or a bare address.
    pub from: String,
}

impl std::fmt::Debug for SmtpConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpConfig")
            .field("host", &self.host)
            .field("port", &self.port())
            .field("tls", &self.tls)
            .field("username", &self.username)
            .field("from", &self.from)
            .finish_non_exhaustive()
    }
}

impl SmtpConfig {
    pub fn port(&self) -> u16 {
        self.port.unwrap_or(match self.tls {
            SmtpTls::Starttls => 587,
            SmtpTls::Tls => 465,
            SmtpTls::None => 25,
        })
    }
}

/// How the connection to the SMTP server is protected.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SmtpTls {
    /// Plain connection upgraded with STARTTLS, which the server must offer.
    #[default]
    Starttls,
    /// TLS from the first byte (SMTPS).
    Tls,
    /// No encryption: allowed only to a server on this machine.
    None,
}

/// Somewhere a run's events are announced.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotificationConfig {
    #[serde(rename = "type")]
    pub kind: NotificationKind,
    /// Where the announcement is POSTed (an incoming-webhook URL); `${ENV}` is read at load.
    /// Not for `email`.
    #[serde(default)]
    pub url: String,
    /// `email` only: the recipients.
    #[serde(default)]
    pub to: Vec<String>,
    /// `webhook` only: the key of the `X-Fraisier-Signature` HMAC-SHA256 of the body.
    #[serde(default)]
    pub secret: Option<String>,
    #[serde(default = "every_notification_event")]
    pub on: Vec<NotifyOn>,
}

impl std::fmt::Debug for NotificationConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL of an incoming webhook is itself a credential.
        f.debug_struct("NotificationConfig")
            .field("kind", &self.kind)
            .field("on", &self.on)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NotificationKind {
    /// JSON, signed.
    Webhook,
    Slack,
    Discord,
    /// A Microsoft Teams incoming webhook.
    Teams,
    /// Plain-text mail through the top-level `smtp` server.
    Email,
}

/// The run events a notification may be sent for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NotifyOn {
    Started,
    Succeeded,
    Failed,
    RolledBack,
    ApprovalRequested,
}

fn every_notification_event() -> Vec<NotifyOn> {
    vec![
        NotifyOn::Started,
        NotifyOn::Succeeded,
        NotifyOn::Failed,
        NotifyOn::RolledBack,
        NotifyOn::ApprovalRequested,
    ]
}

impl NotificationKind {
    pub fn as_str(self) -> &'static str {
        match self {
            NotificationKind::Webhook => "webhook",
            NotificationKind::Slack => "slack",
            NotificationKind::Discord => "discord",
            NotificationKind::Teams => "teams",
            NotificationKind::Email => "email",
        }
    }
}

impl NotifyOn {
    pub fn as_str(self) -> &'static str {
        match self {
            NotifyOn::Started => "started",
            NotifyOn::Succeeded => "succeeded",
            NotifyOn::Failed => "failed",
            NotifyOn::RolledBack => "rolled_back",
            NotifyOn::ApprovalRequested => "approval_requested",
        }
    }
}

/// The stored secret a value names (`${secret:NAME}`), if it names one.
pub fn stored_secret_name(value: &str) -> Option<&str> {
    value.strip_prefix("${secret:")?.strip_suffix('}')
}

/// Reads a `${ENV_VAR}` value from the environment; leaves `${secret:NAME}` for when it is
/// used (`stored`: whether a stored secret may be named here) and anything else as written.
fn resolve_value(
    key: &str,
    v: &mut String,
    stored: bool,
    lookup: &impl Fn(&str) -> Option<String>,
    problems: &mut Vec<Problem>,
) {
    if let Some(name) = stored_secret_name(v) {
        let problem = if !stored {
            Some("a stored secret cannot be named here: use ${ENV_VAR}".to_string())
        } else {
            crate::secret::variable_name_problem(name)
                .map(|p| format!("stored secret name {name:?} {p}"))
        };
        if let Some(message) = problem {
            problems.push(Problem {
                key: key.to_string(),
                message,
            });
        }
        return;
    }
    if let Some(name) = v.strip_prefix("${").and_then(|r| r.strip_suffix('}')) {
        match lookup(name) {
            Some(value) if !value.is_empty() => *v = value,
            _ => problems.push(Problem {
                key: key.to_string(),
                message: format!("the environment variable {name} is not set"),
            }),
        }
    }
}

/// Reads a fraise's git token from where it is kept; refuses one written in the file.
fn resolve_git_credentials(
    at: &str,
    f: &mut FraiseConfig,
    lookup: &impl Fn(&str) -> Option<String>,
    problems: &mut Vec<Problem>,
) {
    let Some(git) = f.source.as_mut().map(|s| &mut s.git) else {
        return;
    };
    for (field, value) in [
        ("token", git.token.as_mut()),
        ("ssh_key", git.ssh_key.as_mut()),
    ] {
        let Some(value) = value else { continue };
        let key = format!("{at}source.git.{field}");
        if !value.starts_with("${") {
            problems.push(Problem {
                key,
                message: format!("a {} is never written in fraisier.yaml: store it (fraisier secret workspace set NAME) and write \"${{secret:NAME}}\", or read it from the server's environment with \"${{ENV_VAR}}\"", if field == "token" { "token" } else { "deploy key" }),
            });
            *value = String::new();
            continue;
        }
        resolve_value(&key, value, true, lookup, problems);
    }
}

/// Checks a list of notifications and reads their `${ENV}` values; problems name the key.
fn resolve_notifications(
    at: &str,
    list: &mut [NotificationConfig],
    smtp: bool,
    lookup: &impl Fn(&str) -> Option<String>,
    problems: &mut Vec<Problem>,
) {
    for (i, n) in list.iter_mut().enumerate() {
        let key = format!("{at}notifications[{i}]");
        for (field, value) in [("url", Some(&mut n.url)), ("secret", n.secret.as_mut())] {
            let Some(v) = value else { continue };
            resolve_value(&format!("{key}.{field}"), v, false, lookup, problems);
        }
        if n.kind == NotificationKind::Email {
            if !smtp {
                problems.push(Problem {
                    key: format!("{key}.type"),
                    message: "email needs a mail server: add a top-level smtp: {host, from}".into(),
                });
            }
            if n.to.is_empty() {
                problems.push(Problem {
                    key: format!("{key}.to"),
                    message: "name at least one recipient".into(),
                });
            }
            for (j, to) in n.to.iter().enumerate() {
                if let Some(why) = mailbox_problem(to) {
                    problems.push(Problem {
                        key: format!("{key}.to[{j}]"),
                        message: why,
                    });
                }
            }
            if !n.url.is_empty() {
                problems.push(Problem {
                    key: format!("{key}.url"),
                    message: "an email notification has recipients (to), not a url".into(),
                });
            }
        } else if !n.to.is_empty() {
            problems.push(Problem {
                key: format!("{key}.to"),
                message: "only an email notification has recipients".into(),
            });
        } else if !(n.url.starts_with("https://") || n.url.starts_with("http://")) {
            problems.push(Problem {
                key: format!("{key}.url"),
                message: "must be an http:// or https:// URL".into(),
            });
        }
        if n.secret.as_ref().is_some_and(|s| s.len() < 8) {
            problems.push(Problem {
                key: format!("{key}.secret"),
                message: "needs at least 8 characters".into(),
            });
        }
        if n.secret.is_some() && n.kind != NotificationKind::Webhook {
            problems.push(Problem {
                key: format!("{key}.secret"),
                message: "only a webhook notification is signed".into(),
            });
        }
        if n.on.is_empty() {
            problems.push(Problem {
                key: format!("{key}.on"),
                message: "name at least one of started, succeeded, failed, rolled_back, approval_requested".into(),
            });
        }
    }
}

/// Why `text` is not a mail address (`local@domain`, or `Name <local@domain>`), if it is not.
/// A first filter with a clear message; the mailer parses it fully when it sends.
fn mailbox_problem(text: &str) -> Option<String> {
    let address = match (text.find('<'), text.strip_suffix('>')) {
        (Some(i), Some(rest)) => &rest[i + 1..],
        _ => text,
    };
    let ok = address.split_once('@').is_some_and(|(local, domain)| {
        !local.is_empty() && !domain.is_empty() && !domain.starts_with('.')
    }) && !address
        .chars()
        .any(|c| c.is_whitespace() || c == '<' || c == '>' || c == ',');
    (!ok).then(|| {
        format!("{text:?} is not a mail address (user@example.com or Name <user@example.com>)")
    })
}

impl SmtpConfig {
    /// Reads `${ENV}` values and checks the block; problems name the key.
    fn resolve(&mut self, lookup: &impl Fn(&str) -> Option<String>, problems: &mut Vec<Problem>) {
        for (field, value) in [
            ("username", self.username.as_mut()),
            ("password", self.password.as_mut()),
        ] {
            let Some(v) = value else { continue };
            resolve_value(&format!("smtp.{field}"), v, false, lookup, problems);
        }
        if self.host.trim().is_empty() || self.host.contains(['/', ' ', '@']) {
            problems.push(Problem {
                key: "smtp.host".into(),
                message: "a host name or address, without scheme or port".into(),
            });
        }
        if self.port == Some(0) {
            problems.push(Problem {
                key: "smtp.port".into(),
                message: "must be between 1 and 65535".into(),
            });
        }
        if self.username.is_some() != self.password.is_some() {
            problems.push(Problem {
                key: if self.username.is_some() {
                    "smtp.password"
                } else {
                    "smtp.username"
                }
                .into(),
                message: "username and password go together".into(),
            });
        }
        let local = matches!(
            self.host.as_str(),
            "localhost" | "127.0.0.1" | "::1" | "[::1]"
        );
        if self.tls == SmtpTls::None && !local {
            problems.push(Problem {
                key: "smtp.tls".into(),
                message: format!(
                    "none sends mail (and any password) in clear: only to a server on this machine, not {}; use starttls or tls",
                    self.host
                ),
            });
        }
        if let Some(why) = mailbox_problem(&self.from) {
            problems.push(Problem {
                key: "smtp.from".into(),
                message: why,
            });
        }
    }
}

/// The secrets each git host's deliveries are checked with (`POST /webhooks/{provider}`).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhooksConfig {
    #[serde(default)]
    pub github: Option<HostSecrets>,
    #[serde(default)]
    pub gitlab: Option<HostSecrets>,
    /// Gitea, Forgejo and Gogs.
    #[serde(default)]
    pub gitea: Option<HostSecrets>,
    #[serde(default)]
    pub bitbucket: Option<HostSecrets>,
}

/// One host's secrets: `secret` (GitLab: `token`) and, while one is being rotated, more in
/// `secrets`; any of them is accepted. Each value may be `${ENV_VAR}`, read at load.
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostSecrets {
    #[serde(default)]
    pub secret: Option<String>,
    /// GitLab's word for it (`X-Gitlab-Token`).
    #[serde(default)]
    pub token: Option<String>,
    #[serde(default)]
    pub secrets: Vec<String>,
    /// GitLab's signing token (`whsec_…`), for its Standard-Webhooks signature.
    #[serde(default)]
    pub signing_token: Option<String>,
}

impl std::fmt::Debug for HostSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostSecrets")
            .field("secrets", &self.all().len())
            .field("signing_token", &self.signing_token.is_some())
            .finish()
    }
}

impl HostSecrets {
    /// Every accepted secret.
    pub fn all(&self) -> Vec<&str> {
        self.secret
            .iter()
            .chain(&self.token)
            .chain(&self.secrets)
            .map(String::as_str)
            .filter(|s| !s.is_empty())
            .collect()
    }
}

impl WebhooksConfig {
    pub fn host(&self, host: crate::webhook::GitHost) -> Option<&HostSecrets> {
        use crate::webhook::GitHost;
        match host {
            GitHost::Github => self.github.as_ref(),
            GitHost::Gitlab => self.gitlab.as_ref(),
            GitHost::Gitea => self.gitea.as_ref(),
            GitHost::Bitbucket => self.bitbucket.as_ref(),
        }
    }

    /// Replaces each `${NAME}` value with that environment variable; problems name the key.
    fn resolve_env(&mut self, lookup: impl Fn(&str) -> Option<String>) -> Vec<Problem> {
        let mut problems = Vec::new();
        for (host, secrets) in [
            ("github", &mut self.github),
            ("gitlab", &mut self.gitlab),
            ("gitea", &mut self.gitea),
            ("bitbucket", &mut self.bitbucket),
        ] {
            let Some(s) = secrets else { continue };
            let mut values: Vec<(String, &mut String)> = Vec::new();
            if let Some(v) = s.secret.as_mut() {
                values.push((format!("webhooks.{host}.secret"), v));
            }
            if let Some(v) = s.token.as_mut() {
                values.push((format!("webhooks.{host}.token"), v));
            }
            if let Some(v) = s.signing_token.as_mut() {
                values.push((format!("webhooks.{host}.signing_token"), v));
            }
            for (i, v) in s.secrets.iter_mut().enumerate() {
                values.push((format!("webhooks.{host}.secrets[{i}]"), v));
            }
            let mut any = false;
            for (key, v) in values {
                // A stored secret is opened (and its length known) only when a delivery comes.
                let stored = stored_secret_name(v).is_some();
                resolve_value(&key, v, true, &lookup, &mut problems);
                if key.ends_with("signing_token") {
                    continue;
                }
                if !stored && v.len() < 8 {
                    problems.push(Problem {
                        key,
                        message: "a webhook secret needs at least 8 characters".into(),
                    });
                }
                any = true;
            }
            if !any {
                problems.push(Problem {
                    key: format!("webhooks.{host}"),
                    message: "give a secret (GitLab: token), or secrets: [...]".into(),
                });
            }
        }
        problems
    }
}

/// The workspace the top-level `environments` and `fraises` belong to.
pub const DEFAULT_WORKSPACE: &str = "default";

/// A workspace (seed 003; a tenant in seed 002): its environments and fraises.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WorkspaceConfig {
    #[serde(default)]
    pub display_name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub environments: BTreeMap<String, EnvironmentConfig>,
    #[serde(default)]
    pub fraises: BTreeMap<String, FraiseConfig>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// `sqlite://…` or `postgres://…`; default: SQLite in `data_dir`.
    #[serde(default)]
    pub database_url: Option<String>,
    #[serde(default = "default_token_ttl")]
    pub token_ttl: Millis,
    /// Releases kept per fraise × environment beyond the running ones, for rollback.
    #[serde(default = "default_keep_releases")]
    pub keep_releases: usize,
    /// The largest artifact an upload may carry, in bytes (default 2 GiB).
    #[serde(default = "default_max_artifact_bytes")]
    pub max_artifact_bytes: u64,
    /// Versions of each artifact a cleanup keeps, newest first (default 10).
    #[serde(default = "default_artifact_retention")]
    pub artifact_retention: u32,
    /// What a GiB of artifact storage costs a month, for `/artifacts/storage/costs`.
    #[serde(default)]
    pub storage_cost_per_gib_month: Option<f64>,
    #[serde(default = "default_currency")]
    pub storage_currency: String,
    /// Scans an artifact version (`sh -c`, with `$FRAISIER_ARTIFACT_FILE`) and prints its
    /// findings as JSON: an array, or `{"vulnerabilities": [...]}`.
    #[serde(default)]
    pub artifact_scanner: Option<String>,
    /// The one algorithm tokens are signed and accepted with.
    #[serde(default)]
    pub token_algorithm: TokenAlgorithm,
    /// Hosts besides the instances' own (loopback) that a request's `health_check_url` may
    /// name (seed 001); anything else is refused, so a request cannot point the server at
    /// its own network.
    #[serde(default)]
    pub allowed_health_hosts: Vec<String>,
    #[serde(default)]
    pub rate_limits: RateLimits,
    /// How often agents report to the server (default 5s).
    #[serde(default = "default_heartbeat_interval")]
    pub agent_heartbeat_interval: Millis,
    /// An agent silent this long is offline: nothing new is placed there (default 15s).
    #[serde(default = "default_offline_after")]
    pub agent_offline_after: Millis,
    /// How long a server's hold on a run lasts without renewal (renewed every third of it).
    /// When several servers share one PostgreSQL, a run whose server died is taken over by
    /// another this long after its last renewal (default 15s).
    #[serde(default = "default_run_lease")]
    pub run_lease: Millis,
    /// NATS with JetStream (`nats://host:4222`): every event is published there as well,
    /// once, in order. Absent: no bus.
    #[serde(default)]
    pub nats_url: Option<String>,
    /// The JetStream stream the events go to (created if missing).
    #[serde(default = "default_nats_stream")]
    pub nats_stream: String,
    /// Events are published on `<subject>.<workspace>.<fraise>.<environment>.<event type>`;
    /// the stream takes `<subject>.>`.
    #[serde(default = "default_nats_subject")]
    pub nats_subject: String,
}

/// HMAC-SHA2 JWT algorithms; only the configured one is accepted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
pub enum TokenAlgorithm {
    #[default]
    HS256,
    HS384,
    HS512,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EnvironmentConfig {
    #[serde(default)]
    pub display_name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub provider: Provider,
    /// Roles one of which is needed to deploy, roll back, cancel, approve or change secrets
    /// here. Default: seed 003's `environmentRestrictions` for `production`, `staging` and
    /// `development`, none elsewhere. `[]` lifts the restriction.
    #[serde(default)]
    pub required_roles: Option<Vec<String>>,
    /// Approvals a run here needs from other people before it starts.
    #[serde(default)]
    pub required_approvals: u32,
    /// Separation of duties: whoever asked for a run cannot approve it.
    #[serde(default = "yes")]
    pub require_sod: bool,
    /// How long a run waits for its approvals before it expires.
    #[serde(default = "default_approval_timeout")]
    pub approval_timeout: Millis,
    /// Told of every run here.
    #[serde(default, skip_serializing)]
    pub notifications: Vec<NotificationConfig>,
    /// Seed 003's `changeWindow`: when set, changes are accepted here only inside one of these
    /// recurring windows (outside, 422 `OUTSIDE_CHANGE_WINDOW`).
    #[serde(default)]
    pub change_windows: Vec<ChangeWindow>,
    /// Users who may change things here outside the change windows (an on-call engineer).
    #[serde(default)]
    pub change_window_exceptions: Vec<String>,
    /// Where it stands among the workspace's environments (seed 004's `orderIndex`); by
    /// default from its name (development 1, staging 3, production 4, others 0).
    #[serde(default)]
    pub order_index: Option<u32>,
    /// Whether it serves users; by default, whether it is called `production` or `prod`.
    #[serde(default)]
    pub is_production: Option<bool>,
    /// A run's time limit here when the request gives none (default 1 hour).
    #[serde(default)]
    pub deployment_timeout: Option<Millis>,
    /// How often instances are probed here when a fraise's `health_check` sets no `interval`.
    #[serde(default)]
    pub health_check_interval: Option<Millis>,
    /// Where promotions into it may come from.
    #[serde(default)]
    pub promotion_policy: crate::environment::PromotionPolicy,
}

// === impl EnvironmentConfig ===

impl EnvironmentConfig {
    /// An environment of this name with every default, as one made through the API starts.
    pub fn made(name: &str) -> EnvironmentConfig {
        EnvironmentConfig {
            required_roles: Some(
                default_required_roles(name)
                    .iter()
                    .map(|r| r.to_string())
                    .collect(),
            ),
            order_index: Some(crate::environment::default_order(name)),
            is_production: Some(matches!(name, "production" | "prod")),
            ..EnvironmentConfig::default()
        }
    }

    pub fn order(&self) -> u32 {
        self.order_index.unwrap_or(0)
    }

    pub fn production(&self) -> bool {
        self.is_production.unwrap_or(false)
    }
}

/// One opening of a change window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Opening {
    pub opened: chrono::DateTime<chrono::Utc>,
    pub closes: chrono::DateTime<chrono::Utc>,
}

/// A recurring window in which an environment accepts changes: it opens at each time the cron
/// expression names (in `timezone`) and stays open for `duration`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ChangeWindow {
    /// When it opens: five fields, e.g. `0 9 * * 1-5` (weekdays at 09:00).
    pub cron: String,
    /// How long it stays open, e.g. `8h`.
    pub duration: Millis,
    /// An IANA zone (`Europe/Paris`) or a fixed offset (`+02:00`); default UTC.
    #[serde(default)]
    pub timezone: Option<String>,
}

impl ChangeWindow {
    /// The opening in force at `t`, if the window is open then.
    pub fn open_at(&self, t: chrono::DateTime<chrono::Utc>) -> Result<Option<Opening>, String> {
        let (cron, zone) = self.parsed()?;
        let length = chrono::Duration::milliseconds(self.duration.0 as i64);
        // The latest opening in (t - length, t] is the one in force; openings may overlap.
        let mut latest = None;
        let mut from = t - length;
        for _ in 0..20_000 {
            match cron.next_after(from, &zone) {
                Some(o) if o <= t => {
                    latest = Some(o);
                    from = o;
                }
                _ => break,
            }
        }
        Ok(latest.map(|opened| Opening {
            opened,
            closes: opened + length,
        }))
    }

    /// When it next opens after `t`.
    pub fn next_opening(
        &self,
        t: chrono::DateTime<chrono::Utc>,
    ) -> Result<Option<chrono::DateTime<chrono::Utc>>, String> {
        let (cron, zone) = self.parsed()?;
        Ok(cron.next_after(t, &zone))
    }

    fn parsed(&self) -> Result<(crate::cron::CronSchedule, crate::cron::ScheduleZone), String> {
        let cron = crate::cron::CronSchedule::parse(&self.cron)?;
        let zone = crate::cron::ScheduleZone::parse(
            self.timezone.as_deref().unwrap_or("UTC"),
            &crate::cron::zoneinfo_dir(),
        )?;
        Ok((cron, zone))
    }
}

/// The most approvals an environment may require.
pub const MAX_REQUIRED_APPROVALS: u32 = 10;
/// How often instances are probed when neither the fraise nor its environment says.
pub const DEFAULT_PROBE_INTERVAL: Millis = Millis(1000);

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Provider {
    /// Instances run by the agent on the server's own host.
    #[default]
    Local,
}

#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize, Serialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum FraiseType {
    /// Long-running instances behind the router.
    #[default]
    Api,
    /// A job run once to completion per deploy.
    Etl,
    /// A job run on a cron schedule.
    Scheduled,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FraiseConfig {
    #[serde(rename = "type", default)]
    pub kind: FraiseType,
    #[serde(default)]
    pub description: Option<String>,
    /// The project (seed 003) the fraise belongs to in its workspace: a label lists filter by.
    #[serde(default)]
    pub project: Option<String>,
    #[serde(default)]
    pub git_provider: Option<String>,
    #[serde(default)]
    pub git_repo: Option<String>,
    #[serde(default)]
    pub git_branch: Option<String>,
    #[serde(default)]
    pub command: Option<String>,
    #[serde(default)]
    pub working_directory: Option<PathBuf>,
    /// Where releases come from; `{version}` is replaced by the version.
    #[serde(default)]
    pub artifact_path: Option<String>,
    /// Releases built from a git repository instead (exclusive with `artifact_path`).
    #[serde(default)]
    pub source: Option<SourceConfig>,
    /// Run in a clean checkout of the commit to deploy (`sh -c`); its output goes to the
    /// run's log.
    #[serde(default)]
    pub build: Option<String>,
    #[serde(default = "default_build_timeout")]
    pub build_timeout: Millis,
    /// What of the built tree becomes the release (default: all of it).
    #[serde(default)]
    pub artifact: Option<ArtifactConfig>,
    /// Database migrations run with each release, and undone exactly on rollback.
    #[serde(default)]
    pub migrations: Option<MigrationsConfig>,
    /// Told of this fraise's runs.
    #[serde(default, skip_serializing)]
    pub notifications: Vec<NotificationConfig>,
    #[serde(default)]
    pub versions: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub health_check: Option<HealthCheckConfig>,
    #[serde(default)]
    pub pre_deploy_hooks: Vec<String>,
    #[serde(default)]
    pub post_deploy_hooks: Vec<String>,
    #[serde(default)]
    pub dependencies: Vec<String>,
    /// `scheduled` fraises: a cron expression (five fields, or `@hourly`, `@daily` …).
    #[serde(default)]
    pub schedule: Option<String>,
    /// The zone `schedule` is read in: `UTC` (default), an offset or a tz database name.
    #[serde(default)]
    pub timezone: Option<String>,
    /// How long one scheduled execution may run before it is killed.
    #[serde(default = "default_schedule_timeout")]
    pub schedule_timeout: Millis,
    #[serde(default = "default_drain_timeout")]
    pub drain_timeout: Millis,
    #[serde(default = "default_stop_grace")]
    pub stop_grace: Millis,
    #[serde(default)]
    pub environments: BTreeMap<String, FraiseEnvironmentConfig>,
}

/// Where a fraise's releases are built from.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    pub git: GitSourceConfig,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GitSourceConfig {
    /// `https://…`, `ssh://…`, `git@host:path` or `file:///…`; default: the `git_provider`'s
    /// URL for `git_repo`.
    #[serde(default)]
    pub url: Option<String>,
    /// Deployed when a request names no version or ref (default `git_branch`, else `main`).
    #[serde(default)]
    pub branch: Option<String>,
    /// For a private repository over https: `${secret:NAME}` (a stored workspace secret,
    /// opened at each fetch) or `${ENV_VAR}` (read at load); never the token itself.
    #[serde(default)]
    pub token: Option<String>,
    /// Sent with `token` (default by `git_provider`: `x-access-token` for GitHub, `oauth2`
    /// for GitLab, `x-token-auth` for Bitbucket, else `git`).
    #[serde(default)]
    pub username: Option<String>,
    /// For a private repository over ssh: a deploy key (an OpenSSH private key without a
    /// passphrase), as `${secret:NAME}` or `${ENV_VAR}`; never the key itself.
    #[serde(default)]
    pub ssh_key: Option<String>,
}

/// The credential a git source names, as written: `${secret:NAME}`, or the value an
/// `${ENV_VAR}` held at load.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GitCredential<'a> {
    None,
    Token { username: &'a str, value: &'a str },
    SshKey(&'a str),
}

impl GitSourceConfig {
    pub fn credential<'a>(&'a self, provider: Option<&str>) -> GitCredential<'a> {
        match (&self.token, &self.ssh_key) {
            (Some(value), _) => GitCredential::Token {
                username: self
                    .username
                    .as_deref()
                    .unwrap_or_else(|| default_token_username(provider)),
                value,
            },
            (None, Some(key)) => GitCredential::SshKey(key),
            (None, None) => GitCredential::None,
        }
    }

    /// The user name a token is sent with.
    pub fn token_username(&self, provider: Option<&str>) -> String {
        self.username
            .clone()
            .unwrap_or_else(|| default_token_username(provider).into())
    }
}

/// What each host calls the user of an access token (unset `git_provider`: GitHub).
fn default_token_username(provider: Option<&str>) -> &'static str {
    match provider.unwrap_or("github") {
        "github" => "x-access-token",
        "gitlab" => "oauth2",
        "bitbucket" => "x-token-auth",
        _ => "git",
    }
}

/// Commands run (`sh -c`) in the release being deployed, with its variables and secrets.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MigrationsConfig {
    /// Applies what is pending.
    pub up: String,
    /// Reverts `$FRAISIER_MIGRATION_STEPS` migrations, the latest first.
    pub down: String,
    /// Prints the number of applied migrations (its last line).
    pub status: String,
    #[serde(default = "default_migration_timeout")]
    pub timeout: Millis,
}

fn default_migration_timeout() -> Millis {
    Millis::from_secs(600)
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ArtifactConfig {
    /// A directory of the built tree, relative to its root (`dist/`).
    pub path: String,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FraiseEnvironmentConfig {
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default = "default_instances")]
    pub instances: u32,
    #[serde(default)]
    pub strategy: Strategy,
    #[serde(default)]
    pub strategy_config: serde_json::Map<String, serde_json::Value>,
    /// Defaults for the other strategies, used when a request picks one of them.
    #[serde(default)]
    pub strategy_defaults: BTreeMap<Strategy, serde_json::Map<String, serde_json::Value>>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// A push to this branch deploys here (for a fraise built from git); absent: webhooks
    /// never deploy here.
    #[serde(default)]
    pub branch: Option<String>,
    /// A pushed tag deploys here.
    #[serde(default)]
    pub tags: bool,
    /// Where it runs: the agents carrying these labels, `instances` on each. Absent: the
    /// server's own agent (`local`).
    #[serde(default)]
    pub targets: Option<TargetSelector>,
}

/// Which agents a fraise runs on in an environment: those carrying some labels, or the
/// members of a target group of the environment (seed 004), one or the other.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TargetSelector {
    /// Every pair must match (`{role: web}`).
    #[serde(default)]
    pub labels: crate::agent::Labels,
    /// A target group of the environment, by name; created through the API
    /// (`POST /environments/{name}/target-groups`), so it is looked up when a run starts.
    #[serde(default)]
    pub group: Option<String>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProbeType {
    #[default]
    Http,
    Tcp,
    Command,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckConfig {
    #[serde(rename = "type", default)]
    pub kind: ProbeType,
    #[serde(default = "default_health_path")]
    pub path: String,
    #[serde(default)]
    pub expected_status: Vec<u16>,
    #[serde(default)]
    pub command: Option<String>,
    /// How often to probe; unset, the environment's `health_check_interval`, else 1s.
    #[serde(default)]
    pub interval: Option<Millis>,
    #[serde(default = "default_probe_timeout")]
    pub timeout: Millis,
    #[serde(default = "one")]
    pub healthy_threshold: u32,
    #[serde(default = "three")]
    pub unhealthy_threshold: u32,
}

/// One thing wrong in the configuration: where, and what was expected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {file}: {source}")]
    Read {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: {}", format_problems(.problems))]
    Invalid {
        file: PathBuf,
        problems: Vec<Problem>,
    },
}

fn default_heartbeat_interval() -> Millis {
    Millis::from_secs(5)
}
fn default_offline_after() -> Millis {
    Millis::from_secs(15)
}
fn default_run_lease() -> Millis {
    Millis::from_secs(15)
}
fn default_nats_stream() -> String {
    "FRAISIER_EVENTS".into()
}
fn default_nats_subject() -> String {
    "fraisier.events".into()
}
fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8000))
}
fn default_data_dir() -> PathBuf {
    PathBuf::from(".fraisier")
}
fn default_token_ttl() -> Millis {
    Millis::from_secs(3600)
}
fn default_keep_releases() -> usize {
    3
}
/// Why a repository URL is refused: only schemes git fetches without a shell, and no
/// option-like or control characters (the URL reaches `git` as an argument).
pub fn git_url_problem(url: &str) -> Option<String> {
    // `transport::address` would reach any git-remote-<transport> helper installed.
    if url.starts_with('-')
        || url.contains("::")
        || url.chars().any(|c| c.is_control() || c.is_whitespace())
    {
        return Some("must not start with '-' or contain spaces or control characters".into());
    }
    // A password or token in the URL would be shown wherever the URL is (logs, metadata,
    // the sources list): credentials belong to git's credential helpers or ssh keys.
    if let Some((_, rest)) = url.split_once("://") {
        let authority = rest.split('/').next().unwrap_or("");
        if authority
            .rsplit_once('@')
            .is_some_and(|(user, _)| user.contains(':'))
        {
            return Some(
                "must not carry a password or token (user:secret@): give git a credential helper or an ssh key".into(),
            );
        }
    }
    let scp_like = url.contains('@') && url.contains(':') && !url.contains("://");
    if !(scp_like
        || ["https://", "http://", "ssh://", "git://", "file://"]
            .iter()
            .any(|s| url.starts_with(s)))
    {
        return Some("must be an https://, ssh://, git://, file:// URL or user@host:path".into());
    }
    None
}

fn default_build_timeout() -> Millis {
    Millis::from_secs(30 * 60)
}
fn default_artifact_retention() -> u32 {
    10
}
fn default_currency() -> String {
    "USD".into()
}
fn default_max_artifact_bytes() -> u64 {
    2 << 30
}
fn yes() -> bool {
    true
}
fn default_approval_timeout() -> Millis {
    Millis::from_secs(24 * 3600)
}
fn default_drain_timeout() -> Millis {
    Millis::from_secs(30)
}
/// The longest `schedule_timeout` allowed: a week.
pub const MAX_SCHEDULE_TIMEOUT_MS: u64 = 7 * 24 * 3_600_000;

fn default_schedule_timeout() -> Millis {
    Millis::from_secs(3600)
}
fn default_stop_grace() -> Millis {
    Millis::from_secs(10)
}
fn default_instances() -> u32 {
    1
}
fn default_health_path() -> String {
    "/health".into()
}
fn default_probe_timeout() -> Millis {
    Millis(2000)
}
fn one() -> u32 {
    1
}
fn three() -> u32 {
    3
}

fn format_problems(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("\n  {}: {}", p.key, p.message))
        .collect()
}

// === impl ServerConfig ===

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: default_listen(),
            data_dir: default_data_dir(),
            database_url: None,
            token_ttl: default_token_ttl(),
            keep_releases: default_keep_releases(),
            max_artifact_bytes: default_max_artifact_bytes(),
            artifact_retention: default_artifact_retention(),
            storage_cost_per_gib_month: None,
            storage_currency: default_currency(),
            artifact_scanner: None,
            token_algorithm: TokenAlgorithm::default(),
            allowed_health_hosts: Vec::new(),
            rate_limits: RateLimits::default(),
            agent_heartbeat_interval: default_heartbeat_interval(),
            agent_offline_after: default_offline_after(),
            run_lease: default_run_lease(),
            nats_url: None,
            nats_stream: default_nats_stream(),
            nats_subject: default_nats_subject(),
        }
    }
}

// === impl WorkspaceConfig ===

impl WorkspaceConfig {
    /// The environment just before `name` by `order_index` (the highest one below it; among
    /// equals, the last by name).
    pub fn environment_before(&self, name: &str) -> Option<&str> {
        let order = self.environments.get(name)?.order();
        self.environments
            .iter()
            .filter(|(_, e)| e.order() < order)
            .max_by_key(|(n, e)| (e.order(), n.as_str()))
            .map(|(n, _)| n.as_str())
    }

    /// The environments by `order_index`, then name.
    pub fn environments_in_order(&self) -> Vec<(&String, &EnvironmentConfig)> {
        let mut all: Vec<_> = self.environments.iter().collect();
        all.sort_by_key(|(n, e)| (e.order(), n.as_str()));
        all
    }
}

// === impl EnvironmentConfig ===

impl Default for EnvironmentConfig {
    fn default() -> Self {
        EnvironmentConfig {
            display_name: None,
            description: None,
            provider: Provider::default(),
            required_roles: None,
            required_approvals: 0,
            require_sod: true,
            approval_timeout: default_approval_timeout(),
            notifications: Vec::new(),
            change_windows: Vec::new(),
            change_window_exceptions: Vec::new(),
            order_index: None,
            is_production: None,
            deployment_timeout: None,
            health_check_interval: None,
            promotion_policy: crate::environment::PromotionPolicy::default(),
        }
    }
}

impl EnvironmentConfig {
    /// What this environment asks of whoever changes it; `name` is its key.
    pub fn rules<'a>(&'a self, name: &'a str) -> EnvironmentRules<'a> {
        EnvironmentRules {
            name,
            required_roles: self.required_roles.as_deref().unwrap_or(&[]),
        }
    }
}

// === impl Config ===

impl Config {
    /// Reads, parses and validates a file; relative `data_dir` is resolved against the file's
    /// directory so the server finds the same data wherever it is started from.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: path.to_path_buf(),
            source,
        })?;
        let mut config = Config::parse(&text).map_err(|problems| ConfigError::Invalid {
            file: path.to_path_buf(),
            problems,
        })?;
        // Relative paths mean "next to the config file", wherever the server is started from;
        // made absolute, since the agent and instances run in other directories.
        let parent = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let base = std::fs::canonicalize(parent).ok();
        if let Some(base) = base {
            if config.server.data_dir.is_relative() {
                config.server.data_dir = base.join(&config.server.data_dir);
            }
            for f in config
                .workspaces
                .values_mut()
                .flat_map(|w| w.fraises.values_mut())
            {
                if let Some(wd) = f.working_directory.as_mut().filter(|wd| wd.is_relative()) {
                    *wd = base.join(&*wd);
                }
                if let Some(ap) = f
                    .artifact_path
                    .as_mut()
                    .filter(|ap| Path::new(ap.as_str()).is_relative())
                {
                    *ap = base.join(&*ap).to_string_lossy().into_owned();
                }
            }
        }
        Ok(config)
    }

    /// Parses YAML text and validates it; all problems found are returned together.
    pub fn parse(text: &str) -> Result<Config, Vec<Problem>> {
        let de = serde_yaml::Deserializer::from_str(text);
        let config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let message = e.inner().to_string();
            vec![Problem {
                key: if key == "." {
                    "(top level)".into()
                } else {
                    key
                },
                message,
            }]
        })?;
        let mut config = config;
        let top_level =
            !config.default_environments.is_empty() || !config.default_fraises.is_empty();
        let declared = config.workspaces.contains_key(DEFAULT_WORKSPACE);
        if top_level && declared {
            return Err(vec![Problem {
                key: format!("workspaces.{DEFAULT_WORKSPACE}"),
                message: "the default workspace's environments and fraises are written at the top level or under workspaces.default, not both".into(),
            }]);
        }
        let default = config
            .workspaces
            .entry(DEFAULT_WORKSPACE.to_string())
            .or_default();
        if top_level {
            default.environments = std::mem::take(&mut config.default_environments);
            default.fraises = std::mem::take(&mut config.default_fraises);
        }
        for (name, e) in config
            .workspaces
            .values_mut()
            .flat_map(|w| w.environments.iter_mut())
        {
            if e.required_roles.is_none() {
                e.required_roles = Some(
                    default_required_roles(name)
                        .iter()
                        .map(|r| r.to_string())
                        .collect(),
                );
            }
            let made = EnvironmentConfig::made(name);
            e.order_index = e.order_index.or(made.order_index);
            e.is_production = e.is_production.or(made.is_production);
        }
        let lookup = |name: &str| std::env::var(name).ok();
        let mut problems = config.webhooks.resolve_env(lookup);
        if let Some(smtp) = config.smtp.as_mut() {
            smtp.resolve(&lookup, &mut problems);
        }
        let smtp = config.smtp.is_some();
        resolve_notifications("", &mut config.notifications, smtp, &lookup, &mut problems);
        for (ws_name, ws) in config.workspaces.iter_mut() {
            let prefix = if ws_name == DEFAULT_WORKSPACE {
                String::new()
            } else {
                format!("workspaces.{ws_name}.")
            };
            for (name, e) in ws.environments.iter_mut() {
                let at = format!("{prefix}environments.{name}.");
                resolve_notifications(&at, &mut e.notifications, smtp, &lookup, &mut problems);
            }
            for (name, f) in ws.fraises.iter_mut() {
                let at = format!("{prefix}fraises.{name}.");
                resolve_notifications(&at, &mut f.notifications, smtp, &lookup, &mut problems);
                resolve_git_credentials(&at, f, &lookup, &mut problems);
            }
        }
        problems.extend(config.validate());
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(problems)
        }
    }

    /// Rules that span fields; each problem names its key.
    pub fn validate(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        let mut bad = |key: String, message: String| out.push(Problem { key, message });
        let roles = match Roles::new(&self.roles) {
            Ok(r) => r,
            Err(problems) => {
                for (key, message) in problems {
                    bad(format!("roles.{key}"), message);
                }
                Roles::builtin()
            }
        };
        let (every, after) = (
            self.server.agent_heartbeat_interval,
            self.server.agent_offline_after,
        );
        if every.0 < 100 {
            bad(
                "server.agent_heartbeat_interval".into(),
                "must be at least 100ms".into(),
            );
        }
        if after <= every {
            bad(
                "server.agent_offline_after".into(),
                format!(
                    "must be longer than server.agent_heartbeat_interval ({}), or every agent would flap offline",
                    every
                ),
            );
        }
        if self.server.run_lease.0 < 1_000 || self.server.run_lease.0 > 600_000 {
            bad(
                "server.run_lease".into(),
                "must be between 1s and 10m".into(),
            );
        }
        if let Some(url) = &self.server.nats_url {
            if !["nats://", "tls://"].iter().any(|p| url.starts_with(p)) {
                bad(
                    "server.nats_url".into(),
                    "must be nats://host:port (or tls://host:port)".into(),
                );
            }
        }
        let token_ok = |t: &str| {
            !t.is_empty()
                && t.len() <= 64
                && t.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        };
        if !token_ok(&self.server.nats_stream) {
            bad(
                "server.nats_stream".into(),
                "1 to 64 letters, digits, '_' or '-'".into(),
            );
        }
        if !self.server.nats_subject.split('.').all(token_ok) {
            bad(
                "server.nats_subject".into(),
                "tokens of letters, digits, '_' or '-' separated by dots, no wildcards".into(),
            );
        }
        let mut ports: BTreeMap<u16, String> = BTreeMap::new();
        for (ws_name, ws) in &self.workspaces {
            let prefix = if ws_name == DEFAULT_WORKSPACE {
                String::new()
            } else {
                if let Some(p) = name_problem(ws_name) {
                    bad(
                        format!("workspaces.{ws_name}"),
                        format!("invalid workspace name: {p}"),
                    );
                }
                format!("workspaces.{ws_name}.")
            };
            validate_workspace(&prefix, ws, &roles, &self.roles, &mut ports, &mut bad);
        }
        out
    }

    /// A workspace's environments and fraises; a workspace the file does not declare (one
    /// made through the API) has none.
    pub fn scope(&self, workspace: &str) -> &WorkspaceConfig {
        static EMPTY: std::sync::OnceLock<WorkspaceConfig> = std::sync::OnceLock::new();
        self.workspaces
            .get(workspace)
            .unwrap_or_else(|| EMPTY.get_or_init(WorkspaceConfig::default))
    }

    /// A fraise of the default workspace.
    pub fn fraise(&self, name: &str) -> Option<&FraiseConfig> {
        self.scope(DEFAULT_WORKSPACE).fraises.get(name)
    }
}

/// The rules of one workspace's environments and fraises; keys are prefixed with `prefix`
/// (empty for `default`, written at the top level). Router ports are the agent's, so they are
/// checked across workspaces.
fn validate_workspace(
    prefix: &str,
    ws: &WorkspaceConfig,
    roles: &Roles,
    custom_roles: &BTreeMap<String, RoleConfig>,
    ports: &mut BTreeMap<u16, String>,
    bad: &mut impl FnMut(String, String),
) {
    for (name, e) in &ws.environments {
        if let Some(p) = name_problem(name) {
            bad(
                format!("{prefix}environments.{name}"),
                format!("invalid environment name: {p}"),
            );
        }
        for (i, r) in e.required_roles.iter().flatten().enumerate() {
            if !roles.contains(r) && !custom_roles.contains_key(r) {
                bad(
                    format!("{prefix}environments.{name}.required_roles[{i}]"),
                    format!(
                        "unknown role {r:?} (built-in roles: {}; add others under `roles`)",
                        roles
                            .iter()
                            .map(|r| r.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                );
            }
        }
        for (field, message) in crate::environment::EnvironmentSettings::of(e).problems() {
            bad(format!("{prefix}environments.{name}.{field}"), message);
        }
        if e.approval_timeout.0 < 1000 || e.approval_timeout.0 > 30 * 24 * 3_600_000 {
            bad(
                format!("{prefix}environments.{name}.approval_timeout"),
                "must be between 1s and 30 days".into(),
            );
        }
        for (i, w) in e.change_windows.iter().enumerate() {
            let at = format!("{prefix}environments.{name}.change_windows[{i}]");
            if let Err(e) = crate::cron::CronSchedule::parse(&w.cron) {
                bad(
                    format!("{at}.cron"),
                    format!("invalid cron expression {:?}: {e}", w.cron),
                );
            }
            if let Some(zone) = &w.timezone {
                if let Err(e) = crate::cron::ScheduleZone::parse(zone, &crate::cron::zoneinfo_dir())
                {
                    bad(format!("{at}.timezone"), e);
                }
            }
            if w.duration.0 < 60_000 || w.duration.0 > 7 * 24 * 3_600_000 {
                bad(
                    format!("{at}.duration"),
                    "must be between 1m and 7 days".into(),
                );
            }
        }
        if !e.change_window_exceptions.is_empty() && e.change_windows.is_empty() {
            bad(
                format!("{prefix}environments.{name}.change_window_exceptions"),
                "exceptions to change windows need change_windows".into(),
            );
        }
    }
    for (name, f) in &ws.fraises {
        let at = format!("{prefix}fraises.{name}");
        if let Some(p) = name_problem(name) {
            bad(at.clone(), format!("invalid fraise name: {p}"));
        }
        if let Some(p) = f.project.as_deref().and_then(name_problem) {
            bad(
                format!("{at}.project"),
                format!("invalid project name: {p}"),
            );
        }
        for (i, v) in f.versions.iter().enumerate() {
            if let Some(p) = version_problem(v) {
                bad(
                    format!("{at}.versions[{i}]"),
                    format!("invalid version {v:?}: {p}"),
                );
            }
        }
        if f.source.is_some() {
            if f.artifact_path.is_some() {
                bad(
                    format!("{at}.source"),
                    "a fraise takes its releases from source or from artifact_path, not both"
                        .into(),
                );
            }
            match f.git_url() {
                None => bad(
                    format!("{at}.source.git.url"),
                    "give the repository's url, or git_repo (with git_provider)".into(),
                ),
                Some(url) => {
                    if let Some(p) = git_url_problem(&url) {
                        bad(format!("{at}.source.git.url"), p);
                    }
                    let git = f.source.as_ref().map(|s| &s.git);
                    // In clear only to this machine (a local mirror or proxy).
                    let local_http = ["http://127.0.0.1", "http://localhost", "http://[::1]"]
                        .iter()
                        .any(|p| {
                            url.strip_prefix(p)
                                .is_some_and(|rest| rest.starts_with([':', '/']))
                        });
                    if git.is_some_and(|g| g.token.is_some())
                        && !(url.starts_with("https://") || local_http)
                    {
                        bad(
                            format!("{at}.source.git.token"),
                            format!("a token is sent over https (or plain http to this machine only); {url} is neither"),
                        );
                    }
                    let ssh = url.starts_with("ssh://")
                        || (!url.contains("://") && url.contains('@') && url.contains(':'));
                    if git.is_some_and(|g| g.ssh_key.is_some()) && !ssh {
                        bad(
                            format!("{at}.source.git.ssh_key"),
                            format!("a deploy key is used over ssh; {url} is not an ssh:// or user@host:path URL"),
                        );
                    }
                    if git.is_some_and(|g| g.ssh_key.is_some() && g.token.is_some()) {
                        bad(
                            format!("{at}.source.git.ssh_key"),
                            "give a token (https) or an ssh_key (ssh), not both".into(),
                        );
                    }
                    if git.is_some_and(|g| g.username.is_some() && g.token.is_none()) {
                        bad(
                            format!("{at}.source.git.username"),
                            "a username goes with a token".into(),
                        );
                    }
                }
            }
        }
        for (env_name, fe) in &f.environments {
            if (fe.branch.is_some() || fe.tags) && f.source.is_none() {
                bad(
                    format!("{at}.environments.{env_name}.branch"),
                    "webhooks deploy fraises built from git: add source.git".into(),
                );
            }
            if let Some(b) = &fe.branch {
                if b.is_empty() || b.starts_with('-') || b.contains("..") || b.contains(' ') {
                    bad(
                        format!("{at}.environments.{env_name}.branch"),
                        format!("{b:?} is not a branch name"),
                    );
                }
            }
        }
        if let Some(m) = &f.migrations {
            for (key, command) in [("up", &m.up), ("down", &m.down), ("status", &m.status)] {
                if command.trim().is_empty() {
                    bad(
                        format!("{at}.migrations.{key}"),
                        "must be a command (run with sh -c in the release)".into(),
                    );
                }
            }
            if m.timeout.0 == 0 || m.timeout.0 > 24 * 3_600_000 {
                bad(
                    format!("{at}.migrations.timeout"),
                    "must be more than 0 and at most 24h".into(),
                );
            }
        }
        if (f.build.is_some() || f.artifact.is_some()) && f.source.is_none() {
            bad(
                format!("{at}.build"),
                "build and artifact apply to releases built from a source: add source.git".into(),
            );
        }
        if let Some(a) = &f.artifact {
            let p = Path::new(&a.path);
            if a.path.is_empty()
                || p.is_absolute()
                || p.components()
                    .any(|c| matches!(c, std::path::Component::ParentDir))
            {
                bad(
                    format!("{at}.artifact.path"),
                    "a directory inside the built tree, e.g. dist/".into(),
                );
            }
        }
        if f.build_timeout.0 == 0 || f.build_timeout.0 > 24 * 3_600_000 {
            bad(
                format!("{at}.build_timeout"),
                "must be more than 0 and at most 24h".into(),
            );
        }
        if f.command.as_deref().is_none_or(|c| c.trim().is_empty()) {
            bad(
                format!("{at}.command"),
                "a command to run is required (run with sh -c)".into(),
            );
        }
        match (&f.schedule, f.kind) {
            (None, FraiseType::Scheduled) => bad(
                format!("{at}.schedule"),
                "a scheduled fraise needs a cron schedule, e.g. \"0 3 * * *\" or \"@hourly\""
                    .into(),
            ),
            (Some(_), FraiseType::Api | FraiseType::Etl) => bad(
                format!("{at}.schedule"),
                "only fraises of type scheduled run on a schedule".into(),
            ),
            (Some(expr), FraiseType::Scheduled) => {
                if let Err(e) = crate::cron::CronSchedule::parse(expr) {
                    bad(
                        format!("{at}.schedule"),
                        format!("invalid cron expression {expr:?}: {e}"),
                    );
                }
            }
            (None, _) => {}
        }
        if let Some(zone) = &f.timezone {
            if let Err(e) = crate::cron::ScheduleZone::parse(zone, &crate::cron::zoneinfo_dir()) {
                bad(format!("{at}.timezone"), e);
            }
        }
        if f.schedule_timeout.0 == 0 || f.schedule_timeout.0 > MAX_SCHEDULE_TIMEOUT_MS {
            bad(
                format!("{at}.schedule_timeout"),
                "must be more than 0 and at most 7 days".into(),
            );
        }
        if let Some(hc) = &f.health_check {
            if hc.kind == ProbeType::Command && hc.command.is_none() {
                bad(
                    format!("{at}.health_check.command"),
                    "a command health check needs `command`".into(),
                );
            }
            if hc.kind == ProbeType::Http && !hc.path.starts_with('/') {
                bad(
                    format!("{at}.health_check.path"),
                    "must start with '/'".into(),
                );
            }
            if hc.interval.is_some_and(|i| i.0 == 0) || hc.timeout.0 == 0 {
                bad(
                    format!("{at}.health_check"),
                    "interval and timeout must be above 0".into(),
                );
            }
            if hc.healthy_threshold == 0 || hc.unhealthy_threshold == 0 {
                bad(
                    format!("{at}.health_check"),
                    "thresholds must be at least 1".into(),
                );
            }
        }
        for (i, d) in f.dependencies.iter().enumerate() {
            if d == name {
                bad(
                    format!("{at}.dependencies[{i}]"),
                    "a fraise cannot depend on itself".into(),
                );
            } else if !ws.fraises.contains_key(d) {
                bad(
                    format!("{at}.dependencies[{i}]"),
                    format!("unknown fraise {d:?}"),
                );
            }
        }
        if f.environments.is_empty() {
            bad(
                format!("{at}.environments"),
                "declare at least one environment for this fraise".into(),
            );
        }
        for (env, fe) in &f.environments {
            let at = format!("{at}.environments.{env}");
            if !ws.environments.contains_key(env) {
                bad(
                    at.clone(),
                    format!("unknown environment {env:?} (declare it under `environments`)"),
                );
            }
            if fe.instances == 0 || fe.instances > 64 {
                bad(format!("{at}.instances"), "must be between 1 and 64".into());
            }
            if let Some(t) = &fe.targets {
                if let Some(p) = crate::agent::labels_problem(&t.labels) {
                    bad(format!("{at}.targets.labels"), p);
                }
                match &t.group {
                    Some(_) if !t.labels.is_empty() => bad(
                        format!("{at}.targets"),
                        "give `labels` or `group`, not both (a group can select by labels itself)"
                            .into(),
                    ),
                    Some(g) => {
                        if let Some(p) = crate::names::name_problem(g) {
                            bad(format!("{at}.targets.group"), p);
                        }
                    }
                    None => {}
                }
            }
            if f.kind == FraiseType::Api {
                match fe.port {
                    None | Some(0) => bad(
                        format!("{at}.port"),
                        "an api fraise needs the router's port (1-65535)".into(),
                    ),
                    Some(p) => {
                        if let Some(other) = ports.insert(p, format!("{prefix}{name}@{env}")) {
                            bad(
                                format!("{at}.port"),
                                format!("port {p} is already used by {other}"),
                            );
                        }
                    }
                }
            }
            if let Err(e) = StrategyConfig::parse(fe.strategy, &fe.strategy_config) {
                bad(format!("{at}.strategy_config.{}", e.field), e.message);
            }
            for (strategy, map) in &fe.strategy_defaults {
                if let Err(e) = StrategyConfig::parse(*strategy, map) {
                    bad(
                        format!("{at}.strategy_defaults.{strategy}.{}", e.field),
                        e.message,
                    );
                }
            }
        }
    }
}

// === impl FraiseConfig ===

impl FraiseConfig {
    /// How its instances are probed, in an environment whose `health_check_interval` is
    /// `environment_interval`.
    pub fn health_check_spec(
        &self,
        environment_interval: Option<Millis>,
    ) -> Option<HealthCheckSpec> {
        let hc = self.health_check.as_ref()?;
        let kind = match hc.kind {
            ProbeType::Http => ProbeKind::Http {
                path: hc.path.clone(),
                expected_status: hc.expected_status.clone(),
            },
            ProbeType::Tcp => ProbeKind::Tcp,
            ProbeType::Command => ProbeKind::Command {
                command: hc.command.clone().unwrap_or_default(),
            },
        };
        Some(HealthCheckSpec {
            kind,
            interval_ms: hc
                .interval
                .or(environment_interval)
                .map_or(DEFAULT_PROBE_INTERVAL.0, |i| i.0),
            timeout_ms: hc.timeout.0,
            healthy_threshold: hc.healthy_threshold,
            unhealthy_threshold: hc.unhealthy_threshold,
        })
    }

    /// The git repository releases are built from, if any: `source.git.url`, else the
    /// provider's URL for `git_repo`.
    pub fn git_url(&self) -> Option<String> {
        let git = &self.source.as_ref()?.git;
        if let Some(url) = &git.url {
            return Some(url.clone());
        }
        let repo = self.git_repo.as_deref()?;
        let host = match self.git_provider.as_deref().unwrap_or("github") {
            "gitlab" => "gitlab.com",
            "bitbucket" => "bitbucket.org",
            "codeberg" | "forgejo" => "codeberg.org",
            _ => "github.com",
        };
        Some(format!("https://{host}/{repo}.git"))
    }

    /// The branch deployed when a request names nothing.
    pub fn git_default_branch(&self) -> String {
        self.source
            .as_ref()
            .and_then(|s| s.git.branch.clone())
            .or_else(|| self.git_branch.clone())
            .unwrap_or_else(|| "main".into())
    }

    /// The artifact path for `version`, if the fraise has one.
    pub fn artifact_for(&self, version: &str) -> Option<PathBuf> {
        self.artifact_path
            .as_ref()
            .map(|p| PathBuf::from(p.replace("{version}", version)))
    }
}

impl fmt::Display for FraiseType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FraiseType::Api => "api",
            FraiseType::Etl => "etl",
            FraiseType::Scheduled => "scheduled",
        })
    }
}

impl std::str::FromStr for FraiseType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "api" => Ok(FraiseType::Api),
            "etl" => Ok(FraiseType::Etl),
            "scheduled" => Ok(FraiseType::Scheduled),
            _ => Err(format!(
                "unknown fraise type {s:?} (expected api, etl or scheduled)"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn repository_urls_carry_no_secrets_or_helpers() {
        for ok in [
            "https://github.com/org/app.git",
            "git@github.com:org/app.git",
            "ssh://git@host:22/org/app",
            "file:///srv/git/app.git",
        ] {
            assert_eq!(git_url_problem(ok), None, "{ok}");
        }
        for bad in [
            "https://user:token@github.com/org/app.git",
            "ext::sh -c touch% /tmp/x",
            "-oProxyCommand=x",
            "ftp://host/x",
        ] {
            assert!(git_url_problem(bad).is_some(), "{bad}");
        }
    }

    use super::*;

    const GOOD: &str = r#"
server:
  listen: "127.0.0.1:8000"
environments:
  production: { display_name: Production, description: Live environment, provider: local }
fraises:
  my_api:
    type: api
    command: "python3 -m http.server $PORT"
    versions: ["1.9.0", "2.0.0"]
    health_check: { type: http, path: /health, interval: 500ms, timeout: 2s, healthy_threshold: 1, unhealthy_threshold: 3 }
    environments:
      production: { port: 18080, instances: 2, strategy: rolling, strategy_config: {} }
"#;

    #[test]
    fn parses_the_documented_example() {
        let c = Config::parse(GOOD).unwrap();
        let f = c.fraise("my_api").unwrap();
        assert_eq!(f.environments["production"].instances, 2);
        assert_eq!(f.health_check.as_ref().unwrap().interval, Some(Millis(500)));
    }

    #[test]
    fn names_the_key_of_a_type_error() {
        let text = GOOD.replace("interval: 500ms", "interval: 5x");
        let problems = Config::parse(&text).unwrap_err();
        assert_eq!(problems[0].key, "fraises.my_api.health_check.interval");
        assert!(
            problems[0].message.contains("invalid duration unit"),
            "{:?}",
            problems
        );
    }

    #[test]
    fn names_the_key_of_an_unknown_field() {
        let text = GOOD.replace("instances: 2", "instancez: 2");
        let problems = Config::parse(&text).unwrap_err();
        assert!(
            problems[0]
                .key
                .starts_with("fraises.my_api.environments.production"),
            "{problems:?}"
        );
        assert!(problems[0].message.contains("instancez"));
    }

    #[test]
    fn reports_every_cross_field_problem() {
        let text = GOOD
            .replace("production: { port", "staging: { port")
            .replace(
                "strategy_config: {}",
                "strategy_config: { max_surge: 1, bogus: 2 }",
            );
        let problems = Config::parse(&text).unwrap_err();
        let keys: Vec<_> = problems.iter().map(|p| p.key.as_str()).collect();
        assert!(
            keys.contains(&"fraises.my_api.environments.staging"),
            "{keys:?}"
        );
        assert!(
            keys.contains(&"fraises.my_api.environments.staging.strategy_config.bogus"),
            "{keys:?}"
        );
    }
}

#[cfg(test)]
mod workspace_tests {
    use super::*;

    const TWO: &str = r#"
environments:
  production: {}
fraises:
  api:
    command: "exec true"
    environments:
      production: { port: 18080 }
workspaces:
  team-a:
    display_name: Team A
    environments:
      staging: { required_approvals: 1 }
    fraises:
      api:
        command: "exec true"
        environments:
          staging: { port: 18081 }
"#;

    #[test]
    fn the_top_level_is_the_default_workspace() {
        let c = Config::parse(TWO).unwrap();
        assert_eq!(c.workspaces.len(), 2);
        assert!(c.scope("default").fraises.contains_key("api"));
        assert!(c.scope("default").environments.contains_key("production"));
        let a = c.scope("team-a");
        assert_eq!(a.display_name.as_deref(), Some("Team A"));
        assert_eq!(a.environments["staging"].required_approvals, 1);
        assert!(c.scope("nobody").fraises.is_empty());
    }

    #[test]
    fn workspaces_are_validated_with_their_keys() {
        let p = Config::parse(&TWO.replace("port: 18081", "port: 18080")).unwrap_err();
        assert_eq!(
            p[0].key, "workspaces.team-a.fraises.api.environments.staging.port",
            "{p:?}"
        );
        assert!(
            p[0].message.contains("already used by api@production"),
            "{p:?}"
        );
        let p = Config::parse(&TWO.replace("staging: { port", "production: { port")).unwrap_err();
        assert_eq!(
            p[0].key, "workspaces.team-a.fraises.api.environments.production",
            "{p:?}"
        );
        let p = Config::parse(&TWO.replace("team-a:", "team a:")).unwrap_err();
        assert_eq!(p[0].key, "workspaces.team a", "{p:?}");
        let p = Config::parse(&format!("{TWO}  default:\n    fraises: {{}}\n")).unwrap_err();
        assert_eq!(p[0].key, "workspaces.default", "{p:?}");
    }
}

#[cfg(test)]
mod schedule_tests {
    use super::*;

    fn problems(fraise: &str) -> Vec<(String, String)> {
        let text = format!(
            "environments:\n  production: {{}}\nfraises:\n  nightly:\n{fraise}    command: ./run.sh\n    environments:\n      production: {{}}\n"
        );
        match Config::parse(&text) {
            Ok(_) => Vec::new(),
            Err(p) => p.into_iter().map(|p| (p.key, p.message)).collect(),
        }
    }

    #[test]
    fn scheduled_fraises_need_a_valid_schedule_and_zone() {
        assert_eq!(
            problems(
                "    type: scheduled\n    schedule: \"0 3 * * *\"\n    timezone: \"+02:00\"\n"
            ),
            vec![]
        );
        let p = problems("    type: scheduled\n");
        assert_eq!(p[0].0, "fraises.nightly.schedule", "{p:?}");
        let p = problems("    type: scheduled\n    schedule: \"0 27 * * *\"\n");
        assert_eq!(p[0].0, "fraises.nightly.schedule");
        assert!(p[0].1.contains("hour: 27 is out of range"), "{p:?}");
        let p = problems(
            "    type: scheduled\n    schedule: \"@daily\"\n    timezone: Nowhere/Atlantis\n",
        );
        assert_eq!(p[0].0, "fraises.nightly.timezone");
        assert!(p[0].1.contains("unknown time zone"), "{p:?}");
        let p = problems("    type: api\n    schedule: \"@daily\"\n");
        assert_eq!(p[0].0, "fraises.nightly.schedule");
        assert!(p[0].1.contains("only fraises of type scheduled"), "{p:?}");
    }
}

#[cfg(test)]
mod load_tests {
    use super::*;

    #[test]
    fn relative_paths_become_absolute_next_to_the_file() {
        let dir = std::env::temp_dir().join(format!("fraisier-load-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let text = tests_config().replace(
            "command:",
            "working_directory: \"..\"\n    artifact_path: \"releases/{version}\"\n    command:",
        );
        std::fs::write(dir.join("fraisier.yaml"), text).unwrap();
        let c = Config::load(&dir.join("fraisier.yaml")).unwrap();
        let real = std::fs::canonicalize(&dir).unwrap();
        assert_eq!(c.server.data_dir, real.join(".fraisier"));
        let f = c.fraise("my_api").unwrap();
        assert_eq!(
            f.working_directory.as_deref(),
            Some(real.join("..").as_path())
        );
        assert_eq!(f.artifact_for("1.0.0"), Some(real.join("releases/1.0.0")));
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn tests_config() -> String {
        r#"
environments:
  production: {}
fraises:
  my_api:
    command: "exec true"
    environments:
      production: { port: 18080 }
"#
        .to_string()
    }
}

#[cfg(test)]
mod change_window_tests {
    use super::ChangeWindow;
    use crate::duration::Millis;
    use chrono::{DateTime, Utc};

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn window(cron: &str, duration: &str, tz: Option<&str>) -> ChangeWindow {
        ChangeWindow {
            cron: cron.into(),
            duration: Millis::parse(duration).unwrap(),
            timezone: tz.map(str::to_string),
        }
    }

    #[test]
    fn weekday_office_hours_open_and_close() {
        // 2026-11-30 is a Monday.
        let w = window("0 9 * * 1-5", "8h", None);
        assert_eq!(
            w.open_at(at("2026-11-30T10:00:00Z")).unwrap(),
            Some(super::Opening {
                opened: at("2026-11-30T09:00:00Z"),
                closes: at("2026-11-30T17:00:00Z")
            })
        );
        assert_eq!(
            w.open_at(at("2026-11-30T09:00:00Z"))
                .unwrap()
                .map(|o| o.opened),
            Some(at("2026-11-30T09:00:00Z"))
        );
        assert_eq!(
            w.open_at(at("2026-11-30T17:00:00Z")).unwrap(),
            None,
            "closed at its end"
        );
        assert_eq!(w.open_at(at("2026-11-30T08:59:59Z")).unwrap(), None);
        assert_eq!(
            w.next_opening(at("2026-11-30T18:00:00Z")).unwrap(),
            Some(at("2026-12-01T09:00:00Z"))
        );
        // Saturday: closed until Monday.
        assert_eq!(w.open_at(at("2026-12-05T10:00:00Z")).unwrap(), None);
        assert_eq!(
            w.next_opening(at("2026-12-05T10:00:00Z")).unwrap(),
            Some(at("2026-12-07T09:00:00Z"))
        );
    }

    #[test]
    fn overlapping_openings_and_zones() {
        // Every 30 minutes for an hour: the latest opening is the one in force.
        let w = window("*/30 * * * *", "1h", None);
        assert_eq!(
            w.open_at(at("2026-11-30T10:45:00Z"))
                .unwrap()
                .map(|o| o.opened),
            Some(at("2026-11-30T10:30:00Z"))
        );
        // 09:00 at +02:00 is 07:00 UTC.
        let w = window("0 9 * * *", "1h", Some("+02:00"));
        assert!(w.open_at(at("2026-11-30T07:30:00Z")).unwrap().is_some());
        assert!(w.open_at(at("2026-11-30T09:30:00Z")).unwrap().is_none());
    }
}
