//! `fraisier webhooks`: the deliveries git hosts made, what each deployed or why not.

use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

use crate::commands::{client, print_json, s, Ctx};
use crate::table::render;

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
    let c = client(ctx).await?;
    let mut q: Vec<(&str, String)> = vec![("limit", a.limit.to_string())];
    for (k, v) in [
        ("provider", a.provider),
        ("outcome", a.outcome),
        ("repository", a.repository),
    ] {
        if let Some(v) = v {
            q.push((k, v));
        }
    }
    let v = c.get("/webhooks/deliveries", &q).await?;
    if ctx.json {
        print_json(&v);
        return Ok(ExitCode::SUCCESS);
    }
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
