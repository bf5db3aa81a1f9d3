//! Seed 004's targets and target groups, written: a fraise placed on a target group of its
//! environment runs on the group's agents; targets of the types Fraisier has no provider for
//! are kept as data and refused, with 422 `PROVIDER_UNSUPPORTED`, when a deploy would need
//! them; every route's 400/403/404/409/422 paths; groups and targets survive a restart.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

async fn deploy_refused(s: &Server, version: &str) -> (u16, Value) {
    s.post("/deployments/app/production", json!({ "version": version }))
        .await
}

#[tokio::test]
async fn target_groups_place_fraises_and_targets_without_a_provider_are_refused() {
    let ws = Workspace::new();
    for v in ["1.0.0", "2.0.0", "3.0.0"] {
        ws.release(v, &[]);
    }
    let port = free_port();
    let yaml = config_yaml(&ws, port, 2, "rolling", "").replace(
        &format!("production: {{ port: {port}, instances: 2, strategy: rolling }}"),
        &format!(
            "production: {{ port: {port}, instances: 2, strategy: rolling, targets: {{ group: web }} }}"
        ),
    );
    assert!(yaml.contains("group: web"), "{yaml}");
    // Someone who runs the fleet, but may change staging only.
    let yaml = yaml.replacen(
        "environments:\n  production:",
        "roles:\n  fleet_ops: { permissions: [\"agent:*\", \"environment:*\"], environments: [staging] }\nenvironments:\n  production:",
        1,
    );
    assert!(yaml.contains("fleet_ops"), "{yaml}");
    let mut s = Server::start(&ws, &yaml).await;

    // The group is looked up when a deploy asks: none yet, so nothing is recorded.
    let (status, v) = deploy_refused(&s, "1.0.0").await;
    assert_eq!((status, code(&v)), (422, "TARGET_GROUP_NOT_FOUND"), "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("/environments/production/target-groups"),
        "{v}"
    );
    let (_, runs) = s.get("/deployments").await;
    assert_eq!(
        runs["pagination"]["total"], 0,
        "a refused deploy records nothing: {runs}"
    );

    // Target groups: create, with its 400/404/409/422 paths.
    let path = "/environments/production/target-groups";
    let (status, v) = s
        .post(path, json!({ "name": "bad name", "targetIds": [] }))
        .await;
    assert_eq!((status, code(&v)), (400, "INVALID_PARAMETERS"), "{v}");
    assert_eq!(v["error"]["details"]["field"], "name", "{v}");
    let (status, v) = s
        .post(
            "/environments/nowhere/target-groups",
            json!({ "name": "web" }),
        )
        .await;
    assert_eq!((status, code(&v)), (404, "ENVIRONMENT_NOT_FOUND"), "{v}");
    let (status, v) = s
        .post(path, json!({ "name": "web", "targetIds": ["ghost"] }))
        .await;
    assert_eq!((status, code(&v)), (422, "TARGET_NOT_FOUND"), "{v}");
    assert_eq!(v["error"]["details"]["field"], "targetIds[0]", "{v}");
    let (status, group) = s
        .post(
            path,
            json!({ "name": "web", "description": "the web tier", "targetIds": ["local"] }),
        )
        .await;
    assert_eq!(status, 201, "{group}");
    let gid = group["id"].as_str().unwrap().to_string();
    assert!(gid.starts_with("tgg_"), "{group}");
    assert_eq!(group["environment_id"], "production");
    assert_eq!(group["used_by"], json!(["app"]), "{group}");
    let local_id = group["member_ids"][0].as_str().unwrap().to_string();
    assert!(local_id.starts_with("agt_"), "members by id: {group}");
    let (status, v) = s.post(path, json!({ "name": "web" })).await;
    assert_eq!((status, code(&v)), (409, "TARGET_GROUP_EXISTS"), "{v}");
    let (status, list) = s.get(path).await;
    assert_eq!((status, list["total"].clone()), (200, json!(1)), "{list}");

    // Placed on the group, the fraise runs on its member, the server's own agent (once it
    // has said it is up).
    wait_get(&s, "/agents/local", |v| v["status"] == "online").await;
    let run = s
        .deploy("app", "production", json!({ "version": "1.0.0" }))
        .await;
    let v = s.wait_run(&run, Duration::from_secs(60)).await;
    assert_eq!(v["status"], "success", "{v}");
    assert_eq!(router_version(port).await.as_deref(), Some("1.0.0"));
    let (_, local) = s.get("/targets/local").await;
    assert_eq!(local["target_group_ids"], json!([gid]), "{local}");
    assert_eq!(
        local["environment_ids"],
        json!(["production", "staging"]),
        "{local}"
    );

    // A target of a type without a provider: described, with the 400/404/409/422 paths.
    let docker = json!({
        "environmentId": "production",
        "name": "prod-web-01",
        "targetType": "docker_host",
        "connection": { "host": "192.168.1.100", "port": 2375, "tlsEnabled": true },
        "labels": { "role": "web", "datacenter": "us-east-1" },
        "deploymentDirectory": "/opt/deployments"
    });
    let with = |key: &str, value: Value| {
        let mut b = docker.clone();
        if value.is_null() {
            b.as_object_mut().unwrap().remove(key);
        } else {
            b[key] = value;
        }
        b
    };
    for (body, status_code, err, field) in [
        (
            with("connection", json!({ "port": 2375 })),
            400,
            "INVALID_PARAMETERS",
            "connection.host",
        ),
        (
            with(
                "connection",
                json!({ "host": "h", "registryPassword": "hunter2" }),
            ),
            400,
            "INVALID_PARAMETERS",
            "connection.registryPassword",
        ),
        (
            with("deploymentDirectory", json!("opt/deployments")),
            400,
            "INVALID_PARAMETERS",
            "deploymentDirectory",
        ),
        (
            with("targetType", json!("kubernetes")),
            400,
            "INVALID_PARAMETERS",
            "target_type",
        ),
        (with("name", json!("local")), 409, "TARGET_EXISTS", ""),
        (
            with("targetType", json!("fraisier_agent")),
            422,
            "AGENT_MUST_JOIN",
            "targetType",
        ),
        (
            with("environmentId", json!("nowhere")),
            404,
            "ENVIRONMENT_NOT_FOUND",
            "",
        ),
        (
            with("targetGroupId", json!("tgg_999")),
            404,
            "TARGET_GROUP_NOT_FOUND",
            "targetGroupId",
        ),
    ] {
        let (status, v) = s.post("/targets", body.clone()).await;
        assert_eq!((status, code(&v)), (status_code, err), "{body} → {v}");
        if !field.is_empty() {
            assert_eq!(v["error"]["details"]["field"], field, "{body} → {v}");
        }
        assert!(!v.to_string().contains("hunter2"), "a secret echoed: {v}");
    }
    let (status, t) = s.post("/targets", docker.clone()).await;
    assert_eq!(status, 201, "{t}");
    let tid = t["id"].as_str().unwrap().to_string();
    assert!(tid.starts_with("tgt_"), "{t}");
    assert_eq!(t["target_type"], "docker_host");
    assert_eq!(t["health_status"], "unknown");
    assert_eq!(t["deployable"], false);
    assert_eq!(
        t["connection"],
        json!({ "host": "192.168.1.100", "port": 2375, "tlsEnabled": true }),
        "the connection's keys are the user's: {t}"
    );
    let (status, v) = s.post("/targets", docker.clone()).await;
    assert_eq!((status, code(&v)), (409, "TARGET_EXISTS"), "{v}");

    // The list's filters see both kinds.
    for (query, ids) in [
        ("targetType=docker_host", vec![tid.as_str()]),
        ("targetType=fraisier_agent", vec![local_id.as_str()]),
        ("labels=datacenter=us-east-1", vec![tid.as_str()]),
        ("healthStatus=unknown", vec![tid.as_str()]),
        (
            "environmentId=production",
            vec![local_id.as_str(), tid.as_str()],
        ),
    ] {
        let (status, v) = s.get(&format!("/targets?{query}")).await;
        assert_eq!(status, 200, "{v}");
        let got: Vec<&str> = v["targets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["id"].as_str().unwrap())
            .collect();
        assert_eq!(got, ids, "{query}: {v}");
    }

    // The group takes it by its labels: a deploy would need it, and is refused.
    let (status, g) = s
        .put_json(
            &format!("/target-groups/{gid}"),
            json!({ "labels": { "role": "web" } }),
        )
        .await;
    assert_eq!(status, 200, "{g}");
    assert_eq!(g["target_ids"], json!([local_id, tid]), "{g}");
    let (status, v) = deploy_refused(&s, "2.0.0").await;
    assert_eq!((status, code(&v)), (422, "PROVIDER_UNSUPPORTED"), "{v}");
    assert_eq!(v["error"]["details"]["target"], "prod-web-01", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("docker_host"),
        "{v}"
    );
    let (status, v) = s
        .post(&format!("/targets/{tid}/health-check"), json!({}))
        .await;
    assert_eq!((status, code(&v)), (422, "PROVIDER_UNSUPPORTED"), "{v}");
    let (status, v) = s.get(&format!("/targets/{tid}/sticker")).await;
    assert_eq!((status, v["components"].clone()), (200, json!([])), "{v}");

    // Relabelled out of the group's labels but made a member: still refused; out: deployed.
    let (status, v) = s
        .put_json(
            "/targets/prod-web-01",
            json!({ "labels": { "role": "db" }, "targetGroupId": gid }),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["target_group_ids"], json!([gid]), "{v}");
    let (status, v) = deploy_refused(&s, "2.0.0").await;
    assert_eq!((status, code(&v)), (422, "PROVIDER_UNSUPPORTED"), "{v}");
    let (status, v) = s
        .put_json("/targets/prod-web-01", json!({ "targetGroupId": null }))
        .await;
    assert_eq!(
        (status, v["target_group_ids"].clone()),
        (200, json!([])),
        "{v}"
    );
    let run = s
        .deploy("app", "production", json!({ "version": "2.0.0" }))
        .await;
    let v = s.wait_run(&run, Duration::from_secs(60)).await;
    assert_eq!(v["status"], "success", "{v}");
    assert_eq!(router_version(port).await.as_deref(), Some("2.0.0"));

    // A rollback is not held up by a described target in the group: it goes to the group's
    // agents.
    let (status, _) = s
        .put_json("/targets/prod-web-01", json!({ "targetGroupId": gid }))
        .await;
    assert_eq!(status, 200);
    let (status, v) = deploy_refused(&s, "3.0.0").await;
    assert_eq!((status, code(&v)), (422, "PROVIDER_UNSUPPORTED"), "{v}");
    let (status, v) = s
        .post("/deployments/app/production/rollback", json!({}))
        .await;
    assert_eq!(status, 202, "{v}");
    let v = s
        .wait_run(v["id"].as_str().unwrap(), Duration::from_secs(60))
        .await;
    assert_eq!(v["status"], "success", "{v}");
    assert_eq!(router_version(port).await.as_deref(), Some("1.0.0"));
    let (status, _) = s
        .put_json("/targets/prod-web-01", json!({ "targetGroupId": null }))
        .await;
    assert_eq!(status, 200);

    // What an agent does not take, and what cannot be deleted or renamed.
    let (status, v) = s
        .put_json("/targets/local", json!({ "name": "other" }))
        .await;
    assert_eq!((status, code(&v)), (422, "AGENT_FIELD_READ_ONLY"), "{v}");
    let (status, v) = s
        .put_json(
            &format!("/targets/{tid}"),
            json!({ "connection": { "port": 1 } }),
        )
        .await;
    assert_eq!((status, code(&v)), (400, "INVALID_PARAMETERS"), "{v}");
    let (status, v) = s.delete("/targets/local").await;
    assert_eq!((status, code(&v)), (409, "TARGET_IS_AGENT"), "{v}");
    let (status, v) = s.delete(&format!("/target-groups/{gid}")).await;
    assert_eq!((status, code(&v)), (409, "TARGET_GROUP_IN_USE"), "{v}");
    let (status, v) = s
        .put_json(&format!("/target-groups/{gid}"), json!({ "name": "front" }))
        .await;
    assert_eq!((status, code(&v)), (409, "TARGET_GROUP_IN_USE"), "{v}");
    let (status, v) = s.get("/target-groups/tgg_999").await;
    assert_eq!((status, code(&v)), (404, "TARGET_GROUP_NOT_FOUND"), "{v}");

    // A viewer reads, and changes nothing.
    let viewer = user_token(&s, "vera", &["viewer"]).await;
    let r = s
        .http
        .post(format!("{}/targets", s.url))
        .bearer_auth(&viewer)
        .json(&with("name", json!("prod-web-02")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    let r = s
        .http
        .get(format!("{}/target-groups/{gid}", s.url))
        .bearer_auth(&viewer)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);

    // Joining production's group moves where production runs: not for a staging-only role.
    let olga = user_token(&s, "olga", &["fleet_ops"]).await;
    let r = s
        .http
        .put(format!("{}/targets/prod-web-01", s.url))
        .bearer_auth(&olga)
        .json(&json!({ "targetGroupId": gid }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["details"]["environment"], "production", "{v}");

    // Groups and targets are in the store: a restart keeps them.
    s.kill9();
    s.restart().await;
    let (status, g) = s.get(&format!("/target-groups/{gid}")).await;
    assert_eq!(status, 200, "{g}");
    assert_eq!(g["member_ids"], json!([local_id]), "{g}");
    assert_eq!(g["labels"], json!({ "role": "web" }), "{g}");
    let (status, t) = s.get("/targets/prod-web-01").await;
    assert_eq!(
        (status, t["labels"]["role"].clone()),
        (200, json!("db")),
        "{t}"
    );

    // The CLI next to the routes.
    let out = cli(&s, &["target", "group", "list", "production"]);
    assert!(
        out.contains(&gid) && out.contains("web") && out.contains("app"),
        "{out}"
    );
    let out = cli(
        &s,
        &[
            "target",
            "create",
            "edge-1",
            "--type",
            "compose_host",
            "--connection",
            "host=10.0.0.9,port=22",
            "--labels",
            "role=edge",
        ],
    );
    assert!(
        out.contains("compose_host") && out.contains("cannot deploy"),
        "{out}"
    );
    let (_, t) = s.get("/targets/edge-1").await;
    assert_eq!(
        t["connection"],
        json!({ "host": "10.0.0.9", "port": 22 }),
        "{t}"
    );
    let out = cli(&s, &["target", "update", "edge-1", "--group", &gid]);
    assert!(out.contains(&gid), "{out}");
    cli(&s, &["target", "delete", "edge-1"]);
    let (status, _) = s.get("/targets/edge-1").await;
    assert_eq!(status, 404);

    // A group no fraise uses goes; a described target goes.
    let (status, spare) = s
        .post(path, json!({ "name": "spare", "targetIds": [tid] }))
        .await;
    assert_eq!(status, 201, "{spare}");
    let spare_id = spare["id"].as_str().unwrap();
    let (status, v) = s.delete(&format!("/target-groups/{spare_id}")).await;
    assert_eq!((status, v["deleted"].clone()), (200, json!(true)), "{v}");
    let (status, _) = s.get(&format!("/target-groups/{spare_id}")).await;
    assert_eq!(status, 404);
    let (status, v) = s.delete(&format!("/targets/{tid}")).await;
    assert_eq!((status, v["deleted"].clone()), (200, json!(true)), "{v}");
    let (status, v) = s.get(&format!("/targets/{tid}")).await;
    assert_eq!((status, code(&v)), (404, "TARGET_NOT_FOUND"), "{v}");
    let (status, _) = s.delete(&format!("/targets/{tid}")).await;
    assert_eq!(status, 404);

    // Every change is in the audit trail.
    let (_, audit) = s.get("/audit?limit=200").await;
    let actions: Vec<&str> = audit["audit"]
        .as_array()
        .expect("an audit list")
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    for a in [
        "target_group.create",
        "target_group.update",
        "target_group.delete",
        "target.create",
        "target.update",
        "target.delete",
    ] {
        assert!(actions.contains(&a), "{a} not audited: {actions:?}");
    }
}

/// Drift: a release changed by hand on the host shows, file by file; `fraisier drift` exits
/// 1 then, 0 once the file is put back.
#[tokio::test]
async fn files_changed_by_hand_in_a_release_show_as_drift() {
    let ws = Workspace::new();
    ws.release("1.0.0", &[]);
    let port = free_port();
    let s = Server::start(&ws, &config_yaml(&ws, port, 1, "rolling", "")).await;
    let (status, v) = s.get("/targets/local/drift").await;
    assert_eq!((status, v["has_drift"].clone()), (200, json!(false)), "{v}");
    assert_eq!(v["components"], json!([]), "nothing runs there yet: {v}");

    let run = s
        .deploy("app", "production", json!({ "version": "1.0.0" }))
        .await;
    let v = s.wait_run(&run, Duration::from_secs(60)).await;
    assert_eq!(v["status"], "success", "{v}");
    let (status, clean) = s.get("/targets/local/drift").await;
    assert_eq!(status, 200, "{clean}");
    assert_eq!(clean["has_drift"], false, "{clean}");
    assert_eq!(clean["expected"]["release_id"], "app-1.0.0", "{clean}");
    assert_eq!(
        clean["expected"]["digest"], clean["actual"]["digest"],
        "{clean}"
    );
    assert!(
        clean["components"][0]["artifact"]
            .as_str()
            .is_some_and(|a| a.starts_with("sha256:")),
        "{clean}"
    );
    let out = cli(&s, &["drift", "local"]);
    assert!(out.contains("app@production 1.0.0: as installed"), "{out}");

    // Someone edits the release on the host.
    let release = s.agent_dir().join("releases/app/1.0.0");
    let env_file = release.join("demo.env");
    let original = std::fs::read_to_string(&env_file).unwrap();
    std::fs::write(&env_file, "DEMO_VERSION=hotfixed\n").unwrap();
    std::fs::write(release.join("patch.sh"), "echo patched\n").unwrap();
    let (_, v) = s.get("/targets/local/drift").await;
    assert_eq!(v["has_drift"], true, "{v}");
    assert_ne!(v["expected"]["digest"], v["actual"]["digest"], "{v}");
    assert_eq!(
        v["differences"][0]["files"],
        json!([
            { "path": "demo.env", "change": "modified" },
            { "path": "patch.sh", "change": "added" }
        ]),
        "{v}"
    );
    let out = std::process::Command::new(fraisier_bin())
        .args(["--server", &s.url, "drift", "local"])
        .env("FRAISIER_TOKEN", &s.token)
        .env_remove("FRAISIER_CONFIG")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "drift exits 1: {text}");
    assert!(
        text.contains("DRIFTED") && text.contains("modified demo.env"),
        "{text}"
    );

    // Put back: no drift.
    std::fs::write(&env_file, original).unwrap();
    std::fs::remove_file(release.join("patch.sh")).unwrap();
    let (_, v) = s.get("/targets/local/drift").await;
    assert_eq!(v["has_drift"], false, "{v}");

    // What cannot be checked says why.
    let (status, v) = s.get("/targets/nowhere/drift").await;
    assert_eq!((status, code(&v)), (404, "TARGET_NOT_FOUND"), "{v}");
    let (status, t) = s
        .post(
            "/targets",
            json!({ "name": "db-1", "targetType": "nomad_job", "connection": { "address": "http://nomad:4646", "job": "db" } }),
        )
        .await;
    assert_eq!(status, 201, "{t}");
    let (status, v) = s.get("/targets/db-1/drift").await;
    assert_eq!((status, code(&v)), (422, "PROVIDER_UNSUPPORTED"), "{v}");
}
