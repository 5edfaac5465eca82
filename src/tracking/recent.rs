//! A bounded memory of recent hits, so that repeats of one hit (the same
//! dedupe key) are not queued again: anyone holding a link could otherwise
//! keep the shared ingest queue busy with hits that the database would only
//! discard as duplicates.

use std::collections::HashSet;
use std::sync::Mutex;

/// Keys remembered per generation at most; beyond it, hits are queued
/// (and deduplicated by the database) rather than remembered.
const MAX_PER_GENERATION: usize = 100_000;

/// Two generations of key hashes, each spanning one dedupe window: a key is
/// "recent" if seen in the current or the previous window.
#[derive(Debug)]
pub struct RecentHits {
    window_ms: i64,
    state: Mutex<Generations>,
}

#[derive(Debug, Default)]
struct Generations {
    /// The window `current` covers.
    window: i64,
    current: HashSet<u64>,
    previous: HashSet<u64>,
}

/// The key's hash under a per-process random seed, so that no one can
/// choose keys that collide.
fn hash(key: &str) -> u64 {
    use std::hash::BuildHasher;
    static SEED: std::sync::OnceLock<std::collections::hash_map::RandomState> = std::sync::OnceLock::new();
    SEED.get_or_init(Default::default).hash_one(key)
}

impl RecentHits {
    pub fn new(window_ms: i64) -> Self {
        RecentHits { window_ms: window_ms.max(1), state: Mutex::new(Generations::default()) }
    }

    /// Whether `key` was not seen in this window or the previous one (and
    /// remembers it).
    pub fn first_seen(&self, key: &str, now_ms: i64) -> bool {
        let Ok(mut g) = self.state.lock() else { return true };
        let window = now_ms.div_euclid(self.window_ms);
        if window != g.window {
            let previous = if window == g.window + 1 { std::mem::take(&mut g.current) } else { HashSet::new() };
            g.previous = previous;
            g.current.clear();
            g.window = window;
        }
        let h = hash(key);
        if g.current.contains(&h) || g.previous.contains(&h) {
            return false;
        }
        if g.current.len() < MAX_PER_GENERATION {
            g.current.insert(h);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_within_two_windows_are_recognised() {
        let r = RecentHits::new(1_000);
        assert!(r.first_seen("a", 10_000));
        assert!(!r.first_seen("a", 10_500));
        assert!(r.first_seen("b", 10_500));
        assert!(!r.first_seen("a", 11_200), "still remembered in the next window");
        assert!(r.first_seen("a", 13_000), "forgotten after two windows");
        assert!(r.first_seen("c", 20_000));
        assert!(r.first_seen("a", 20_000));
    }
}
