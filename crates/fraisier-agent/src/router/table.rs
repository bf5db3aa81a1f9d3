//! The routing table: the backends of one `set_backends` call and the weighted pick among them.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use super::upstream::Upstream;

/// Longest pick schedule kept; bigger weight sums are scaled down to it (0.03% resolution).
const MAX_SCHEDULE: u64 = 4096;

/// An immutable snapshot built when the backends change and swapped in whole; a request only
/// reads it (plus one relaxed `fetch_add` on the cursor).
///
/// Weighted selection is smooth weighted round-robin, precomputed into `schedule` and walked by
/// a shared cursor: any window of `schedule.len()` consecutive picks realizes the weights
/// exactly, which is what canary analysis needs from a few hundred requests, and a pick costs
/// no RNG and no search. (The cursor is the one counter the workers share per request: one
/// cursor per worker would make the split exact per worker only.)
#[derive(Debug)]
pub(super) struct Table {
    /// Every backend of the call, weight 0 included, so that their idle connections stay warm
    /// (switching a blue/green pair back is then free).
    upstreams: Vec<Arc<Upstream>>,
    /// Indices into `upstreams`, in smooth weighted round-robin order.
    schedule: Box<[u32]>,
    cursor: AtomicUsize,
}

// === impl Table ===

impl Table {
    pub(super) fn empty() -> Table {
        Table::new(Vec::new())
    }

    pub(super) fn new(entries: Vec<(Arc<Upstream>, u32)>) -> Table {
        let weights: Vec<u64> = entries.iter().map(|(_, w)| u64::from(*w)).collect();
        Table {
            schedule: schedule(&weights).into_boxed_slice(),
            upstreams: entries.into_iter().map(|(u, _)| u).collect(),
            cursor: AtomicUsize::new(0),
        }
    }

    pub(super) fn upstreams(&self) -> &[Arc<Upstream>] {
        &self.upstreams
    }

    /// The next backend in weighted order, or `None` when no backend has weight > 0.
    pub(super) fn pick(&self) -> Option<&Arc<Upstream>> {
        if self.schedule.is_empty() {
            return None;
        }
        let at = self.cursor.fetch_add(1, Relaxed) % self.schedule.len();
        Some(&self.upstreams[self.schedule[at] as usize])
    }

    /// A backend for a retry: the next in weighted order that is not in `tried` (addresses of
    /// upstreams, stable across tables), or simply the next one when all were tried. It reads
    /// the cursor without moving it, so retries do not skew the share of first attempts.
    pub(super) fn pick_except(&self, tried: &[usize]) -> Option<&Arc<Upstream>> {
        let len = self.schedule.len();
        if len == 0 {
            return None;
        }
        let start = self.cursor.load(Relaxed);
        let untried = (0..len)
            .map(|k| &self.upstreams[self.schedule[(start + k) % len] as usize])
            .find(|u| !tried.contains(&(Arc::as_ptr(u) as usize)));
        untried.or_else(|| Some(&self.upstreams[self.schedule[start % len] as usize]))
    }
}

/// Smooth weighted round-robin (nginx's algorithm) unrolled over one period: indices of
/// `weights`, each appearing in proportion to its weight, spread as evenly as possible.
fn schedule(weights: &[u64]) -> Vec<u32> {
    let mut weights = weights.to_vec();
    let divisor = weights.iter().copied().filter(|w| *w > 0).fold(0, gcd);
    if divisor == 0 {
        return Vec::new();
    }
    weights.iter_mut().for_each(|w| *w /= divisor);
    let total: u64 = weights.iter().sum();
    if total > MAX_SCHEDULE {
        for w in weights.iter_mut().filter(|w| **w > 0) {
            *w = (*w * MAX_SCHEDULE / total).max(1);
        }
    }
    let total: u64 = weights.iter().sum();
    let mut current = vec![0i64; weights.len()];
    let mut order = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for (i, w) in weights.iter().enumerate() {
            current[i] += *w as i64;
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total as i64;
        order.push(best as u32);
    }
    order
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(order: &[u32], n: usize) -> Vec<usize> {
        let mut c = vec![0; n];
        order.iter().for_each(|i| c[*i as usize] += 1);
        c
    }

    #[test]
    fn schedule_realizes_weights_exactly() {
        assert_eq!(schedule(&[90, 10]).len(), 10);
        assert_eq!(counts(&schedule(&[90, 10]), 2), vec![9, 1]);
        assert_eq!(counts(&schedule(&[30, 30, 30, 10]), 4), vec![3, 3, 3, 1]);
        assert_eq!(counts(&schedule(&[5, 0, 3]), 3), vec![5, 0, 3]);
        assert!(schedule(&[0, 0]).is_empty());
        assert!(schedule(&[]).is_empty());
    }

    #[test]
    fn schedule_interleaves() {
        // 50/50 alternates instead of bursting, so short windows stay close to the weights.
        assert_eq!(schedule(&[1, 1]), vec![0, 1]);
        let order = schedule(&[2, 1]);
        assert_eq!(order, vec![0, 1, 0]);
    }

    #[test]
    fn huge_weight_sums_are_scaled_not_dropped() {
        let order = schedule(&[u32::MAX as u64, 1]);
        assert!(order.len() as u64 <= MAX_SCHEDULE + 1);
        assert_eq!(counts(&order, 2)[1], 1);
        let order = schedule(&[999_983, 1_000_003]); // coprime, sum far above the cap
        let c = counts(&order, 2);
        assert!(c[0].abs_diff(c[1]) <= 1, "{c:?}");
    }
}
