//! The in-process event bus: every log line, event and progress update of every run, for
//! SSE and WebSocket followers. Durable copies live in the store; the bus only fans out.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use fraisier_store::{Event, LogLine};
use serde::Serialize;
use tokio::sync::broadcast;

/// One progress update (seed 001's WebSocket message).
#[derive(Clone, Debug, Serialize)]
pub struct Progress {
    /// The run's workspace: a follower by name matches it too (another workspace may have a
    /// fraise and environment of the same names).
    #[serde(skip)]
    pub tenant_id: String,
    #[serde(skip)]
    pub run_id: i64,
    #[serde(skip)]
    pub fraise: String,
    #[serde(skip)]
    pub environment: String,
    pub step: String,
    /// running | success | failed | warning
    pub status: String,
    pub message: String,
    pub progress_pct: u32,
    pub timestamp: DateTime<Utc>,
}

#[derive(Clone, Debug)]
pub enum BusMessage {
    Log(LogLine),
    Event(Event),
    Progress(Progress),
    /// Someone decided on a run waiting for approval.
    Decided {
        run_id: i64,
    },
    /// A run reached a final status.
    Finished {
        run_id: i64,
        status: fraisier_model::run::RunStatus,
    },
}

#[derive(Clone)]
pub struct Bus {
    tx: broadcast::Sender<Arc<BusMessage>>,
}

// === impl Bus ===

impl Bus {
    pub fn new() -> Bus {
        let (tx, _) = broadcast::channel(4096);
        Bus { tx }
    }

    pub fn publish(&self, message: BusMessage) {
        // No subscriber is not an error: nobody is following right now.
        let _ = self.tx.send(Arc::new(message));
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<BusMessage>> {
        self.tx.subscribe()
    }
}

impl Default for Bus {
    fn default() -> Self {
        Bus::new()
    }
}

// === impl BusMessage ===

impl BusMessage {
    pub fn run_id(&self) -> Option<i64> {
        match self {
            BusMessage::Log(l) => Some(l.run_id),
            BusMessage::Event(e) => e.run_id,
            BusMessage::Progress(p) => Some(p.run_id),
            BusMessage::Finished { run_id, .. } | BusMessage::Decided { run_id } => Some(*run_id),
        }
    }
}
