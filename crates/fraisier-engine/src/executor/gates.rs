//! Each gate of a run is a judgement over observations: given what the provider reports and
//! how long the gate has been waiting, wait, pass or fail, and what to tell on the way. No
//! I/O and no clock here: `poll` observes, sleeps and acts on what a judge says, so a judge
//! is tested with scripted observations alone.

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use fraisier_model::analysis::{self, Verdict};
use fraisier_model::metrics::VersionMetrics;
use fraisier_model::run::{Component, EventType, FailureCode, LogLevel};
use fraisier_model::service::{DesiredService, InstanceState, ObservedService};
use fraisier_model::strategy::Analysis as AnalysisConfig;
use fraisier_model::Millis;
use serde_json::{json, Value};

use super::{failure, Failure};

/// What one look at the provider found.
pub(super) enum Seen<'a> {
    Service(&'a ObservedService),
    /// The target runs nothing of this service (yet).
    Absent,
    /// The agent has been gone longer than it may be.
    Lost(&'a str),
    /// No answer this time; the next look may have one.
    Unanswered,
}

pub(super) enum Look<T> {
    Wait,
    Pass(T),
    Fail(Failure),
}

/// Something a judge wants told or done before its look is acted on.
pub(super) enum Note {
    Event(EventType, Value),
    Log(LogLevel, Component, String, Value),
    /// Hand the provider the desired state again: it lost or never got it.
    Reapply,
}

pub(super) struct Judgement<T> {
    pub(super) look: Look<T>,
    pub(super) notes: Vec<Note>,
}

impl<T> Judgement<T> {
    fn wait() -> Self {
        Judgement {
            look: Look::Wait,
            notes: Vec::new(),
        }
    }
}

/// A gate: judges each look, `waited` after its first.
pub(super) trait Judge {
    type Pass;
    fn judge(&mut self, seen: Seen<'_>, waited: Duration) -> Judgement<Self::Pass>;
    /// The desired state was said again (a `Reapply` note), its answer back at `waited`.
    fn reapplied(&mut self, waited: Duration) {
        let _ = waited;
    }
}

/// After a desired state is applied: every instance of it runs, at its weight, healthy.
pub(super) struct Converge<'a> {
    pub(super) desired: &'a DesiredService,
    pub(super) version: &'a str,
    pub(super) timeout: Millis,
    announced: BTreeSet<String>,
    last: Option<ObservedService>,
    applied_at: Duration,
}

impl<'a> Converge<'a> {
    pub(super) fn new(desired: &'a DesiredService, version: &'a str, timeout: Millis) -> Self {
        Converge {
            desired,
            version,
            timeout,
            announced: BTreeSet::new(),
            last: None,
            applied_at: Duration::ZERO,
        }
    }
}

impl Judge for Converge<'_> {
    type Pass = ObservedService;

    fn judge(&mut self, seen: Seen<'_>, waited: Duration) -> Judgement<ObservedService> {
        let mut notes = Vec::new();
        match seen {
            Seen::Service(o) => {
                for d in &self.desired.instances {
                    let Some(i) = o.instance(&d.id) else { continue };
                    if i.state == InstanceState::Healthy && self.announced.insert(d.id.clone()) {
                        notes.push(Note::Event(
                            EventType::InstanceHealthy,
                            json!({ "instance": d.id, "version": d.version, "port": i.port }),
                        ));
                        notes.push(Note::Log(
                            LogLevel::Info,
                            Component::HealthCheck,
                            format!("Instance {} ({}) is healthy", d.id, d.version),
                            json!({ "port": i.port, "checks_passed": i.checks_passed }),
                        ));
                    }
                }
                if o.converged_to(self.desired) {
                    return Judgement {
                        look: Look::Pass(o.clone()),
                        notes,
                    };
                }
                // An agent that restarted may have lost this generation: say it again.
                if o.generation < self.desired.generation
                    && waited.saturating_sub(self.applied_at) > Duration::from_secs(2)
                {
                    notes.push(Note::Reapply);
                }
                self.last = Some(o.clone());
            }
            Seen::Absent => {
                if waited.saturating_sub(self.applied_at) > Duration::from_secs(1) {
                    notes.push(Note::Reapply);
                }
            }
            Seen::Lost(e) => {
                return Judgement {
                    look: Look::Fail(failure(
                        FailureCode::ProviderError,
                        format!("agent lost: {e}"),
                        json!({}),
                    )),
                    notes,
                }
            }
            Seen::Unanswered => {}
        }
        if waited >= self.timeout.as_duration() {
            let details = self.last.as_ref().map_or_else(
                || json!({ "agent": "no observation" }),
                |o| unhealthy_details(o, self.desired),
            );
            notes.push(Note::Event(EventType::HealthCheckFailed, details.clone()));
            return Judgement {
                look: Look::Fail(failure(
                    FailureCode::HealthCheckFailed,
                    format!(
                        "instances of {} did not become healthy within {}",
                        self.version, self.timeout
                    ),
                    details,
                )),
                notes,
            };
        }
        Judgement {
            look: Look::Wait,
            notes,
        }
    }

    fn reapplied(&mut self, waited: Duration) {
        self.applied_at = waited;
    }
}

/// After traffic switched: every instance taking traffic stays up for `duration`, looked at
/// from one interval on (the switch itself was judged by convergence).
pub(super) struct Hold<'a> {
    pub(super) desired: &'a DesiredService,
    pub(super) duration: Millis,
}

impl Judge for Hold<'_> {
    type Pass = ();

    fn judge(&mut self, seen: Seen<'_>, waited: Duration) -> Judgement<()> {
        if self.duration.as_duration().is_zero() {
            return Judgement {
                look: Look::Pass(()),
                notes: Vec::new(),
            };
        }
        if waited.is_zero() {
            return Judgement::wait();
        }
        if let Seen::Service(o) = seen {
            if let Some(i) = self.desired.serving().find(|i| down(o, &i.id)) {
                return Judgement {
                    look: Look::Fail(failure(
                        FailureCode::HealthCheckFailed,
                        format!("instance {} became unhealthy after the switch", i.id),
                        unhealthy_details(o, self.desired),
                    )),
                    notes: Vec::new(),
                };
            }
        }
        if waited >= self.duration.as_duration() {
            return Judgement {
                look: Look::Pass(()),
                notes: Vec::new(),
            };
        }
        Judgement::wait()
    }
}

/// A canary's analysis: its router counters over the window, against thresholds or the
/// stable version's, from the first look on.
pub(super) struct Canary<'a> {
    pub(super) desired: &'a DesiredService,
    pub(super) canary: &'a str,
    pub(super) stable: Option<&'a str>,
    pub(super) window: Millis,
    pub(super) analysis: &'a AnalysisConfig,
    baseline: Option<(VersionMetrics, VersionMetrics)>,
}

impl<'a> Canary<'a> {
    pub(super) fn new(
        desired: &'a DesiredService,
        canary: &'a str,
        stable: Option<&'a str>,
        window: Millis,
        analysis: &'a AnalysisConfig,
    ) -> Self {
        Canary {
            desired,
            canary,
            stable,
            window,
            analysis,
            baseline: None,
        }
    }
}

fn counters(o: Option<&ObservedService>, version: Option<&str>) -> VersionMetrics {
    version
        .and_then(|v| o?.metrics.get(v).cloned())
        .unwrap_or_else(VersionMetrics::empty)
}

impl Judge for Canary<'_> {
    type Pass = ();

    fn judge(&mut self, seen: Seen<'_>, waited: Duration) -> Judgement<()> {
        let o = match seen {
            Seen::Service(o) => Some(o),
            _ => None,
        };
        let Some((c0, s0)) = &self.baseline else {
            self.baseline = Some((counters(o, Some(self.canary)), counters(o, self.stable)));
            return Judgement::wait();
        };
        let Some(o) = o else {
            return Judgement::wait();
        };
        let fail = |reason: String, data: Value, notes: Vec<Note>| Judgement {
            look: Look::Fail(failure(
                FailureCode::DeploymentFailed,
                format!("canary analysis failed: {reason}"),
                data,
            )),
            notes,
        };
        if let Some(i) = self
            .desired
            .instances
            .iter()
            .filter(|i| i.version == self.canary)
            .find(|i| down(o, &i.id))
        {
            let details = unhealthy_details(o, self.desired);
            let reason = format!("instance {} is unhealthy", i.id);
            let event = Note::Event(
                EventType::AnalysisFailed,
                json!({ "reason": format!("canary {reason}"), "instances": details }),
            );
            return fail(reason, details, vec![event]);
        }
        let cw = counters(Some(o), Some(self.canary)).since(c0);
        let sw = counters(Some(o), self.stable).since(s0);
        let final_check = waited >= self.window.as_duration();
        let figures = json!({
            "canary": { "version": self.canary, "window": cw.summary() },
            "stable": { "version": self.stable, "window": sw.summary() },
            "window_ms": waited.as_millis() as u64,
        });
        match analysis::judge(&cw, self.stable.map(|_| &sw), self.analysis, final_check) {
            Verdict::Fail { reason } => {
                let mut data = figures;
                data["reason"] = json!(reason);
                let notes = vec![
                    Note::Event(EventType::AnalysisFailed, data.clone()),
                    Note::Log(
                        LogLevel::Error,
                        Component::HealthCheck,
                        format!("Canary analysis failed: {reason}"),
                        data.clone(),
                    ),
                ];
                fail(reason, data, notes)
            }
            Verdict::Pass if final_check => Judgement {
                look: Look::Pass(()),
                notes: vec![
                    Note::Event(EventType::AnalysisPassed, figures.clone()),
                    Note::Log(
                        LogLevel::Info,
                        Component::HealthCheck,
                        "Canary analysis passed".into(),
                        figures,
                    ),
                ],
            },
            _ => Judgement::wait(),
        }
    }
}

/// A scheduled fraise's release: installed, and its schedule timed by the agent.
pub(super) struct Scheduled<'a> {
    pub(super) desired: &'a DesiredService,
    pub(super) version: &'a str,
}

impl Judge for Scheduled<'_> {
    type Pass = String;

    fn judge(&mut self, seen: Seen<'_>, _waited: Duration) -> Judgement<String> {
        let Seen::Service(o) = seen else {
            return Judgement::wait();
        };
        let Some(s) = o
            .schedule
            .as_ref()
            .filter(|_| o.generation >= self.desired.generation)
        else {
            return Judgement::wait();
        };
        if let Some(error) = &s.error {
            return Judgement {
                look: Look::Fail(failure(
                    FailureCode::InvalidDeploymentSpec,
                    format!("the agent cannot run the schedule: {error}"),
                    json!({ "field": "schedule" }),
                )),
                notes: Vec::new(),
            };
        }
        let version = self.version;
        if s.version != version || !o.releases.iter().any(|r| r.version == version) {
            return Judgement::wait();
        }
        let next = s
            .next_run_at
            .map_or_else(|| "never".to_string(), |t| t.to_rfc3339());
        Judgement {
            look: Look::Pass(format!(
                "release {version} installed and scheduled: {} ({}), next run {next}",
                s.cron, s.timezone
            )),
            notes: vec![Note::Event(
                EventType::ScheduleUpdated,
                json!({ "cron": s.cron, "timezone": s.timezone, "version": version, "next_run_at": s.next_run_at }),
            )],
        }
    }
}

/// The last look of a run: how many of the instances it left are healthy.
pub(super) struct FinalHealth {
    pub(super) healthy: usize,
    pub(super) total: usize,
    pub(super) last_check_at: Option<DateTime<Utc>>,
}

pub(super) fn final_health(desired: &DesiredService, o: &ObservedService) -> FinalHealth {
    FinalHealth {
        healthy: desired
            .instances
            .iter()
            .filter(|d| {
                o.instance(&d.id)
                    .is_some_and(|i| i.state == InstanceState::Healthy)
            })
            .count(),
        total: desired.instances.len(),
        last_check_at: o.instances.iter().filter_map(|i| i.last_check_at).max(),
    }
}

/// Missing, unhealthy or crashed: an instance that should be serving and is not.
fn down(o: &ObservedService, id: &str) -> bool {
    o.instance(id)
        .is_none_or(|x| matches!(x.state, InstanceState::Unhealthy | InstanceState::Crashed))
}

pub(super) fn unhealthy_details(o: &ObservedService, desired: &DesiredService) -> Value {
    let instances: Vec<Value> = desired
        .instances
        .iter()
        .map(|d| match o.instance(&d.id) {
            Some(i) => json!({ "instance": d.id, "version": d.version, "state": i.state, "restarts": i.restarts, "last_error": i.last_error, "port": i.port }),
            None => json!({ "instance": d.id, "version": d.version, "state": "not_started" }),
        })
        .collect();
    json!({ "instances": instances, "router_error": o.router_error })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn metrics_of(pairs: &[(&str, VersionMetrics)]) -> BTreeMap<String, VersionMetrics> {
        pairs
            .iter()
            .map(|(v, m)| (v.to_string(), m.clone()))
            .collect()
    }
    use fraisier_model::service::{DesiredInstance, ObservedInstance};

    fn desired(instances: &[(&str, &str, u32)], generation: u64) -> DesiredService {
        DesiredService {
            fraise: "api".into(),
            environment: "production".into(),
            generation,
            instances: instances
                .iter()
                .map(|(id, v, w)| DesiredInstance {
                    id: id.to_string(),
                    version: v.to_string(),
                    weight: *w,
                    target: None,
                })
                .collect(),
            ..DesiredService::default()
        }
    }

    fn observed(d: &DesiredService, states: &[InstanceState], generation: u64) -> ObservedService {
        ObservedService {
            fraise: d.fraise.clone(),
            environment: d.environment.clone(),
            generation,
            listening: true,
            instances: d
                .instances
                .iter()
                .zip(states)
                .map(|(i, s)| ObservedInstance {
                    id: i.id.clone(),
                    version: i.version.clone(),
                    pid: Some(1),
                    port: Some(1),
                    state: *s,
                    weight: i.weight,
                    restarts: 0,
                    started_at: None,
                    last_check_at: None,
                    checks_passed: 1,
                    checks_total: 1,
                    last_error: None,
                    in_flight: 0,
                })
                .collect(),
            ..ObservedService::default()
        }
    }

    const S: Duration = Duration::from_secs(1);
    use InstanceState::{Crashed, Healthy, Starting};

    #[test]
    fn convergence_announces_each_healthy_instance_once_and_passes_when_all_run() {
        let d = desired(&[("api-1", "2.0.0", 100), ("api-2", "2.0.0", 100)], 3);
        let mut gate = Converge::new(&d, "2.0.0", Millis::from_secs(10));
        let half = observed(&d, &[Healthy, Starting], 3);
        let j = gate.judge(Seen::Service(&half), S);
        assert!(matches!(j.look, Look::Wait));
        let announced = |j: &Judgement<_>| {
            j.notes
                .iter()
                .filter(|n| matches!(n, Note::Event(EventType::InstanceHealthy, _)))
                .count()
        };
        assert_eq!(announced(&j), 1);
        let again = gate.judge(Seen::Service(&half), 2 * S);
        assert_eq!(announced(&again), 0, "told once");
        let all = observed(&d, &[Healthy, Healthy], 3);
        let j = gate.judge(Seen::Service(&all), 3 * S);
        assert!(matches!(j.look, Look::Pass(_)));
        assert_eq!(announced(&j), 1);
    }

    #[test]
    fn convergence_says_the_state_again_to_an_agent_that_lost_it_and_fails_at_its_timeout() {
        let d = desired(&[("api-1", "2.0.0", 100)], 3);
        let mut gate = Converge::new(&d, "2.0.0", Millis::from_secs(10));
        let stale = observed(&d, &[Healthy], 2);
        let reapplied = |j: &Judgement<_>| j.notes.iter().any(|n| matches!(n, Note::Reapply));
        assert!(!reapplied(&gate.judge(Seen::Service(&stale), S)));
        assert!(reapplied(&gate.judge(Seen::Service(&stale), 3 * S)));
        // Counted from when the agent answered, however long it took.
        assert!(
            reapplied(&gate.judge(Seen::Service(&stale), 4 * S)),
            "no answer yet"
        );
        gate.reapplied(4 * S);
        assert!(
            !reapplied(&gate.judge(Seen::Service(&stale), 5 * S)),
            "not at every look"
        );
        assert!(reapplied(&gate.judge(Seen::Absent, 6 * S)));
        let j = gate.judge(Seen::Service(&stale), 10 * S);
        let Look::Fail(f) = j.look else {
            panic!("a timeout fails")
        };
        assert_eq!(f.code, FailureCode::HealthCheckFailed);
        assert_eq!(f.details["instances"][0]["instance"], "api-1");
        assert!(j
            .notes
            .iter()
            .any(|n| matches!(n, Note::Event(EventType::HealthCheckFailed, _))));
    }

    #[test]
    fn convergence_fails_at_once_when_the_agent_is_lost() {
        let d = desired(&[("api-1", "2.0.0", 100)], 1);
        let mut gate = Converge::new(&d, "2.0.0", Millis::from_secs(10));
        let Look::Fail(f) = gate.judge(Seen::Lost("web-b"), S).look else {
            panic!("lost fails")
        };
        assert_eq!(f.code, FailureCode::ProviderError);
        assert!(f.message.contains("web-b"), "{}", f.message);
        assert!(matches!(gate.judge(Seen::Unanswered, S).look, Look::Wait));
    }

    #[test]
    fn a_hold_fails_on_a_serving_instance_going_down_and_passes_after_its_time() {
        let d = desired(&[("api-1", "2.0.0", 100), ("api-2", "1.0.0", 0)], 1);
        let mut gate = Hold {
            desired: &d,
            duration: Millis::from_secs(5),
        };
        // The switch was judged already: the hold looks from its first interval on.
        let serving_down = observed(&d, &[Crashed, Healthy], 1);
        assert!(matches!(
            gate.judge(Seen::Service(&serving_down), Duration::ZERO)
                .look,
            Look::Wait
        ));
        // The drained instance may go; the serving one may not.
        let drained_down = observed(&d, &[Healthy, Crashed], 1);
        assert!(matches!(
            gate.judge(Seen::Service(&drained_down), S).look,
            Look::Wait
        ));
        assert!(matches!(
            gate.judge(Seen::Service(&drained_down), 5 * S).look,
            Look::Pass(())
        ));
        let Look::Fail(f) = gate.judge(Seen::Service(&serving_down), S).look else {
            panic!("a crash fails the hold")
        };
        assert_eq!(f.code, FailureCode::HealthCheckFailed);
        let mut none = Hold {
            desired: &d,
            duration: Millis(0),
        };
        assert!(matches!(
            none.judge(Seen::Service(&serving_down), Duration::ZERO)
                .look,
            Look::Pass(())
        ));
    }

    fn analysis_config() -> AnalysisConfig {
        AnalysisConfig {
            max_error_rate: 5.0,
            max_latency_p99_ms: None,
            min_requests: 0,
            compare_to_stable: false,
        }
    }

    fn counts(requests: u64, errors: u64) -> VersionMetrics {
        VersionMetrics {
            requests,
            errors,
            ..VersionMetrics::empty()
        }
    }

    #[test]
    fn an_analysis_counts_from_its_first_look_and_fails_on_errors_in_its_window() {
        let d = desired(&[("api-1", "2.0.0", 10), ("api-2", "1.0.0", 90)], 1);
        let config = analysis_config();
        let look = |c: VersionMetrics, s: VersionMetrics| {
            let mut o = observed(&d, &[Healthy, Healthy], 1);
            o.metrics = metrics_of(&[("2.0.0", c), ("1.0.0", s)]);
            o
        };
        let mut gate = Canary::new(&d, "2.0.0", None, Millis::from_secs(10), &config);
        // Errors before the window do not count against it.
        let start = look(counts(1000, 900), counts(1000, 0));
        assert!(matches!(
            gate.judge(Seen::Service(&start), Duration::ZERO).look,
            Look::Wait
        ));
        let clean = look(counts(1200, 900), counts(2000, 0));
        assert!(matches!(
            gate.judge(Seen::Service(&clean), S).look,
            Look::Wait
        ));
        let j = gate.judge(Seen::Service(&clean), 10 * S);
        assert!(matches!(j.look, Look::Pass(())));
        assert!(j
            .notes
            .iter()
            .any(|n| matches!(n, Note::Event(EventType::AnalysisPassed, _))));

        let mut gate = Canary::new(&d, "2.0.0", None, Millis::from_secs(10), &config);
        gate.judge(Seen::Service(&start), Duration::ZERO);
        let failing = look(counts(1200, 1000), counts(2000, 0));
        let j = gate.judge(Seen::Service(&failing), 10 * S);
        let Look::Fail(f) = j.look else {
            panic!("half the requests failed")
        };
        assert_eq!(f.code, FailureCode::DeploymentFailed);
        assert!(f.details["reason"].is_string(), "{}", f.details);
    }

    #[test]
    fn an_analysis_fails_when_a_canary_instance_goes_down() {
        let d = desired(&[("api-1", "2.0.0", 10), ("api-2", "1.0.0", 90)], 1);
        let config = analysis_config();
        let mut gate = Canary::new(&d, "2.0.0", None, Millis::from_secs(10), &config);
        gate.judge(Seen::Absent, Duration::ZERO);
        let down = observed(&d, &[Crashed, Healthy], 1);
        let Look::Fail(f) = gate.judge(Seen::Service(&down), S).look else {
            panic!("a crashed canary fails")
        };
        assert!(f.message.contains("api-1"), "{}", f.message);
    }

    #[test]
    fn final_health_counts_what_the_run_left() {
        let d = desired(&[("api-1", "2.0.0", 100), ("api-2", "2.0.0", 100)], 1);
        let o = observed(&d, &[Healthy, Starting], 1);
        let h = final_health(&d, &o);
        assert_eq!((h.healthy, h.total), (1, 2));
    }
}
