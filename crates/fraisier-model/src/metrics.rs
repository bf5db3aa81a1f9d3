//! Request figures the router counts per version, and the arithmetic on them (windows,
//! rates, quantiles) that canary analysis and the status endpoints share.

use serde::{Deserialize, Serialize};

/// Upper bounds (ms) of the latency buckets; one more bucket catches everything slower.
pub const LATENCY_BOUNDS_MS: &[f64] = &[
    0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0,
];

/// Cumulative counters since the router started for one version of one fraise.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct VersionMetrics {
    pub requests: u64,
    /// Responses with status ≥ 500 plus requests the router could not deliver.
    pub errors: u64,
    pub latency_sum_ms: f64,
    /// Non-cumulative counts per bucket of [`LATENCY_BOUNDS_MS`], plus the overflow bucket.
    pub latency_buckets: Vec<u64>,
}

/// What a window of traffic looked like, ready for display or judgement.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MetricsSummary {
    pub requests: u64,
    pub errors: u64,
    pub success_rate: f64,
    pub error_rate: f64,
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
}

// === impl VersionMetrics ===

impl VersionMetrics {
    pub fn empty() -> Self {
        VersionMetrics {
            latency_buckets: vec![0; LATENCY_BOUNDS_MS.len() + 1],
            ..Default::default()
        }
    }

    pub fn bucket_index(latency_ms: f64) -> usize {
        LATENCY_BOUNDS_MS
            .iter()
            .position(|b| latency_ms <= *b)
            .unwrap_or(LATENCY_BOUNDS_MS.len())
    }

    /// The traffic between an earlier snapshot and this one (counters only grow, but a router
    /// restart resets them: then the whole of `self` is the window).
    pub fn since(&self, earlier: &VersionMetrics) -> VersionMetrics {
        if self.requests < earlier.requests {
            return self.clone();
        }
        let mut buckets = self.latency_buckets.clone();
        for (b, e) in buckets.iter_mut().zip(&earlier.latency_buckets) {
            *b = b.saturating_sub(*e);
        }
        VersionMetrics {
            requests: self.requests - earlier.requests,
            errors: self.errors.saturating_sub(earlier.errors),
            latency_sum_ms: (self.latency_sum_ms - earlier.latency_sum_ms).max(0.0),
            latency_buckets: buckets,
        }
    }

    pub fn add(&mut self, other: &VersionMetrics) {
        self.requests += other.requests;
        self.errors += other.errors;
        self.latency_sum_ms += other.latency_sum_ms;
        if self.latency_buckets.len() < other.latency_buckets.len() {
            self.latency_buckets.resize(other.latency_buckets.len(), 0);
        }
        for (a, b) in self.latency_buckets.iter_mut().zip(&other.latency_buckets) {
            *a += b;
        }
    }

    /// Percentage of requests that failed (0 when there were none).
    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors as f64 * 100.0 / self.requests as f64
        }
    }

    /// The quantile `q` (0–1) interpolated linearly inside its bucket.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        let total: u64 = self.latency_buckets.iter().sum();
        if total == 0 {
            return 0.0;
        }
        let rank = q * total as f64;
        let mut seen = 0u64;
        for (i, count) in self.latency_buckets.iter().enumerate() {
            if *count == 0 {
                continue;
            }
            if (seen + count) as f64 >= rank {
                let lower = if i == 0 {
                    0.0
                } else {
                    LATENCY_BOUNDS_MS[i - 1]
                };
                let upper = LATENCY_BOUNDS_MS.get(i).copied().unwrap_or(lower * 2.0);
                let within = (rank - seen as f64) / *count as f64;
                return lower + (upper - lower) * within.clamp(0.0, 1.0);
            }
            seen += count;
        }
        LATENCY_BOUNDS_MS[LATENCY_BOUNDS_MS.len() - 1]
    }

    pub fn summary(&self) -> MetricsSummary {
        let error_rate = round2(self.error_rate());
        MetricsSummary {
            requests: self.requests,
            errors: self.errors,
            success_rate: if self.requests == 0 {
                100.0
            } else {
                round2(100.0 - error_rate)
            },
            error_rate,
            latency_p50_ms: round2(self.quantile_ms(0.50)),
            latency_p99_ms: round2(self.quantile_ms(0.99)),
        }
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(latencies: &[f64], errors: u64) -> VersionMetrics {
        let mut m = VersionMetrics::empty();
        for l in latencies {
            m.requests += 1;
            m.latency_sum_ms += l;
            m.latency_buckets[VersionMetrics::bucket_index(*l)] += 1;
        }
        m.errors = errors;
        m
    }

    #[test]
    fn windows_subtract_snapshots() {
        let a = with(&[1.0, 2.0], 0);
        let b = with(&[1.0, 2.0, 30.0, 40.0], 1);
        let w = b.since(&a);
        assert_eq!(w.requests, 2);
        assert_eq!(w.errors, 1);
        assert_eq!(w.error_rate(), 50.0);
        assert!(w.quantile_ms(0.5) > 25.0 && w.quantile_ms(0.5) <= 50.0);
    }

    #[test]
    fn restart_resets_window() {
        let a = with(&[1.0, 2.0, 3.0], 0);
        let b = with(&[1.0], 0);
        assert_eq!(b.since(&a).requests, 1);
    }

    #[test]
    fn quantiles_are_monotonic() {
        let m = with(&[0.3, 0.8, 3.0, 7.0, 70.0, 700.0], 0);
        let p50 = m.quantile_ms(0.5);
        let p99 = m.quantile_ms(0.99);
        assert!(p50 <= p99, "{p50} {p99}");
        assert!(p99 <= 1000.0);
        assert_eq!(VersionMetrics::empty().quantile_ms(0.99), 0.0);
    }
}
