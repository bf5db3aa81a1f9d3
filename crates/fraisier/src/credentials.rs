//! Where the CLI's token comes from: minted from the server's data dir on its own host, or
//! renewed from the token `auth:login` saved (0600) in the user's config directory.

use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context, Result};
use fraisier_client::ApiClient;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::commands::Ctx;

#[derive(Serialize, Deserialize)]
struct Saved {
    server: String,
    username: String,
    token: String,
}

fn saved_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("fraisier").join("credentials.json"))
}

fn read_saved() -> Option<Saved> {
    serde_json::from_str(&std::fs::read_to_string(saved_path()?).ok()?).ok()
}

fn save(s: &Saved) -> Result<()> {
    let path = saved_path().ok_or_else(|| anyhow!("no HOME to save credentials in"))?;
    std::fs::create_dir_all(path.parent().expect("has a parent"))?;
    fraisier_server::auth::write_private(&path, serde_json::to_string_pretty(s)?.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// A token minted from the local data dir, when this host runs the server: for `user` (default
/// `admin`) in `workspace` (default `default`), with their roles from the store.
pub async fn local_token(
    ctx: &Ctx,
    user: Option<&str>,
    workspace: Option<&str>,
) -> Result<Option<String>> {
    let Some(config) = crate::config_path(ctx.config_path.as_deref())
        .and_then(|p| fraisier_model::Config::load(&p).ok())
    else {
        return Ok(None);
    };
    let Ok(keys) = fraisier_server::auth::Keys::load(
        &config.server.data_dir,
        config.server.token_algorithm,
        (config.server.token_ttl.0 / 1000) as i64,
    ) else {
        return Ok(None);
    };
    let user = user.unwrap_or(fraisier_server::auth::ADMIN_USER);
    let workspace = workspace.unwrap_or(fraisier_store::DEFAULT_TENANT);
    let store = fraisier_server::open_store(&config)
        .await
        .context("cannot open the server's store to mint a token")?;
    let member = store.member(workspace, user).await;
    store.close().await;
    let member = match member {
        Ok(m) => m,
        Err(fraisier_store::StoreError::NotFound) => {
            bail!("no user {user} in workspace {workspace} on this server; name one with --user/--workspace, or use `fraisier auth:login`")
        }
        Err(e) => return Err(e.into()),
    };
    if member.user.disabled {
        bail!("user {user} is disabled");
    }
    let roles = fraisier_model::access::Roles::new(&config.roles)
        .map_err(|p| anyhow!("roles in the configuration: {p:?}"))?;
    let (token, _) = keys.mint(
        member.user.id,
        user,
        workspace,
        &member.roles,
        roles.patterns_of(&member.roles),
    );
    Ok(Some(token))
}

pub async fn token(ctx: &Ctx) -> Result<String> {
    if let Ok(t) = std::env::var("FRAISIER_TOKEN") {
        if !t.is_empty() {
            return Ok(t);
        }
    }
    // Who logged in here speaks for themselves, even on the server's own host.
    if let Some(saved) = read_saved() {
        if server_url(ctx) == saved.server {
            return renew(ctx, saved).await;
        }
    }
    if let Some(t) = local_token(ctx, None, None).await? {
        return Ok(t);
    }
    bail!("no token: run this on the server's host (where its fraisier.yaml and data dir are), or log in with `fraisier auth:login --server URL`")
}

/// `auth:token`: minted on the server's host (for `user`, default admin), else the saved login's.
pub async fn print_token(ctx: &Ctx, user: Option<&str>, workspace: Option<&str>) -> Result<String> {
    if let Some(t) = local_token(ctx, user, workspace).await? {
        return Ok(t);
    }
    if user.is_some() || workspace.is_some() {
        bail!("--user and --workspace mint a token from the server's data dir: run this on the server's host");
    }
    token(ctx).await
}

/// Renews the token `auth:login` saved, and saves the new one.
async fn renew(ctx: &Ctx, mut saved: Saved) -> Result<String> {
    let client = ApiClient::new(
        ctx.server.as_deref().unwrap_or(&saved.server),
        Some(saved.token.clone()),
    );
    let (_, body) = client
        .post("/auth/refresh", &json!({}))
        .await
        .context("the saved token could not be renewed; run `fraisier auth:login` again")?;
    let fresh = body["access_token"]
        .as_str()
        .ok_or_else(|| anyhow!("the server sent no access_token"))?
        .to_string();
    saved.token = fresh.clone();
    save(&saved)?;
    Ok(fresh)
}

/// Forgets the saved token (after the server revoked it).
pub fn forget() -> Result<bool> {
    match saved_path() {
        Some(p) if p.exists() => {
            std::fs::remove_file(&p).with_context(|| format!("cannot remove {}", p.display()))?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

pub fn saved_token() -> Option<String> {
    read_saved().map(|s| s.token)
}

pub fn server_url(ctx: &Ctx) -> String {
    if let Some(s) = &ctx.server {
        return s.clone();
    }
    if let Some(config) = crate::config_path(ctx.config_path.as_deref())
        .and_then(|p| fraisier_model::Config::load(&p).ok())
    {
        return format!("http://{}", config.server.listen);
    }
    read_saved().map_or_else(|| "http://127.0.0.1:8000".to_string(), |s| s.server)
}

pub async fn login(
    ctx: &Ctx,
    username: Option<String>,
    password: Option<String>,
    workspace: Option<String>,
) -> Result<ExitCode> {
    let server = server_url(ctx);
    let username = username.unwrap_or_else(|| "admin".into());
    let password = match password {
        Some(p) => p,
        None => {
            eprint!("password for {username}: ");
            let mut line = String::new();
            std::io::stdin().lock().read_line(&mut line)?;
            line.trim_end_matches(['\n', '\r']).to_string()
        }
    };
    let client = ApiClient::new(&server, None);
    let (_, body) = client
        .post(
            "/auth/login",
            &json!({ "username": username, "password": password, "workspace": workspace }),
        )
        .await?;
    let token = body["access_token"]
        .as_str()
        .ok_or_else(|| anyhow!("the server sent no access_token"))?
        .to_string();
    save(&Saved {
        server: server.clone(),
        username: username.clone(),
        token,
    })?;
    eprintln!("logged in to {server} as {username}");
    Ok(ExitCode::SUCCESS)
}
