//! Unit tests of the model: counters, setpoints and followers, status cycles, counter resets,
//! arrays, the seeded scan jitter of source timestamps, spikes and the write log.

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
        m.write(sp, Value::Float(101.0), true, Utc::now()),
        Err(Refusal::OutOfRange)
    );
    assert_eq!(
        m.write(pv, Value::Float(1.0), true, Utc::now()),
        Err(Refusal::NotWritable)
    );
    m.write(sp, Value::Float(50.0), true, Utc::now()).unwrap();
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

/// A model whose one variable (`kind`) is a ramp 0 -> 1 per second with `spike`, ticked every
/// 100 ms for `ticks` ticks from the model's start; returns (seconds, value) per tick.
fn spiked(seed: u64, kind: Kind, spike: Spike, ticks: i64) -> Vec<(f64, Value)> {
    let mut m = Model::new(seed, Duration::ZERO);
    let g = m.add_group("g", Duration::from_millis(100));
    let v = m.add_var(
        "v",
        scalar(kind),
        Behaviour::Ramp {
            from: 0.0,
            to: 1.0,
            period: Duration::from_secs(1),
        },
        vec![],
        g,
        Value::Float(0.0),
    );
    m.vars[v].spike = Some(spike);
    let start = m.started;
    (1..=ticks)
        .map(|i| {
            let at = start + chrono::Duration::milliseconds(100 * i);
            m.tick(g, at, true);
            (i as f64 / 10.0, m.vars[v].value.clone())
        })
        .collect()
}

#[test]
fn spike_adds_during_its_windows_only_with_seeded_noise() {
    let spike = Spike {
        every: Duration::from_secs(1),
        at: Duration::from_millis(2_000),
        add: 100.0,
        length: Duration::from_millis(500),
        noise: 0.4,
    };
    let run = spiked(7, Kind::Double, spike, 59);
    for (t, v) in &run {
        let x = v.as_f64().unwrap();
        let base = t % 1.0;
        let inside = *t >= 2.0 && (t - 2.0) % 1.0 < 0.5 - 1e-9;
        if inside {
            assert!((x - base - 100.0).abs() <= 0.4 + 1e-9, "t={t}: {x}");
        } else {
            assert!((x - base).abs() < 1e-9, "t={t}: {x} outside a spike");
        }
    }
    let spiked_ticks = run.iter().filter(|(_, v)| v.as_f64().unwrap() > 50.0);
    assert_eq!(
        spiked_ticks.count(),
        4 * 5,
        "ticks 2.0..2.4, 3.0..3.4, 4.0..4.4, 5.0..5.4"
    );
    assert_eq!(
        run,
        spiked(7, Kind::Double, spike, 59),
        "same seed, same values"
    );
    assert_ne!(
        run,
        spiked(8, Kind::Double, spike, 59),
        "the noise is seeded"
    );
}

#[test]
fn a_spiked_integer_is_rounded() {
    let spike = Spike {
        every: Duration::from_secs(10),
        at: Duration::ZERO,
        add: 2.6,
        length: Duration::from_secs(1),
        noise: 0.0,
    };
    let run = spiked(1, Kind::Int32, spike, 12);
    // ramp 0.1 .. 0.9 (+ 2.6 during the first second), then 0.0 .. 0.2 again
    let ints: Vec<Value> = run.into_iter().map(|(_, v)| v).collect();
    let expected: Vec<i64> = vec![3, 3, 3, 3, 4, 4, 4, 4, 4, 0, 0, 0];
    assert_eq!(
        ints,
        expected.into_iter().map(Value::Int).collect::<Vec<_>>()
    );
}

#[test]
fn the_write_log_keeps_the_newest_accepted_writes_with_their_time() {
    let mut m = Model::new(1, Duration::ZERO);
    let g = m.add_group("g", Duration::from_secs(1));
    let valve = m.add_var(
        "valve",
        scalar(Kind::Boolean),
        Behaviour::Constant {
            value: Some(Value::Bool(false)),
        },
        vec![],
        g,
        Value::Bool(false),
    );
    let t0 = Utc::now();
    let n = WRITE_LOG_CAPACITY + 5;
    for i in 0..n {
        let at = t0 + chrono::Duration::microseconds(i as i64);
        m.write(valve, Value::Bool(i % 2 == 1), true, at).unwrap();
    }
    let v = &m.vars[valve];
    assert_eq!(v.writes, n as u64);
    assert_eq!(v.write_log.len(), WRITE_LOG_CAPACITY);
    let log = v.write_log.to_vec();
    assert_eq!(
        log[0].at_us,
        t0.timestamp_micros() + 5,
        "the 5 oldest dropped"
    );
    assert_eq!(log[0].value, Value::Bool(true));
    let last = log.last().unwrap();
    assert_eq!(last.at_us, t0.timestamp_micros() + n as i64 - 1);
    assert_eq!(last.value, Value::Bool(false));
}
