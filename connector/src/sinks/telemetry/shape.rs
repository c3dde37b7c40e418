//! Telemetry shaping (`[plc.group.telemetry]`, docs/edge.md): a group's numeric samples
//! become one summary per node and tumbling window instead of one message entry per sample;
//! Parquet keeps every raw sample.
//!
//! - Windows are aligned to UTC: `[k·w, (k+1)·w)` in µs since the Unix epoch, `w` dividing a
//!   day, by the samples' source time.
//! - Numeric values (Float, Double, the integer types) with a Good status are aggregated:
//!   `count`, `sum`, `min`, `max`, `mean` (sum / count), `first`, `last` (by time), and `twa`,
//!   the time-weighted mean of the value held as a step: each value holds until the next one,
//!   the last value of an earlier window holds from the window's start, the last one of the
//!   window up to its end. Bad and Uncertain samples (and NaN, infinities) are not
//!   aggregated; `bad` counts them, and the value held before one no longer holds after it.
//! - Everything else (strings, booleans, arrays, structures, events, no value) goes out as
//!   raw samples, like an unshaped group's.
//! - A window is sent once the wall clock is [`GRACE`] past its end, or at once when a later
//!   window's sample arrives. A sample of a window already sent (late, or backfilled from
//!   history), or older than one its window already took, goes out raw, counted. At shutdown
//!   the open windows are sent marked `partial`. A window is sent for each node that had
//!   samples in it; the connector's clock decides when (a PLC clock more than [`GRACE`] behind
//!   makes its samples late).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::sample::{Item, Sample, SampleValue};

/// How long after a window's end (wall clock) it is sent: samples of the window that are
/// still in flight get this long to arrive.
pub const GRACE: Duration = Duration::from_secs(2);

/// One node's summary of one window.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    pub item: Arc<Item>,
    pub start_us: i64,
    pub end_us: i64,
    /// Good numeric samples aggregated.
    pub count: u64,
    /// Bad or Uncertain numeric samples, not aggregated.
    pub bad: u64,
    pub sum: f64,
    pub min: f64,
    pub max: f64,
    pub first: f64,
    pub last: f64,
    /// Time-weighted mean (`None` when no value held in the window).
    pub twa: Option<f64>,
    /// Sent before its end (shutdown).
    pub partial: bool,
}

impl Window {
    pub fn mean(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum / self.count as f64)
    }
}

/// A node's open window.
#[derive(Debug)]
struct Open {
    item: Arc<Item>,
    start_us: i64,
    count: u64,
    bad: u64,
    sum: f64,
    min: f64,
    max: f64,
    first: Option<f64>,
    last: Option<f64>,
    /// The value held since `held.0` (for `twa`).
    held: Option<(i64, f64)>,
    /// The time of the newest sample taken (samples must come in time order).
    newest: i64,
    area: f64,
    covered: i64,
}

impl Open {
    fn new(item: Arc<Item>, start_us: i64, carried: Option<f64>) -> Open {
        Open {
            item,
            start_us,
            count: 0,
            bad: 0,
            sum: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            first: None,
            last: None,
            held: carried.map(|v| (start_us, v)),
            newest: i64::MIN,
            area: 0.0,
            covered: 0,
        }
    }

    /// A Bad or Uncertain (or not finite) value: counted, and the value held before it no
    /// longer holds.
    fn add_bad(&mut self, t: i64) {
        self.hold_until(t);
        self.held = None;
        self.bad += 1;
        self.newest = self.newest.max(t);
    }

    fn hold_until(&mut self, t: i64) {
        if let Some((since, v)) = self.held {
            if t > since {
                self.area += v * (t - since) as f64;
                self.covered += t - since;
                self.held = Some((t, v));
            }
        }
    }

    fn add(&mut self, t: i64, v: f64) {
        self.newest = self.newest.max(t);
        self.hold_until(t);
        self.held = Some((t, v));
        self.count += 1;
        self.sum += v;
        self.min = self.min.min(v);
        self.max = self.max.max(v);
        if self.first.is_none() {
            self.first = Some(v);
        }
        self.last = Some(v);
    }

    /// The summary, the value held to `until` (the window's end, or now for a partial one).
    fn close(mut self, end_us: i64, until: i64, partial: bool) -> (Window, Option<f64>) {
        self.hold_until(until);
        let carried = self.held.map(|(_, v)| v);
        let twa = (self.covered > 0).then(|| self.area / self.covered as f64);
        let w = Window {
            item: self.item,
            start_us: self.start_us,
            end_us,
            count: self.count,
            bad: self.bad,
            sum: self.sum,
            min: self.min,
            max: self.max,
            first: self.first.unwrap_or(f64::NAN),
            last: self.last.unwrap_or(f64::NAN),
            twa,
            partial,
        };
        (w, carried)
    }
}

/// What became of a sample given to [`Shaper::add`].
#[derive(Debug, PartialEq)]
pub enum Taken {
    /// Aggregated (or counted as bad) in its window.
    Windowed,
    /// Not for a window: send it raw (not numeric, or its window was already sent).
    Raw { late: bool },
}

/// The windows of one shaped group (of one telemetry destination).
#[derive(Debug)]
pub struct Shaper {
    window_us: i64,
    /// Open window per node (node id and tag name: the same across sessions).
    open: HashMap<NodeKey, Open>,
    /// The last value of each node's last sent window, held into its next.
    carried: HashMap<NodeKey, (i64, Option<f64>)>,
    /// Finished windows waiting to be sent.
    done: Vec<Window>,
}

type NodeKey = (Arc<str>, Arc<str>);

/// The numeric value of a sample, if it has one.
fn numeric(v: &SampleValue) -> Option<f64> {
    match v {
        SampleValue::Double(d) => Some(*d),
        SampleValue::Int(i) => Some(*i as f64),
        SampleValue::UInt(u) => Some(*u as f64),
        _ => None,
    }
}

impl Shaper {
    pub fn new(window: Duration) -> Shaper {
        Shaper {
            window_us: i64::try_from(window.as_micros()).unwrap_or(i64::MAX).max(1),
            open: HashMap::new(),
            carried: HashMap::new(),
            done: Vec::new(),
        }
    }

    fn start_of(&self, t: i64) -> i64 {
        t.div_euclid(self.window_us) * self.window_us
    }

    pub fn add(&mut self, s: &Sample) -> Taken {
        let Some(v) = numeric(&s.value) else {
            return Taken::Raw { late: false };
        };
        let key: NodeKey = (s.item.node.clone(), s.item.name.clone());
        let start = self.start_of(s.time_us);
        if let Some(open) = self.open.get(&key) {
            if start > open.start_us {
                // The node moved on: its window is complete.
                let open = self.open.remove(&key).expect("present");
                self.finish(key.clone(), open, false, None);
            } else if start < open.start_us || s.time_us < open.newest {
                // Older than what the window already took (a republished message).
                return Taken::Raw { late: true };
            }
        } else if self
            .carried
            .get(&key)
            .is_some_and(|(sent_start, _)| start <= *sent_start)
        {
            return Taken::Raw { late: true };
        }
        let carried = self.carried.get(&key).and_then(|c| c.1);
        let open = self
            .open
            .entry(key)
            .or_insert_with(|| Open::new(s.item.clone(), start, carried));
        if s.status & 0xC000_0000 != 0 || !v.is_finite() {
            open.add_bad(s.time_us);
        } else {
            open.add(s.time_us, v);
        }
        Taken::Windowed
    }

    fn finish(&mut self, key: NodeKey, open: Open, partial: bool, now_us: Option<i64>) {
        let start = open.start_us;
        let end = start + self.window_us;
        // A partial window holds up to now, at least up to its newest sample.
        let until = now_us.map_or(end, |n| n.clamp(start, end).max(open.newest.min(end)));
        let (w, carried) = open.close(end, until, partial);
        self.carried.insert(key, (start, carried));
        self.done.push(w);
    }

    /// Closes the windows whose end is [`GRACE`] behind the wall clock `now_us`.
    pub fn tick(&mut self, now_us: i64) {
        let grace = i64::try_from(GRACE.as_micros()).unwrap_or(0);
        let due: Vec<NodeKey> = self
            .open
            .iter()
            .filter(|(_, o)| o.start_us + self.window_us + grace <= now_us)
            .map(|(k, _)| k.clone())
            .collect();
        for k in due {
            if let Some(open) = self.open.remove(&k) {
                self.finish(k, open, false, None);
            }
        }
    }

    /// Closes every open window, marked partial (shutdown), held up to `now_us`.
    pub fn flush(&mut self, now_us: i64) {
        let keys: Vec<NodeKey> = self.open.keys().cloned().collect();
        for k in keys {
            if let Some(open) = self.open.remove(&k) {
                let complete = open.start_us + self.window_us <= now_us;
                self.finish(k, open, !complete, Some(now_us));
            }
        }
    }

    /// The finished windows, in the order they closed.
    pub fn take(&mut self) -> Vec<Window> {
        std::mem::take(&mut self.done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::{Origin, TypeName};

    fn item() -> Arc<Item> {
        Arc::new(Item::named("p", "g", "n"))
    }

    fn s(item: &Arc<Item>, t_s: f64, v: SampleValue, status: u32) -> Sample {
        Sample {
            item: item.clone(),
            time_us: (t_s * 1e6) as i64,
            server_time_us: None,
            status,
            type_name: TypeName::builtin(11, false),
            value: v,
            origin: Origin::Live,
        }
    }

    #[test]
    fn windows_aligned_to_utc_with_every_aggregate_and_a_held_value() {
        let i = item();
        let mut sh = Shaper::new(Duration::from_secs(10));
        let d = SampleValue::Double;
        for (t, v) in [
            (1_000_000_002.0, 4.0),
            (1_000_000_006.0, 1.0),
            (1_000_000_008.0, 7.0),
        ] {
            assert_eq!(sh.add(&s(&i, t, d(v), 0)), Taken::Windowed);
        }
        // Uncertain: counted, not aggregated; a string goes out raw.
        assert_eq!(
            sh.add(&s(&i, 1_000_000_009.0, d(99.0), 0x4000_0000)),
            Taken::Windowed
        );
        let text = SampleValue::String("x".into());
        assert_eq!(
            sh.add(&s(&i, 1_000_000_009.0, text, 0)),
            Taken::Raw { late: false }
        );
        // A sample of the next window closes this one.
        assert_eq!(sh.add(&s(&i, 1_000_000_013.0, d(2.0), 0)), Taken::Windowed);
        let w = sh.take();
        assert_eq!(w.len(), 1);
        let w = &w[0];
        assert_eq!(
            (w.start_us, w.end_us),
            (1_000_000_000_000_000, 1_000_000_010_000_000)
        );
        assert_eq!((w.count, w.bad), (3, 1));
        assert_eq!(
            (w.min, w.max, w.sum, w.first, w.last),
            (1.0, 7.0, 12.0, 4.0, 7.0)
        );
        assert_eq!(w.mean(), Some(4.0));
        // 4 for 4 s, 1 for 2 s, 7 for 1 s: the Uncertain sample at 9 s ends what was held.
        assert_eq!(w.twa, Some((4.0 * 4.0 + 1.0 * 2.0 + 7.0 * 1.0) / 7.0));
        // A late sample of the sent window goes out raw; nothing is held into the next window
        // (the window ended on an Uncertain value).
        assert_eq!(
            sh.add(&s(&i, 1_000_000_009.5, d(5.0), 0)),
            Taken::Raw { late: true }
        );
        sh.tick(1_000_000_022_000_000);
        let w = sh.take();
        assert_eq!(w.len(), 1);
        // 2 from 13 s to the end.
        assert_eq!(w[0].twa, Some(2.0));
        assert_eq!((w[0].count, w[0].first), (1, 2.0));
    }

    #[test]
    fn bad_and_out_of_order_values_neither_count_nor_hold_and_nodes_are_keyed_by_id() {
        let i = item();
        let mut sh = Shaper::new(Duration::from_secs(10));
        let d = SampleValue::Double;
        sh.add(&s(&i, 100.0, d(2.0), 0));
        sh.add(&s(&i, 104.0, d(f64::NAN), 0)); // bad: 2 held for 4 s only
        assert_eq!(sh.add(&s(&i, 103.0, d(9.0), 0)), Taken::Raw { late: true });
        sh.add(&s(&i, 106.0, d(4.0), 0)); // 4 for 4 s
                                          // The same node through a new item (a new session): the same window.
        let again = item();
        sh.add(&s(&again, 108.0, d(4.0), 0));
        sh.tick(113_000_000);
        let w = sh.take();
        assert_eq!(w.len(), 1, "{w:?}");
        assert_eq!((w[0].count, w[0].bad, w[0].sum), (3, 1, 10.0));
        assert_eq!(w[0].twa, Some((2.0 * 4.0 + 4.0 * 4.0) / 8.0));
    }

    #[test]
    fn open_windows_are_sent_partial_at_shutdown_and_not_before_the_grace() {
        let i = item();
        let mut sh = Shaper::new(Duration::from_secs(60));
        sh.add(&s(&i, 120.0, SampleValue::Int(5), 0));
        sh.tick(181_000_000);
        assert!(sh.take().is_empty(), "within the grace");
        sh.flush(150_000_000);
        let w = sh.take();
        assert!(w[0].partial && w[0].count == 1);
        assert_eq!(w[0].twa, Some(5.0));
    }
}
