//! Report by exception on the connector's side (`[plc.group.telemetry]` deadbands and
//! intervals, a node's own `telemetry = { ... }`), for servers whose deadband is missing or
//! too coarse. Per node (and tag name):
//!
//! - the first sample is sent; a sample whose status differs from the last one sent is sent;
//! - a Good numeric sample (any Good status code) is sent when it differs from the last one sent by more than
//!   `deadband_absolute` and by more than `deadband_percent` of the last one's magnitude
//!   (each when given); without deadbands, when it differs at all; any other value (text,
//!   boolean, array, structure) when it differs;
//! - `min_interval`: at most one sample per interval; a sample that passes within it waits
//!   (a newer one that passes replaces it, one that does not drops it) and is sent when the
//!   interval ends;
//! - `max_interval`: when nothing was sent for that long, the newest sample received is sent
//!   again, marked `"origin":"heartbeat"`.
//!
//! Held-back samples are counted; Parquet keeps every sample. Backfilled samples and events
//! pass unfiltered. At shutdown, waiting samples are sent.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::Exception;
use crate::sample::{Origin, Sample, SampleValue};

/// A node's state.
#[derive(Debug)]
struct Node {
    rule: Arc<Exception>,
    /// The last sample sent and when.
    sent: Sample,
    sent_at: Instant,
    /// The newest sample received (for heartbeats).
    newest: Sample,
    /// A sample that passed within `min_interval`, sent at its end.
    waiting: Option<Sample>,
}

/// Report by exception of one group's samples for one destination.
#[derive(Debug)]
pub struct Filter {
    group: Arc<Exception>,
    /// Nodes with their own settings, by node id.
    own: HashMap<Arc<str>, Arc<Exception>>,
    nodes: HashMap<(Arc<str>, Arc<str>), Node>,
    /// Held back since the last [`Filter::take_suppressed`].
    suppressed: u64,
    heartbeats: u64,
}

impl Filter {
    pub fn new(group: Exception, own: impl IntoIterator<Item = (String, Exception)>) -> Filter {
        Filter {
            group: Arc::new(group),
            own: own
                .into_iter()
                .map(|(n, e)| (Arc::from(n), Arc::new(e)))
                .collect(),
            nodes: HashMap::new(),
            suppressed: 0,
            heartbeats: 0,
        }
    }

    /// The sample to send now, if any (`s` itself); else it is held back or waits.
    pub fn add(&mut self, s: &Sample, now: Instant) -> Option<Sample> {
        if s.origin != Origin::Live || matches!(s.value, SampleValue::Event(_)) {
            return Some(s.clone());
        }
        let key = (s.item.node.clone(), s.item.name.clone());
        let Some(n) = self.nodes.get_mut(&key) else {
            let rule = self
                .own
                .get(&s.item.node)
                .cloned()
                .unwrap_or_else(|| self.group.clone());
            self.nodes.insert(
                key,
                Node {
                    rule,
                    sent: s.clone(),
                    sent_at: now,
                    newest: s.clone(),
                    waiting: None,
                },
            );
            return Some(s.clone());
        };
        n.newest = s.clone();
        if !passes(&n.rule, &n.sent, s) {
            // Back near the value sent: a change waiting for min_interval is no longer news
            // (sending it would leave the destination at a value the PLC left).
            if n.waiting.take().is_some() {
                self.suppressed += 1;
            }
            self.suppressed += 1;
            return None;
        }
        if now.saturating_duration_since(n.sent_at) < n.rule.min_interval {
            if n.waiting.replace(s.clone()).is_some() {
                self.suppressed += 1;
            }
            return None;
        }
        n.sent = s.clone();
        n.sent_at = now;
        n.waiting = None;
        Some(s.clone())
    }

    /// Samples due at `now`: those whose `min_interval` ended, heartbeats.
    pub fn tick(&mut self, now: Instant) -> Vec<Sample> {
        let mut out = Vec::new();
        for n in self.nodes.values_mut() {
            let since = now.saturating_duration_since(n.sent_at);
            if since >= n.rule.min_interval {
                if let Some(w) = n.waiting.take() {
                    n.sent = w.clone();
                    n.sent_at = now;
                    out.push(w);
                    continue;
                }
            }
            if n.rule.max_interval.is_some_and(|max| since >= max) {
                let mut again = n.newest.clone();
                again.origin = Origin::Heartbeat;
                n.sent = n.newest.clone();
                n.sent_at = now;
                self.heartbeats += 1;
                out.push(again);
            }
        }
        out
    }

    /// Every waiting sample (shutdown).
    pub fn flush(&mut self) -> Vec<Sample> {
        self.nodes
            .values_mut()
            .filter_map(|n| n.waiting.take())
            .collect()
    }

    /// (held back, heartbeats) since the last call.
    pub fn take_counts(&mut self) -> (u64, u64) {
        (
            std::mem::take(&mut self.suppressed),
            std::mem::take(&mut self.heartbeats),
        )
    }

    /// How long until something may be due (for tests and callers that sleep).
    pub fn shortest(&self) -> Duration {
        self.group
            .max_interval
            .unwrap_or(Duration::MAX)
            .min(self.group.min_interval)
    }
}

/// Whether `s` differs enough from `sent` to be sent.
fn passes(rule: &Exception, sent: &Sample, s: &Sample) -> bool {
    if s.status != sent.status {
        return true;
    }
    match (number(&sent.value), number(&s.value)) {
        (Some(a), Some(b)) if s.status & 0xC000_0000 == 0 => {
            if a.is_nan() || b.is_nan() {
                return a.is_nan() != b.is_nan();
            }
            let d = (b - a).abs();
            let mut any = false;
            if let Some(abs) = rule.deadband_absolute {
                any = true;
                if d <= abs {
                    return false;
                }
            }
            if let Some(pct) = rule.deadband_percent {
                any = true;
                if d <= a.abs() * pct / 100.0 {
                    return false;
                }
            }
            any || d != 0.0
        }
        _ => s.value != sent.value,
    }
}

fn number(v: &SampleValue) -> Option<f64> {
    match v {
        SampleValue::Double(x) => Some(*x),
        SampleValue::Int(i) => Some(*i as f64),
        SampleValue::UInt(u) => Some(*u as f64),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::{Item, TypeName};

    fn ex(abs: Option<f64>, pct: Option<f64>, min_ms: u64, max_ms: Option<u64>) -> Exception {
        Exception {
            deadband_absolute: abs,
            deadband_percent: pct,
            min_interval: Duration::from_millis(min_ms),
            max_interval: max_ms.map(Duration::from_millis),
            mqtt: true,
            hub: true,
        }
    }

    fn sample(node: &str, v: f64, status: u32) -> Sample {
        Sample {
            item: Arc::new(Item::named("p", "g", node)),
            time_us: 0,
            server_time_us: None,
            status,
            type_name: TypeName::builtin(11, false),
            value: SampleValue::Double(v),
            origin: Origin::Live,
        }
    }

    fn values(out: &[Option<Sample>]) -> Vec<Option<f64>> {
        out.iter()
            .map(|s| s.as_ref().and_then(|s| number(&s.value)))
            .collect()
    }

    #[test]
    fn absolute_deadband_against_the_last_value_sent() {
        let mut f = Filter::new(ex(Some(0.5), None, 0, None), []);
        let t = Instant::now();
        let out: Vec<_> = [10.0, 10.3, 10.5, 10.51, 10.2, 9.9, 9.9]
            .iter()
            .map(|v| f.add(&sample("a", *v, 0), t))
            .collect();
        // 10.5 is not more than 0.5 away from 10.0; 10.51 is; 9.9 is 0.61 below 10.51.
        assert_eq!(
            values(&out),
            [Some(10.0), None, None, Some(10.51), None, Some(9.9), None]
        );
        assert_eq!(f.take_counts(), (4, 0));
    }

    #[test]
    fn percent_deadband_and_status_changes_and_plain_exception() {
        let mut f = Filter::new(ex(None, Some(10.0), 0, None), []);
        let t = Instant::now();
        let a: Vec<_> = [100.0, 109.0, 111.0]
            .iter()
            .map(|v| f.add(&sample("a", *v, 0), t))
            .collect();
        assert_eq!(values(&a), [Some(100.0), None, Some(111.0)]);
        // A status change goes whatever the value.
        assert!(f.add(&sample("a", 111.0, 0x8000_0000), t).is_some());
        // Without deadbands: any change.
        let mut f = Filter::new(ex(None, None, 0, None), []);
        let b: Vec<_> = [1.0, 1.0, 1.0000001]
            .iter()
            .map(|v| f.add(&sample("a", *v, 0), t))
            .collect();
        assert_eq!(values(&b), [Some(1.0), None, Some(1.0000001)]);
    }

    #[test]
    fn min_interval_sends_the_newest_at_its_end_and_max_interval_beats() {
        let mut f = Filter::new(ex(None, None, 1000, Some(5000)), []);
        let t0 = Instant::now();
        assert!(f.add(&sample("a", 1.0, 0), t0).is_some());
        assert!(f
            .add(&sample("a", 2.0, 0), t0 + Duration::from_millis(100))
            .is_none());
        assert!(f
            .add(&sample("a", 3.0, 0), t0 + Duration::from_millis(200))
            .is_none());
        assert!(f.tick(t0 + Duration::from_millis(999)).is_empty());
        let due = f.tick(t0 + Duration::from_millis(1000));
        assert_eq!(due.len(), 1);
        assert_eq!(number(&due[0].value), Some(3.0));
        assert_eq!(f.take_counts(), (1, 0));
        // Nothing new for 5 s: the newest value again, marked.
        assert!(f.tick(t0 + Duration::from_millis(5999)).is_empty());
        let beat = f.tick(t0 + Duration::from_millis(6000));
        assert_eq!(beat.len(), 1);
        assert_eq!(beat[0].origin, Origin::Heartbeat);
        assert_eq!(number(&beat[0].value), Some(3.0));
        assert_eq!(f.take_counts(), (0, 1));
    }

    #[test]
    fn a_change_that_went_back_within_min_interval_is_not_sent() {
        let mut f = Filter::new(ex(Some(0.5), None, 1000, None), []);
        let t0 = Instant::now();
        assert!(f.add(&sample("a", 10.0, 0), t0).is_some());
        assert!(f.add(&sample("a", 11.0, 0), t0).is_none(), "waits");
        assert!(
            f.add(&sample("a", 10.1, 0), t0).is_none(),
            "back within the deadband"
        );
        assert!(
            f.tick(t0 + Duration::from_secs(2)).is_empty(),
            "11 is no longer news"
        );
        // Good with a sub-code (Good_LocalOverride) is Good: the deadband applies.
        let mut g = Filter::new(ex(Some(0.5), None, 0, None), []);
        assert!(g.add(&sample("a", 10.0, 0x00D8_0000), t0).is_some());
        assert!(g.add(&sample("a", 10.2, 0x00D8_0000), t0).is_none());
    }

    #[test]
    fn a_node_of_its_own_and_shutdown_sends_what_waits() {
        let own = ex(Some(100.0), None, 0, None);
        let mut f = Filter::new(ex(None, None, 1000, None), [("b".to_owned(), own)]);
        let t = Instant::now();
        assert!(f.add(&sample("b", 1.0, 0), t).is_some());
        assert!(
            f.add(&sample("b", 50.0, 0), t).is_none(),
            "within b's own deadband"
        );
        assert!(f.add(&sample("a", 1.0, 0), t).is_some());
        assert!(
            f.add(&sample("a", 2.0, 0), t).is_none(),
            "waits for min_interval"
        );
        let left = f.flush();
        assert_eq!(left.len(), 1);
        assert_eq!(number(&left[0].value), Some(2.0));
    }
}
