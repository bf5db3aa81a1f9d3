//! The server on PostgreSQL: the same deploy flow as on SQLite, against a fresh database of
//! the server named by FRAISIER_TEST_DATABASE_URL (skipped, and said so, when it is unset).

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use sqlx::Connection;

#[tokio::test]
async fn serve_deploys_with_a_postgres_store() {
    let Ok(admin_url) = std::env::var("FRAISIER_TEST_DATABASE_URL") else {
        eprintln!("skipped: FRAISIER_TEST_DATABASE_URL is not set");
        return;
    };
    sqlx::any::install_default_drivers();
    let name = format!("fraisier_it_{}_{}", std::process::id(), free_port());
    let mut admin = sqlx::AnyConnection::connect(&admin_url)
        .await
        .expect("connect to FRAISIER_TEST_DATABASE_URL");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .unwrap();
    let url = match admin_url.rsplit_once('/') {
        Some((base, _)) => format!("{base}/{name}"),
        None => panic!("FRAISIER_TEST_DATABASE_URL has no database part"),
    };

    let ws = Workspace::new();
    ws.release("1.0.0", &[]);
    ws.release("2.0.0", &[]);
    let port = free_port();
    let yaml = config_yaml(&ws, port, 2, "rolling", "").replace(
        "server:\n",
        &format!("server:\n  database_url: \"{url}\"\n"),
    );
    {
        let s = Server::start(&ws, &yaml).await;
        let (_, health) = s.get("/health").await;
        assert_eq!(
            health["components"]["database"]["backend"], "postgres",
            "{health}"
        );
        for v in ["1.0.0", "2.0.0"] {
            let id = s.deploy("app", "production", json!({"version": v})).await;
            assert_eq!(
                s.wait_run(&id, Duration::from_secs(60)).await["status"],
                "success"
            );
        }
        assert_eq!(router_version(port).await.as_deref(), Some("2.0.0"));
        let (_, list) = s.get("/deployments?sort=-created_at&limit=1").await;
        assert_eq!(list["pagination"]["total"], 2);
        assert_eq!(list["deployments"][0]["version"], "2.0.0");
        assert_eq!(list["deployments"][0]["rollback_available"], true);
    }
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&mut admin)
        .await
        .unwrap();
}
