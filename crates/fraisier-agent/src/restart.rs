//! When to restart an instance that exited: exponential backoff, forgiven after a long enough
//! healthy run. Pure: the clock is passed in.

use std::time::{Duration, Instant};

/// Backoff parameters; [`Backoff::default`] is 1 s doubling up to 30 s, reset after 60 s healthy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    /// A run healthy for this long wipes the slate: the next exit waits `initial` again.
    pub reset_after: Duration,
}

/// What the policy remembers about one instance between exits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RestartHistory {
    /// Exits since the last reset.
    pub consecutive: u32,
}

// === impl Backoff ===

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(30),
            reset_after: Duration::from_secs(60),
        }
    }
}

impl Backoff {
    /// The instance exited (or failed to start) at `now`; `healthy_since` is when it last
    /// became healthy, if it was healthy when it exited. Returns the updated history and when
    /// to start it again.
    pub fn on_exit(
        &self,
        history: RestartHistory,
        healthy_since: Option<Instant>,
        now: Instant,
    ) -> (RestartHistory, Instant) {
        let forgiven =
            healthy_since.is_some_and(|t| now.saturating_duration_since(t) >= self.reset_after);
        let consecutive = if forgiven { 0 } else { history.consecutive };
        let delay = self.delay(consecutive);
        (
            RestartHistory {
                consecutive: consecutive.saturating_add(1),
            },
            now + delay,
        )
    }

    /// The wait before the restart that follows `consecutive` earlier exits.
    pub fn delay(&self, consecutive: u32) -> Duration {
        let factor = 1u32.checked_shl(consecutive.min(31)).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap() {
        let b = Backoff::default();
        let now = Instant::now();
        let mut history = RestartHistory::default();
        let mut delays = Vec::new();
        for _ in 0..8 {
            let (h, at) = b.on_exit(history, None, now);
            history = h;
            delays.push((at - now).as_secs());
        }
        assert_eq!(delays, vec![1, 2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(b.delay(u32::MAX), Duration::from_secs(30));
    }

    #[test]
    fn a_long_healthy_run_resets_the_backoff() {
        let b = Backoff::default();
        let start = Instant::now();
        let history = RestartHistory { consecutive: 5 };

        let now = start + Duration::from_secs(61);
        let (h, at) = b.on_exit(history, Some(start), now);
        assert_eq!(at - now, Duration::from_secs(1));
        assert_eq!(h.consecutive, 1);

        // Healthy, but not for long enough: keep backing off.
        let now = start + Duration::from_secs(59);
        let (h, at) = b.on_exit(history, Some(start), now);
        assert_eq!(at - now, Duration::from_secs(30));
        assert_eq!(h.consecutive, 6);
    }
}
