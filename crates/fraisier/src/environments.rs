//! `fraisier environment`: the environments of your workspace — made, changed and deleted
//! through the API next to those fraisier.yaml declares — their variables, their locks and
//! their freeze windows (what keeps deploys, rollbacks and variable changes out for a while).

use std::process::ExitCode;

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use clap::Subcommand;
use serde_json::{json, Value};

use crate::commands::{client, print_json, s, Ctx};
use crate::table::render;

#[derive(Subcommand)]
pub enum EnvironmentCommand {
    /// The environments, in order, and how their fraises stand
    List,
    /// One environment's settings, lock and freeze windows
    Show { environment: String },
    /// Make an environment (fraisier.yaml need not declare it)
    Create {
        environment: String,
        #[command(flatten)]
        settings: Settings,
    },
    /// Change an environment's settings; those not given stay
    Update {
        environment: String,
        #[command(flatten)]
        settings: Settings,
    },
    /// Delete an environment no fraise is configured for, with its lock, freeze windows,
    /// limits and variables
    Delete { environment: String },
    /// The environment's own variables, or set (NAME=value) and remove (NAME=) them; every
    /// fraise there gets them below its own, released by a config run per fraise
    Variables {
        environment: String,
        /// NAME=value to set, NAME= to remove
        assignments: Vec<String>,
    },
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

/// An environment's settings, as `create` and `update` take them.
#[derive(clap::Args)]
pub struct Settings {
    #[arg(long)]
    display_name: Option<String>,
    #[arg(long)]
    description: Option<String>,
    /// Where it stands among the environments (development 1, staging 3, production 4)
    #[arg(long)]
    order: Option<u32>,
    /// Whether it serves users
    #[arg(long)]
    production: Option<bool>,
    /// Approvals a run needs from other people
    #[arg(long)]
    required_approvals: Option<u32>,
    /// Whether whoever asked for a run may not approve it
    #[arg(long)]
    require_sod: Option<bool>,
    /// A run's time limit when none is asked for: seconds, or 10m, 2h
    #[arg(long)]
    deployment_timeout: Option<String>,
    /// How often instances are probed when a fraise sets no interval: seconds, or 500ms
    #[arg(long)]
    health_check_interval: Option<String>,
    /// default (from anywhere) or sequential (only from the environment before it)
    #[arg(long)]
    promotion_policy: Option<String>,
}

impl Settings {
    fn body(self, name: Option<&str>) -> Value {
        let mut body = json!({
            "name": name, "display_name": self.display_name, "description": self.description,
            "order_index": self.order, "is_production": self.production,
            "required_approvals": self.required_approvals, "require_sod": self.require_sod,
            "promotion_policy": self.promotion_policy,
        });
        let mut config = serde_json::Map::new();
        for (key, v) in [
            ("deployment_timeout", self.deployment_timeout),
            ("health_check_interval", self.health_check_interval),
        ] {
            if let Some(v) = v {
                // A plain number is seconds; anything else goes as written ("10m").
                let v = v.parse::<u64>().map_or(json!(v), |n| json!(n));
                config.insert(key.into(), v);
            }
        }
        if !config.is_empty() {
            body["config"] = Value::Object(config);
        }
        if let Some(o) = body.as_object_mut() {
            o.retain(|_, v| !v.is_null());
        }
        body
    }
}

fn print_environment(v: &Value) {
    let timeout = s(&v["config"]["deployment_timeout"]);
    let interval = match &v["config"]["health_check_interval"] {
        Value::Null => "each fraise's own".to_string(),
        i => format!("{}s", s(i)),
    };
    println!("{} ({})", s(&v["name"]), s(&v["display_name"]));
    for (k, val) in [
        ("order", s(&v["order_index"])),
        ("production", s(&v["is_production"])),
        ("required approvals", s(&v["required_approvals"])),
        ("separation of duties", s(&v["require_sod"])),
        ("deployment timeout", format!("{timeout}s")),
        ("health check interval", interval),
        ("promotion policy", s(&v["promotion_policy"])),
        ("defined in", s(&v["defined_in"])),
    ] {
        println!("  {k:<22} {val}");
    }
    if let Some(by) = v["updated_by"].as_str() {
        println!("  {:<22} {} by {by}", "changed", s(&v["updated_at"]));
    }
    if v["lock"].is_object() {
        println!(
            "  {:<22} by {}: {}",
            "locked",
            s(&v["lock"]["locked_by"]),
            s(&v["lock"]["reason"])
        );
    }
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
                            s(&e["order_index"]),
                            s(&e["name"]),
                            s(&e["status"]),
                            format!("{}/{}", s(&e["fraises_deployed"]), s(&e["fraises_total"])),
                            s(&e["defined_in"]),
                        ]
                    })
                    .collect();
                print!(
                    "{}",
                    render(
                        &["ORDER", "NAME", "STATUS", "DEPLOYED", "DEFINED IN"],
                        &rows
                    )
                );
            }
        }
        EnvironmentCommand::Show { environment } => {
            let v = c.get(&format!("/environments/{environment}"), &[]).await?;
            if ctx.json {
                print_json(&v);
            } else {
                print_environment(&v);
            }
        }
        EnvironmentCommand::Create {
            environment,
            settings,
        } => {
            let (_, v) = c
                .post("/environments", &settings.body(Some(&environment)))
                .await?;
            if ctx.json {
                print_json(&v);
            } else {
                print_environment(&v);
            }
        }
        EnvironmentCommand::Update {
            environment,
            settings,
        } => {
            let (_, v) = c
                .put(
                    &format!("/environments/{environment}"),
                    &settings.body(None),
                )
                .await?;
            if ctx.json {
                print_json(&v);
            } else {
                print_environment(&v);
            }
        }
        EnvironmentCommand::Delete { environment } => {
            c.delete(&format!("/environments/{environment}")).await?;
            eprintln!("deleted {environment}");
        }
        EnvironmentCommand::Variables {
            environment,
            assignments,
        } => {
            let path = format!("/environments/{environment}/variables");
            if assignments.is_empty() {
                let v = c.get(&path, &[]).await?;
                if ctx.json {
                    print_json(&v);
                } else {
                    for var in v["variables"].as_array().map_or(&[][..], |a| a) {
                        println!("{}={}", s(&var["name"]), s(&var["value"]));
                    }
                }
            } else {
                let mut body = serde_json::Map::new();
                for a in &assignments {
                    let (name, value) = a.split_once('=').with_context(|| {
                        format!("{a:?}: write NAME=value, or NAME= to remove it")
                    })?;
                    let value = if value.is_empty() {
                        Value::Null
                    } else {
                        json!(value)
                    };
                    body.insert(name.to_string(), value);
                }
                let (_, v) = c.put(&path, &Value::Object(body)).await?;
                if ctx.json {
                    print_json(&v);
                } else {
                    println!("{}", s(&v["message"]));
                }
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
