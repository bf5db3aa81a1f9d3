//! Canary analysis: the verdict on a step's window of router metrics. Pure.

use serde::Serialize;

use crate::metrics::VersionMetrics;
use crate::strategy::Analysis;

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    Pass,
    /// Too few canary requests to judge yet.
    Insufficient {
        requests: u64,
        min_requests: u64,
    },
    Fail {
        reason: String,
    },
}

/// Judges the canary's window against the thresholds. With `compare_to_stable` and enough
/// stable traffic, the error threshold is relative: the canary fails when its error rate
/// exceeds stable's by more than `max_error_rate`, so a version no worse than the one it
/// replaces is not blamed for errors both share.
pub fn judge(
    canary: &VersionMetrics,
    stable: Option<&VersionMetrics>,
    a: &Analysis,
    final_check: bool,
) -> Verdict {
    if canary.requests < a.min_requests.max(1) && !final_check {
        return Verdict::Insufficient {
            requests: canary.requests,
            min_requests: a.min_requests,
        };
    }
    if canary.requests == 0 {
        return Verdict::Pass;
    }
    let canary_rate = canary.error_rate();
    let baseline = match stable {
        Some(s) if a.compare_to_stable && s.requests >= a.min_requests.max(1) => {
            Some(s.error_rate())
        }
        _ => None,
    };
    match baseline {
        Some(stable_rate) if canary_rate > stable_rate + a.max_error_rate => {
            return Verdict::Fail {
                reason: format!(
                    "canary error rate {canary_rate:.2}% exceeds stable's {stable_rate:.2}% by more than {}%",
                    a.max_error_rate
                ),
            }
        }
        None if canary_rate > a.max_error_rate => {
            return Verdict::Fail {
                reason: format!("canary error rate {canary_rate:.2}% is above the {}% threshold", a.max_error_rate),
            }
        }
        _ => {}
    }
    if let Some(max) = a.max_latency_p99_ms {
        let p99 = canary.quantile_ms(0.99);
        if p99 > max {
            return Verdict::Fail {
                reason: format!("canary p99 latency {p99:.1} ms is above the {max} ms threshold"),
            };
        }
    }
    Verdict::Pass
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(requests: u64, errors: u64, latency_ms: f64) -> VersionMetrics {
        let mut m = VersionMetrics::empty();
        m.requests = requests;
        m.errors = errors;
        m.latency_sum_ms = latency_ms * requests as f64;
        m.latency_buckets[VersionMetrics::bucket_index(latency_ms)] = requests;
        m
    }

    #[test]
    fn waits_for_enough_requests_then_judges_what_it_has() {
        let a = Analysis::default();
        assert!(matches!(
            judge(&window(5, 5, 1.0), None, &a, false),
            Verdict::Insufficient { .. }
        ));
        assert!(matches!(
            judge(&window(5, 5, 1.0), None, &a, true),
            Verdict::Fail { .. }
        ));
        assert_eq!(judge(&window(0, 0, 1.0), None, &a, true), Verdict::Pass);
    }

    #[test]
    fn fails_on_error_rate_absolute_and_relative() {
        let a = Analysis::default();
        assert!(matches!(
            judge(&window(100, 20, 1.0), Some(&window(100, 0, 1.0)), &a, false),
            Verdict::Fail { .. }
        ));
        assert_eq!(
            judge(&window(100, 3, 1.0), Some(&window(100, 0, 1.0)), &a, false),
            Verdict::Pass
        );
        // Stable fails as often: the canary is not worse.
        assert_eq!(
            judge(
                &window(100, 20, 1.0),
                Some(&window(100, 18, 1.0)),
                &a,
                false
            ),
            Verdict::Pass
        );
        let absolute = Analysis {
            compare_to_stable: false,
            ..a
        };
        assert!(matches!(
            judge(
                &window(100, 20, 1.0),
                Some(&window(100, 18, 1.0)),
                &absolute,
                false
            ),
            Verdict::Fail { .. }
        ));
    }

    #[test]
    fn fails_on_latency() {
        let a = Analysis {
            max_latency_p99_ms: Some(100.0),
            ..Analysis::default()
        };
        assert!(matches!(
            judge(&window(50, 0, 400.0), None, &a, false),
            Verdict::Fail { .. }
        ));
        assert_eq!(judge(&window(50, 0, 20.0), None, &a, false), Verdict::Pass);
    }
}
