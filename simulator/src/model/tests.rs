//! Unit tests of the model: counters, setpoints and followers, status cycles, counter resets,
//! arrays and the seeded scan jitter of source timestamps.

use super::*;

fn scalar(kind: Kind) -> VarType {
    VarType { kind, array: None }
}

#[test]
fn counter_counts_by_step_and_wraps_at_the_type_maximum() {
    let mut m = Model::new(1, Duration::ZERO);
    let g = m.add_group("g", Duration::from_millis(100));
    let c = m.add_var(
        "c",
        scalar(Kind::Int16),
        Behaviour::Counter {
            start: 32_765,
            step: 1,
            max: None,
        },
        vec![],
        g,
        Value::Int(0),
    );
    let now = Utc::now();
    let seen: Vec<Value> = (0..4)
        .flat_map(|_| m.tick(g, now, true))
        .map(|u| u.value)
        .collect();
    assert_eq!(
        seen,
        vec![
            Value::Int(32_766),
            Value::Int(32_767),
            Value::Int(32_765),
            Value::Int(32_766)
        ]
    );
    assert_eq!(m.vars[c].produced, 4);
}

#[test]
fn setpoint_refuses_out_of_range_and_follower_converges() {
    let mut m = Model::new(1, Duration::ZERO);
    let g = m.add_group("g", Duration::from_millis(100));
    let sp = m.add_var(
        "sp",
        scalar(Kind::Double),
        Behaviour::Setpoint {
            value: Some(0.0),
            min: Some(0.0),
            max: Some(100.0),
        },
        vec![],
        g,
        Value::Float(0.0),
    );
    let pv = m.add_var(
        "pv",
        scalar(Kind::Double),
        Behaviour::Follow {
            source: sp,
            time_constant: Duration::from_millis(200),
            noise: 0.0,
        },
        vec![],
        g,
        Value::Float(0.0),
    );
    assert_eq!(
        m.write(sp, Value::Float(101.0), true),
        Err(Refusal::OutOfRange)
    );
    assert_eq!(
        m.write(pv, Value::Float(1.0), true),
        Err(Refusal::NotWritable)
    );
    m.write(sp, Value::Float(50.0), true).unwrap();
    for _ in 0..30 {
        m.tick(g, Utc::now(), true);
    }
    let x = m.vars[pv].value.as_f64().unwrap();
    assert!((x - 50.0).abs() < 0.1, "follower at {x}");
}

#[test]
fn status_cycle_repeats_and_counts_as_updates() {
    let mut m = Model::new(1, Duration::ZERO);
    let g = m.add_group("g", Duration::from_millis(100));
    m.add_var(
        "s",
        scalar(Kind::Double),
        Behaviour::Constant {
            value: Some(Value::Float(1.0)),
        },
        vec![0, 0x4000_0000, 0x8000_0000],
        g,
        Value::Float(1.0),
    );
    let statuses: Vec<u32> = (0..6)
        .flat_map(|_| m.tick(g, Utc::now(), true))
        .map(|u| u.status)
        .collect();
    assert_eq!(
        statuses,
        vec![0x4000_0000, 0x8000_0000, 0, 0x4000_0000, 0x8000_0000]
    );
}

#[test]
fn reset_counters_reports_count_and_previous_total() {
    let mut m = Model::new(1, Duration::ZERO);
    let g = m.add_group("g", Duration::from_millis(100));
    let c = m.add_var(
        "c",
        scalar(Kind::UInt64),
        Behaviour::Counter {
            start: 0,
            step: 1,
            max: None,
        },
        vec![],
        g,
        Value::UInt(0),
    );
    m.add_method("reset", Action::ResetCounters { counters: vec![c] });
    for _ in 0..5 {
        m.tick(g, Utc::now(), true);
    }
    let (out, changed) = m.call(0).unwrap();
    assert_eq!(out, vec![Value::UInt(1), Value::UInt(5)]);
    assert_eq!(changed, vec![c]);
    assert_eq!(m.vars[c].value, Value::UInt(0));
}

#[test]
fn arrays_carry_one_value_per_element() {
    let mut m = Model::new(1, Duration::ZERO);
    let g = m.add_group("g", Duration::from_millis(100));
    let a = m.add_var(
        "a",
        VarType {
            kind: Kind::Int32,
            array: Some(3),
        },
        Behaviour::Counter {
            start: 0,
            step: 1,
            max: None,
        },
        vec![],
        g,
        Value::Int(0),
    );
    m.tick(g, Utc::now(), true);
    assert_eq!(
        m.vars[a].value,
        Value::Array(vec![Value::Int(1), Value::Int(2), Value::Int(3)])
    );
}

#[test]
fn source_timestamps_carry_seeded_scan_jitter() {
    let mut m = Model::new(7, Duration::from_millis(3));
    let g = m.add_group("g", Duration::from_millis(100));
    m.add_var(
        "c",
        VarType {
            kind: Kind::UInt32,
            array: None,
        },
        Behaviour::Counter {
            start: 0,
            step: 1,
            max: None,
        },
        vec![],
        g,
        Value::Int(0),
    );
    let t0 = Utc::now();
    let offsets: Vec<i64> = (0..20)
        .map(|i| {
            let at = t0 + chrono::Duration::milliseconds(100 * i);
            let u = m.tick(g, at, true).pop().unwrap();
            (u.source_time - at).num_microseconds().unwrap()
        })
        .collect();
    assert!(
        offsets.iter().all(|&o| (0..3000).contains(&o)),
        "{offsets:?}"
    );
    let distinct: std::collections::HashSet<_> = offsets.iter().collect();
    assert!(distinct.len() > 10, "{offsets:?}");
}
