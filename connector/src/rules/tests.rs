//! The engine: firing, hysteresis, `min_interval`, `for` on the clock, a PLC going down and
//! resuming, a restart that remembers a firing.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::*;
use crate::config::{Condition, NodeTest, Op, Test};
use crate::sample::{Item, Origin, TypeName};

fn leaf(op: Op, hold_ms: u64) -> Condition {
    Condition {
        test: Test::Node(NodeTest {
            plc: "p".into(),
            node: "t".into(),
            op,
        }),
        hold: Duration::from_millis(hold_ms),
    }
}

fn rule(when: Condition, clear: Option<Condition>, min_interval_ms: u64) -> Rule {
    Rule {
        name: "r".into(),
        when,
        clear,
        min_interval: Duration::from_millis(min_interval_ms),
        on_fire: vec![Action::Write {
            property: "valve".into(),
            value: serde_json::json!(true),
        }],
        on_clear: vec![Action::Write {
            property: "valve".into(),
            value: serde_json::json!(false),
        }],
    }
}

fn sample(v: f64, status: u32) -> Sample {
    Sample {
        item: Arc::new(Item {
            plc: "p".into(),
            group: "g".into(),
            node: "t".into(),
            name: "t".into(),
        }),
        time_us: 0,
        server_time_us: None,
        status,
        type_name: TypeName::builtin(11, false),
        value: SampleValue::Double(v),
        origin: Origin::Live,
    }
}

struct Bench {
    engine: Engine,
    rx: mpsc::UnboundedReceiver<RuleCommand>,
    t0: Instant,
}

impl Bench {
    fn new(r: Rule, fired: state::Fired) -> Bench {
        let (tx, rx) = mpsc::unbounded_channel();
        Bench {
            engine: Engine::new(&[r], Some(tx), None, fired),
            rx,
            t0: Instant::now(),
        }
    }

    fn feed(&mut self, v: f64) {
        self.engine.samples(&[sample(v, 0)], self.t0);
    }

    /// The valve values written so far.
    fn writes(&mut self) -> Vec<bool> {
        let mut out = Vec::new();
        while let Ok(c) = self.rx.try_recv() {
            match c {
                RuleCommand::Write { value, .. } => out.push(value.as_bool().unwrap()),
                RuleCommand::Call { .. } => panic!("no calls here"),
            }
        }
        out
    }

    fn count(&self, pick: fn(&RuleCounters) -> &std::sync::atomic::AtomicU64) -> u64 {
        pick(&self.engine.metrics.rules[0]).load(Ordering::Relaxed)
    }
}

#[test]
fn hysteresis_fires_once_on_a_noisy_signal() {
    let mut b = Bench::new(
        rule(leaf(Op::Above(16.0), 0), Some(leaf(Op::Below(14.0), 0)), 0),
        state::Fired::in_memory(),
    );
    for v in [12.0, 16.5, 15.9, 16.2, 15.0, 17.0, 14.5, 13.9, 16.1] {
        b.feed(v);
    }
    assert_eq!(b.writes(), [true, false, true]);
    assert_eq!(b.count(|c| &c.firings), 2);
    assert_eq!(b.count(|c| &c.clears), 1);
}

#[test]
fn without_clear_unknown_does_not_clear_but_false_does() {
    let mut b = Bench::new(
        rule(leaf(Op::Above(16.0), 0), None, 0),
        state::Fired::in_memory(),
    );
    b.feed(17.0);
    b.engine.samples(&[sample(1.0, 0x8000_0000)], b.t0);
    b.engine.down("p", true);
    b.feed(f64::NAN);
    assert_eq!(
        b.writes(),
        [true],
        "Bad, a PLC down and NaN are not known to be below"
    );
    b.feed(15.0);
    assert_eq!(b.writes(), [false]);
}

#[test]
fn min_interval_delays_a_firing_until_it_is_over() {
    let mut b = Bench::new(
        rule(leaf(Op::Above(16.0), 0), None, 1000),
        state::Fired::in_memory(),
    );
    b.feed(17.0);
    b.feed(15.0);
    b.feed(17.0);
    b.feed(17.5);
    assert_eq!(b.writes(), [true, false], "the second firing waits");
    assert_eq!(b.count(|c| &c.suppressed), 1, "counted once");
    let wake = b.engine.rules[0]
        .wake
        .expect("a wake at the interval's end");
    assert!(wake > Instant::now());
    b.engine.timers(wake);
    assert_eq!(
        b.writes(),
        [true],
        "fired when the interval is over, still above"
    );
    assert_eq!(b.count(|c| &c.firings), 2);
    // Held back, then the condition went away: nothing when the interval ends.
    b.feed(15.0);
    b.feed(17.0);
    b.feed(15.0);
    let _ = b.writes();
    let suppressed = b.count(|c| &c.suppressed);
    b.engine.timers(Instant::now() + Duration::from_secs(2));
    assert_eq!(b.writes(), Vec::<bool>::new());
    assert_eq!(b.count(|c| &c.suppressed), suppressed);
}

#[test]
fn for_completes_on_the_clock_and_a_resumed_session_restores_values() {
    let mut b = Bench::new(
        rule(leaf(Op::Above(16.0), 500), None, 0),
        state::Fired::in_memory(),
    );
    b.feed(17.0);
    assert!(b.writes().is_empty());
    let due = b.engine.rules[0].wake.expect("the for's end");
    b.engine.down("p", true);
    b.engine.timers(due);
    assert!(b.writes().is_empty(), "unknown while the session is down");
    b.engine.down("p", false);
    b.engine.timers(due + Duration::from_millis(600));
    assert_eq!(
        b.writes(),
        [true],
        "the value stands again; held 500 ms since"
    );
}

#[test]
fn a_firing_survives_a_restart_and_its_clear_runs_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fired.json");
    let r = rule(leaf(Op::Above(16.0), 0), Some(leaf(Op::Below(14.0), 0)), 0);
    let mut b = Bench::new(r.clone(), state::Fired::open(path.clone()));
    b.feed(17.0);
    assert_eq!(b.writes(), [true]);
    drop(b);
    let mut again = Bench::new(r, state::Fired::open(path));
    again.feed(16.5);
    assert!(again.writes().is_empty(), "still fired: no second opening");
    again.feed(12.0);
    assert_eq!(
        again.writes(),
        [false],
        "the valve opened before the restart is closed"
    );
}
