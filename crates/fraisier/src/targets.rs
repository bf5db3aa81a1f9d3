//! `fraisier target …`: seed 004's targets — the agents where your environments' fraises
//! run, and the hosts of other types described beside them — what runs on each, and the
//! target groups fraises are placed on (`fraisier target group …`).

use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;
use serde_json::{json, Map, Value};

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
    /// Describe a target of another type (docker_host, compose_host, ecs_service,
    /// nomad_job): kept as data; Fraisier cannot deploy there yet. Agents join instead
    /// (`fraisier agent join-token`).
    Create {
        name: String,
        /// docker_host, compose_host, ecs_service or nomad_job
        #[arg(long = "type")]
        target_type: String,
        /// The environment it serves
        #[arg(long)]
        environment: Option<String>,
        /// A target group to put it in (`tgg_…`)
        #[arg(long)]
        group: Option<String>,
        /// How it is reached: `host=10.0.0.5,port=2375,tlsEnabled=true`
        #[arg(long)]
        connection: Option<String>,
        /// `role=web,zone=a`
        #[arg(long)]
        labels: Option<String>,
        /// An absolute path on the target
        #[arg(long)]
        directory: Option<String>,
    },
    /// Change a target: its labels and group (an agent), or any of its fields
    Update {
        target: String,
        #[arg(long)]
        labels: Option<String>,
        /// `tgg_…`, or `none` to take it out of its group
        #[arg(long)]
        group: Option<String>,
        #[arg(long)]
        connection: Option<String>,
        #[arg(long)]
        directory: Option<String>,
    },
    /// Delete a described target (an agent is revoked with `fraisier agent revoke`)
    Delete { target: String },
    /// Target groups: named sets of an environment's targets, by membership or labels
    #[command(subcommand)]
    Group(GroupCommand),
}

#[derive(Subcommand)]
pub enum GroupCommand {
    /// An environment's target groups
    List { environment: String },
    /// Create a group in an environment
    Create {
        environment: String,
        name: String,
        /// Every target carrying these labels is in the group
        #[arg(long)]
        labels: Option<String>,
        /// Members: agent or target names or ids, comma-separated
        #[arg(long)]
        members: Option<String>,
        #[arg(long)]
        description: Option<String>,
    },
    /// One group (`tgg_…`)
    Show { group: String },
    /// Change a group: what is given replaces what it had
    Update {
        group: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        labels: Option<String>,
        #[arg(long)]
        members: Option<String>,
        #[arg(long)]
        description: Option<String>,
    },
    /// Delete a group no fraise is placed on
    Delete { group: String },
}

/// `host=h,port=2375,tlsEnabled=true`: numbers and booleans as such, the rest as text.
fn parse_connection(text: &str) -> Result<Map<String, Value>> {
    let mut m = Map::new();
    for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("connection {pair:?} is not key=value"))?;
        let v = v.trim();
        let value = match v {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => v
                .parse::<i64>()
                .map(Value::from)
                .unwrap_or_else(|_| Value::String(v.to_string())),
        };
        m.insert(k.trim().to_string(), value);
    }
    Ok(m)
}

fn labels(text: &str) -> Result<Value> {
    Ok(json!(
        fraisier_model::agent::parse_labels(text).map_err(anyhow::Error::msg)?
    ))
}

fn members(text: &str) -> Value {
    json!(text
        .split(',')
        .map(str::trim)
        .filter(|m| !m.is_empty())
        .collect::<Vec<_>>())
}

fn show_group(ctx: &Ctx, v: &Value) {
    if ctx.json {
        print_json(v);
    } else {
        let list = |k: &str| -> String {
            v[k].as_array()
                .map(|a| a.iter().map(s).collect::<Vec<_>>().join(","))
                .unwrap_or_default()
        };
        println!(
            "{} {} in {}: targets {} (members {}; labels {}); used by {}",
            s(&v["id"]),
            s(&v["name"]),
            s(&v["environment_id"]),
            list("target_ids"),
            list("member_ids"),
            v["labels"],
            list("used_by"),
        );
    }
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
        TargetCommand::Create {
            name,
            target_type,
            environment,
            group,
            connection,
            labels: l,
            directory,
        } => {
            let mut body = json!({ "name": name, "targetType": target_type });
            if let Some(e) = environment {
                body["environmentId"] = json!(e);
            }
            if let Some(g) = group {
                body["targetGroupId"] = json!(g);
            }
            if let Some(c) = connection {
                body["connection"] = Value::Object(parse_connection(&c)?);
            }
            if let Some(l) = l {
                body["labels"] = labels(&l)?;
            }
            if let Some(d) = directory {
                body["deploymentDirectory"] = json!(d);
            }
            let (_, v) = c.post("/targets", &body).await?;
            if ctx.json {
                print_json(&v);
            } else {
                println!(
                    "{} {} ({}): described; Fraisier cannot deploy to {} targets yet",
                    s(&v["id"]),
                    s(&v["name"]),
                    s(&v["target_type"]),
                    s(&v["target_type"])
                );
            }
        }
        TargetCommand::Update {
            target,
            labels: l,
            group,
            connection,
            directory,
        } => {
            let mut body = json!({});
            if let Some(l) = l {
                body["labels"] = labels(&l)?;
            }
            if let Some(g) = group {
                body["targetGroupId"] = if g == "none" { Value::Null } else { json!(g) };
            }
            if let Some(c) = connection {
                body["connection"] = Value::Object(parse_connection(&c)?);
            }
            if let Some(d) = directory {
                body["deploymentDirectory"] = json!(d);
            }
            let (_, v) = c.put(&format!("/targets/{target}"), &body).await?;
            print_json(&v);
        }
        TargetCommand::Delete { target } => {
            c.delete(&format!("/targets/{target}")).await?;
            eprintln!("deleted {target}");
        }
        TargetCommand::Group(g) => return group(ctx, &c, g).await,
    }
    Ok(ExitCode::SUCCESS)
}

async fn group(ctx: &Ctx, c: &fraisier_client::ApiClient, cmd: GroupCommand) -> Result<ExitCode> {
    match cmd {
        GroupCommand::List { environment } => {
            let v = c
                .get(&format!("/environments/{environment}/target-groups"), &[])
                .await?;
            if ctx.json {
                print_json(&v);
            } else {
                let rows: Vec<Vec<String>> = v["target_groups"]
                    .as_array()
                    .map_or(&[][..], |a| a)
                    .iter()
                    .map(|g| {
                        let ids = |k: &str| {
                            g[k].as_array()
                                .map(|a| a.iter().map(s).collect::<Vec<_>>().join(","))
                                .unwrap_or_default()
                        };
                        vec![
                            s(&g["id"]),
                            s(&g["name"]),
                            ids("target_ids"),
                            ids("used_by"),
                        ]
                    })
                    .collect();
                print!("{}", render(&["ID", "NAME", "TARGETS", "USED BY"], &rows));
            }
        }
        GroupCommand::Create {
            environment,
            name,
            labels: l,
            members: m,
            description,
        } => {
            let mut body = json!({ "name": name });
            if let Some(l) = l {
                body["labels"] = labels(&l)?;
            }
            if let Some(m) = m {
                body["targetIds"] = members(&m);
            }
            if let Some(d) = description {
                body["description"] = json!(d);
            }
            let (_, v) = c
                .post(&format!("/environments/{environment}/target-groups"), &body)
                .await?;
            show_group(ctx, &v);
        }
        GroupCommand::Show { group } => {
            let v = c.get(&format!("/target-groups/{group}"), &[]).await?;
            show_group(ctx, &v);
        }
        GroupCommand::Update {
            group,
            name,
            labels: l,
            members: m,
            description,
        } => {
            let mut body = json!({});
            if let Some(n) = name {
                body["name"] = json!(n);
            }
            if let Some(l) = l {
                body["labels"] = labels(&l)?;
            }
            if let Some(m) = m {
                body["targetIds"] = members(&m);
            }
            if let Some(d) = description {
                body["description"] = json!(d);
            }
            let (_, v) = c.put(&format!("/target-groups/{group}"), &body).await?;
            show_group(ctx, &v);
        }
        GroupCommand::Delete { group } => {
            c.delete(&format!("/target-groups/{group}")).await?;
            eprintln!("deleted {group}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `fraisier drift TARGET`: each release running there hashed again on the host; exits 1
/// when any was changed since it was installed.
pub async fn drift(ctx: &Ctx, target: &str) -> Result<ExitCode> {
    let c = client(ctx).await?;
    let v = c.get(&format!("/targets/{target}/drift"), &[]).await?;
    if ctx.json {
        print_json(&v);
    } else {
        let components = v["components"].as_array().map_or(&[][..], |a| a);
        if components.is_empty() {
            println!("{target}: no release runs there");
        }
        for comp in components {
            let state = if comp["drifted"] == true {
                "DRIFTED"
            } else {
                "as installed"
            };
            println!(
                "{} {}: {state} (installed {}, now {})",
                s(&comp["component"]),
                s(&comp["version"]),
                s(&comp["expected"]),
                s(&comp["actual"])
            );
            for f in comp["files"].as_array().map_or(&[][..], |a| a) {
                println!("  {:<8} {}", s(&f["change"]), s(&f["path"]));
            }
        }
    }
    Ok(if v["has_drift"] == true {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
