//! `fraisier target list|show|check|sticker`: seed 004's targets — the agents where your
//! environments' fraises run — and what runs on each.

use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;
use serde_json::Value;

use crate::commands::{client, print_json, s, Ctx};
use crate::table::render;

#[derive(Subcommand)]
pub enum TargetCommand {
    /// The targets, with seed 004's filters
    List {
        /// Only those this environment's fraises are placed on
        #[arg(long)]
        environment: Option<String>,
        /// Only those carrying these labels (`role=web,zone=a`)
        #[arg(long)]
        labels: Option<String>,
        /// healthy, unhealthy or unknown
        #[arg(long)]
        health: Option<String>,
    },
    /// One target in full (by name or id)
    Show { target: String },
    /// Ask the target's agent now whether it answers
    Check { target: String },
    /// What runs on the target: versions, digests, who deployed them and when
    Sticker { target: String },
}

pub async fn run(ctx: &Ctx, cmd: TargetCommand) -> Result<ExitCode> {
    let c = client(ctx).await?;
    match cmd {
        TargetCommand::List {
            environment,
            labels,
            health,
        } => {
            let mut query: Vec<(&str, String)> = Vec::new();
            query.extend(environment.map(|e| ("environmentId", e)));
            query.extend(labels.map(|l| ("labels", l)));
            query.extend(health.map(|h| ("healthStatus", h)));
            let v = c.get("/targets", &query).await?;
            if ctx.json {
                print_json(&v);
            } else {
                let rows: Vec<Vec<String>> = v["targets"]
                    .as_array()
                    .map_or(&[][..], |a| a)
                    .iter()
                    .map(|t| {
                        let envs: Vec<String> = t["environment_ids"]
                            .as_array()
                            .map(|a| a.iter().map(s).collect())
                            .unwrap_or_default();
                        vec![
                            s(&t["id"]),
                            s(&t["name"]),
                            s(&t["target_type"]),
                            s(&t["health_status"]),
                            envs.join(","),
                        ]
                    })
                    .collect();
                print!(
                    "{}",
                    render(&["ID", "NAME", "TYPE", "HEALTH", "ENVIRONMENTS"], &rows)
                );
            }
        }
        TargetCommand::Show { target } => {
            let v = c.get(&format!("/targets/{target}"), &[]).await?;
            print_json(&v);
        }
        TargetCommand::Check { target } => {
            let (_, v) = c
                .post(
                    &format!("/targets/{target}/health-check"),
                    &serde_json::json!({}),
                )
                .await?;
            if ctx.json {
                print_json(&v);
            } else {
                println!("{target}: {} ({})", s(&v["status"]), s(&v["message"]));
            }
            if v["status"] != "healthy" {
                return Ok(ExitCode::FAILURE);
            }
        }
        TargetCommand::Sticker { target } => {
            let v = c.get(&format!("/targets/{target}/sticker"), &[]).await?;
            if ctx.json {
                print_json(&v);
            } else {
                let rows: Vec<Vec<String>> = v["components"]
                    .as_array()
                    .map_or(&[][..], |a| a)
                    .iter()
                    .map(|c: &Value| {
                        vec![
                            s(&c["component_id"]),
                            s(&c["version"]),
                            s(&c["instances"]),
                            s(&c["digest"]),
                            s(&c["deployed_at"]),
                            s(&c["deployed_by"]),
                        ]
                    })
                    .collect();
                print!(
                    "{}",
                    render(
                        &[
                            "SERVICE",
                            "VERSION",
                            "INSTANCES",
                            "DIGEST",
                            "DEPLOYED",
                            "BY"
                        ],
                        &rows
                    )
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
