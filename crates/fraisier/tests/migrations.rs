//! Migrations with exact rollback against real databases — a SQLite file and a PostgreSQL
//! database — driven by a small migration tool of the test's own: a deploy applies what its
//! release adds before traffic moves; a failed health check, a failed migration or an asked
//! rollback brings the schema back to exactly what it was; a failed `down` says where the
//! database was left.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// migrations/NNN.up.sql and NNN.down.sql applied in order, one transaction each; the count
/// in schema_migrations. DB_KIND=sqlite (DB_PATH) or pg (DB_URL).
const TOOL: &str = r#"#!/bin/sh
set -e
q() {
  if [ "$DB_KIND" = pg ]; then psql -qAtX -v ON_ERROR_STOP=1 "$DB_URL" -c "$1"
  else sqlite3 -bail "$DB_PATH" "$1"; fi
}
q "CREATE TABLE IF NOT EXISTS schema_migrations (n INTEGER PRIMARY KEY)" >/dev/null
current() { q "SELECT COALESCE(MAX(n), 0) FROM schema_migrations"; }
case "$1" in
  status) current ;;
  up)
    for f in $(ls migrations/*.up.sql | sort); do
      n=$(basename "$f" .up.sql | sed 's/^0*//')
      if [ "$n" -gt "$(current)" ]; then
        q "BEGIN; $(cat "$f"); INSERT INTO schema_migrations VALUES ($n); COMMIT;" >/dev/null
        echo "applied $n"
      fi
    done ;;
  down)
    i=0
    while [ "$i" -lt "$FRAISIER_MIGRATION_STEPS" ]; do
      n=$(current)
      q "BEGIN; $(cat "migrations/$(printf %03d "$n").down.sql"); DELETE FROM schema_migrations WHERE n = $n; COMMIT;" >/dev/null
      echo "reverted $n"
      i=$((i+1))
    done ;;
esac
"#;

const M1: (&str, &str) = (
    "CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)",
    "DROP TABLE users",
);
const M2: (&str, &str) = (
    "ALTER TABLE users ADD COLUMN email TEXT",
    "ALTER TABLE users DROP COLUMN email",
);
const M3: (&str, &str) = (
    "CREATE TABLE orders (id INTEGER PRIMARY KEY, total INTEGER)",
    "DROP TABLE orders",
);

/// A release of the demo with these migrations (and lines for its demo.env).
fn release(ws: &Workspace, version: &str, demo: &[&str], migrations: &[(&str, &str)]) {
    ws.release(version, demo);
    let dir = ws.path().join("releases").join(version);
    std::fs::write(dir.join("migrate.sh"), TOOL).unwrap();
    std::fs::create_dir_all(dir.join("migrations")).unwrap();
    for (i, (up, down)) in migrations.iter().enumerate() {
        std::fs::write(dir.join(format!("migrations/{:03}.up.sql", i + 1)), up).unwrap();
        std::fs::write(dir.join(format!("migrations/{:03}.down.sql", i + 1)), down).unwrap();
    }
}

fn yaml(ws: &Workspace, port: u16, db_env: &str) -> String {
    // Unhealthy releases are told within seconds.
    config_yaml(ws, port, 2, "rolling, strategy_config: { health_check_timeout: 4s }", "")
        .replace(
        "    drain_timeout: 5s\n",
        &format!(
            "    drain_timeout: 5s\n    env: {{ {db_env} }}\n    migrations: {{ up: \"sh migrate.sh up\", down: \"sh migrate.sh down\", status: \"sh migrate.sh status\", timeout: 30s }}\n"
        ),
    )
}

async fn deploy(s: &Server, body: Value) -> Value {
    let id = s.deploy("app", "production", body).await;
    s.wait_run(&id, Duration::from_secs(90)).await
}

async fn events(s: &Server, run: &Value) -> Vec<Value> {
    let (_, v) = s
        .get(&format!(
            "/deployments/{}/events",
            run["id"].as_str().unwrap()
        ))
        .await;
    v["events"].as_array().unwrap().clone()
}

fn event<'a>(events: &'a [Value], kind: &str) -> Option<&'a Value> {
    events.iter().find(|e| e["event_type"] == kind)
}

/// The whole scenario against one database; `schema` reads its tables and columns.
async fn scenario(ws: &Workspace, db_env: &str, schema: &dyn Fn() -> String) {
    release(ws, "1.0.0", &[], &[M1]);
    release(ws, "2.0.0", &["DEMO_HEALTHY=false"], &[M1, M2, M3]);
    release(ws, "2.1.0", &[], &[M1, M2, M3]);
    release(
        ws,
        "2.2.0",
        &[],
        &[M1, M2, ("CREATE TABLE broken (", "SELECT 1")],
    );
    release(
        ws,
        "2.3.0",
        &["DEMO_HEALTHY=false"],
        &[M1, M2, (M3.0, "DROP TABLE no_such_table")],
    );
    let port = free_port();
    let s = Server::start(ws, &yaml(ws, port, db_env)).await;

    let run = deploy(&s, json!({"version": "1.0.0"})).await;
    assert_eq!(run["status"], "success", "{run:#}");
    let applied = events(&s, &run).await;
    assert_eq!(
        event(&applied, "migration.applied").unwrap()["data"]["steps"],
        1
    );
    let v1 = schema();
    assert!(v1.contains("users.name") && !v1.contains("email"), "{v1}");

    // Unhealthy after its migrations: code and schema both come back.
    let run = deploy(&s, json!({"version": "2.0.0"})).await;
    assert_eq!(run["status"], "failed", "{run:#}");
    assert_eq!(run["error"]["code"], "HEALTH_CHECK_FAILED", "{run:#}");
    let evs = events(&s, &run).await;
    assert_eq!(
        event(&evs, "migration.applied").unwrap()["data"]["steps"],
        2
    );
    assert_eq!(
        event(&evs, "migration.reverted").unwrap()["data"]["steps"],
        2
    );
    assert_eq!(schema(), v1);
    assert_eq!(router_version(port).await.as_deref(), Some("1.0.0"));

    // A migration that fails halfway: what it did apply is undone.
    let run = deploy(&s, json!({"version": "2.2.0"})).await;
    assert_eq!(run["status"], "failed", "{run:#}");
    assert_eq!(run["error"]["code"], "MIGRATION_FAILED", "{run:#}");
    assert_eq!(
        event(&events(&s, &run).await, "migration.reverted").unwrap()["data"]["steps"],
        1
    );
    assert_eq!(schema(), v1);
    assert_eq!(router_version(port).await.as_deref(), Some("1.0.0"));

    // A good release, then a rollback asked for: down exactly what it applied.
    let run = deploy(&s, json!({"version": "2.1.0"})).await;
    assert_eq!(run["status"], "success", "{run:#}");
    let v2 = schema();
    assert!(
        v2.contains("orders.total") && v2.contains("users.email"),
        "{v2}"
    );
    // Undoing 2.1.0's migrations leads back to 1.0.0 only, not to another version.
    let (status, v) = s
        .post(
            "/deployments/app/production/rollback",
            json!({"to_version": "2.0.0"}),
        )
        .await;
    assert_eq!(
        (status, v["error"]["details"]["field"].as_str()),
        (400, Some("to_version")),
        "{v}"
    );
    let (status, v) = s
        .post(
            "/deployments/app/production/rollback",
            json!({"to_version": "1.0.0"}),
        )
        .await;
    assert_eq!(status, 202, "{v}");
    let run = s
        .wait_run(v["id"].as_str().unwrap(), Duration::from_secs(90))
        .await;
    assert_eq!(run["status"], "success", "{run:#}");
    assert!(run["steps"]
        .as_array()
        .unwrap()
        .iter()
        .any(|st| st["name"] == "migrations down" && st["status"] == "completed"));
    assert_eq!(schema(), v1);
    assert_eq!(router_version(port).await.as_deref(), Some("1.0.0"));

    // migrate: false leaves the database alone.
    let run = deploy(&s, json!({"version": "2.1.0", "migrate": false})).await;
    assert_eq!(run["status"], "success", "{run:#}");
    assert_eq!(schema(), v1);

    // A down that fails: the run says so, and where the database was left.
    let run = deploy(&s, json!({"version": "2.3.0"})).await;
    assert_eq!(run["status"], "failed", "{run:#}");
    assert_eq!(run["error"]["code"], "ROLLBACK_FAILED", "{run:#}");
    let evs = events(&s, &run).await;
    let stuck = event(&evs, "migration.down_failed").unwrap_or_else(|| panic!("{evs:#?}"));
    assert_eq!(stuck["data"]["now"], 3, "{stuck}");
    assert_eq!(stuck["data"]["before"], 1, "{stuck}");
    assert!(
        run["error"]["message"]
            .as_str()
            .unwrap()
            .contains("the database has 3 migrations applied"),
        "{run:#}"
    );
}

fn sqlite_schema(db: &Path) -> String {
    let out = Command::new("sqlite3")
        .arg(db)
        .arg(
            "SELECT m.name || '.' || p.name FROM sqlite_master m JOIN pragma_table_info(m.name) p \
              WHERE m.type = 'table' AND m.name != 'schema_migrations' ORDER BY 1",
        )
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn sqlite_schema_comes_back_exactly() {
    let ws = Workspace::new();
    let db = ws.path().join("app.db");
    let env = format!("DB_KIND: sqlite, DB_PATH: \"{}\"", db.display());
    scenario(&ws, &env, &|| sqlite_schema(&db)).await;
}

#[tokio::test]
async fn postgres_schema_comes_back_exactly() {
    let Ok(admin_url) = std::env::var("FRAISIER_TEST_DATABASE_URL") else {
        eprintln!("skipped: FRAISIER_TEST_DATABASE_URL is not set");
        return;
    };
    let name = format!("fraisier_mig_{}_{}", std::process::id(), free_port());
    let psql = |url: &str, sql: &str| {
        let out = Command::new("psql")
            .args(["-qAtX", "-v", "ON_ERROR_STOP=1", url, "-c", sql])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    psql(&admin_url, &format!("CREATE DATABASE {name}"));
    let url = match admin_url.rsplit_once('/') {
        Some((base, _)) => format!("{base}/{name}"),
        None => panic!("FRAISIER_TEST_DATABASE_URL has no database part"),
    };
    let ws = Workspace::new();
    let env = format!("DB_KIND: pg, DB_URL: \"{url}\"");
    let schema = || {
        psql(
            &url,
            "SELECT table_name || '.' || column_name FROM information_schema.columns \
             WHERE table_schema = 'public' AND table_name <> 'schema_migrations' ORDER BY 1",
        )
    };
    scenario(&ws, &env, &schema).await;
    psql(&admin_url, &format!("DROP DATABASE {name} WITH (FORCE)"));
}
