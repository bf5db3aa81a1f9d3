//! `fraisier doctor`: what a new installation needs, checked on this host — the
//! configuration, the data dir and its keys' modes, the server's port, the agent, each git
//! source and its branch, the database. One line per check, ok / warn / fail with how to fix;
//! exit 0 when all are ok, 1 with warnings, 2 with a failure.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use fraisier_model::config::{Config, ConfigError};

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Level {
    Ok,
    Warn,
    Fail,
}

struct Report {
    worst: Level,
    json: bool,
    lines: Vec<serde_json::Value>,
}

impl Report {
    fn say(&mut self, level: Level, check: &str, detail: impl Into<String>, fix: Option<&str>) {
        let detail = detail.into();
        self.worst = self.worst.max(level);
        let word = match level {
            Level::Ok => "ok",
            Level::Warn => "warn",
            Level::Fail => "fail",
        };
        if self.json {
            self.lines.push(
                serde_json::json!({ "check": check, "status": word, "detail": detail, "fix": fix }),
            );
        } else {
            match fix {
                Some(f) => println!("{word:<4}  {check}: {detail} — {f}"),
                None => println!("{word:<4}  {check}: {detail}"),
            }
        }
    }
}

pub async fn doctor(config: Option<&Path>, json: bool) -> Result<ExitCode> {
    let mut r = Report {
        worst: Level::Ok,
        json,
        lines: Vec::new(),
    };
    check(&mut r, config).await;
    if json {
        println!("{}", serde_json::Value::Array(r.lines));
    }
    Ok(match r.worst {
        Level::Ok => ExitCode::SUCCESS,
        Level::Warn => ExitCode::from(1),
        Level::Fail => ExitCode::from(2),
    })
}

async fn check(r: &mut Report, config: Option<&Path>) {
    let Some(path) = crate::config_path(config) else {
        r.say(
            Level::Fail,
            "config",
            "no fraisier.yaml here",
            Some("pass --config FILE, set FRAISIER_CONFIG, or run `fraisier init`"),
        );
        return;
    };
    let c = match Config::load(&path) {
        Ok(c) => {
            r.say(
                Level::Ok,
                "config",
                format!("{} loads", path.display()),
                None,
            );
            c
        }
        Err(ConfigError::Invalid { problems, .. }) => {
            r.say(
                Level::Fail,
                "config",
                format!("{} has {} problem(s)", path.display(), problems.len()),
                Some("`fraisier validate` lists them with their keys"),
            );
            return;
        }
        Err(e) => {
            r.say(Level::Fail, "config", e.to_string(), None);
            return;
        }
    };

    data_dir(r, &c.server.data_dir);

    // The server: answering on its address, or at least free to start there.
    let url = format!("http://{}", c.server.listen);
    let health = fraisier_client::ApiClient::new(&url, None)
        .get("/health", &[])
        .await
        .ok();
    match &health {
        Some(h) => r.say(
            Level::Ok,
            "server",
            format!("{url} answers ({})", h["status"].as_str().unwrap_or("?")),
            None,
        ),
        None => match std::net::TcpListener::bind(c.server.listen) {
            Ok(_) => r.say(
                Level::Warn,
                "server",
                format!("not running; {} is free", c.server.listen),
                Some("`fraisier serve`"),
            ),
            Err(e) => r.say(
                Level::Fail,
                "server",
                format!("{} is taken by another program ({e})", c.server.listen),
                Some("stop it, or set server.listen"),
            ),
        },
    }

    // The agent, straight through its control channel.
    let agent_dir = c.server.data_dir.join("agent");
    match fraisier_client::AgentClient::from_state_dir(&agent_dir) {
        Ok(a) => match tokio::time::timeout(Duration::from_secs(5), a.health()).await {
            Ok(Ok(_)) => r.say(
                Level::Ok,
                "agent",
                format!("answers at {}", a.control_url()),
                None,
            ),
            _ => r.say(
                Level::Fail,
                "agent",
                format!("{} does not answer", a.control_url()),
                Some("`fraisier serve` starts it; `fraisier agent stop` clears a stale one"),
            ),
        },
        Err(_) => r.say(
            Level::Warn,
            "agent",
            "not started yet",
            Some("`fraisier serve` starts one"),
        ),
    }

    // The database.
    match &c.server.database_url {
        None => r.say(Level::Ok, "database", "SQLite in the data dir", None),
        Some(url) => {
            let host_port = url
                .rsplit_once('@')
                .map_or(url.as_str(), |(_, rest)| rest)
                .trim_start_matches("postgres://")
                .trim_start_matches("postgresql://")
                .split('/')
                .next()
                .unwrap_or("")
                .to_string();
            let addr = if host_port.contains(':') {
                host_port
            } else {
                format!("{host_port}:5432")
            };
            let db = health
                .as_ref()
                .map(|h| h["components"]["database"]["status"].clone());
            match (
                db,
                tokio::time::timeout(
                    Duration::from_secs(5),
                    tokio::net::TcpStream::connect(&addr),
                )
                .await,
            ) {
                (Some(s), _) if s == "healthy" => {
                    r.say(Level::Ok, "database", "the server reaches it", None)
                }
                (_, Ok(Ok(_))) => r.say(Level::Ok, "database", format!("{addr} answers"), None),
                _ => r.say(
                    Level::Fail,
                    "database",
                    format!("{addr} does not answer"),
                    Some("start PostgreSQL, or check server.database_url"),
                ),
            }
        }
    }

    // Each git source: the repository answers and its branch exists.
    for (ws, w) in &c.workspaces {
        for (name, f) in &w.fraises {
            let Some(url) = f.git_url() else { continue };
            let branch = f.git_default_branch();
            let what = if ws == fraisier_model::config::DEFAULT_WORKSPACE {
                format!("source {name}")
            } else {
                format!("source {ws}.{name}")
            };
            use fraisier_engine::git::GitAuth;
            use fraisier_model::config::{stored_secret_name, GitCredential};
            let credential = f.source.as_ref().map_or(GitCredential::None, |s| {
                s.git.credential(f.git_provider.as_deref())
            });
            let (auth, written) = match credential {
                GitCredential::Token { username, value } => (
                    GitAuth::Token {
                        username: username.to_string(),
                        token: value.trim().to_string(),
                    },
                    Some(value),
                ),
                GitCredential::SshKey(key) => (
                    GitAuth::SshKey {
                        key: key.to_string(),
                    },
                    Some(key),
                ),
                GitCredential::None => (GitAuth::Anonymous, None),
            };
            if let Some(secret) = written.and_then(stored_secret_name) {
                r.say(
                    Level::Warn,
                    &what,
                    format!("{url} is read with the stored secret {secret}, which only the server opens"),
                    Some("ask the server: POST /api/v1/deployments/sources/validate {\"fraise\": …}"),
                );
                continue;
            }
            // The server's known hosts, read but never written: doctor may run as another
            // user, and a first look here must not decide what the server trusts.
            let known_hosts = std::env::temp_dir().join(format!(
                "fraisier-doctor-known-hosts-{}",
                std::process::id()
            ));
            let _ = std::fs::copy(c.server.data_dir.join("work/git/known_hosts"), &known_hosts);
            let session = match auth.session(&url, &known_hosts).await {
                Ok(s) => s,
                Err(e) => {
                    let _ = std::fs::remove_file(&known_hosts);
                    r.say(
                        Level::Fail,
                        &what,
                        e.to_string(),
                        Some("check source.git's credential"),
                    );
                    continue;
                }
            };
            let mut cmd = tokio::process::Command::new("git");
            cmd.args(["ls-remote", "--heads", "--", &url])
                .env("GIT_TERMINAL_PROMPT", "0")
                .stdin(std::process::Stdio::null())
                .kill_on_drop(true);
            session.apply(&mut cmd);
            let out = tokio::time::timeout(Duration::from_secs(30), cmd.output()).await;
            drop(session);
            let _ = std::fs::remove_file(&known_hosts);
            match out {
                Ok(Ok(o)) if o.status.success() => {
                    let text = String::from_utf8_lossy(&o.stdout);
                    if text
                        .lines()
                        .any(|l| l.ends_with(&format!("refs/heads/{branch}")))
                    {
                        r.say(
                            Level::Ok,
                            &what,
                            format!("{url} answers; {branch} exists"),
                            None,
                        );
                    } else {
                        r.say(
                            Level::Fail,
                            &what,
                            format!("{url} has no branch {branch}"),
                            Some("set source.git.branch"),
                        );
                    }
                }
                Ok(Ok(o)) => r.say(
                    Level::Fail,
                    &what,
                    format!("{url}: {}", git_reason(&String::from_utf8_lossy(&o.stderr))),
                    Some("check the URL, and that this host has credentials for it"),
                ),
                Ok(Err(e)) => r.say(
                    Level::Fail,
                    &what,
                    format!("cannot run git: {e}"),
                    Some("install git"),
                ),
                Err(_) => r.say(
                    Level::Fail,
                    &what,
                    format!("{url} did not answer in 30 s"),
                    None,
                ),
            }
        }
    }
}

/// The data dir is private to the server's user, and so are the keys in it.
fn data_dir(r: &mut Report, dir: &Path) {
    let Ok(meta) = std::fs::metadata(dir) else {
        r.say(
            Level::Warn,
            "data dir",
            format!("{} does not exist yet", dir.display()),
            Some("created on the first `fraisier serve`"),
        );
        return;
    };
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        r.say(
            Level::Warn,
            "data dir",
            format!("{} is mode {mode:o}: others may look in", dir.display()),
            Some(&format!("chmod 700 {}", dir.display())),
        );
    } else {
        r.say(
            Level::Ok,
            "data dir",
            format!("{} (mode {mode:o})", dir.display()),
            None,
        );
    }
    let mut open = Vec::new();
    for name in [
        fraisier_model::secret::KEY_FILE,
        fraisier_server::auth::KEY_FILE,
        fraisier_server::auth::ADMIN_PASSWORD_FILE,
        fraisier_server::auth::AGENT_TOKEN_FILE,
        fraisier_server::signing::SIGNING_KEY_FILE,
    ] {
        let p = dir.join(name);
        if let Ok(m) = std::fs::metadata(&p) {
            if m.permissions().mode() & 0o077 != 0 {
                open.push(p.display().to_string());
            }
        }
    }
    if open.is_empty() {
        r.say(Level::Ok, "keys", "readable by their owner only", None);
    } else {
        r.say(
            Level::Fail,
            "keys",
            format!("readable by others: {}", open.join(", ")),
            Some("chmod 600 them, and rotate what may have been read"),
        );
    }
}

/// git's own reason: its `fatal:` line, else its first line.
fn git_reason(stderr: &str) -> String {
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    lines
        .iter()
        .find(|l| l.starts_with("fatal:"))
        .or(lines.first())
        .map_or("git failed".to_string(), |l| l.to_string())
}
