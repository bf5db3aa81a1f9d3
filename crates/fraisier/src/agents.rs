//! `fraisier agent join-token|list|show|drain|resume|label|revoke`: the agents of your
//! workspace, seen and managed from the server's side. (`fraisier agent` with no action runs
//! one.)

use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;
use serde_json::{json, Value};

use crate::commands::{client, print_json, s, Ctx};
use crate::table::render;

#[derive(Subcommand)]
pub enum AgentCommand {
    /// Stop the agent of this host: drain and stop every instance and router, then exit
    Stop,
    /// Make a join token: `fraisier agent --server URL --join-token T --name N` on a host
    /// registers it with this server
    JoinToken {
        /// How long it may be used (1h, 30m; at most 7 days)
        #[arg(long, default_value = "1h")]
        expires_in: String,
        /// How many agents may register with it
        #[arg(long, default_value_t = 1)]
        uses: u32,
    },
    /// The agents: status, last heartbeat, labels, host
    List {
        /// Only agents in this status (online, offline, draining)
        #[arg(long)]
        status: Option<String>,
    },
    /// One agent in full (by name or id)
    Show { agent: String },
    /// Place nothing new on the agent; what runs there keeps running
    Drain { agent: String },
    /// Open a drained agent to new work again
    Resume { agent: String },
    /// Replace the agent's labels (`role=web,zone=a`; empty to remove them all)
    Label { agent: String, labels: String },
    /// Revoke the agent's credential: it is refused at once and its name is free again
    Revoke { agent: String },
}

fn agent_row(a: &Value) -> Vec<String> {
    let labels: Vec<String> = a["labels"]
        .as_object()
        .map(|m| m.iter().map(|(k, v)| format!("{k}={}", s(v))).collect())
        .unwrap_or_default();
    vec![
        s(&a["id"]),
        s(&a["name"]),
        s(&a["status"]),
        s(&a["last_heartbeat_at"]),
        s(&a["host"]["hostname"]),
        s(&a["instances"]),
        labels.join(","),
    ]
}

const HEADERS: [&str; 7] = [
    "ID",
    "NAME",
    "STATUS",
    "LAST HEARTBEAT",
    "HOST",
    "INSTANCES",
    "LABELS",
];

pub async fn run(ctx: &Ctx, cmd: AgentCommand) -> Result<ExitCode> {
    let c = client(ctx).await?;
    let show = |v: &Value| {
        if ctx.json {
            print_json(v);
        } else {
            print!("{}", render(&HEADERS, &[agent_row(v)]));
        }
    };
    match cmd {
        AgentCommand::Stop => unreachable!("`agent stop` is handled by main"),
        AgentCommand::JoinToken { expires_in, uses } => {
            let (_, v) = c
                .post(
                    "/agents/join-tokens",
                    &json!({ "expires_in": expires_in, "uses": uses }),
                )
                .await?;
            if ctx.json {
                print_json(&v);
            } else {
                // The token alone on stdout, for `T=$(fraisier agent join-token)`.
                println!("{}", s(&v["token"]));
                eprintln!(
                    "good for {} agent(s) until {}; on the host: fraisier agent --server URL --join-token TOKEN --name NAME",
                    s(&v["uses"]),
                    s(&v["expires_at"])
                );
            }
        }
        AgentCommand::List { status } => {
            let query: Vec<(&str, String)> = status.map(|s| ("status", s)).into_iter().collect();
            let v = c.get("/agents", &query).await?;
            if ctx.json {
                print_json(&v);
            } else {
                let rows: Vec<Vec<String>> = v["agents"]
                    .as_array()
                    .map_or(&[][..], |a| a)
                    .iter()
                    .map(agent_row)
                    .collect();
                print!("{}", render(&HEADERS, &rows));
            }
        }
        AgentCommand::Show { agent } => {
            let v = c.get(&format!("/agents/{agent}"), &[]).await?;
            if ctx.json {
                print_json(&v);
            } else {
                println!("{}", serde_json::to_string_pretty(&v)?);
            }
        }
        AgentCommand::Drain { agent } => {
            let (_, v) = c
                .put(
                    &format!("/agents/{agent}"),
                    &json!({ "status": "draining" }),
                )
                .await?;
            show(&v);
        }
        AgentCommand::Resume { agent } => {
            let (_, v) = c
                .put(&format!("/agents/{agent}"), &json!({ "status": "online" }))
                .await?;
            show(&v);
        }
        AgentCommand::Label { agent, labels } => {
            let labels =
                fraisier_model::agent::parse_labels(&labels).map_err(anyhow::Error::msg)?;
            let (_, v) = c
                .put(&format!("/agents/{agent}"), &json!({ "labels": labels }))
                .await?;
            show(&v);
        }
        AgentCommand::Revoke { agent } => {
            c.delete(&format!("/agents/{agent}")).await?;
            eprintln!("revoked {agent}: its credential is refused from now on");
        }
    }
    Ok(ExitCode::SUCCESS)
}
