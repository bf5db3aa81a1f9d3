//! Work every server would otherwise do twice on a shared database — sending notifications,
//! deploying queued pushes, publishing events — done by one server at a time: the holder of
//! the job's lease in the store, renewed every third of `server.run_lease`. When the holder
//! dies its lease lapses and another server takes the job on; when it stops cleanly it gives
//! its jobs up, and another server takes them on at its next ask. On SQLite there is one
//! server.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{watch, Notify};

use crate::Engine;

/// This server's jobs as a whole, for a clean stop.
pub(crate) struct Jobs {
    stopping: AtomicBool,
    /// Leases handed out and neither given up nor dropped (a job that does not run here,
    /// such as publishing events with no NATS configured, drops its lease).
    live: watch::Sender<usize>,
    /// Wakes the job loops idling between pieces of work when the stop begins.
    wake: Notify,
}

/// A server's hold on one job, asked for (cheaply) before each piece of the work.
pub struct JobLease {
    engine: Engine,
    job: &'static str,
    lease: Duration,
    /// When the store last answered, and what.
    asked: Option<(Instant, bool)>,
    given_up: bool,
    /// Still counted among the live leases that stopping waits for. Apart from `given_up`:
    /// a give-up cancelled while it awaits the store must still be uncounted, when dropped.
    counted: bool,
}

// === impl Jobs ===

impl Default for Jobs {
    fn default() -> Jobs {
        Jobs {
            stopping: AtomicBool::new(false),
            live: watch::Sender::new(0),
            wake: Notify::new(),
        }
    }
}

// === impl JobLease ===

impl JobLease {
    /// Whether this server does the job now. Asks the store at most every third of a lease;
    /// a store that cannot be asked means no (another server may hold it).
    pub async fn held(&mut self) -> bool {
        // Asked between two pieces of work: giving the job up here leaves none half done.
        if self.engine.inner.jobs.stopping.load(Ordering::SeqCst) {
            self.give_up().await;
            return false;
        }
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

    /// Waits `idle` between pieces of work, or less if the server begins to stop.
    pub async fn idle(&self, idle: Duration) {
        if self.given_up {
            // Nothing more to do here until the process ends (returning would spin).
            return std::future::pending().await;
        }
        let jobs = &self.engine.inner.jobs;
        let woken = jobs.wake.notified();
        if jobs.stopping.load(Ordering::SeqCst) {
            return; // on to the ask that gives the job up
        }
        tokio::select! {
            () = tokio::time::sleep(idle) => {}
            () = woken => {}
        }
    }

    async fn give_up(&mut self) {
        if std::mem::replace(&mut self.given_up, true) {
            return;
        }
        let store = self.engine.store();
        // Whatever the last ask said: a renewal that timed out may still have been written,
        // and the release only ever deletes this server's own row.
        if store.backend() != "sqlite" && self.asked.is_some() {
            let release = store.release_job(self.job, self.engine.server_id());
            match tokio::time::timeout(self.lease / 3, release).await {
                Ok(Ok(())) => tracing::info!(job = self.job, "gave the job up"),
                Ok(Err(e)) => {
                    tracing::warn!(job = self.job, error = %e, "cannot give the job up; it lapses");
                }
                Err(_) => {
                    tracing::warn!(job = self.job, "cannot give the job up in time; it lapses")
                }
            }
        }
        self.uncount();
    }

    fn uncount(&mut self) {
        if std::mem::replace(&mut self.counted, false) {
            self.engine.inner.jobs.live.send_modify(|n| *n -= 1);
        }
    }
}

impl Drop for JobLease {
    fn drop(&mut self) {
        // A lease held in the store lapses.
        self.uncount();
    }
}

// === impl Engine ===

impl Engine {
    /// This server's lease on `job`, not asked for yet.
    pub fn job_lease(&self, job: &'static str) -> JobLease {
        self.inner.jobs.live.send_modify(|n| *n += 1);
        JobLease {
            engine: self.clone(),
            job,
            lease: self.inner.settings.run_lease,
            asked: None,
            given_up: false,
            counted: true,
        }
    }

    /// Starts giving this server's jobs up (see [`Engine::stop_jobs`]) without waiting.
    pub fn begin_stopping_jobs(&self) {
        let jobs = &self.inner.jobs;
        jobs.stopping.store(true, Ordering::SeqCst);
        jobs.wake.notify_waiters();
    }

    /// Gives this server's jobs up (a clean stop): each job's loop lets its lease go at its
    /// next ask, between two pieces of work, so that another server takes the job on at once
    /// instead of after `server.run_lease`. Waits up to `grace` for them; a loop busy longer
    /// keeps its lease until it lapses, as after a crash. Runs are not given up: one stopped
    /// mid-step is taken over once its lease lapses.
    pub async fn stop_jobs(&self, grace: Duration) {
        self.begin_stopping_jobs();
        let mut live = self.inner.jobs.live.subscribe();
        let _ = tokio::time::timeout(grace, live.wait_for(|n| *n == 0)).await;
    }
}
