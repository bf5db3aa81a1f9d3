//! The `pagination.total` of recent run listings, remembered until the next write to `runs`:
//! an exact `COUNT(*)` over a large history costs more than the page it describes, and a
//! dashboard asks the same question again and again while nothing changes.
//!
//! Used on SQLite only, where this process is the database's one writer. On PostgreSQL other
//! servers may write too, so every listing counts.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Listings remembered at once; the oldest is forgotten first.
const CAPACITY: usize = 32;

#[derive(Default)]
pub(crate) struct ListTotals {
    /// Bumped after every committed write that can change which runs match a filter.
    generation: AtomicU64,
    entries: Mutex<Vec<Entry>>,
}

struct Entry {
    generation: u64,
    key: String,
    total: u64,
}

// === impl ListTotals ===

impl ListTotals {
    /// Read before counting; pass it to `remember`. A write that commits while the count runs
    /// bumps the generation after its commit, so a count that may have missed it is filed
    /// under a generation that no later lookup asks for.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Call after the write has committed.
    pub(crate) fn invalidate(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    pub(crate) fn get(&self, key: &str) -> Option<u64> {
        let generation = self.generation();
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .iter()
            .find(|e| e.generation == generation && e.key == key)
            .map(|e| e.total)
    }

    pub(crate) fn remember(&self, generation: u64, key: String, total: u64) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.generation();
        if generation != current {
            // Counted before a write: worthless, and must not push out good entries.
            return;
        }
        entries.retain(|e| e.generation == current && e.key != key);
        if entries.len() >= CAPACITY {
            entries.remove(0);
        }
        entries.push(Entry {
            generation,
            key,
            total,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_forgets_every_total() {
        let totals = ListTotals::default();
        let g = totals.generation();
        totals.remember(g, "all".into(), 7);
        assert_eq!(totals.get("all"), Some(7));
        assert_eq!(totals.get("other"), None);
        totals.invalidate();
        assert_eq!(totals.get("all"), None);
    }

    #[test]
    fn a_count_overtaken_by_a_write_is_never_served() {
        let totals = ListTotals::default();
        let before = totals.generation();
        totals.invalidate(); // a write committed while the count ran
        totals.remember(before, "all".into(), 7);
        assert_eq!(totals.get("all"), None);
    }

    #[test]
    fn keeps_at_most_capacity_entries() {
        let totals = ListTotals::default();
        let g = totals.generation();
        for i in 0..CAPACITY + 5 {
            totals.remember(g, format!("k{i}"), i as u64);
        }
        assert_eq!(totals.get("k0"), None);
        assert_eq!(
            totals.get(&format!("k{}", CAPACITY + 4)),
            Some(CAPACITY as u64 + 4)
        );
    }
}
