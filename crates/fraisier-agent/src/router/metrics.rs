//! Per-version request counters that the proxy bumps with atomics and the canary analysis reads.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use fraisier_model::metrics::{VersionMetrics, LATENCY_BOUNDS_MS};

use super::workers::Sharded;

/// The latency buckets of [`LATENCY_BOUNDS_MS`] plus the overflow bucket.
const BUCKETS: usize = LATENCY_BOUNDS_MS.len() + 1;

/// Cumulative counters for one version since the router was bound.
///
/// Every field is a relaxed atomic: a snapshot may see a request's count before its latency,
/// which is harmless for windows of hundreds of requests, and the hot path takes no lock.
/// One set per router worker, summed by [`VersionCounters::snapshot`].
#[derive(Debug)]
pub(super) struct VersionCounters {
    shards: Sharded<Counters>,
}

#[derive(Debug)]
struct Counters {
    requests: AtomicU64,
    errors: AtomicU64,
    /// Microseconds, so that the sum stays an integer `fetch_add`.
    latency_sum_us: AtomicU64,
    buckets: [AtomicU64; BUCKETS],
}

// === impl VersionCounters ===

impl VersionCounters {
    pub(super) fn new(workers: usize) -> Self {
        VersionCounters {
            shards: Sharded::new(workers, || Counters {
                requests: AtomicU64::new(0),
                errors: AtomicU64::new(0),
                latency_sum_us: AtomicU64::new(0),
                buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            }),
        }
    }

    /// An upstream answered with a response head after `latency`.
    pub(super) fn record_response(&self, latency: Duration, server_error: bool) {
        let c = self.shards.local();
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        c.requests.fetch_add(1, Relaxed);
        if server_error {
            c.errors.fetch_add(1, Relaxed);
        }
        c.latency_sum_us.fetch_add(us, Relaxed);
        let ms = us as f64 / 1000.0;
        c.buckets[VersionMetrics::bucket_index(ms)].fetch_add(1, Relaxed);
    }

    /// An attempt that got no response head (connect failed, connection reset): an error with
    /// no latency, so the latency quantiles describe responses only.
    pub(super) fn record_undelivered(&self) {
        let c = self.shards.local();
        c.requests.fetch_add(1, Relaxed);
        c.errors.fetch_add(1, Relaxed);
    }

    pub(super) fn snapshot(&self) -> VersionMetrics {
        let sum = |f: fn(&Counters) -> &AtomicU64| -> u64 {
            self.shards.iter().map(|c| f(c).load(Relaxed)).sum()
        };
        VersionMetrics {
            requests: sum(|c| &c.requests),
            errors: sum(|c| &c.errors),
            latency_sum_ms: sum(|c| &c.latency_sum_us) as f64 / 1000.0,
            latency_buckets: (0..BUCKETS)
                .map(|i| self.shards.iter().map(|c| c.buckets[i].load(Relaxed)).sum())
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_and_failures_fill_the_snapshot() {
        let c = VersionCounters::new(2);
        c.record_response(Duration::from_micros(300), false);
        c.record_response(Duration::from_millis(30), true);
        c.record_undelivered();
        let m = c.snapshot();
        assert_eq!(m.requests, 3);
        assert_eq!(m.errors, 2);
        assert!(
            (m.latency_sum_ms - 30.3).abs() < 1e-9,
            "{}",
            m.latency_sum_ms
        );
        assert_eq!(m.latency_buckets.len(), BUCKETS);
        assert_eq!(m.latency_buckets[0], 1);
        assert_eq!(m.latency_buckets[VersionMetrics::bucket_index(30.0)], 1);
        assert_eq!(m.latency_buckets.iter().sum::<u64>(), 2);
    }
}
