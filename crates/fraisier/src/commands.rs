//! The CLI's client commands: deploy, status, list, history, logs, rollback, cancel, show,
//! approve, reject, approvals.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use fraisier_client::ApiClient;
use futures_util::StreamExt;
use serde_json::{json, Value};

use crate::credentials;
use crate::table::render;

pub struct Ctx {
    pub config_path: Option<PathBuf>,
    pub server: Option<String>,
    pub json: bool,
}

#[derive(Args)]
pub struct DeployArgs {
    pub fraise: String,
    pub environment: String,
    /// Default: the latest known version, or for a fraise built from git the head of its
    /// branch. From git: a tag or a commit.
    #[arg(long = "version", short = 'v', id = "release_version")]
    pub release_version: Option<String>,
    /// For a fraise built from git: a branch or tag, resolved to its commit now
    #[arg(long = "ref", id = "git_ref", conflicts_with = "release_version")]
    pub git_ref: Option<String>,
    /// Deploy even when that commit already runs there
    #[arg(long)]
    pub force: bool,
    /// Do not run the fraise's migrations
    #[arg(long)]
    pub no_migrate: bool,
    /// rolling | blue_green | canary | recreate (default: the environment's)
    #[arg(long, short)]
    pub strategy: Option<String>,
    /// strategy_config as JSON, e.g. '{"max_surge": 2}'
    #[arg(long)]
    pub strategy_config: Option<String>,
    /// Follow the run's steps until it finishes; the exit code tells how it ended
    #[arg(long, short)]
    pub wait: bool,
    #[arg(long)]
    pub skip_health_check: bool,
}

#[derive(Args)]
pub struct StatusArgs {
    pub fraise: Option<String>,
    #[arg(long, short)]
    pub environment: Option<String>,
}

#[derive(Args)]
pub struct ListArgs {
    #[arg(long)]
    pub fraise: Option<String>,
    #[arg(long, short)]
    pub environment: Option<String>,
    #[arg(long)]
    pub status: Option<String>,
    #[arg(long, default_value_t = 20)]
    pub limit: u32,
}

#[derive(Args)]
pub struct HistoryArgs {
    pub fraise: String,
    #[arg(long, short)]
    pub environment: Option<String>,
    #[arg(long, default_value_t = 20)]
    pub limit: u32,
}

#[derive(Args)]
pub struct LogsArgs {
    pub deployment_id: String,
    /// Stream new lines until the run finishes
    #[arg(long, short)]
    pub follow: bool,
    #[arg(long, default_value_t = 100)]
    pub lines: u32,
    #[arg(long)]
    pub level: Option<String>,
    #[arg(long)]
    pub component: Option<String>,
}

#[derive(Args)]
pub struct RollbackArgs {
    pub fraise: String,
    pub environment: String,
    /// Default: the previous version
    #[arg(long)]
    pub to: Option<String>,
    #[arg(long)]
    pub reason: Option<String>,
    #[arg(long, short)]
    pub wait: bool,
    /// Leave the database as it is (do not undo the version's migrations)
    #[arg(long)]
    pub no_migrate: bool,
}

#[derive(Args)]
pub struct CancelArgs {
    pub deployment_id: String,
}

#[derive(Args)]
pub struct ShowArgs {
    pub deployment_id: String,
}

#[derive(Args)]
pub struct DecisionArgs {
    pub deployment_id: String,
    #[arg(long, short)]
    pub comment: Option<String>,
}

/// A client for the server, with `FRAISIER_API_KEY` or a token (see `credentials`).
pub async fn client(ctx: &Ctx) -> Result<ApiClient> {
    if let Some(key) = std::env::var("FRAISIER_API_KEY")
        .ok()
        .filter(|k| !k.is_empty())
    {
        return Ok(ApiClient::with_api_key(&credentials::server_url(ctx), key));
    }
    let token = credentials::token(ctx).await?;
    Ok(ApiClient::new(&credentials::server_url(ctx), Some(token)))
}

pub fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

pub fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

fn exit_for(status: &str) -> ExitCode {
    if status == "success" {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

pub async fn deploy(ctx: &Ctx, a: DeployArgs) -> Result<ExitCode> {
    let c = client(ctx).await?;
    let mut body = json!({});
    if let Some(v) = a.release_version {
        body["version"] = json!(v);
    }
    if let Some(r) = a.git_ref {
        body["ref"] = json!(r);
    }
    if a.force {
        body["force"] = json!(true);
    }
    if a.no_migrate {
        body["migrate"] = json!(false);
    }
    if let Some(st) = a.strategy {
        body["strategy"] = json!(st);
    }
    if let Some(sc) = a.strategy_config {
        body["strategy_config"] =
            serde_json::from_str(&sc).context("--strategy-config must be a JSON object")?;
    }
    if a.skip_health_check {
        body["skip_health_check"] = json!(true);
    }
    let (_, created) = c
        .post(
            &format!("/deployments/{}/{}", a.fraise, a.environment),
            &body,
        )
        .await?;
    let id = s(&created["id"]);
    if created["approval"].is_object() && !ctx.json {
        eprintln!(
            "{id} waits for {} approval(s) before it starts (until {}): `fraisier approve {id}` by someone else",
            s(&created["approval"]["required"]),
            s(&created["approval"]["expires_at"])
        );
    }
    if !a.wait {
        if ctx.json {
            print_json(&created);
        } else {
            println!(
                "{id} {} {} → {} ({})",
                created["status"].as_str().unwrap_or(""),
                a.fraise,
                s(&created["version"]),
                s(&created["strategy"])
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    if !ctx.json {
        eprintln!(
            "{id}: deploying {} {} to {} ({})",
            a.fraise,
            s(&created["version"]),
            a.environment,
            s(&created["strategy"])
        );
        if let Err(e) = watch_progress(&c, &id).await {
            eprintln!("(live progress unavailable: {e:#}; waiting for the result)");
        }
    }
    finish(ctx, &c, &id).await
}

/// Polls the run until it is final, then prints it; the exit code says whether it succeeded.
/// Polls slow down to one every 2 s, so that waiting spends little of the rate limit.
pub async fn finish(ctx: &Ctx, c: &ApiClient, id: &str) -> Result<ExitCode> {
    let mut pause = Duration::from_millis(250);
    loop {
        let run = c.get(&format!("/deployments/{id}"), &[]).await?;
        let status = s(&run["status"]);
        if matches!(status.as_str(), "success" | "failed" | "cancelled") {
            if ctx.json {
                print_json(&run);
            } else {
                print_run(&run);
            }
            return Ok(exit_for(&status));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(2));
    }
}

/// Draws a progress bar from the run's WebSocket progress messages until it closes.
async fn watch_progress(c: &ApiClient, id: &str) -> Result<()> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Message;
    let url = format!(
        "{}/deployments/{id}/progress",
        c.base().replacen("http", "ws", 1)
    );
    let mut req = url.into_client_request()?;
    if let Some(t) = c.token() {
        req.headers_mut()
            .insert("authorization", format!("Bearer {t}").parse()?);
    }
    if let Some(k) = c.api_key() {
        req.headers_mut().insert("x-api-key", k.parse()?);
    }
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await?;
    while let Some(msg) = ws.next().await {
        let Message::Text(text) = msg? else { continue };
        let p: Value = serde_json::from_str(&text)?;
        let pct = p["progress_pct"].as_u64().unwrap_or(0).min(100) as usize;
        let bar = format!("{}{}", "#".repeat(pct / 5), "-".repeat(20 - pct / 5));
        eprintln!(
            "[{bar}] {pct:>3}%  {:<44} {}",
            s(&p["step"]),
            s(&p["status"])
        );
        if s(&p["step"]) == "finished" {
            break;
        }
    }
    Ok(())
}

fn print_run(run: &Value) {
    println!(
        "{}  {}  {} → {} in {}  ({})",
        s(&run["id"]),
        s(&run["status"]).to_uppercase(),
        s(&run["previous_version"]),
        s(&run["version"]),
        s(&run["environment"]),
        s(&run["strategy"])
    );
    if let Some(steps) = run["steps"].as_array() {
        let rows: Vec<Vec<String>> = steps
            .iter()
            .map(|st| {
                vec![
                    s(&st["status"]),
                    s(&st["name"]),
                    st["error"]
                        .as_str()
                        .or(st["message"].as_str())
                        .unwrap_or("")
                        .to_string(),
                ]
            })
            .collect();
        print!("{}", render(&["step", "name", "message"], &rows));
    }
    if let Some(e) = run["error"].as_object() {
        println!("error: {}: {}", s(&e["code"]), s(&e["message"]));
    }
}

pub async fn show(ctx: &Ctx, a: ShowArgs) -> Result<ExitCode> {
    let c = client(ctx).await?;
    let run = c
        .get(&format!("/deployments/{}", a.deployment_id), &[])
        .await?;
    if ctx.json {
        print_json(&run);
    } else {
        print_run(&run);
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn status(ctx: &Ctx, a: StatusArgs) -> Result<ExitCode> {
    let c = client(ctx).await?;
    let names: Vec<String> = match a.fraise {
        Some(f) => vec![f],
        None => c.get("/fraises", &[("limit", "500".into())]).await?["fraises"]
            .as_array()
            .map(|l| l.iter().map(|f| s(&f["name"])).collect())
            .unwrap_or_default(),
    };
    let mut all = Vec::new();
    let mut rows = Vec::new();
    let mut jobs = Vec::new();
    for name in names {
        let q: Vec<(&str, String)> = a
            .environment
            .iter()
            .map(|e| ("environment", e.clone()))
            .collect();
        let st = c.get(&format!("/fraises/{name}/status"), &q).await?;
        if let Some(envs) = st["environments"].as_object() {
            for (env, e) in envs {
                let schedule = &e["schedule"];
                if schedule.is_object() {
                    // A job: when it runs next and how its last execution ended.
                    let last = schedule["executions"]
                        .as_array()
                        .and_then(|l| l.iter().find(|x| x["status"] != "running"))
                        .unwrap_or(&Value::Null);
                    jobs.push(vec![
                        name.clone(),
                        env.clone(),
                        s(&e["current_version"]),
                        s(&e["status"]),
                        s(&schedule["cron"]),
                        s(&schedule["next_run_at"]),
                        format!("{} ({})", s(&last["status"]), s(&last["exit_code"])),
                    ]);
                    continue;
                }
                rows.push(vec![
                    name.clone(),
                    env.clone(),
                    s(&e["current_version"]),
                    s(&e["status"]),
                    format!("{}/{}", s(&e["instances_healthy"]), s(&e["instances"])),
                    format!("{}%", s(&e["metrics"]["error_rate"])),
                    format!("{} ms", s(&e["metrics"]["latency_p99_ms"])),
                ]);
            }
        }
        all.push(st);
    }
    if ctx.json {
        print_json(&Value::Array(all));
    } else {
        print!(
            "{}",
            render(
                &[
                    "fraise",
                    "environment",
                    "version",
                    "status",
                    "healthy",
                    "errors",
                    "p99"
                ],
                &rows
            )
        );
        if !jobs.is_empty() {
            println!();
            print!(
                "{}",
                render(
                    &[
                        "fraise",
                        "environment",
                        "version",
                        "status",
                        "schedule",
                        "next run",
                        "last finished (exit)"
                    ],
                    &jobs
                )
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn run_rows(list: &[Value]) -> Vec<Vec<String>> {
    list.iter()
        .map(|r| {
            vec![
                s(&r["id"]),
                s(&r["fraise"]),
                s(&r["environment"]),
                s(&r["version"]),
                s(&r["strategy"]),
                s(&r["status"]),
                s(&r["created_at"]),
                s(&r["duration_seconds"]),
            ]
        })
        .collect()
}

const RUN_HEADERS: &[&str] = &[
    "id",
    "fraise",
    "environment",
    "version",
    "strategy",
    "status",
    "created",
    "seconds",
];

pub async fn list(ctx: &Ctx, a: ListArgs) -> Result<ExitCode> {
    let c = client(ctx).await?;
    let mut q: Vec<(&str, String)> = vec![
        ("limit", a.limit.to_string()),
        ("sort", "-created_at".into()),
    ];
    for (k, v) in [
        ("fraise", a.fraise),
        ("environment", a.environment),
        ("status", a.status),
    ] {
        if let Some(v) = v {
            q.push((k, v));
        }
    }
    let body = c.get("/deployments", &q).await?;
    if ctx.json {
        print_json(&body);
    } else {
        print!(
            "{}",
            render(
                RUN_HEADERS,
                &run_rows(body["deployments"].as_array().map_or(&[][..], |v| v))
            )
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn history(ctx: &Ctx, a: HistoryArgs) -> Result<ExitCode> {
    let c = client(ctx).await?;
    let mut q: Vec<(&str, String)> = vec![("limit", a.limit.to_string())];
    if let Some(e) = a.environment {
        q.push(("environment", e));
    }
    let body = c.get(&format!("/fraises/{}/history", a.fraise), &q).await?;
    if ctx.json {
        print_json(&body);
    } else {
        let rows: Vec<Vec<String>> = body["history"]
            .as_array()
            .map_or(&[][..], |v| v)
            .iter()
            .map(|r| {
                vec![
                    s(&r["id"]),
                    s(&r["environment"]),
                    s(&r["previous_version"]),
                    s(&r["version"]),
                    s(&r["type"]),
                    s(&r["status"]),
                    s(&r["triggered_by"]),
                    s(&r["created_at"]),
                ]
            })
            .collect();
        print!(
            "{}",
            render(
                &[
                    "id",
                    "environment",
                    "from",
                    "to",
                    "type",
                    "status",
                    "by",
                    "created"
                ],
                &rows
            )
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn print_log(l: &Value) {
    println!(
        "{} {:<5} {:<12} {}",
        s(&l["timestamp"]),
        s(&l["level"]),
        s(&l["component"]),
        s(&l["message"])
    );
}

pub async fn logs(ctx: &Ctx, a: LogsArgs) -> Result<ExitCode> {
    let c = client(ctx).await?;
    let mut q: Vec<(&str, String)> = vec![("lines", a.lines.to_string())];
    for (k, v) in [("level", a.level), ("component", a.component)] {
        if let Some(v) = v {
            q.push((k, v));
        }
    }
    let path = format!("/deployments/{}/logs", a.deployment_id);
    if !a.follow {
        let body = c.get(&path, &q).await?;
        if ctx.json {
            print_json(&body);
        } else {
            body["logs"]
                .as_array()
                .map_or(&[][..], |v| v)
                .iter()
                .for_each(print_log);
        }
        return Ok(ExitCode::SUCCESS);
    }
    q.push(("follow", "true".into()));
    let resp = c.get_raw(&path, &q).await?;
    if !resp.status().is_success() {
        let v: Value = resp.json().await.unwrap_or_default();
        anyhow::bail!("{}: {}", s(&v["error"]["code"]), s(&v["error"]["message"]));
    }
    // SSE: `event:` and `data:` lines, events separated by a blank line.
    let mut stream = resp.bytes_stream();
    let mut buf = String::new();
    let mut event = String::new();
    while let Some(chunk) = stream.next().await {
        buf.push_str(&String::from_utf8_lossy(&chunk?));
        while let Some(i) = buf.find('\n') {
            let line: String = buf.drain(..=i).collect();
            let line = line.trim_end_matches(['\n', '\r']);
            if let Some(e) = line.strip_prefix("event:") {
                event = e.trim().to_string();
            } else if let Some(d) = line.strip_prefix("data:") {
                match event.as_str() {
                    "end" => return Ok(ExitCode::SUCCESS),
                    "log" => {
                        let v: Value = serde_json::from_str(d.trim()).unwrap_or_default();
                        if ctx.json {
                            println!("{}", v)
                        } else {
                            print_log(&v)
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn rollback(ctx: &Ctx, a: RollbackArgs) -> Result<ExitCode> {
    let c = client(ctx).await?;
    let mut body = json!({ "to_version": a.to, "reason": a.reason });
    if a.no_migrate {
        body["migrate"] = json!(false);
    }
    let (_, r) = c
        .post(
            &format!("/deployments/{}/{}/rollback", a.fraise, a.environment),
            &body,
        )
        .await?;
    let id = s(&r["id"]);
    if !a.wait {
        if ctx.json {
            print_json(&r)
        } else {
            println!(
                "{id} rollback {} → {} pending",
                s(&r["from_version"]),
                s(&r["to_version"])
            )
        }
        return Ok(ExitCode::SUCCESS);
    }
    finish(ctx, &c, &id).await
}

pub async fn cancel(ctx: &Ctx, a: CancelArgs) -> Result<ExitCode> {
    let c = client(ctx).await?;
    let (_, r) = c
        .delete(&format!("/deployments/{}", a.deployment_id))
        .await?;
    if ctx.json {
        print_json(&r);
    } else {
        println!(
            "{} {} (by {})",
            s(&r["id"]),
            s(&r["status"]),
            s(&r["cancelled_by"])
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `fraisier approve` / `fraisier reject`.
pub async fn decide(ctx: &Ctx, a: DecisionArgs, approve: bool) -> Result<ExitCode> {
    let c = client(ctx).await?;
    let verb = if approve { "approve" } else { "reject" };
    let (_, run) = c
        .post(
            &format!("/deployments/{}/{verb}", a.deployment_id),
            &json!({ "comment": a.comment }),
        )
        .await?;
    if ctx.json {
        print_json(&run);
    } else {
        let ap = &run["approval"];
        println!(
            "{} {}: {}/{} approvals, {} ({})",
            s(&run["id"]),
            if approve { "approved" } else { "rejected" },
            s(&ap["received"]),
            s(&ap["required"]),
            s(&ap["status"]),
            s(&run["status"])
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `fraisier approvals`: runs waiting for you.
pub async fn approvals(ctx: &Ctx) -> Result<ExitCode> {
    let c = client(ctx).await?;
    let v = c.get("/my/pending-approvals", &[]).await?;
    if ctx.json {
        print_json(&v);
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = v["approvals"]
        .as_array()
        .map_or(&[][..], |a| a)
        .iter()
        .map(|a| {
            vec![
                s(&a["deployment_id"]),
                s(&a["fraise"]),
                s(&a["environment"]),
                s(&a["version"]),
                s(&a["requested_by"]),
                format!("{}/{}", s(&a["received"]), s(&a["required"])),
                s(&a["expires_at"]),
            ]
        })
        .collect();
    print!(
        "{}",
        render(
            &[
                "id",
                "fraise",
                "environment",
                "version",
                "asked by",
                "approvals",
                "until"
            ],
            &rows
        )
    );
    Ok(ExitCode::SUCCESS)
}
