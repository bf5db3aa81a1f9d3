//! Whose turn it is to write, on SQLite. SQLite has one writer at a time; when writers race
//! for its lock the losers nap in its busy handler (1, 2, 5 … 100 ms) while later arrivals
//! overtake them. Writers here instead wait in line for a turn, and a request a client is
//! waiting on (creating or cancelling a run, a password change) goes before the stream of
//! progress writes of the runs being executed, so that `POST /deployments` answers promptly
//! while hundreds of runs record their steps.
//!
//! The background line is never starved: after `INTERACTIVE_BURST` interactive turns in a
//! row, a waiting background writer goes next.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::oneshot;

/// Interactive turns granted in a row while background writers wait.
const INTERACTIVE_BURST: u32 = 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Priority {
    /// A client is waiting for this write's answer.
    Interactive,
    /// Progress of work in the background (steps, events, logs, run state).
    Background,
}

#[derive(Default)]
pub(crate) struct WriteTurns {
    line: Mutex<Line>,
}

#[derive(Default)]
struct Line {
    taken: bool,
    interactive: VecDeque<oneshot::Sender<()>>,
    background: VecDeque<oneshot::Sender<()>>,
    interactive_in_a_row: u32,
}

/// The right to write; the next writer in line gets it when this is dropped.
pub(crate) struct Turn {
    turns: Arc<WriteTurns>,
}

/// A writer waiting in line. Dropped while waiting (its request was cancelled), it leaves the
/// line, and hands the turn on if it had just been given it.
struct Waiting {
    turns: Arc<WriteTurns>,
    rx: oneshot::Receiver<()>,
    granted: bool,
}

// === impl WriteTurns ===

impl WriteTurns {
    pub(crate) async fn take(self: &Arc<Self>, priority: Priority) -> Turn {
        let rx = {
            let mut line = self.lock();
            if !line.taken {
                line.taken = true;
                return Turn {
                    turns: self.clone(),
                };
            }
            let (tx, rx) = oneshot::channel();
            match priority {
                Priority::Interactive => line.interactive.push_back(tx),
                Priority::Background => line.background.push_back(tx),
            }
            rx
        };
        let mut waiting = Waiting {
            turns: self.clone(),
            rx,
            granted: false,
        };
        // The sender is only dropped by `release` after a failed send, never unsent.
        let _ = (&mut waiting.rx).await;
        waiting.granted = true;
        Turn {
            turns: self.clone(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Line> {
        self.line.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Gives the turn to the next writer in line, or frees it.
    fn release(&self) {
        let mut line = self.lock();
        loop {
            let background_first =
                line.interactive_in_a_row >= INTERACTIVE_BURST && !line.background.is_empty();
            let next = if background_first {
                line.interactive_in_a_row = 0;
                line.background.pop_front()
            } else if let Some(tx) = line.interactive.pop_front() {
                line.interactive_in_a_row += 1;
                Some(tx)
            } else {
                line.interactive_in_a_row = 0;
                line.background.pop_front()
            };
            match next {
                // A waiter that left the line refuses the turn; try the next one.
                Some(tx) => {
                    if tx.send(()).is_ok() {
                        return;
                    }
                }
                None => {
                    line.taken = false;
                    return;
                }
            }
        }
    }
}

// === impl Turn ===

impl Drop for Turn {
    fn drop(&mut self) {
        self.turns.release();
    }
}

// === impl Waiting ===

impl Drop for Waiting {
    fn drop(&mut self) {
        if self.granted {
            return;
        }
        // Closing first means no turn can arrive after the check below.
        self.rx.close();
        if self.rx.try_recv().is_ok() {
            self.turns.release();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn one_writer_at_a_time_interactive_first() {
        let turns = Arc::new(WriteTurns::default());
        let first = turns.take(Priority::Background).await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for (name, priority) in [
            ("b1", Priority::Background),
            ("i1", Priority::Interactive),
            ("b2", Priority::Background),
            ("i2", Priority::Interactive),
        ] {
            let (turns, order) = (turns.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let _turn = turns.take(priority).await;
                order.lock().unwrap().push(name);
            }));
            // Queue them in this order.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(order.lock().unwrap().is_empty(), "all wait for the turn");
        drop(first);
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), ["i1", "i2", "b1", "b2"]);
    }

    #[tokio::test]
    async fn background_writers_are_not_starved() {
        let turns = Arc::new(WriteTurns::default());
        let first = turns.take(Priority::Interactive).await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        let mut names = vec![("b".to_string(), Priority::Background)];
        for i in 0..20 {
            names.push((format!("i{i}"), Priority::Interactive));
        }
        for (name, priority) in names {
            let (turns, order) = (turns.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let _turn = turns.take(priority).await;
                order.lock().unwrap().push(name);
            }));
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        drop(first);
        for t in tasks {
            t.await.unwrap();
        }
        let order = order.lock().unwrap();
        let b = order.iter().position(|n| n == "b").unwrap();
        assert_eq!(b, INTERACTIVE_BURST as usize, "{order:?}");
    }

    #[tokio::test]
    async fn a_cancelled_waiter_does_not_keep_the_turn() {
        let turns = Arc::new(WriteTurns::default());
        let first = turns.take(Priority::Background).await;
        // Waits, then is cancelled while waiting.
        let cancelled = {
            let turns = turns.clone();
            tokio::spawn(async move {
                let _turn = turns.take(Priority::Interactive).await;
                tokio::time::sleep(Duration::from_secs(3600)).await;
            })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        cancelled.abort();
        let _ = cancelled.await;
        drop(first);
        tokio::time::timeout(Duration::from_secs(1), turns.take(Priority::Background))
            .await
            .expect("the turn is free again");
    }

    #[tokio::test]
    async fn a_waiter_dropped_just_after_being_granted_hands_the_turn_on() {
        let turns = Arc::new(WriteTurns::default());
        let first = turns.take(Priority::Background).await;
        let mut waiting = Box::pin(turns.take(Priority::Interactive));
        // Poll once so that it joins the line.
        assert!(futures_poll_once(waiting.as_mut()).await.is_none());
        drop(first); // grants the turn to the waiter, which is never polled again
        drop(waiting);
        tokio::time::timeout(Duration::from_secs(1), turns.take(Priority::Background))
            .await
            .expect("the turn was handed on");
    }

    async fn futures_poll_once<F: std::future::Future + Unpin>(f: F) -> Option<F::Output> {
        let mut f = f;
        std::future::poll_fn(|cx| {
            std::task::Poll::Ready(match std::pin::Pin::new(&mut f).poll(cx) {
                std::task::Poll::Ready(v) => Some(v),
                std::task::Poll::Pending => None,
            })
        })
        .await
    }
}
