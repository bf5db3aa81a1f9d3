//! Admission: the checks a desired state or an exec request must pass before the agent accepts
//! it, so that nothing it persists can later fail to start for a reason known up front.

use std::collections::BTreeSet;

use fraisier_model::names::{agent_name_problem, name_problem, version_problem};
use fraisier_model::service::{
    DesiredService, ExecRequest, HealthCheckSpec, ProbeKind, ReleaseSpec,
};

/// Upper bounds that keep a typo from meaning "wait for a year".
const MAX_INSTANCES: usize = 256;
const MAX_WAIT_MS: u64 = 3_600_000;
/// The longest a scheduled execution may run (a week): `fraisier_model::config` says the same.
const MAX_JOB_MS: u64 = fraisier_model::config::MAX_SCHEDULE_TIMEOUT_MS;
const MAX_EXEC_TIMEOUT_MS: u64 = 24 * 3_600_000;

/// Why a request is refused: the field at fault and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub field: String,
    pub message: String,
}

fn refuse(field: impl Into<String>, message: impl Into<String>) -> Refusal {
    Refusal {
        field: field.into(),
        message: message.into(),
    }
}

/// Checks a desired state PUT at `/v1/services/{fraise}/{environment}`.
pub fn check_desired(fraise: &str, environment: &str, d: &DesiredService) -> Result<(), Refusal> {
    check_names(&d.fraise, &d.environment)?;
    if d.fraise != fraise || d.environment != environment {
        return Err(refuse(
            "fraise",
            format!(
                "body names {}@{} but the path names {fraise}@{environment}",
                d.fraise, d.environment
            ),
        ));
    }
    if d.port == Some(0) {
        return Err(refuse("port", "must be between 1 and 65535"));
    }
    for (version, spec) in &d.releases {
        if let Some(p) = version_problem(version) {
            return Err(refuse(
                format!("releases.{version}"),
                format!("invalid version {version:?}: {p}"),
            ));
        }
        check_release(&format!("releases.{version}"), spec)?;
    }
    if d.instances.len() > MAX_INSTANCES {
        return Err(refuse(
            "instances",
            format!("at most {MAX_INSTANCES} instances"),
        ));
    }
    let mut ids = BTreeSet::new();
    for (i, inst) in d.instances.iter().enumerate() {
        let at = format!("instances[{i}]");
        if let Some(p) = instance_id_problem(&inst.id) {
            return Err(refuse(
                format!("{at}.id"),
                format!("invalid instance id {:?}: {p}", inst.id),
            ));
        }
        if !ids.insert(inst.id.as_str()) {
            return Err(refuse(
                format!("{at}.id"),
                format!("instance id {:?} is used twice", inst.id),
            ));
        }
        // Every key of `releases` was checked above, so an instance whose version has an
        // entry has a valid one.
        check_runnable(d, &inst.version, &format!("{at}.version"), "an instance")?;
    }
    if let Some(hc) = &d.health_check {
        check_health(hc)?;
    }
    if d.drain_timeout_ms > MAX_WAIT_MS {
        return Err(refuse("drain_timeout_ms", format!("at most {MAX_WAIT_MS}")));
    }
    if d.stop_grace_ms > MAX_WAIT_MS {
        return Err(refuse("stop_grace_ms", format!("at most {MAX_WAIT_MS}")));
    }
    if let Some(s) = &d.schedule {
        fraisier_model::cron::CronSchedule::parse(&s.cron)
            .map_err(|e| refuse("schedule.cron", e))?;
        if let Some(zone) = &s.timezone {
            fraisier_model::cron::ScheduleZone::parse(zone, &fraisier_model::cron::zoneinfo_dir())
                .map_err(|e| refuse("schedule.timezone", e))?;
        }
        check_runnable(d, &s.version, "schedule.version", "a scheduled job")?;
        if s.timeout_ms == 0 || s.timeout_ms > MAX_JOB_MS {
            return Err(refuse(
                "schedule.timeout_ms",
                format!("must be from 1 to {MAX_JOB_MS}"),
            ));
        }
    }
    Ok(())
}

/// `version` (named at `field`) has a release in `d` with a command for `what` to run.
fn check_runnable(
    d: &DesiredService,
    version: &str,
    field: &str,
    what: &str,
) -> Result<(), Refusal> {
    match d.releases.get(version) {
        None => Err(refuse(
            field,
            format!("version {version:?} has no entry in `releases`"),
        )),
        Some(spec) if spec.command.trim().is_empty() => Err(refuse(
            format!("releases.{version}.command"),
            format!("{what} needs a command to run"),
        )),
        Some(_) => Ok(()),
    }
}

/// Checks a `POST /v1/exec` body.
pub fn check_exec(req: &ExecRequest) -> Result<(), Refusal> {
    check_names(&req.fraise, &req.environment)?;
    if let Some(p) = version_problem(&req.version) {
        return Err(refuse(
            "version",
            format!("invalid version {:?}: {p}", req.version),
        ));
    }
    check_release("release", &req.release)?;
    if req.command.trim().is_empty() {
        return Err(refuse("command", "must not be empty"));
    }
    if req.command.contains('\0') {
        return Err(refuse("command", "must not contain NUL"));
    }
    check_env("env", req.env.iter())?;
    if req.timeout_ms == 0 || req.timeout_ms > MAX_EXEC_TIMEOUT_MS {
        return Err(refuse(
            "timeout_ms",
            format!("must be between 1 and {MAX_EXEC_TIMEOUT_MS}"),
        ));
    }
    Ok(())
}

/// Instance ids name log files: the same rules as versions, at most 64 characters.
pub fn instance_id_problem(id: &str) -> Option<String> {
    if id.len() > 64 {
        return Some("must be at most 64 characters long".into());
    }
    version_problem(id)
}

fn check_names(fraise: &str, environment: &str) -> Result<(), Refusal> {
    // `workspace.fraise` outside the default workspace (names::agent_name).
    if let Some(p) = agent_name_problem(fraise) {
        return Err(refuse(
            "fraise",
            format!("invalid fraise name {fraise:?}: {p}"),
        ));
    }
    if let Some(p) = name_problem(environment) {
        return Err(refuse(
            "environment",
            format!("invalid environment name {environment:?}: {p}"),
        ));
    }
    Ok(())
}

fn check_release(at: &str, spec: &ReleaseSpec) -> Result<(), Refusal> {
    if spec.command.contains('\0') {
        return Err(refuse(format!("{at}.command"), "must not contain NUL"));
    }
    if let Some(wd) = &spec.working_directory {
        if wd.as_os_str().is_empty() {
            return Err(refuse(
                format!("{at}.working_directory"),
                "must not be empty",
            ));
        }
    }
    check_env(&format!("{at}.env"), spec.env.iter())?;
    // Sealed values are checked when they are opened; their names go into an environment.
    let empty = String::new();
    check_env(
        &format!("{at}.secrets"),
        spec.secrets.keys().map(|k| (k, &empty)),
    )
}

fn check_env<'a>(
    at: &str,
    env: impl Iterator<Item = (&'a String, &'a String)>,
) -> Result<(), Refusal> {
    for (k, v) in env {
        if k.is_empty() || k.contains(['=', '\0']) {
            return Err(refuse(
                format!("{at}.{k}"),
                "variable names must be non-empty, without '=' or NUL",
            ));
        }
        if v.contains('\0') {
            return Err(refuse(format!("{at}.{k}"), "values must not contain NUL"));
        }
    }
    Ok(())
}

fn check_health(hc: &HealthCheckSpec) -> Result<(), Refusal> {
    if hc.interval_ms == 0 || hc.timeout_ms == 0 {
        return Err(refuse(
            "health_check",
            "interval_ms and timeout_ms must be above 0",
        ));
    }
    if hc.healthy_threshold == 0 || hc.unhealthy_threshold == 0 {
        return Err(refuse("health_check", "thresholds must be at least 1"));
    }
    match &hc.kind {
        ProbeKind::Http { path, .. } if !path.starts_with('/') => {
            Err(refuse("health_check.path", "must start with '/'"))
        }
        ProbeKind::Command { command } if command.trim().is_empty() || command.contains('\0') => {
            Err(refuse(
                "health_check.command",
                "must be a non-empty command",
            ))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fraisier_model::service::DesiredInstance;
    use fraisier_model::FraiseType;

    fn desired() -> DesiredService {
        DesiredService {
            fraise: "api".into(),
            environment: "production".into(),
            generation: 1,
            kind: FraiseType::Api,
            port: Some(18080),
            health_check: None,
            releases: [(
                "1.0.0".to_string(),
                ReleaseSpec {
                    source: None,
                    command: "run".into(),
                    working_directory: None,
                    env: Default::default(),
                    secrets: Default::default(),
                    artifact: None,
                },
            )]
            .into(),
            instances: vec![DesiredInstance {
                id: "a".into(),
                version: "1.0.0".into(),
                weight: 100,
                target: None,
            }],
            drain_timeout_ms: 1000,
            stop_grace_ms: 1000,
            schedule: None,
        }
    }

    fn field(d: &DesiredService) -> String {
        check_desired("api", "production", d).unwrap_err().field
    }

    #[test]
    fn accepts_a_valid_desired_state() {
        assert_eq!(check_desired("api", "production", &desired()), Ok(()));
    }

    #[test]
    fn refuses_what_cannot_run() {
        let mut d = desired();
        d.fraise = "../etc".into();
        assert_eq!(field(&d), "fraise");

        let d = desired();
        assert_eq!(
            check_desired("api", "staging", &d).unwrap_err().field,
            "fraise"
        );

        let mut d = desired();
        d.instances[0].version = "2.0.0".into();
        assert_eq!(field(&d), "instances[0].version");

        let mut d = desired();
        d.instances.push(d.instances[0].clone());
        assert_eq!(field(&d), "instances[1].id");

        let mut d = desired();
        d.instances[0].id = "../x".into();
        assert_eq!(field(&d), "instances[0].id");

        let mut d = desired();
        let spec = d.releases["1.0.0"].clone();
        d.releases.insert("../2".into(), spec);
        assert_eq!(field(&d), "releases.../2");

        let mut d = desired();
        d.port = Some(0);
        assert_eq!(field(&d), "port");

        let mut d = desired();
        d.health_check = Some(HealthCheckSpec {
            kind: ProbeKind::Http {
                path: "health".into(),
                expected_status: vec![],
            },
            interval_ms: 100,
            timeout_ms: 100,
            healthy_threshold: 1,
            unhealthy_threshold: 1,
        });
        assert_eq!(field(&d), "health_check.path");
    }

    #[test]
    fn refuses_a_schedule_that_cannot_run() {
        let schedule = |cron: &str, zone: Option<&str>, version: &str| {
            let mut d = desired();
            d.instances.clear();
            d.schedule = Some(fraisier_model::service::ScheduleSpec {
                cron: cron.into(),
                timezone: zone.map(str::to_string),
                version: version.into(),
                timeout_ms: 1000,
            });
            d
        };
        assert_eq!(
            check_desired("api", "production", &schedule("0 3 * * *", None, "1.0.0")),
            Ok(())
        );
        assert_eq!(
            field(&schedule("0 25 * * *", None, "1.0.0")),
            "schedule.cron"
        );
        assert_eq!(
            field(&schedule("0 3 * * *", Some("../../etc/passwd"), "1.0.0")),
            "schedule.timezone"
        );
        assert_eq!(
            field(&schedule("0 3 * * *", None, "2.0.0")),
            "schedule.version"
        );
    }

    #[test]
    fn exec_needs_a_command_and_a_timeout() {
        let req = ExecRequest {
            fraise: "api".into(),
            environment: "production".into(),
            version: "1.0.0".into(),
            release: desired().releases["1.0.0"].clone(),
            command: "echo hi".into(),
            env: Default::default(),
            timeout_ms: 1000,
        };
        assert_eq!(check_exec(&req), Ok(()));
        assert_eq!(
            check_exec(&ExecRequest {
                timeout_ms: 0,
                ..req.clone()
            })
            .unwrap_err()
            .field,
            "timeout_ms"
        );
        assert_eq!(
            check_exec(&ExecRequest {
                command: " ".into(),
                ..req
            })
            .unwrap_err()
            .field,
            "command"
        );
    }
}
