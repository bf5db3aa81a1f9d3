//! Releases built from git against the real binary and a real repository: a branch deploys
//! its head (versioned by its short commit id, or its tag), the build's output lands in the
//! run's log, the commit already running is skipped unless forced, a failing build moves
//! nothing, and what was built stays in the artifact store for rollbacks.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// Commits `build.sh` (the fraise's build runs it) and returns the new commit.
fn commit(repo: &Path, build_sh: &str, message: &str) -> String {
    std::fs::write(repo.join("build.sh"), build_sh).unwrap();
    git(repo, &["add", "-A"]);
    git(repo, &["commit", "-q", "-m", message]);
    git(repo, &["rev-parse", "HEAD"])
}

/// A build that writes the release the demo app reads, saying which commit it built.
const GOOD_BUILD: &str = "set -e\necho \"building $FRAISIER_COMMIT ($FRAISIER_REF)\"\n\
mkdir -p dist\necho \"DEMO_VERSION=$FRAISIER_VERSION\" > dist/demo.env\necho warning: on stderr >&2\n";

fn git_yaml(ws: &Workspace, repo: &Path, port: u16) -> String {
    format!(
        r#"
server:
  listen: "127.0.0.1:0"
  data_dir: "{data}"
  rate_limits: off
environments:
  production: {{ provider: local }}
fraises:
  app:
    type: api
    command: "exec {demo}"
    source: {{ git: {{ url: "file://{repo}", branch: main }} }}
    build: "sh build.sh"
    build_timeout: 20s
    artifact: {{ path: dist }}
    health_check: {{ type: http, path: /health, interval: 100ms, timeout: 1s, healthy_threshold: 1, unhealthy_threshold: 2 }}
    drain_timeout: 2s
    stop_grace: 2s
    environments:
      production: {{ port: {port}, instances: 1, strategy: rolling }}
"#,
        data = ws.data_dir().display(),
        demo = demo_bin().display(),
        repo = repo.display(),
    )
}

fn steps(run: &Value) -> Vec<(String, String)> {
    run["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap_or_default().to_string(),
                s["status"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn branches_and_tags_are_built_deployed_skipped_and_kept() {
    let ws = Workspace::new();
    let repo = ws.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    let first = commit(&repo, GOOD_BUILD, "first");
    let short = &first[..12];
    let port = free_port();
    let s = Server::start(&ws, &git_yaml(&ws, &repo, port)).await;

    // No version: the configured branch's head, versioned by its short commit id.
    let id = s.deploy("app", "production", json!({})).await;
    let run = s.wait_run(&id, Duration::from_secs(60)).await;
    assert_eq!(run["status"], "success", "{run:#}");
    assert_eq!(run["version"], short);
    assert_eq!(run["metadata"]["commit"], first.as_str());
    assert_eq!(run["metadata"]["ref"], "main");
    let digest = run["metadata"]["artifact_digest"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(digest.starts_with("sha256:"), "{run:#}");
    assert_eq!(steps(&run)[0], ("build release".into(), "completed".into()));
    assert_eq!(router_version(port).await.as_deref(), Some(short));
    // The build's output, stdout and stderr, is in the run's log under `build`.
    let (_, logs) = s
        .get(&format!("/deployments/{id}/logs?component=build&lines=100"))
        .await;
    let lines: Vec<&str> = logs["logs"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["message"].as_str())
        .collect();
    assert!(
        lines.contains(&format!("building {first} (main)").as_str()),
        "{lines:?}"
    );
    assert!(lines.contains(&"warning: on stderr"), "{lines:?}");
    // What was built is an artifact version like any other.
    let (status, v) = s.get(&format!("/artifacts/app/versions/{short}")).await;
    assert_eq!(
        (status, v["digest"].as_str()),
        (200, Some(digest.as_str())),
        "{v}"
    );
    assert_eq!(v["metadata"]["commit"], first.as_str(), "{v}");

    // The same commit again: skipped, unless forced (then built no more: the store has it).
    let id = s.deploy("app", "production", json!({"ref": "main"})).await;
    let run = s.wait_run(&id, Duration::from_secs(30)).await;
    assert_eq!(run["status"], "success", "{run:#}");
    assert_eq!(
        steps(&run),
        vec![("already deployed".to_string(), "skipped".to_string())]
    );
    let id = s
        .deploy(
            "app",
            "production",
            json!({"version": short, "force": true}),
        )
        .await;
    let run = s.wait_run(&id, Duration::from_secs(60)).await;
    assert_eq!(run["status"], "success", "{run:#}");
    assert!(steps(&run).len() > 3, "{run:#}");
    assert!(!steps(&run).iter().any(|(n, _)| n == "build release"));

    // A tagged commit is released as its tag.
    let second = commit(&repo, &format!("{GOOD_BUILD}# two\n"), "second");
    git(&repo, &["tag", "1.1.0"]);
    let id = s.deploy("app", "production", json!({"ref": "main"})).await;
    let run = s.wait_run(&id, Duration::from_secs(60)).await;
    assert_eq!(run["status"], "success", "{run:#}");
    assert_eq!(run["version"], "1.1.0");
    assert_eq!(run["metadata"]["commit"], second.as_str());
    assert_eq!(router_version(port).await.as_deref(), Some("1.1.0"));

    // A failing build moves nothing and stores nothing.
    let third = commit(
        &repo,
        "echo compiling\necho 'error: it broke' >&2\nexit 3\n",
        "broken",
    );
    let id = s.deploy("app", "production", json!({})).await;
    let run = s.wait_run(&id, Duration::from_secs(60)).await;
    assert_eq!(run["status"], "failed", "{run:#}");
    assert_eq!(run["error"]["code"], "BUILD_FAILED", "{run:#}");
    assert!(
        run["error"]["message"]
            .as_str()
            .unwrap()
            .contains("exited with 3"),
        "{run:#}"
    );
    assert_eq!(router_version(port).await.as_deref(), Some("1.1.0"));
    let (status, _) = s
        .get(&format!("/artifacts/app/versions/{}", &third[..12]))
        .await;
    assert_eq!(status, 404);
    let (_, logs) = s
        .get(&format!("/deployments/{id}/logs?component=build&lines=100"))
        .await;
    assert!(logs.to_string().contains("error: it broke"), "{logs}");

    // A build that leaves a process holding its output open still ends when its shell does.
    let started = std::time::Instant::now();
    commit(&repo, &format!("{GOOD_BUILD}sleep 31.75 &\n"), "daemon");
    let id = s.deploy("app", "production", json!({})).await;
    let run = s.wait_run(&id, Duration::from_secs(60)).await;
    assert_eq!(run["status"], "success", "{run:#}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    assert!(
        !pgrep("sleep 31.75"),
        "the build's background process outlived it"
    );

    // Bad requests name their field and create nothing.
    for (body, field) in [
        (json!({"ref": "no-such-branch"}), "ref"),
        (json!({"version": "deadbeef0000"}), "version"),
        (json!({"version": "1.1.0", "ref": "main"}), "ref"),
    ] {
        let (status, v) = s.post("/deployments/app/production", body.clone()).await;
        assert_eq!(status, 400, "{body}: {v}");
        assert_eq!(v["error"]["details"]["field"], field, "{body}: {v}");
    }

    // Rollback reaches the first build, from the store.
    let (status, v) = s
        .post(
            "/deployments/app/production/rollback",
            json!({"to_version": short}),
        )
        .await;
    assert_eq!(status, 202, "{v}");
    let run = s
        .wait_run(v["id"].as_str().unwrap(), Duration::from_secs(60))
        .await;
    assert_eq!(run["status"], "success", "{run:#}");
    assert_eq!(router_version(port).await.as_deref(), Some(short));

    // Cancelling a run stops its build, and whatever the build started goes with it.
    commit(&repo, "echo started\nsleep 31.25 &\nsleep 31.5\n", "slow");
    let id = s.deploy("app", "production", json!({})).await;
    for _ in 0..100 {
        if pgrep("sleep 31.5") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(pgrep("sleep 31.5"), "the build never started");
    let (status, v) = s.delete(&format!("/deployments/{id}")).await;
    assert_eq!(status, 202, "{v}");
    let run = s.wait_run(&id, Duration::from_secs(10)).await;
    assert_eq!(run["status"], "cancelled", "{run:#}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !pgrep("sleep 31.5") && !pgrep("sleep 31.25"),
        "the build outlived its run"
    );
    assert_eq!(router_version(port).await.as_deref(), Some(short));

    // The CLI names a ref the same way.
    let out = Command::new(fraisier_bin())
        .args([
            "--server",
            &s.url,
            "deploy",
            "app",
            "production",
            "--ref",
            "1.1.0",
            "--wait",
        ])
        .env("FRAISIER_TOKEN", &s.token)
        .env_remove("FRAISIER_CONFIG")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(router_version(port).await.as_deref(), Some("1.1.0"));
}

fn pgrep(pattern: &str) -> bool {
    Command::new("pgrep")
        .args(["-f", pattern])
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap()
        .success()
}

#[tokio::test]
async fn seed_003_sources_are_listed_checked_and_deployed() {
    let ws = Workspace::new();
    let repo = ws.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    let head = commit(&repo, GOOD_BUILD, "first");
    let port = free_port();
    let s = Server::start(&ws, &git_yaml(&ws, &repo, port)).await;

    let (status, v) = s.get("/deployments/sources").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["sources"][0]["fraise"], "app");
    assert_eq!(v["sources"][0]["type"], "git");
    assert_eq!(v["sources"][0]["branch"], "main");
    assert_eq!(v["sources"][0]["url"], format!("file://{}", repo.display()));

    // Checks: a ref that resolves, one that does not, an artifact the store lacks.
    let (status, v) = s
        .post("/deployments/sources/validate", json!({"fraise": "app"}))
        .await;
    assert_eq!((status, v["valid"].as_bool()), (200, Some(true)), "{v}");
    assert_eq!(v["commit"], head.as_str());
    assert_eq!(v["version"], &head[..12]);
    let (_, v) = s
        .post(
            "/deployments/sources/validate",
            json!({"fraise": "app", "ref": "nope"}),
        )
        .await;
    assert_eq!(v["valid"], false, "{v}");
    assert_eq!(v["checks"][1]["check"], "ref", "{v}");
    assert_eq!(v["checks"][1]["ok"], false, "{v}");
    let (_, v) = s
        .post(
            "/deployments/sources/validate",
            json!({"artifact": "app", "version": "9.9.9"}),
        )
        .await;
    assert_eq!(v["valid"], false, "{v}");
    for (body, status, field) in [
        (json!({}), 400, Some("fraise")),
        (json!({"url": "file:///etc"}), 400, Some("url")),
        (json!({"url": "-oProxyCommand=x"}), 400, Some("url")),
        // The fuzzer's: an empty url beside an artifact check was answered 200.
        (
            json!({"artifact": "app", "version": "9.9.9", "url": ""}),
            400,
            Some("url"),
        ),
        (json!({"fraise": "app", "ref": ""}), 400, Some("ref")),
        (
            json!({"fraise": "app", "ref": "r".repeat(256)}),
            400,
            Some("ref"),
        ),
        (json!({"fraise": "ghost"}), 404, None),
    ] {
        let (st, v) = s.post("/deployments/sources/validate", body.clone()).await;
        assert_eq!(st, status, "{body}: {v}");
        assert_eq!(
            v["error"]["details"]["field"].as_str(),
            field,
            "{body}: {v}"
        );
    }

    // From git, by repository and ref.
    let (status, v) = s
        .post(
            "/deployments/github",
            json!({"fraise": "app", "environment": "production", "ref": "main"}),
        )
        .await;
    assert_eq!(status, 202, "{v}");
    let run = s
        .wait_run(v["id"].as_str().unwrap(), Duration::from_secs(60))
        .await;
    assert_eq!(run["status"], "success", "{run:#}");
    assert_eq!(router_version(port).await.as_deref(), Some(&head[..12]));
    let (status, v) = s
        .post(
            "/deployments/github",
            json!({"fraise": "app", "environment": "production", "repository": "someone/else"}),
        )
        .await;
    assert_eq!(
        (status, v["error"]["details"]["field"].as_str()),
        (400, Some("repository")),
        "{v}"
    );

    // An upload, stored as the fraise's version and deployed as it is.
    let release = ws.path().join("upload");
    std::fs::create_dir_all(&release).unwrap();
    std::fs::write(release.join("demo.env"), "DEMO_VERSION=3.0.0\n").unwrap();
    let tarball = ws.path().join("upload.tar.gz");
    assert!(Command::new("tar")
        .arg("czf")
        .arg(&tarball)
        .arg("-C")
        .arg(&release)
        .arg(".")
        .status()
        .unwrap()
        .success());
    let r = s
        .http
        .post(format!(
            "{}/deployments/direct?fraise=app&environment=production&version=3.0.0",
            s.url
        ))
        .bearer_auth(&s.token)
        .header("content-type", "application/octet-stream")
        .body(std::fs::read(&tarball).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let v: Value = r.json().await.unwrap();
    let run = s
        .wait_run(v["id"].as_str().unwrap(), Duration::from_secs(60))
        .await;
    assert_eq!(run["status"], "success", "{run:#}");
    assert_eq!(router_version(port).await.as_deref(), Some("3.0.0"));
    let (status, _) = s.get("/artifacts/app/versions/3.0.0").await;
    assert_eq!(status, 200);
    // A tag named like that upload does not pass the upload off as the tag's build.
    git(&repo, &["tag", "3.0.0"]);
    let (status, v) = s
        .post("/deployments/app/production", json!({"ref": "3.0.0"}))
        .await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (409, Some("ARTIFACT_CONFLICT")),
        "{v}"
    );

    // A version the store has, by JSON; one it lacks.
    let (status, v) = s
        .post(
            "/deployments/direct",
            json!({"fraise": "app", "environment": "production", "version": &head[..12]}),
        )
        .await;
    assert_eq!(status, 202, "{v}");
    let run = s
        .wait_run(v["id"].as_str().unwrap(), Duration::from_secs(60))
        .await;
    assert_eq!(run["status"], "success", "{run:#}");
    assert_eq!(router_version(port).await.as_deref(), Some(&head[..12]));
    let (status, v) = s
        .post(
            "/deployments/direct",
            json!({"fraise": "app", "environment": "production", "version": "7.0.0"}),
        )
        .await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (404, Some("ARTIFACT_NOT_FOUND")),
        "{v}"
    );

    // Helm needs Kubernetes, which is not here.
    let (status, v) = s.post("/deployments/helm", json!({"chart": "x"})).await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (422, Some("PROVIDER_UNSUPPORTED")),
        "{v}"
    );
}

/// `fraisier secret workspace set NAME` with the value on stdin.
fn store_secret(s: &Server, name: &str, value: &str) {
    use std::io::Write;
    let mut child = Command::new(fraisier_bin())
        .args(["--server", &s.url, "secret", "workspace", "set", name])
        .env("FRAISIER_TOKEN", &s.token)
        .env_remove("FRAISIER_CONFIG")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{value}").unwrap();
    let out = child.wait_with_output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains(&format!("${{secret:{name}}}")), "{text}");
}

#[tokio::test]
async fn a_private_repository_is_fetched_with_a_stored_token_that_is_never_shown() {
    let ws = Workspace::new();
    let repo = ws.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    let first = commit(&repo, GOOD_BUILD, "first");
    let served = ws.path().join("served");
    std::fs::create_dir_all(&served).unwrap();
    let bare = served.join("shop.git");
    git(
        ws.path(),
        &[
            "clone",
            "-q",
            "--bare",
            repo.to_str().unwrap(),
            bare.to_str().unwrap(),
        ],
    );
    const TOKEN: &str = "ghp_s3cretT0kenFromTheVault";
    let host = Sidecar::start(
        "python3",
        "git_http.py",
        &[served.to_str().unwrap(), "x-access-token", TOKEN],
    );
    let url = format!("http://127.0.0.1:{}/shop.git", host.port);
    let port = free_port();
    let yaml = git_yaml(&ws, &repo, port)
        .replace(
            &format!("source: {{ git: {{ url: \"file://{}\", branch: main }} }}", repo.display()),
            &format!("source: {{ git: {{ url: \"{url}\", branch: main, token: \"${{secret:SHOP_GIT_TOKEN}}\" }} }}"),
        )
        + &format!(
            "  moved:\n    type: api\n    command: \"exec {demo}\"\n    source: {{ git: {{ url: \"http://127.0.0.1:{p}/moved/shop.git\", branch: main, token: \"${{secret:SHOP_GIT_TOKEN}}\" }} }}\n    build: \"sh build.sh\"\n    artifact: {{ path: dist }}\n    environments:\n      production: {{ port: {moved_port}, instances: 1 }}\n",
            demo = demo_bin().display(),
            p = host.port,
            moved_port = free_port(),
        )
        + "webhooks:\n  github: { secret: \"${secret:GITHUB_HOOK_SECRET}\" }\n";
    assert!(yaml.contains("SHOP_GIT_TOKEN"), "{yaml}");
    let s = Server::start(&ws, &yaml).await;

    // Not stored yet: the deploy is refused, naming the secret and how to store it.
    let (status, v) = s
        .post(
            "/deployments",
            json!({"name": "app", "environment": "production"}),
        )
        .await;
    assert_eq!(
        (
            status,
            v["error"]["code"].as_str(),
            v["error"]["details"]["secret"].as_str()
        ),
        (404, Some("SECRET_NOT_FOUND"), Some("SHOP_GIT_TOKEN")),
        "{v}"
    );
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("fraisier secret workspace set SHOP_GIT_TOKEN"),
        "{v}"
    );

    // A wrong token: the host refuses it, and so does the deploy.
    store_secret(&s, "SHOP_GIT_TOKEN", "not-the-token");
    let (status, v) = s
        .post(
            "/deployments",
            json!({"name": "app", "environment": "production"}),
        )
        .await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (502, Some("SOURCE_UNAVAILABLE")),
        "{v}"
    );
    assert!(host.lines().iter().any(|l| l["authorized"] == false));

    // The right one: fetched with it, built and deployed.
    store_secret(&s, "SHOP_GIT_TOKEN", TOKEN);
    let id = s.deploy("app", "production", json!({})).await;
    let run = s.wait_run(&id, Duration::from_secs(60)).await;
    assert_eq!(run["status"], "success", "{run:#}");
    assert_eq!(run["metadata"]["commit"], first.as_str(), "{run:#}");
    assert!(host.lines().iter().any(|l| l["authorized"] == true));

    // Shown by name only; never in a response, a log, the mirror's config or anywhere on
    // disk in clear (the store keeps it sealed).
    let (_, v) = s.get("/secrets").await;
    assert_eq!(v["secrets"][0]["name"], "SHOP_GIT_TOKEN", "{v}");
    assert_eq!(v["secrets"][0]["value"], "********", "{v}");
    assert_eq!(
        v["secrets"][0]["reference"], "${secret:SHOP_GIT_TOKEN}",
        "{v}"
    );
    let (status, logs) = s.get(&format!("/deployments/{id}/logs?lines=1000")).await;
    assert_eq!(status, 200, "{logs}");
    assert!(logs.to_string().contains("building"), "{logs}");
    assert!(!logs.to_string().contains(TOKEN));
    assert_eq!(
        files_containing(&s.data_dir, TOKEN.as_bytes()),
        Vec::<std::path::PathBuf>::new()
    );

    // A webhook secret stored the same way: deliveries are refused until it is there.
    let ping = br#"{"zen":"Keep it logically awesome.","hook_id":1}"#;
    let signed = |secret: &str| {
        use hmac::{Hmac, Mac};
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(ping);
        format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
    };
    let deliver = |n: u32| {
        s.http
            .post(format!("{}/webhooks/github", s.url))
            .header("content-type", "application/json")
            .header("x-github-event", "ping")
            .header("x-github-delivery", format!("d-{n}"))
            .header("x-hub-signature-256", signed("hook-secret-from-store"))
            .body(ping.to_vec())
            .send()
    };
    assert_eq!(deliver(1).await.unwrap().status().as_u16(), 401);
    store_secret(&s, "GITHUB_HOOK_SECRET", "hook-secret-from-store");
    assert_eq!(deliver(2).await.unwrap().status().as_u16(), 200);

    // A repository that redirects elsewhere: not followed, so the token goes nowhere else.
    let (status, v) = s.post("/deployments/moved/production", json!({})).await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (502, Some("SOURCE_UNAVAILABLE")),
        "{v}"
    );
    assert!(
        host.lines().iter().all(|l| l.get("elsewhere").is_none()),
        "a redirect was followed: {:?}",
        host.lines()
    );

    // Removing the token: the next fetch is refused again.
    let (status, _) = s.delete("/secrets/SHOP_GIT_TOKEN").await;
    assert_eq!(status, 204);
    let (status, _) = s.delete("/secrets/SHOP_GIT_TOKEN").await;
    assert_eq!(status, 404);
    let (status, v) = s
        .post("/deployments/app/production", json!({"force": true}))
        .await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (404, Some("SECRET_NOT_FOUND")),
        "{v}"
    );
}

#[test]
fn a_token_written_in_the_config_is_refused() {
    let ws = Workspace::new();
    let repo = ws.path().join("repo");
    let yaml = git_yaml(&ws, &repo, free_port())
        .replace("branch: main }", "branch: main, token: ghp_plaintext }");
    let (ok, text) = validate(&ws, &yaml);
    assert!(!ok, "{text}");
    assert!(text.contains("fraises.app.source.git.token"), "{text}");
    assert!(text.contains("${secret:NAME}"), "{text}");
    assert!(!text.contains("ghp_plaintext"), "{text}");
}

/// OpenSSH's sshd on a free port, letting in this user with `client_key` only; the
/// repositories are this host's paths. Killed when dropped.
struct Sshd {
    port: u16,
    child: std::process::Child,
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn keygen(path: &Path) {
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "fraisier-test", "-f"])
        .arg(path)
        .status()
        .unwrap();
    assert!(st.success());
}

fn sshd(dir: &Path) -> Sshd {
    std::fs::create_dir_all(dir).unwrap();
    keygen(&dir.join("host_key"));
    keygen(&dir.join("client_key"));
    std::fs::copy(dir.join("client_key.pub"), dir.join("authorized_keys")).unwrap();
    // sshd's privilege separation needs this as root (the CI user); .ci/run installs sshd.
    let _ = std::fs::create_dir_all("/run/sshd");
    let port = free_port();
    let user = String::from_utf8(Command::new("id").arg("-un").output().unwrap().stdout).unwrap();
    let config = format!(
        "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nAuthorizedKeysFile {d}/authorized_keys\n\
         PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n\
         PidFile {d}/sshd.pid\nPermitRootLogin prohibit-password\nAllowUsers {user}\nLogLevel ERROR\n",
        d = dir.display(),
        user = user.trim()
    );
    std::fs::write(dir.join("sshd_config"), config).unwrap();
    let child = Command::new("/usr/sbin/sshd")
        .args(["-D", "-e", "-f"])
        .arg(dir.join("sshd_config"))
        .spawn()
        .unwrap_or_else(|e| panic!("/usr/sbin/sshd: {e} (.ci/run installs openssh-server)"));
    let mut sshd = Sshd { port, child };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(st)) = sshd.child.try_wait() {
            panic!("sshd exited: {st}");
        }
        assert!(std::time::Instant::now() < deadline, "sshd never listened");
        std::thread::sleep(Duration::from_millis(50));
    }
    sshd.port = port;
    sshd
}

#[tokio::test]
async fn a_private_repository_is_fetched_over_ssh_with_a_stored_deploy_key() {
    let ws = Workspace::new();
    let repo = ws.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    let first = commit(&repo, GOOD_BUILD, "first");
    let bare = ws.path().join("shop.git");
    git(
        ws.path(),
        &[
            "clone",
            "-q",
            "--bare",
            repo.to_str().unwrap(),
            bare.to_str().unwrap(),
        ],
    );
    let keys = ws.path().join("sshd");
    let server = sshd(&keys);
    let user = String::from_utf8(Command::new("id").arg("-un").output().unwrap().stdout).unwrap();
    let url = format!(
        "ssh://{}@127.0.0.1:{}{}",
        user.trim(),
        server.port,
        bare.display()
    );
    let port = free_port();
    let yaml = git_yaml(&ws, &repo, port).replace(
        &format!("source: {{ git: {{ url: \"file://{}\", branch: main }} }}", repo.display()),
        &format!("source: {{ git: {{ url: \"{url}\", branch: main, ssh_key: \"${{secret:SHOP_DEPLOY_KEY}}\" }} }}"),
    );
    assert!(yaml.contains("SHOP_DEPLOY_KEY"), "{yaml}");
    let s = Server::start(&ws, &yaml).await;

    // Another key than the one the host knows: refused.
    keygen(&ws.path().join("stranger"));
    let stranger = std::fs::read_to_string(ws.path().join("stranger")).unwrap();
    store_secret(&s, "SHOP_DEPLOY_KEY", &stranger);
    let (status, v) = s.post("/deployments/app/production", json!({})).await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (502, Some("SOURCE_UNAVAILABLE")),
        "{v}"
    );
    // Not a key at all: said so, without echoing it.
    store_secret(&s, "SHOP_DEPLOY_KEY", "not a key at all");
    let (status, v) = s.post("/deployments/app/production", json!({})).await;
    assert_eq!(status, 502, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("deploy key"),
        "{v}"
    );
    assert!(!v.to_string().contains("not a key at all"), "{v}");

    // The deploy key: fetched, built, deployed; the host key is now known.
    let key = std::fs::read_to_string(keys.join("client_key")).unwrap();
    store_secret(&s, "SHOP_DEPLOY_KEY", &key);
    let id = s.deploy("app", "production", json!({})).await;
    let run = s.wait_run(&id, Duration::from_secs(60)).await;
    assert_eq!(run["status"], "success", "{run:#}");
    assert_eq!(run["metadata"]["commit"], first.as_str(), "{run:#}");
    let known = std::fs::read_to_string(s.data_dir.join("work/git/known_hosts")).unwrap();
    assert!(known.contains("ssh-ed25519"), "{known}");
    // The key is nowhere in clear: not in the data dir, and no agent is left running.
    let body = key.lines().nth(1).unwrap();
    assert_eq!(
        files_containing(&s.data_dir, body.as_bytes()),
        Vec::<std::path::PathBuf>::new()
    );
    let pid = s.child.as_ref().unwrap().id();
    assert!(
        !pgrep(&format!("fraisier-ssh-{pid}-")),
        "an ssh-agent outlived its fetch"
    );
}
