//! The one writer of what a run tells: its log lines, its events (with the notifications
//! they announce) and its progress. Every part of the engine reports a run through here, so a
//! line in the store, on the bus and in an announcement are always the same line.

use chrono::Utc;
use fraisier_model::run::{Component, EventType, LogLevel};
use fraisier_store::{Run, RunColumns, StoreError};
use serde_json::Value;

use crate::bus::{BusMessage, Progress};
use crate::Engine;

// === impl Engine ===

impl Engine {
    pub(crate) async fn log(
        &self,
        run: &Run,
        level: LogLevel,
        component: Component,
        message: &str,
        details: Value,
    ) {
        match self
            .inner
            .store
            .add_log(run.id, level, component, message, &details)
            .await
        {
            Ok(line) => self.inner.bus.publish(BusMessage::Log(line)),
            Err(e) => tracing::error!(error = %e, "cannot record a log line"),
        }
    }

    pub(crate) async fn event(&self, run: &Run, event: EventType, data: Value) {
        match self
            .inner
            .store
            .add_event(
                &run.tenant_id,
                Some(run.id),
                &run.fraise,
                &run.environment,
                event.as_str(),
                &data,
            )
            .await
        {
            Ok(e) => self.inner.bus.publish(BusMessage::Event(e)),
            Err(e) => tracing::error!(error = %e, "cannot record an event"),
        }
        self.notify(run, event, &data).await;
    }

    /// Ends a run: `columns` of its row and its last event in one write (`Store::end_run`),
    /// then the event's announcements. Log lines that tell the end go before it: a follower
    /// stops at the end.
    pub(crate) async fn end(
        &self,
        run: &Run,
        columns: RunColumns,
        event: EventType,
        data: Value,
    ) -> Result<(), StoreError> {
        let e = self
            .inner
            .store
            .end_run(run, columns, event.as_str(), &data)
            .await?;
        self.inner.bus.publish(BusMessage::Event(e));
        self.notify(run, event, &data).await;
        Ok(())
    }

    /// Progress is not stored: it is for those watching now; the steps are the record.
    pub(crate) fn progress(&self, run: &Run, step: &str, status: &str, message: &str, pct: u32) {
        self.inner.bus.publish(BusMessage::Progress(Progress {
            tenant_id: run.tenant_id.clone(),
            run_id: run.id,
            fraise: run.fraise.clone(),
            environment: run.environment.clone(),
            step: step.to_string(),
            status: status.to_string(),
            message: message.to_string(),
            progress_pct: pct.min(100),
            timestamp: Utc::now(),
        }));
    }
}
