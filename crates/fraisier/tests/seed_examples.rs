//! Seed 000's own examples, unchanged, against a real server on localhost:8000: every curl
//! example, the "Complete Deployment Flow" script, and the Python and JavaScript examples
//! (with the real token in place of "your_bearer_token", the one thing they leave to fill in).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::*;
use serde_json::Value;

fn seed_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/seed")
}

fn run(cmd: &mut Command, what: &str) -> Output {
    let started = std::time::Instant::now();
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{what}: {:.1} s", started.elapsed().as_secs_f64());
    out
}

#[tokio::test]
async fn seed_000_examples_run_unchanged() {
    assert!(
        std::net::TcpListener::bind("127.0.0.1:8000").is_ok(),
        "the seed's examples need localhost:8000, which is taken on this machine"
    );
    let ws = Workspace::new();
    ws.release("1.8.0", &[]);
    ws.release("1.9.0", &[]);
    // Slow enough to start that the seed's cancel example finds the run still going.
    ws.release("2.0.0", &["DEMO_STARTUP_DELAY=1500ms"]);
    let yaml = format!(
        r#"
server:
  listen: "127.0.0.1:8000"
  data_dir: "{data}"
environments:
  production: {{ display_name: Production, description: Live environment, provider: local }}
  staging: {{ display_name: Staging, provider: local }}
fraises:
  my_api:
    type: api
    description: Main API service
    git_provider: github
    git_repo: my-org/my-api
    git_branch: main
    command: "exec {demo}"
    artifact_path: "{releases}/{{version}}"
    health_check: {{ type: http, path: /health, interval: 100ms, timeout: 1s }}
    drain_timeout: 5s
    stop_grace: 2s
    environments:
      production:
        port: {port}
        instances: 2
        strategy: rolling
        strategy_config: {{ max_surge: 2 }}
        strategy_defaults: {{ blue_green: {{ scale_down_delay: 1s }} }}
      staging: {{ port: {staging}, instances: 1 }}
"#,
        data = ws.data_dir().display(),
        demo = demo_bin().display(),
        releases = ws.path().join("releases").display(),
        port = free_port(),
        staging = free_port(),
    );
    let s = Server::start(&ws, &yaml).await;
    let bin_dir = fraisier_bin().parent().unwrap().to_path_buf();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let shell = |script: &str| {
        let mut c = Command::new("bash");
        c.arg(seed_dir().join(script))
            .env("PATH", &path)
            .env("FRAISIER_CONFIG", ws.config_path())
            .current_dir(ws.path());
        c
    };

    // Every curl example, each checked for the status and body the reference documents.
    let out = run(&mut shell("curl_examples.sh"), "the seed's curl examples");
    assert!(String::from_utf8_lossy(&out.stdout)
        .contains("all seed curl examples answered as documented"));

    // The Complete Deployment Flow script, unchanged.
    let out = run(
        &mut shell("complete_flow.sh"),
        "the Complete Deployment Flow",
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("Deployment successful!"), "{stdout}");
    assert!(
        stdout.contains("\"deployment_id\""),
        "the final logs are printed: {stdout}"
    );

    // The Python and JavaScript examples, with a real token.
    let token = cli_token(&ws.config_path());
    let with_token = |file: &str, ext: &str| {
        let text = std::fs::read_to_string(seed_dir().join(file))
            .unwrap()
            .replace("your_bearer_token", &token);
        let p = ws.path().join(format!("example.{ext}"));
        std::fs::write(&p, text).unwrap();
        p
    };
    let out = run(
        Command::new("python3").arg(with_token("example.py", "py")),
        "the Python example",
    );
    let started = String::from_utf8_lossy(&out.stdout).to_string();
    let id = started
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_string();
    assert!(
        started.starts_with("Deployment dep_") && started.trim_end().ends_with("started"),
        "{started}"
    );
    assert_eq!(
        s.wait_run(&id, Duration::from_secs(60)).await["status"],
        "success"
    );

    if Command::new("node").arg("--version").output().is_ok() {
        let out = run(
            Command::new("node").arg(with_token("example.mjs", "mjs")),
            "the JavaScript example",
        );
        let started = String::from_utf8_lossy(&out.stdout).to_string();
        let id = started
            .split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_string();
        assert!(started.starts_with("Deployment dep_"), "{started}");
        let run: Value = s.wait_run(&id, Duration::from_secs(60)).await;
        assert_eq!(run["status"], "success");
        assert_eq!(run["strategy"], "blue_green");
    } else {
        assert!(
            std::env::var("CI").is_err(),
            "node is needed in CI for the JavaScript example"
        );
    }
}
