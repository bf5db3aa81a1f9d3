//! Work every server would otherwise do twice on a shared database — sending notifications,
//! deploying queued pushes, publishing events — done by one server at a time: the holder of
//! the job's lease in the store, renewed every third of `server.run_lease`. When the holder
//! dies its lease lapses and another server takes the job on. On SQLite there is one server.

use std::time::{Duration, Instant};

use crate::Engine;

/// A server's hold on one job, asked for (cheaply) before each piece of the work.
pub struct JobLease {
    engine: Engine,
    job: &'static str,
    lease: Duration,
    /// When the store last answered, and what.
    asked: Option<(Instant, bool)>,
}

// === impl JobLease ===

impl JobLease {
    /// Whether this server does the job now. Asks the store at most every third of a lease;
    /// a store that cannot be asked means no (another server may hold it).
    pub async fn held(&mut self) -> bool {
        let store = self.engine.store();
        if store.backend() == "sqlite" {
            return true;
        }
        if let Some((at, held)) = self.asked {
            if at.elapsed() < self.lease / 3 {
                return held;
            }
        }
        // Timed from before the ask: the lease runs from then, whatever the store's delay.
        let asked_at = Instant::now();
        let until = chrono::Utc::now()
            + chrono::Duration::from_std(self.lease).unwrap_or(chrono::Duration::seconds(15));
        let ask = store.hold_job(self.job, self.engine.server_id(), until);
        let held = match tokio::time::timeout(self.lease / 3, ask).await {
            Ok(Ok(held)) => held,
            Ok(Err(e)) => {
                tracing::warn!(job = self.job, error = %e, "cannot renew the job's lease; leaving it");
                false
            }
            Err(_) => {
                tracing::warn!(
                    job = self.job,
                    "the store did not answer in time; leaving the job"
                );
                false
            }
        };
        if self.asked.map(|(_, was)| was) != Some(held) {
            if held {
                tracing::info!(job = self.job, "this server does the job now");
            } else {
                tracing::info!(job = self.job, "another server does the job");
            }
        }
        self.asked = Some((asked_at, held));
        held
    }
}

// === impl Engine ===

impl Engine {
    /// This server's lease on `job`, not asked for yet.
    pub fn job_lease(&self, job: &'static str) -> JobLease {
        JobLease {
            engine: self.clone(),
            job,
            lease: self.inner.settings.run_lease,
            asked: None,
        }
    }
}
