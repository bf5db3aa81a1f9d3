//! The artifact registry against the real binary: versions pushed as streams (a tarball, a
//! 64 MiB file without the server's memory growing by as much), immutable, typed, listed,
//! downloaded byte for byte, and not deleted while a service deployment runs them — from the
//! API and the CLI.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

async fn push(s: &Server, query: &str, body: Vec<u8>) -> (u16, Value, Option<String>) {
    let r = s
        .http
        .post(format!("{}/artifacts?{query}", s.url))
        .bearer_auth(&s.token)
        .header("content-type", "application/octet-stream")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let location = r
        .headers()
        .get("location")
        .map(|v| v.to_str().unwrap().to_string());
    (status, r.json().await.unwrap_or(Value::Null), location)
}

fn sha256(path: &std::path::Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    format!("sha256:{}", text.split_whitespace().next().unwrap())
}

/// The server's peak resident memory, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

#[tokio::test]
async fn artifacts_are_pushed_streamed_and_kept_while_they_run() {
    let ws = Workspace::new();
    ws.release("1.0.0", &[]);
    let port = free_port();
    let yaml = config_yaml(&ws, port, 1, "rolling", "").replace(
        "  rate_limits: off",
        "  rate_limits: off\n  max_artifact_bytes: 100000000",
    );
    let s = Server::start(&ws, &yaml).await;
    let pid = s.child.as_ref().unwrap().id();
    let before = peak_rss_kib(pid);

    // A tarball of a release directory.
    let tarball = ws.path().join("app-2.0.0.tar.gz");
    let st = Command::new("tar")
        .arg("czf")
        .arg(&tarball)
        .arg("-C")
        .arg(ws.path().join("releases/1.0.0"))
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success());
    let bytes = std::fs::read(&tarball).unwrap();
    let (status, v, location) = push(&s, "name=app&version=2.0.0&tag=web", bytes.clone()).await;
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["digest"], sha256(&tarball), "{v}");
    assert_eq!(
        (v["format"].as_str(), v["type"].as_str()),
        (Some("tar.gz"), Some("api"))
    );
    assert_eq!(
        location.as_deref(),
        Some("/api/v1/artifacts/app/versions/2.0.0")
    );
    // The same bytes again: no change. Other bytes under that version, or another type: no.
    let (status, v, _) = push(&s, "name=app&version=2.0.0", bytes.clone()).await;
    assert_eq!((status, v["created"].clone()), (200, json!(false)), "{v}");
    let (status, v, _) = push(&s, "name=app&version=2.0.0", b"other".to_vec()).await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (409, Some("ARTIFACT_CONFLICT")),
        "{v}"
    );
    let (status, v, _) = push(&s, "name=app&version=3.0.0&type=model", b"weights".to_vec()).await;
    assert_eq!(status, 409, "{v}");

    // Bad input names its field and stores nothing.
    for (query, field) in [
        ("version=1", "name"),
        ("name=app", "version"),
        ("name=types&version=1", "name"),
        ("name=app&version=../x", "version"),
        ("name=app&version=1&type=docker", "type"),
    ] {
        let (status, v, _) = push(&s, query, b"x".to_vec()).await;
        assert_eq!(status, 400, "{query}: {v}");
        assert_eq!(v["error"]["details"]["field"], field, "{query}: {v}");
    }
    let (status, v, _) = push(&s, "name=app&version=4.0.0", Vec::new()).await;
    assert_eq!(
        (status, v["error"]["details"]["field"].as_str()),
        (400, Some("body")),
        "{v}"
    );

    // Too large: refused, and nothing is left half-written.
    let (status, v, _) = push(&s, "name=big&version=1", vec![1u8; 100_000_001]).await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (413, Some("ARTIFACT_TOO_LARGE")),
        "{v}"
    );
    let tmp = s.data_dir.join("blobs/tmp");
    assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0);

    // 64 MiB streamed in (and 100 MB refused above): the server's peak memory does not grow
    // by as much.
    let big = ws.path().join("model.bin");
    std::fs::write(&big, vec![42u8; 64 << 20]).unwrap();
    let out = Command::new(fraisier_bin())
        .args(["--server", &s.url, "artifact", "push"])
        .arg(&big)
        .args([
            "--name",
            "churn",
            "--release-version",
            "1",
            "--type",
            "model",
        ])
        .env("FRAISIER_TOKEN", &s.token)
        .env("HOME", ws.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let grown = peak_rss_kib(pid).saturating_sub(before);
    println!(
        "peak RSS at start {before} KiB, grew {grown} KiB through 100 MB refused and 64 MiB stored"
    );
    assert!(
        grown < 24 << 10,
        "the server held the upload in memory: +{grown} KiB"
    );

    // Listed, by type, read back byte for byte.
    let (_, list) = s.get("/artifacts").await;
    assert_eq!(list["total"], 2, "{list}");
    let (_, models) = s.get("/artifacts?type=model").await;
    assert_eq!(models["artifacts"][0]["name"], "churn");
    let (_, types) = s.get("/artifacts/types").await;
    let counts: Vec<(String, u64)> = types["types"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["name"].as_str().unwrap().to_string(),
                t["artifacts"].as_u64().unwrap(),
            )
        })
        .collect();
    assert!(
        counts.contains(&("api".into(), 1)) && counts.contains(&("model".into(), 1)),
        "{types}"
    );
    let (status, _) = s.get("/artifacts/types/docker").await;
    assert_eq!(status, 404);
    let (_, a) = s.get("/artifacts/app").await;
    assert_eq!(
        (a["latest_version"].as_str(), a["tags"][0].as_str()),
        (Some("2.0.0"), Some("web")),
        "{a}"
    );
    let r = s
        .http
        .get(format!("{}/artifacts/app/download?version=2.0.0", s.url))
        .bearer_auth(&s.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let checksum = r.headers()["x-checksum-sha256"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(format!("sha256:{checksum}"), sha256(&tarball));
    assert_eq!(r.bytes().await.unwrap().to_vec(), bytes);
    let fetched = ws.path().join("fetched.bin");
    let out = Command::new(fraisier_bin())
        .args(["--server", &s.url, "artifact", "download", "churn", "-o"])
        .arg(&fetched)
        .env("FRAISIER_TOKEN", &s.token)
        .env("HOME", ws.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(sha256(&fetched), sha256(&big));

    // A version a service deployment runs is kept; others go, with their bytes.
    let run = s
        .deploy("app", "production", json!({"version": "1.0.0"}))
        .await;
    assert_eq!(
        s.wait_run(&run, Duration::from_secs(60)).await["status"],
        "success"
    );
    // The release came from artifact_path, through the store: packed and recorded.
    let (status, v) = s.get("/artifacts/app/versions/1.0.0").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        (v["format"].as_str(), v["metadata"]["source"].as_str()),
        (Some("tar.gz"), Some("artifact_path")),
        "{v}"
    );
    let (status, v) = s.delete("/artifacts/app/versions/1.0.0").await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (409, Some("ARTIFACT_IN_USE")),
        "{v}"
    );
    let (status, v) = s.delete("/artifacts/app").await;
    assert_eq!(status, 409, "{v}");
    let (status, _) = s.delete("/artifacts/app/versions/2.0.0").await;
    assert_eq!(status, 204);
    let (status, _) = s.get("/artifacts/app/versions/2.0.0").await;
    assert_eq!(status, 404);
    let hex = sha256(&tarball).trim_start_matches("sha256:").to_string();
    assert!(!s
        .data_dir
        .join(format!("blobs/sha256/{}/{hex}", &hex[..2]))
        .exists());
    let (status, _) = s.delete("/artifacts/churn").await;
    assert_eq!(status, 204);

    // A version only the registry has deploys like any other: the agent fetches it.
    let dir = ws.path().join("pushed");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("demo.env"), "DEMO_VERSION=5.0.0\n").unwrap();
    let five = ws.path().join("app-5.0.0.tar.gz");
    assert!(Command::new("tar")
        .arg("czf")
        .arg(&five)
        .arg("-C")
        .arg(&dir)
        .arg(".")
        .status()
        .unwrap()
        .success());
    let (status, pushed, _) =
        push(&s, "name=app&version=5.0.0", std::fs::read(&five).unwrap()).await;
    assert_eq!(status, 201, "{pushed}");
    let run = s
        .deploy("app", "production", json!({"version": "5.0.0"}))
        .await;
    let done = s.wait_run(&run, Duration::from_secs(60)).await;
    assert_eq!(done["status"], "success", "{done:#}");
    assert_eq!(router_version(port).await.as_deref(), Some("5.0.0"));
    let record: Value = serde_json::from_str(
        &std::fs::read_to_string(s.agent_dir().join("releases/app/5.0.0.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(record["artifact"], pushed["digest"]);

    // The blobs route: agents with their token, users for their workspace's bytes only.
    let digest = pushed["digest"].as_str().unwrap();
    let token = std::fs::read_to_string(s.data_dir.join("agent-token")).unwrap();
    let get = |path: String, header: (&'static str, String)| {
        let req = s
            .http
            .get(format!("{}{path}", s.url))
            .header(header.0, header.1);
        async move { req.send().await.unwrap() }
    };
    let r = get(
        format!("/blobs/{digest}"),
        ("x-agent-token", token.trim().to_string()),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.bytes().await.unwrap().to_vec(),
        std::fs::read(&five).unwrap()
    );
    let r = get(
        format!("/blobs/{digest}"),
        ("x-agent-token", "fat_forged".into()),
    )
    .await;
    assert_eq!(r.status(), 401);
    let r = get(
        "/deployments".into(),
        ("x-agent-token", token.trim().to_string()),
    )
    .await;
    assert_eq!(
        r.status(),
        403,
        "an agent's token reads blobs, nothing else"
    );
    let (status, _) = s.get(&format!("/blobs/{digest}")).await;
    assert_eq!(status, 200, "a user of the workspace that has it");
    let (status, _) = s
        .get("/blobs/sha256:1111111111111111111111111111111111111111111111111111111111111111")
        .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn versions_are_signed_and_verified_offline() {
    let ws = Workspace::new();
    ws.release("1.0.0", &[]);
    let port = free_port();
    let s = Server::start(&ws, &config_yaml(&ws, port, 1, "rolling", "")).await;
    let file = ws.path().join("model.bin");
    std::fs::write(&file, b"weights, version one").unwrap();
    let (status, v, _) = push(
        &s,
        "name=model&version=1.0.0&type=model",
        std::fs::read(&file).unwrap(),
    )
    .await;
    assert_eq!(status, 201, "{v}");
    let (status, v) = s.get("/artifacts/model/signature?version=1.0.0").await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (404, Some("SIGNATURE_NOT_FOUND")),
        "{v}"
    );
    // No scanner configured: a scan is refused, not faked.
    let (status, v) = s.post("/artifacts/model/scan", json!({})).await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (422, Some("SCANNER_NOT_CONFIGURED")),
        "{v}"
    );

    let cli = |args: &[&str]| {
        Command::new(fraisier_bin())
            .args(["--server", &s.url])
            .args(args)
            .env("FRAISIER_TOKEN", &s.token)
            .env_remove("FRAISIER_CONFIG")
            .output()
            .unwrap()
    };
    let out = cli(&["artifact", "sign", "model", "--release-version", "1.0.0"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli(&["artifact", "signature", "model"]);
    assert!(out.status.success());
    let sig = ws.path().join("model.sig");
    std::fs::write(&sig, &out.stdout).unwrap();
    let signed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(signed["algorithm"], "ed25519");
    assert_eq!(signed["digest"], sha256(&file));
    let key = String::from_utf8(cli(&["artifact", "signing-key"]).stdout)
        .unwrap()
        .trim()
        .to_string();
    assert_eq!(signed["public_key"], key.as_str());

    // Offline: no server needed, and only the right bytes and the right key pass.
    let verify = |file: &std::path::Path, key: &str| {
        Command::new(fraisier_bin())
            .args(["artifact", "verify"])
            .arg(file)
            .arg(&sig)
            .args(["--key", key])
            .env_remove("FRAISIER_CONFIG")
            .env_remove("FRAISIER_TOKEN")
            .output()
            .unwrap()
    };
    let out = verify(&file, &key);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let tampered = ws.path().join("tampered.bin");
    std::fs::write(&tampered, b"weights, version two").unwrap();
    let out = verify(&tampered, &key);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("FAILED"));
    let other_key = "1cnS8Rt7D2gQiGaCr9KnDdIFAuXkFxKRmoIb1vU7b0M=";
    assert_eq!(verify(&file, other_key).status.code(), Some(1));

    // The key is private, and kept across restarts: old signatures still verify.
    let mode = std::fs::metadata(s.data_dir.join("artifact-signing-key.pk8"))
        .unwrap()
        .permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o600
    );
    let mut s = s;
    s.kill9();
    s.restart().await;
    let (_, v) = s.get("/artifacts/signing-key").await;
    assert_eq!(v["public_key"], key.as_str());
}

#[tokio::test]
async fn cleanup_keeps_the_newest_and_everything_in_use() {
    let ws = Workspace::new();
    ws.release("1.0.0", &[]);
    ws.release("2.0.0", &[]);
    let port = free_port();
    let s = Server::start(&ws, &config_yaml(&ws, port, 1, "rolling", "")).await;
    for v in ["1.0.0", "2.0.0"] {
        let id = s.deploy("app", "production", json!({ "version": v })).await;
        assert_eq!(
            s.wait_run(&id, Duration::from_secs(60)).await["status"],
            "success"
        );
    }
    for v in ["3.0.0", "4.0.0"] {
        let (status, body, _) = push(
            &s,
            &format!("name=app&version={v}"),
            format!("app {v}").into_bytes(),
        )
        .await;
        assert_eq!(status, 201, "{body}");
    }
    for v in 1..=5 {
        let (status, body, _) = push(
            &s,
            &format!("name=lib&version={v}.0&type=client"),
            vec![v as u8; 1000],
        )
        .await;
        assert_eq!(status, 201, "{body}");
    }
    let (_, before) = s.get("/artifacts/storage").await;
    assert_eq!(
        (before["artifacts"].as_u64(), before["versions"].as_u64()),
        (Some(2), Some(9)),
        "{before}"
    );
    let (_, usage) = s.get("/artifacts/storage/usage").await;
    assert_eq!(
        usage["usage"][0]["artifact"], "lib",
        "largest first: {usage}"
    );

    // A dry run says what would go and removes nothing.
    let (status, dry) = s
        .post(
            "/artifacts/storage/cleanup",
            json!({"keep": 1, "dry_run": true}),
        )
        .await;
    assert_eq!(status, 200, "{dry}");
    let gone = |r: &Value| -> Vec<String> {
        let mut v: Vec<String> = r["deleted"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| {
                format!(
                    "{}@{}",
                    d["artifact"].as_str().unwrap(),
                    d["version"].as_str().unwrap()
                )
            })
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        gone(&dry),
        ["app@3.0.0", "lib@1.0", "lib@2.0", "lib@3.0", "lib@4.0"],
        "{dry:#}"
    );
    let protected: Vec<(String, String)> = dry["protected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["version"].as_str().unwrap().to_string(),
                p["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(
        protected.contains(&("2.0.0".into(), "runs in production".into())),
        "{protected:?}"
    );
    assert!(
        protected.iter().any(|(v, _)| v == "1.0.0"),
        "the rollback target: {protected:?}"
    );
    let (_, same) = s.get("/artifacts/storage").await;
    assert_eq!(same["versions"], 9);

    let (status, done) = s
        .post("/artifacts/storage/cleanup", json!({"keep": 1}))
        .await;
    assert_eq!(status, 200, "{done}");
    assert_eq!(gone(&done), gone(&dry));
    assert!(done["freed_bytes"].as_u64().unwrap() >= 4000, "{done}");
    let (_, after) = s.get("/artifacts/storage").await;
    assert_eq!(after["versions"], 4, "{after}");
    let (status, _) = s.get("/artifacts/lib/versions/1.0").await;
    assert_eq!(status, 404);
    // What runs still rolls back.
    let (status, v) = s
        .post("/deployments/app/production/rollback", json!({}))
        .await;
    assert_eq!(status, 202, "{v}");
    let run = s
        .wait_run(v["id"].as_str().unwrap(), Duration::from_secs(60))
        .await;
    assert_eq!(run["status"], "success", "{run:#}");

    let (status, v) = s
        .post("/artifacts/storage/cleanup", json!({"keep": 0}))
        .await;
    assert_eq!(
        (status, v["error"]["details"]["field"].as_str()),
        (400, Some("keep")),
        "{v}"
    );
    let (status, v) = s.get("/artifacts/storage/costs").await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (422, Some("COSTS_NOT_CONFIGURED")),
        "{v}"
    );
}

#[tokio::test]
async fn the_configured_scanner_finds_what_is_in_the_bytes() {
    let ws = Workspace::new();
    ws.release("1.0.0", &[]);
    let scanner = ws.path().join("scanner.sh");
    std::fs::write(
        &scanner,
        "printf '{\"vulnerabilities\":['\nfirst=1\nfor id in $(grep -ao 'CVE-[0-9]*-[0-9]*' \"$FRAISIER_ARTIFACT_FILE\" | sort -u); do\n  [ $first = 1 ] || printf ','\n  printf '{\"id\":\"%s\",\"severity\":\"HIGH\"}' \"$id\"; first=0\ndone\nprintf ']}\\n'\n",
    )
    .unwrap();
    let port = free_port();
    let yaml = config_yaml(&ws, port, 1, "rolling", "").replace(
        "  rate_limits: off",
        &format!(
            "  rate_limits: off\n  artifact_scanner: \"sh {}\"",
            scanner.display()
        ),
    );
    let s = Server::start(&ws, &yaml).await;
    let (status, v, _) = push(
        &s,
        "name=lib&version=1.0&type=client",
        b"uses CVE-2024-1111 and CVE-2024-2222".to_vec(),
    )
    .await;
    assert_eq!(status, 201, "{v}");
    let (status, v, _) = push(
        &s,
        "name=lib&version=2.0&type=client",
        b"all patched".to_vec(),
    )
    .await;
    assert_eq!(status, 201, "{v}");
    let (status, v) = s.get("/artifacts/lib/vulnerabilities?version=1.0").await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (404, Some("NOT_SCANNED")),
        "{v}"
    );

    let (status, v) = s.post("/artifacts/lib/scan?version=1.0", json!({})).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["total"], 2, "{v}");
    assert_eq!(v["by_severity"]["high"], 2, "{v}");
    let (status, kept) = s.get("/artifacts/lib/vulnerabilities?version=1.0").await;
    assert_eq!(status, 200);
    assert_eq!(kept["vulnerabilities"], v["vulnerabilities"]);
    let ids: Vec<&str> = kept["vulnerabilities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["CVE-2024-1111", "CVE-2024-2222"]);
    // The newest version by default; clean bytes, no findings.
    let (status, v) = s.post("/artifacts/lib/scan", json!({})).await;
    assert_eq!(
        (status, v["version"].as_str(), v["total"].as_u64()),
        (200, Some("2.0"), Some(0)),
        "{v}"
    );
}

/// `curl -F …` against an API route: the multipart form as curl (not our code) builds it.
fn curl_form(s: &Server, path: &str, fields: &[&str]) -> (u16, Value) {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "-o", "-", "-w", "\n%{http_code}", "-H"])
        .arg(format!("authorization: Bearer {}", s.token));
    for f in fields {
        cmd.args(["-F", f]);
    }
    let out = cmd.arg(format!("{}{path}", s.url)).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (
        code.trim().parse().unwrap(),
        serde_json::from_str(body).unwrap_or(Value::Null),
    )
}

async fn put(s: &Server, path: &str, body: Value) -> (u16, Value) {
    let r = s
        .http
        .put(format!("{}{path}", s.url))
        .bearer_auth(&s.token)
        .json(&body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn the_registry_takes_forms_updates_artifacts_and_promotes_versions() {
    let ws = Workspace::new();
    ws.release("2.0.0", &[]);
    let s = Server::start(&ws, &config_yaml(&ws, free_port(), 1, "rolling", "")).await;
    let tarball = ws.path().join("app-2.0.0.tar.gz");
    let st = Command::new("tar")
        .arg("czf")
        .arg(&tarball)
        .arg("-C")
        .arg(ws.path().join("releases/2.0.0"))
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success());
    let file = format!("file=@{}", tarball.display());

    // A form, as curl sends it: the fields, then the file.
    let (status, v) = curl_form(
        &s,
        "/artifacts",
        &["name=app", "version=2.0.0", "tag=web", &file],
    );
    assert_eq!(status, 201, "{v}");
    assert_eq!(
        (v["digest"].as_str(), v["format"].as_str()),
        (Some(sha256(&tarball).as_str()), Some("tar.gz")),
        "{v}"
    );
    // A version of an artifact that exists: raw, or as a form.
    let (status, v, location) = {
        let r = s
            .http
            .post(format!("{}/artifacts/app/versions?version=2.1.0", s.url))
            .bearer_auth(&s.token)
            .header("content-type", "application/octet-stream")
            .body(std::fs::read(&tarball).unwrap())
            .send()
            .await
            .unwrap();
        let location = r
            .headers()
            .get("location")
            .map(|v| v.to_str().unwrap().to_string());
        (
            r.status().as_u16(),
            r.json::<Value>().await.unwrap(),
            location,
        )
    };
    assert_eq!((status, v["type"].as_str()), (201, Some("api")), "{v}");
    assert_eq!(
        location.as_deref(),
        Some("/api/v1/artifacts/app/versions/2.1.0")
    );
    // The file may come before the fields that name it.
    let (status, v) = curl_form(&s, "/artifacts/app/versions", &[&file, "version=2.2.0"]);
    assert_eq!((status, v["version"].as_str()), (201, Some("2.2.0")), "{v}");
    let (status, v) = curl_form(&s, "/artifacts/nope/versions", &["version=1.0.0", &file]);
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (404, Some("ARTIFACT_NOT_FOUND")),
        "{v}"
    );
    // A form without its file, with a part it does not know, or saying a field twice: its
    // bytes (others than any stored) are not kept.
    let refused = ws.path().join("refused.bin");
    std::fs::write(&refused, b"bytes no version will ever name").unwrap();
    let file = format!("file=@{}", refused.display());
    for (path, fields, field) in [
        ("/artifacts", vec!["name=app", "version=3.0.0"], "file"),
        (
            "/artifacts",
            vec!["name=app", "colour=red", file.as_str()],
            "colour",
        ),
        (
            "/artifacts/app/versions?version=3.0.0",
            vec!["version=3.0.1", file.as_str()],
            "version",
        ),
        (
            "/artifacts/app/versions",
            vec!["name=app", file.as_str()],
            "name",
        ),
    ] {
        let (status, v) = curl_form(&s, path, &fields);
        assert_eq!(
            (status, v["error"]["details"]["field"].as_str()),
            (400, Some(field)),
            "{path} {fields:?}: {v}"
        );
    }
    let (_, v) = s.get("/artifacts/app/versions").await;
    assert_eq!(v["versions"].as_array().unwrap().len(), 3, "{v}");
    // Refused forms keep none of their bytes.
    let blobs = files_under(&s.data_dir.join("blobs"));
    assert_eq!(blobs.len(), 1, "one tarball stored once: {blobs:?}");

    // Description and tags change; what is not given stays; null removes.
    let (status, v) = put(
        &s,
        "/artifacts/app",
        json!({"description": "The shop", "tags": ["web", "eu"]}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        (v["description"].as_str(), v["tags"].clone()),
        (Some("The shop"), json!(["web", "eu"]))
    );
    let (status, v) = put(&s, "/artifacts/app", json!({"description": null})).await;
    assert_eq!(
        (status, v["description"].clone(), v["tags"].clone()),
        (200, Value::Null, json!(["web", "eu"])),
        "{v}"
    );
    for (body, field) in [
        (json!({"colour": "red"}), "colour"),
        (json!({"tags": [""]}), "tags[0]"),
        (json!({"description": "x".repeat(2001)}), "description"),
    ] {
        let (status, v) = put(&s, "/artifacts/app", body.clone()).await;
        assert_eq!(
            (status, v["error"]["details"]["field"].as_str()),
            (400, Some(field)),
            "{body}: {v}"
        );
    }
    let (status, _) = put(&s, "/artifacts/nope", json!({"tags": []})).await;
    assert_eq!(status, 404);
    let (_, v) = s.get("/artifacts/app").await;
    assert_eq!(v["tags"], json!(["web", "eu"]), "bad input changed nothing");

    // Promotion: 2.0.0 proven in staging goes to production, from the store as it is.
    let (status, v) = s
        .post(
            "/deployments/direct",
            json!({"fraise": "app", "environment": "staging", "version": "2.0.0"}),
        )
        .await;
    assert_eq!(status, 202, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    assert_eq!(
        s.wait_run(&id, Duration::from_secs(60)).await["status"],
        "success"
    );
    let (status, v) = s
        .post(
            "/artifacts/app/promote",
            json!({"from": "staging", "version": "2.1.0", "to": "production"}),
        )
        .await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (409, Some("NOT_PROMOTABLE")),
        "only what runs in staging: {v}"
    );
    let (status, v) = s
        .post(
            "/artifacts/app/promote",
            json!({"from": "staging", "to": "production"}),
        )
        .await;
    assert_eq!(status, 202, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    let run = s.wait_run(&id, Duration::from_secs(60)).await;
    assert_eq!(
        (run["status"].as_str(), run["version"].as_str()),
        (Some("success"), Some("2.0.0")),
        "{run:#}"
    );
    let (_, v) = s.get("/fraises/app").await;
    assert_eq!(
        v["environments"]["production"]["current_version"], "2.0.0",
        "{v:#}"
    );
    let (_, v) = s.get("/artifacts/app/versions/2.0.0").await;
    let promotion = &v["metadata"]["promotions"][0];
    assert_eq!(
        (
            promotion["environment"].as_str(),
            promotion["from"].as_str(),
            promotion["deployment_id"].as_str()
        ),
        (Some("production"), Some("staging"), Some(id.as_str())),
        "{v:#}"
    );
    // Refusals, each precise, none deploying anything.
    let (status, _) = curl_form(
        &s,
        "/artifacts",
        &["name=weights", "version=1", "type=model", &file],
    );
    assert_eq!(status, 201);
    for (path, body, expected) in [
        (
            "/artifacts/app/promote",
            json!({"to": "production"}),
            (400, "INVALID_PARAMETERS"),
        ),
        (
            "/artifacts/weights/promote",
            json!({"version": "1", "to": "production"}),
            (409, "NOT_PROMOTABLE"),
        ),
        (
            "/artifacts/app/promote",
            json!({"from": "nowhere", "to": "production"}),
            (404, "ENVIRONMENT_NOT_FOUND"),
        ),
        (
            "/artifacts/app/promote",
            json!({"version": "9.9.9", "to": "production"}),
            (404, "ARTIFACT_NOT_FOUND"),
        ),
        (
            "/artifacts/app/promote",
            json!({"version": "2.0.0", "to": "production", "colour": 1}),
            (400, "INVALID_PARAMETERS"),
        ),
    ] {
        let (status, v) = s.post(path, body.clone()).await;
        assert_eq!(
            (status, v["error"]["code"].as_str().unwrap_or_default()),
            expected,
            "{body}: {v}"
        );
    }
    let (_, v) = s.get("/deployments?limit=100").await;
    assert_eq!(v["pagination"]["total"], 2, "{v:#}");

    // The same from the CLI.
    let text = cli(
        &s,
        &[
            "artifact",
            "update",
            "app",
            "--description",
            "Shop API",
            "--tag",
            "cli",
        ],
    );
    assert!(text.contains("app: Shop API [cli]"), "{text}");
    let text = cli(
        &s,
        &[
            "artifact",
            "promote",
            "app",
            "--to",
            "staging",
            "--release-version",
            "2.2.0",
        ],
    );
    assert!(text.contains("app 2.2.0 → staging: dep_"), "{text}");
}
