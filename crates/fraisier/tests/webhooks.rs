//! Pushes delivered as the four git hosts deliver them — their real payloads (GitHub's from
//! `@octokit/webhooks-examples`, the others from `../shared/fixtures/webhooks`) pointed at a
//! local bare repository with real commits, signed as each host signs — deploy the pushed
//! commit with no failed request; forged, replayed, deleted and unrelated deliveries deploy
//! nothing, and every delivery is on record.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

const GITHUB_SECRET: &str = "github-secret-1";
const GITLAB_TOKEN: &str = "gitlab-token-1";
const GITEA_SECRET: &str = "gitea-secret-1";
const BITBUCKET_SECRET: &str = "bitbucket-secret-1";

/// A commit pushed to the bare repository's `main`; returns it.
fn push_commit(work: &Path, n: u32) -> String {
    std::fs::write(
        work.join("build.sh"),
        format!("set -e\nmkdir -p dist\necho \"DEMO_VERSION=$FRAISIER_VERSION\" > dist/demo.env\n# {n}\n"),
    )
    .unwrap();
    git(work, &["add", "-A"]);
    git(work, &["commit", "-q", "-m", &format!("change {n}")]);
    git(work, &["push", "-q", "origin", "HEAD:main"]);
    git(work, &["rev-parse", "HEAD"])
}

fn octokit(event: &str) -> Vec<Value> {
    let dir = std::env::var("FRAISIER_OCTOKIT_EXAMPLES")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap())
                .join(".cache/fraisier-fixtures/octokit-webhooks-examples-7.6.1")
        });
    let path = dir.join("api.github.com/index.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}: GitHub's payloads come from npm's @octokit/webhooks-examples; .ci/run fetches them",
            path.display()
        )
    });
    let all: Vec<Value> = serde_json::from_str(&text).unwrap();
    all.into_iter().find(|e| e["name"] == event).unwrap()["examples"]
        .as_array()
        .unwrap()
        .clone()
}

fn fixture(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/fixtures/webhooks")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The headers of a GitHub push delivery, signed with the configured secret.
fn github_push(delivery: &str) -> [(&'static str, String); 3] {
    [
        ("x-github-event", "push".to_string()),
        ("x-github-delivery", delivery.to_string()),
        (
            "x-hub-signature-256",
            format!("SIGN:sha256=|{GITHUB_SECRET}"),
        ),
    ]
}

fn hmac_hex(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

async fn deliver(s: &Server, path: &str, headers: &[(&str, String)], body: &Value) -> (u16, Value) {
    let body = serde_json::to_vec(body).unwrap();
    let mut r = s
        .http
        .post(format!("{}{path}", s.url))
        .header("content-type", "application/json");
    for (k, v) in headers {
        // `SIGN:<prefix>|<secret>`: the host's HMAC of the exact bytes sent.
        let v = match v.strip_prefix("SIGN:") {
            Some(spec) => {
                let (prefix, secret) = spec.split_once('|').unwrap();
                format!("{prefix}{}", hmac_hex(secret, &body))
            }
            None => v.clone(),
        };
        r = r.header(*k, v);
    }
    let resp = r.body(body).send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

fn yaml(ws: &Workspace, origin: &Path, port: u16, staging: u16) -> String {
    format!(
        r#"
server:
  listen: "127.0.0.1:0"
  data_dir: "{data}"
  rate_limits: off
webhooks:
  github: {{ secret: "{GITHUB_SECRET}", secrets: ["github-secret-0-old"] }}
  gitlab: {{ token: "{GITLAB_TOKEN}" }}
  gitea: {{ secret: "{GITEA_SECRET}" }}
  bitbucket: {{ secret: "{BITBUCKET_SECRET}" }}
environments:
  production: {{ provider: local }}
  staging: {{ provider: local }}
fraises:
  app:
    type: api
    command: "exec {demo}"
    git_repo: Codertocat/Hello-World
    source: {{ git: {{ url: "file://{origin}", branch: main }} }}
    build: "sh build.sh"
    artifact: {{ path: dist }}
    health_check: {{ type: http, path: /health, interval: 100ms, timeout: 1s, healthy_threshold: 1, unhealthy_threshold: 2 }}
    drain_timeout: 2s
    stop_grace: 2s
    environments:
      production: {{ port: {port}, instances: 2, strategy: rolling, branch: main }}
      staging: {{ port: {staging}, instances: 1, strategy: rolling, tags: true }}
"#,
        data = ws.data_dir().display(),
        demo = demo_bin().display(),
        origin = origin.display(),
    )
}

/// Waits for the run a delivery started, and checks it deployed `commit`.
async fn deployed(s: &Server, receipt: &Value, commit: &str) -> String {
    let targets = receipt["deployments"].as_array().unwrap();
    assert_eq!(targets.len(), 1, "{receipt:#}");
    assert_eq!(targets[0]["environment"], "production", "{receipt:#}");
    let id = targets[0]["deployment_id"]
        .as_str()
        .unwrap_or_else(|| panic!("{receipt:#}"));
    let run = s.wait_run(id, Duration::from_secs(60)).await;
    assert_eq!(run["status"], "success", "{run:#}");
    assert_eq!(run["metadata"]["commit"], commit, "{run:#}");
    assert_eq!(run["metadata"]["ref"], "main", "{run:#}");
    assert_eq!(run["trigger_type"], "webhook", "{run:#}");
    run["version"].as_str().unwrap().to_string()
}

/// An octokit push to `main` at `commit`, cloned from `clone_url`.
fn main_push(commit: &str, clone_url: &str) -> Value {
    let mut push = octokit("push")
        .into_iter()
        .find(|p| p["ref"] == "refs/heads/master" && p["deleted"] == false)
        .unwrap();
    push["ref"] = json!("refs/heads/main");
    push["after"] = json!(commit);
    push["repository"]["clone_url"] = json!(clone_url);
    push
}

/// A repository with one commit, served over HTTP by a host that answers each request
/// after `delay_secs`: the host, its URL, the repository's path and the commit.
fn slow_repository(ws: &Workspace, delay_secs: u32) -> (Sidecar, String, PathBuf, String) {
    let work = ws.path().join("work");
    let served = ws.path().join("served");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::create_dir_all(&served).unwrap();
    let origin = served.join("shop.git");
    git(
        ws.path(),
        &[
            "init",
            "-q",
            "--bare",
            "-b",
            "main",
            origin.to_str().unwrap(),
        ],
    );
    git(&work, &["init", "-q", "-b", "main"]);
    git(
        &work,
        &["remote", "add", "origin", origin.to_str().unwrap()],
    );
    let commit = push_commit(&work, 0);
    let host = Sidecar::start(
        "python3",
        "git_http.py",
        &[
            served.to_str().unwrap(),
            "git",
            "-",
            &delay_secs.to_string(),
        ],
    );
    let url = format!("http://127.0.0.1:{}/shop.git", host.port);
    (host, url, origin, commit)
}

/// The push held in the queue (the only delivery) is deployed, and its run succeeds at
/// `commit`.
async fn held_push_deploys_once_unlocked(s: &Server, commit: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let id = loop {
        let (_, v) = s.get("/webhooks/deliveries").await;
        if let Some(id) = v["deliveries"][0]["deployments"][0]["deployment_id"].as_str() {
            break id.to_string();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never deployed: {v:#}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let run = s.wait_run(&id, Duration::from_secs(60)).await;
    assert_eq!(
        (run["status"].as_str(), run["metadata"]["commit"].as_str()),
        (Some("success"), Some(commit)),
        "{run:#}"
    );
}

#[tokio::test]
async fn pushes_from_four_hosts_deploy_their_commit() {
    let ws = Workspace::new();
    let origin = ws.path().join("origin.git");
    let work = ws.path().join("work");
    std::fs::create_dir_all(&origin).unwrap();
    std::fs::create_dir_all(&work).unwrap();
    git(&origin, &["init", "-q", "--bare", "-b", "main"]);
    git(&work, &["init", "-q", "-b", "main"]);
    git(
        &work,
        &["remote", "add", "origin", origin.to_str().unwrap()],
    );
    let first = push_commit(&work, 0);
    let (port, staging) = (free_port(), free_port());
    let s = Server::start(&ws, &yaml(&ws, &origin, port, staging)).await;
    let origin_url = format!("file://{}", origin.display());

    // The first release, asked for by hand, so that later pushes replace a running one.
    let id = s.deploy("app", "production", json!({})).await;
    assert_eq!(
        s.wait_run(&id, Duration::from_secs(60)).await["status"],
        "success"
    );
    assert_eq!(router_version(port).await.as_deref(), Some(&first[..12]));
    let load = Load::start(port, 8);

    // GitHub, detected from its headers.
    let commit = push_commit(&work, 1);
    let mut push = octokit("push")
        .into_iter()
        .find(|p| p["ref"] == "refs/heads/master" && p["deleted"] == false)
        .unwrap();
    push["ref"] = json!("refs/heads/main");
    push["after"] = json!(commit);
    push["repository"]["clone_url"] = json!(origin_url);
    let gh_headers = github_push("72d3162e-cc78-11e3-81ab-4c9367dc0958");
    let (status, receipt) = deliver(&s, "/webhook", &gh_headers, &push).await;
    assert_eq!(status, 202, "{receipt:#}");
    assert_eq!(receipt["outcome"], "deployed");
    let version = deployed(&s, &receipt, &commit).await;
    assert_eq!(router_version(port).await, Some(version));

    // The same delivery again (GitHub's "redeliver"): acted on once only.
    let (status, receipt) = deliver(&s, "/webhook", &gh_headers, &push).await;
    assert_eq!(
        (status, receipt["outcome"].as_str()),
        (200, Some("duplicate")),
        "{receipt:#}"
    );

    // Forged or unsigned: 401, nothing deployed.
    let (status, v) = deliver(
        &s,
        "/webhooks/github",
        &[
            ("x-github-event", "push".to_string()),
            ("x-github-delivery", "forged-1".to_string()),
            (
                "x-hub-signature-256",
                "SIGN:sha256=|not-the-secret".to_string(),
            ),
        ],
        &push,
    )
    .await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (401, Some("UNAUTHORIZED")),
        "{v}"
    );
    let (status, _) = deliver(
        &s,
        "/webhooks/github",
        &[("x-github-event", "push".into())],
        &push,
    )
    .await;
    assert_eq!(status, 401);

    // A ping and a branch deletion are acknowledged and deploy nothing.
    let ping = octokit("ping").remove(0);
    let (status, v) = deliver(
        &s,
        "/webhook",
        &[
            ("x-github-event", "ping".to_string()),
            ("x-github-delivery", "ping-1".to_string()),
            (
                "x-hub-signature-256",
                format!("SIGN:sha256=|{GITHUB_SECRET}"),
            ),
        ],
        &ping,
    )
    .await;
    assert_eq!(
        (status, v["outcome"].as_str()),
        (200, Some("ignored")),
        "{v}"
    );
    let mut deletion = octokit("push")
        .into_iter()
        .find(|p| p["deleted"] == true)
        .unwrap();
    deletion["ref"] = json!("refs/heads/main");
    deletion["repository"]["clone_url"] = json!(origin_url);
    let (status, v) = deliver(
        &s,
        "/webhooks/github",
        &[
            ("x-github-event", "push".to_string()),
            ("x-github-delivery", "delete-1".to_string()),
            // A secret being rotated out is still accepted.
            (
                "x-hub-signature-256",
                "SIGN:sha256=|github-secret-0-old".to_string(),
            ),
        ],
        &deletion,
    )
    .await;
    assert_eq!(
        (status, v["outcome"].as_str()),
        (200, Some("ignored")),
        "{v}"
    );
    assert!(v["message"].as_str().unwrap().contains("deleted"), "{v}");

    // GitLab: its token header.
    let commit = push_commit(&work, 2);
    let mut gl = fixture("gitlab-push.json");
    gl["ref"] = json!("refs/heads/main");
    gl["after"] = json!(commit);
    gl["project"]["git_http_url"] = json!(origin_url);
    let (status, receipt) = deliver(
        &s,
        "/webhook",
        &[
            ("x-gitlab-event", "Push Hook".to_string()),
            ("x-gitlab-event-uuid", "gl-1".to_string()),
            ("x-gitlab-token", GITLAB_TOKEN.to_string()),
        ],
        &gl,
    )
    .await;
    assert_eq!(status, 202, "{receipt:#}");
    deployed(&s, &receipt, &commit).await;

    // Gitea: it also sends X-GitHub-Event, and is still told apart.
    let commit = push_commit(&work, 3);
    let mut gitea = fixture("gitea-push.json");
    gitea["ref"] = json!("refs/heads/main");
    gitea["after"] = json!(commit);
    gitea["repository"]["clone_url"] = json!(origin_url);
    let (status, receipt) = deliver(
        &s,
        "/webhook",
        &[
            ("x-gitea-event", "push".to_string()),
            ("x-github-event", "push".to_string()),
            ("x-gitea-delivery", "gitea-1".to_string()),
            ("x-gitea-signature", format!("SIGN:|{GITEA_SECRET}")),
        ],
        &gitea,
    )
    .await;
    assert_eq!(status, 202, "{receipt:#}");
    deployed(&s, &receipt, &commit).await;

    // Bitbucket Cloud: the repository named by its web address.
    let commit = push_commit(&work, 4);
    let mut bb = fixture("bitbucket-cloud-repo-push.json");
    bb["repository"]["links"]["html"]["href"] = json!(origin_url);
    bb["push"]["changes"][0]["new"]["name"] = json!("main");
    bb["push"]["changes"][0]["new"]["target"]["hash"] = json!(commit);
    let (status, receipt) = deliver(
        &s,
        "/webhook",
        &[
            ("x-event-key", "repo:push".to_string()),
            ("x-request-uuid", "bb-1".to_string()),
            (
                "x-hub-signature",
                format!("SIGN:sha256=|{BITBUCKET_SECRET}"),
            ),
        ],
        &bb,
    )
    .await;
    assert_eq!(status, 202, "{receipt:#}");
    deployed(&s, &receipt, &commit).await;

    // Bitbucket Server / Data Center: refs_changed, the refs in changes[].
    let commit = push_commit(&work, 5);
    let server_payload = json!({
        "eventKey": "repo:refs_changed",
        "date": "2026-11-30T10:00:00+0000",
        "actor": {"name": "admin", "id": 1},
        "repository": {"slug": "app", "name": "app", "project": {"key": "OPS", "name": "Ops"},
            "links": {"clone": [{"href": origin_url, "name": "http"}]}},
        "changes": [{"ref": {"id": "refs/heads/main", "displayId": "main", "type": "BRANCH"},
            "refId": "refs/heads/main", "fromHash": "0000000000000000000000000000000000000001",
            "toHash": commit, "type": "UPDATE"}]
    });
    let (status, receipt) = deliver(
        &s,
        "/webhooks/bitbucket",
        &[
            ("x-event-key", "repo:refs_changed".to_string()),
            ("x-request-id", "bbs-1".to_string()),
            (
                "x-hub-signature",
                format!("SIGN:sha256=|{BITBUCKET_SECRET}"),
            ),
        ],
        &server_payload,
    )
    .await;
    assert_eq!(status, 202, "{receipt:#}");
    deployed(&s, &receipt, &commit).await;

    // Three pushes in quick succession: the first deploys, the second waits and is then
    // superseded, the third (the latest) is deployed once the first is over.
    let mut receipts = Vec::new();
    let mut commits = Vec::new();
    for n in 6..9 {
        let commit = push_commit(&work, n);
        let mut p = push.clone();
        p["after"] = json!(commit);
        let (status, receipt) =
            deliver(&s, "/webhook", &github_push(&format!("burst-{n}")), &p).await;
        assert_eq!(status, 202, "{receipt:#}");
        receipts.push(receipt);
        commits.push(commit);
    }
    assert_eq!(receipts[0]["outcome"], "deployed", "{:#}", receipts[0]);
    assert_eq!(receipts[1]["outcome"], "queued", "{:#}", receipts[1]);
    assert_eq!(receipts[2]["outcome"], "queued", "{:#}", receipts[2]);
    let latest = commits[2][..12].to_string();
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while router_version(port).await.as_deref() != Some(latest.as_str()) {
        assert!(
            std::time::Instant::now() < deadline,
            "the latest push never deployed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, v) = s.get("/webhooks/deliveries?limit=3").await;
    let outcomes: Vec<&str> = v["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["deployed", "superseded", "deployed"], "{v:#}");
    let id = v["deliveries"][0]["deployments"][0]["deployment_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        s.wait_run(&id, Duration::from_secs(60)).await["status"],
        "success"
    );
    let version = latest;

    // A commit that is not on the pushed branch (a fork's, another branch's) is refused;
    // such a delivery may be delivered again (it deployed nothing), unlike one that did.
    git(&work, &["checkout", "-q", "-b", "side"]);
    std::fs::write(work.join("side.txt"), "side").unwrap();
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "-q", "-m", "side"]);
    git(&work, &["push", "-q", "origin", "HEAD:side"]);
    let side = git(&work, &["rev-parse", "HEAD"]);
    git(&work, &["checkout", "-q", "main"]);
    let mut elsewhere = push.clone();
    elsewhere["after"] = json!(side);
    let headers = github_push("side-1");
    for _ in 0..2 {
        let (status, v) = deliver(&s, "/webhook", &headers, &elsewhere).await;
        assert_eq!(
            (status, v["outcome"].as_str()),
            (200, Some("failed")),
            "{v:#}"
        );
        assert_eq!(
            v["deployments"][0]["error"]["code"], "INVALID_PARAMETERS",
            "{v:#}"
        );
    }

    let report = load.stop().await;
    assert_eq!(report.failed, 0, "{report:?}");
    assert!(report.ok > 100, "{report:?}");
    assert_eq!(router_version(port).await, Some(version));

    // A tag deploys the environments that take tags (staging), as that tag.
    git(&work, &["tag", "2.0.0"]);
    git(&work, &["push", "-q", "origin", "2.0.0"]);
    let mut tag = octokit("push")
        .into_iter()
        .find(|p| p["ref"] == "refs/tags/simple-tag" && p["created"] == true)
        .unwrap();
    tag["ref"] = json!("refs/tags/2.0.0");
    tag["after"] = json!(git(&work, &["rev-parse", "HEAD"]));
    tag["repository"]["clone_url"] = json!(origin_url);
    let (status, receipt) = deliver(&s, "/webhook", &github_push("tag-1"), &tag).await;
    assert_eq!(status, 202, "{receipt:#}");
    let targets = receipt["deployments"].as_array().unwrap();
    assert_eq!(targets.len(), 1, "{receipt:#}");
    assert_eq!(targets[0]["environment"], "staging");
    let run = s
        .wait_run(
            targets[0]["deployment_id"].as_str().unwrap(),
            Duration::from_secs(60),
        )
        .await;
    assert_eq!(
        (run["status"].as_str(), run["version"].as_str()),
        (Some("success"), Some("2.0.0")),
        "{run:#}"
    );
    assert_eq!(router_version(staging).await.as_deref(), Some("2.0.0"));

    // Another repository deploys nothing, even one whose owner/name is the fraise's git_repo.
    let mut other = push.clone();
    other["repository"]["clone_url"] = json!("https://github.com/someone/else.git");
    let (status, v) = deliver(&s, "/webhook", &github_push("other-1"), &other).await;
    assert_eq!(
        (status, v["outcome"].as_str()),
        (200, Some("ignored")),
        "{v}"
    );

    // GitHub's other content type: the JSON in a form's `payload`, signed as sent.
    let ping_json = serde_json::to_string(&octokit("ping").remove(0)).unwrap();
    let form: String = ping_json
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    let form = format!("payload={form}");
    let r = s
        .http
        .post(format!("{}/webhook", s.url))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-github-event", "ping")
        .header("x-github-delivery", "form-1")
        .header(
            "x-hub-signature-256",
            format!("sha256={}", hmac_hex(GITHUB_SECRET, form.as_bytes())),
        )
        .body(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["outcome"], "ignored", "{v}");

    // Every delivery is on record, forged ones included.
    let (status, v) = s.get("/webhooks/deliveries?limit=100").await;
    assert_eq!(status, 200, "{v}");
    let outcomes: Vec<&str> = v["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["outcome"].as_str().unwrap())
        .collect();
    let count = |o: &str| outcomes.iter().filter(|x| **x == o).count();
    assert_eq!(
        (
            count("deployed"),
            count("duplicate"),
            count("rejected"),
            count("ignored"),
            count("superseded"),
            count("failed")
        ),
        (8, 1, 2, 4, 1, 2),
        "{v:#}"
    );
    let (_, v) = s.get("/webhooks/deliveries?outcome=rejected").await;
    assert_eq!(v["pagination"]["total"], 2, "{v}");
    assert!(
        v["deliveries"][0]["message"]
            .as_str()
            .unwrap()
            .contains("x-hub-signature-256"),
        "{v}"
    );
    let (status, v) = s.get("/webhooks/deliveries?outcome=maybe").await;
    assert_eq!(
        (status, v["error"]["details"]["field"].as_str()),
        (400, Some("outcome")),
        "{v}"
    );

    // The CLI shows the same record.
    let out = Command::new(fraisier_bin())
        .args(["--server", &s.url, "webhooks", "--provider", "gitlab"])
        .env("FRAISIER_TOKEN", &s.token)
        .env_remove("FRAISIER_CONFIG")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("gitlab") && text.contains("deployed") && text.contains("app@production"),
        "{text}"
    );
}

/// A repository that takes seconds to answer: the host is answered within its timeout, the
/// push waits in the store's queue, and a server killed meanwhile deploys it once restarted.
#[tokio::test]
async fn a_slow_repository_does_not_hold_the_host_and_a_restart_loses_no_push() {
    let ws = Workspace::new();
    // Every request to the repository waits 3 s: a clone takes two, so over 6 s.
    let (_host, url, origin, commit) = slow_repository(&ws, 3);
    let port = free_port();
    let yaml = yaml(&ws, &origin, port, free_port())
        .replace(&format!("file://{}", origin.display()), &url);
    let mut s = Server::start(&ws, &yaml).await;

    let push = main_push(&commit, &url);
    let started = std::time::Instant::now();
    let (status, receipt) = deliver(&s, "/webhooks/github", &github_push("slow-1"), &push).await;
    let answered = started.elapsed();
    eprintln!("the host was answered in {answered:?}");
    assert!(
        answered < Duration::from_secs(8),
        "answered after {answered:?}"
    );
    assert_eq!(
        (status, receipt["outcome"].as_str()),
        (202, Some("queued")),
        "{receipt:#}"
    );
    assert_eq!(
        receipt["deployments"][0]["error"]["code"], "QUEUED",
        "{receipt:#}"
    );

    // The server dies before the fetch is over; restarted, it deploys the queued push.
    s.kill9();
    s.restart().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    let id = loop {
        let (_, v) = s.get("/webhooks/deliveries").await;
        let d = v["deliveries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["delivery_id"] == "slow-1")
            .cloned()
            .unwrap_or(Value::Null);
        if let Some(id) = d["deployments"][0]["deployment_id"].as_str() {
            assert_eq!(d["outcome"], "deployed", "{d:#}");
            break id.to_string();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never deployed: {v:#}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let run = s.wait_run(&id, Duration::from_secs(90)).await;
    assert_eq!(run["status"], "success", "{run:#}");
    assert_eq!(run["metadata"]["commit"], commit.as_str(), "{run:#}");
    assert_eq!(router_version(port).await.as_deref(), Some(&commit[..12]));
}

/// A lock taken while a push is being prepared (its repository fetched, seconds here) holds
/// it as one taken before the queue looked would: queued, saying why, and deployed once
/// unlocked — not failed. (The deploy's own guards refuse it here; the store's look as it
/// records the run is tested in store.rs.)
#[tokio::test]
async fn a_push_locked_while_its_source_is_fetched_is_held_until_unlocked() {
    let ws = Workspace::new();
    // Every request to the repository waits 2 s: the fetch takes over 4 s.
    let (host, url, origin, commit) = slow_repository(&ws, 2);
    let yaml = yaml(&ws, &origin, free_port(), free_port())
        .replace(&format!("file://{}", origin.display()), &url);
    let s = Server::start(&ws, &yaml).await;

    let push = main_push(&commit, &url);
    // Locked once the repository is asked (each answer takes 2 s), so the queue is past
    // the guards it looks at first.
    let lock = async {
        while !host.lines().iter().any(|l| l.get("path").is_some()) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        s.post(
            "/environments/production/lock",
            json!({"reason": "incident"}),
        )
        .await
    };
    let headers = github_push("lock-mid-fetch");
    let ((status, receipt), (locked, v)) =
        tokio::join!(deliver(&s, "/webhooks/github", &headers, &push), lock);
    assert_eq!(status, 202, "{receipt:#}");
    assert_eq!(locked, 200, "{v}");

    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let held = loop {
        let (_, v) = s.get("/webhooks/deliveries").await;
        let target = v["deliveries"][0]["deployments"][0].clone();
        let message = target["error"]["message"].as_str().unwrap_or_default();
        if message.starts_with("held:") || target["error"]["code"] != "QUEUED" {
            break target;
        }
        assert!(std::time::Instant::now() < deadline, "never held: {v:#}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        held["error"]["code"], "QUEUED",
        "held, not failed: {held:#}"
    );
    assert!(
        held["error"]["message"]
            .as_str()
            .unwrap()
            .contains("locked by admin (incident)"),
        "{held:#}"
    );
    let (_, v) = s.get("/deployments?environment=production").await;
    assert_eq!(v["pagination"]["total"], 0, "nothing recorded: {v:#}");

    s.post("/environments/production/unlock", json!({})).await;
    held_push_deploys_once_unlocked(&s, &commit).await;
}

/// A push into a locked environment waits in the queue, saying why, and deploys once the
/// environment is unlocked.
#[tokio::test]
async fn a_push_into_a_locked_environment_is_held_until_it_is_unlocked() {
    let ws = Workspace::new();
    let origin = ws.path().join("origin.git");
    let work = ws.path().join("work");
    std::fs::create_dir_all(&origin).unwrap();
    std::fs::create_dir_all(&work).unwrap();
    git(&origin, &["init", "-q", "--bare", "-b", "main"]);
    git(&work, &["init", "-q", "-b", "main"]);
    git(
        &work,
        &["remote", "add", "origin", origin.to_str().unwrap()],
    );
    let commit = push_commit(&work, 0);
    let port = free_port();
    let s = Server::start(&ws, &yaml(&ws, &origin, port, free_port())).await;
    let (status, v) = s
        .post(
            "/environments/production/lock",
            json!({"reason": "incident"}),
        )
        .await;
    assert_eq!(status, 200, "{v}");

    let push = main_push(&commit, &format!("file://{}", origin.display()));
    let (status, receipt) = deliver(&s, "/webhooks/github", &github_push("held-1"), &push).await;
    assert_eq!(
        (status, receipt["outcome"].as_str()),
        (202, Some("queued")),
        "{receipt:#}"
    );
    let target = &receipt["deployments"][0];
    assert_eq!(target["error"]["code"], "QUEUED", "{receipt:#}");
    assert!(
        target["error"]["message"]
            .as_str()
            .unwrap()
            .contains("locked by admin (incident)"),
        "{receipt:#}"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (_, v) = s.get("/deployments?environment=production").await;
    assert_eq!(
        v["pagination"]["total"], 0,
        "nothing deployed while locked: {v:#}"
    );

    s.post("/environments/production/unlock", json!({})).await;
    held_push_deploys_once_unlocked(&s, &commit).await;
}
