//! Strategy planners: pure functions from the current instance set and the target to the
//! sequence of desired instance sets (phases) a deployment walks through, each with the gates
//! that must pass before the next. The engine executes plans; nothing here acts.

use crate::duration::Millis;
use crate::service::DesiredInstance;
use crate::strategy::{
    Analysis, BlueGreenConfig, CanaryConfig, RecreateConfig, RollingConfig, StrategyConfig,
};

/// What must hold before a deployment moves past a phase.
#[derive(Clone, Debug, PartialEq)]
pub enum Gate {
    /// Wait this long before judging health (rolling's `health_check_delay`).
    Delay(Millis),
    /// Every listed instance runs its version and is healthy; removed ones are drained.
    Converged { timeout: Millis },
    /// Run a command against the new, not yet serving, instances; exit 0 passes.
    SmokeTest { command: String },
    /// Keep the phase for this long while watching that it stays healthy.
    Hold(Millis),
    /// Compare the canary's router metrics over the window with thresholds and with stable.
    Analysis {
        canary_version: String,
        stable_version: Option<String>,
        window: Millis,
        analysis: Analysis,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub struct Phase {
    pub name: String,
    pub instances: Vec<DesiredInstance>,
    pub gates: Vec<Gate>,
    /// Percentage of requests on the new version once this phase holds.
    pub traffic_pct: u32,
}

/// What a planner needs to know: where the service is and where it should get to.
#[derive(Clone, Debug)]
pub struct Goal<'a> {
    /// The instances the service has now (its last desired state).
    pub current: &'a [DesiredInstance],
    pub version: &'a str,
    pub instances: u32,
    /// The first free instance ordinal; ids are `i<ordinal>`.
    pub next_ordinal: u64,
    /// The agents new instances are spread over, `instances / targets.len()` on each; empty:
    /// the server's own agent (instances name no target).
    pub targets: &'a [String],
}

/// Weight units per instance when all share equally; canary splits use the same scale.
pub const UNIT: u32 = 100;

/// How new instances are laid over the targets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Spread {
    /// The first `per target` instances on the first target, the next on the second…: a
    /// rolling replacement, which stops old instances in order, goes target by target.
    Blocks,
    /// One on each target in turn: a canary's first instances land on as many targets as
    /// they can, so weight shifts on each of them.
    Turns,
}

/// New instance ids, each with its target, counted from the first free ordinal.
struct Ids<'a> {
    base: u64,
    next: u64,
    targets: &'a [String],
    per_target: u64,
    spread: Spread,
}

impl<'a> Ids<'a> {
    fn new(t: &Goal<'a>, spread: Spread) -> Ids<'a> {
        let n = t.targets.len().max(1) as u64;
        Ids {
            base: t.next_ordinal,
            next: t.next_ordinal,
            targets: t.targets,
            per_target: (u64::from(t.instances) / n).max(1),
            spread,
        }
    }

    fn take(&mut self, version: &str, weight: u32) -> DesiredInstance {
        let nth = self.next - self.base;
        let id = format!("i{}", self.next);
        self.next += 1;
        let target = (!self.targets.is_empty()).then(|| {
            let n = self.targets.len() as u64;
            let slot = match self.spread {
                Spread::Blocks => (nth / self.per_target) % n,
                Spread::Turns => nth % n,
            };
            self.targets[slot as usize].clone()
        });
        DesiredInstance {
            id,
            version: version.to_string(),
            weight,
            target,
        }
    }
}

pub fn plan(config: &StrategyConfig, t: &Goal) -> Vec<Phase> {
    if t.current.is_empty() {
        return first_deploy(t, config.health_check_timeout());
    }
    match config {
        StrategyConfig::Rolling(c) => rolling(c, t),
        StrategyConfig::BlueGreen(c) => blue_green(c, t),
        StrategyConfig::Canary(c) => canary(c, t),
        StrategyConfig::Recreate(c) => recreate(c, t),
    }
}

/// The highest ordinal in use plus one, so new ids never collide with running ones.
pub fn next_ordinal(current: &[DesiredInstance]) -> u64 {
    current
        .iter()
        .filter_map(|i| i.id.strip_prefix('i')?.parse::<u64>().ok())
        .max()
        .map_or(1, |m| m + 1)
}

fn with_weight(list: &[DesiredInstance], weight: u32) -> Vec<DesiredInstance> {
    list.iter()
        .map(|i| DesiredInstance {
            weight,
            ..i.clone()
        })
        .collect()
}

fn first_deploy(t: &Goal, timeout: Millis) -> Vec<Phase> {
    let mut ids = Ids::new(t, Spread::Blocks);
    let instances = (0..t.instances)
        .map(|_| ids.take(t.version, UNIT))
        .collect();
    vec![Phase {
        name: format!("start {} instance(s) of {}", t.instances, t.version),
        instances,
        gates: vec![Gate::Converged { timeout }],
        traffic_pct: 100,
    }]
}

/// Replace instances in batches. Never takes the last serving instance away before its
/// replacement is healthy: when surge is 0 and only one instance serves, one extra is started.
fn rolling(c: &RollingConfig, t: &Goal) -> Vec<Phase> {
    let n = t.instances as usize;
    let surge = c.max_surge as usize;
    let down = c.max_instances_down as usize;
    let floor = n.saturating_sub(down).max(1);
    let mut ids = Ids::new(t, Spread::Blocks);
    let mut old: Vec<DesiredInstance> = t.current.to_vec();
    let mut new: Vec<DesiredInstance> = Vec::new();
    let mut phases = Vec::new();
    while !old.is_empty() || new.len() < n {
        let ready = old.len() + new.len();
        let (remove, mut add) = if new.len() >= n {
            (old.len(), 0)
        } else {
            let remove = old.len().min(ready.saturating_sub(floor)).min(down.max(1));
            let add = (n - new.len()).min((n + surge).saturating_sub(ready - remove));
            (remove, add)
        };
        if remove == 0 && add == 0 {
            add = 1;
        }
        old.drain(..remove);
        for _ in 0..add {
            new.push(ids.take(t.version, UNIT));
        }
        let mut gates = Vec::new();
        if add > 0 && c.health_check_delay.0 > 0 {
            gates.push(Gate::Delay(c.health_check_delay));
        }
        gates.push(Gate::Converged {
            timeout: c.health_check_timeout,
        });
        let mut instances = old.clone();
        instances.extend(new.iter().cloned());
        let traffic_pct = (new.len() * 100 / instances.len().max(1)) as u32;
        phases.push(Phase {
            name: format!(
                "{}/{} instances on {} ({} started, {} stopped)",
                new.len(),
                n,
                t.version,
                add,
                remove
            ),
            instances,
            gates,
            traffic_pct,
        });
    }
    phases
}

fn blue_green(c: &BlueGreenConfig, t: &Goal) -> Vec<Phase> {
    let mut ids = Ids::new(t, Spread::Blocks);
    let green: Vec<DesiredInstance> = (0..t.instances).map(|_| ids.take(t.version, 0)).collect();
    let blue = t.current.to_vec();
    let mut deploy_gates = vec![Gate::Converged {
        timeout: c.health_check_timeout,
    }];
    if let Some(command) = &c.smoke_test {
        deploy_gates.push(Gate::SmokeTest {
            command: command.clone(),
        });
    }
    vec![
        Phase {
            name: format!("deploy green: {} instance(s) of {}", t.instances, t.version),
            instances: [blue.clone(), green.clone()].concat(),
            gates: deploy_gates,
            traffic_pct: 0,
        },
        Phase {
            name: "switch traffic to green".into(),
            instances: [with_weight(&blue, 0), with_weight(&green, UNIT)].concat(),
            gates: vec![
                Gate::Converged {
                    timeout: c.health_check_timeout,
                },
                Gate::Hold(c.scale_down_delay),
            ],
            traffic_pct: 100,
        },
        Phase {
            name: "retire blue".into(),
            instances: with_weight(&green, UNIT),
            gates: vec![Gate::Converged {
                timeout: c.health_check_timeout,
            }],
            traffic_pct: 100,
        },
    ]
}

/// Per-instance weights giving `pct` percent to `canary` and the rest to `stable`.
fn split(stable: &[DesiredInstance], canary: &[DesiredInstance], pct: u32) -> Vec<DesiredInstance> {
    let total = UNIT * 100;
    let canary_each = pct * total / 100 / canary.len().max(1) as u32;
    let stable_each = (100 - pct) * total / 100 / stable.len().max(1) as u32;
    [
        with_weight(stable, stable_each),
        with_weight(canary, canary_each.max(1)),
    ]
    .concat()
}

fn canary(c: &CanaryConfig, t: &Goal) -> Vec<Phase> {
    let n = t.instances;
    let mut ids = Ids::new(t, Spread::Turns);
    let stable = t.current.to_vec();
    let stable_version = stable.first().map(|i| i.version.clone());
    let mut canaries: Vec<DesiredInstance> = Vec::new();
    let mut phases = Vec::new();
    let timeout = c.health_check_timeout;
    for step in &c.steps {
        let want = ((n * step.weight).div_ceil(100)).clamp(1, n) as usize;
        while canaries.len() < want {
            canaries.push(ids.take(t.version, 0));
        }
        phases.push(Phase {
            name: format!("canary at {}%", step.weight),
            instances: split(&stable, &canaries, step.weight),
            gates: vec![
                Gate::Converged { timeout },
                Gate::Analysis {
                    canary_version: t.version.to_string(),
                    stable_version: stable_version.clone(),
                    window: step.pause,
                    analysis: c.analysis.clone(),
                },
            ],
            traffic_pct: step.weight,
        });
    }
    let last = c.steps.last().map_or(0, |s| s.weight);
    while canaries.len() < n as usize {
        canaries.push(ids.take(t.version, 0));
    }
    if last > 0 {
        phases.push(Phase {
            name: format!("scale {} to {} instance(s)", t.version, n),
            instances: split(&stable, &canaries, last),
            gates: vec![Gate::Converged { timeout }],
            traffic_pct: last,
        });
    }
    phases.push(Phase {
        name: format!("promote {} to 100%", t.version),
        instances: with_weight(&canaries, UNIT),
        gates: vec![Gate::Converged { timeout }],
        traffic_pct: 100,
    });
    phases
}

fn recreate(c: &RecreateConfig, t: &Goal) -> Vec<Phase> {
    let mut ids = Ids::new(t, Spread::Blocks);
    vec![
        Phase {
            name: "stop every instance".into(),
            instances: Vec::new(),
            gates: vec![Gate::Converged {
                timeout: c.health_check_timeout,
            }],
            traffic_pct: 0,
        },
        Phase {
            name: format!("start {} instance(s) of {}", t.instances, t.version),
            instances: (0..t.instances)
                .map(|_| ids.take(t.version, UNIT))
                .collect(),
            gates: vec![Gate::Converged {
                timeout: c.health_check_timeout,
            }],
            traffic_pct: 100,
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::strategy::Strategy;
    use serde_json::json;

    fn config(s: Strategy, v: serde_json::Value) -> StrategyConfig {
        StrategyConfig::parse(s, v.as_object().unwrap()).unwrap()
    }

    fn running(version: &str, n: u64) -> Vec<DesiredInstance> {
        (1..=n)
            .map(|i| DesiredInstance {
                id: format!("i{i}"),
                version: version.into(),
                weight: UNIT,
                target: None,
            })
            .collect()
    }

    fn serving(p: &Phase) -> usize {
        p.instances.iter().filter(|i| i.weight > 0).count()
    }

    /// Instances that were already in the previous phase: these are healthy while the phase runs.
    fn carried_over(prev: &[DesiredInstance], p: &Phase) -> usize {
        p.instances
            .iter()
            .filter(|i| i.weight > 0 && prev.iter().any(|q| q.id == i.id))
            .count()
    }

    #[test]
    fn instances_are_spread_over_targets_rolling_goes_target_by_target() {
        let targets = ["web-1".to_string(), "web-2".to_string()];
        let on = |list: &[DesiredInstance]| -> Vec<String> {
            list.iter()
                .map(|i| format!("{}@{}", i.id, i.target.as_deref().unwrap_or("-")))
                .collect()
        };
        let rolling = config(
            Strategy::Rolling,
            json!({"max_surge": 1, "max_instances_down": 1}),
        );
        let first = plan(
            &rolling,
            &Goal {
                current: &[],
                version: "1",
                instances: 4,
                next_ordinal: 1,
                targets: &targets,
            },
        );
        let placed = first[0].instances.clone();
        assert_eq!(
            on(&placed),
            ["i1@web-1", "i2@web-1", "i3@web-2", "i4@web-2"]
        );
        let phases = plan(
            &rolling,
            &Goal {
                current: &placed,
                version: "2",
                instances: 4,
                next_ordinal: 5,
                targets: &targets,
            },
        );
        // The first instances stopped and started are web-1's; web-2 is touched after.
        let first_web2 = phases
            .iter()
            .position(|p| {
                p.instances
                    .iter()
                    .any(|i| i.version == "2" && i.target.as_deref() == Some("web-2"))
            })
            .unwrap();
        let web1_done = phases
            .iter()
            .position(|p| {
                !p.instances
                    .iter()
                    .any(|i| i.version == "1" && i.target.as_deref() == Some("web-1"))
            })
            .unwrap();
        assert!(web1_done <= first_web2, "{phases:#?}");
        let last = phases.last().unwrap();
        assert_eq!(
            on(&last.instances),
            ["i5@web-1", "i6@web-1", "i7@web-2", "i8@web-2"]
        );
        // A canary's first instances go to as many targets as they can.
        let canary = config(
            Strategy::Canary,
            json!({"steps": [{"weight": 50, "pause": "1s"}]}),
        );
        let phases = plan(
            &canary,
            &Goal {
                current: &placed,
                version: "2",
                instances: 4,
                next_ordinal: 5,
                targets: &targets,
            },
        );
        let canaries: Vec<String> = phases[0]
            .instances
            .iter()
            .filter(|i| i.version == "2")
            .map(|i| i.target.clone().unwrap())
            .collect();
        assert_eq!(canaries, ["web-1", "web-2"]);
        // No targets: nothing names one (the server's own agent).
        let local = plan(
            &rolling,
            &Goal {
                current: &[],
                version: "1",
                instances: 2,
                next_ordinal: 1,
                targets: &[],
            },
        );
        assert!(local[0].instances.iter().all(|i| i.target.is_none()));
    }

    #[test]
    fn rolling_keeps_capacity_and_surge_bounds() {
        for n in 1..=6u32 {
            for surge in 0..=2u32 {
                for down in 0..=2u32 {
                    if surge == 0 && down == 0 {
                        continue;
                    }
                    let c = config(
                        Strategy::Rolling,
                        json!({"max_surge": surge, "max_instances_down": down}),
                    );
                    let current = running("1.0.0", n as u64);
                    let t = Goal {
                        current: &current,
                        version: "2.0.0",
                        instances: n,
                        next_ordinal: 10,
                        targets: &[],
                    };
                    let phases = plan(&c, &t);
                    let last = phases.last().unwrap();
                    assert_eq!(last.instances.len(), n as usize);
                    assert!(last.instances.iter().all(|i| i.version == "2.0.0"));
                    let mut prev = current.clone();
                    for p in &phases {
                        // Never fewer healthy serving instances than max(1, n - down) while a phase runs.
                        let floor = (n.saturating_sub(down)).max(1) as usize;
                        assert!(
                            carried_over(&prev, p) >= floor.min(prev.len()),
                            "n={n} surge={surge} down={down}: {p:?}"
                        );
                        assert!(p.instances.len() <= (n + surge.max(1)) as usize);
                        prev = p.instances.clone();
                    }
                    let ids: std::collections::BTreeSet<_> =
                        last.instances.iter().map(|i| &i.id).collect();
                    assert_eq!(ids.len(), n as usize, "ids are unique");
                }
            }
        }
    }

    #[test]
    fn blue_green_switches_atomically_and_keeps_blue_for_a_while() {
        let c = config(Strategy::BlueGreen, json!({"scale_down_delay": "1s"}));
        let current = running("1.0.0", 2);
        let phases = plan(
            &c,
            &Goal {
                current: &current,
                version: "2.0.0",
                instances: 2,
                next_ordinal: 3,
                targets: &[],
            },
        );
        assert_eq!(phases.len(), 3);
        assert!(phases[0]
            .instances
            .iter()
            .filter(|i| i.version == "2.0.0")
            .all(|i| i.weight == 0));
        assert_eq!(serving(&phases[0]), 2);
        assert!(phases[1]
            .instances
            .iter()
            .all(|i| (i.version == "2.0.0") == (i.weight > 0)));
        assert_eq!(
            phases[1].instances.len(),
            4,
            "blue still runs after the switch"
        );
        assert!(phases[1].gates.contains(&Gate::Hold(Millis(1000))));
        assert_eq!(phases[2].instances.len(), 2);
    }

    #[test]
    fn canary_weights_match_the_steps() {
        let c = config(
            Strategy::Canary,
            json!({"steps": [{"weight": 10, "pause": "1s"}, {"weight": 50, "pause": "1s"}]}),
        );
        let current = running("1.0.0", 2);
        let phases = plan(
            &c,
            &Goal {
                current: &current,
                version: "2.0.0",
                instances: 2,
                next_ordinal: 3,
                targets: &[],
            },
        );
        let share = |p: &Phase| {
            let total: u32 = p.instances.iter().map(|i| i.weight).sum();
            let canary: u32 = p
                .instances
                .iter()
                .filter(|i| i.version == "2.0.0")
                .map(|i| i.weight)
                .sum();
            canary * 100 / total
        };
        assert_eq!(share(&phases[0]), 10);
        assert!(matches!(phases[0].gates[1], Gate::Analysis { .. }));
        assert_eq!(share(&phases[1]), 50);
        assert_eq!(share(phases.last().unwrap()), 100);
        assert_eq!(phases.last().unwrap().instances.len(), 2);
    }

    #[test]
    fn recreate_stops_then_starts() {
        let c = config(Strategy::Recreate, json!({}));
        let current = running("1.0.0", 3);
        let phases = plan(
            &c,
            &Goal {
                current: &current,
                version: "2.0.0",
                instances: 3,
                next_ordinal: 4,
                targets: &[],
            },
        );
        assert!(phases[0].instances.is_empty());
        assert_eq!(phases[1].instances.len(), 3);
    }

    #[test]
    fn first_deploy_starts_everything_at_once() {
        let c = config(Strategy::Canary, json!({}));
        let phases = plan(
            &c,
            &Goal {
                current: &[],
                version: "1.0.0",
                instances: 3,
                next_ordinal: 1,
                targets: &[],
            },
        );
        assert_eq!(phases.len(), 1);
        assert_eq!(serving(&phases[0]), 3);
        assert_eq!(next_ordinal(&phases[0].instances), 4);
    }
}
