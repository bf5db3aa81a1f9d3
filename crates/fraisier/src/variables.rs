//! `fraisier secret` and `fraisier env`: a fraise's variables in an environment, set through
//! the API; a change is rolled out by a `config` run, which `--wait` follows. And `fraisier
//! secret workspace`: the secrets the server itself uses (`${secret:NAME}` in fraisier.yaml).

use std::io::{BufRead, IsTerminal};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use serde_json::{Map, Value};

use crate::commands::{client, finish, print_json, s, Ctx};
use crate::table::render;

#[derive(Subcommand)]
pub enum VariableCommand {
    /// Set variables: NAME=VALUE, or NAME alone to read its value from stdin (keeps secrets
    /// out of shell history and the process list)
    Set {
        fraise: String,
        environment: String,
        #[arg(required = true)]
        assignments: Vec<String>,
        /// Wait for the config run that rolls the change out, and exit non-zero if it fails
        #[arg(long)]
        wait: bool,
    },
    /// List them (secrets by name only)
    List { fraise: String, environment: String },
    /// Remove variables
    Unset {
        fraise: String,
        environment: String,
        #[arg(required = true)]
        names: Vec<String>,
        #[arg(long)]
        wait: bool,
    },
}

#[derive(Subcommand)]
pub enum SecretCommand {
    #[command(flatten)]
    Variables(VariableCommand),
    /// Seal secrets with a new key (server admins; the old key keeps opening what it sealed)
    #[command(name = "rotate-key")]
    RotateKey,
    /// The workspace's own secrets: git tokens and webhook secrets fraisier.yaml names as
    /// ${secret:NAME}
    #[command(subcommand)]
    Workspace(WorkspaceSecretCommand),
}

#[derive(Subcommand)]
pub enum WorkspaceSecretCommand {
    /// Store NAME, its value read from stdin (or --from-file), never from the command line
    Set {
        name: String,
        #[arg(long)]
        from_file: Option<std::path::PathBuf>,
    },
    /// Their names, and who set them when
    List,
    /// Remove NAME
    Delete { name: String },
}

pub async fn secret(ctx: &Ctx, cmd: SecretCommand) -> Result<ExitCode> {
    match cmd {
        SecretCommand::Variables(c) => run(ctx, "secrets", c).await,
        SecretCommand::Workspace(c) => workspace(ctx, c).await,
        SecretCommand::RotateKey => {
            let c = client(ctx).await?;
            let (_, v) = c
                .post("/secrets/keys/rotate", &Value::Object(Map::new()))
                .await?;
            if ctx.json {
                print_json(&v);
            } else {
                println!(
                    "secrets now sealed with key {} ({} value(s) re-sealed)",
                    s(&v["key_id"]),
                    s(&v["resealed"])
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn workspace(ctx: &Ctx, cmd: WorkspaceSecretCommand) -> Result<ExitCode> {
    let c = client(ctx).await?;
    match cmd {
        WorkspaceSecretCommand::Set { name, from_file } => {
            let text = match from_file {
                Some(path) => std::fs::read_to_string(&path)
                    .with_context(|| format!("cannot read {}", path.display()))?,
                None => {
                    if std::io::stdin().is_terminal() {
                        eprintln!("value of {name} (end with Ctrl-D):");
                    }
                    let mut text = String::new();
                    std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
                        .context("cannot read the value from stdin")?;
                    text
                }
            };
            // The line end `echo`, an editor or a terminal adds is not part of a secret.
            let value = text
                .strip_suffix("\r\n")
                .or_else(|| text.strip_suffix('\n'))
                .unwrap_or(&text)
                .to_string();
            let mut body = Map::new();
            body.insert("value".into(), Value::String(value));
            let (_, v) = c
                .put(&format!("/secrets/{name}"), &Value::Object(body))
                .await?;
            if ctx.json {
                print_json(&v);
            } else {
                println!(
                    "stored {}: fraisier.yaml names it {}",
                    s(&v["name"]),
                    s(&v["reference"])
                );
            }
        }
        WorkspaceSecretCommand::List => {
            let v = c.get("/secrets", &[]).await?;
            if ctx.json {
                print_json(&v);
            } else {
                let rows: Vec<Vec<String>> = v["secrets"]
                    .as_array()
                    .map_or(&[][..], |a| a)
                    .iter()
                    .map(|x| {
                        vec![
                            s(&x["name"]),
                            s(&x["reference"]),
                            s(&x["updated_at"]),
                            s(&x["updated_by"]),
                        ]
                    })
                    .collect();
                print!(
                    "{}",
                    render(&["NAME", "IN FRAISIER.YAML", "UPDATED", "BY"], &rows)
                );
            }
        }
        WorkspaceSecretCommand::Delete { name } => {
            c.delete(&format!("/secrets/{name}")).await?;
            eprintln!("deleted {name}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `secrets` or `env`: the route under `/deployments/{fraise}@{environment}/`.
pub async fn run(ctx: &Ctx, what: &str, cmd: VariableCommand) -> Result<ExitCode> {
    let c = client(ctx).await?;
    let path =
        |fraise: &str, environment: &str| format!("/deployments/{fraise}@{environment}/{what}");
    let (body, fraise, environment, wait) = match cmd {
        VariableCommand::List {
            fraise,
            environment,
        } => {
            let v = c.get(&path(&fraise, &environment), &[]).await?;
            if ctx.json {
                print_json(&v);
                return Ok(ExitCode::SUCCESS);
            }
            let list = v[what].as_array().cloned().unwrap_or_default();
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|x| {
                    vec![
                        s(&x["name"]),
                        s(&x["value"]),
                        s(&x["updated_at"]),
                        s(&x["updated_by"]),
                    ]
                })
                .collect();
            print!("{}", render(&["NAME", "VALUE", "UPDATED", "BY"], &rows));
            if let Some(configured) = v["configured"].as_object().filter(|m| !m.is_empty()) {
                println!("\nfrom fraisier.yaml (the values above win):");
                for (k, val) in configured {
                    println!("  {k}={}", s(val));
                }
            }
            return Ok(ExitCode::SUCCESS);
        }
        VariableCommand::Set {
            fraise,
            environment,
            assignments,
            wait,
        } => (
            assignments_body(&assignments, what == "secrets")?,
            fraise,
            environment,
            wait,
        ),
        VariableCommand::Unset {
            fraise,
            environment,
            names,
            wait,
        } => {
            let body = names.into_iter().map(|n| (n, Value::Null)).collect();
            (body, fraise, environment, wait)
        }
    };
    let (_, v) = c
        .put(&path(&fraise, &environment), &Value::Object(body))
        .await?;
    let run = v["deployment"]["id"].as_str().map(str::to_string);
    if ctx.json && !(wait && run.is_some()) {
        print_json(&v);
        return Ok(ExitCode::SUCCESS);
    }
    if !ctx.json {
        eprintln!("{}", s(&v["message"]));
    }
    match run {
        Some(id) if wait => finish(ctx, &c, &id).await,
        _ => Ok(ExitCode::SUCCESS),
    }
}

/// `NAME=VALUE` pairs; one bare `NAME` takes its value from stdin.
fn assignments_body(assignments: &[String], hide: bool) -> Result<Map<String, Value>> {
    let mut body = Map::new();
    let bare: Vec<&String> = assignments.iter().filter(|a| !a.contains('=')).collect();
    if bare.len() > 1 {
        bail!("only one NAME may take its value from stdin; give the others as NAME=VALUE");
    }
    for a in assignments {
        let (name, value) = match a.split_once('=') {
            Some((n, v)) => (n.to_string(), v.to_string()),
            None => (a.clone(), read_value(a, hide)?),
        };
        body.insert(name, Value::String(value));
    }
    Ok(body)
}

/// One line of stdin; typed at a terminal, a secret is not echoed.
fn read_value(name: &str, hide: bool) -> Result<String> {
    let stdin = std::io::stdin();
    let typed = stdin.is_terminal();
    let echo = |on: bool| {
        let _ = std::process::Command::new("stty")
            .arg(if on { "echo" } else { "-echo" })
            .stdin(std::process::Stdio::inherit())
            .status();
    };
    if typed {
        eprint!(
            "value of {name}{}: ",
            if hide { " (not shown)" } else { "" }
        );
        if hide {
            echo(false);
        }
    }
    let mut line = String::new();
    let read = stdin.lock().read_line(&mut line);
    if typed && hide {
        echo(true);
        eprintln!();
    }
    read.with_context(|| format!("cannot read the value of {name} from stdin"))?;
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}
