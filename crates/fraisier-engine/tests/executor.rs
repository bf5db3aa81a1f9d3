//! The executor against a scripted provider under a paused clock: a run resumed after the
//! server stopped at any step finishes as if it had not; a cancel at any safe point puts the
//! previous version back; and every kind of failure rolls back to what ran before.
//!
//! The clock is tokio's, paused: gates, pauses, holds and timeouts of minutes pass at once and
//! in the same order on every run. A metronome keeps it moving by the millisecond while the
//! store's thread works, rather than leaping to the store's own time-outs. A stopped server is `Engine::halt` (its tasks end where
//! they stand, as a `kill -9` leaves them); the next server is a new engine on the same
//! store, with the same agent.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use fraisier_engine::{DeployRequest, Engine, EngineSettings, Provider, ProviderError};
use fraisier_model::config::Config;
use fraisier_model::metrics::VersionMetrics;
use fraisier_model::run::{HealthCheckStatus, RunStatus, ServiceState, StepStatus};
use fraisier_model::secret::SecretKeys;
use fraisier_model::service::{
    DesiredService, ExecRequest, ExecResult, InstalledRelease, InstanceState, ObservedInstance,
    ObservedService,
};
use fraisier_store::{Run, Store, DEFAULT_TENANT};

/// What the agent will do, set by each test.
#[derive(Clone, Default)]
struct Script {
    /// Versions whose instances never turn healthy.
    never_healthy: BTreeSet<String>,
    /// Versions whose instances crash this many looks after they started.
    crash_after: BTreeMap<String, u32>,
    /// Versions the agent refuses to run.
    refuse: BTreeSet<String>,
    /// Versions whose desired state the agent takes and is then lost (until the next state).
    lose_on: BTreeSet<String>,
    /// Commands that exit with 1.
    failing: BTreeSet<String>,
    /// Requests, and errors among them, the router counts per look for a version.
    traffic: BTreeMap<String, (u64, u64)>,
}

#[derive(Default)]
struct Agent {
    script: Script,
    service: Option<ObservedService>,
    /// Looks at each instance since it started.
    looks: BTreeMap<String, u32>,
    lost: bool,
    applied: Vec<DesiredService>,
    commands: Vec<String>,
}

/// What happens to the server at the agent's `at`-th answer from arming.
enum Action {
    /// The server stops there: the answer never arrives.
    Halt,
    /// Somebody cancels the run; then the agent answers.
    Cancel,
}

struct Trap {
    at: usize,
    action: Action,
    engine: Engine,
}

#[derive(Default)]
struct Fake {
    agent: Mutex<Agent>,
    trap: Mutex<Option<Trap>>,
    calls: AtomicUsize,
    /// The step the run was in when the trap went off.
    fired: Mutex<Option<String>>,
}

impl Fake {
    fn script(&self, f: impl FnOnce(&mut Script)) {
        f(&mut self.agent.lock().unwrap().script)
    }

    fn applied(&self) -> Vec<DesiredService> {
        self.agent.lock().unwrap().applied.clone()
    }

    fn running(&self) -> ObservedService {
        self.agent
            .lock()
            .unwrap()
            .service
            .clone()
            .unwrap_or_default()
    }

    /// Counts the agent's answers from now (`at` 0: only counts).
    fn arm(&self, at: usize, action: Action, engine: &Engine) {
        self.calls.store(0, Ordering::SeqCst);
        *self.fired.lock().unwrap() = None;
        *self.trap.lock().unwrap() = Some(Trap {
            at,
            action,
            engine: engine.clone(),
        });
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn fired(&self) -> Option<String> {
        self.fired.lock().unwrap().clone()
    }

    /// Before each answer: sets off the trap when its turn has come.
    async fn turn(&self, fraise: &str) {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        let trap = {
            let mut trap = self.trap.lock().unwrap();
            match &*trap {
                Some(t) if t.at == n => trap.take(),
                _ => None,
            }
        };
        let Some(trap) = trap else { return };
        let store = trap.engine.store();
        let run = store
            .active_run_for(DEFAULT_TENANT, fraise, "production")
            .await
            .unwrap()
            .expect("a run is active");
        let steps = store.steps(run.id).await.unwrap();
        *self.fired.lock().unwrap() = Some(steps.last().map_or(String::new(), |s| s.name.clone()));
        match trap.action {
            Action::Halt => {
                trap.engine.halt();
                std::future::pending::<()>().await;
            }
            Action::Cancel => {
                trap.engine
                    .cancel(DEFAULT_TENANT, run.id, "bob")
                    .await
                    .unwrap();
            }
        }
    }
}

fn instance(id: &str, version: &str, weight: u32, state: InstanceState) -> ObservedInstance {
    ObservedInstance {
        id: id.into(),
        version: version.into(),
        pid: Some(1),
        port: Some(1),
        state,
        weight,
        restarts: 0,
        started_at: Some(Utc::now()),
        last_check_at: Some(Utc::now()),
        checks_passed: 1,
        checks_total: 1,
        last_error: None,
        in_flight: 0,
    }
}

#[async_trait]
impl Provider for Fake {
    async fn apply(&self, d: &DesiredService) -> Result<ObservedService, ProviderError> {
        self.turn(&d.fraise).await;
        let mut a = self.agent.lock().unwrap();
        let versions: BTreeSet<&String> = d.instances.iter().map(|i| &i.version).collect();
        if let Some(v) = versions.iter().find(|v| a.script.refuse.contains(**v)) {
            return Err(ProviderError::Rejected(format!("cannot run {v}")));
        }
        a.lost = versions.iter().any(|v| a.script.lose_on.contains(*v));
        a.applied.push(d.clone());
        let before = a.service.clone().unwrap_or_default();
        let kept: BTreeSet<&str> = d.instances.iter().map(|i| i.id.as_str()).collect();
        a.looks.retain(|id, _| kept.contains(id.as_str()));
        let instances = d
            .instances
            .iter()
            .map(|i| {
                let state = before
                    .instance(&i.id)
                    .map_or(InstanceState::Starting, |o| o.state);
                instance(&i.id, &i.version, i.weight, state)
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
            metrics: before.metrics,
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
        a.service = Some(o.clone());
        Ok(o)
    }

    async fn observe(
        &self,
        fraise: &str,
        _: &str,
    ) -> Result<Option<ObservedService>, ProviderError> {
        self.turn(fraise).await;
        let mut a = self.agent.lock().unwrap();
        if a.lost {
            return Err(ProviderError::Lost("web-2: no heartbeat for 30 s".into()));
        }
        let script = a.script.clone();
        let Some(mut o) = a.service.take() else {
            return Ok(None);
        };
        for i in &mut o.instances {
            let looks = a.looks.entry(i.id.clone()).or_default();
            *looks += 1;
            i.state = if script.never_healthy.contains(&i.version) {
                InstanceState::Starting
            } else if script
                .crash_after
                .get(&i.version)
                .is_some_and(|n| *looks > *n)
            {
                InstanceState::Crashed
            } else {
                InstanceState::Healthy
            };
        }
        let serving: BTreeSet<String> = o
            .instances
            .iter()
            .filter(|i| i.weight > 0)
            .map(|i| i.version.clone())
            .collect();
        for v in serving {
            let (requests, errors) = script.traffic.get(&v).copied().unwrap_or((10, 0));
            let m = o.metrics.entry(v).or_insert_with(VersionMetrics::empty);
            m.requests += requests;
            m.errors += errors;
        }
        a.service = Some(o.clone());
        Ok(Some(o))
    }

    async fn exec(&self, req: &ExecRequest) -> Result<ExecResult, ProviderError> {
        self.turn(&req.fraise).await;
        let mut a = self.agent.lock().unwrap();
        a.commands.push(req.command.clone());
        let failing = a.script.failing.contains(&req.command);
        Ok(ExecResult {
            exit_code: Some(if failing { 1 } else { 0 }),
            timed_out: false,
            duration_ms: 1,
            output: Vec::new(),
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
  production: {}
fraises:
  rolling:
    command: run
    versions: ["1.0.0", "2.0.0"]
    health_check: { type: http, path: /health }
    pre_deploy_hooks: [pre]
    post_deploy_hooks: [post]
    environments:
      production: { port: 18101, instances: 3, strategy: rolling, strategy_config: { health_check_timeout: 600s } }
  blue_green:
    command: run
    versions: ["1.0.0", "2.0.0"]
    health_check: { type: http, path: /health }
    environments:
      production: { port: 18102, instances: 2, strategy: blue_green, strategy_config: { health_check_timeout: 600s, scale_down_delay: 2s, smoke_test: smoke } }
  canary:
    command: run
    versions: ["1.0.0", "2.0.0"]
    health_check: { type: http, path: /health }
    environments:
      production:
        port: 18103
        instances: 2
        strategy: canary
        strategy_config:
          health_check_timeout: 600s
          steps: [{ weight: 10, pause: 2s }, { weight: 50, pause: 2s }]
          analysis: { max_error_rate: 5, min_requests: 0 }
  fragile:
    command: run
    versions: ["1.0.0", "2.0.0"]
    health_check: { type: http, path: /health }
    environments:
      production: { port: 18105, instances: 2, strategy: rolling, strategy_config: { health_check_timeout: 20s } }
  recreate:
    command: run
    versions: ["1.0.0", "2.0.0"]
    health_check: { type: http, path: /health }
    environments:
      production: { port: 18104, instances: 2, strategy: recreate, strategy_config: { health_check_timeout: 600s } }
"#;

const STRATEGIES: [&str; 4] = ["rolling", "blue_green", "canary", "recreate"];

/// A server's database: each server opens its own store on it, as servers do.
struct Db {
    _dir: tempfile::TempDir,
    url: String,
}

impl Db {
    fn new() -> Db {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("fraisier.db").display());
        Db { _dir: dir, url }
    }
}

async fn engine_on(db: &Db, agent: &Arc<Fake>) -> Engine {
    let config = Config::parse(CONFIG).unwrap_or_else(|p| panic!("{p:?}"));
    let engine = Engine::new(
        Store::open(&db.url).await.unwrap(),
        agent.clone(),
        Arc::new(config),
        SecretKeys::new(vec![("k1".into(), [3; 32])]),
        fraisier_store::blobs::BlobStore::new(
            std::env::temp_dir().join("fraisier-executor-test-blobs"),
        ),
        EngineSettings {
            poll_interval: Duration::from_millis(50),
            // Once, at start: its looks at the agent would be counted as the run's.
            resync_interval: Duration::from_secs(24 * 3600),
            ..EngineSettings::default()
        },
    );
    engine.start().await.unwrap();
    engine
}

fn deploy(fraise: &str, version: &str) -> DeployRequest {
    DeployRequest {
        tenant: DEFAULT_TENANT.into(),
        fraise: fraise.into(),
        environment: "production".into(),
        version: Some(version.into()),
        triggered_by: "ann".into(),
        trigger_type: "test".into(),
        ..DeployRequest::default()
    }
}

async fn finished(engine: &Engine, run: &Run) -> Run {
    engine
        .wait(DEFAULT_TENANT, run.id, Duration::from_secs(3600))
        .await
        .unwrap()
}

/// The run's events once its last is written (a run's status is final a moment before).
async fn events(engine: &Engine, run: &Run) -> Vec<fraisier_store::Event> {
    const LAST: [&str; 3] = [
        "deployment.completed",
        "deployment.failed",
        "deployment.cancelled",
    ];
    // An hour of the paused clock: however slow the store's threads are in real time.
    for _ in 0..360_000 {
        let events = engine.store().events(run.id, None).await.unwrap();
        if events.iter().any(|e| LAST.contains(&e.event_type.as_str())) {
            return events;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("run {} told no end", run.id)
}

/// Moves the paused clock a millisecond at a time whenever nothing else is to be done.
fn metronome() {
    tokio::spawn(async {
        loop {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });
}

/// A store and an agent running 1.0.0 of `fraise`, and the engine that deployed it.
async fn with_first_release(fraise: &str) -> (Db, Arc<Fake>, Engine) {
    let db = Db::new();
    let agent = Arc::new(Fake::default());
    let engine = engine_on(&db, &agent).await;
    let run = engine.submit(deploy(fraise, "1.0.0")).await.unwrap();
    let done = finished(&engine, &run).await;
    assert_eq!(done.status, RunStatus::Success, "{:?}", done.error_message);
    (db, agent, engine)
}

/// Instances as (id, version, weight), in order.
fn shape(o: &ObservedService) -> Vec<(String, String, u32)> {
    o.instances
        .iter()
        .map(|i| (i.id.clone(), i.version.clone(), i.weight))
        .collect()
}

/// Versions and weights only: instance ids differ between two runs of one plan when one
/// of them was resumed after ids had been handed out.
fn versions(o: &ObservedService) -> Vec<(String, u32)> {
    let mut v: Vec<_> = o
        .instances
        .iter()
        .map(|i| (i.version.clone(), i.weight))
        .collect();
    v.sort();
    v
}

/// How many answers a clean deploy of 2.0.0 takes from the agent, and what it leaves running.
async fn clean_deploy(fraise: &str) -> (usize, ObservedService) {
    let (_db, agent, engine) = with_first_release(fraise).await;
    agent.arm(0, Action::Halt, &engine);
    let run = engine.submit(deploy(fraise, "2.0.0")).await.unwrap();
    let done = finished(&engine, &run).await;
    assert_eq!(done.status, RunStatus::Success, "{:?}", done.error_message);
    engine.halt();
    (agent.calls(), agent.running())
}

/// Waits until the trap went off or the run ended.
async fn trapped(engine: &Engine, agent: &Fake, run: &Run) {
    while agent.fired().is_none() {
        if engine
            .run(DEFAULT_TENANT, run.id)
            .await
            .unwrap()
            .status
            .is_final()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Stopped while waiting for each of the agent's answers in turn: between two answers the
/// run only writes to the store, so every step is stopped in, or just after.
#[tokio::test(start_paused = true)]
async fn a_run_resumed_after_the_server_stopped_at_any_step_ends_as_a_clean_one_does() {
    metronome();
    for fraise in STRATEGIES {
        let (calls, clean) = clean_deploy(fraise).await;
        assert!(calls >= 6, "{fraise}: {calls} answers");
        let mut stopped_in = BTreeSet::new();
        let mut not_reached = 0;
        for n in 1..=calls {
            let (db, agent, first) = with_first_release(fraise).await;
            agent.arm(n, Action::Halt, &first);
            let run = first.submit(deploy(fraise, "2.0.0")).await.unwrap();
            trapped(&first, &agent, &run).await;
            // Gates bounded by time look a few times more or less from one run to the next.
            let Some(step) = agent.fired() else {
                not_reached += 1;
                first.halt();
                continue;
            };
            let at = format!("{fraise}: stopped at answer {n} of {calls}, in step {step:?}");
            stopped_in.insert(step);

            let second = engine_on(&db, &agent).await;
            let store = second.store();
            let done = finished(&second, &run).await;
            assert_eq!(
                done.status,
                RunStatus::Success,
                "{at}: {:?}",
                done.error_message
            );
            assert_eq!(done.health_check_status, HealthCheckStatus::Passing, "{at}");
            let running = agent.running();
            assert_eq!(versions(&running), versions(&clean), "{at}");
            let ids: BTreeSet<&str> = running.instances.iter().map(|i| i.id.as_str()).collect();
            assert_eq!(ids.len(), running.instances.len(), "{at}: an id twice");
            assert!(
                running.converged_to(agent.applied().last().unwrap()),
                "{at}"
            );

            // Every step done once; the one it stopped in, if any, ended as interrupted.
            let recorded = store.steps(run.id).await.unwrap();
            let names: BTreeSet<&str> = recorded.iter().map(|s| s.name.as_str()).collect();
            for name in names {
                let done = recorded
                    .iter()
                    .filter(|s| s.name == name)
                    .filter(|s| matches!(s.status, StepStatus::Completed | StepStatus::Skipped))
                    .count();
                assert_eq!(done, 1, "{at}: {name} done {done} times: {recorded:?}");
            }
            let interrupted: Vec<_> = recorded
                .iter()
                .filter(|s| s.status != StepStatus::Completed && s.status != StepStatus::Skipped)
                .collect();
            assert!(interrupted.len() <= 1, "{at}: {recorded:?}");
            assert!(
                interrupted.iter().all(|s| s.status == StepStatus::Failed
                    && s.error
                        .as_deref()
                        .is_some_and(|e| e.starts_with("interrupted"))),
                "{at}: {recorded:?}"
            );
            let events = events(&second, &run).await;
            let count = |t: &str| events.iter().filter(|e| e.event_type == t).count();
            assert_eq!(count("deployment.started"), 1, "{at}");
            assert_eq!(count("deployment.resumed"), 1, "{at}");
            assert_eq!(count("deployment.completed"), 1, "{at}");
            assert_eq!(count("deployment.failed"), 0, "{at}");
            second.halt();
        }
        assert!(
            stopped_in.len() >= 4,
            "{fraise}: stopped only in {stopped_in:?}"
        );
        assert!(
            not_reached * 4 <= calls,
            "{fraise}: {not_reached} of {calls} not reached"
        );
    }
}

/// Cancelled while waiting for each of the agent's answers in turn.
#[tokio::test(start_paused = true)]
async fn a_cancel_at_any_safe_point_puts_the_previous_version_back() {
    metronome();
    for fraise in STRATEGIES {
        let (calls, _) = clean_deploy(fraise).await;
        let mut not_reached = 0;
        for n in 1..=calls {
            let (_db, agent, engine) = with_first_release(fraise).await;
            let store = engine.store();
            let before = agent.running();
            agent.arm(n, Action::Cancel, &engine);
            let run = engine.submit(deploy(fraise, "2.0.0")).await.unwrap();
            let done = finished(&engine, &run).await;
            let Some(step) = agent.fired() else {
                not_reached += 1;
                engine.halt();
                continue;
            };
            let at = format!("{fraise}: cancelled at answer {n} of {calls}, in step {step:?}");
            let record = store
                .service(DEFAULT_TENANT, fraise, "production")
                .await
                .unwrap()
                .unwrap();
            // The last step has no safe point after it: a cancel there comes too late.
            if step.starts_with("final health check") && done.status == RunStatus::Success {
                assert_eq!(record.current_version.as_deref(), Some("2.0.0"), "{at}");
                engine.halt();
                continue;
            }
            assert_eq!(
                done.status,
                RunStatus::Cancelled,
                "{at}: {:?}",
                done.error_message
            );
            assert_eq!(
                done.error_code.as_deref(),
                Some("DEPLOYMENT_CANCELLED"),
                "{at}"
            );
            assert_eq!(done.cancel_requested_by.as_deref(), Some("bob"), "{at}");
            let running = agent.running();
            assert_eq!(shape(&running), shape(&before), "{at}");
            assert!(
                running.converged_to(agent.applied().last().unwrap()),
                "{at}"
            );
            assert_eq!(record.current_version.as_deref(), Some("1.0.0"), "{at}");
            assert_eq!(record.state, ServiceState::Healthy, "{at}");
            engine.halt();
        }
        assert!(
            not_reached * 4 <= calls,
            "{fraise}: {not_reached} of {calls} not reached"
        );
    }
}

struct Case {
    what: &'static str,
    fraise: &'static str,
    script: fn(&mut Script),
    /// Seconds the run may take.
    timeout: Option<u64>,
    code: &'static str,
    /// Words the run's error message has.
    says: &'static str,
    /// Whether traffic had moved, so that the previous version was put back.
    restored: bool,
}

#[tokio::test(start_paused = true)]
async fn every_kind_of_failure_leaves_the_previous_version_running() {
    metronome();
    let cases = [
        Case {
            what: "instances that never turn healthy",
            fraise: "fragile",
            script: |s| {
                s.never_healthy.insert("2.0.0".into());
            },
            timeout: None,
            code: "HEALTH_CHECK_FAILED",
            says: "did not become healthy within 20s",
            restored: true,
        },
        Case {
            what: "an agent that refuses the release",
            fraise: "rolling",
            script: |s| {
                s.refuse.insert("2.0.0".into());
            },
            timeout: None,
            code: "PROVIDER_ERROR",
            says: "cannot run 2.0.0",
            // Recorded before the agent was asked: put back, as a state half taken would be.
            restored: true,
        },
        Case {
            what: "an agent lost after it took the release",
            fraise: "blue_green",
            script: |s| {
                s.lose_on.insert("2.0.0".into());
            },
            timeout: None,
            code: "PROVIDER_ERROR",
            says: "agent lost",
            restored: true,
        },
        Case {
            what: "a pre-deploy hook that fails",
            fraise: "rolling",
            script: |s| {
                s.failing.insert("pre".into());
            },
            timeout: None,
            code: "DEPLOYMENT_FAILED",
            says: "pre-deploy hook `pre` exited with 1",
            restored: false,
        },
        Case {
            what: "a post-deploy hook that fails",
            fraise: "rolling",
            script: |s| {
                s.failing.insert("post".into());
            },
            timeout: None,
            code: "DEPLOYMENT_FAILED",
            says: "post-deploy hook `post` exited with 1",
            restored: true,
        },
        Case {
            what: "a smoke test that fails",
            fraise: "blue_green",
            script: |s| {
                s.failing.insert("smoke".into());
            },
            timeout: None,
            code: "DEPLOYMENT_FAILED",
            says: "smoke test `smoke` exited with 1",
            restored: true,
        },
        Case {
            what: "a canary that answers errors",
            fraise: "canary",
            script: |s| {
                s.traffic.insert("2.0.0".into(), (10, 5));
            },
            timeout: None,
            code: "DEPLOYMENT_FAILED",
            says: "canary analysis failed",
            restored: true,
        },
        Case {
            what: "instances that crash after the switch",
            fraise: "blue_green",
            script: |s| {
                s.crash_after.insert("2.0.0".into(), 3);
            },
            timeout: None,
            code: "HEALTH_CHECK_FAILED",
            says: "became unhealthy after the switch",
            restored: true,
        },
        Case {
            what: "a run out of time",
            fraise: "recreate",
            script: |s| {
                s.never_healthy.insert("2.0.0".into());
            },
            timeout: Some(5),
            code: "DEPLOYMENT_FAILED",
            says: "timed out after 5 s",
            restored: true,
        },
    ];
    for case in cases {
        let at = case.what;
        let (_db, agent, engine) = with_first_release(case.fraise).await;
        let store = engine.store();
        let before = agent.running();
        let applied = agent.applied().len();
        agent.script(case.script);
        let run = engine
            .submit(DeployRequest {
                timeout_secs: case.timeout,
                ..deploy(case.fraise, "2.0.0")
            })
            .await
            .unwrap();
        let done = finished(&engine, &run).await;
        assert_eq!(done.status, RunStatus::Failed, "{at}");
        assert_eq!(
            done.error_code.as_deref(),
            Some(case.code),
            "{at}: {:?}",
            done.error_message
        );
        let message = done.error_message.clone().unwrap_or_default();
        assert!(message.contains(case.says), "{at}: {message}");
        let running = agent.running();
        assert_eq!(shape(&running), shape(&before), "{at}");
        assert!(
            running.converged_to(agent.applied().last().unwrap()),
            "{at}"
        );
        let record = store
            .service(DEFAULT_TENANT, case.fraise, "production")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(record.current_version.as_deref(), Some("1.0.0"), "{at}");
        assert_eq!(record.state, ServiceState::Healthy, "{at}");
        let steps = store.steps(run.id).await.unwrap();
        let rollback = steps.iter().find(|s| s.name == "rollback");
        let events = events(&engine, &run).await;
        let told = |t: &str| events.iter().any(|e| e.event_type == t);
        if case.restored {
            assert_eq!(
                rollback.map(|s| s.status),
                Some(StepStatus::Completed),
                "{at}: {steps:?}"
            );
            assert!(told("rollback.completed"), "{at}");
        } else {
            assert!(
                rollback.is_none(),
                "{at}: nothing moved, nothing to put back"
            );
            assert_eq!(agent.applied().len(), applied, "{at}: nothing applied");
        }
        assert!(told("deployment.failed"), "{at}");
        engine.halt();
    }
}
