//! The reconciler: one task per service that moves what runs toward the desired state, one
//! pass at a time. A pass reads the current desired state (never the event that woke it),
//! asks the planner what to do, applies that, then publishes the router table, the instance
//! records and the observed state. Wake-ups (PUT, DELETE, probe changes) merge into one
//! `Notify` permit; a periodic tick catches exits and retries.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use fraisier_model::service::{
    service_key, DesiredService, HealthCheckSpec, InstanceState, ObservedInstance, ObservedService,
};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::agent::Agent;
use crate::health::{self, Health, HealthTracker, ProbeTarget};
use crate::plan::{self, Action, Phase, Slot};
use crate::process::{self, Identity, InstanceProcess, Launch};
use crate::restart::{Backoff, RestartHistory};
use crate::router::{Backend, Router};
use crate::schedule::{Launcher, ScheduledJob};
use crate::state_dir::InstanceRecord;

/// Routers listen on every interface: they are the service's front door.
const ROUTER_IP: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
/// Wait before trying again to bind a router port that was taken.
const BIND_RETRY: Duration = Duration::from_secs(1);
/// Grace for a router being closed; its instances were drained first, so this is short.
const ROUTER_GRACE: Duration = Duration::from_secs(1);
/// Grace for instances re-adopted without any desired state to say otherwise.
pub(crate) const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(10);

/// What the control API and the reconciler of one service share.
pub(crate) struct ServiceShared {
    pub fraise: String,
    pub environment: String,
    /// `None` once deleted: the reconciler drains everything, then the service is forgotten.
    pub desired: Mutex<Option<DesiredService>>,
    pub observed: Mutex<ObservedService>,
    /// Versions its instances run, draining ones included: never pruned.
    pub in_use: Mutex<BTreeSet<String>>,
    pub wake: Arc<Notify>,
}

/// An instance found alive at startup, handed to its service's reconciler.
pub(crate) struct Adopted {
    pub record: InstanceRecord,
    pub process: InstanceProcess,
}

/// A probe task; aborted when dropped, so a stopped instance is never probed again.
struct Prober {
    spec: HealthCheckSpec,
    task: JoinHandle<()>,
}

/// The pid identity of the current process, kept apart from it so that an instance being
/// stopped (its process moved into the stop task) is still recorded.
#[derive(Clone, Copy)]
struct Pid {
    pid: u32,
    start_ticks: u64,
    started_at: chrono::DateTime<chrono::Utc>,
}

enum InstancePhase {
    Running,
    Crashed { restart_at: Instant },
    Draining { since: Instant, deadline: Instant },
    Stopping(JoinHandle<()>),
}

struct Instance {
    id: String,
    version: String,
    weight: u32,
    /// Chosen once; kept across restarts so that the router table stays valid.
    port: u16,
    restarts: u32,
    history: RestartHistory,
    process: Option<InstanceProcess>,
    pid: Option<Pid>,
    health: Arc<Mutex<HealthTracker>>,
    prober: Option<Prober>,
    phase: InstancePhase,
    last_error: Option<String>,
}

struct BoundRouter {
    port: u16,
    router: Router,
    /// The table last given to the router; `None` right after binding.
    table: Option<Vec<Backend>>,
}

/// The reconciler's own state for one service.
struct ServiceRuntime {
    agent: Arc<Agent>,
    shared: Arc<ServiceShared>,
    key: String,
    instances: BTreeMap<String, Instance>,
    router: Option<BoundRouter>,
    router_error: Option<String>,
    retry_bind_at: Option<Instant>,
    /// The last desired state seen: its settings still apply while draining after a delete.
    settings: Option<DesiredService>,
    applied_generation: u64,
    /// Generation whose releases were installed and pruned.
    releases_generation: Option<u64>,
    /// Versions running when releases were last pruned: a version whose last instance has
    /// since stopped may be pruned now, even without a new generation.
    pruned_with_running: BTreeSet<String>,
    backoff: Backoff,
    /// A `scheduled` fraise's job and the record of its executions.
    job: ScheduledJob,
}

// === impl ServiceShared ===

impl ServiceShared {
    pub fn new(fraise: &str, environment: &str, desired: Option<DesiredService>) -> Self {
        ServiceShared {
            fraise: fraise.to_string(),
            environment: environment.to_string(),
            desired: Mutex::new(desired),
            observed: Mutex::new(ObservedService {
                fraise: fraise.to_string(),
                environment: environment.to_string(),
                ..Default::default()
            }),
            in_use: Mutex::default(),
            wake: Arc::new(Notify::new()),
        }
    }

    pub fn key(&self) -> String {
        service_key(&self.fraise, &self.environment)
    }

    pub fn desired(&self) -> MutexGuard<'_, Option<DesiredService>> {
        lock(&self.desired)
    }

    pub fn observed(&self) -> ObservedService {
        lock(&self.observed).clone()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

// === impl Prober ===

impl Drop for Prober {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Runs the reconcile loop of one service until it has been deleted (or the agent shuts down)
/// and everything it ran is stopped.
pub(crate) async fn run_service(
    agent: Arc<Agent>,
    shared: Arc<ServiceShared>,
    adopted: Vec<Adopted>,
) {
    let mut rt = ServiceRuntime::new(agent.clone(), shared.clone(), adopted);
    loop {
        match rt.reconcile().await {
            Some(after) => {
                tokio::select! {
                    _ = shared.wake.notified() => {}
                    _ = tokio::time::sleep(after) => {}
                }
            }
            // Desired again in the meantime (a PUT after the DELETE): keep going.
            None if !agent.forget_service(&shared).await => {}
            None => break,
        }
    }
    rt.close_router().await;
    tracing::info!(service = %rt.key, "service stopped");
}

// === impl ServiceRuntime ===

impl ServiceRuntime {
    fn new(agent: Arc<Agent>, shared: Arc<ServiceShared>, adopted: Vec<Adopted>) -> Self {
        let settings = shared.desired().clone();
        let instances = adopted
            .into_iter()
            .map(|Adopted { record, process }| {
                let (health, since) = if record.healthy {
                    (Health::Healthy, Some(Instant::now()))
                } else {
                    (Health::Starting, None)
                };
                let instance = Instance {
                    id: record.id.clone(),
                    version: record.version,
                    weight: record.weight,
                    port: record.port,
                    restarts: record.restarts,
                    history: RestartHistory::default(),
                    pid: Some(Pid {
                        pid: process.pid,
                        start_ticks: process.start_ticks,
                        started_at: process.started_at,
                    }),
                    process: Some(process),
                    health: Arc::new(Mutex::new(HealthTracker::new(health, since))),
                    prober: None,
                    phase: InstancePhase::Running,
                    last_error: None,
                };
                (record.id, instance)
            })
            .collect();
        let job = ScheduledJob::load(agent.dir.schedule_file(&shared.fraise, &shared.environment));
        ServiceRuntime {
            key: shared.key(),
            agent,
            shared,
            instances,
            router: None,
            router_error: None,
            retry_bind_at: None,
            settings,
            applied_generation: 0,
            releases_generation: None,
            pruned_with_running: BTreeSet::new(),
            backoff: Backoff::default(),
            job,
        }
    }

    /// One pass. Returns when to look again, or `None` once the service is going away and
    /// nothing of it runs any more.
    async fn reconcile(&mut self) -> Option<Duration> {
        let now = Instant::now();
        let desired = self.shared.desired().clone();
        let target = desired.filter(|_| !self.agent.is_shutting_down());
        if let Some(d) = &target {
            self.settings = Some(d.clone());
            self.bind_router(d.port, now).await;
            if self.releases_generation != Some(d.generation) {
                self.install_releases(d).await;
            }
        }
        self.notice_exits(now);
        let job_wait = self.drive_job(target.as_ref());

        let slots = self.slots();
        let plan = plan::plan(target.as_ref().map(|d| d.instances.as_slice()), &slots, now);
        for action in plan.actions {
            self.apply(action, target.as_ref(), now).await;
        }
        self.ensure_probers();

        // One health snapshot feeds both the router table and the observed state, so that
        // "healthy" in observed always means "in the router table".
        let health: BTreeMap<String, HealthTracker> = self
            .instances
            .iter()
            .map(|(id, i)| (id.clone(), lock(&i.health).clone()))
            .collect();
        self.update_router_table(&health);
        self.persist_records(&health).await;
        if let Some(d) = &target {
            self.applied_generation = d.generation;
        }
        // The versions in use are recorded before pruning, which must spare them (those of
        // every environment of the fraise), and pruning happens before publishing, so that
        // the published releases are the ones kept.
        let running: BTreeSet<String> = self
            .instances
            .values()
            .map(|i| i.version.clone())
            .chain(self.job.running_version().map(str::to_string))
            .collect();
        *lock(&self.shared.in_use) = running.clone();
        if let Some(d) = &target {
            if self.releases_generation != Some(d.generation) || running != self.pruned_with_running
            {
                self.prune_releases().await;
                self.releases_generation = Some(d.generation);
                self.pruned_with_running = running;
            }
        }
        self.publish(&health, target.as_ref());

        if target.is_none() && self.instances.is_empty() && !self.job.is_running() {
            return None;
        }
        let mut after = plan.requeue_after;
        if let Some(wait) = job_wait {
            after = after.min(wait);
        }
        if let Some(at) = self.retry_bind_at {
            after = after.min(at.saturating_duration_since(now));
        }
        Some(after)
    }

    /// Records a finished execution, follows the desired schedule, and starts an execution
    /// when it is due. Returns how long until the next fire.
    fn drive_job(&mut self, target: Option<&DesiredService>) -> Option<Duration> {
        self.job.collect();
        let now = chrono::Utc::now();
        self.job
            .set_spec(target.and_then(|d| d.schedule.as_ref()), now);
        let d = target?;
        if self.agent.is_shutting_down() {
            return None;
        }
        let version = self.job.scheduled_version()?.to_string();
        let wait = self.job.fire_if_due(
            now,
            Launcher {
                fraise: &self.shared.fraise,
                environment: &self.shared.environment,
                release: d.releases.get(&version),
                release_dir: self.agent.releases.dir(&self.shared.fraise, &version),
                secrets: &self.agent.secrets,
                commands: &self.agent.commands,
                wake: &self.shared.wake,
            },
        );
        // Protected from pruning at once, not only at the end of this pass.
        if let Some(v) = self.job.running_version() {
            lock(&self.shared.in_use).insert(v.to_string());
        }
        wait
    }

    /// Binds (or moves) the router to `port`; a taken port is reported and retried.
    async fn bind_router(&mut self, port: Option<u16>, now: Instant) {
        let Some(port) = port else {
            self.router_error = None;
            self.close_router().await;
            return;
        };
        if self.router.as_ref().is_some_and(|r| r.port == port) {
            return;
        }
        if self.retry_bind_at.is_some_and(|at| now < at) {
            return;
        }
        match Router::bind(SocketAddr::new(ROUTER_IP, port)).await {
            Ok(router) => {
                tracing::info!(service = %self.key, port, "router listening");
                let old = self.router.replace(BoundRouter {
                    port,
                    router,
                    table: None,
                });
                if let Some(old) = old {
                    tokio::spawn(old.router.shutdown(ROUTER_GRACE));
                }
                self.router_error = None;
                self.retry_bind_at = None;
            }
            Err(e) => {
                let message = format!("cannot listen on port {port}: {e}");
                if self.router_error.as_deref() != Some(message.as_str()) {
                    tracing::warn!(service = %self.key, "{message}");
                }
                self.router_error = Some(message);
                self.retry_bind_at = Some(now + BIND_RETRY);
            }
        }
    }

    async fn close_router(&mut self) {
        if let Some(bound) = self.router.take() {
            bound.router.shutdown(ROUTER_GRACE).await;
        }
    }

    /// Installs every release the desired state lists. A failure is logged here and shows
    /// on the instances that need that release when they fail to start.
    async fn install_releases(&self, d: &DesiredService) {
        for (version, spec) in &d.releases {
            if let Err(e) = self.agent.releases.ensure(&d.fraise, version, spec).await {
                tracing::warn!(service = %self.key, version, error = %e, "cannot install release");
            }
        }
    }

    /// Keeps the releases any environment of this fraise references or runs, plus the newest
    /// `keep_releases` others.
    async fn prune_releases(&self) {
        let keep = self.agent.referenced_versions(&self.shared.fraise).await;
        let removed = self
            .agent
            .releases
            .prune(&self.shared.fraise, &keep, self.agent.keep_releases)
            .await;
        if !removed.is_empty() {
            tracing::info!(fraise = %self.shared.fraise, ?removed, "pruned releases");
        }
    }

    /// Marks instances whose process exited: crashed (restart after a backoff), or simply
    /// gone if they were draining.
    fn notice_exits(&mut self, now: Instant) {
        for inst in self.instances.values_mut() {
            let Some(process) = inst.process.as_mut() else {
                continue;
            };
            let Some(reason) = process.exited() else {
                continue;
            };
            match inst.phase {
                InstancePhase::Running => {
                    tracing::warn!(service = %self.key, instance = %inst.id, "{reason}");
                    inst.last_error = Some(reason);
                    crash(inst, &self.backoff, now);
                }
                _ => {
                    inst.process = None;
                    inst.pid = None;
                    inst.prober = None;
                    inst.phase = InstancePhase::Crashed { restart_at: now };
                }
            }
        }
    }

    /// Every running process has a prober with the current health check.
    fn ensure_probers(&mut self) {
        let spec = self
            .settings
            .as_ref()
            .and_then(|d| d.health_check.clone())
            .unwrap_or_else(health::default_spec);
        let ids: Vec<String> = self
            .instances
            .values()
            .filter(|i| i.process.is_some() && matches!(i.phase, InstancePhase::Running))
            .filter(|i| i.prober.as_ref().is_none_or(|p| p.spec != spec))
            .map(|i| i.id.clone())
            .collect();
        for id in ids {
            let target = self.probe_target(&self.instances[&id]);
            let inst = self.instances.get_mut(&id).expect("listed above");
            inst.prober = Some(Prober {
                task: health::spawn_prober(
                    spec.clone(),
                    target,
                    inst.health.clone(),
                    self.shared.wake.clone(),
                    self.agent.commands.clone(),
                ),
                spec: spec.clone(),
            });
        }
    }

    fn probe_target(&self, inst: &Instance) -> ProbeTarget {
        let release_dir = self.agent.releases.dir(&self.shared.fraise, &inst.version);
        let spec = self
            .settings
            .as_ref()
            .and_then(|d| d.releases.get(&inst.version));
        // A secret that does not open has kept the instance from starting already.
        let opened = spec.and_then(|s| {
            self.agent
                .secrets
                .open(self.identity(inst), &s.secrets)
                .ok()
        });
        match spec.zip(opened) {
            Some((spec, opened)) => ProbeTarget {
                port: inst.port,
                cwd: process::working_dir(spec, &release_dir),
                env: process::instance_env(
                    spec,
                    self.identity(inst),
                    &release_dir,
                    Some(inst.port),
                    &opened,
                ),
                redact: opened.redactor(),
            },
            None => ProbeTarget {
                port: inst.port,
                cwd: release_dir,
                env: Vec::new(),
                redact: Default::default(),
            },
        }
    }

    fn identity<'a>(&'a self, inst: &'a Instance) -> Identity<'a> {
        Identity {
            fraise: &self.shared.fraise,
            environment: &self.shared.environment,
            version: &inst.version,
            instance: &inst.id,
        }
    }

    fn slots(&self) -> Vec<Slot> {
        self.instances
            .values()
            .map(|i| Slot {
                id: i.id.clone(),
                version: i.version.clone(),
                weight: i.weight,
                phase: match &i.phase {
                    InstancePhase::Running => Phase::Running,
                    InstancePhase::Crashed { restart_at } => Phase::Crashed {
                        restart_at: *restart_at,
                    },
                    InstancePhase::Draining { since, deadline } => Phase::Draining {
                        since: *since,
                        deadline: *deadline,
                        in_flight: self.in_flight(&i.id),
                    },
                    InstancePhase::Stopping(task) => Phase::Stopping {
                        finished: task.is_finished(),
                    },
                },
            })
            .collect()
    }

    fn in_flight(&self, id: &str) -> u64 {
        self.router.as_ref().map_or(0, |r| r.router.in_flight(id))
    }

    async fn apply(&mut self, action: Action, target: Option<&DesiredService>, now: Instant) {
        match action {
            Action::Start {
                id,
                version,
                weight,
            } => {
                let Some(d) = target else { return };
                let port = match pick_port() {
                    Ok(port) => port,
                    Err(e) => {
                        tracing::warn!(service = %self.key, "cannot find a free port: {e}");
                        return;
                    }
                };
                let mut inst = Instance {
                    id: id.clone(),
                    version,
                    weight,
                    port,
                    restarts: 0,
                    history: RestartHistory::default(),
                    process: None,
                    pid: None,
                    health: Arc::default(),
                    prober: None,
                    phase: InstancePhase::Running,
                    last_error: None,
                };
                self.launch(&mut inst, d, now).await;
                self.instances.insert(id, inst);
            }
            Action::Restart { id } => {
                let Some(d) = target else { return };
                let Some(mut inst) = self.instances.remove(&id) else {
                    return;
                };
                inst.restarts += 1;
                self.launch(&mut inst, d, now).await;
                self.instances.insert(id, inst);
            }
            Action::SetWeight { id, weight } => {
                if let Some(inst) = self.instances.get_mut(&id) {
                    inst.weight = weight;
                }
            }
            Action::Drain { id } => {
                let drain = self.settings.as_ref().map_or(0, |d| d.drain_timeout_ms);
                if let Some(inst) = self.instances.get_mut(&id) {
                    tracing::info!(service = %self.key, instance = %id, "draining");
                    inst.phase = InstancePhase::Draining {
                        since: now,
                        deadline: now + Duration::from_millis(drain),
                    };
                }
            }
            Action::Undrain { id, weight } => {
                if let Some(inst) = self.instances.get_mut(&id) {
                    inst.weight = weight;
                    inst.phase = InstancePhase::Running;
                }
            }
            Action::Stop { id } => {
                let grace = self.settings.as_ref().map_or(DEFAULT_STOP_GRACE, |d| {
                    Duration::from_millis(d.stop_grace_ms)
                });
                if let Some(inst) = self.instances.get_mut(&id) {
                    inst.prober = None;
                    let task = match inst.process.take() {
                        Some(p) => tokio::spawn(p.stop(grace)),
                        None => tokio::spawn(async {}),
                    };
                    inst.phase = InstancePhase::Stopping(task);
                }
            }
            Action::Forget { id } => {
                self.instances.remove(&id);
            }
        }
    }

    /// Starts the instance's process (installing its release if needed); on failure the
    /// instance is crashed and will be retried after its backoff.
    async fn launch(&self, inst: &mut Instance, d: &DesiredService, now: Instant) {
        match self.try_launch(inst, d).await {
            Ok(process) => {
                tracing::info!(service = %self.key, instance = %inst.id, version = %inst.version,
                    pid = process.pid, port = inst.port, "instance started");
                inst.pid = Some(Pid {
                    pid: process.pid,
                    start_ticks: process.start_ticks,
                    started_at: process.started_at,
                });
                inst.process = Some(process);
                inst.phase = InstancePhase::Running;
                inst.prober = None;
                lock(&inst.health).restarted();
            }
            Err(e) => {
                tracing::warn!(service = %self.key, instance = %inst.id, "cannot start: {e}");
                inst.last_error = Some(e);
                crash(inst, &self.backoff, now);
            }
        }
    }

    async fn try_launch(
        &self,
        inst: &Instance,
        d: &DesiredService,
    ) -> Result<InstanceProcess, String> {
        let spec = d
            .releases
            .get(&inst.version)
            .ok_or_else(|| format!("no release spec for version {}", inst.version))?;
        self.agent
            .releases
            .ensure(&d.fraise, &inst.version, spec)
            .await
            .map_err(|e| format!("cannot install release {}: {e}", inst.version))?;
        let release_dir = self.agent.releases.dir(&d.fraise, &inst.version);
        let opened = self
            .agent
            .secrets
            .open(self.identity(inst), &spec.secrets)?;
        let env = process::instance_env(
            spec,
            self.identity(inst),
            &release_dir,
            Some(inst.port),
            &opened,
        );
        let cwd = process::working_dir(spec, &release_dir);
        let log = self.agent.dir.log_file(&d.fraise, &d.environment, &inst.id);
        let launch = Launch {
            command: &spec.command,
            cwd: &cwd,
            env: &env,
            log: &log,
        };
        InstanceProcess::spawn(&launch)
            .map_err(|e| format!("cannot run {:?} in {}: {e}", spec.command, cwd.display()))
    }

    /// Gives the router every healthy running instance (weight 0 ones too: they take no new
    /// requests but keep warm connections). Draining instances are left out.
    fn update_router_table(&mut self, health: &BTreeMap<String, HealthTracker>) {
        let Some(bound) = self.router.as_mut() else {
            return;
        };
        let table: Vec<Backend> = self
            .instances
            .values()
            .filter(|i| matches!(i.phase, InstancePhase::Running) && i.process.is_some())
            .filter(|i| {
                health
                    .get(&i.id)
                    .is_some_and(|h| h.health == Health::Healthy)
            })
            .map(|i| Backend {
                id: i.id.clone(),
                version: i.version.clone(),
                addr: SocketAddr::from(([127, 0, 0, 1], i.port)),
                weight: i.weight,
            })
            .collect();
        if bound.table.as_ref() != Some(&table) {
            bound.router.set_backends(table.clone());
            bound.table = Some(table);
        }
    }

    async fn persist_records(&self, health: &BTreeMap<String, HealthTracker>) {
        let records: Vec<InstanceRecord> = self
            .instances
            .values()
            .filter_map(|i| {
                let pid = i.pid?;
                Some(InstanceRecord {
                    fraise: self.shared.fraise.clone(),
                    environment: self.shared.environment.clone(),
                    id: i.id.clone(),
                    version: i.version.clone(),
                    weight: i.weight,
                    pid: pid.pid,
                    start_ticks: pid.start_ticks,
                    port: i.port,
                    started_at: pid.started_at,
                    restarts: i.restarts,
                    healthy: health
                        .get(&i.id)
                        .is_some_and(|h| h.health == Health::Healthy),
                    draining: !matches!(i.phase, InstancePhase::Running),
                })
            })
            .collect();
        if let Err(e) = self.agent.book.update(&self.key, records).await {
            tracing::error!(service = %self.key, "cannot write instance records: {e}");
        }
    }

    fn publish(&self, health: &BTreeMap<String, HealthTracker>, target: Option<&DesiredService>) {
        let instances = self
            .instances
            .values()
            .map(|i| {
                let h = health.get(&i.id).cloned().unwrap_or_default();
                let (state, weight) = match &i.phase {
                    InstancePhase::Running => (
                        match h.health {
                            Health::Starting => InstanceState::Starting,
                            Health::Healthy => InstanceState::Healthy,
                            Health::Unhealthy => InstanceState::Unhealthy,
                        },
                        i.weight,
                    ),
                    InstancePhase::Crashed { .. } => (InstanceState::Crashed, i.weight),
                    InstancePhase::Draining { .. } | InstancePhase::Stopping(_) => {
                        (InstanceState::Draining, 0)
                    }
                };
                let last_error = match state {
                    InstanceState::Crashed => i.last_error.clone(),
                    _ => h.last_error.clone().or_else(|| i.last_error.clone()),
                };
                ObservedInstance {
                    id: i.id.clone(),
                    version: i.version.clone(),
                    pid: i.pid.map(|p| p.pid),
                    port: Some(i.port),
                    state,
                    weight,
                    restarts: i.restarts,
                    started_at: i.pid.map(|p| p.started_at),
                    last_check_at: h.last_check_at,
                    checks_passed: h.checks_passed,
                    checks_total: h.checks_total,
                    last_error,
                    in_flight: self.in_flight(&i.id),
                }
            })
            .collect();
        let observed = ObservedService {
            fraise: self.shared.fraise.clone(),
            environment: self.shared.environment.clone(),
            generation: self.applied_generation,
            port: target
                .and_then(|d| d.port)
                .or(self.router.as_ref().map(|r| r.port)),
            listening: self.router.is_some(),
            router_error: self.router_error.clone(),
            instances,
            metrics: self
                .router
                .as_ref()
                .map(|r| r.router.metrics())
                .unwrap_or_default(),
            releases: self.agent.releases.installed(&self.shared.fraise),
            schedule: self.job.observed(),
        };
        *lock(&self.shared.observed) = observed;
    }
}

/// The instance has no process any more: schedule its restart after the backoff.
fn crash(inst: &mut Instance, backoff: &Backoff, now: Instant) {
    let healthy_since = lock(&inst.health).healthy_since;
    let (history, restart_at) = backoff.on_exit(inst.history, healthy_since, now);
    inst.history = history;
    inst.process = None;
    inst.pid = None;
    inst.prober = None;
    lock(&inst.health).restarted();
    inst.phase = InstancePhase::Crashed { restart_at };
}

/// A free loopback port for an instance: bind port 0 and let the kernel choose.
fn pick_port() -> std::io::Result<u16> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
    Ok(listener.local_addr()?.port())
}
