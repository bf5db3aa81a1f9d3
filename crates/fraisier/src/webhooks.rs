//! `fraisier webhooks` and `fraisier notifications`: what came in from git hosts and what
//! went out about runs, each with what became of it.

use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

use crate::commands::{client, print_json, s, Ctx};
use crate::table::render;

/// A page of a record, with the filters given; `None` once printed as JSON (`--json`).
async fn listing(
    ctx: &Ctx,
    path: &str,
    limit: u32,
    filters: [(&str, Option<String>); 3],
) -> Result<Option<serde_json::Value>> {
    let c = client(ctx).await?;
    let mut q: Vec<(&str, String)> = vec![("limit", limit.to_string())];
    q.extend(filters.into_iter().filter_map(|(k, v)| Some((k, v?))));
    let v = c.get(path, &q).await?;
    if ctx.json {
        print_json(&v);
        return Ok(None);
    }
    Ok(Some(v))
}

#[derive(Args)]
pub struct WebhooksArgs {
    /// github | gitlab | gitea | bitbucket
    #[arg(long)]
    pub provider: Option<String>,
    /// deployed | ignored | failed | duplicate | rejected | invalid | processing
    #[arg(long)]
    pub outcome: Option<String>,
    #[arg(long)]
    pub repository: Option<String>,
    #[arg(long, default_value_t = 20)]
    pub limit: u32,
}

pub async fn webhooks(ctx: &Ctx, a: WebhooksArgs) -> Result<ExitCode> {
    let filters = [
        ("provider", a.provider),
        ("outcome", a.outcome),
        ("repository", a.repository),
    ];
    let Some(v) = listing(ctx, "/webhooks/deliveries", a.limit, filters).await? else {
        return Ok(ExitCode::SUCCESS);
    };
    let rows: Vec<Vec<String>> = v["deliveries"]
        .as_array()
        .map_or(&[][..], |r| r)
        .iter()
        .map(|d| {
            let runs: Vec<String> = d["deployments"]
                .as_array()
                .map_or(&[][..], |r| r)
                .iter()
                .map(|t| match t["deployment_id"].as_str() {
                    Some(id) => format!("{id} {}@{}", s(&t["fraise"]), s(&t["environment"])),
                    None => format!(
                        "{}@{}: {}",
                        s(&t["fraise"]),
                        s(&t["environment"]),
                        s(&t["error"]["code"])
                    ),
                })
                .collect();
            let commit: String = s(&d["commit"]).chars().take(12).collect();
            vec![
                s(&d["received_at"]),
                s(&d["provider"]),
                s(&d["event"]),
                s(&d["repository"]),
                format!("{} {commit}", s(&d["ref"])),
                s(&d["outcome"]),
                if runs.is_empty() {
                    s(&d["message"])
                } else {
                    runs.join(", ")
                },
            ]
        })
        .collect();
    print!(
        "{}",
        render(
            &[
                "time",
                "host",
                "event",
                "repository",
                "ref",
                "outcome",
                "deployments"
            ],
            &rows
        )
    );
    Ok(ExitCode::SUCCESS)
}

#[derive(Args)]
pub struct NotificationsArgs {
    /// pending | sent | failed
    #[arg(long)]
    pub status: Option<String>,
    /// started | succeeded | failed | rolled_back | approval_requested
    #[arg(long)]
    pub event: Option<String>,
    #[arg(long)]
    pub fraise: Option<String>,
    #[arg(long, default_value_t = 20)]
    pub limit: u32,
}

/// `fraisier notifications`: what was announced about runs, where, and each attempt.
pub async fn notifications(ctx: &Ctx, a: NotificationsArgs) -> Result<ExitCode> {
    let filters = [
        ("status", a.status),
        ("event", a.event),
        ("fraise", a.fraise),
    ];
    let Some(v) = listing(ctx, "/notifications/deliveries", a.limit, filters).await? else {
        return Ok(ExitCode::SUCCESS);
    };
    let rows: Vec<Vec<String>> = v["deliveries"]
        .as_array()
        .map_or(&[][..], |r| r)
        .iter()
        .map(|n| {
            let attempts = n["attempts"].as_array().map_or(0, Vec::len);
            let last = n["attempts"]
                .as_array()
                .and_then(|a| a.last())
                .map(|a| match a["error"].as_str() {
                    Some(e) => e.to_string(),
                    None => s(&a["status_code"]),
                })
                .unwrap_or_default();
            vec![
                s(&n["created_at"]),
                s(&n["deployment_id"]),
                s(&n["event"]),
                format!("{} {}", s(&n["type"]), s(&n["target"])),
                s(&n["status"]),
                format!("{attempts} ({last})"),
            ]
        })
        .collect();
    print!(
        "{}",
        render(
            &["time", "run", "event", "to", "status", "attempts (last)"],
            &rows
        )
    );
    Ok(ExitCode::SUCCESS)
}
