//! The commands a new user starts with, against the real binary: `fraisier validate` (every
//! problem at once, with file and key), `fraisier init` (a starter that loads) and
//! `fraisier doctor` (each check with how to fix it, and an exit code that says how bad).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use common::*;

fn fraisier(dir: &Path, args: &[&str]) -> Output {
    Command::new(fraisier_bin())
        .args(args)
        .current_dir(dir)
        .env_remove("FRAISIER_CONFIG")
        .env_remove("FRAISIER_TOKEN")
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn validate_reports_every_problem_with_its_key() {
    let ws = Workspace::new();
    let bad = ws.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "environments:\n  production: {}\nfraises:\n  app:\n    command: \"\"\n    build: make\n    environments:\n      production: { port: 8080, branch: main }\n",
    )
    .unwrap();
    let o = fraisier(ws.path(), &["--config", bad.to_str().unwrap(), "validate"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let out = text(&o);
    for key in [
        "fraises.app.command",
        "fraises.app.build",
        "fraises.app.environments.production.branch",
    ] {
        assert!(
            out.contains(&format!("{}: {key}:", bad.display())),
            "{key} missing: {out}"
        );
    }
    let o = fraisier(
        ws.path(),
        &["--config", bad.to_str().unwrap(), "--json", "validate"],
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["valid"], false);
    assert_eq!(v["problems"].as_array().unwrap().len(), 3, "{v}");
}

#[test]
fn init_writes_a_starter_that_loads() {
    let ws = Workspace::new();
    let repo = ws.path().join("shop");
    std::fs::create_dir_all(&repo).unwrap();
    git(&repo, &["init", "-q", "-b", "trunk"]);
    git(
        &repo,
        &["remote", "add", "origin", "git@github.com:org/shop.git"],
    );
    std::fs::write(repo.join("package.json"), "{}").unwrap();
    let o = fraisier(&repo, &["init"]);
    assert!(o.status.success(), "{}", text(&o));
    let yaml = std::fs::read_to_string(repo.join("fraisier.yaml")).unwrap();
    assert!(yaml.contains("git@github.com:org/shop.git"), "{yaml}");
    assert!(yaml.contains("npm ci && npm run build"), "{yaml}");
    assert!(yaml.contains("branch: \"trunk\""), "{yaml}");
    let o = fraisier(&repo, &["validate"]);
    assert!(o.status.success(), "{}", text(&o));
    // Never over a file that exists, unless asked.
    let o = fraisier(&repo, &["init"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("--force"), "{}", text(&o));
    assert!(fraisier(&repo, &["init", "--force"]).status.success());
}

#[tokio::test]
async fn doctor_checks_the_host_and_says_how_to_fix() {
    let ws = Workspace::new();
    let repo = ws.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    git(&repo, &["commit", "-q", "--allow-empty", "-m", "one"]);
    let port = free_port();
    let site = format!(
        "  site:\n    command: \"exec {}\"\n    source: {{ git: {{ url: \"file://{}\", branch: main }} }}\n    environments:\n      production: {{ port: {} }}\n",
        demo_bin().display(),
        repo.display(),
        free_port()
    );
    let yaml = config_yaml(&ws, port, 1, "rolling", &site);
    let s = Server::start(&ws, &yaml).await;
    // The server listens on an ephemeral port; doctor looks where the file says.
    let config = ws.config_path();
    let addr = s
        .url
        .trim_start_matches("http://")
        .trim_end_matches("/api/v1")
        .to_string();
    let pinned = std::fs::read_to_string(&config)
        .unwrap()
        .replace("listen: \"127.0.0.1:0\"", &format!("listen: \"{addr}\""));
    std::fs::write(&config, pinned).unwrap();

    let o = fraisier(ws.path(), &["--config", config.to_str().unwrap(), "doctor"]);
    let out = text(&o);
    for line in [
        "ok    config:",
        "ok    server:",
        "ok    agent:",
        "ok    database:",
        "ok    keys:",
        "ok    source site:",
    ] {
        assert!(out.contains(line), "{line} missing:\n{out}");
    }
    assert!(
        o.status.code() == Some(0) || o.status.code() == Some(1),
        "{out}"
    );

    // A key others can read, and a branch that does not exist: failures, with the fix.
    let key = s.data_dir.join("secret-keys.json");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let broken = std::fs::read_to_string(&config)
        .unwrap()
        .replace("branch: main", "branch: nope");
    std::fs::write(&config, broken).unwrap();
    let o = fraisier(ws.path(), &["--config", config.to_str().unwrap(), "doctor"]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(2), "{out}");
    assert!(
        out.contains("fail  keys: readable by others") && out.contains("chmod 600"),
        "{out}"
    );
    assert!(
        out.contains("fail  source site:") && out.contains("no branch nope"),
        "{out}"
    );
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
}
