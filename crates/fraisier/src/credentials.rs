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

/// A token minted from the local data dir, when this host runs the server.
pub fn local_token(ctx: &Ctx) -> Option<String> {
    let config = crate::config_path(ctx.config_path.as_deref())
        .and_then(|p| fraisier_model::Config::load(&p).ok())?;
    let keys = fraisier_server::auth::Keys::load(
        &config.server.data_dir,
        (config.server.token_ttl.0 / 1000) as i64,
    )
    .ok()?;
    let (token, _) = keys.mint(
        fraisier_server::auth::ADMIN_USER,
        fraisier_store::DEFAULT_TENANT,
        &["admin".to_string()],
    );
    Some(token)
}

pub async fn token(ctx: &Ctx) -> Result<String> {
    if let Ok(t) = std::env::var("FRAISIER_TOKEN") {
        if !t.is_empty() {
            return Ok(t);
        }
    }
    if let Some(t) = local_token(ctx) {
        return Ok(t);
    }
    let Some(mut saved) = read_saved() else {
        bail!("no token: run this on the server's host (where its fraisier.yaml and data dir are), or log in with `fraisier auth:login --server URL`");
    };
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
            &json!({ "username": username, "password": password }),
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
