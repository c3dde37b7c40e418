//! `--scale N@INTERVAL`: N generated variables of mixed types for load tests, all changing at
//! every tick. Variable `i` is `nsu=urn:opcua-connector:simulator:scale;s=Scale.<Type>.<i>`
//! (`i` zero-padded to six digits) with the type chosen by `i % 5`: UInt32 counter, Double sine, Int64 counter, Boolean
//! toggle, Int32 counter. Counters start at 0 and add 1 per tick, so a consumer can check
//! every value against the tick count (ground truth).

use std::str::FromStr;
use std::time::Duration;

use crate::model::{Behaviour, Kind, Model, Value, VarType};

pub const NAMESPACE: &str = "urn:opcua-connector:simulator:scale";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScaleSpec {
    pub count: usize,
    pub interval: Duration,
}

impl FromStr for ScaleSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (n, interval) = s
            .split_once('@')
            .ok_or_else(|| format!("--scale {s:?}: expected N@INTERVAL, e.g. 10000@100ms"))?;
        let count = n
            .replace('_', "")
            .parse::<usize>()
            .map_err(|e| format!("--scale {s:?}: bad count {n:?}: {e}"))?;
        let interval = humantime::parse_duration(interval)
            .map_err(|e| format!("--scale {s:?}: bad interval {interval:?}: {e}"))?;
        if count == 0 || count > 1_000_000 {
            return Err(format!("--scale {s:?}: count must be 1..=1000000"));
        }
        if interval < Duration::from_millis(10) {
            return Err(format!("--scale {s:?}: interval must be at least 10ms"));
        }
        Ok(ScaleSpec { count, interval })
    }
}

const KINDS: [(Kind, &str); 5] = [
    (Kind::UInt32, "UInt32"),
    (Kind::Double, "Double"),
    (Kind::Int64, "Int64"),
    (Kind::Boolean, "Boolean"),
    (Kind::Int32, "Int32"),
];

/// Browse name / string identifier and type of scaled variable `i`.
pub fn node(i: usize) -> (String, VarType) {
    let (kind, name) = KINDS[i % KINDS.len()];
    (
        format!("Scale.{name}.{i:06}"),
        VarType { kind, array: None },
    )
}

/// Node id of scaled variable `i` in namespace-URI form.
pub fn id(i: usize) -> String {
    format!("nsu={NAMESPACE};s={}", node(i).0)
}

/// True if scaled variable `i` is a counter whose value equals the number of ticks so far.
pub fn is_counter(i: usize) -> bool {
    matches!(
        KINDS[i % KINDS.len()].0,
        Kind::UInt32 | Kind::Int64 | Kind::Int32
    )
}

/// Adds the scaled variables to the model in their own group `scale`.
pub fn add_to_model(model: &mut Model, spec: ScaleSpec) {
    let g = model.add_group("scale", spec.interval);
    for i in 0..spec.count {
        let (_, ty) = node(i);
        let behaviour = match ty.kind {
            Kind::Double => Behaviour::Sine {
                amplitude: 100.0,
                offset: 0.0,
                // Periods that are no multiple of the tick, so values never repeat exactly.
                period: Duration::from_millis(10_007 + (i as u64 % 997) * 13),
                noise: 0.0,
            },
            Kind::Boolean => Behaviour::Toggle,
            _ => Behaviour::Counter {
                start: 0,
                step: 1,
                max: None,
            },
        };
        let initial = match ty.kind {
            Kind::Boolean => Value::Bool(false),
            Kind::Double => Value::Float(0.0),
            _ => Value::Int(0),
        };
        model.add_var(id(i), ty, behaviour, Vec::new(), g, initial);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_names() {
        let s: ScaleSpec = "100_000@1s".parse().unwrap();
        assert_eq!(
            s,
            ScaleSpec {
                count: 100_000,
                interval: Duration::from_secs(1)
            }
        );
        assert!("10@1ms".parse::<ScaleSpec>().is_err());
        assert!("x@1s".parse::<ScaleSpec>().is_err());
        assert_eq!(
            id(7),
            "nsu=urn:opcua-connector:simulator:scale;s=Scale.Int64.000007"
        );
        assert!(
            is_counter(0) && !is_counter(1) && is_counter(2) && !is_counter(3) && is_counter(4)
        );
    }
}
