//! `fraisier environment`: the environments of your workspace, their locks and their freeze
//! windows — what keeps deploys, rollbacks and variable changes out for a while.

use std::process::ExitCode;

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use clap::Subcommand;
use serde_json::{json, Value};

use crate::commands::{client, print_json, s, Ctx};
use crate::table::render;

#[derive(Subcommand)]
pub enum EnvironmentCommand {
    /// The environments and how their fraises stand
    List,
    /// Refuse deploys, rollbacks and variable changes there until `unlock`
    Lock {
        environment: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Lift the lock
    Unlock { environment: String },
    /// Add a freeze window: deploys refused from --from (default now) until --until, except
    /// by the users named with --except
    Freeze {
        environment: String,
        /// An RFC 3339 time, or a duration from now (2h, 90m)
        #[arg(long)]
        until: String,
        /// An RFC 3339 time, or a duration from now; default now
        #[arg(long)]
        from: Option<String>,
        #[arg(long)]
        reason: Option<String>,
        /// A user still allowed to deploy (repeat for several; a webhook is webhook:<host>)
        #[arg(long = "except")]
        exceptions: Vec<String>,
    },
    /// The freeze windows not over yet
    Freezes {
        environment: String,
        /// Only those in force now
        #[arg(long)]
        active: bool,
    },
    /// Remove a freeze window
    Unfreeze { environment: String, window: String },
    /// Show the environment's limits, or set them
    Limits {
        environment: String,
        /// The most instances its fraises may run together
        #[arg(long, conflicts_with = "no_limit")]
        max_instances: Option<u64>,
        /// Lift the limit
        #[arg(long)]
        no_limit: bool,
    },
}

/// `2026-12-24T00:00:00Z`, or a duration from now.
fn when(text: &str) -> Result<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&Utc));
    }
    let d = fraisier_model::duration::Millis::parse(text.trim_start_matches('+'))
        .map_err(|e| anyhow::anyhow!("{text:?} is neither an RFC 3339 time nor a duration: {e}"))?;
    let d = chrono::Duration::from_std(d.as_duration()).context("the duration is too long")?;
    Ok(Utc::now() + d)
}

fn window_row(w: &Value) -> Vec<String> {
    let exceptions: Vec<String> = w["exceptions"]
        .as_array()
        .map_or(&[][..], |a| a)
        .iter()
        .map(s)
        .collect();
    vec![
        s(&w["id"]),
        s(&w["start"]),
        s(&w["end"]),
        if w["active"] == true { "yes" } else { "no" }.into(),
        s(&w["reason"]),
        exceptions.join(","),
    ]
}

const WINDOW_HEADERS: [&str; 6] = ["ID", "START", "END", "ACTIVE", "REASON", "EXCEPT"];

pub async fn run(ctx: &Ctx, cmd: EnvironmentCommand) -> Result<ExitCode> {
    let c = client(ctx).await?;
    match cmd {
        EnvironmentCommand::List => {
            let v = c.get("/environments", &[]).await?;
            if ctx.json {
                print_json(&v);
            } else {
                let rows: Vec<Vec<String>> = v["environments"]
                    .as_array()
                    .map_or(&[][..], |a| a)
                    .iter()
                    .map(|e| {
                        vec![
                            s(&e["name"]),
                            s(&e["status"]),
                            format!("{}/{}", s(&e["fraises_deployed"]), s(&e["fraises_total"])),
                        ]
                    })
                    .collect();
                print!("{}", render(&["NAME", "STATUS", "DEPLOYED"], &rows));
            }
        }
        EnvironmentCommand::Lock {
            environment,
            reason,
        } => {
            let (_, v) = c
                .post(
                    &format!("/environments/{environment}/lock"),
                    &json!({ "reason": reason }),
                )
                .await?;
            if ctx.json {
                print_json(&v);
            } else {
                println!("{environment} locked by {}", s(&v["locked_by"]));
            }
        }
        EnvironmentCommand::Unlock { environment } => {
            let (_, v) = c
                .post(&format!("/environments/{environment}/unlock"), &json!({}))
                .await?;
            if ctx.json {
                print_json(&v);
            } else {
                println!("{environment} unlocked");
            }
        }
        EnvironmentCommand::Freeze {
            environment,
            until,
            from,
            reason,
            exceptions,
        } => {
            let start = match from {
                Some(f) => when(&f)?,
                None => Utc::now(),
            };
            let body = json!({
                "start": start.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                "end": when(&until)?.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                "reason": reason,
                "exceptions": exceptions,
            });
            let (_, v) = c
                .post(
                    &format!("/environments/{environment}/freeze-windows"),
                    &body,
                )
                .await?;
            if ctx.json {
                print_json(&v);
            } else {
                print!("{}", render(&WINDOW_HEADERS, &[window_row(&v)]));
            }
        }
        EnvironmentCommand::Freezes {
            environment,
            active,
        } => {
            let query: Vec<(&str, String)> = if active {
                vec![("active", "true".into())]
            } else {
                Vec::new()
            };
            let v = c
                .get(
                    &format!("/environments/{environment}/freeze-windows"),
                    &query,
                )
                .await?;
            if ctx.json {
                print_json(&v);
            } else {
                let rows: Vec<Vec<String>> = v["freeze_windows"]
                    .as_array()
                    .map_or(&[][..], |a| a)
                    .iter()
                    .map(window_row)
                    .collect();
                print!("{}", render(&WINDOW_HEADERS, &rows));
            }
        }
        EnvironmentCommand::Limits {
            environment,
            max_instances,
            no_limit,
        } => {
            let path = format!("/environments/{environment}/limits");
            let v = if max_instances.is_some() || no_limit {
                c.put(&path, &json!({ "max_instances": max_instances }))
                    .await?
                    .1
            } else {
                c.get(&path, &[]).await?
            };
            if ctx.json {
                print_json(&v);
            } else {
                let max = if v["max_instances"].is_null() {
                    "no limit".to_string()
                } else {
                    s(&v["max_instances"])
                };
                println!(
                    "{environment}: {} instance(s) running, limit {max}{}",
                    s(&v["instances_in_use"]),
                    if v["exceeded"] == true {
                        " (exceeded)"
                    } else {
                        ""
                    }
                );
            }
        }
        EnvironmentCommand::Unfreeze {
            environment,
            window,
        } => {
            c.delete(&format!(
                "/environments/{environment}/freeze-windows/{window}"
            ))
            .await?;
            eprintln!("removed {window} from {environment}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
