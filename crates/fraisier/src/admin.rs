//! The CLI's access commands: users, API keys, the audit trail (and its verification on the
//! server's host), logout, who am I, and rotating the signing key.

use std::io::{BufRead, IsTerminal};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

use crate::commands::{client, print_json, s, Ctx};
use crate::credentials;
use crate::table::render;

#[derive(Subcommand)]
pub enum UserCommand {
    /// Add a user to your workspace (the password is read from stdin unless --password)
    Add {
        username: String,
        /// A role, e.g. developer; repeat for several (`fraisier user roles` lists them)
        #[arg(long = "role", short)]
        roles: Vec<String>,
        #[arg(long)]
        password: Option<String>,
        /// Another workspace (server admins only)
        #[arg(long)]
        workspace: Option<String>,
    },
    /// List the users of your workspace
    List,
    /// Replace a user's roles in your workspace
    SetRoles {
        username: String,
        roles: Vec<String>,
        #[arg(long)]
        workspace: Option<String>,
    },
    /// Disable a user: no sign-in, and their tokens and keys stop working at once
    Disable { username: String },
    /// Enable a disabled user
    Enable { username: String },
    /// Remove a user from your workspace
    Delete { username: String },
    /// Set a user's password (yours with --current, read from stdin unless given)
    Passwd {
        username: String,
        #[arg(long)]
        password: Option<String>,
        #[arg(long)]
        current: Option<String>,
    },
    /// The roles there are, with their permissions and environments
    Roles,
}

#[derive(Subcommand)]
pub enum ApiKeyCommand {
    /// Make a key (printed once); send it as X-API-Key or in FRAISIER_API_KEY
    Create {
        name: String,
        /// Default: your roles; never more than yours
        #[arg(long = "role", short)]
        roles: Vec<String>,
        /// RFC 3339, e.g. 2027-01-01T00:00:00Z
        #[arg(long)]
        expires_at: Option<String>,
    },
    List,
    Revoke {
        id: String,
    },
}

/// Workspaces (made and deleted by the admins of `default`) and the projects of yours.
#[derive(Subcommand)]
pub enum GroupCommand {
    /// List them
    List,
    /// Make one
    Create {
        name: String,
        #[arg(long)]
        display_name: Option<String>,
        #[arg(long)]
        description: Option<String>,
    },
    /// Delete one (a workspace must have no members and no runs; a project no fraise naming it)
    Delete { name: String },
}

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Records of your workspace, newest first
    List(AuditListArgs),
    /// Check the whole chain in the server's store (on the server's host); exit 1 at the first altered record
    Verify,
}

#[derive(Args)]
pub struct AuditListArgs {
    #[arg(long)]
    pub user: Option<String>,
    #[arg(long)]
    pub action: Option<String>,
    #[arg(long)]
    pub resource: Option<String>,
    /// success | failure | unauthenticated | denied | rate_limited
    #[arg(long)]
    pub outcome: Option<String>,
    #[arg(long)]
    pub since: Option<String>,
    #[arg(long)]
    pub until: Option<String>,
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
}

/// A password from the flag, or a line of stdin (prompted for on a terminal).
fn password(given: Option<String>, what: &str) -> Result<String> {
    if let Some(p) = given {
        return Ok(p);
    }
    if std::io::stdin().is_terminal() {
        eprint!("{what}: ");
    }
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    let p = line.trim_end_matches(['\n', '\r']).to_string();
    if p.is_empty() {
        bail!("no {what} given: pass --password or write it on stdin");
    }
    Ok(p)
}

fn user_rows(users: &[Value]) -> Vec<Vec<String>> {
    users
        .iter()
        .map(|u| {
            vec![
                s(&u["username"]),
                u["roles"]
                    .as_array()
                    .map(|r| r.iter().map(s).collect::<Vec<_>>().join(","))
                    .unwrap_or_default(),
                if u["disabled"] == true {
                    "disabled"
                } else {
                    "active"
                }
                .to_string(),
                s(&u["updated_at"]),
            ]
        })
        .collect()
}

fn show(ctx: &Ctx, v: &Value, line: impl FnOnce(&Value) -> String) {
    if ctx.json {
        print_json(v);
    } else {
        println!("{}", line(v));
    }
}

pub async fn user(ctx: &Ctx, cmd: UserCommand) -> Result<ExitCode> {
    let c = client(ctx).await?;
    match cmd {
        UserCommand::Add {
            username,
            roles,
            password: p,
            workspace,
        } => {
            let p = password(p, &format!("password for {username}"))?;
            let (_, v) = c
                .post(
                    "/users",
                    &json!({ "username": username, "password": p, "roles": roles, "workspace": workspace }),
                )
                .await?;
            show(ctx, &v, |v| {
                format!(
                    "added {} to {} as {}",
                    s(&v["username"]),
                    s(&v["workspace"]),
                    v["roles"]
                )
            });
        }
        UserCommand::List => {
            let v = c.get("/users", &[("limit", "500".into())]).await?;
            if ctx.json {
                print_json(&v);
            } else {
                let users = v["users"].as_array().map_or(&[][..], |u| u);
                print!(
                    "{}",
                    render(&["user", "roles", "status", "updated"], &user_rows(users))
                );
            }
        }
        UserCommand::SetRoles {
            username,
            roles,
            workspace,
        } => {
            let (_, v) = c
                .put(
                    &format!("/users/{username}"),
                    &json!({ "roles": roles, "workspace": workspace }),
                )
                .await?;
            show(ctx, &v, |v| {
                format!(
                    "{} in {}: {}",
                    s(&v["username"]),
                    s(&v["workspace"]),
                    v["roles"]
                )
            });
        }
        UserCommand::Disable { username } => set_disabled(ctx, &c, &username, true).await?,
        UserCommand::Enable { username } => set_disabled(ctx, &c, &username, false).await?,
        UserCommand::Delete { username } => {
            c.delete(&format!("/users/{username}")).await?;
            if !ctx.json {
                println!("removed {username}");
            }
        }
        UserCommand::Passwd {
            username,
            password: p,
            current,
        } => {
            let p = password(p, &format!("new password for {username}"))?;
            c.post(
                &format!("/users/{username}/password"),
                &json!({ "password": p, "current_password": current }),
            )
            .await?;
            if !ctx.json {
                println!("password of {username} changed");
            }
        }
        UserCommand::Roles => {
            let v = c.get("/roles", &[]).await?;
            if ctx.json {
                print_json(&v);
            } else {
                let rows: Vec<Vec<String>> = v["roles"]
                    .as_array()
                    .map_or(&[][..], |r| r)
                    .iter()
                    .map(|r| {
                        let join = |k: &str| {
                            r[k].as_array()
                                .map(|a| a.iter().map(s).collect::<Vec<_>>().join(","))
                                .unwrap_or_default()
                        };
                        vec![s(&r["name"]), join("permissions"), join("environments")]
                    })
                    .collect();
                print!(
                    "{}",
                    render(&["role", "permissions", "environments"], &rows)
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn set_disabled(
    ctx: &Ctx,
    c: &fraisier_client::ApiClient,
    username: &str,
    disabled: bool,
) -> Result<()> {
    let (_, v) = c
        .put(
            &format!("/users/{username}"),
            &json!({ "disabled": disabled }),
        )
        .await?;
    show(ctx, &v, |v| {
        format!(
            "{} {}",
            s(&v["username"]),
            if disabled { "disabled" } else { "enabled" }
        )
    });
    Ok(())
}

pub async fn api_key(ctx: &Ctx, cmd: ApiKeyCommand) -> Result<ExitCode> {
    let c = client(ctx).await?;
    match cmd {
        ApiKeyCommand::Create {
            name,
            roles,
            expires_at,
        } => {
            let roles = (!roles.is_empty()).then_some(roles);
            let (_, v) = c
                .post(
                    "/api-keys",
                    &json!({ "name": name, "roles": roles, "expires_at": expires_at }),
                )
                .await?;
            if ctx.json {
                print_json(&v);
            } else {
                eprintln!(
                    "{} ({}) with roles {}; this is the only time the key is shown:",
                    s(&v["id"]),
                    s(&v["name"]),
                    v["roles"]
                );
                println!("{}", s(&v["key"]));
            }
        }
        ApiKeyCommand::List => {
            let v = c.get("/api-keys", &[]).await?;
            if ctx.json {
                print_json(&v);
            } else {
                let rows: Vec<Vec<String>> = v["api_keys"]
                    .as_array()
                    .map_or(&[][..], |k| k)
                    .iter()
                    .map(|k| {
                        vec![
                            s(&k["id"]),
                            s(&k["name"]),
                            format!("{}…", s(&k["prefix"])),
                            s(&k["username"]),
                            k["roles"]
                                .as_array()
                                .map(|r| r.iter().map(s).collect::<Vec<_>>().join(","))
                                .unwrap_or_default(),
                            s(&k["status"]),
                            s(&k["last_used_at"]),
                        ]
                    })
                    .collect();
                print!(
                    "{}",
                    render(
                        &["id", "name", "key", "user", "roles", "status", "last used"],
                        &rows
                    )
                );
            }
        }
        ApiKeyCommand::Revoke { id } => {
            let (_, v) = c.delete(&format!("/api-keys/{id}")).await?;
            show(ctx, &v, |v| format!("{} revoked", s(&v["id"])));
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn audit(ctx: &Ctx, cmd: AuditCommand) -> Result<ExitCode> {
    match cmd {
        AuditCommand::Verify => verify(ctx).await,
        AuditCommand::List(a) => {
            let c = client(ctx).await?;
            let mut q: Vec<(&str, String)> = vec![("limit", a.limit.to_string())];
            for (k, v) in [
                ("user", a.user),
                ("action", a.action),
                ("resource", a.resource),
                ("outcome", a.outcome),
                ("since", a.since),
                ("until", a.until),
            ] {
                if let Some(v) = v {
                    q.push((k, v));
                }
            }
            let v = c.get("/audit", &q).await?;
            if ctx.json {
                print_json(&v);
            } else {
                let rows: Vec<Vec<String>> = v["audit"]
                    .as_array()
                    .map_or(&[][..], |r| r)
                    .iter()
                    .map(|r| {
                        vec![
                            s(&r["timestamp"]),
                            s(&r["user"]),
                            s(&r["action"]),
                            s(&r["resource"]),
                            format!("{} ({})", s(&r["outcome"]), s(&r["status"])),
                            s(&r["source"]),
                        ]
                    })
                    .collect();
                print!(
                    "{}",
                    render(
                        &["time", "user", "action", "resource", "outcome", "from"],
                        &rows
                    )
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Walks the chain in the store itself: a check that does not trust the server's answers.
async fn verify(ctx: &Ctx) -> Result<ExitCode> {
    let path = crate::config_path(ctx.config_path.as_deref()).context(
        "audit verify reads the server's store: run it where the server's fraisier.yaml is, or pass --config",
    )?;
    let config = fraisier_model::Config::load(&path)?;
    let store = fraisier_server::open_store(&config)
        .await
        .context("cannot open the server's store")?;
    let (checked, broken) = store.verify_audit().await?;
    store.close().await;
    match broken {
        None => {
            if ctx.json {
                print_json(&json!({ "valid": true, "records": checked }));
            } else {
                println!("audit trail intact: {checked} records, every link holds");
            }
            Ok(ExitCode::SUCCESS)
        }
        Some(b) => {
            if ctx.json {
                print_json(
                    &json!({ "valid": false, "records_before": checked, "first_altered": format!("aud_{:06}", b.id), "reason": b.reason }),
                );
            } else {
                println!(
                    "audit trail BROKEN at aud_{:06}: {} ({checked} records before it are intact)",
                    b.id, b.reason
                );
            }
            Ok(ExitCode::FAILURE)
        }
    }
}

pub async fn logout(ctx: &Ctx) -> Result<ExitCode> {
    let Some(token) = credentials::saved_token() else {
        bail!("not logged in: there is no saved token to revoke");
    };
    let c = fraisier_client::ApiClient::new(&credentials::server_url(ctx), Some(token));
    let revoked = c.post("/auth/logout", &json!({})).await;
    credentials::forget()?;
    match revoked {
        Ok(_) => println!("logged out; the token is revoked"),
        Err(e) => eprintln!("the saved token is forgotten; the server said: {e}"),
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn whoami(ctx: &Ctx) -> Result<ExitCode> {
    let c = client(ctx).await?;
    let v = c.get("/auth/me", &[]).await?;
    show(ctx, &v, |v| {
        format!(
            "{} in workspace {} ({}), roles {}",
            s(&v["username"]),
            s(&v["workspace"]),
            s(&v["credential"]),
            v["roles"]
        )
    });
    Ok(ExitCode::SUCCESS)
}

pub async fn rotate_key(ctx: &Ctx) -> Result<ExitCode> {
    let c = client(ctx).await?;
    let (_, v) = c.post("/auth/keys/rotate", &json!({})).await?;
    show(ctx, &v, |v| {
        format!(
            "signing with {} now; tokens of {} keep working until they expire",
            s(&v["kid"]),
            v["kids"]
                .as_array()
                .map(|k| k.len().saturating_sub(1))
                .unwrap_or(0)
        ) + " older key(s)"
    });
    Ok(ExitCode::SUCCESS)
}

/// `fraisier workspace …` (`collection` = "workspaces") and `fraisier project …` ("projects").
pub async fn group(ctx: &Ctx, collection: &str, cmd: GroupCommand) -> Result<ExitCode> {
    let c = client(ctx).await?;
    match cmd {
        GroupCommand::List => {
            let v = c.get(&format!("/{collection}"), &[]).await?;
            if ctx.json {
                print_json(&v);
            } else {
                let rows: Vec<Vec<String>> = v[collection]
                    .as_array()
                    .map_or(&[][..], |l| l)
                    .iter()
                    .map(|g| {
                        vec![
                            s(&g["name"]),
                            s(&g["display_name"]),
                            if g["declared"] == true {
                                "fraisier.yaml"
                            } else {
                                "api"
                            }
                            .to_string(),
                            g["fraises"]
                                .as_array()
                                .map(|f| f.iter().map(s).collect::<Vec<_>>().join(","))
                                .unwrap_or_default(),
                        ]
                    })
                    .collect();
                print!(
                    "{}",
                    render(&["name", "display name", "from", "fraises"], &rows)
                );
            }
        }
        GroupCommand::Create {
            name,
            display_name,
            description,
        } => {
            let (_, v) = c
                .post(
                    &format!("/{collection}"),
                    &json!({ "name": name, "display_name": display_name, "description": description }),
                )
                .await?;
            show(ctx, &v, |v| format!("created {}", s(&v["name"])));
        }
        GroupCommand::Delete { name } => {
            c.delete(&format!("/{collection}/{name}")).await?;
            if !ctx.json {
                println!("deleted {name}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
