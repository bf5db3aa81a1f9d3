//! The agent process: claiming the state directory, re-adopting what a previous agent left
//! running, announcing itself in `agent.json`, the state its tasks share, and shutdown.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use fraisier_model::service::{service_key, AgentInfo, DesiredService};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::admission::check_desired;
use crate::error::AgentError;
use crate::exec::RunningCommands;
use crate::health::http_get;
use crate::process::InstanceProcess;
use crate::reconcile::{run_service, Adopted, ServiceShared, DEFAULT_STOP_GRACE};
use crate::release::ReleaseStore;
use crate::state_dir::{
    cap_logs, read_json, write_json_atomic, InstanceBook, InstanceRecord, StateDir,
    PRIVATE_FILE_MODE,
};
use crate::{control, AgentOptions};

/// Logs larger than this are copied aside once and emptied (see `state_dir::cap_logs`).
const LOG_CAP_BYTES: u64 = 32 * 1024 * 1024;
const LOG_CAP_EVERY: Duration = Duration::from_secs(30);

/// How long a previous agent gets to answer before it is considered gone.
const PROBE_PREVIOUS: Duration = Duration::from_secs(2);

/// What every task of the agent shares.
pub(crate) struct Agent {
    pub dir: StateDir,
    pub releases: ReleaseStore,
    pub keep_releases: usize,
    pub info: AgentInfo,
    /// Services by `fraise/environment`. Held across a PUT's persist so that generation
    /// checks and writes of one service never interleave.
    pub services: tokio::sync::Mutex<BTreeMap<String, Arc<ServiceShared>>>,
    pub book: InstanceBook,
    pub commands: Arc<RunningCommands>,
    pub secrets: crate::secrets::AgentSecrets,
    shutting_down: AtomicBool,
    /// Held for the whole of a shutdown, so that a second caller returns only when it is done.
    shutdown_lock: tokio::sync::Mutex<()>,
    /// Reconcilers and orphan stops, awaited by shutdown.
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Set once shutdown finished: the control API stops serving.
    stopped: watch::Sender<bool>,
}

// === impl Agent ===

impl Agent {
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    /// Registers a new service and starts its reconciler. Call with the registry locked.
    pub fn start_service(
        self: &Arc<Self>,
        registry: &mut BTreeMap<String, Arc<ServiceShared>>,
        desired: DesiredService,
        adopted: Vec<Adopted>,
    ) -> Arc<ServiceShared> {
        let (fraise, environment) = (desired.fraise.clone(), desired.environment.clone());
        let shared = Arc::new(ServiceShared::new(&fraise, &environment, Some(desired)));
        registry.insert(shared.key(), shared.clone());
        let task = tokio::spawn(run_service(self.clone(), shared.clone(), adopted));
        self.track(task);
        shared
    }

    /// Called by a reconciler that has nothing left to run. Removes the service unless a
    /// PUT made it desired again; returns whether the reconciler should end.
    pub async fn forget_service(&self, shared: &Arc<ServiceShared>) -> bool {
        let mut registry = self.services.lock().await;
        if shared.desired().is_some() && !self.is_shutting_down() {
            return false;
        }
        let key = shared.key();
        if registry.get(&key).is_some_and(|s| Arc::ptr_eq(s, shared)) {
            registry.remove(&key);
        }
        true
    }

    /// Versions of `fraise` that some environment wants kept or still runs.
    pub async fn referenced_versions(&self, fraise: &str) -> BTreeSet<String> {
        let registry = self.services.lock().await;
        let mut keep = BTreeSet::new();
        for shared in registry.values().filter(|s| s.fraise == fraise) {
            if let Some(d) = shared.desired().as_ref() {
                keep.extend(d.releases.keys().cloned());
            }
            keep.extend(
                shared
                    .in_use
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .iter()
                    .cloned(),
            );
        }
        keep
    }

    /// Drains and stops every instance of every service, closes the routers and removes
    /// `agent.json`. Concurrent calls all wait for the one shutdown.
    pub async fn shutdown(&self) {
        let _one_at_a_time = self.shutdown_lock.lock().await;
        if !self.shutting_down.swap(true, Ordering::SeqCst) {
            tracing::info!("shutting down: draining every service");
        }
        self.commands.kill_all();
        for shared in self.services.lock().await.values() {
            shared.wake.notify_one();
        }
        loop {
            let pending: Vec<JoinHandle<()>> =
                std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|e| e.into_inner()));
            if pending.is_empty() {
                break;
            }
            for task in pending {
                let _ = task.await;
            }
        }
        self.remove_agent_info();
        let _ = self.stopped.send(true);
    }

    fn track(&self, task: JoinHandle<()>) {
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        tasks.retain(|t| !t.is_finished());
        tasks.push(task);
    }

    /// Removes `agent.json` if it is still ours (a newer agent may own the directory).
    fn remove_agent_info(&self) {
        let path = self.dir.agent_info();
        let ours = read_json::<AgentInfo>(&path)
            .ok()
            .flatten()
            .is_some_and(|i| i.pid == self.info.pid && i.token == self.info.token);
        if ours {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Runs the agent until `POST /v1/shutdown` completes, or until SIGTERM/SIGINT, which leave
/// the instances running for the next agent to re-adopt (an agent upgrade or restart does not
/// stop the services; only an explicit shutdown does).
pub(crate) async fn run(opts: AgentOptions) -> Result<(), AgentError> {
    if !opts.listen.ip().is_loopback() {
        return Err(AgentError::NotLoopback(opts.listen));
    }
    let dir = StateDir::new(&opts.state_dir);
    dir.create().map_err(|source| AgentError::StateDir {
        path: opts.state_dir.clone(),
        source,
    })?;
    let _lock = claim(&dir).await?;

    let releases = ReleaseStore::new(
        dir.releases_dir(),
        Arc::new(crate::fetch::Fetcher::load(dir.server_link())),
    );
    releases.remove_debris();
    if let Some(join) = &opts.join {
        let link = crate::membership::join(&dir, join).await?;
        let record = dir.server_link();
        releases
            .fetcher()
            .link(link)
            .map_err(|source| AgentError::StateDir {
                path: record,
                source,
            })?;
    }
    let desired = load_desired(&dir);
    let records: Vec<InstanceRecord> = read_json(&dir.instances_file())
        .unwrap_or_else(|e| {
            tracing::error!("ignoring unreadable instance records: {e}");
            None
        })
        .unwrap_or_default();
    let (adopted, adopted_records) = adopt(records);

    let listener = TcpListener::bind(opts.listen)
        .await
        .map_err(|source| AgentError::Bind {
            addr: opts.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| AgentError::Bind {
        addr: opts.listen,
        source,
    })?;
    let info = AgentInfo {
        pid: std::process::id(),
        control_url: format!("http://{addr}"),
        token: fresh_token()?,
        version: env!("CARGO_PKG_VERSION").to_string(),
        started_at: Utc::now(),
    };
    let secrets = crate::secrets::AgentSecrets::load(opts.secret_keys.clone())?;
    let (stopped, mut stopped_rx) = watch::channel(false);
    let agent = Arc::new(Agent {
        releases,
        keep_releases: opts.keep_releases,
        info: info.clone(),
        services: tokio::sync::Mutex::default(),
        book: InstanceBook::new(dir.instances_file(), adopted_records),
        commands: Arc::default(),
        secrets,
        shutting_down: AtomicBool::new(false),
        shutdown_lock: tokio::sync::Mutex::default(),
        tasks: Mutex::default(),
        stopped,
        dir,
    });

    start_services(&agent, desired, adopted).await;
    crate::membership::spawn_heartbeats(agent.clone());
    if opts.join.is_some() {
        crate::stream::spawn(agent.clone());
    }
    let logs_of = agent.dir.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(LOG_CAP_EVERY);
        loop {
            every.tick().await;
            let dir = logs_of.clone();
            let _ = tokio::task::spawn_blocking(move || cap_logs(&dir, LOG_CAP_BYTES)).await;
        }
    });
    write_json_atomic(&agent.dir.agent_info(), &info, PRIVATE_FILE_MODE).map_err(|source| {
        AgentError::StateDir {
            path: agent.dir.agent_info(),
            source,
        }
    })?;
    tracing::info!(control_url = %info.control_url, pid = info.pid, "agent listening");

    let app = control::routes(agent.clone());
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(AgentError::Serve)?;
    let detached = Arc::new(AtomicBool::new(false));
    let detach = detached.clone();
    let until = async move {
        tokio::select! {
            _ = stopped_rx.wait_for(|s| *s) => {}
            _ = terminate.recv() => detach.store(true, Ordering::SeqCst),
            _ = tokio::signal::ctrl_c() => detach.store(true, Ordering::SeqCst),
        }
    };
    axum::serve(listener, app)
        .with_graceful_shutdown(until)
        .await
        .map_err(AgentError::Serve)?;
    if detached.load(Ordering::SeqCst) {
        tracing::info!("signalled: leaving instances running for the next agent");
        agent.remove_agent_info();
    }
    Ok(())
}

/// Takes the state directory's lock; refuses when another live agent holds it (or, without
/// the lock, when the agent named in `agent.json` is alive and answers).
async fn claim(dir: &StateDir) -> Result<File, AgentError> {
    let path = dir.lock_file();
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(PRIVATE_FILE_MODE)
        .open(&path)
        .map_err(|source| AgentError::StateDir {
            path: path.clone(),
            source,
        })?;
    let locked =
        crate::signal::try_lock_exclusive(&file).map_err(|source| AgentError::StateDir {
            path: path.clone(),
            source,
        })?;
    let previous: Option<AgentInfo> = read_json(&dir.agent_info()).ok().flatten();
    let refuse = |info: Option<&AgentInfo>| AgentError::AlreadyRunning {
        dir: dir.root().to_path_buf(),
        pid: info.map(|i| i.pid),
        control_url: info.map(|i| i.control_url.clone()),
    };
    if !locked {
        return Err(refuse(previous.as_ref()));
    }
    if let Some(info) = previous.as_ref().filter(|i| i.pid != std::process::id()) {
        if crate::process::is_running(info.pid) && answers(info).await {
            return Err(refuse(Some(info)));
        }
        // A dead agent's announcement: ours replaces it once we listen.
    }
    Ok(file)
}

/// Whether the agent behind `info` answers on its control URL at all (any HTTP status).
async fn answers(info: &AgentInfo) -> bool {
    let Some(addr) = info
        .control_url
        .strip_prefix("http://")
        .and_then(|a| a.parse::<SocketAddr>().ok())
    else {
        return false;
    };
    http_get(addr, "/v1/health", Some(&info.token), PROBE_PREVIOUS)
        .await
        .is_ok()
}

fn fresh_token() -> Result<String, AgentError> {
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes)
        .map_err(|e| AgentError::Serve(io::Error::other(e.to_string())))?;
    Ok(hex::encode(bytes))
}

/// Reads `desired/*.json`; an unreadable file is logged and skipped rather than keeping the
/// agent (and every other service) down.
fn load_desired(dir: &StateDir) -> Vec<DesiredService> {
    let Ok(entries) = std::fs::read_dir(dir.desired_dir()) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let path: PathBuf = entry.path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        match read_json::<DesiredService>(&path) {
            // Files are written only after admission, but may have been edited by hand since.
            Ok(Some(d)) => match check_desired(&d.fraise, &d.environment, &d) {
                Ok(()) => out.push(d),
                Err(r) => tracing::error!(
                    "skipping desired state {}: {}: {}",
                    path.display(),
                    r.field,
                    r.message
                ),
            },
            Ok(None) => {}
            Err(e) => tracing::error!("skipping desired state {}: {e}", path.display()),
        }
    }
    out
}

/// Finds the recorded instances that still run (same pid, same start time).
fn adopt(records: Vec<InstanceRecord>) -> (Vec<Adopted>, Vec<InstanceRecord>) {
    let mut adopted = Vec::new();
    let mut kept = Vec::new();
    for record in records {
        match InstanceProcess::adopt(record.pid, record.start_ticks, record.started_at) {
            Some(process) => {
                tracing::info!(instance = %record.id, pid = record.pid, "re-adopted instance");
                kept.push(record.clone());
                adopted.push(Adopted { record, process });
            }
            None => {
                tracing::info!(instance = %record.id, pid = record.pid, "recorded instance is gone")
            }
        }
    }
    (adopted, kept)
}

/// Starts a reconciler per desired service, handing it its re-adopted instances; instances
/// of services no longer desired are stopped.
async fn start_services(agent: &Arc<Agent>, desired: Vec<DesiredService>, adopted: Vec<Adopted>) {
    let mut by_service: BTreeMap<String, Vec<Adopted>> = BTreeMap::new();
    for a in adopted {
        by_service
            .entry(service_key(&a.record.fraise, &a.record.environment))
            .or_default()
            .push(a);
    }
    let mut registry = agent.services.lock().await;
    for d in desired {
        let mine = by_service.remove(&d.key()).unwrap_or_default();
        agent.start_service(&mut registry, d, mine);
    }
    drop(registry);
    for (key, orphans) in by_service {
        tracing::info!(service = %key, "stopping instances of a service no longer desired");
        let agent2 = agent.clone();
        let task = tokio::spawn(async move {
            for Adopted { process, .. } in orphans {
                process.stop(DEFAULT_STOP_GRACE).await;
            }
            if let Err(e) = agent2.book.update(&key, Vec::new()).await {
                tracing::error!("cannot write instance records: {e}");
            }
        });
        agent.track(task);
    }
}
