//! The reconciler's pure half: from the desired instances, what each instance slot is doing and
//! `now`, decide the actions that move the service one step closer to the desired state.
//!
//! Vocabulary: a *slot* is one instance id the agent currently tracks, whatever its phase.
//! Removing an instance is always drain (out of the router table), then stop once idle or at
//! the drain deadline, then forget once its process is gone.

use std::time::{Duration, Instant};

use fraisier_model::service::DesiredInstance;

/// Wait at least this long after taking an instance out of the router table before stopping
/// it: a request may have picked it from the old table just before the swap.
pub const DRAIN_GRACE: Duration = Duration::from_millis(100);
/// Periodic re-check when nothing is pending: probes, crashes and routers are level-checked.
pub const TICK: Duration = Duration::from_millis(250);
/// Re-check sooner while something is draining or stopping.
pub const SHORT_TICK: Duration = Duration::from_millis(50);

/// One tracked instance, as the planner sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Slot {
    pub id: String,
    pub version: String,
    pub weight: u32,
    pub phase: Phase,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Its process runs (healthy or not: the router table decides about traffic).
    Running,
    /// No process; may start again at `restart_at`.
    Crashed { restart_at: Instant },
    /// Out of the router table since `since`; stop when idle or at `deadline`.
    Draining {
        since: Instant,
        deadline: Instant,
        in_flight: u64,
    },
    /// SIGTERM sent; `finished` once the process is gone.
    Stopping { finished: bool },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Start a process for a new slot.
    Start {
        id: String,
        version: String,
        weight: u32,
    },
    /// Start the process of a crashed slot again.
    Restart {
        id: String,
    },
    SetWeight {
        id: String,
        weight: u32,
    },
    /// Take it out of the router table and begin the drain.
    Drain {
        id: String,
    },
    /// Desired again while draining: put it back.
    Undrain {
        id: String,
        weight: u32,
    },
    /// Drain over: SIGTERM, then SIGKILL after the grace.
    Stop {
        id: String,
    },
    /// Its process is gone: drop the slot.
    Forget {
        id: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub actions: Vec<Action>,
    pub requeue_after: Duration,
}

/// Plans one step. `desired` is `None` when the whole service is going away (deleted, or the
/// agent shutting down): every slot drains and stops.
pub fn plan(desired: Option<&[DesiredInstance]>, slots: &[Slot], now: Instant) -> Plan {
    let desired = desired.unwrap_or(&[]);
    let mut actions = Vec::new();
    let mut requeue = TICK;
    let mut soon = |after: Duration| requeue = requeue.min(after.max(Duration::from_millis(1)));

    for slot in slots {
        let wanted = desired.iter().find(|d| d.id == slot.id);
        let keep = wanted.filter(|d| d.version == slot.version);
        match (slot.phase, keep) {
            (Phase::Running, Some(d)) => {
                if d.weight != slot.weight {
                    actions.push(Action::SetWeight {
                        id: slot.id.clone(),
                        weight: d.weight,
                    });
                }
            }
            (Phase::Crashed { restart_at }, Some(d)) => {
                if d.weight != slot.weight {
                    actions.push(Action::SetWeight {
                        id: slot.id.clone(),
                        weight: d.weight,
                    });
                }
                if now >= restart_at {
                    actions.push(Action::Restart {
                        id: slot.id.clone(),
                    });
                } else {
                    soon(restart_at - now);
                }
            }
            (Phase::Draining { .. }, Some(d)) => {
                actions.push(Action::Undrain {
                    id: slot.id.clone(),
                    weight: d.weight,
                });
            }
            (Phase::Running, None) => {
                actions.push(Action::Drain {
                    id: slot.id.clone(),
                });
                soon(SHORT_TICK);
            }
            (Phase::Crashed { .. }, None) => {
                // Nothing runs, nothing to drain.
                actions.push(Action::Forget {
                    id: slot.id.clone(),
                });
                start_replacement(wanted, &mut actions);
            }
            (
                Phase::Draining {
                    since,
                    deadline,
                    in_flight,
                },
                None,
            ) => {
                let idle = in_flight == 0 && now >= since + DRAIN_GRACE;
                if idle || now >= deadline {
                    actions.push(Action::Stop {
                        id: slot.id.clone(),
                    });
                }
                soon(SHORT_TICK);
            }
            (Phase::Stopping { finished: true }, _) => {
                actions.push(Action::Forget {
                    id: slot.id.clone(),
                });
                start_replacement(wanted, &mut actions);
            }
            (Phase::Stopping { finished: false }, _) => soon(SHORT_TICK),
        }
    }
    for d in desired {
        if !slots.iter().any(|s| s.id == d.id) {
            actions.push(Action::Start {
                id: d.id.clone(),
                version: d.version.clone(),
                weight: d.weight,
            });
        }
    }
    Plan {
        actions,
        requeue_after: requeue,
    }
}

/// A slot was forgotten while its id is desired (with another version): start the new one.
fn start_replacement(wanted: Option<&DesiredInstance>, actions: &mut Vec<Action>) {
    if let Some(d) = wanted {
        actions.push(Action::Start {
            id: d.id.clone(),
            version: d.version.clone(),
            weight: d.weight,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn want(id: &str, version: &str, weight: u32) -> DesiredInstance {
        DesiredInstance {
            id: id.into(),
            version: version.into(),
            weight,
            target: None,
        }
    }

    fn slot(id: &str, version: &str, phase: Phase) -> Slot {
        Slot {
            id: id.into(),
            version: version.into(),
            weight: 100,
            phase,
        }
    }

    #[test]
    fn starts_what_is_missing_and_leaves_the_rest() {
        let now = Instant::now();
        let desired = [want("a", "1", 100), want("b", "1", 100)];
        let p = plan(Some(&desired), &[slot("a", "1", Phase::Running)], now);
        assert_eq!(
            p.actions,
            vec![Action::Start {
                id: "b".into(),
                version: "1".into(),
                weight: 100
            }]
        );
        assert_eq!(p.requeue_after, TICK);
    }

    #[test]
    fn weight_changes_are_applied_in_place() {
        let now = Instant::now();
        let p = plan(
            Some(&[want("a", "1", 10)]),
            &[slot("a", "1", Phase::Running)],
            now,
        );
        assert_eq!(
            p.actions,
            vec![Action::SetWeight {
                id: "a".into(),
                weight: 10
            }]
        );
    }

    #[test]
    fn crashed_instances_wait_for_their_backoff() {
        let now = Instant::now();
        let later = now + Duration::from_millis(120);
        let crashed = [slot("a", "1", Phase::Crashed { restart_at: later })];
        let p = plan(Some(&[want("a", "1", 100)]), &crashed, now);
        assert!(p.actions.is_empty());
        assert_eq!(p.requeue_after, Duration::from_millis(120));
        let p = plan(Some(&[want("a", "1", 100)]), &crashed, later);
        assert_eq!(p.actions, vec![Action::Restart { id: "a".into() }]);
    }

    #[test]
    fn removal_drains_then_stops_once_idle_after_the_grace() {
        let t0 = Instant::now();
        let p = plan(Some(&[]), &[slot("a", "1", Phase::Running)], t0);
        assert_eq!(p.actions, vec![Action::Drain { id: "a".into() }]);
        assert_eq!(p.requeue_after, SHORT_TICK);

        let draining = |in_flight| Phase::Draining {
            since: t0,
            deadline: t0 + Duration::from_secs(5),
            in_flight,
        };
        // Idle, but a request may still be on its way from the old table.
        let p = plan(
            Some(&[]),
            &[slot("a", "1", draining(0))],
            t0 + Duration::from_millis(50),
        );
        assert!(p.actions.is_empty());
        let p = plan(Some(&[]), &[slot("a", "1", draining(0))], t0 + DRAIN_GRACE);
        assert_eq!(p.actions, vec![Action::Stop { id: "a".into() }]);
        // Busy: wait, until the deadline.
        let p = plan(
            Some(&[]),
            &[slot("a", "1", draining(3))],
            t0 + Duration::from_secs(1),
        );
        assert!(p.actions.is_empty());
        let p = plan(
            Some(&[]),
            &[slot("a", "1", draining(3))],
            t0 + Duration::from_secs(5),
        );
        assert_eq!(p.actions, vec![Action::Stop { id: "a".into() }]);

        let p = plan(
            Some(&[]),
            &[slot("a", "1", Phase::Stopping { finished: false })],
            t0,
        );
        assert!(p.actions.is_empty());
        let p = plan(
            Some(&[]),
            &[slot("a", "1", Phase::Stopping { finished: true })],
            t0,
        );
        assert_eq!(p.actions, vec![Action::Forget { id: "a".into() }]);
    }

    #[test]
    fn a_new_version_under_the_same_id_replaces_the_old_process() {
        let now = Instant::now();
        let desired = [want("a", "2", 100)];
        let p = plan(Some(&desired), &[slot("a", "1", Phase::Running)], now);
        assert_eq!(p.actions, vec![Action::Drain { id: "a".into() }]);
        let p = plan(
            Some(&desired),
            &[slot("a", "1", Phase::Stopping { finished: true })],
            now,
        );
        assert_eq!(
            p.actions,
            vec![
                Action::Forget { id: "a".into() },
                Action::Start {
                    id: "a".into(),
                    version: "2".into(),
                    weight: 100
                },
            ]
        );
    }

    #[test]
    fn desired_again_while_draining_is_put_back() {
        let now = Instant::now();
        let phase = Phase::Draining {
            since: now,
            deadline: now,
            in_flight: 0,
        };
        let p = plan(Some(&[want("a", "1", 5)]), &[slot("a", "1", phase)], now);
        assert_eq!(
            p.actions,
            vec![Action::Undrain {
                id: "a".into(),
                weight: 5
            }]
        );
    }

    #[test]
    fn a_service_going_away_drains_everything() {
        let now = Instant::now();
        let slots = [
            slot("a", "1", Phase::Running),
            slot("b", "1", Phase::Crashed { restart_at: now }),
        ];
        let p = plan(None, &slots, now);
        assert_eq!(
            p.actions,
            vec![
                Action::Drain { id: "a".into() },
                Action::Forget { id: "b".into() }
            ]
        );
    }
}
