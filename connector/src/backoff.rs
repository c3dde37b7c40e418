//! The one back-off of the connector: exponential from a base to a cap, with up to 20 %
//! random jitter on top so that many connectors (or many sessions of one) do not retry in
//! step. Used by the PLC sessions and the cloud connections.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

/// Waits of `base`, `2 x base`, `4 x base`, ... up to `cap`, each plus up to 20 % jitter.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    failures: u32,
    jitter: RandomState,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Backoff {
        Backoff {
            base,
            cap: cap.max(base),
            failures: 0,
            jitter: RandomState::new(),
        }
    }

    /// One more failure: the wait before the next attempt.
    pub fn next_wait(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let doubled = self
            .base
            .saturating_mul(1u32 << (self.failures - 1).min(20))
            .min(self.cap);
        let mut h = self.jitter.build_hasher();
        h.write_u32(self.failures);
        let fifth = (doubled.as_micros() / 5) as u64;
        doubled + Duration::from_micros(h.finish() % (fifth + 1))
    }

    /// Failures since the last [`Backoff::reset`].
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// A success: the next failure waits `base` again.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_the_cap_with_at_most_a_fifth_of_jitter() {
        let mut b = Backoff::new(Duration::from_millis(200), Duration::from_secs(1));
        let waits: Vec<Duration> = (0..6).map(|_| b.next_wait()).collect();
        let bases = [200, 400, 800, 1000, 1000, 1000];
        for (w, base) in waits.iter().zip(bases) {
            let base = Duration::from_millis(base);
            assert!(*w >= base && *w <= base + base / 5, "{w:?} vs {base:?}");
        }
        assert_eq!(b.failures(), 6);
        b.reset();
        assert!(b.next_wait() <= Duration::from_millis(240));
    }

    #[test]
    fn jitter_differs_between_instances() {
        let waits: std::collections::HashSet<Duration> = (0..20)
            .map(|_| Backoff::new(Duration::from_secs(1), Duration::from_secs(1)).next_wait())
            .collect();
        assert!(waits.len() > 1, "20 back-offs waited the same: {waits:?}");
    }
}
