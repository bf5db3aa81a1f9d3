//! Commands that need no server: `fraisier validate` (every problem of a configuration at
//! once, with its file and key) and `fraisier init` (a commented starter `fraisier.yaml` for
//! the repository in the current directory).

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{bail, Context, Result};
use clap::Args;
use fraisier_model::config::{Config, ConfigError};

#[derive(Args)]
pub struct InitArgs {
    /// Where to write it (default ./fraisier.yaml)
    #[arg(long, default_value = "fraisier.yaml")]
    pub output: PathBuf,
    /// Overwrite an existing file
    #[arg(long)]
    pub force: bool,
}

/// Loads the configuration and reports every problem; exit 1 when there is one.
pub fn validate(path: Option<&Path>, json: bool) -> Result<ExitCode> {
    let path = crate::config_path(path).ok_or_else(|| {
        anyhow::anyhow!("no configuration: pass --config FILE, set FRAISIER_CONFIG, or run where fraisier.yaml is")
    })?;
    match Config::load(&path) {
        Ok(c) => {
            let fraises: usize = c.workspaces.values().map(|w| w.fraises.len()).sum();
            let environments: usize = c.workspaces.values().map(|w| w.environments.len()).sum();
            if json {
                println!(
                    "{}",
                    serde_json::json!({ "valid": true, "file": path, "workspaces": c.workspaces.len(), "fraises": fraises, "environments": environments, "problems": [] })
                );
            } else {
                println!(
                    "{}: valid ({} workspace(s), {fraises} fraise(s), {environments} environment(s))",
                    path.display(),
                    c.workspaces.len()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(ConfigError::Invalid { file, problems }) => {
            if json {
                let list: Vec<_> = problems
                    .iter()
                    .map(|p| serde_json::json!({ "key": p.key, "message": p.message }))
                    .collect();
                println!(
                    "{}",
                    serde_json::json!({ "valid": false, "file": file, "problems": list })
                );
            } else {
                for p in &problems {
                    println!("{}: {}: {}", file.display(), p.key, p.message);
                }
                eprintln!("{} problem(s)", problems.len());
            }
            Ok(ExitCode::FAILURE)
        }
        Err(e) => Err(e.into()),
    }
}

/// Writes a starter configuration for the repository here: its remote, branch and build
/// tool, as far as they can be told. The text is checked to load before it is written.
pub fn init(a: InitArgs) -> Result<ExitCode> {
    if a.output.exists() && !a.force {
        bail!(
            "{} exists: pass --force to overwrite it, or --output FILE",
            a.output.display()
        );
    }
    let here = std::env::current_dir()?;
    let name = fraise_name(&here);
    let git = |args: &[&str]| -> Option<String> {
        let out = Command::new("git").args(args).output().ok()?;
        let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
        (out.status.success() && !s.is_empty()).then_some(s)
    };
    // A remote git would not take as a source (a local path, one carrying a token) leaves
    // the placeholder, with a word.
    let url = git(&["config", "--get", "remote.origin.url"])
        .filter(|u| fraisier_model::config::git_url_problem(u).is_none());
    let branch = git(&["symbolic-ref", "--short", "HEAD"]).unwrap_or_else(|| "main".into());
    let (build, artifact, command) = tooling(&here, &name);
    let text = starter(&name, url.as_deref(), &branch, build, artifact, &command);
    Config::parse(&text)
        .map_err(|p| anyhow::anyhow!("the starter configuration does not load (a bug): {p:?}"))?;
    std::fs::write(&a.output, &text)
        .with_context(|| format!("cannot write {}", a.output.display()))?;
    println!("wrote {}", a.output.display());
    if url.is_none() {
        println!("no git remote here: set fraises.{name}.source.git.url");
    }
    println!(
        "next: `fraisier validate`, then `fraisier serve` and `fraisier deploy {name} staging`"
    );
    Ok(ExitCode::SUCCESS)
}

/// The directory's name as a fraise name (letters, digits, `_`, `-`; starting with a letter).
fn fraise_name(dir: &Path) -> String {
    let raw = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut name: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .take(63)
        .collect();
    if !name.starts_with(|c: char| c.is_ascii_alphabetic())
        || fraisier_model::names::name_problem(&name).is_some()
    {
        name = format!("app_{name}").chars().take(63).collect();
    }
    if fraisier_model::names::name_problem(&name).is_some() {
        name = "app".into();
    }
    name
}

/// The build command, the directory it produces and the command that runs the result, for
/// the build tools this directory shows.
fn tooling(dir: &Path, name: &str) -> (Option<&'static str>, Option<&'static str>, String) {
    if dir.join("package.json").exists() {
        (
            Some("npm ci && npm run build"),
            None,
            "exec npm start".into(),
        )
    } else if dir.join("Cargo.toml").exists() {
        (
            Some("cargo build --release --locked"),
            None,
            format!("exec ./target/release/{name}"),
        )
    } else if dir.join("go.mod").exists() {
        (
            Some("mkdir -p dist && go build -o dist/app ."),
            Some("dist"),
            "exec ./app".into(),
        )
    } else if dir.join("pyproject.toml").exists() || dir.join("requirements.txt").exists() {
        (
            Some("python3 -m venv .venv && .venv/bin/pip install -q -r requirements.txt"),
            None,
            "exec .venv/bin/python -m app".into(),
        )
    } else {
        (None, None, "exec ./run.sh".into())
    }
}

fn starter(
    name: &str,
    url: Option<&str>,
    branch: &str,
    build: Option<&str>,
    artifact: Option<&str>,
    command: &str,
) -> String {
    let url = url.unwrap_or("https://github.com/OWNER/REPOSITORY.git");
    let build = match build {
        Some(b) => {
            format!("    build: {b:?}                 # run in a clean checkout of the commit\n")
        }
        None => {
            "    # build: \"make\"                # run in a clean checkout of the commit\n".into()
        }
    };
    let artifact = match artifact {
        Some(a) => format!("    artifact: {{ path: {a} }}        # what of the built tree is released\n"),
        None => "    # artifact: { path: dist }      # what of the built tree is released (default: all of it)\n".into(),
    };
    format!(
        r#"# fraisier.yaml — written by `fraisier init`; see docs/configuration.md for every key.
# Check it with `fraisier validate`, start the server with `fraisier serve`.
server:
  listen: "127.0.0.1:8000"
  data_dir: ".fraisier"           # SQLite, keys, agent state (mode 0700; keep it out of git)

environments:
  staging: {{ display_name: Staging }}
  production: {{ display_name: Production, required_approvals: 1 }}   # someone else approves

# Deliveries of pushes: point the host's webhook at http(s)://<server>/api/v1/webhook.
# webhooks:
#   github: {{ secret: "${{GITHUB_WEBHOOK_SECRET}}" }}

fraises:
  {name}:
    type: api
    source: {{ git: {{ url: {url:?}, branch: {branch:?} }} }}
{build}{artifact}    command: {command:?}   # sh -c in the release; $PORT is the instance's port
    health_check: {{ type: http, path: /health }}
    # migrations: {{ up: "./migrate up", down: "./migrate down $FRAISIER_MIGRATION_STEPS", status: "./migrate count" }}
    environments:
      staging: {{ port: 18081, instances: 1, branch: {branch:?} }}   # a push to {branch} deploys here
      production: {{ port: 18080, instances: 2, strategy: rolling }}
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_starter_loads() {
        for (build, artifact, command) in [
            tooling(Path::new("/nonexistent"), "app"),
            (
                Some("npm ci && npm run build"),
                None,
                "exec npm start".into(),
            ),
            (Some("go build"), Some("dist"), "exec ./app".into()),
        ] {
            for url in [None, Some("git@github.com:org/app.git")] {
                let text = starter("app", url, "main", build, artifact, &command);
                Config::parse(&text).unwrap_or_else(|p| panic!("{p:?}\n{text}"));
            }
        }
        assert_eq!(fraise_name(Path::new("/src/My App")), "my_app");
        assert_eq!(fraise_name(Path::new("/src/2048")), "app_2048");
    }
}
