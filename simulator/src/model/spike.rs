//! The scripted spike overlay of a numeric variable (the profile's `spike` key): during fixed,
//! periodic windows counted from the simulator's start, the behaviour's value gets a constant
//! plus seeded noise added.

use std::time::Duration;

/// While `((t - at) mod every) < length` (t = time since the model started; nothing before
/// `at`), the variable's value is the behaviour's value + `add` + uniform noise in
/// [-noise, +noise]. The profile checks `every > length > 0`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spike {
    pub every: Duration,
    pub at: Duration,
    pub add: f64,
    pub length: Duration,
    pub noise: f64,
}

impl Spike {
    /// Is `t` (time since the model started) inside a spike window?
    pub fn active(&self, t: Duration) -> bool {
        let Some(since) = t.checked_sub(self.at) else {
            return false;
        };
        let every = self.every.as_nanos();
        every > 0 && since.as_nanos() % every < self.length.as_nanos()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_start_at_at_and_repeat_every_period() {
        let s = Spike {
            every: Duration::from_secs(120),
            at: Duration::from_secs(60),
            add: 6.0,
            length: Duration::from_secs(20),
            noise: 0.0,
        };
        let on = |secs: f64| s.active(Duration::from_secs_f64(secs));
        assert!(!on(0.0) && !on(59.999));
        assert!(on(60.0) && on(79.999));
        assert!(!on(80.0) && !on(179.999));
        assert!(on(180.0) && on(199.0) && !on(200.0));
        assert!(on(60.0 + 120.0 * 1000.0));
    }
}
