//! Who may do what, proven from the outside against the real binary: every operation of the
//! OpenAPI document refuses missing, forged, expired and revoked credentials and callers
//! without its permission; roles scope environments; users, API keys, logout and key rotation
//! work from the API and the CLI; the audit trail records and verifies; rate limits are exact.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use fraisier_model::config::TokenAlgorithm;
use fraisier_server::api::routes::{self, Need};
use serde_json::{json, Value};

const ADMIN_PASSWORD: &str = "test-admin-password";

fn access_yaml(ws: &Workspace, extra_server: &str, extra: &str) -> String {
    format!(
        r#"
server:
  listen: "127.0.0.1:0"
  data_dir: "{data}"
{extra_server}
environments:
  development: {{}}
  staging: {{}}
  production: {{}}
fraises:
  app:
    command: "exec {demo}"
    artifact_path: "{releases}/{{version}}"
    health_check: {{ type: http, path: /health, interval: 100ms, timeout: 1s, healthy_threshold: 1, unhealthy_threshold: 2 }}
    drain_timeout: 2s
    stop_grace: 2s
    environments:
      development: {{ port: {p1} }}
      staging: {{ port: {p2} }}
      production: {{ port: {p3} }}
{extra}
"#,
        data = ws.data_dir().display(),
        demo = demo_bin().display(),
        releases = ws.path().join("releases").display(),
        p1 = free_port(),
        p2 = free_port(),
        p3 = free_port(),
    )
}

async fn started(extra_server: &str, extra: &str) -> (Workspace, Server) {
    let ws = Workspace::new();
    ws.release("1.0.0", &[]);
    ws.release("2.0.0", &[]);
    let extra_server = if extra_server.is_empty() {
        "  rate_limits: off".to_string()
    } else {
        extra_server.to_string()
    };
    let s = Server::start(&ws, &access_yaml(&ws, &extra_server, extra)).await;
    (ws, s)
}

/// Any request, with a bearer token, an API key or nothing.
async fn call(
    s: &Server,
    method: &str,
    path: &str,
    auth: Auth<'_>,
    body: Option<Value>,
) -> (u16, Value, reqwest::header::HeaderMap) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut req = s.http.request(method, format!("{}{}", s.url, path));
    req = match auth {
        Auth::None => req,
        Auth::Token(t) => req.bearer_auth(t),
        Auth::Key(k) => req.header("x-api-key", k),
    };
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let text = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
        headers,
    )
}

#[derive(Clone, Copy)]
enum Auth<'a> {
    None,
    Token(&'a str),
    Key(&'a str),
}

async fn login(s: &Server, username: &str, password: &str) -> String {
    let (status, v, _) = call(
        s,
        "POST",
        "/auth/token",
        Auth::None,
        Some(json!({"username": username, "password": password})),
    )
    .await;
    assert_eq!(status, 200, "login of {username}: {v}");
    v["access_token"].as_str().unwrap().to_string()
}

async fn add_user(s: &Server, username: &str, roles: &[&str]) -> String {
    let (status, v) = s
        .post(
            "/users",
            json!({"username": username, "password": format!("{username}-password"), "roles": roles}),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    login(s, username, &format!("{username}-password")).await
}

/// `/deployments/{deployment_id}/logs` with real values for the document's parameters.
fn concrete(path: &str, run: &str) -> String {
    let path = path.strip_prefix("/api/v1").unwrap();
    let mut out = Vec::new();
    let segments: Vec<&str> = path.split('/').collect();
    for (i, seg) in segments.iter().enumerate() {
        let value = match *seg {
            "{deployment_id}" | "{id}" if segments[1] == "api-keys" => "key_999",
            "{deployment_id}" | "{id}" => run,
            "{name}" if segments[1] == "deployments" => "app@staging",
            "{fraise}" | "{fraise_name}" | "{name}" => "app",
            "{environment}" | "{environment_name}" => "staging",
            "{username}" => "ghost",
            "{version}" => "1.0.0",
            "{digest}" => "sha256:0000000000000000000000000000000000000000000000000000000000000000",
            "{type}" => "api",
            "{window_id}" => "frz_00001",
            "{agent_id}" => "agt_1",
            "{target_id}" => "agt_1",
            // Made in staging before the operations are tried.
            "{target_group_id}" => "tgg_1",
            s if s.starts_with('{') => panic!("no value for {s} in {path} (segment {i})"),
            s => s,
        };
        out.push(value);
    }
    out.join("/")
}

/// Makes the target group `web` in staging; its id.
async fn staging_group(s: &Server) -> String {
    let (status, g, _) = call(
        s,
        "POST",
        "/environments/staging/target-groups",
        Auth::Token(&s.token),
        Some(json!({"name": "web"})),
    )
    .await;
    assert_eq!(status, 201, "{g}");
    g["id"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn every_operation_refuses_who_may_not() {
    // Every permission, but only in development: the environment scope alone refuses.
    let (_ws, s) = started(
        "",
        "roles:\n  dev_everything: { permissions: [\"*\"], environments: [development] }\n",
    )
    .await;
    let run = s
        .deploy("app", "staging", json!({"version": "1.0.0"}))
        .await;
    assert_eq!(
        s.wait_run(&run, Duration::from_secs(60)).await["status"],
        "success"
    );
    add_user(&s, "nobody", &[]).await;
    add_user(&s, "devonly", &["dev_everything"]).await;
    // A target group in staging, for the routes that take one.
    let mut group_id = staging_group(&s).await;
    assert_eq!(group_id, "tgg_1");
    let (_, me, _) = call(&s, "GET", "/auth/me", Auth::Token(&s.token), None).await;
    let admin_id = me["user_id"].as_i64().unwrap();

    // Forged: right claims, another key. Expired: the server's own key, past its life.
    let elsewhere = tempfile::tempdir().unwrap();
    let forger =
        fraisier_server::auth::Keys::load_or_create(elsewhere.path(), TokenAlgorithm::HS256, 3600)
            .unwrap();
    let forged = forger
        .mint(
            admin_id,
            "admin",
            "default",
            &["admin".into()],
            vec!["*".into()],
        )
        .0;
    let stale =
        fraisier_server::auth::Keys::load(&s.data_dir, TokenAlgorithm::HS256, -7200).unwrap();
    let expired = stale
        .mint(
            admin_id,
            "admin",
            "default",
            &["admin".into()],
            vec!["*".into()],
        )
        .0;
    let revoked = login(&s, "admin", ADMIN_PASSWORD).await;
    let (status, _, _) = call(&s, "POST", "/auth/logout", Auth::Token(&revoked), None).await;
    assert_eq!(status, 204);

    let (status, doc, _) = call(&s, "GET", "/openapi.json", Auth::None, None).await;
    assert_eq!(status, 200);
    let mut checked = 0;
    let mut scoped = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let method = method.to_uppercase();
            let public = op["security"].as_array().is_some_and(|s| {
                s.iter()
                    .any(|r| r.as_object().is_some_and(|o| o.is_empty()))
            });
            let route = routes::ROUTES
                .iter()
                .find(|r| {
                    r.method == method
                        && routes::shape(r.path)
                            == routes::shape(path.strip_prefix("/api/v1").unwrap())
                })
                .unwrap_or_else(|| panic!("{method} {path} is not in the route table"));
            // Renewal takes a token the gate would refuse (expired for up to a day), so the
            // route is open and its handler checks the token.
            let renewal = path.ends_with("/auth/refresh");
            // A webhook carries the git host's signature instead of a credential.
            let open = matches!(route.need, Need::Public | Need::Signed);
            assert_eq!(
                public,
                open && !renewal,
                "{method} {path}: the document and the table disagree on whether it is public"
            );
            if public {
                continue;
            }
            let target = concrete(path, &run).replace("tgg_1", &group_id);
            let body = (method != "GET" && method != "DELETE").then(|| {
                if path.ends_with("/deployments") {
                    json!({"name": "app", "environment": "staging"})
                } else if path.ends_with("/deployments/github") {
                    json!({"fraise": "app", "environment": "staging"})
                } else if path.ends_with("/deployments/direct") {
                    json!({"fraise": "app", "environment": "staging", "version": "1.0.0"})
                } else if path.ends_with("/promote") {
                    json!({"to": "staging", "version": "1.0.0"})
                } else if path.ends_with("/target-groups") {
                    json!({"name": "edge"})
                } else if path.ends_with("/freeze-windows") {
                    json!({"start": "2030-01-01T00:00:00Z", "end": "2030-01-02T00:00:00Z"})
                } else if path.ends_with("/secrets/{name}") {
                    json!({"value": "s3cret-value"})
                } else if path.ends_with("/limits") {
                    json!({"max_instances": null})
                } else {
                    json!({})
                }
            });
            let what = format!("{method} {target}");
            for (label, auth) in [
                ("no credential", Auth::None),
                ("a forged token", Auth::Token(&forged)),
                (
                    "an expired token",
                    Auth::Token(if renewal { &forged } else { &expired }),
                ),
                ("a revoked token", Auth::Token(&revoked)),
                (
                    "a bogus API key",
                    Auth::Key("fsk_0000000000000000000000000000000000000000"),
                ),
            ] {
                let (status, v, _) = call(&s, &method, &target, auth, body.clone()).await;
                assert_eq!(status, 401, "{what} with {label}: {v}");
                assert_eq!(v["error"]["code"], "UNAUTHORIZED", "{what} with {label}");
            }
            // Fresh tokens for each operation: one of them is logout.
            let nobody = login(&s, "nobody", "nobody-password").await;
            let (status, v, _) =
                call(&s, &method, &target, Auth::Token(&nobody), body.clone()).await;
            match route.need {
                Need::Permission(p) => {
                    assert_eq!(status, 403, "{what} by a user without roles: {v}");
                    assert_eq!(v["error"]["code"], "PERMISSION_DENIED");
                    assert_eq!(v["error"]["details"]["permission"], p.as_str(), "{what}");
                }
                _ => assert_ne!(status, 401, "{what} by an authenticated user: {v}"),
            }
            // An operation that changes what runs in an environment is refused to a role
            // that may do it only elsewhere: no handler forgets the environment's scope.
            if let Need::Permission(p) = route.need {
                if p.is_restricted_by_environment() {
                    let devonly = login(&s, "devonly", "devonly-password").await;
                    let (status, v, _) =
                        call(&s, &method, &target, Auth::Token(&devonly), body.clone()).await;
                    assert_eq!(status, 403, "{what} out of the role's environments: {v}");
                    if path.ends_with("/secrets/{name}") {
                        // A workspace secret reaches every environment: refused, naming
                        // the first one where the role may not change secrets.
                        assert!(
                            v["error"]["details"]["environment"].is_string(),
                            "{what}: {v}"
                        );
                    } else {
                        assert_eq!(
                            v["error"]["details"]["environment"], "staging",
                            "{what}: {v}"
                        );
                    }
                    scoped += 1;
                }
            }
            // With the permission: never refused for want of it. An agent's route is
            // refused to every person, admin included.
            let admin = login(&s, "admin", ADMIN_PASSWORD).await;
            let (status, v, _) =
                call(&s, &method, &target, Auth::Token(&admin), body.clone()).await;
            if route.need == Need::Agent {
                assert_eq!(status, 403, "{what} by admin: {v}");
            } else {
                assert!(
                    ![401, 403, 500].contains(&status),
                    "{what} by admin answered {status}: {v}"
                );
            }
            if method == "DELETE" && target.starts_with("/target-groups/") {
                // The admin deleted it: another, for the operations still to come.
                group_id = staging_group(&s).await;
            }
            checked += 1;
        }
    }
    assert!(checked >= 35, "only {checked} operations were walked");
    assert!(
        scoped >= 9,
        "only {scoped} environment-scoped operations were walked"
    );
}

#[tokio::test]
async fn roles_decide_who_deploys_where() {
    let extra = "roles:\n  shipper: { permissions: [\"deployment:create\", \"deployment:read\"], environments: [production] }\n";
    let ws = Workspace::new();
    ws.release("1.0.0", &[]);
    ws.release("2.0.0", &[]);
    // A custom role, allowed in production.
    let yaml = access_yaml(&ws, "  rate_limits: off", "")
        .replace(
            "environments:\n  development",
            &format!("{extra}environments:\n  development"),
        )
        .replace(
            "  production: {}",
            "  production: { required_roles: [release_manager, shipper] }",
        );
    let s = Server::start(&ws, &yaml).await;
    let dev = add_user(&s, "dev", &["developer"]).await;
    let release = add_user(&s, "rel", &["release_manager"]).await;
    let ops = add_user(&s, "ops", &["devops_engineer"]).await;
    let shipper = add_user(&s, "ship", &["shipper"]).await;

    // A developer deploys to development only.
    let (status, v, _) = call(
        &s,
        "POST",
        "/deployments/app/production",
        Auth::Token(&dev),
        Some(json!({"version": "1.0.0"})),
    )
    .await;
    assert_eq!(status, 403, "{v}");
    assert_eq!(v["error"]["code"], "PERMISSION_DENIED");
    assert_eq!(v["error"]["details"]["permission"], "deployment:create");
    assert_eq!(v["error"]["details"]["environment"], "production");
    let (status, v, _) = call(
        &s,
        "POST",
        "/deployments",
        Auth::Token(&dev),
        Some(json!({"name": "app", "environment": "staging", "version": "1.0.0"})),
    )
    .await;
    assert_eq!(status, 403, "seed 001's deploy is judged the same: {v}");
    let (status, v, _) = call(
        &s,
        "POST",
        "/deployments/validate",
        Auth::Token(&dev),
        Some(json!({"name": "app", "environment": "production", "version": "1.0.0"})),
    )
    .await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["issues"][0]["field"], "environment", "{v}");
    let (status, v, _) = call(
        &s,
        "POST",
        "/deployments/app/development",
        Auth::Token(&dev),
        Some(json!({"version": "1.0.0"})),
    )
    .await;
    assert_eq!(status, 202, "{v}");
    let dev_run = v["id"].as_str().unwrap().to_string();
    assert_eq!(
        s.wait_run(&dev_run, Duration::from_secs(60)).await["triggered_by"],
        "dev"
    );
    // ...but may not roll back (no rollback:* in the seed's developer role) or cancel.
    let (status, v, _) = call(
        &s,
        "POST",
        "/deployments/app/development/rollback",
        Auth::Token(&dev),
        Some(json!({})),
    )
    .await;
    assert_eq!(
        (status, v["error"]["details"]["permission"].clone()),
        (403, json!("rollback:create"))
    );

    // DevOps: staging yes, production no (its role's environments).
    let (status, v, _) = call(
        &s,
        "POST",
        "/deployments/app/production",
        Auth::Token(&ops),
        Some(json!({"version": "1.0.0"})),
    )
    .await;
    assert_eq!(status, 403, "{v}");
    let (status, v, _) = call(
        &s,
        "POST",
        "/deployments/app/staging",
        Auth::Token(&ops),
        Some(json!({"version": "1.0.0"})),
    )
    .await;
    assert_eq!(status, 202, "{v}");
    s.wait_run(v["id"].as_str().unwrap(), Duration::from_secs(60))
        .await;

    // A custom role named in production's required_roles deploys there; release managers too.
    let (status, v, _) = call(
        &s,
        "POST",
        "/deployments/app/production",
        Auth::Token(&shipper),
        Some(json!({"version": "1.0.0"})),
    )
    .await;
    assert_eq!(status, 202, "{v}");
    s.wait_run(v["id"].as_str().unwrap(), Duration::from_secs(60))
        .await;
    let (status, v, _) = call(
        &s,
        "POST",
        "/deployments/app/production",
        Auth::Token(&release),
        Some(json!({"version": "2.0.0"})),
    )
    .await;
    assert_eq!(status, 202, "{v}");
    let prod_run = v["id"].as_str().unwrap().to_string();
    s.wait_run(&prod_run, Duration::from_secs(60)).await;
    let (status, v, _) = call(
        &s,
        "POST",
        "/deployments/app/production/rollback",
        Auth::Token(&release),
        Some(json!({})),
    )
    .await;
    assert_eq!(status, 202, "{v}");
    s.wait_run(v["id"].as_str().unwrap(), Duration::from_secs(60))
        .await;
    // Reads are open to every role that reads deployments.
    let (status, _, _) = call(
        &s,
        "GET",
        &format!("/deployments/{prod_run}"),
        Auth::Token(&dev),
        None,
    )
    .await;
    assert_eq!(status, 200);
    // The roles endpoint lists the seed's seven, admin and the custom one.
    let (_, roles, _) = call(&s, "GET", "/roles", Auth::Token(&dev), None).await;
    let names: Vec<&str> = roles["roles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    for r in [
        "admin",
        "deployment_admin",
        "release_manager",
        "devops_engineer",
        "developer",
        "sre_engineer",
        "cost_analyst",
        "viewer",
        "shipper",
    ] {
        assert!(names.contains(&r), "{r} missing from {names:?}");
    }
}

fn cli(s: &Server, token: &str, args: &[&str]) -> std::process::Output {
    Command::new(fraisier_bin())
        .args(["--server", &s.url])
        .args(args)
        .env("FRAISIER_TOKEN", token)
        .env("HOME", s.data_dir.parent().unwrap())
        .env_remove("FRAISIER_CONFIG")
        .output()
        .unwrap()
}

fn ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}: {}{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn users_keys_logout_and_key_rotation() {
    let (_ws, s) = started("", "").await;
    // Users through the CLI.
    let out = ok(&cli(
        &s,
        &s.token,
        &[
            "user",
            "add",
            "alice",
            "--role",
            "developer",
            "--password",
            "alice-password",
        ],
    ));
    assert!(out.contains("added alice"), "{out}");
    let out = ok(&cli(&s, &s.token, &["user", "list"]));
    assert!(out.contains("alice") && out.contains("developer"), "{out}");
    let alice = login(&s, "alice", "alice-password").await;

    // The token carries seed 002's claims, a jti and the key id.
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let parts: Vec<&str> = alice.split('.').collect();
    let header: Value = serde_json::from_slice(&b64.decode(parts[0]).unwrap()).unwrap();
    let claims: Value = serde_json::from_slice(&b64.decode(parts[1]).unwrap()).unwrap();
    assert_eq!(header["alg"], "HS256");
    let first_kid = header["kid"].as_str().unwrap().to_string();
    assert_eq!(claims["tenant_id"], "default");
    assert_eq!(claims["roles"], json!(["developer"]));
    assert!(claims["permissions"]
        .as_array()
        .unwrap()
        .contains(&json!("deployment:create")));
    for k in ["sub", "exp", "iat", "jti"] {
        assert!(!claims[k].is_null(), "{k} missing: {claims}");
    }

    ok(&cli(
        &s,
        &s.token,
        &["user", "set-roles", "alice", "viewer"],
    ));
    let (_, me, _) = call(&s, "GET", "/auth/me", Auth::Token(&alice), None).await;
    assert_eq!(
        me["roles"],
        json!(["viewer"]),
        "roles are read at each request: {me}"
    );
    ok(&cli(&s, &s.token, &["user", "disable", "alice"]));
    let (status, v, _) = call(&s, "GET", "/fraises", Auth::Token(&alice), None).await;
    assert_eq!(status, 401, "a disabled user's token stops at once: {v}");
    let (status, _, _) = call(
        &s,
        "POST",
        "/auth/token",
        Auth::None,
        Some(json!({"username": "alice", "password": "alice-password"})),
    )
    .await;
    assert_eq!(status, 401);
    ok(&cli(&s, &s.token, &["user", "enable", "alice"]));
    ok(&cli(
        &s,
        &s.token,
        &["user", "set-roles", "alice", "developer"],
    ));
    let (status, _, _) = call(&s, "GET", "/fraises", Auth::Token(&alice), None).await;
    assert_eq!(status, 200);

    // Precise refusals, and admins cannot lock themselves out.
    let (status, v) = s
        .post(
            "/users",
            json!({"username": "Bad Name", "password": "long enough"}),
        )
        .await;
    assert_eq!(
        (status, v["error"]["details"]["field"].clone()),
        (400, json!("username"))
    );
    let (status, v) = s
        .post("/users", json!({"username": "bob", "password": "short"}))
        .await;
    assert_eq!(
        (status, v["error"]["details"]["field"].clone()),
        (400, json!("password"))
    );
    let (status, v) = s
        .post(
            "/users",
            json!({"username": "bob", "password": "long enough", "roles": ["wizard"]}),
        )
        .await;
    assert_eq!(
        (status, v["error"]["details"]["field"].clone()),
        (422, json!("roles[0]"))
    );
    let (status, v) = s
        .post(
            "/users",
            json!({"username": "alice", "password": "long enough"}),
        )
        .await;
    assert_eq!(
        (status, v["error"]["code"].clone()),
        (409, json!("USER_EXISTS"))
    );
    let (status, v, _) = call(
        &s,
        "PUT",
        "/users/admin",
        Auth::Token(&s.token),
        Some(json!({"roles": ["viewer"]})),
    )
    .await;
    assert_eq!(
        (status, v["error"]["code"].clone()),
        (409, json!("LAST_ADMIN")),
        "{v}"
    );
    let (status, _, _) = call(&s, "GET", "/users/nobody-here", Auth::Token(&s.token), None).await;
    assert_eq!(status, 404);

    // Passwords: one's own with the current one.
    let (status, v, _) = call(
        &s,
        "POST",
        "/users/alice/password",
        Auth::Token(&alice),
        Some(json!({"password": "new-alice-pw"})),
    )
    .await;
    assert_eq!(
        (status, v["error"]["details"]["field"].clone()),
        (400, json!("current_password"))
    );
    let (status, _, _) = call(
        &s,
        "POST",
        "/users/alice/password",
        Auth::Token(&alice),
        Some(json!({"password": "new-alice-pw", "current_password": "alice-password"})),
    )
    .await;
    assert_eq!(status, 204);
    let (status, _, _) = call(
        &s,
        "POST",
        "/users/admin/password",
        Auth::Token(&alice),
        Some(json!({"password": "hijacked!!"})),
    )
    .await;
    assert_eq!(status, 403);
    let alice = login(&s, "alice", "new-alice-pw").await;

    // API keys: never more than their maker, shown once, stored hashed, revocable.
    let (status, v, _) = call(
        &s,
        "POST",
        "/api-keys",
        Auth::Token(&alice),
        Some(json!({"name": "ci", "roles": ["release_manager"]})),
    )
    .await;
    assert_eq!(status, 403, "{v}");
    let (status, created, headers) = call(
        &s,
        "POST",
        "/api-keys",
        Auth::Token(&alice),
        Some(json!({"name": "ci", "expires_at": "2099-01-01T00:00:00Z"})),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let key = created["key"].as_str().unwrap().to_string();
    let id = created["id"].as_str().unwrap().to_string();
    assert_eq!(
        headers["location"],
        format!("/api/v1/api-keys/{id}").as_str()
    );
    assert_eq!(created["roles"], json!(["developer"]));
    let (_, me, _) = call(&s, "GET", "/auth/me", Auth::Key(&key), None).await;
    assert_eq!(
        (me["username"].clone(), me["credential"].clone()),
        (json!("alice"), json!("api_key"))
    );
    let (status, _, _) = call(
        &s,
        "POST",
        "/deployments/app/production",
        Auth::Key(&key),
        Some(json!({})),
    )
    .await;
    assert_eq!(status, 403, "a key is scoped like its roles");
    let (_, list, _) = call(&s, "GET", "/api-keys", Auth::Token(&alice), None).await;
    let listed = &list["api_keys"][0];
    assert_eq!(listed["id"], id.as_str());
    assert!(key.starts_with(listed["prefix"].as_str().unwrap()));
    assert!(
        listed.get("key").is_none() && !list.to_string().contains(&key),
        "the key is never shown again"
    );
    // The use is recorded off the request's path: it shows shortly after.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let (_, list, _) = call(&s, "GET", "/api-keys", Auth::Token(&alice), None).await;
        if !list["api_keys"][0]["last_used_at"].is_null() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{list}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let db = std::fs::read(s.data_dir.join("fraisier.db")).unwrap();
    assert!(
        !db.windows(key.len()).any(|w| w == key.as_bytes()),
        "the key is not stored in clear"
    );
    let out = ok(&cli(&s, &s.token, &["api-key", "list"]));
    assert!(out.contains("ci") && out.contains("alice"), "{out}");
    let out = ok(&cli(&s, &alice, &["api-key", "revoke", &id]));
    assert!(out.contains("revoked"), "{out}");
    let (status, v, _) = call(&s, "GET", "/fraises", Auth::Key(&key), None).await;
    assert_eq!(status, 401, "{v}");

    // Logout revokes the token: no use, no renewal.
    let (status, _, _) = call(&s, "POST", "/auth/logout", Auth::Token(&alice), None).await;
    assert_eq!(status, 204);
    let (status, _, _) = call(&s, "GET", "/fraises", Auth::Token(&alice), None).await;
    assert_eq!(status, 401);
    let (status, _, _) = call(&s, "POST", "/auth/refresh", Auth::Token(&alice), None).await;
    assert_eq!(status, 401);

    // Rotation: old tokens keep working, new ones are signed with the new key.
    let before = login(&s, "admin", ADMIN_PASSWORD).await;
    let out = ok(&cli(&s, &s.token, &["auth:rotate-key"]));
    assert!(out.contains("signing with"), "{out}");
    let (status, _, _) = call(&s, "GET", "/fraises", Auth::Token(&before), None).await;
    assert_eq!(status, 200);
    let after = login(&s, "admin", ADMIN_PASSWORD).await;
    let header: Value =
        serde_json::from_slice(&b64.decode(after.split('.').next().unwrap()).unwrap()).unwrap();
    assert_ne!(header["kid"], first_kid.as_str());
    let (status, _, _) = call(&s, "GET", "/fraises", Auth::Token(&after), None).await;
    assert_eq!(status, 200);
    // `auth:token` on the server's host mints with the new key as well.
    let minted = cli_token(&s.config);
    let (status, _, _) = call(&s, "GET", "/fraises", Auth::Token(&minted), None).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn the_audit_trail_records_refusals_and_changes_and_detects_tampering() {
    let (_ws, s) = started("", "").await;
    let dev = add_user(&s, "dev", &["developer"]).await;
    let run = s
        .deploy("app", "staging", json!({"version": "1.0.0"}))
        .await;
    s.wait_run(&run, Duration::from_secs(60)).await;
    let (status, _, _) = call(
        &s,
        "POST",
        "/deployments/app/production",
        Auth::Token(&dev),
        Some(json!({})),
    )
    .await;
    assert_eq!(status, 403);
    let (status, _, _) = call(&s, "GET", "/fraises", Auth::None, None).await;
    assert_eq!(status, 401);
    let (status, _, _) = call(&s, "GET", "/audit", Auth::Token(&dev), None).await;
    assert_eq!(status, 403, "a developer does not read the audit trail");

    let (status, all) = s.get("/audit?limit=100").await;
    assert_eq!(status, 200, "{all}");
    let records = all["audit"].as_array().unwrap();
    let find = |action: &str, outcome: &str| {
        records
            .iter()
            .find(|r| r["action"] == action && r["outcome"] == outcome)
            .unwrap_or_else(|| panic!("no {action} {outcome} in {all:#}"))
    };
    let created = find("deployment.create", "success");
    assert_eq!(created["resource"], run.as_str());
    assert_eq!(created["service"], "app@staging");
    assert_eq!(created["user"], "admin");
    assert_eq!(created["source"], "127.0.0.1");
    assert!(created["request_id"].as_str().unwrap().starts_with("req_"));
    let denied = find("deployment.create", "denied");
    assert_eq!(
        (denied["user"].clone(), denied["status"].clone()),
        (json!("dev"), json!(403))
    );
    assert_eq!(denied["detail"], "PERMISSION_DENIED");
    let anonymous = find("fraise.list", "unauthenticated");
    assert_eq!(anonymous["actor_kind"], "anonymous");
    find("user.create", "success");
    find("auth.token", "success");
    // Reads that went through are not recorded.
    assert!(!records
        .iter()
        .any(|r| r["action"] == "fraise.list" && r["outcome"] == "success"));
    // Each record links to the one before it.
    for pair in records.windows(2) {
        assert_eq!(pair[0]["prev_hash"], pair[1]["hash"]);
    }

    let (_, only) = s
        .get("/audit?outcome=denied&user=dev&action=deployment.create")
        .await;
    assert_eq!(only["pagination"]["total"], 1, "{only}");
    assert_eq!(
        only["audit"][0]["path"],
        "/api/v1/deployments/app/production"
    );
    let (_, of_run) = s.get(&format!("/deployments/{run}/audit")).await;
    assert_eq!(
        of_run["audit"][0]["action"], "deployment.create",
        "{of_run}"
    );
    let (_, of_service) = s.get("/deployments/app@staging/audit").await;
    assert!(of_service["pagination"]["total"].as_u64().unwrap() >= 1);
    let (status, _) = s.get("/audit?outcome=maybe").await;
    assert_eq!(status, 400);
    let (status, _, _) = call(&s, "DELETE", "/audit", Auth::Token(&s.token), None).await;
    assert_eq!(status, 405, "no route deletes a record");

    // `fraisier audit verify` walks the chain in the store, and finds an edit made behind
    // the server's back.
    let verify = || {
        Command::new(fraisier_bin())
            .args(["audit", "verify", "--config"])
            .arg(&s.config)
            .output()
            .unwrap()
    };
    let out = ok(&verify());
    assert!(out.contains("intact"), "{out}");
    sqlx::any::install_default_drivers();
    use sqlx::Connection;
    let url = format!("sqlite://{}", s.data_dir.join("fraisier.db").display());
    let mut db = sqlx::AnyConnection::connect(&url).await.unwrap();
    let victim: i64 = sqlx::query_scalar("SELECT MIN(id) FROM audit_log WHERE outcome = 'denied'")
        .fetch_one(&mut db)
        .await
        .unwrap();
    sqlx::query("UPDATE audit_log SET actor = 'someone-else' WHERE id = $1")
        .bind(victim)
        .execute(&mut db)
        .await
        .unwrap();
    db.close().await.unwrap();
    let out = verify();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("aud_{victim:06}")), "{text}");
}

#[tokio::test]
async fn rate_limits_are_exact_under_concurrency() {
    let limits = "  rate_limits: { authenticated: 1000/h, read: 20/h, write: 5/h, login: 3/m }";
    let (_ws, s) = started(limits, "").await;
    let alice = add_user(&s, "alice", &["viewer"]).await;

    let calls = (0..50).map(|_| {
        let (http, url, alice) = (s.http.clone(), s.url.clone(), alice.clone());
        tokio::spawn(async move {
            let r = http
                .get(format!("{url}/fraises"))
                .bearer_auth(alice)
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let headers = r.headers().clone();
            let body: Value = r.json().await.unwrap_or_default();
            (status, headers, body)
        })
    });
    let mut answers = Vec::new();
    for c in calls {
        answers.push(c.await.unwrap());
    }
    let passed = answers.iter().filter(|a| a.0 == 200).count();
    let limited: Vec<_> = answers.iter().filter(|a| a.0 == 429).collect();
    assert_eq!(
        (passed, limited.len()),
        (20, 30),
        "exactly the limit passes"
    );
    let (_, headers, _) = answers.iter().find(|a| a.0 == 200).unwrap();
    assert_eq!(headers["x-ratelimit-limit"], "20");
    assert!(
        headers.contains_key("x-ratelimit-remaining") && headers.contains_key("x-ratelimit-reset")
    );
    let (_, headers, body) = limited[0];
    let retry: i64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=3600).contains(&retry), "{retry}");
    assert_eq!(headers["x-ratelimit-remaining"], "0");
    assert_eq!(body["error"]["code"], "RATE_LIMIT_EXCEEDED");
    assert_eq!(body["error"]["retry_after"], retry);

    // Another identity has its own budget; writes have theirs.
    let (status, _, headers) = call(&s, "GET", "/fraises", Auth::Token(&s.token), None).await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-ratelimit-remaining"], "19");

    // Sign-ins: three failures for a name, then even the right password waits.
    for _ in 0..3 {
        let (status, _, _) = call(
            &s,
            "POST",
            "/auth/token",
            Auth::None,
            Some(json!({"username": "alice", "password": "wrong-password"})),
        )
        .await;
        assert_eq!(status, 401);
    }
    let (status, v, headers) = call(
        &s,
        "POST",
        "/auth/token",
        Auth::None,
        Some(json!({"username": "alice", "password": "alice-password"})),
    )
    .await;
    assert_eq!(status, 429, "{v}");
    assert!(headers.contains_key("retry-after"));
    // Successful sign-ins do not count.
    for _ in 0..4 {
        login(&s, "admin", ADMIN_PASSWORD).await;
    }

    let (_, audit) = s.get("/audit?outcome=rate_limited&limit=100").await;
    assert!(
        audit["pagination"]["total"].as_u64().unwrap() >= 31,
        "{audit}"
    );
}

/// Approvals (seed 003 `approvalRequired`): a run in a guarded environment waits `pending`
/// until someone else with a role allowed there approves; a no cancels it; so does the window
/// closing; a restart of the server loses nothing.
#[tokio::test]
async fn approvals_hold_runs_until_someone_else_says_yes() {
    let ws = Workspace::new();
    ws.release("1.0.0", &[]);
    ws.release("2.0.0", &[]);
    let yaml = access_yaml(&ws, "  rate_limits: off", "")
        .replace(
            "  production: {}",
            "  production: { required_approvals: 1 }",
        )
        .replace(
            "  staging: {}",
            "  staging: { required_approvals: 1, approval_timeout: 2s }",
        );
    let mut s = Server::start(&ws, &yaml).await;
    let rel = add_user(&s, "rel", &["release_manager"]).await;
    let rel2 = add_user(&s, "rel2", &["release_manager"]).await;
    let dev = add_user(&s, "dev", &["developer"]).await;

    let (status, created, _) = call(
        &s,
        "POST",
        "/deployments/app/production",
        Auth::Token(&rel),
        Some(json!({"version": "1.0.0", "wait": true})),
    )
    .await;
    assert_eq!(
        status, 202,
        "a run waiting for approval answers at once: {created}"
    );
    let id = created["id"].as_str().unwrap().to_string();
    assert_eq!(created["approval"]["required"], 1);
    assert_eq!(created["approval"]["status"], "pending");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, run) = s.get(&format!("/deployments/{id}")).await;
    assert_eq!(run["status"], "pending", "{run:#}");
    assert_eq!(run["approval"]["received"], 0);
    assert!(
        run["steps"].as_array().unwrap().is_empty(),
        "nothing ran: {run:#}"
    );
    // The one slot is taken while it waits.
    let (status, _, _) = call(
        &s,
        "POST",
        "/deployments/app/production",
        Auth::Token(&rel2),
        Some(json!({"version": "2.0.0"})),
    )
    .await;
    assert_eq!(status, 409);

    // Who may not approve: the one who asked, a role not allowed in production.
    let (status, v, _) = call(
        &s,
        "POST",
        &format!("/deployments/{id}/approve"),
        Auth::Token(&rel),
        Some(json!({})),
    )
    .await;
    assert_eq!(status, 403, "{v}");
    assert!(v["error"]["details"]["reason"]
        .as_str()
        .unwrap()
        .contains("separation of duties"));
    let (status, v, _) = call(
        &s,
        "POST",
        &format!("/deployments/{id}/approve"),
        Auth::Token(&dev),
        Some(json!({})),
    )
    .await;
    assert_eq!(status, 403, "{v}");
    assert_eq!(v["error"]["details"]["permission"], "deployment:approve");
    let (_, mine, _) = call(&s, "GET", "/my/pending-approvals", Auth::Token(&rel), None).await;
    assert_eq!(mine["total"], 0, "not one's own: {mine}");
    let (_, mine, _) = call(&s, "GET", "/my/pending-approvals", Auth::Token(&rel2), None).await;
    assert_eq!(mine["approvals"][0]["deployment_id"], id.as_str(), "{mine}");
    assert_eq!(mine["approvals"][0]["requested_by"], "rel");

    // The server goes down while the run waits; the wait is durable.
    s.kill9();
    s.restart().await;
    let out = ok(&cli(
        &s,
        &rel2,
        &["approve", &id, "--comment", "looks good"],
    ));
    assert!(out.contains("approved"), "{out}");
    let run = s.wait_run(&id, Duration::from_secs(60)).await;
    assert_eq!(run["status"], "success", "{run:#}");
    assert_eq!(run["approval"]["status"], "granted");
    assert_eq!(run["approval"]["approvers"][0]["user"], "rel2");
    assert_eq!(run["approval"]["approvers"][0]["comment"], "looks good");
    let (_, events) = s.get(&format!("/deployments/{id}/events")).await;
    let kinds: Vec<&str> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_type"].as_str().unwrap())
        .collect();
    let requested = kinds
        .iter()
        .position(|k| *k == "approval.requested")
        .unwrap();
    let granted = kinds.iter().position(|k| *k == "approval.granted").unwrap();
    let started = kinds
        .iter()
        .position(|k| *k == "deployment.started")
        .unwrap();
    assert!(requested < granted && granted < started, "{kinds:?}");
    let (status, v, _) = call(
        &s,
        "POST",
        &format!("/deployments/{id}/approve"),
        Auth::Token(&s.token),
        Some(json!({})),
    )
    .await;
    assert_eq!(
        (status, v["error"]["code"].clone()),
        (409, json!("APPROVAL_NOT_PENDING"))
    );

    // A no ends it cancelled, nothing changed.
    let (_, second, _) = call(
        &s,
        "POST",
        "/deployments/app/production",
        Auth::Token(&rel),
        Some(json!({"version": "2.0.0"})),
    )
    .await;
    let second = second["id"].as_str().unwrap().to_string();
    let (status, v, _) = call(
        &s,
        "POST",
        &format!("/deployments/{second}/reject"),
        Auth::Token(&rel2),
        Some(json!({"comment": "not on a Friday"})),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let run = s.wait_run(&second, Duration::from_secs(10)).await;
    assert_eq!(run["status"], "cancelled");
    assert_eq!(run["error"]["code"], "APPROVAL_REJECTED");
    assert_eq!(run["approval"]["rejected_by"], "rel2");
    assert_eq!(run["approval"]["comment"], "not on a Friday");
    let (_, events) = s.get(&format!("/deployments/{second}/events")).await;
    assert!(events["events"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["event_type"] == "approval.rejected"));
    let (_, f) = s.get("/fraises/app").await;
    assert_eq!(f["environments"]["production"]["current_version"], "1.0.0");

    // The window closes: the run expires, cancelled.
    let expiring = s
        .deploy("app", "staging", json!({"version": "1.0.0"}))
        .await;
    let run = s.wait_run(&expiring, Duration::from_secs(15)).await;
    assert_eq!(run["status"], "cancelled", "{run:#}");
    assert_eq!(run["error"]["code"], "APPROVAL_EXPIRED");
    assert_eq!(run["approval"]["status"], "expired");
    let (_, events) = s.get(&format!("/deployments/{expiring}/events")).await;
    assert!(events["events"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["event_type"] == "approval.expired"));

    // A waiting run can be cancelled.
    let (_, third, _) = call(
        &s,
        "POST",
        "/deployments/app/production",
        Auth::Token(&rel),
        Some(json!({"version": "2.0.0"})),
    )
    .await;
    let third = third["id"].as_str().unwrap().to_string();
    let (status, v, _) = call(
        &s,
        "DELETE",
        &format!("/deployments/{third}"),
        Auth::Token(&rel),
        None,
    )
    .await;
    assert_eq!(status, 202, "{v}");
    assert_eq!(v["status"], "cancelled", "{v}");
    let (status, _, _) = call(
        &s,
        "POST",
        &format!("/deployments/{third}/approve"),
        Auth::Token(&rel2),
        Some(json!({})),
    )
    .await;
    assert_eq!(status, 409);
}

/// Workspaces (seed 003; tenants in seed 002): each sees its own fraises, runs, audit and
/// metrics; another's answer 404; two workspaces' fraises of one name run side by side on the
/// one agent.
#[tokio::test]
async fn workspaces_keep_to_themselves() {
    let ws = Workspace::new();
    ws.release("1.0.0", &[]);
    ws.release("2.0.0", &[]);
    let (p_default, p_team) = (free_port(), free_port());
    // Both workspaces have a fraise called app, each on its own port.
    let fraise = |project: &str, env: &str, port: u16| {
        format!(
            r#"      app:
        project: {project}
        command: "exec {demo}"
        artifact_path: "{releases}/{{version}}"
        health_check: {{ type: http, path: /health, interval: 100ms, timeout: 1s }}
        drain_timeout: 1s
        stop_grace: 1s
        environments:
          {env}: {{ port: {port} }}
"#,
            demo = demo_bin().display(),
            releases = ws.path().join("releases").display(),
        )
    };
    let yaml = format!(
        r#"
server:
  listen: "127.0.0.1:0"
  data_dir: "{data}"
  rate_limits: off
workspaces:
  default:
    environments:
      staging: {{}}
      production: {{}}
    fraises:
{default_app}  team-a:
    display_name: Team A
    environments:
      staging: {{}}
    fraises:
{team_app}"#,
        data = ws.data_dir().display(),
        default_app = fraise("payments", "staging", p_default),
        team_app = fraise("checkout", "staging", p_team),
    );
    let s = Server::start(&ws, &yaml).await;

    // A user of team-a, made by the server's admin, signs in to team-a.
    let (status, v) = s
        .post(
            "/users",
            json!({"username": "alice", "password": "alice-password", "roles": ["deployment_admin"], "workspace": "team-a"}),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["workspace"], "team-a");
    let (status, v) = s
        .post(
            "/users",
            json!({"username": "bob", "password": "bob-password", "workspace": "nowhere"}),
        )
        .await;
    assert_eq!(
        (status, v["error"]["code"].clone()),
        (404, json!("WORKSPACE_NOT_FOUND"))
    );
    let (status, t, _) = call(
        &s,
        "POST",
        "/auth/token",
        Auth::None,
        Some(json!({"username": "alice", "password": "alice-password"})),
    )
    .await;
    assert_eq!(status, 200, "{t}");
    assert_eq!(t["workspace"], "team-a", "alice's only workspace");
    let alice = t["access_token"].as_str().unwrap().to_string();

    // Each deploys its own app; both run on the one agent, each behind its own router.
    let (status, mine, _) = call(
        &s,
        "POST",
        "/deployments/app/staging",
        Auth::Token(&alice),
        Some(json!({"version": "2.0.0"})),
    )
    .await;
    assert_eq!(status, 202, "{mine}");
    let mine = mine["id"].as_str().unwrap().to_string();
    let theirs = s
        .deploy("app", "staging", json!({"version": "1.0.0"}))
        .await;
    assert_eq!(
        s.wait_run(&theirs, Duration::from_secs(60)).await["status"],
        "success"
    );
    let run = loop {
        let (_, r, _) = call(
            &s,
            "GET",
            &format!("/deployments/{mine}"),
            Auth::Token(&alice),
            None,
        )
        .await;
        if matches!(
            r["status"].as_str(),
            Some("success" | "failed" | "cancelled")
        ) {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(run["status"], "success", "{run:#}");
    assert_eq!(router_version(p_team).await.as_deref(), Some("2.0.0"));
    assert_eq!(router_version(p_default).await.as_deref(), Some("1.0.0"));

    // Another workspace's objects answer 404, exactly as if they did not exist.
    let (status, v) = s.get(&format!("/deployments/{mine}")).await;
    assert_eq!(
        (status, v["error"]["code"].clone()),
        (404, json!("DEPLOYMENT_NOT_FOUND"))
    );
    let (status, _, _) = call(
        &s,
        "GET",
        &format!("/deployments/{theirs}"),
        Auth::Token(&alice),
        None,
    )
    .await;
    assert_eq!(status, 404);
    let (status, _, _) = call(
        &s,
        "GET",
        "/environments/production",
        Auth::Token(&alice),
        None,
    )
    .await;
    assert_eq!(status, 404, "production is default's");
    let (_, list, _) = call(&s, "GET", "/deployments", Auth::Token(&alice), None).await;
    assert_eq!(list["pagination"]["total"], 1, "{list}");
    let (_, fraises, _) = call(&s, "GET", "/fraises/app", Auth::Token(&alice), None).await;
    assert_eq!(
        fraises["environments"]["staging"]["current_version"],
        "2.0.0"
    );
    assert_eq!(fraises["project"], "checkout");
    let (_, audit, _) = call(&s, "GET", "/audit", Auth::Token(&alice), None).await;
    assert!(
        audit["audit"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["workspace"] == "team-a"),
        "{audit}"
    );
    let (_, metrics, _) = call(&s, "GET", "/metrics", Auth::Token(&alice), None).await;
    let text = metrics.as_str().unwrap();
    assert!(
        text.contains("fraisier_deployments_total{status=\"success\"} 1"),
        "{text}"
    );
    assert!(!text.contains("environment=\"production\""), "{text}");

    // Workspaces: the server's admin sees and makes them; a workspace's admin sees its own.
    let (_, all) = s.get("/workspaces").await;
    let names: Vec<&str> = all["workspaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["default", "team-a"]);
    let (_, own, _) = call(&s, "GET", "/workspaces", Auth::Token(&alice), None).await;
    assert_eq!(own["workspaces"].as_array().unwrap().len(), 1);
    assert_eq!(own["workspaces"][0]["fraises"], json!(["app"]));
    let (status, _, _) = call(&s, "GET", "/workspaces/default", Auth::Token(&alice), None).await;
    assert_eq!(status, 404);
    let (status, _, _) = call(
        &s,
        "POST",
        "/workspaces",
        Auth::Token(&alice),
        Some(json!({"name": "mine"})),
    )
    .await;
    assert_eq!(
        status, 403,
        "deployment_admin administers deployments, not workspaces"
    );
    let (status, v) = s
        .post(
            "/workspaces",
            json!({"name": "team-b", "display_name": "Team B"}),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    let (status, v, _) = call(
        &s,
        "DELETE",
        "/workspaces/team-a",
        Auth::Token(&s.token),
        None,
    )
    .await;
    assert_eq!(
        (status, v["error"]["code"].clone()),
        (409, json!("WORKSPACE_DECLARED"))
    );
    let (status, _, _) = call(
        &s,
        "DELETE",
        "/workspaces/team-b",
        Auth::Token(&s.token),
        None,
    )
    .await;
    assert_eq!(status, 204);

    // Projects: the fraises' labels, filters on lists, and ones made here.
    let (_, projects) = s.get("/projects").await;
    assert_eq!(projects["projects"][0]["name"], "payments");
    assert_eq!(projects["projects"][0]["fraises"], json!(["app"]));
    let (_, filtered) = s.get("/deployments?project=payments").await;
    assert_eq!(filtered["pagination"]["total"], 1);
    let (status, _) = s.post("/projects", json!({"name": "search"})).await;
    assert_eq!(status, 201);
    let (_, none) = s.get("/deployments?project=search").await;
    assert_eq!(none["pagination"]["total"], 0);
    let (_, none) = s.get("/fraises?project=search").await;
    assert_eq!(none["pagination"]["total"], 0);
    let (status, _) = s.get("/deployments?project=nope").await;
    assert_eq!(status, 404);
    let (status, v) = s.delete("/projects/payments").await;
    assert_eq!(
        (status, v["error"]["code"].clone()),
        (409, json!("PROJECT_IN_USE"))
    );
    let (status, _) = s.delete("/projects/search").await;
    assert_eq!(status, 204);
    // The same through the CLI.
    let out = ok(&cli(&s, &s.token, &["workspace", "list"]));
    assert!(
        out.contains("team-a") && out.contains("fraisier.yaml"),
        "{out}"
    );
    ok(&cli(
        &s,
        &s.token,
        &["project", "create", "docs", "--display-name", "Docs"],
    ));
    let out = ok(&cli(&s, &s.token, &["project", "list"]));
    assert!(out.contains("docs") && out.contains("payments"), "{out}");
    ok(&cli(&s, &s.token, &["project", "delete", "docs"]));
}
