//! The engine's decisions against a fake provider: approvals (waiting, separation of duties,
//! expiry), configuration changes (released by a `config` run, put back when it fails) and
//! migrations (undone exactly, before the previous version takes traffic back).
//! The provider converges at once, except that an instance whose release says
//! `FAKE_HEALTHY=false` never turns healthy.
//!
//! The clock is the real one, with short durations: the engine reads wall time for approval
//! windows and the store's pool times its waits with tokio's clock, so a paused clock would
//! either never expire a window or time the pool out.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use fraisier_engine::{
    DeployRequest, Engine, EngineError, EngineSettings, Provider, ProviderError, VariableChange,
    VariableKind,
};
use fraisier_model::approval::Decision;
use fraisier_model::config::Config;
use fraisier_model::run::{RunKind, RunStatus};
use fraisier_model::secret::{slot, SecretKeys};
use fraisier_model::service::{
    DesiredService, ExecRequest, ExecResult, InstalledRelease, InstanceState, ObservedInstance,
    ObservedService,
};
use fraisier_store::{Run, Store, DEFAULT_TENANT};

#[derive(Default)]
struct FakeProvider {
    services: Mutex<BTreeMap<(String, String), ObservedService>>,
    /// Every desired state applied, in order.
    applied: Mutex<Vec<DesiredService>>,
    /// Versions whose instances never turn healthy.
    unhealthy: Mutex<Vec<String>>,
    /// A database's applied migrations, as the commands `status`, `up` and `down` see it:
    /// release 1.0.0 has 1 migration, 2.0.0 has 3.
    schema: Mutex<u64>,
    /// Commands run (`up 2.0.0`) and desired states applied (`apply 1.0.0,2.0.0`: the
    /// versions taking traffic), in order.
    log: Mutex<Vec<String>>,
}

#[async_trait]
impl Provider for FakeProvider {
    async fn apply(&self, d: &DesiredService) -> Result<ObservedService, ProviderError> {
        self.applied.lock().unwrap().push(d.clone());
        let serving: Vec<&str> = d
            .instances
            .iter()
            .filter(|i| i.weight > 0)
            .map(|i| i.version.as_str())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        self.log
            .lock()
            .unwrap()
            .push(format!("apply {}", serving.join(",")));
        let unhealthy = self.unhealthy.lock().unwrap().clone();
        let instances = d
            .instances
            .iter()
            .map(|i| {
                let healthy = d.releases[&i.version]
                    .env
                    .get("FAKE_HEALTHY")
                    .is_none_or(|v| v != "false")
                    && !unhealthy.contains(&i.version);
                ObservedInstance {
                    id: i.id.clone(),
                    version: i.version.clone(),
                    pid: Some(1),
                    port: Some(1),
                    state: if healthy {
                        InstanceState::Healthy
                    } else {
                        InstanceState::Starting
                    },
                    weight: i.weight,
                    restarts: 0,
                    started_at: Some(Utc::now()),
                    last_check_at: None,
                    checks_passed: 1,
                    checks_total: 1,
                    last_error: None,
                    in_flight: 0,
                }
            })
            .collect();
        let o = ObservedService {
            fraise: d.fraise.clone(),
            environment: d.environment.clone(),
            generation: d.generation,
            port: d.port,
            listening: true,
            router_error: None,
            instances,
            metrics: BTreeMap::new(),
            releases: d
                .releases
                .keys()
                .map(|v| InstalledRelease {
                    version: v.clone(),
                    digest: "0".into(),
                    artifact: None,
                    installed_at: Utc::now(),
                })
                .collect(),
            schedule: None,
        };
        self.services
            .lock()
            .unwrap()
            .insert((d.fraise.clone(), d.environment.clone()), o.clone());
        Ok(o)
    }

    async fn observe(
        &self,
        fraise: &str,
        environment: &str,
    ) -> Result<Option<ObservedService>, ProviderError> {
        Ok(self
            .services
            .lock()
            .unwrap()
            .get(&(fraise.to_string(), environment.to_string()))
            .cloned())
    }

    async fn exec(&self, req: &ExecRequest) -> Result<ExecResult, ProviderError> {
        let mut schema = self.schema.lock().unwrap();
        let output = match req.command.as_str() {
            "status" => vec![schema.to_string()],
            "up" => {
                let release: u64 = if req.version == "1.0.0" { 1 } else { 3 };
                *schema = (*schema).max(release);
                Vec::new()
            }
            "down" => {
                let steps: u64 = req.env["FRAISIER_MIGRATION_STEPS"].parse().unwrap();
                *schema -= steps;
                Vec::new()
            }
            _ => Vec::new(),
        };
        if req.command != "status" {
            self.log
                .lock()
                .unwrap()
                .push(format!("{} {}", req.command, req.version));
        }
        Ok(ExecResult {
            exit_code: Some(0),
            timed_out: false,
            duration_ms: 1,
            output,
        })
    }

    fn kind(&self) -> &'static str {
        "fake"
    }

    async fn available(&self) -> bool {
        true
    }
}

const CONFIG: &str = r#"
environments:
  staging: { required_approvals: 1, approval_timeout: 1s }
  production: {}
fraises:
  api:
    command: "run"
    versions: ["1.0.0", "2.0.0"]
    health_check: { type: http, path: /health }
    environments:
      staging: { port: 18001, instances: 2 }
      production: { port: 18002, instances: 2, strategy: canary, strategy_defaults: { rolling: { health_check_timeout: 1s } } }
  db_api:
    command: "run"
    versions: ["1.0.0", "2.0.0"]
    migrations: { up: up, down: down, status: status }
    environments:
      production: { port: 18003, instances: 2, strategy: rolling, strategy_config: { health_check_timeout: 1s } }
"#;

async fn engine() -> (Engine, Arc<FakeProvider>) {
    let config = Config::parse(CONFIG).unwrap_or_else(|p| panic!("{p:?}"));
    let store = Store::open("sqlite::memory:").await.unwrap();
    let provider = Arc::new(FakeProvider::default());
    let keys = SecretKeys::new(vec![("k1".into(), [3; 32])]);
    let engine = Engine::new(
        store,
        provider.clone(),
        Arc::new(config),
        keys,
        fraisier_store::blobs::BlobStore::new(
            std::env::temp_dir().join("fraisier-engine-test-blobs"),
        ),
        EngineSettings {
            poll_interval: Duration::from_millis(20),
            resync_interval: Duration::from_secs(5),
            ..EngineSettings::default()
        },
    );
    (engine, provider)
}

fn deploy(environment: &str, version: &str, by: &str) -> DeployRequest {
    DeployRequest {
        tenant: DEFAULT_TENANT.into(),
        fraise: "api".into(),
        environment: environment.into(),
        version: Some(version.into()),
        triggered_by: by.into(),
        trigger_type: "test".into(),
        ..DeployRequest::default()
    }
}

async fn finished(engine: &Engine, run: &Run) -> Run {
    engine
        .wait(DEFAULT_TENANT, run.id, Duration::from_secs(30))
        .await
        .unwrap()
}

fn change(kind: VariableKind, values: &[(&str, Option<&str>)]) -> VariableChange {
    VariableChange {
        tenant: DEFAULT_TENANT.into(),
        fraise: "api".into(),
        environment: "production".into(),
        kind,
        values: values
            .iter()
            .map(|(n, v)| (n.to_string(), v.map(str::to_string)))
            .collect(),
        triggered_by: "ann".into(),
        trigger_type: "test".into(),
    }
}

#[tokio::test]
async fn a_guarded_run_waits_for_someone_else_and_expires_unapproved() {
    let (engine, provider) = engine().await;
    let run = engine
        .submit(deploy("staging", "1.0.0", "ann"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let waiting = engine.run(DEFAULT_TENANT, run.id).await.unwrap();
    assert_eq!(waiting.status, RunStatus::Pending);
    assert!(
        provider.applied.lock().unwrap().is_empty(),
        "nothing moves before approval"
    );

    let err = engine
        .decide(DEFAULT_TENANT, run.id, "ann", Decision::Approve, None)
        .await
        .unwrap_err();
    assert!(matches!(err, EngineError::SelfApproval { .. }), "{err:?}");
    engine
        .decide(DEFAULT_TENANT, run.id, "bob", Decision::Approve, Some("ok"))
        .await
        .unwrap();
    let done = finished(&engine, &run).await;
    assert_eq!(done.status, RunStatus::Success, "{:?}", done.error_message);

    // Nobody says yes: when the window closes the run ends cancelled, untouched.
    let applied = provider.applied.lock().unwrap().len();
    let run = engine
        .submit(deploy("staging", "2.0.0", "ann"))
        .await
        .unwrap();
    let done = finished(&engine, &run).await;
    assert_eq!(done.status, RunStatus::Cancelled);
    assert_eq!(done.error_code.as_deref(), Some("APPROVAL_EXPIRED"));
    assert_eq!(provider.applied.lock().unwrap().len(), applied);
}

#[tokio::test]
async fn a_change_of_variables_is_a_release_and_is_put_back_when_it_fails() {
    let (engine, provider) = engine().await;
    // Before any deploy: kept, nothing to release.
    let c = engine
        .change_variables(change(
            VariableKind::Secret,
            &[("DB_PASSWORD", Some("pw-1234"))],
        ))
        .await
        .unwrap();
    assert_eq!(c.changed, ["DB_PASSWORD"]);
    assert!(c.run.is_none());
    let run = engine
        .submit(deploy("production", "1.0.0", "ann"))
        .await
        .unwrap();
    assert_eq!(finished(&engine, &run).await.status, RunStatus::Success);
    let last = provider.applied.lock().unwrap().last().cloned().unwrap();
    let sealed = &last.releases["1.0.0"].secrets["DB_PASSWORD"];
    let keys = engine.secret_keys();
    assert_eq!(
        keys.open(&slot("api", "production", "DB_PASSWORD"), sealed)
            .unwrap(),
        "pw-1234"
    );

    // A plain variable: a config run of the same version, rolling (not canary), new instances.
    let c = engine
        .change_variables(change(VariableKind::Plain, &[("GREETING", Some("hi"))]))
        .await
        .unwrap();
    let run = c.run.unwrap();
    assert_eq!(
        (run.kind, run.version.as_str(), run.strategy.as_str()),
        (RunKind::Config, "1.0.0", "rolling")
    );
    assert_eq!(finished(&engine, &run).await.status, RunStatus::Success);
    let after = provider.applied.lock().unwrap().last().cloned().unwrap();
    assert_eq!(after.releases["1.0.0"].env["GREETING"], "hi");
    assert!(after
        .instances
        .iter()
        .all(|i| !last.instances.iter().any(|o| o.id == i.id)));

    // One that the instances do not survive: rolled back, and the variable is not kept.
    let c = engine
        .change_variables(change(
            VariableKind::Plain,
            &[("FAKE_HEALTHY", Some("false")), ("GREETING", None)],
        ))
        .await
        .unwrap();
    let done = finished(&engine, &c.run.unwrap()).await;
    assert_eq!(done.status, RunStatus::Failed);
    let vars = engine
        .variables(DEFAULT_TENANT, "api", "production", VariableKind::Plain)
        .await
        .unwrap();
    assert_eq!(
        vars.iter()
            .map(|v| (v.name.as_str(), v.value.as_str()))
            .collect::<Vec<_>>(),
        [("GREETING", "hi")]
    );
    let restored = provider.applied.lock().unwrap().last().cloned().unwrap();
    assert_eq!(restored.instances, after.instances);

    // A name is one kind or the other; a change while a run is active is refused whole.
    let err = engine
        .change_variables(change(VariableKind::Secret, &[("GREETING", Some("x"))]))
        .await
        .unwrap_err();
    assert!(
        matches!(err, EngineError::VariableConflict { .. }),
        "{err:?}"
    );
    let _active = engine
        .submit(deploy("production", "2.0.0", "ann"))
        .await
        .unwrap();
    let err = engine
        .change_variables(change(VariableKind::Plain, &[("OTHER", Some("x"))]))
        .await
        .unwrap_err();
    assert!(matches!(err, EngineError::InProgress { .. }), "{err:?}");
    assert_eq!(
        engine
            .variables(DEFAULT_TENANT, "api", "production", VariableKind::Plain)
            .await
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn migrations_go_back_exactly_and_before_the_old_code_takes_traffic() {
    let (engine, provider) = engine().await;
    let ship = |version: &str| DeployRequest {
        fraise: "db_api".into(),
        ..deploy("production", version, "ann")
    };
    let run = engine.submit(ship("1.0.0")).await.unwrap();
    let done = finished(&engine, &run).await;
    assert_eq!(done.status, RunStatus::Success, "{:?}", done.error_message);
    assert_eq!(*provider.schema.lock().unwrap(), 1);

    // 2.0.0 applies two migrations, then never turns healthy: both go back, schema first.
    provider.unhealthy.lock().unwrap().push("2.0.0".into());
    provider.log.lock().unwrap().clear();
    let run = engine.submit(ship("2.0.0")).await.unwrap();
    let done = finished(&engine, &run).await;
    assert_eq!(done.status, RunStatus::Failed);
    assert_eq!(*provider.schema.lock().unwrap(), 1);
    let log = provider.log.lock().unwrap().clone();
    let down = log
        .iter()
        .position(|e| e == "down 2.0.0")
        .unwrap_or_else(|| panic!("{log:?}"));
    assert!(
        log.iter().position(|e| e == "up 2.0.0").unwrap() < down,
        "{log:?}"
    );
    assert_eq!(
        log.last().map(String::as_str),
        Some("apply 1.0.0"),
        "{log:?}"
    );
    assert!(down < log.len() - 1, "{log:?}");

    // Healthy this time; then a rollback undoes exactly its two before 1.0.0 serves alone.
    provider.unhealthy.lock().unwrap().clear();
    let run = engine.submit(ship("2.0.0")).await.unwrap();
    assert_eq!(finished(&engine, &run).await.status, RunStatus::Success);
    assert_eq!(*provider.schema.lock().unwrap(), 3);
    provider.log.lock().unwrap().clear();
    let run = engine
        .rollback(fraisier_engine::RollbackRequest {
            tenant: DEFAULT_TENANT.into(),
            fraise: "db_api".into(),
            environment: "production".into(),
            triggered_by: "ann".into(),
            trigger_type: "test".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let done = finished(&engine, &run).await;
    assert_eq!(done.status, RunStatus::Success, "{:?}", done.error_message);
    assert_eq!(*provider.schema.lock().unwrap(), 1);
    let log = provider.log.lock().unwrap().clone();
    let down = log
        .iter()
        .position(|e| e == "down 2.0.0")
        .unwrap_or_else(|| panic!("{log:?}"));
    let old_serves = log
        .iter()
        .position(|e| e.starts_with("apply") && e.contains("1.0.0"))
        .unwrap();
    assert!(down < old_serves, "{log:?}");
}

/// An engine over the store at `url` with another configuration (a restart after an edit).
async fn engine_with(url: &str, yaml: &str) -> Engine {
    let config = Config::parse(yaml).unwrap_or_else(|p| panic!("{p:?}"));
    Engine::new(
        Store::open(url).await.unwrap(),
        Arc::new(FakeProvider::default()),
        Arc::new(config),
        SecretKeys::new(vec![("k1".into(), [3; 32])]),
        fraisier_store::blobs::BlobStore::new(
            std::env::temp_dir().join("fraisier-engine-test-blobs"),
        ),
        EngineSettings::default(),
    )
}

#[tokio::test]
async fn a_notification_reaches_only_the_destination_it_was_written_for() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("f.db").display());
    let with = |list: &str| format!("{CONFIG}notifications:\n{list}");
    let a = "  - { type: webhook, url: \"https://a.example/hook\", on: [started] }\n";
    let b = "  - { type: webhook, url: \"https://b.example/hook\", on: [started] }\n";
    let engine = engine_with(&url, &with(a)).await;
    engine.start().await.unwrap();
    let run = engine
        .submit(deploy("production", "1.0.0", "alice"))
        .await
        .unwrap();
    finished(&engine, &run).await;
    let due = engine.store().due_notifications(10).await.unwrap();
    let started = due
        .into_iter()
        .find(|n| n.new.event == "started")
        .expect("the start was announced");
    assert_eq!(
        engine.notification_target(&started).map(|t| t.url),
        Some("https://a.example/hook".into())
    );

    // Reordered after a restart: still A, not whatever now sits at its old place.
    let moved = engine_with(&url, &with(&format!("{b}{a}"))).await;
    assert_eq!(
        moved.notification_target(&started).map(|t| t.url),
        Some("https://a.example/hook".into())
    );
    // Replaced: nowhere, rather than to B.
    let replaced = engine_with(&url, &with(b)).await;
    assert_eq!(replaced.notification_target(&started).map(|t| t.url), None);
}

#[tokio::test]
async fn stopping_waits_only_for_job_leases_still_live() {
    let (engine, _) = engine().await;
    let mut given_up = engine.job_lease("given-up");
    let dropped = engine.job_lease("dropped");
    let mut kept = engine.job_lease("kept");
    assert!(
        given_up.held().await,
        "a single server on SQLite holds every job"
    );
    engine.begin_stopping_jobs();
    assert!(!given_up.held().await);
    assert!(!given_up.held().await, "asked again once given up");
    drop(dropped);
    // `kept` has not been asked since the stop began: stopping waits for it...
    let started = std::time::Instant::now();
    engine.stop_jobs(Duration::from_millis(300)).await;
    assert!(started.elapsed() >= Duration::from_millis(300));
    // ...until it gives up too; a lease given up and then dropped counts once.
    assert!(!kept.held().await);
    drop(given_up);
    let started = std::time::Instant::now();
    engine.stop_jobs(Duration::from_secs(3)).await;
    assert!(started.elapsed() < Duration::from_secs(1));
    drop(kept);
}
