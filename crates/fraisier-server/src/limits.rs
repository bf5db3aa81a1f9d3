//! The server's rate limiter: per identity, fixed windows counted in this process's memory,
//! exact under concurrency (one lock decides each request). Several servers count apart: see
//! docs/configuration.md.

use std::collections::HashMap;
use std::sync::Mutex;

use fraisier_model::rate::{RateLimit, RateLimits, Verdict, Window};

/// Which count a request is checked against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Bucket {
    Authenticated,
    Read,
    Write,
    /// Sign-in attempts per username.
    LoginUser,
    /// Sign-in attempts per source address.
    LoginSource,
}

/// Sign-in attempts from one address may be this many times the per-user limit: several
/// people behind one address should not lock each other out at once.
const LOGIN_SOURCE_FACTOR: u32 = 10;

/// Windows kept before expired ones are swept.
const SWEEP_EVERY: usize = 4096;

pub struct Limiter {
    limits: RateLimits,
    windows: Mutex<Windows>,
}

#[derive(Default)]
struct Windows {
    map: HashMap<(Bucket, String), Window>,
    inserted: usize,
}

// === impl Limiter ===

impl Limiter {
    pub fn new(limits: RateLimits) -> Limiter {
        Limiter {
            limits,
            windows: Mutex::new(Windows::default()),
        }
    }

    fn limit_of(&self, bucket: Bucket) -> Option<RateLimit> {
        match bucket {
            Bucket::Authenticated => self.limits.authenticated,
            Bucket::Read => self.limits.read,
            Bucket::Write => self.limits.write,
            Bucket::LoginUser => self.limits.login,
            Bucket::LoginSource => self.limits.login.map(|l| RateLimit {
                count: l.count.saturating_mul(LOGIN_SOURCE_FACTOR),
                ..l
            }),
        }
    }

    /// Counts one request of `identity` against every bucket given, all or none: a request
    /// refused by one bucket spends nothing from the others. The verdict is the refusing
    /// bucket's, or the one with the least left; `None` when no bucket is limited.
    pub fn take(&self, identity: &str, buckets: &[Bucket], now_ms: i64) -> Option<Verdict> {
        let limited: Vec<(Bucket, RateLimit)> = buckets
            .iter()
            .filter_map(|b| self.limit_of(*b).map(|l| (*b, l)))
            .collect();
        if limited.is_empty() {
            return None;
        }
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        let mut trial: Vec<(Bucket, Window, Verdict)> = Vec::with_capacity(limited.len());
        for (bucket, limit) in &limited {
            let mut w = windows
                .map
                .get(&(*bucket, identity.to_string()))
                .copied()
                .unwrap_or_default();
            let verdict = limit.take(&mut w, now_ms);
            trial.push((*bucket, w, verdict));
        }
        let refused = trial.iter().find(|(_, _, v)| !v.allowed).map(|t| t.2);
        if let Some(v) = refused {
            return Some(v);
        }
        for (bucket, w, _) in &trial {
            if windows
                .map
                .insert((*bucket, identity.to_string()), *w)
                .is_none()
            {
                windows.inserted += 1;
            }
        }
        if windows.inserted >= SWEEP_EVERY {
            windows.inserted = 0;
            let longest = [
                Bucket::Authenticated,
                Bucket::Read,
                Bucket::Write,
                Bucket::LoginSource,
            ]
            .iter()
            .filter_map(|b| self.limit_of(*b))
            .map(|l| l.period.0 as i64)
            .max()
            .unwrap_or(0);
            windows.map.retain(|_, w| w.started_ms + longest > now_ms);
        }
        trial.into_iter().map(|t| t.2).min_by_key(|v| v.remaining)
    }

    /// Gives back one unit taken from `bucket` (a sign-in that succeeded does not count).
    pub fn refund(&self, identity: &str, bucket: Bucket) {
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(w) = windows.map.get_mut(&(bucket, identity.to_string())) {
            w.used = w.used.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(text: &str) -> Limiter {
        Limiter::new(serde_yaml::from_str(text).unwrap())
    }

    #[test]
    fn every_bucket_or_none_is_spent() {
        let l = limiter("{ authenticated: 3/h, read: 10/h, write: 1/h }");
        let both = [Bucket::Authenticated, Bucket::Write];
        let v = l.take("alice", &both, 0).unwrap();
        assert!(v.allowed);
        assert_eq!(
            (v.limit, v.remaining),
            (1, 0),
            "the tighter bucket is reported"
        );
        let v = l.take("alice", &both, 1).unwrap();
        assert!(!v.allowed);
        // The refused write did not spend from `authenticated`: two reads still fit.
        let reads = [Bucket::Authenticated, Bucket::Read];
        assert!(l.take("alice", &reads, 2).unwrap().allowed);
        let v = l.take("alice", &reads, 3).unwrap();
        assert!(v.allowed);
        assert_eq!((v.limit, v.remaining), (3, 0));
        assert!(!l.take("alice", &reads, 4).unwrap().allowed);
        // Identities count apart.
        assert!(l.take("bob", &reads, 5).unwrap().allowed);
    }

    #[test]
    fn off_means_no_verdict_and_refunds_give_back() {
        let l = limiter("off");
        assert_eq!(l.take("x", &[Bucket::Read], 0), None);
        let l = limiter("{ login: 2/m }");
        assert!(l.take("alice", &[Bucket::LoginUser], 0).unwrap().allowed);
        l.refund("alice", Bucket::LoginUser);
        assert!(l.take("alice", &[Bucket::LoginUser], 1).unwrap().allowed);
        assert!(l.take("alice", &[Bucket::LoginUser], 2).unwrap().allowed);
        assert!(!l.take("alice", &[Bucket::LoginUser], 3).unwrap().allowed);
        // The address may try ten times as often as one user.
        for i in 0..20 {
            assert!(
                l.take("10.0.0.1", &[Bucket::LoginSource], i)
                    .unwrap()
                    .allowed
            );
        }
        assert!(
            !l.take("10.0.0.1", &[Bucket::LoginSource], 30)
                .unwrap()
                .allowed
        );
    }

    #[test]
    fn concurrent_takes_pass_exactly_the_limit() {
        let l = std::sync::Arc::new(limiter("{ read: 100/h, authenticated: off }"));
        let passed = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (l, passed) = (l.clone(), passed.clone());
                std::thread::spawn(move || {
                    for _ in 0..50 {
                        if l.take("alice", &[Bucket::Read], 10).unwrap().allowed {
                            passed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(passed.load(std::sync::atomic::Ordering::Relaxed), 100);
    }
}
