//! Error lines that repeat (a full disk, a refused message, an overflowing server queue) are
//! logged the first time and then at most once per period, with the count of the ones left
//! out, so that a fault that lasts for days cannot fill the disk with its own log.
//!
//! ```
//! # use connector::ratelog::RateLog;
//! static DISK_FULL: RateLog = RateLog::per_minute();
//! if let Some(more) = DISK_FULL.hit() {
//!     tracing::error!(suppressed = more, "chunk not written: disk full");
//! }
//! ```

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One kind of repeating line. `hit` on every occurrence; log only when it returns `Some`.
#[derive(Debug)]
pub struct RateLog {
    period: Duration,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLog {
    /// The first occurrence, then at most one line a minute.
    pub const fn per_minute() -> RateLog {
        RateLog::every(Duration::from_secs(60))
    }

    pub const fn every(period: Duration) -> RateLog {
        RateLog {
            period,
            state: Mutex::new(State {
                last: None,
                suppressed: 0,
            }),
        }
    }

    /// One more occurrence. `Some(n)`: log it now, `n` occurrences were left out since the
    /// previous line. `None`: leave it out (it is counted for the next line).
    pub fn hit(&self) -> Option<u64> {
        self.hit_at(Instant::now())
    }

    fn hit_at(&self, now: Instant) -> Option<u64> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let due = match s.last {
            None => true,
            Some(last) => now.saturating_duration_since(last) >= self.period,
        };
        if due {
            s.last = Some(now);
            Some(std::mem::take(&mut s.suppressed))
        } else {
            s.suppressed = s.suppressed.saturating_add(1);
            None
        }
    }

    /// The fault is over: the next occurrence is logged at once (a new outage, a new line).
    pub fn reset(&self) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.last = None;
        s.suppressed = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_then_once_per_period_with_the_count_left_out() {
        let log = RateLog::every(Duration::from_secs(60));
        let t0 = Instant::now();
        assert_eq!(log.hit_at(t0), Some(0));
        let left_out = (1..=500)
            .filter(|i| log.hit_at(t0 + Duration::from_millis(*i)).is_none())
            .count();
        assert_eq!(left_out, 500);
        assert_eq!(log.hit_at(t0 + Duration::from_secs(60)), Some(500));
        assert_eq!(log.hit_at(t0 + Duration::from_secs(61)), None);
        log.reset();
        assert_eq!(log.hit_at(t0 + Duration::from_secs(62)), Some(0));
    }
}
