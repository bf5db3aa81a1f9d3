//! A fraise placed on an agent that joined, by its labels: deployed, rolled under load and
//! observed through the agent's task stream; the agent lost mid-run; the agent back.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

fn alive(pid: u64) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

#[tokio::test]
async fn a_fraise_placed_by_labels_runs_on_the_agent_that_joined() {
    let ws = Workspace::new();
    for v in ["1.0.0", "2.0.0", "3.0.0"] {
        ws.release(v, &[]);
    }
    let port = free_port();
    let yaml = config_yaml(&ws, port, 2, "rolling", "").replace(
        &format!("production: {{ port: {port}, instances: 2, strategy: rolling }}"),
        &format!(
            "production: {{ port: {port}, instances: 2, strategy: rolling, targets: {{ labels: {{ role: web }} }} }}"
        ),
    );
    assert!(yaml.contains("role: web"), "{yaml}");
    let yaml = yaml.replace(
        "  rate_limits: off\n",
        "  rate_limits: off\n  agent_heartbeat_interval: 200ms\n  agent_offline_after: 2s\n",
    );
    let s = Server::start(&ws, &yaml).await;

    // No agent carries role=web yet: the run says so and nothing is started anywhere.
    let run = s
        .deploy("app", "production", json!({"version": "1.0.0"}))
        .await;
    let v = s.wait_run(&run, Duration::from_secs(30)).await;
    assert_eq!(v["status"], "failed", "{v}");
    assert!(v["error"].to_string().contains("role=web"), "{v}");

    let (_, t) = s.post("/agents/join-tokens", json!({})).await;
    let token = t["token"].as_str().unwrap().to_string();
    let dir = ws.path().join("web-1");
    let mut agent = AgentProcess::start(
        &s.url,
        &dir,
        &[
            "--join-token",
            &token,
            "--name",
            "web-1",
            "--labels",
            "role=web",
        ],
    );
    wait_get(&s, "/agents/web-1", |v| v["status"] == "online").await;
    agent.wait_log("task stream open").await;

    let run = s
        .deploy("app", "production", json!({"version": "1.0.0"}))
        .await;
    let v = s.wait_run(&run, Duration::from_secs(60)).await;
    assert_eq!(v["status"], "success", "{v}");
    assert_eq!(router_version(port).await.as_deref(), Some("1.0.0"));
    // The instances are the remote agent's, not the local one's.
    let pids = instance_pids(&dir);
    assert_eq!(pids.len(), 2, "web-1 runs both instances: {pids:?}");
    assert!(
        instance_pids(&s.agent_dir())
            .iter()
            .all(|p| !pids.contains(p)),
        "the local agent runs none of them"
    );
    let (_, status) = s.get("/deployments/app@production/health").await;
    assert_eq!(status["overall"], "healthy", "{status}");
    assert_eq!(
        status["components"]["service"]["checks"]
            .as_array()
            .map(Vec::len),
        Some(2),
        "{status}"
    );

    // Seed 004's targets: the agents, where each environment's fraises run.
    let (_, all) = s.get("/targets").await;
    assert_eq!(all["total"], 2, "{all}");
    let (_, prod) = s.get("/targets?environmentId=production").await;
    let names: Vec<&str> = prod["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["web-1"], "{prod}");
    let (_, staging) = s.get("/targets?environment_id=staging").await;
    assert_eq!(staging["targets"][0]["name"], "local", "{staging}");
    for (query, total) in [
        ("targetType=fraisier_agent", 2),
        ("targetType=docker_host", 0),
        ("labels=role=web", 1),
        ("labels=role=db", 0),
        ("healthStatus=healthy", 2),
        ("healthStatus=unhealthy", 0),
    ] {
        let (status, v) = s.get(&format!("/targets?{query}")).await;
        assert_eq!(
            (status, v["total"].as_u64()),
            (200, Some(total)),
            "{query}: {v}"
        );
    }
    for (query, status) in [
        ("targetType=vm", 400),
        ("healthStatus=sick", 400),
        ("labels=1bad", 400),
        ("environmentId=nowhere", 404),
    ] {
        assert_eq!(
            s.get(&format!("/targets?{query}")).await.0,
            status,
            "{query}"
        );
    }
    let (_, t) = s.get("/targets/web-1").await;
    assert_eq!(t["target_type"], "fraisier_agent");
    assert_eq!(t["environment_ids"], json!(["production"]));
    assert_eq!(s.get("/targets/nowhere").await.0, 404);
    let (status, check) = s.post("/targets/web-1/health-check", json!({})).await;
    assert_eq!(
        (status, check["status"].as_str()),
        (200, Some("healthy")),
        "{check}"
    );
    let (_, sticker) = s.get("/targets/web-1/sticker").await;
    assert_eq!(sticker["release_name"], "app-1.0.0", "{sticker}");
    let c = &sticker["components"][0];
    assert_eq!(
        (c["component_id"].as_str(), c["instances"].as_u64()),
        (Some("app@production"), Some(2)),
        "{sticker}"
    );
    assert!(
        c["digest"].as_str().unwrap().starts_with("sha256:"),
        "{sticker}"
    );
    assert_eq!(sticker["deployed_by"], "admin", "{sticker}");
    let text = cli(&s, &["target", "list", "--environment", "production"]);
    assert!(text.contains("web-1") && !text.contains("local"), "{text}");
    let text = cli(&s, &["target", "sticker", "web-1"]);
    assert!(
        text.contains("app@production") && text.contains("1.0.0"),
        "{text}"
    );
    let text = cli(&s, &["target", "check", "web-1"]);
    assert!(text.contains("healthy"), "{text}");
    // Drift, asked over the task stream: the agent hashes its release again.
    let (status, d) = s.get("/targets/web-1/drift").await;
    assert_eq!((status, d["has_drift"].clone()), (200, json!(false)), "{d}");
    assert_eq!(d["expected"]["release_id"], "app-1.0.0", "{d}");
    std::fs::write(
        dir.join("releases/app/1.0.0/demo.env"),
        "DEMO_VERSION=edited\n",
    )
    .unwrap();
    let (_, d) = s.get("/targets/web-1/drift").await;
    assert_eq!(d["has_drift"], true, "{d}");
    assert_eq!(
        d["differences"][0]["files"],
        json!([{ "path": "demo.env", "change": "modified" }]),
        "{d}"
    );
    let (_, local_sticker) = s.get("/targets/local/sticker").await;
    assert!(
        local_sticker["components"].as_array().unwrap().is_empty(),
        "{local_sticker}"
    );

    // A rolling deploy through the remote agent's router, under load: nothing fails.
    let load = Load::start(port, 4);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let run = s
        .deploy("app", "production", json!({"version": "2.0.0"}))
        .await;
    let v = s.wait_run(&run, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let report = load.stop().await;
    assert_eq!(v["status"], "success", "{v}");
    assert!(report.ok > 100, "{report:?}");
    assert_eq!(report.failed, 0, "{:?}", report.errors);
    assert_eq!(router_version(port).await.as_deref(), Some("2.0.0"));

    // The agent dies mid-run: the step fails naming it, and nothing more is started.
    let run = s
        .deploy(
            "app",
            "production",
            json!({"version": "3.0.0", "timeout": 20}),
        )
        .await;
    agent.kill9();
    let v = s.wait_run(&run, Duration::from_secs(60)).await;
    assert_eq!(v["status"], "failed", "{v}");
    let failed_step = v["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|st| st["status"] == "failed")
        .cloned()
        .unwrap();
    assert!(
        failed_step["error"].to_string().contains("agent web-1"),
        "{v}"
    );
    // Failed as soon as the agent was lost (2 s here), not at the run's 20 s timeout; the
    // rollback does not wait for it either: it is handed the previous version on return.
    assert!(v["duration_seconds"].as_f64().unwrap() < 15.0, "{v}");
    assert_eq!(v["error"]["code"], "PROVIDER_ERROR", "{v}");
    let (_, logs) = s.get(&format!("/deployments/{run}/logs?lines=1000")).await;
    assert!(
        logs.to_string().contains("Restored without web-1"),
        "{logs}"
    );
    let (_, check) = s.post("/targets/web-1/health-check", json!({})).await;
    assert_eq!(check["status"], "unhealthy", "{check}");
    assert!(
        check["message"].as_str().unwrap().contains("web-1"),
        "{check}"
    );
    // Its instances live on without it (its router was part of it).
    let orphans = instance_pids(&dir);
    assert!(
        !orphans.is_empty() && orphans.iter().all(|p| alive(*p)),
        "{orphans:?}"
    );

    // Back, it re-adopts what it ran and converges: no duplicate, no orphan.
    let before: Vec<u64> = instance_pids(&dir);
    let agent = AgentProcess::start(&s.url, &dir, &[]);
    wait_get(&s, "/agents/web-1", |v| v["status"] == "online").await;
    let run = s
        .deploy(
            "app",
            "production",
            json!({"version": "2.0.0", "force": true}),
        )
        .await;
    let v = s.wait_run(&run, Duration::from_secs(60)).await;
    assert_eq!(v["status"], "success", "{v}");
    let after = instance_pids(&dir);
    assert_eq!(after.len(), 2, "{after:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while before.iter().any(|p| !after.contains(p) && alive(*p)) {
        assert!(
            Instant::now() < deadline,
            "an instance was orphaned: {before:?} → {after:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(agent);
}

/// A TLS front for the server, as a host reaching it over the network sees it: socat with a
/// certificate for 127.0.0.1 signed by a CA made for the test. Stopped when dropped.
struct TlsFront {
    child: std::process::Child,
    port: u16,
    ca: std::path::PathBuf,
}

impl TlsFront {
    fn start(dir: &Path, server_port: u16) -> TlsFront {
        std::fs::create_dir_all(dir).unwrap();
        let openssl = |args: &[&str]| {
            let out = std::process::Command::new("openssl")
                .args(args)
                .current_dir(dir)
                .output()
                .expect("openssl");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        openssl(
            &[
                &[
                    "req",
                    "-x509",
                    "-days",
                    "2",
                    "-subj",
                    "/CN=fraisier test CA",
                ][..],
                &ec,
                &["-keyout", "ca.key", "-out", "ca.pem"],
                &["-addext", "basicConstraints=critical,CA:TRUE"],
                &["-addext", "keyUsage=critical,keyCertSign,cRLSign"],
            ]
            .concat(),
        );
        openssl(
            &[
                &["req", "-subj", "/CN=127.0.0.1"][..],
                &ec,
                &["-keyout", "server.key", "-out", "server.csr"],
            ]
            .concat(),
        );
        std::fs::write(
            dir.join("server.ext"),
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "server.ext",
            "-out",
            "server.pem",
        ]);
        let port = free_port();
        let mut child = std::process::Command::new("socat")
            .arg(format!(
                "OPENSSL-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,cert={},key={},verify=0",
                dir.join("server.pem").display(),
                dir.join("server.key").display()
            ))
            .arg(format!("TCP:127.0.0.1:{server_port}"))
            .stdin(std::process::Stdio::null())
            .spawn()
            .expect("socat");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("socat exited before listening on {port}: {status}");
            }
            assert!(Instant::now() < deadline, "socat never listened on {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        TlsFront {
            child,
            port,
            ca: dir.join("ca.pem"),
        }
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The agent's channel is TLS when the server's URL is https: registering, heartbeats, the
/// task stream (wss) and artifact downloads all go through a TLS front, the certificate
/// checked against the CA the host trusts (SSL_CERT_FILE); an agent that does not trust it
/// refuses to join, naming the certificate.
#[tokio::test]
async fn an_agent_joins_over_tls_and_refuses_a_certificate_it_does_not_trust() {
    let ws = Workspace::new();
    ws.release("1.0.0", &[]);
    let port = free_port();
    let yaml = config_yaml(&ws, port, 1, "rolling", "")
        .replace(
            &format!("production: {{ port: {port}, instances: 1, strategy: rolling }}"),
            &format!(
                "production: {{ port: {port}, instances: 1, strategy: rolling, targets: {{ labels: {{ role: tls }} }} }}"
            ),
        )
        .replace(
            "  rate_limits: off\n",
            "  rate_limits: off\n  agent_heartbeat_interval: 200ms\n  agent_offline_after: 2s\n",
        );
    assert!(yaml.contains("role: tls"), "{yaml}");
    let s = Server::start(&ws, &yaml).await;
    let server_port: u16 = s
        .url
        .trim_start_matches("http://127.0.0.1:")
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let front = TlsFront::start(&ws.path().join("tls"), server_port);
    let https = format!("https://127.0.0.1:{}/api/v1", front.port);
    let (_, t) = s.post("/agents/join-tokens", json!({ "uses": 2 })).await;
    let token = t["token"].as_str().unwrap().to_string();

    // A host that does not trust the CA does not join.
    let mut stranger = AgentProcess::start_with(
        None,
        &https,
        &ws.path().join("stranger"),
        &[
            "--join-token",
            &token,
            "--name",
            "stranger",
            "--labels",
            "role=tls",
        ],
        &[],
    );
    stranger.wait_log("UnknownIssuer").await;
    stranger.kill9();
    let (status, _) = s.get("/agents/stranger").await;
    assert_eq!(status, 404, "the stranger never registered");

    // One that does joins, and everything it says goes over TLS.
    let ca = front.ca.display().to_string();
    let dir = ws.path().join("secure");
    let agent = AgentProcess::start_with(
        None,
        &https,
        &dir,
        &[
            "--join-token",
            &token,
            "--name",
            "secure",
            "--labels",
            "role=tls",
        ],
        &[("SSL_CERT_FILE", &ca)],
    );
    wait_get(&s, "/agents/secure", |v| v["status"] == "online").await;
    agent.wait_log("task stream open").await;
    assert!(
        agent
            .log()
            .contains(&format!("wss://127.0.0.1:{}", front.port)),
        "{}",
        agent.log()
    );
    let run = s
        .deploy("app", "production", json!({ "version": "1.0.0" }))
        .await;
    let v = s.wait_run(&run, Duration::from_secs(60)).await;
    assert_eq!(v["status"], "success", "{v}");
    assert_eq!(router_version(port).await.as_deref(), Some("1.0.0"));
    assert_eq!(instance_pids(&dir).len(), 1, "the secure agent runs it");
    drop(agent);
    drop(front);
}
