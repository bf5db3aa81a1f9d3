//! The one loop that watches the provider for a gate: observe, let the gate's judge decide,
//! tell and do what it noted, sleep, again — until it passes or fails, the run is cancelled
//! or its time is up.

use std::time::Duration;

use fraisier_model::run::{Component, FailureCode, HealthCheckStatus, LogLevel};
use fraisier_model::service::{DesiredService, ObservedService};
use fraisier_model::strategy::Analysis;
use fraisier_model::Millis;
use serde_json::json;
use tokio::time::Instant;

use super::gates::{self, Canary, Converge, Hold, Judge, Look, Note, Scheduled, Seen};
use super::{failure, Failure, RunCtx};
use crate::ProviderError;

// === impl RunCtx ===

impl RunCtx<'_> {
    /// Looks at `desired`'s service every `every` until `judge` passes or fails it.
    async fn watch<J: Judge>(
        &mut self,
        desired: &DesiredService,
        every: Duration,
        judge: &mut J,
    ) -> Result<J::Pass, Failure> {
        let began = Instant::now();
        loop {
            self.interrupted()?;
            let answer = self
                .engine
                .provider()
                .observe(&desired.fraise, &desired.environment)
                .await;
            let seen = match &answer {
                Ok(Some(o)) => Seen::Service(o),
                Ok(None) => Seen::Absent,
                Err(ProviderError::Lost(e)) => Seen::Lost(e),
                Err(e) => {
                    tracing::debug!(error = %e, "no observation this time");
                    Seen::Unanswered
                }
            };
            let judgement = judge.judge(seen, began.elapsed());
            for note in judgement.notes {
                match note {
                    Note::Event(event, data) => self.event(event, data).await,
                    Note::Log(level, component, message, data) => {
                        self.log(level, component, &message, data).await
                    }
                    Note::Reapply => {
                        if let Err(e) = self.engine.provider().apply(desired).await {
                            tracing::debug!(error = %e, "saying the desired state again failed");
                        }
                        judge.reapplied(began.elapsed());
                    }
                }
            }
            match judgement.look {
                Look::Pass(p) => return Ok(p),
                Look::Fail(f) => return Err(f),
                Look::Wait => self.sleep(every).await?,
            }
        }
    }

    /// Looks between the samples of a gate that watches traffic, not start-up.
    fn traffic_every(&self) -> Duration {
        self.engine
            .settings()
            .poll_interval
            .max(Duration::from_millis(200))
    }

    /// Waits until the provider runs exactly `desired`, every instance healthy.
    pub(super) async fn converged(
        &mut self,
        desired: &DesiredService,
        timeout: Millis,
    ) -> Result<ObservedService, Failure> {
        let version = self.run.version.clone();
        let every = self.engine.settings().poll_interval;
        self.watch(
            desired,
            every,
            &mut Converge::new(desired, &version, timeout),
        )
        .await
    }

    pub(super) async fn hold(
        &mut self,
        desired: &DesiredService,
        d: Millis,
    ) -> Result<(), Failure> {
        let every = self.traffic_every();
        self.watch(
            desired,
            every,
            &mut Hold {
                desired,
                duration: d,
            },
        )
        .await
    }

    pub(super) async fn analysis(
        &mut self,
        desired: &DesiredService,
        canary: &str,
        stable: Option<&str>,
        window: Millis,
        a: &Analysis,
    ) -> Result<(), Failure> {
        self.log(
            LogLevel::Info,
            Component::HealthCheck,
            &format!(
                "Analysing {canary} for {window} against {}",
                stable.unwrap_or("thresholds")
            ),
            json!({ "analysis": a }),
        )
        .await;
        let every = self.traffic_every();
        self.watch(
            desired,
            every,
            &mut Canary::new(desired, canary, stable, window, a),
        )
        .await
    }

    /// Waits until the agent has installed the scheduled release and times its schedule.
    /// Installing a large release may take a while: the run's own timeout bounds it.
    pub(super) async fn scheduled(
        &mut self,
        desired: &DesiredService,
    ) -> Result<Option<String>, Failure> {
        let version = self.run.version.clone();
        let mut judge = Scheduled {
            desired,
            version: &version,
        };
        self.watch(desired, Duration::from_millis(100), &mut judge)
            .await
            .map(Some)
    }

    pub(super) async fn final_health(&mut self) -> Result<Option<String>, Failure> {
        if self.opts.skip_health_check {
            self.run.health_check_status = HealthCheckStatus::Skipped;
            return Ok(Some("skipped".into()));
        }
        let desired = self.applied.clone().unwrap_or_default();
        let o = self.observed().await.unwrap_or_default();
        let h = gates::final_health(&desired, &o);
        self.run.health_details = json!({ "checks_passed": h.healthy, "checks_total": h.total, "last_check_at": h.last_check_at });
        if h.healthy < h.total {
            self.run.health_check_status = HealthCheckStatus::Failing;
            return Err(failure(
                FailureCode::HealthCheckFailed,
                format!(
                    "{} of {} instances healthy after the deploy",
                    h.healthy, h.total
                ),
                gates::unhealthy_details(&o, &desired),
            ));
        }
        self.run.health_check_status = HealthCheckStatus::Passing;
        self.event(
            fraisier_model::run::EventType::HealthCheckPassed,
            json!({ "checks_passed": h.healthy, "checks_total": h.total }),
        )
        .await;
        Ok(Some(format!("{}/{} instances healthy", h.healthy, h.total)))
    }
}
