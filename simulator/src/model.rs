//! The simulation model: variables with behaviours (and spike overlays), groups that tick at a
//! rate, setpoints, methods and the ground truth of what was produced and written.
//!
//! It knows nothing of OPC UA: the server adapter ([`crate::server`]) maps its variables to
//! nodes and its refusals to status codes, and [`crate::convert`] its values to variants.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

/// The scalar type of a variable, as the model needs to know it to produce values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Kind {
    Boolean,
    SByte,
    Byte,
    Int16,
    UInt16,
    Int32,
    UInt32,
    Int64,
    UInt64,
    Float,
    Double,
    String,
    LocalizedText,
    DateTime,
    ByteString,
    /// A structure of the nodeset (its fields come from the DataType's definition).
    Structure,
}

impl Kind {
    pub fn is_integer(self) -> bool {
        matches!(
            self,
            Kind::SByte
                | Kind::Byte
                | Kind::Int16
                | Kind::UInt16
                | Kind::Int32
                | Kind::UInt32
                | Kind::Int64
                | Kind::UInt64
        )
    }

    pub fn is_numeric(self) -> bool {
        self.is_integer() || matches!(self, Kind::Float | Kind::Double)
    }

    pub fn is_text(self) -> bool {
        matches!(self, Kind::String | Kind::LocalizedText)
    }

    /// The inclusive range of an integer kind, as i128 so that every kind fits.
    fn int_range(self) -> (i128, i128) {
        match self {
            Kind::SByte => (i8::MIN.into(), i8::MAX.into()),
            Kind::Byte => (0, u8::MAX.into()),
            Kind::Int16 => (i16::MIN.into(), i16::MAX.into()),
            Kind::UInt16 => (0, u16::MAX.into()),
            Kind::Int32 => (i32::MIN.into(), i32::MAX.into()),
            Kind::UInt32 => (0, u32::MAX.into()),
            Kind::Int64 => (i64::MIN.into(), i64::MAX.into()),
            Kind::UInt64 => (0, u64::MAX.into()),
            _ => (0, 0),
        }
    }
}

/// The type of a variable: a scalar kind, or an array of it with a fixed length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct VarType {
    pub kind: Kind,
    /// `Some(len)` for a one-dimensional array.
    pub array: Option<usize>,
}

/// A value held by the model. Integers of every width are `Int`/`UInt`; the adapter narrows
/// them to the variable's kind.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Value {
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Text(String),
    Time(DateTime<Utc>),
    Bytes(Vec<u8>),
    Array(Vec<Value>),
    Struct(structs::Fields),
}

impl Value {
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Bool(b) => Some(f64::from(u8::from(*b))),
            Value::Int(i) => Some(*i as f64),
            Value::UInt(u) => Some(*u as f64),
            Value::Float(f) => Some(*f),
            _ => None,
        }
    }

    /// A numeric value of `kind` from a float, rounded and clamped for integer kinds.
    pub fn numeric(kind: Kind, x: f64) -> Value {
        match kind {
            Kind::Boolean => Value::Bool(x != 0.0),
            Kind::Float | Kind::Double => Value::Float(x),
            k if k.is_integer() => {
                let (lo, hi) = k.int_range();
                let r = (x.round() as i128).clamp(lo, hi);
                Value::from_i128(k, r)
            }
            Kind::String | Kind::LocalizedText => Value::Text(format!("{x}")),
            _ => Value::Float(x),
        }
    }

    fn from_i128(kind: Kind, r: i128) -> Value {
        if kind == Kind::UInt64 {
            Value::UInt(r as u64)
        } else {
            Value::Int(r as i64)
        }
    }
}

/// Why the model refused a write or a call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("value out of range")]
    OutOfRange,
    #[error("variable is not writable")]
    NotWritable,
    #[error("wrong type")]
    TypeMismatch,
    #[error("unknown method")]
    UnknownMethod,
    #[error("bad arguments")]
    BadArguments,
}

/// How a variable's value evolves, one step per update of its group.
#[derive(Debug, Clone, PartialEq)]
pub enum Behaviour {
    Counter {
        start: i128,
        step: i128,
        max: Option<i128>,
    },
    Sine {
        amplitude: f64,
        offset: f64,
        period: Duration,
        noise: f64,
    },
    Ramp {
        from: f64,
        to: f64,
        period: Duration,
    },
    RandomWalk {
        start: f64,
        step: f64,
        min: Option<f64>,
        max: Option<f64>,
    },
    Toggle,
    Steps {
        values: Vec<f64>,
    },
    Strings {
        values: Vec<String>,
    },
    Constant {
        value: Option<Value>,
    },
    Setpoint {
        value: Option<f64>,
        min: Option<f64>,
        max: Option<f64>,
    },
    Follow {
        source: usize,
        time_constant: Duration,
        noise: f64,
    },
    Clock,
    Bytes {
        len: usize,
    },
    /// FillerBatch at the node's update number (see [`structs::batch`]).
    Batch,
    /// NozzleStatus[4] at the node's update number (see [`structs::nozzles`]).
    NozzleStatus,
}

impl Behaviour {
    /// Does a client write change this variable? Setpoints and constants hold written values;
    /// the generated behaviours would overwrite them on the next tick, so writes are refused.
    pub fn accepts_writes(&self) -> bool {
        matches!(
            self,
            Behaviour::Setpoint { .. } | Behaviour::Constant { .. }
        )
    }

    /// Does this behaviour change on its own at every tick?
    pub fn is_generated(&self) -> bool {
        !matches!(
            self,
            Behaviour::Setpoint { .. } | Behaviour::Constant { .. }
        )
    }
}

/// One variable of the model.
#[derive(Debug, Clone)]
pub struct Var {
    /// Node id in namespace-URI form (`nsu=...;s=...`).
    pub id: String,
    pub ty: VarType,
    pub behaviour: Behaviour,
    /// Status codes cycled through, one per update; empty means always Good (0).
    pub status_cycle: Vec<u32>,
    pub group: usize,
    pub value: Value,
    pub status: u32,
    state: f64,
    counter: i128,
    updates: u64,
    /// Ground truth: how many distinct values (or statuses) were produced.
    pub produced: u64,
    /// Of those, how many while the endpoint was down (no client could see them).
    pub produced_offline: u64,
    /// Client writes that reached the model, accepted or refused.
    pub write_attempts: u64,
    /// Client writes accepted.
    pub writes: u64,
    /// The accepted writes with the time each reached the simulator (the newest 10,000).
    pub write_log: WriteLog,
    /// A scripted spike overlay on the behaviour's value (numeric generated variables only).
    pub spike: Option<Spike>,
}

/// A set of variables updated together at one rate.
#[derive(Debug, Clone)]
pub struct Group {
    pub name: String,
    pub rate: Duration,
    pub vars: Vec<usize>,
    pub running: bool,
    pub ticks: u64,
}

/// What a method does to the model.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Reset the listed counters to their start value. Outputs: how many were reset and the
    /// sum of their values before the reset.
    ResetCounters { counters: Vec<usize> },
    /// Resume the listed groups and set the optional Boolean `running` variable to true.
    Start {
        groups: Vec<usize>,
        running: Option<usize>,
    },
    /// Pause the listed groups (values hold) and set `running` to false.
    Stop {
        groups: Vec<usize>,
        running: Option<usize>,
    },
}

#[derive(Debug, Clone)]
pub struct Method {
    pub id: String,
    pub action: Action,
    pub calls: u64,
}

/// One value change handed to the server adapter.
#[derive(Debug, Clone)]
pub struct Update {
    pub var: usize,
    pub value: Value,
    pub status: u32,
    pub source_time: DateTime<Utc>,
}

/// The whole simulated line.
#[derive(Debug)]
pub struct Model {
    pub vars: Vec<Var>,
    pub groups: Vec<Group>,
    pub methods: Vec<Method>,
    by_id: HashMap<String, usize>,
    rng: SmallRng,
    scan_jitter: Duration,
    started: DateTime<Utc>,
}

impl Model {
    pub fn new(seed: u64, scan_jitter: Duration) -> Self {
        Model {
            vars: Vec::new(),
            groups: Vec::new(),
            methods: Vec::new(),
            by_id: HashMap::new(),
            rng: SmallRng::seed_from_u64(seed),
            scan_jitter,
            started: Utc::now(),
        }
    }

    pub fn var_index(&self, id: &str) -> Option<usize> {
        self.by_id.get(id).copied()
    }

    pub fn add_group(&mut self, name: impl Into<String>, rate: Duration) -> usize {
        self.groups.push(Group {
            name: name.into(),
            rate,
            vars: Vec::new(),
            running: true,
            ticks: 0,
        });
        self.groups.len() - 1
    }

    /// Adds a variable; `initial` is the value the model starts from (the nodeset's value).
    pub fn add_var(
        &mut self,
        id: impl Into<String>,
        ty: VarType,
        behaviour: Behaviour,
        status_cycle: Vec<u32>,
        group: usize,
        initial: Value,
    ) -> usize {
        let id = id.into();
        let idx = self.vars.len();
        let (counter, state, value) = match &behaviour {
            Behaviour::Counter { start, .. } => (*start, 0.0, Value::from_i128(ty.kind, *start)),
            Behaviour::RandomWalk { start, .. } => (0, *start, Value::numeric(ty.kind, *start)),
            Behaviour::Constant { value: Some(v) } => (0, 0.0, v.clone()),
            Behaviour::Setpoint { value: Some(v), .. } => (0, *v, Value::numeric(ty.kind, *v)),
            Behaviour::Setpoint { value: None, .. } => {
                let x = initial.as_f64().unwrap_or(0.0);
                (0, x, Value::numeric(ty.kind, x))
            }
            _ => (0, initial.as_f64().unwrap_or(0.0), initial),
        };
        let value = shape(ty, value);
        self.vars.push(Var {
            id: id.clone(),
            ty,
            behaviour,
            status_cycle,
            group,
            value,
            status: 0,
            state,
            counter,
            updates: 0,
            produced: 0,
            produced_offline: 0,
            write_attempts: 0,
            writes: 0,
            write_log: WriteLog::default(),
            spike: None,
        });
        self.groups[group].vars.push(idx);
        self.by_id.insert(id, idx);
        idx
    }

    pub fn add_method(&mut self, id: impl Into<String>, action: Action) {
        self.methods.push(Method {
            id: id.into(),
            action,
            calls: 0,
        });
    }

    pub fn method_index(&self, id: &str) -> Option<usize> {
        self.methods.iter().position(|m| m.id == id)
    }

    /// Advances one group by one update. `scheduled` is the tick's nominal time; every
    /// variable's source timestamp gets its own seeded scan jitter on top of it. Only values
    /// or statuses that changed are returned. `online` says whether a client could see them.
    pub fn tick(&mut self, group: usize, scheduled: DateTime<Utc>, online: bool) -> Vec<Update> {
        let g = &mut self.groups[group];
        if !g.running {
            return Vec::new();
        }
        g.ticks += 1;
        let rate = g.rate;
        let n = g.vars.len();
        let elapsed = (scheduled - self.started).to_std().unwrap_or_default();
        let mut out = Vec::with_capacity(n);
        for k in 0..n {
            let idx = self.groups[group].vars[k];
            if !self.vars[idx].behaviour.is_generated() && self.vars[idx].status_cycle.is_empty() {
                continue;
            }
            let value = self.step(idx, rate, elapsed, scheduled);
            let v = &mut self.vars[idx];
            let status = if v.status_cycle.is_empty() {
                0
            } else {
                v.status_cycle[(v.updates as usize) % v.status_cycle.len()]
            };
            v.updates += 1;
            if value == v.value && status == v.status {
                continue;
            }
            v.value = value.clone();
            v.status = status;
            v.produced += 1;
            if !online {
                v.produced_offline += 1;
            }
            let source_time = scheduled + jitter(&mut self.rng, self.scan_jitter);
            out.push(Update {
                var: idx,
                value,
                status,
                source_time,
            });
        }
        out
    }

    fn step(&mut self, idx: usize, rate: Duration, elapsed: Duration, now: DateTime<Utc>) -> Value {
        let ty = self.vars[idx].ty;
        let behaviour = self.vars[idx].behaviour.clone();
        let t = elapsed.as_secs_f64();
        let value = match behaviour {
            Behaviour::Counter { start, step, max } => {
                let v = &mut self.vars[idx];
                let (_, type_max) = ty.kind.int_range();
                let limit = max.unwrap_or(type_max).min(type_max);
                let next = v.counter + step;
                v.counter = if next > limit { start } else { next };
                Value::from_i128(ty.kind, v.counter)
            }
            Behaviour::Sine {
                amplitude,
                offset,
                period,
                noise,
            } => {
                let phase = std::f64::consts::TAU * t / period.as_secs_f64().max(1e-3);
                let n = self.noise(noise);
                Value::numeric(ty.kind, offset + amplitude * phase.sin() + n)
            }
            Behaviour::Ramp { from, to, period } => {
                let p = period.as_secs_f64().max(1e-3);
                Value::numeric(ty.kind, from + (to - from) * ((t % p) / p))
            }
            Behaviour::RandomWalk { step, min, max, .. } => {
                let dir = if self.rng.gen_bool(0.5) { step } else { -step };
                let v = &mut self.vars[idx];
                let mut x = v.state + dir;
                if let Some(lo) = min {
                    if x < lo {
                        x = lo + (lo - x);
                    }
                }
                if let Some(hi) = max {
                    if x > hi {
                        x = hi - (x - hi);
                    }
                }
                v.state = x;
                Value::numeric(ty.kind, x)
            }
            Behaviour::Toggle => match self.vars[idx].value {
                Value::Bool(b) => Value::Bool(!b),
                _ => Value::Bool(true),
            },
            Behaviour::Steps { values } => {
                let i = (self.vars[idx].updates as usize) % values.len().max(1);
                Value::numeric(ty.kind, values.get(i).copied().unwrap_or(0.0))
            }
            Behaviour::Strings { values } => {
                let i = (self.vars[idx].updates as usize) % values.len().max(1);
                Value::Text(values.get(i).cloned().unwrap_or_default())
            }
            Behaviour::Follow {
                source,
                time_constant,
                noise,
            } => {
                let target = self.vars[source].value.as_f64().unwrap_or(0.0);
                let tau = time_constant.as_secs_f64().max(1e-3);
                let alpha = 1.0 - (-rate.as_secs_f64() / tau).exp();
                let n = self.noise(noise);
                let v = &mut self.vars[idx];
                v.state += (target - v.state) * alpha;
                Value::numeric(ty.kind, v.state + n)
            }
            Behaviour::Clock => Value::Time(now),
            Behaviour::Bytes { len } => {
                let mut b = vec![0u8; len];
                self.rng.fill(&mut b[..]);
                Value::Bytes(b)
            }
            Behaviour::Batch => structs::batch(self.vars[idx].updates),
            Behaviour::NozzleStatus => structs::nozzles(self.vars[idx].updates),
            Behaviour::Constant { .. } | Behaviour::Setpoint { .. } => {
                return self.vars[idx].value.clone()
            }
        };
        let value = match self.vars[idx].spike {
            Some(spike) if spike.active(elapsed) => {
                let x = value.as_f64().unwrap_or(0.0) + spike.add + self.noise(spike.noise);
                Value::numeric(ty.kind, x)
            }
            _ => value,
        };
        shape(ty, value)
    }

    fn noise(&mut self, amplitude: f64) -> f64 {
        if amplitude > 0.0 {
            self.rng.gen_range(-amplitude..=amplitude)
        } else {
            0.0
        }
    }

    /// A client writes `value` (already of the variable's type) to variable `idx`; `at` is
    /// when the write reached the simulator (kept in the variable's write log if accepted).
    pub fn write(
        &mut self,
        idx: usize,
        value: Value,
        online: bool,
        at: DateTime<Utc>,
    ) -> Result<(), Refusal> {
        let v = self.vars.get_mut(idx).ok_or(Refusal::NotWritable)?;
        v.write_attempts += 1;
        if !v.behaviour.accepts_writes() {
            return Err(Refusal::NotWritable);
        }
        if let Behaviour::Setpoint { min, max, .. } = v.behaviour {
            let x = value.as_f64().ok_or(Refusal::TypeMismatch)?;
            if x.is_nan() || min.is_some_and(|m| x < m) || max.is_some_and(|m| x > m) {
                return Err(Refusal::OutOfRange);
            }
            v.state = x;
        }
        if v.value != value {
            v.produced += 1;
            if !online {
                v.produced_offline += 1;
            }
        }
        v.write_log.push(at, value.clone());
        v.value = value;
        v.writes += 1;
        Ok(())
    }

    /// Runs method `idx`. Returns its outputs (as model values) and the variables it changed.
    pub fn call(&mut self, idx: usize) -> Result<(Vec<Value>, Vec<usize>), Refusal> {
        let m = self.methods.get_mut(idx).ok_or(Refusal::UnknownMethod)?;
        m.calls += 1;
        let action = m.action.clone();
        match action {
            Action::ResetCounters { counters } => {
                let mut total: u128 = 0;
                for &c in &counters {
                    let v = &mut self.vars[c];
                    total += u128::try_from(v.counter).unwrap_or(0);
                    if let Behaviour::Counter { start, .. } = v.behaviour {
                        v.counter = start;
                        let value = shape(v.ty, Value::from_i128(v.ty.kind, start));
                        if value != v.value {
                            v.value = value;
                            v.produced += 1;
                        }
                    }
                }
                let total = u64::try_from(total).unwrap_or(u64::MAX);
                Ok((
                    vec![Value::UInt(counters.len() as u64), Value::UInt(total)],
                    counters,
                ))
            }
            Action::Start { groups, running } | Action::Stop { groups, running } => {
                let on = matches!(self.methods[idx].action, Action::Start { .. });
                for g in groups {
                    self.groups[g].running = on;
                }
                let mut changed = Vec::new();
                if let Some(r) = running {
                    let v = &mut self.vars[r];
                    if v.value != Value::Bool(on) {
                        v.value = Value::Bool(on);
                        v.produced += 1;
                        changed.push(r);
                    }
                }
                Ok((Vec::new(), changed))
            }
        }
    }
}

/// Expands a scalar behaviour value into the variable's shape: for arrays element `i` is the
/// value plus `i`, so every element changes with the behaviour.
fn shape(ty: VarType, value: Value) -> Value {
    let Some(len) = ty.array else {
        return value;
    };
    if ty.kind == Kind::Structure {
        return value;
    }
    if let Value::Array(_) = value {
        return value;
    }
    let base = value.as_f64();
    Value::Array(
        (0..len)
            .map(|i| match base {
                Some(x) => Value::numeric(ty.kind, x + i as f64),
                None => value.clone(),
            })
            .collect(),
    )
}

fn jitter(rng: &mut SmallRng, max: Duration) -> chrono::Duration {
    let us = max.as_micros() as i64;
    if us <= 0 {
        return chrono::Duration::zero();
    }
    chrono::Duration::microseconds(rng.gen_range(0..us))
}

pub mod spike;
pub mod structs;
pub mod write_log;

pub use spike::Spike;
pub use write_log::{WriteLog, WriteRecord, WRITE_LOG_CAPACITY};

#[cfg(test)]
mod tests;
