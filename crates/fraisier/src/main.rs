//! `fraisier`: one binary that is the server (`serve`), the agent (`agent`) and the CLI.

mod admin;
mod agents;
mod artifacts;
mod commands;
mod credentials;
mod doctor;
mod environments;
mod setup;
mod table;
mod targets;
mod variables;
mod webhooks;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, Context, Result};
use clap::{Args, Parser, Subcommand};
use fraisier_model::config::Config;

#[derive(Parser)]
#[command(
    name = "fraisier",
    version,
    about = "Deploy fraises to environments with zero downtime",
    propagate_version = true
)]
struct Cli {
    /// fraisier.yaml; default $FRAISIER_CONFIG, then ./fraisier.yaml
    #[arg(long, global = true, env = "FRAISIER_CONFIG")]
    config: Option<PathBuf>,
    /// The server's URL, e.g. http://127.0.0.1:8000
    #[arg(long, global = true, env = "FRAISIER_URL")]
    server: Option<String>,
    /// Machine-readable JSON instead of tables
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the server (API, engine) and its local agent
    Serve(ServeArgs),
    /// Run the agent that runs and routes instances on this host (with --server: join that
    /// server); or manage agents: join-token, list, show, drain, resume, label, revoke
    Agent(AgentArgs),
    /// Print an access token (admin, minted from the data dir on the server's host; elsewhere renewed from `auth:login`)
    #[command(name = "auth:token")]
    AuthToken(TokenArgs),
    /// Log in to a server and save a token for later commands
    #[command(name = "auth:login")]
    AuthLogin(LoginArgs),
    /// Revoke the saved token and forget it
    #[command(name = "auth:logout")]
    AuthLogout,
    /// Who the CLI speaks as: user, workspace, roles
    #[command(name = "auth:whoami")]
    AuthWhoami,
    /// Sign new tokens with a new key (tokens of the old one keep working until they expire)
    #[command(name = "auth:rotate-key")]
    AuthRotateKey,
    /// Users of your workspace and their roles
    #[command(subcommand)]
    User(admin::UserCommand),
    /// API keys (sent as X-API-Key, or set FRAISIER_API_KEY for the CLI)
    #[command(subcommand, name = "api-key")]
    ApiKey(admin::ApiKeyCommand),
    /// The audit trail: list it, or verify its chain in the store
    #[command(subcommand)]
    Audit(admin::AuditCommand),
    /// Check the configuration: every problem at once, with its file and key (exit 1 if any)
    Validate,
    /// Check this host: config, data dir and key modes, server port, agent, git sources, database (exit 0 ok, 1 warnings, 2 failures)
    Doctor,
    /// Write a commented starter fraisier.yaml for the repository in this directory
    Init(setup::InitArgs),
    /// Deliveries of git hosts' webhooks: what each deployed, or why not
    Webhooks(webhooks::WebhooksArgs),
    /// Notifications sent about runs: where, with what outcome, each attempt
    Notifications(webhooks::NotificationsArgs),
    /// Workspaces (tenants): yours, or all for the admins of `default`
    #[command(subcommand)]
    Workspace(admin::GroupCommand),
    /// Projects of your workspace (the `project:` of fraises)
    #[command(subcommand)]
    Project(admin::GroupCommand),
    /// Deploy a fraise to an environment
    #[command(disable_version_flag = true)]
    Deploy(commands::DeployArgs),
    /// Status of the fraises (or of one) in each environment
    Status(commands::StatusArgs),
    /// List deployment runs
    List(commands::ListArgs),
    /// Deployment history of a fraise
    History(commands::HistoryArgs),
    /// Logs of a deployment run
    Logs(commands::LogsArgs),
    /// Roll a fraise back to its previous (or a given) version
    Rollback(commands::RollbackArgs),
    /// Cancel a running deployment (the previous version is restored)
    Cancel(commands::CancelArgs),
    /// Show one deployment run
    Show(commands::ShowArgs),
    /// Approve a run waiting in a guarded environment
    Approve(commands::DecisionArgs),
    /// Reject a run waiting for approval (it ends cancelled)
    Reject(commands::DecisionArgs),
    /// Runs waiting for your approval
    Approvals,
    /// Secrets of a fraise in an environment: sealed at rest, injected into its instances
    #[command(subcommand)]
    Secret(variables::SecretCommand),
    /// Environments: list them, lock and unlock them, manage their freeze windows
    #[command(subcommand)]
    Environment(environments::EnvironmentCommand),
    /// Environment variables of a fraise in an environment, set through the API
    #[command(subcommand)]
    Env(variables::VariableCommand),
    /// The artifact registry: push, list, download, delete versions
    #[command(subcommand)]
    Artifact(artifacts::ArtifactCommand),
    /// Targets (seed 004): the agents where your environments' fraises run, and what runs there
    #[command(subcommand)]
    Target(targets::TargetCommand),
    /// Whether files were changed by hand in the releases a target runs (exits 1 if so)
    Drift {
        /// The target: an agent's name or `agt_…`
        target: String,
    },
}

#[derive(Args)]
struct ServeArgs {
    /// Overrides server.listen
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Overrides server.data_dir
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Overrides server.database_url (sqlite://… or postgres://…)
    #[arg(long, env = "FRAISIER_DATABASE_URL")]
    database_url: Option<String>,
}

#[derive(Args)]
struct AgentArgs {
    #[command(subcommand)]
    action: Option<agents::AgentCommand>,
    /// The agent's state directory (default: <data_dir>/agent)
    #[arg(long, global = true)]
    state_dir: Option<PathBuf>,
    /// Control API address (loopback)
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Releases kept per fraise for rollback beyond the running ones
    #[arg(long, default_value_t = 3)]
    keep_releases: usize,
    /// The key file secrets are opened with (the server's <data_dir>/secret-keys.json);
    /// FRAISIER_SECRET_KEY is used when this is not given
    #[arg(long)]
    secret_keys: Option<PathBuf>,
    /// With --server: the join token to register with, the first time (or FRAISIER_JOIN_TOKEN,
    /// which stays out of shell history)
    #[arg(long, env = "FRAISIER_JOIN_TOKEN", hide_env_values = true)]
    join_token: Option<String>,
    /// With --server: the agent's name, unique in its workspace (default: the host's name)
    #[arg(long)]
    name: Option<String>,
    /// With --server: labels target groups and fraises select by (`role=web,zone=a`)
    #[arg(long, default_value = "")]
    labels: String,
}

#[derive(Args)]
struct TokenArgs {
    /// Mint for this user (default admin)
    #[arg(long)]
    user: Option<String>,
    /// Mint for this workspace (default `default`)
    #[arg(long)]
    workspace: Option<String>,
}

#[derive(Args)]
struct LoginArgs {
    #[arg(long, short)]
    username: Option<String>,
    /// Default: `default`, or your only workspace
    #[arg(long)]
    workspace: Option<String>,
    /// Read from stdin if not given (never put passwords in shell history)
    #[arg(long)]
    password: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("FRAISIER_LOG").unwrap_or_else(|_| {
        let default = match cli.command {
            Command::Serve(_) | Command::Agent(_) => "info",
            _ => "warn",
        };
        tracing_subscriber::EnvFilter::new(default)
    });
    // Colour only for a terminal: the server's and agent's logs usually go to files.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", report(&e));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes, each said once: many messages already quote their cause.
fn report(e: &anyhow::Error) -> String {
    let mut out = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !out.contains(&cause) {
            out.push_str(": ");
            out.push_str(&cause);
        }
    }
    out
}

/// `--config`, then `$FRAISIER_CONFIG` (clap reads it into the same flag), then ./fraisier.yaml.
fn config_path(explicit: Option<&Path>) -> Option<PathBuf> {
    match explicit {
        Some(p) => Some(p.to_path_buf()),
        None => Some(PathBuf::from("fraisier.yaml")).filter(|p| p.exists()),
    }
}

fn load_config(explicit: Option<&Path>) -> Result<Config> {
    let path = config_path(explicit).ok_or_else(|| {
        anyhow!("no configuration: pass --config FILE, set FRAISIER_CONFIG, or run where fraisier.yaml is (see examples/fraisier.yaml)")
    })?;
    Ok(Config::load(&path)?)
}

async fn run(cli: Cli) -> Result<ExitCode> {
    let ctx = commands::Ctx {
        config_path: cli.config.clone(),
        server: cli.server.clone(),
        json: cli.json,
    };
    match cli.command {
        Command::Serve(args) => {
            let mut config = load_config(cli.config.as_deref())?;
            if let Some(l) = args.listen {
                config.server.listen = l;
            }
            if let Some(d) = args.data_dir {
                config.server.data_dir = d;
            }
            if let Some(u) = args.database_url {
                config.server.database_url = Some(u);
            }
            let program = std::env::current_exe()
                .context("cannot find the fraisier binary to start the agent")?;
            fraisier_server::serve(fraisier_server::ServeOptions {
                config,
                agent_program: program,
                settings: Default::default(),
            })
            .await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Agent(args) => {
            let action = match args.action {
                Some(agents::AgentCommand::Stop) => Some(()),
                Some(c) => return agents::run(&ctx, c).await,
                None => None,
            };
            let state_dir = match args.state_dir {
                Some(d) => d,
                None if cli.server.is_some() && config_path(cli.config.as_deref()).is_none() => {
                    return Err(anyhow!(
                        "pass --state-dir: where this agent keeps its releases, instances and credential"
                    ));
                }
                None => {
                    fraisier_server::agent_dir(&load_config(cli.config.as_deref())?.server.data_dir)
                }
            };
            match action {
                Some(()) => {
                    let client = fraisier_client::AgentClient::from_state_dir(&state_dir)
                        .with_context(|| {
                            format!("no agent runs with state in {}", state_dir.display())
                        })?;
                    client.shutdown().await.context("the agent did not stop")?;
                    println!("agent stopped; its instances and routers are down");
                    Ok(ExitCode::SUCCESS)
                }
                None => {
                    let join = match &cli.server {
                        Some(server) => Some(fraisier_agent::membership::Join {
                            server: server.clone(),
                            join_token: args.join_token,
                            name: args.name.or_else(|| {
                                Some(fraisier_agent::membership::host_facts().hostname)
                                    .filter(|h| !h.is_empty())
                            }),
                            labels: fraisier_model::agent::parse_labels(&args.labels)
                                .map_err(|e| anyhow!("--labels: {e}"))?,
                        }),
                        None => None,
                    };
                    fraisier_agent::run(fraisier_agent::AgentOptions {
                        state_dir,
                        listen: args.listen,
                        keep_releases: args.keep_releases,
                        secret_keys: args.secret_keys,
                        join,
                    })
                    .await?;
                    Ok(ExitCode::SUCCESS)
                }
            }
        }
        Command::AuthToken(a) => {
            let token =
                credentials::print_token(&ctx, a.user.as_deref(), a.workspace.as_deref()).await?;
            println!("{token}");
            Ok(ExitCode::SUCCESS)
        }
        Command::AuthLogin(args) => {
            credentials::login(&ctx, args.username, args.password, args.workspace).await
        }
        Command::AuthLogout => admin::logout(&ctx).await,
        Command::AuthWhoami => admin::whoami(&ctx).await,
        Command::AuthRotateKey => admin::rotate_key(&ctx).await,
        Command::User(c) => admin::user(&ctx, c).await,
        Command::ApiKey(c) => admin::api_key(&ctx, c).await,
        Command::Audit(c) => admin::audit(&ctx, c).await,
        Command::Webhooks(a) => webhooks::webhooks(&ctx, a).await,
        Command::Environment(c) => environments::run(&ctx, c).await,
        Command::Notifications(a) => webhooks::notifications(&ctx, a).await,
        Command::Validate => setup::validate(cli.config.as_deref(), ctx.json),
        Command::Doctor => doctor::doctor(cli.config.as_deref(), ctx.json).await,
        Command::Init(a) => setup::init(a),
        Command::Workspace(c) => admin::group(&ctx, "workspaces", c).await,
        Command::Project(c) => admin::group(&ctx, "projects", c).await,
        Command::Deploy(a) => commands::deploy(&ctx, a).await,
        Command::Status(a) => commands::status(&ctx, a).await,
        Command::List(a) => commands::list(&ctx, a).await,
        Command::History(a) => commands::history(&ctx, a).await,
        Command::Logs(a) => commands::logs(&ctx, a).await,
        Command::Rollback(a) => commands::rollback(&ctx, a).await,
        Command::Cancel(a) => commands::cancel(&ctx, a).await,
        Command::Show(a) => commands::show(&ctx, a).await,
        Command::Approve(a) => commands::decide(&ctx, a, true).await,
        Command::Secret(c) => variables::secret(&ctx, c).await,
        Command::Env(c) => variables::run(&ctx, "env", c).await,
        Command::Artifact(c) => artifacts::run(&ctx, c).await,
        Command::Target(c) => targets::run(&ctx, c).await,
        Command::Drift { target } => targets::drift(&ctx, &target).await,
        Command::Reject(a) => commands::decide(&ctx, a, false).await,
        Command::Approvals => commands::approvals(&ctx).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_say_each_cause_once() {
        let io = std::io::Error::new(std::io::ErrorKind::AddrInUse, "Address already in use");
        let e = anyhow::Error::new(fraisier_server::ServerError::Listen {
            addr: "127.0.0.1:8000".parse().unwrap(),
            source: io,
        })
        .context("cannot serve");
        let text = report(&e);
        assert_eq!(text.matches("Address already in use").count(), 1, "{text}");
        assert!(
            text.starts_with("cannot serve: cannot listen on 127.0.0.1:8000"),
            "{text}"
        );
    }

    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        super::Cli::command().debug_assert();
    }
}
