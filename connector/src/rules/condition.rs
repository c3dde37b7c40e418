//! Evaluating a condition: three values (true, false, unknown) and `for` durations.
//!
//! A node's test is unknown while the node has no value, its last sample is not Good, its
//! PLC's session is down, or its value cannot be compared (a text with `above`). `all` is
//! false when one part is false, else unknown when one is unknown, else pending when one is
//! pending, else true; `any` is true when one part is true, else pending, else unknown, else
//! false. A condition with `for` is pending while it has been true for less than that long.

use std::time::{Duration, Instant};

use crate::config::{Condition, NodeTest, Op, Scalar, Test};

/// A condition's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Truth {
    True,
    False,
    Unknown,
    /// True, but not yet for its `for` duration.
    Pending,
}

/// The last sample of a node, as a rule sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Seen {
    pub value: Value,
    /// Good (status code 0..0x3FFFFFFF with severity Good).
    pub good: bool,
    pub time_us: i64,
    /// Units per second since the previous sample, both Good and numeric (source time).
    pub rate: Option<f64>,
    /// The PLC's session is down: the value is not known to be current.
    pub stale: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Number(f64),
    Bool(bool),
    Text(String),
    /// Arrays, structures, byte strings: nothing a rule compares.
    Other,
}

/// Where a condition's `for` and its parts' stand.
#[derive(Debug, Clone, Default)]
pub struct HoldState {
    since: Option<Instant>,
    parts: Vec<HoldState>,
}

impl HoldState {
    pub fn of(c: &Condition) -> HoldState {
        HoldState {
            since: None,
            parts: match &c.test {
                Test::All(list) | Test::Any(list) => list.iter().map(HoldState::of).collect(),
                Test::Node(_) => Vec::new(),
            },
        }
    }

    /// Forgets every running `for` (the rule changed state).
    pub fn reset(&mut self) {
        self.since = None;
        self.parts.iter_mut().for_each(HoldState::reset);
    }
}

/// What evaluation needs from its caller.
pub trait Values {
    fn get(&self, test: &NodeTest) -> Option<&Seen>;
    /// A value that cannot be compared with `op` (reported once by the caller).
    fn mismatch(&mut self, test: &NodeTest);
}

/// Evaluates `c` at `now`; `wake` gets the earliest instant a `for` completes.
pub fn eval(
    c: &Condition,
    st: &mut HoldState,
    now: Instant,
    values: &mut dyn Values,
    wake: &mut Option<Instant>,
) -> Truth {
    let raw = match &c.test {
        Test::Node(t) => node(t, values),
        Test::All(list) => {
            let parts: Vec<Truth> = list
                .iter()
                .zip(st.parts.iter_mut())
                .map(|(c, s)| eval(c, s, now, values, wake))
                .collect();
            all(&parts)
        }
        Test::Any(list) => {
            let parts: Vec<Truth> = list
                .iter()
                .zip(st.parts.iter_mut())
                .map(|(c, s)| eval(c, s, now, values, wake))
                .collect();
            any(&parts)
        }
    };
    if raw != Truth::True {
        st.since = None;
        return raw;
    }
    if c.hold.is_zero() {
        return Truth::True;
    }
    let since = *st.since.get_or_insert(now);
    let due = since + c.hold;
    if now >= due {
        Truth::True
    } else {
        *wake = Some(wake.map_or(due, |w: Instant| w.min(due)));
        Truth::Pending
    }
}

fn all(parts: &[Truth]) -> Truth {
    for t in [Truth::False, Truth::Unknown, Truth::Pending] {
        if parts.contains(&t) {
            return t;
        }
    }
    Truth::True
}

fn any(parts: &[Truth]) -> Truth {
    for t in [Truth::True, Truth::Pending, Truth::Unknown] {
        if parts.contains(&t) {
            return t;
        }
    }
    Truth::False
}

fn node(t: &NodeTest, values: &mut dyn Values) -> Truth {
    let Some(seen) = values.get(t) else {
        return Truth::Unknown;
    };
    if !seen.good || seen.stale {
        return Truth::Unknown;
    }
    let truth = |b: bool| if b { Truth::True } else { Truth::False };
    let number = match &seen.value {
        // NaN and infinities compare with nothing: not known to be above or below.
        Value::Number(x) if !x.is_finite() => return Truth::Unknown,
        Value::Number(x) => Some(*x),
        _ => None,
    };
    let result = match (&t.op, number) {
        (Op::Above(v), Some(x)) => Some(x > *v),
        (Op::Below(v), Some(x)) => Some(x < *v),
        (Op::AtLeast(v), Some(x)) => Some(x >= *v),
        (Op::AtMost(v), Some(x)) => Some(x <= *v),
        (Op::Between(lo, hi), Some(x)) => Some(*lo <= x && x <= *hi),
        (Op::Outside(lo, hi), Some(x)) => Some(x < *lo || x > *hi),
        (Op::RateAbove(v), Some(_)) => match seen.rate {
            Some(r) => Some(r > *v),
            None => return Truth::Unknown,
        },
        (Op::RateBelow(v), Some(_)) => match seen.rate {
            Some(r) => Some(r < *v),
            None => return Truth::Unknown,
        },
        (Op::Equals(s), _) => equal(&seen.value, s),
        (Op::NotEquals(s), _) => equal(&seen.value, s).map(|e| !e),
        _ => None,
    };
    match result {
        Some(b) => truth(b),
        None => {
            values.mismatch(t);
            Truth::Unknown
        }
    }
}

/// `None` when the two cannot be compared (a text and a number).
fn equal(v: &Value, s: &Scalar) -> Option<bool> {
    match (v, s) {
        (Value::Number(x), Scalar::Number(y)) => Some(x == y),
        (Value::Bool(x), Scalar::Bool(y)) => Some(x == y),
        (Value::Text(x), Scalar::Text(y)) => Some(x == y),
        _ => None,
    }
}

/// The rate between two Good numeric samples, per second of source time; none when the
/// time did not advance.
pub fn rate(prev: (i64, f64), now: (i64, f64)) -> Option<f64> {
    let dt = Duration::from_micros(u64::try_from(now.0 - prev.0).ok()?).as_secs_f64();
    (dt > 0.0).then(|| (now.1 - prev.1) / dt)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct Map(HashMap<String, Seen>, u32);

    impl Values for Map {
        fn get(&self, t: &NodeTest) -> Option<&Seen> {
            self.0.get(&t.node)
        }
        fn mismatch(&mut self, _: &NodeTest) {
            self.1 += 1;
        }
    }

    fn leaf(node: &str, op: Op, hold_ms: u64) -> Condition {
        Condition {
            test: Test::Node(NodeTest {
                plc: "p".into(),
                node: node.into(),
                op,
            }),
            hold: Duration::from_millis(hold_ms),
        }
    }

    fn seen(x: f64) -> Seen {
        Seen {
            value: Value::Number(x),
            good: true,
            time_us: 0,
            rate: None,
            stale: false,
        }
    }

    #[test]
    fn tests_all_any_and_unknowns() {
        let mut m = Map(HashMap::new(), 0);
        let now = Instant::now();
        let mut wake = None;
        let c = leaf("a", Op::Above(10.0), 0);
        let mut st = HoldState::of(&c);
        assert_eq!(eval(&c, &mut st, now, &mut m, &mut wake), Truth::Unknown);
        m.0.insert("a".into(), seen(11.0));
        assert_eq!(eval(&c, &mut st, now, &mut m, &mut wake), Truth::True);
        m.0.insert("a".into(), seen(f64::NAN));
        assert_eq!(eval(&c, &mut st, now, &mut m, &mut wake), Truth::Unknown);
        m.0.insert("a".into(), seen(11.0));
        m.0.get_mut("a").unwrap().stale = true;
        assert_eq!(eval(&c, &mut st, now, &mut m, &mut wake), Truth::Unknown);
        m.0.get_mut("a").unwrap().stale = false;
        m.0.get_mut("a").unwrap().good = false;
        assert_eq!(eval(&c, &mut st, now, &mut m, &mut wake), Truth::Unknown);
        m.0.insert("a".into(), seen(9.0));
        let both = Condition {
            test: Test::All(vec![
                leaf("a", Op::Between(8.0, 10.0), 0),
                leaf("b", Op::Equals(Scalar::Bool(true)), 0),
            ]),
            hold: Duration::ZERO,
        };
        let mut st = HoldState::of(&both);
        assert_eq!(eval(&both, &mut st, now, &mut m, &mut wake), Truth::Unknown);
        m.0.insert(
            "b".into(),
            Seen {
                value: Value::Bool(true),
                ..seen(0.0)
            },
        );
        assert_eq!(eval(&both, &mut st, now, &mut m, &mut wake), Truth::True);
        let either = Condition {
            test: Test::Any(vec![
                leaf("a", Op::Above(100.0), 0),
                leaf("c", Op::Below(0.0), 0),
            ]),
            hold: Duration::ZERO,
        };
        let mut st = HoldState::of(&either);
        assert_eq!(
            eval(&either, &mut st, now, &mut m, &mut wake),
            Truth::Unknown
        );
        // A text compared with a number: unknown, and reported.
        m.0.insert(
            "t".into(),
            Seen {
                value: Value::Text("x".into()),
                ..seen(0.0)
            },
        );
        let c = leaf("t", Op::Above(1.0), 0);
        let mut st = HoldState::of(&c);
        assert_eq!(eval(&c, &mut st, now, &mut m, &mut wake), Truth::Unknown);
        assert_eq!(m.1, 1);
    }

    #[test]
    fn for_holds_until_due_and_restarts_after_a_break() {
        let mut m = Map(HashMap::new(), 0);
        m.0.insert("a".into(), seen(11.0));
        let c = leaf("a", Op::Above(10.0), 1000);
        let mut st = HoldState::of(&c);
        let t0 = Instant::now();
        let mut wake = None;
        assert_eq!(eval(&c, &mut st, t0, &mut m, &mut wake), Truth::Pending);
        assert_eq!(wake, Some(t0 + Duration::from_secs(1)));
        let t1 = t0 + Duration::from_millis(999);
        assert_eq!(eval(&c, &mut st, t1, &mut m, &mut None), Truth::Pending);
        let t2 = t0 + Duration::from_millis(1000);
        assert_eq!(eval(&c, &mut st, t2, &mut m, &mut None), Truth::True);
        m.0.insert("a".into(), seen(9.0));
        assert_eq!(eval(&c, &mut st, t2, &mut m, &mut None), Truth::False);
        m.0.insert("a".into(), seen(12.0));
        let t3 = t2 + Duration::from_millis(500);
        assert_eq!(eval(&c, &mut st, t3, &mut m, &mut None), Truth::Pending);
    }

    #[test]
    fn rates_on_source_time() {
        assert_eq!(rate((0, 1.0), (500_000, 2.0)), Some(2.0));
        assert_eq!(rate((0, 1.0), (0, 2.0)), None);
        assert_eq!(rate((10, 1.0), (0, 2.0)), None);
    }
}
