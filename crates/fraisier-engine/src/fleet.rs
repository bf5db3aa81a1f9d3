//! Where a fraise's instances run: the agents its `targets` select, seen by the engine as one
//! provider. The fleet hands each agent its share of a desired state (the instances naming
//! it) and merges what they observe — instances side by side, router counters summed, the
//! oldest generation — so that every gate judges all targets at once.
//!
//! A fraise without `targets` runs on the server's own agent, `local`, exactly as before:
//! with one target the fleet passes calls through unchanged.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use async_trait::async_trait;
use chrono::Utc;
use fraisier_model::agent::{matches, AgentStatus, LOCAL};
use fraisier_model::config::TargetSelector;
use fraisier_model::names::split_agent_name;
use fraisier_model::service::{
    service_key, DesiredInstance, DesiredService, ExecRequest, ExecResult, ObservedService,
};
use fraisier_model::Millis;
use fraisier_store::{Agent, Store, Target};

use crate::provider::{Provider, ProviderError};

/// Acts on registered agents other than the server's own: the server's task streams.
pub trait Connector: Send + Sync + 'static {
    fn agent(&self, id: i64, name: &str) -> Arc<dyn Provider>;
}

pub struct Fleet {
    local: Arc<dyn Provider>,
    connector: OnceLock<Arc<dyn Connector>>,
    store: Store,
    config: Arc<crate::environments::LiveConfig>,
    /// Targets each service's instances were last handed to (by service key), so that a
    /// target left with none is told to stop them.
    handed: Mutex<HashMap<String, BTreeSet<String>>>,
    /// Services being restored (by key), with the targets passed over because they are
    /// lost: a rollback puts back what it can reach, and a lost target gets the restored
    /// state when it returns (`rejoined`).
    passing_over: Mutex<HashMap<String, BTreeSet<String>>>,
}

// === impl Fleet ===

impl Fleet {
    pub fn new(
        local: Arc<dyn Provider>,
        store: Store,
        config: Arc<crate::environments::LiveConfig>,
    ) -> Fleet {
        Fleet {
            local,
            connector: OnceLock::new(),
            store,
            config,
            handed: Mutex::default(),
            passing_over: Mutex::default(),
        }
    }

    /// Lets the fleet reach agents that joined (set once, by the server).
    pub fn connect(&self, connector: Arc<dyn Connector>) {
        let _ = self.connector.set(connector);
    }

    fn offline_after(&self) -> Millis {
        self.config.current().server.agent_offline_after
    }

    /// The agents a fraise's new instances go to in an environment, by name: those its
    /// `targets` select that are online (not offline, not draining). Empty when it has no
    /// `targets`: the server's own agent, whose instances name no target.
    pub async fn select(
        &self,
        workspace: &str,
        fraise: &str,
        environment: &str,
    ) -> Result<Vec<String>, ProviderError> {
        let Some(selector) = self.selector(workspace, fraise, environment) else {
            return Ok(Vec::new());
        };
        let now = Utc::now();
        let agents = self.agents(workspace).await?;
        // Described targets were refused when the deploy was asked for; a rollback (or a
        // run approved since) goes to the agents among them.
        let placed = self
            .placed(workspace, environment, &selector, &agents)
            .await
            .map_err(|m| ProviderError::Rejected(m.to_string()))?;
        let chosen: Vec<String> = placed
            .agents
            .iter()
            .filter(|a| a.status(now, self.offline_after()) == AgentStatus::Online)
            .map(|a| a.name.clone())
            .collect();
        if chosen.is_empty() {
            return Err(ProviderError::Rejected(format!(
                "no online agent of workspace {workspace} is among {} that {fraise} in {environment} is placed on (see GET /api/v1/targets)",
                describe(&selector)
            )));
        }
        Ok(chosen)
    }

    /// Refuses a placement no run could carry out: a target group that does not exist, or
    /// a target of a type Fraisier has no provider for. (Agents offline now are judged when
    /// the run starts.)
    pub async fn check_placement(
        &self,
        workspace: &str,
        fraise: &str,
        environment: &str,
    ) -> Result<(), Misplaced> {
        let Some(selector) = self.selector(workspace, fraise, environment) else {
            return Ok(());
        };
        let agents = self
            .agents(workspace)
            .await
            .map_err(|e| Misplaced::Unreadable(e.to_string()))?;
        let placed = self
            .placed(workspace, environment, &selector, &agents)
            .await?;
        match placed.described.into_iter().next() {
            Some(t) => Err(Misplaced::Unsupported(Box::new(t))),
            None => Ok(()),
        }
    }

    /// What a selector picks in an environment, whatever its status: agents, and targets
    /// described as data (which no provider can deploy to yet).
    async fn placed(
        &self,
        workspace: &str,
        environment: &str,
        selector: &TargetSelector,
        agents: &[Agent],
    ) -> Result<Placed, Misplaced> {
        let described = self
            .store
            .targets(workspace)
            .await
            .map_err(|e| Misplaced::Unreadable(format!("cannot read the targets: {e}")))?
            .into_iter()
            .filter(|t| t.environment.as_deref().is_none_or(|e| e == environment));
        // Labels in fraisier.yaml pick agents only: a target described with matching labels
        // would otherwise block every deploy placed by them, in every environment. Described
        // targets count when a group holds them.
        let Some(name) = &selector.group else {
            return Ok(Placed {
                agents: agents
                    .iter()
                    .filter(|a| matches(&a.labels, &selector.labels))
                    .cloned()
                    .collect(),
                described: Vec::new(),
            });
        };
        let group = self
            .store
            .target_group_named(workspace, environment, name)
            .await
            .map_err(|e| Misplaced::Unreadable(format!("cannot read the target groups: {e}")))?
            .ok_or_else(|| Misplaced::NoGroup {
                group: name.clone(),
                environment: environment.to_string(),
            })?;
        // Members, and — when the group has labels — every target carrying them.
        let by_labels = |labels: &fraisier_model::agent::Labels| {
            !group.labels.is_empty() && matches(labels, &group.labels)
        };
        Ok(Placed {
            agents: agents
                .iter()
                .filter(|a| {
                    group.members.contains(&format!("agt_{}", a.id)) || by_labels(&a.labels)
                })
                .cloned()
                .collect(),
            described: described
                .filter(|t| group.members.contains(&t.reference()) || by_labels(&t.labels))
                .collect(),
        })
    }

    /// The agents an environment's fraises are placed on (all that their `targets` select,
    /// whatever their status; `local` for those placed nowhere else), with their status.
    pub async fn hosts(
        &self,
        workspace: &str,
        environment: &str,
    ) -> Result<Vec<(String, AgentStatus)>, ProviderError> {
        let agents = self.agents(workspace).await?;
        let mut names = BTreeSet::new();
        let config = self.config.current();
        for f in config.scope(workspace).fraises.values() {
            let Some(fe) = f.environments.get(environment) else {
                continue;
            };
            match &fe.targets {
                None => {
                    names.insert(LOCAL.to_string());
                }
                // A group not made yet places it nowhere.
                Some(t) => {
                    if let Ok(p) = self.placed(workspace, environment, t, &agents).await {
                        names.extend(p.agents.into_iter().map(|a| a.name));
                    }
                }
            }
        }
        if names.is_empty() {
            names.insert(LOCAL.to_string());
        }
        let now = Utc::now();
        Ok(names
            .into_iter()
            .map(|n| {
                let status =
                    agents
                        .iter()
                        .find(|a| a.name == n)
                        .map_or(AgentStatus::Offline, |a| {
                            AgentStatus::judge(
                                a.last_heartbeat_at,
                                a.draining,
                                now,
                                self.offline_after(),
                            )
                        });
                (n, status)
            })
            .collect())
    }

    /// The agents of a workspace that are offline now (by heartbeat), by name.
    pub async fn offline(&self, workspace: &str) -> Result<BTreeSet<String>, ProviderError> {
        let now = Utc::now();
        Ok(self
            .agents(workspace)
            .await?
            .into_iter()
            .filter(|a| a.status(now, self.offline_after()) == AgentStatus::Offline)
            .map(|a| a.name)
            .collect())
    }

    /// An agent (re)connected: it is handed its share of every desired state it is part of
    /// — named by instances, or selected by labels — so that one cut off while its instances
    /// were moved elsewhere stops them, and one that lost its state gets it back. Services a
    /// run is moving are left to the run.
    pub async fn rejoined(&self, workspace: &str, agent: &str) {
        let Ok(services) = self.store.all_services().await else {
            return;
        };
        for s in services.into_iter().filter(|s| s.tenant_id == workspace) {
            let Some(desired) = s.desired else { continue };
            let named = desired
                .instances
                .iter()
                .any(|i| i.target.as_deref() == Some(agent));
            let selected = self
                .candidates(&s.tenant_id, &s.fraise, &s.environment)
                .await
                .is_ok_and(|c| c.contains(agent));
            if !named && !selected {
                continue;
            }
            let moving = self
                .store
                .active_run_for(&s.tenant_id, &s.fraise, &s.environment)
                .await
                .ok()
                .flatten()
                .is_some_and(|r| !crate::awaits_approval(&r));
            if moving {
                continue;
            }
            let only = BTreeSet::from([agent.to_string()]);
            let Some(share) = split(&desired, &only).remove(agent) else {
                continue;
            };
            let applied = match self.provider(workspace, agent).await {
                Ok(p) => p.apply(&share).await.map(|_| ()),
                Err(e) => Err(e),
            };
            match applied {
                Ok(()) => {
                    tracing::info!(%agent, fraise = %s.fraise, environment = %s.environment, instances = share.instances.len(), "handed a rejoining agent its share")
                }
                Err(e) => {
                    tracing::warn!(%agent, fraise = %s.fraise, error = %e, "cannot hand a rejoining agent its share")
                }
            }
        }
    }

    /// Every agent a service may have instances on: those its `targets` select, whatever
    /// their status, or `local`.
    async fn candidates(
        &self,
        workspace: &str,
        fraise: &str,
        environment: &str,
    ) -> Result<BTreeSet<String>, ProviderError> {
        let Some(selector) = self.selector(workspace, fraise, environment) else {
            return Ok(BTreeSet::from([LOCAL.to_string()]));
        };
        let agents = self.agents(workspace).await?;
        match self
            .placed(workspace, environment, &selector, &agents)
            .await
        {
            Ok(p) => Ok(p.agents.into_iter().map(|a| a.name).collect()),
            // A group deleted or not made yet places it nowhere new; what it ran stays
            // known by the instances that name their targets.
            Err(Misplaced::NoGroup { .. }) => Ok(BTreeSet::new()),
            Err(m) => Err(ProviderError::Rejected(m.to_string())),
        }
    }

    fn selector(&self, workspace: &str, fraise: &str, environment: &str) -> Option<TargetSelector> {
        self.config
            .current()
            .scope(workspace)
            .fraises
            .get(fraise)?
            .environments
            .get(environment)?
            .targets
            .clone()
    }

    async fn agents(&self, workspace: &str) -> Result<Vec<Agent>, ProviderError> {
        self.store
            .agents(workspace)
            .await
            .map_err(|e| ProviderError::Unreachable(format!("cannot read the agents: {e}")))
    }

    /// The provider that acts on one agent, by name (for a check that asks it now).
    pub async fn agent_provider(
        &self,
        workspace: &str,
        agent: &str,
    ) -> Result<Arc<dyn Provider>, ProviderError> {
        self.provider(workspace, agent).await
    }

    /// The provider of one target, by agent name.
    async fn provider(
        &self,
        workspace: &str,
        target: &str,
    ) -> Result<Arc<dyn Provider>, ProviderError> {
        if target == LOCAL {
            return Ok(self.local.clone());
        }
        self.provider_among(&self.agents(workspace).await?, target)
    }

    /// The workspace's agents, read only when some target is not the server's own (the
    /// single-host path reads nothing).
    async fn agents_for(
        &self,
        workspace: &str,
        targets: &BTreeSet<String>,
    ) -> Result<Vec<Agent>, ProviderError> {
        if targets.iter().all(|t| t == LOCAL) {
            return Ok(Vec::new());
        }
        self.agents(workspace).await
    }

    /// [`Fleet::provider`] among agents already read: one read per call, not per target.
    fn provider_among(
        &self,
        agents: &[Agent],
        target: &str,
    ) -> Result<Arc<dyn Provider>, ProviderError> {
        if target == LOCAL {
            return Ok(self.local.clone());
        }
        let agent = agents.iter().find(|a| a.name == target).ok_or_else(|| {
            ProviderError::Unreachable(format!("agent {target} is no longer registered (revoked?)"))
        })?;
        let connector = self.connector.get().ok_or_else(|| {
            ProviderError::Unreachable(format!("this server cannot reach agent {target}"))
        })?;
        Ok(connector.agent(agent.id, &agent.name))
    }

    /// From now on (`on`) until told otherwise, a target of this service that is lost is
    /// passed over by `apply` and `observe` instead of failing them.
    pub fn pass_over_lost(&self, key: &str, on: bool) {
        let mut p = self
            .passing_over
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if on {
            p.insert(key.to_string(), BTreeSet::new());
        } else {
            p.remove(key);
        }
    }

    /// The targets passed over since `pass_over_lost` was turned on.
    pub fn passed_over(&self, key: &str) -> BTreeSet<String> {
        self.passing_over
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            .cloned()
            .unwrap_or_default()
    }

    /// Whether this error of this target is passed over (and records it). Only a target
    /// *lost* (no task stream for longer than `agent_offline_after`) is: one merely slow or
    /// unreachable for a moment — the local agent under load — is retried as before.
    fn pass_over(&self, key: &str, target: &str, e: &ProviderError) -> bool {
        if !matches!(e, ProviderError::Lost(_)) {
            return false;
        }
        match self
            .passing_over
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_mut(key)
        {
            Some(set) => {
                set.insert(target.to_string());
                true
            }
            None => false,
        }
    }

    fn handed(&self, key: &str) -> BTreeSet<String> {
        self.handed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            .cloned()
            .unwrap_or_default()
    }

    /// Where a service's instances are: the targets last handed some, else those its stored
    /// desired state names, else where new ones would go.
    async fn holders(
        &self,
        workspace: &str,
        fraise: &str,
        environment: &str,
        key: &str,
    ) -> Result<BTreeSet<String>, ProviderError> {
        let handed = self.handed(key);
        if !handed.is_empty() {
            return Ok(handed);
        }
        if let Ok(Some(record)) = self.store.service(workspace, fraise, environment).await {
            if let Some(d) = record.desired.filter(|d| !d.instances.is_empty()) {
                return Ok(d.instances.iter().map(target_of).collect());
            }
        }
        match self.select(workspace, fraise, environment).await {
            Ok(v) if v.is_empty() => Ok(BTreeSet::from([LOCAL.to_string()])),
            Ok(v) => Ok(v.into_iter().collect()),
            // Placed by labels no online agent carries: nothing runs anywhere yet.
            Err(_) => Ok(BTreeSet::new()),
        }
    }
}

/// What a selector picks.
struct Placed {
    agents: Vec<Agent>,
    described: Vec<Target>,
}

/// Why a fraise cannot be placed where its `targets` say.
#[derive(Debug, thiserror::Error)]
pub enum Misplaced {
    #[error("no target group {group:?} in {environment} (create it with POST /api/v1/environments/{environment}/target-groups)")]
    NoGroup { group: String, environment: String },
    #[error("target {} is a {}: Fraisier has no provider for {} targets yet; only fraisier_agent targets run fraises", .0.name, .0.kind, .0.kind)]
    Unsupported(Box<Target>),
    #[error("{0}")]
    Unreadable(String),
}

fn describe(selector: &TargetSelector) -> String {
    match &selector.group {
        Some(g) => format!("the target group {g}"),
        None => format!(
            "the agents carrying {}",
            selector
                .labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",")
        ),
    }
}

pub fn target_of(i: &DesiredInstance) -> String {
    i.target.clone().unwrap_or_else(|| LOCAL.to_string())
}

/// Each target's share of a desired state: the instances naming it (none for a target that
/// holds instances no longer wanted). A schedule runs on one target only, the first.
pub fn split(
    desired: &DesiredService,
    also: &BTreeSet<String>,
) -> BTreeMap<String, DesiredService> {
    let mut shares: BTreeMap<String, DesiredService> = BTreeMap::new();
    let empty = || DesiredService {
        instances: Vec::new(),
        schedule: None,
        ..desired.clone()
    };
    for t in also {
        shares.entry(t.clone()).or_insert_with(empty);
    }
    for i in &desired.instances {
        shares
            .entry(target_of(i))
            .or_insert_with(empty)
            .instances
            .push(i.clone());
    }
    if shares.is_empty() {
        shares.insert(LOCAL.to_string(), empty());
    }
    // The schedule goes with the instances if there are any, else to the first target.
    let runs_schedule = shares
        .iter()
        .find(|(_, s)| !s.instances.is_empty())
        .or_else(|| shares.iter().next())
        .map(|(t, _)| t.clone());
    for (t, share) in shares.iter_mut() {
        if Some(t) == runs_schedule.as_ref() {
            share.schedule = desired.schedule.clone();
        } else if share.instances.is_empty() {
            // A target that holds nothing needs no release: no env, no sealed secrets.
            share.releases.clear();
        }
    }
    shares
}

/// One observation of a service across targets: instances side by side, router counters
/// summed, the oldest generation (converged only when every target is), listening only when
/// every router is, and only the releases every target holds.
pub fn merge(
    fraise: &str,
    environment: &str,
    seen: Vec<(String, Option<ObservedService>)>,
) -> Option<ObservedService> {
    if seen.iter().all(|(_, o)| o.is_none()) {
        return None;
    }
    if let [(_, Some(only))] = seen.as_slice() {
        return Some(only.clone());
    }
    let mut out = ObservedService {
        fraise: fraise.to_string(),
        environment: environment.to_string(),
        generation: u64::MAX,
        listening: true,
        ..ObservedService::default()
    };
    let mut releases: Option<Vec<fraisier_model::service::InstalledRelease>> = None;
    for (target, o) in seen {
        let Some(o) = o else {
            out.generation = 0;
            out.listening = false;
            releases = Some(Vec::new());
            continue;
        };
        out.generation = out.generation.min(o.generation);
        out.port = out.port.or(o.port);
        out.listening &= o.listening;
        if out.router_error.is_none() {
            out.router_error = o.router_error.map(|e| format!("{target}: {e}"));
        }
        out.instances.extend(o.instances);
        for (version, m) in o.metrics {
            out.metrics.entry(version).or_default().add(&m);
        }
        releases = Some(match releases {
            None => o.releases,
            Some(kept) => kept
                .into_iter()
                .filter(|r| o.releases.iter().any(|x| x.version == r.version))
                .collect(),
        });
        if out.schedule.is_none() {
            out.schedule = o.schedule;
        }
    }
    out.releases = releases.unwrap_or_default();
    Some(out)
}

#[async_trait]
impl Provider for Fleet {
    async fn apply(&self, desired: &DesiredService) -> Result<ObservedService, ProviderError> {
        let (workspace, fraise) = split_agent_name(&desired.fraise);
        let key = service_key(&desired.fraise, &desired.environment);
        let mut also = self.handed(&key);
        if also.is_empty() {
            // Not handed anything by this process yet (it restarted): every agent the
            // service may be on is told — whatever its status — so that none keeps
            // instances no longer wanted.
            also = self
                .candidates(workspace, fraise, &desired.environment)
                .await?;
        }
        self.apply_all(workspace, &key, desired, &also).await
    }

    async fn observe(
        &self,
        fraise: &str,
        environment: &str,
    ) -> Result<Option<ObservedService>, ProviderError> {
        let (workspace, name) = split_agent_name(fraise);
        let key = service_key(fraise, environment);
        let holders = self.holders(workspace, name, environment, &key).await?;
        let agents = self.agents_for(workspace, &holders).await?;
        let mut seen = Vec::new();
        let passed = self.passed_over(&key);
        for target in holders {
            if passed.contains(&target) {
                continue;
            }
            let p = self.provider_among(&agents, &target)?;
            match p.observe(fraise, environment).await {
                Ok(o) => seen.push((target, o)),
                Err(e) if self.pass_over(&key, &target, &e) => {
                    tracing::warn!(agent = %target, error = %e, "passing over a lost agent while restoring")
                }
                Err(e) => return Err(e),
            }
        }
        Ok(merge(fraise, environment, seen))
    }

    /// A hook, a migration or a job runs once, on the first target that holds the service.
    async fn exec(&self, request: &ExecRequest) -> Result<ExecResult, ProviderError> {
        let (workspace, name) = split_agent_name(&request.fraise);
        let key = service_key(&request.fraise, &request.environment);
        let holders = self
            .holders(workspace, name, &request.environment, &key)
            .await?;
        let target = holders
            .into_iter()
            .next()
            .unwrap_or_else(|| LOCAL.to_string());
        self.provider(workspace, &target).await?.exec(request).await
    }

    fn kind(&self) -> &'static str {
        self.local.kind()
    }

    async fn available(&self) -> bool {
        self.local.available().await
    }
}

impl Fleet {
    async fn apply_all(
        &self,
        workspace: &str,
        key: &str,
        desired: &DesiredService,
        holders: &BTreeSet<String>,
    ) -> Result<ObservedService, ProviderError> {
        let mut shares = split(desired, holders);
        let targets: BTreeSet<String> = shares.keys().cloned().collect();
        let agents = self.agents_for(workspace, &targets).await?;
        // An offline agent that should hold nothing is not waited for: it is handed its
        // share when it comes back (`rejoined`).
        let now = Utc::now();
        shares.retain(|t, share| {
            !(share.instances.is_empty()
                && agents.iter().any(|a| {
                    a.name == *t && a.status(now, self.offline_after()) == AgentStatus::Offline
                }))
        });
        let providers: Vec<_> = shares
            .keys()
            .map(|t| self.provider_among(&agents, t))
            .collect();
        let applied = futures_util::future::join_all(shares.iter().zip(providers).map(
            |((target, share), p)| async move {
                let result = match p {
                    Ok(p) => p.apply(share).await,
                    Err(e) => Err(e),
                };
                (target.clone(), result)
            },
        ))
        .await;
        // Targets that now hold instances, and any that could not be told (they may still).
        let mut holding = BTreeSet::new();
        let mut seen = Vec::new();
        let mut failed = None;
        for ((target, result), share) in applied.into_iter().zip(shares.values()) {
            match result {
                Ok(o) => {
                    if !share.instances.is_empty() {
                        holding.insert(target.clone());
                    }
                    seen.push((target, Some(o)));
                }
                // One that should hold nothing and cannot be told (revoked, lost) does not
                // hold up the others; it is told when a later change reaches it.
                Err(e) if share.instances.is_empty() => {
                    tracing::warn!(agent = %target, error = %e, "cannot tell an agent to stop instances it should no longer run");
                }
                // Restoring: a lost target is handed the restored state when it returns.
                Err(e) if self.pass_over(key, &target, &e) => {
                    tracing::warn!(agent = %target, error = %e, "passing over a lost agent while restoring");
                    holding.insert(target.clone());
                }
                Err(e) => {
                    holding.insert(target.clone());
                    failed.get_or_insert(e);
                }
            }
        }
        self.remember(key, holding);
        if let Some(e) = failed {
            return Err(e);
        }
        Ok(merge(&desired.fraise, &desired.environment, seen).unwrap_or_default())
    }

    fn remember(&self, key: &str, targets: BTreeSet<String>) {
        self.handed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key.to_string(), targets);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fraisier_model::metrics::VersionMetrics;
    use fraisier_model::service::{InstalledRelease, InstanceState, ObservedInstance};

    fn instance(id: &str, target: Option<&str>) -> DesiredInstance {
        DesiredInstance {
            id: id.into(),
            version: "1".into(),
            weight: 100,
            target: target.map(str::to_string),
        }
    }

    fn observed(
        generation: u64,
        ids: &[&str],
        requests: u64,
        releases: &[&str],
    ) -> ObservedService {
        ObservedService {
            fraise: "app".into(),
            environment: "production".into(),
            generation,
            port: Some(8080),
            listening: true,
            instances: ids
                .iter()
                .map(|id| ObservedInstance {
                    id: id.to_string(),
                    version: "1".into(),
                    pid: None,
                    port: None,
                    state: InstanceState::Healthy,
                    weight: 100,
                    restarts: 0,
                    started_at: None,
                    last_check_at: None,
                    checks_passed: 1,
                    checks_total: 1,
                    last_error: None,
                    in_flight: 0,
                })
                .collect(),
            metrics: BTreeMap::from([(
                "1".to_string(),
                VersionMetrics {
                    requests,
                    errors: 1,
                    latency_sum_ms: 10.0,
                    latency_buckets: vec![requests],
                },
            )]),
            releases: releases
                .iter()
                .map(|v| InstalledRelease {
                    version: v.to_string(),
                    digest: "d".into(),
                    artifact: None,
                    installed_at: Utc::now(),
                })
                .collect(),
            ..ObservedService::default()
        }
    }

    #[test]
    fn each_target_gets_the_instances_naming_it_and_a_leaver_gets_none() {
        let desired = DesiredService {
            fraise: "app".into(),
            environment: "production".into(),
            generation: 4,
            instances: vec![
                instance("i1", Some("web-1")),
                instance("i2", Some("web-2")),
                instance("i3", Some("web-1")),
            ],
            ..DesiredService::default()
        };
        let shares = split(&desired, &BTreeSet::from(["web-3".to_string()]));
        let ids =
            |t: &str| -> Vec<String> { shares[t].instances.iter().map(|i| i.id.clone()).collect() };
        assert_eq!(shares.len(), 3);
        assert_eq!(ids("web-1"), ["i1", "i3"]);
        assert_eq!(ids("web-2"), ["i2"]);
        assert!(
            ids("web-3").is_empty(),
            "a target left with none is told so"
        );
        assert!(shares.values().all(|s| s.generation == 4));
        // No target named: the server's own agent, as before.
        let legacy = DesiredService {
            instances: vec![instance("i1", None)],
            ..desired.clone()
        };
        assert_eq!(
            split(&legacy, &BTreeSet::new()).keys().collect::<Vec<_>>(),
            ["local"]
        );
    }

    #[test]
    fn observations_merge_into_one_the_gates_can_judge() {
        let a = observed(4, &["i1", "i3"], 10, &["1", "0"]);
        let b = observed(3, &["i2"], 5, &["1"]);
        let m = merge(
            "app",
            "production",
            vec![("web-1".into(), Some(a.clone())), ("web-2".into(), Some(b))],
        )
        .unwrap();
        assert_eq!(m.generation, 3, "converged only once every target is");
        assert_eq!(m.instances.len(), 3);
        assert_eq!(m.metrics["1"].requests, 15);
        assert_eq!(m.metrics["1"].errors, 2);
        assert_eq!(m.metrics["1"].latency_buckets, vec![15]);
        let kept: Vec<&str> = m.releases.iter().map(|r| r.version.as_str()).collect();
        assert_eq!(
            kept,
            ["1"],
            "only what every target holds can be rolled back to"
        );
        // A target that has not got the service yet holds convergence back.
        let m = merge(
            "app",
            "production",
            vec![("web-1".into(), Some(a.clone())), ("web-2".into(), None)],
        )
        .unwrap();
        assert_eq!(m.generation, 0);
        assert!(!m.listening);
        // One target: its observation as it is.
        let one = merge("app", "production", vec![("web-1".into(), Some(a.clone()))]);
        assert_eq!(one, Some(a));
        assert_eq!(
            merge("app", "production", vec![("web-1".into(), None)]),
            None
        );
    }
}
