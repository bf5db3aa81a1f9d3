//! What a run executes once on its target: hooks, the smoke test, a job, and the build of
//! its release.

use std::collections::BTreeMap;

use fraisier_model::run::{Component, EventType, FailureCode, LogLevel};
use fraisier_model::service::{ExecRequest, ObservedService};
use fraisier_store::run_id_string;
use serde_json::json;
use tokio::time::Instant;

use super::{failure, Failure, RunCtx};

// === impl RunCtx ===

impl RunCtx<'_> {
    pub(super) async fn smoke_test(
        &mut self,
        command: &str,
        observed: Option<&ObservedService>,
    ) -> Result<(), Failure> {
        let urls: Vec<String> = observed
            .map(|o| {
                o.instances
                    .iter()
                    .filter(|i| i.version == self.run.version && i.weight == 0)
                    .filter_map(|i| i.port.map(|p| format!("http://127.0.0.1:{p}")))
                    .collect()
            })
            .unwrap_or_default();
        let env = BTreeMap::from([
            ("FRAISIER_TARGET_URLS".to_string(), urls.join(" ")),
            (
                "FRAISIER_TARGET_URL".to_string(),
                urls.first().cloned().unwrap_or_default(),
            ),
        ]);
        self.exec(command, env, Component::Hook, "smoke test", 300_000)
            .await
            .map(|_| ())
    }

    pub(super) async fn hooks(
        &mut self,
        hooks: &[String],
        which: &str,
    ) -> Result<Option<String>, Failure> {
        if hooks.is_empty() {
            return Ok(Some(format!("no {which} hooks")));
        }
        for hook in hooks {
            self.exec(
                hook,
                BTreeMap::new(),
                Component::Hook,
                &format!("{which} hook"),
                600_000,
            )
            .await?;
        }
        Ok(Some(format!("{} {which} hook(s) succeeded", hooks.len())))
    }

    /// Builds the run's commit into the store, unless the run's version is there already.
    pub(super) async fn build(&mut self) -> Result<Option<String>, Failure> {
        if let Some(a) = &self.opts.artifact {
            return Ok(Some(format!(
                "skipped: release {} is in the store ({})",
                self.run.version, a.digest
            )));
        }
        let Some(plan) = self.opts.build.clone() else {
            return Ok(Some("skipped: nothing to build".into()));
        };
        let built = self
            .engine
            .build_release(
                &self.run,
                &self.fraise,
                &plan,
                self.cancel.clone(),
                self.deadline,
            )
            .await;
        let built = match built {
            Ok(b) => b,
            Err(crate::build::BuildError::Interrupted) => {
                self.interrupted()?;
                return Err(failure(
                    FailureCode::BuildFailed,
                    "the build was stopped",
                    json!({}),
                ));
            }
            Err(e) => {
                return Err(failure(
                    FailureCode::BuildFailed,
                    e.to_string(),
                    json!({ "commit": plan.commit, "ref": plan.reference }),
                ))
            }
        };
        let digest = built.artifact.digest.clone();
        if let Some(m) = self.run.metadata.as_object_mut() {
            m.insert("artifact_digest".into(), json!(digest));
        }
        self.opts.artifact = Some(built.artifact);
        self.save_options().await?;
        Ok(Some(if built.reused {
            format!(
                "release {} was in the store already ({digest})",
                self.run.version
            )
        } else {
            format!(
                "built {} from {} ({digest})",
                self.run.version,
                &plan.commit[..plan.commit.len().min(12)]
            )
        }))
    }

    pub(super) async fn job(&mut self) -> Result<Option<String>, Failure> {
        let command = self.fraise.command.clone().unwrap_or_default();
        let left = self
            .deadline
            .saturating_duration_since(Instant::now())
            .as_millis() as u64;
        let code = self
            .exec(
                &command,
                BTreeMap::new(),
                Component::Provider,
                "job",
                left.max(1000),
            )
            .await?;
        Ok(Some(format!("job exited with {code}")))
    }

    /// Runs a command once on the target in the run's release; logs its output.
    pub(super) async fn exec(
        &mut self,
        command: &str,
        mut env: BTreeMap<String, String>,
        component: Component,
        what: &str,
        timeout_ms: u64,
    ) -> Result<i32, Failure> {
        self.interrupted()?;
        env.insert("FRAISIER_DEPLOYMENT_ID".into(), run_id_string(self.run.id));
        if let Some(prev) = &self.run.previous_version {
            env.insert("FRAISIER_PREVIOUS_VERSION".into(), prev.clone());
        }
        let req = ExecRequest {
            fraise: self.agent_name(),
            environment: self.run.environment.clone(),
            version: self.run.version.clone(),
            release: self.release_for(&self.run.version),
            command: command.to_string(),
            env,
            timeout_ms,
        };
        self.log(
            LogLevel::Info,
            component,
            &format!("Running {what}: {command}"),
            json!({}),
        )
        .await;
        let result = self.engine.provider().exec(&req).await.map_err(|e| {
            failure(
                FailureCode::ProviderError,
                format!("{what} could not run: {e}"),
                json!({ "command": command }),
            )
        })?;
        for line in &result.output {
            self.log(LogLevel::Info, component, line, json!({ "source": what }))
                .await;
        }
        match result.exit_code {
            Some(0) => {
                self.event(
                    EventType::HookCompleted,
                    json!({ "command": command, "kind": what, "duration_ms": result.duration_ms }),
                )
                .await;
                Ok(0)
            }
            code => {
                let why = if result.timed_out {
                    format!("timed out after {timeout_ms} ms")
                } else {
                    format!(
                        "exited with {}",
                        code.map_or("a signal".to_string(), |c| c.to_string())
                    )
                };
                let message = format!("{what} `{command}` {why}");
                self.event(
                    EventType::HookFailed,
                    json!({ "command": command, "kind": what, "exit_code": code }),
                )
                .await;
                Err(failure(
                    FailureCode::DeploymentFailed,
                    message,
                    json!({ "command": command, "exit_code": code, "timed_out": result.timed_out }),
                ))
            }
        }
    }
}
