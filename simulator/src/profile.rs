//! The simulation profile (TOML): which behaviour every variable has, at which rate, what
//! methods do, and a fault schedule. Read in two stages: raw serde structs that reject unknown
//! keys, then a check against the loaded nodesets that reports every problem with its line.

use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::error::{line_of, Problem, SimError};
use crate::faults::{Fault, FaultKind};
use crate::model::{Action, Behaviour, Kind, Model, Spike, Value, VarType};

mod spike;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProfile {
    seed: Option<u64>,
    scan_jitter: Option<Spanned<String>>,
    #[serde(default)]
    group: Vec<RawGroup>,
    #[serde(default)]
    method: Vec<RawMethod>,
    #[serde(default)]
    fault: Vec<RawFault>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGroup {
    name: String,
    rate: Spanned<String>,
    #[serde(default)]
    node: Vec<RawNode>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    node: Spanned<String>,
    sim: Spanned<RawSim>,
    #[serde(default)]
    status: Vec<Spanned<String>>,
    spike: Option<Spanned<spike::RawSpike>>,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
enum RawSim {
    Counter {
        start: Option<i64>,
        step: Option<i64>,
        max: Option<i64>,
    },
    Sine {
        amplitude: Option<f64>,
        offset: Option<f64>,
        period: Option<String>,
        noise: Option<f64>,
    },
    Ramp {
        from: Option<f64>,
        to: Option<f64>,
        period: Option<String>,
    },
    RandomWalk {
        start: Option<f64>,
        step: Option<f64>,
        min: Option<f64>,
        max: Option<f64>,
    },
    Toggle {},
    Steps {
        values: Vec<f64>,
    },
    Strings {
        values: Vec<String>,
    },
    Constant {
        value: Option<toml::Value>,
    },
    Setpoint {
        value: Option<f64>,
        min: Option<f64>,
        max: Option<f64>,
    },
    Follow {
        source: String,
        time_constant: Option<String>,
        noise: Option<f64>,
    },
    Clock {},
    Bytes {
        len: Option<usize>,
    },
    Batch {},
    NozzleStatus {},
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMethod {
    node: Spanned<String>,
    action: Spanned<String>,
    #[serde(default)]
    counters: Vec<String>,
    #[serde(default)]
    groups: Vec<String>,
    running: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFault {
    at: Spanned<String>,
    kind: Spanned<String>,
    down: Option<String>,
    duration: Option<String>,
    code: Option<String>,
}

/// What the profile asks of one node, before it is matched with the nodesets.
#[derive(Debug, Clone)]
struct NodeSpec {
    id: String,
    line: usize,
    element: String,
    sim: RawSimChecked,
    status: Vec<u32>,
    /// The spike overlay and the line of its table.
    spike: Option<(Spike, usize)>,
}

/// A behaviour with durations parsed, still naming follow sources by id.
#[derive(Debug, Clone)]
enum RawSimChecked {
    Ready(Behaviour),
    Follow {
        source: String,
        time_constant: Duration,
        noise: f64,
    },
}

#[derive(Debug, Clone)]
struct GroupSpec {
    name: String,
    rate: Duration,
    nodes: Vec<NodeSpec>,
}

#[derive(Debug, Clone)]
struct MethodSpec {
    id: String,
    line: usize,
    element: String,
    action: String,
    counters: Vec<String>,
    groups: Vec<String>,
    running: Option<String>,
}

/// A parsed profile: syntax and values checked, node ids not yet resolved.
#[derive(Debug, Clone)]
pub struct Profile {
    file: String,
    pub seed: u64,
    pub scan_jitter: Duration,
    groups: Vec<GroupSpec>,
    methods: Vec<MethodSpec>,
    pub faults: Vec<Fault>,
}

/// What the server knows of a node the profile names.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub ty: VarType,
    pub initial: Value,
    pub writable: bool,
}

impl Profile {
    /// An empty profile: every nodeset variable keeps its initial value.
    pub fn empty() -> Self {
        Profile {
            file: "(no profile)".into(),
            seed: 42,
            scan_jitter: Duration::from_millis(2),
            groups: Vec::new(),
            methods: Vec::new(),
            faults: Vec::new(),
        }
    }

    /// Parses profile text; `file` names it in errors. Reports every problem found.
    pub fn parse(file: &str, text: &str) -> Result<Self, SimError> {
        let raw: RawProfile = toml::from_str(text).map_err(|e| {
            SimError::input(
                file,
                e.span().map(|s| line_of(text, s.start)),
                "profile",
                e.message().trim(),
            )
        })?;
        let mut problems = Vec::new();
        let mut problem = |line: usize, element: String, message: String| {
            problems.push(Problem {
                source: file.to_owned(),
                line: Some(line),
                element,
                message,
            })
        };
        let dur = |s: &Spanned<String>,
                   element: String,
                   problem: &mut dyn FnMut(usize, String, String)| {
            match humantime::parse_duration(s.get_ref()) {
                Ok(d) => d,
                Err(e) => {
                    problem(
                        line_of(text, s.span().start),
                        element,
                        format!(
                            "bad duration {:?}: {e} (write e.g. \"100ms\", \"5s\")",
                            s.get_ref()
                        ),
                    );
                    Duration::ZERO
                }
            }
        };

        let scan_jitter = match &raw.scan_jitter {
            Some(s) => dur(s, "scan_jitter".into(), &mut problem),
            None => Duration::from_millis(2),
        };

        let mut groups = Vec::new();
        for (gi, g) in raw.group.iter().enumerate() {
            let rate = dur(&g.rate, format!("group[{gi}].rate"), &mut problem);
            if humantime::parse_duration(g.rate.get_ref()).is_ok()
                && rate < Duration::from_millis(1)
            {
                problem(
                    line_of(text, g.rate.span().start),
                    format!("group[{gi}].rate"),
                    "rate must be at least 1ms".into(),
                );
            }
            if groups.iter().any(|x: &GroupSpec| x.name == g.name) {
                problem(
                    line_of(text, g.rate.span().start),
                    format!("group[{gi}].name"),
                    format!("group name {:?} is used twice", g.name),
                );
            }
            let mut nodes = Vec::new();
            for (ni, n) in g.node.iter().enumerate() {
                let element = format!("group[{gi}].node[{ni}]");
                let line = line_of(text, n.node.span().start);
                let sim_line = line_of(text, n.sim.span().start);
                let sim = match check_sim(n.sim.get_ref()) {
                    Ok(s) => s,
                    Err(msg) => {
                        problem(sim_line, format!("{element}.sim"), msg);
                        continue;
                    }
                };
                let mut status = Vec::new();
                for (si, s) in n.status.iter().enumerate() {
                    match crate::convert::status_from_name(s.get_ref()) {
                        Some(code) => status.push(code),
                        None => problem(
                            line_of(text, s.span().start),
                            format!("{element}.status[{si}]"),
                            format!("unknown OPC UA status code name {:?}", s.get_ref()),
                        ),
                    }
                }
                let spike = n.spike.as_ref().and_then(|s| {
                    let checked = spike::check(s.get_ref(), &element, text, &mut problem)?;
                    Some((checked, line_of(text, s.span().start)))
                });
                nodes.push(NodeSpec {
                    id: n.node.get_ref().clone(),
                    line,
                    element,
                    sim,
                    status,
                    spike,
                });
            }
            groups.push(GroupSpec {
                name: g.name.clone(),
                rate,
                nodes,
            });
        }

        let methods = raw
            .method
            .iter()
            .enumerate()
            .map(|(mi, m)| MethodSpec {
                id: m.node.get_ref().clone(),
                line: line_of(text, m.node.span().start),
                element: format!("method[{mi}]"),
                action: m.action.get_ref().clone(),
                counters: m.counters.clone(),
                groups: m.groups.clone(),
                running: m.running.clone(),
            })
            .collect();

        let mut faults = Vec::new();
        for (fi, f) in raw.fault.iter().enumerate() {
            let line = line_of(text, f.kind.span().start);
            let at = dur(&f.at, format!("fault[{fi}].at"), &mut problem);
            let parse = |s: &Option<String>, key: &str| -> Result<Duration, String> {
                let s = s
                    .as_deref()
                    .ok_or_else(|| format!("`{key}` is required for this kind"))?;
                humantime::parse_duration(s)
                    .map_err(|e| format!("bad duration {s:?} in `{key}`: {e}"))
            };
            let kind = match f.kind.get_ref().as_str() {
                "restart" => parse(&f.down, "down").map(|down| FaultKind::Restart { down }),
                "close_sessions" => Ok(FaultKind::CloseSessions),
                "freeze" => parse(&f.duration, "duration").map(|duration| FaultKind::Freeze { duration }),
                "status" => parse(&f.duration, "duration").and_then(|duration| {
                    let name = f.code.as_deref().unwrap_or("BadCommunicationError");
                    crate::convert::status_from_name(name)
                        .map(|c| FaultKind::Status { duration, code: c })
                        .ok_or_else(|| format!("unknown OPC UA status code name {name:?}"))
                }),
                other => Err(format!(
                    "unknown fault kind {other:?} (expected restart, close_sessions, freeze or status)"
                )),
            };
            match kind {
                Ok(kind) => faults.push(Fault { at, kind }),
                Err(msg) => problem(line, format!("fault[{fi}]"), msg),
            }
        }

        if !problems.is_empty() {
            return Err(SimError::Input(problems));
        }
        Ok(Profile {
            file: file.to_owned(),
            seed: raw.seed.unwrap_or(42),
            scan_jitter,
            groups,
            methods,
            faults,
        })
    }

    /// Every node id the profile names, so the server can look them up.
    pub fn node_ids(&self) -> impl Iterator<Item = &str> {
        self.groups
            .iter()
            .flat_map(|g| g.nodes.iter().map(|n| n.id.as_str()))
    }

    /// Every method id the profile names.
    pub fn method_ids(&self) -> impl Iterator<Item = &str> {
        self.methods.iter().map(|m| m.id.as_str())
    }

    /// Builds the model, matching every named node with what the server loaded (`lookup`).
    /// Reports every node that is missing or whose behaviour does not fit its type.
    pub fn build_model(
        &self,
        model: &mut Model,
        lookup: impl Fn(&str) -> Option<NodeInfo>,
        method_exists: impl Fn(&str) -> bool,
    ) -> Result<(), SimError> {
        let mut problems = Vec::new();
        let mut problem = |line: usize, element: &str, message: String| {
            problems.push(Problem {
                source: self.file.clone(),
                line: Some(line),
                element: element.to_owned(),
                message,
            })
        };
        // Pass 1: add every variable so that follow sources can point at any of them.
        let mut follows = Vec::new();
        for g in &self.groups {
            let gi = model.add_group(g.name.clone(), g.rate);
            for n in &g.nodes {
                if model.var_index(&n.id).is_some() {
                    problem(
                        n.line,
                        &n.element,
                        format!("node {} appears twice in the profile", n.id),
                    );
                    continue;
                }
                let Some(info) = lookup(&n.id) else {
                    problem(
                        n.line,
                        &n.element,
                        format!("no variable {} in the loaded nodesets", n.id),
                    );
                    continue;
                };
                let behaviour = match &n.sim {
                    RawSimChecked::Ready(b) => b.clone(),
                    RawSimChecked::Follow { .. } => Behaviour::Constant { value: None },
                };
                if let Err(msg) = fits(&behaviour, &info) {
                    problem(n.line, &n.element, format!("{}: {msg}", n.id));
                    continue;
                }
                let behaviour = match behaviour {
                    Behaviour::Constant { value: Some(v) } => match coerce_constant(v, info.ty) {
                        Ok(v) => Behaviour::Constant { value: Some(v) },
                        Err(msg) => {
                            problem(n.line, &n.element, format!("{}: {msg}", n.id));
                            continue;
                        }
                    },
                    b => b,
                };
                if let Some((_, line)) = &n.spike {
                    let element = format!("{}.spike", n.element);
                    if !info.ty.kind.is_numeric() {
                        let kind = info.ty.kind;
                        let msg =
                            format!("{}: a spike needs a numeric variable, not {kind:?}", n.id);
                        problem(*line, &element, msg);
                        continue;
                    }
                    let follows = matches!(n.sim, RawSimChecked::Follow { .. });
                    if !follows && !behaviour.is_generated() {
                        let msg = format!(
                            "{}: a spike needs a generated behaviour, not {} (it holds what clients write)",
                            n.id,
                            name(&behaviour)
                        );
                        problem(*line, &element, msg);
                        continue;
                    }
                }
                let idx = model.add_var(
                    n.id.clone(),
                    info.ty,
                    behaviour,
                    n.status.clone(),
                    gi,
                    info.initial,
                );
                model.vars[idx].spike = n.spike.map(|(s, _)| s);
                if let RawSimChecked::Follow {
                    source,
                    time_constant,
                    noise,
                } = &n.sim
                {
                    follows.push((idx, n, source.clone(), *time_constant, *noise));
                }
            }
        }
        // Pass 2: resolve follow sources.
        for (idx, n, source, time_constant, noise) in follows {
            match model.var_index(&source) {
                Some(src) if model.vars[src].ty.kind.is_numeric() => {
                    model.vars[idx].behaviour = Behaviour::Follow {
                        source: src,
                        time_constant,
                        noise,
                    };
                }
                Some(_) => problem(
                    n.line,
                    &n.element,
                    format!("follow source {source} is not numeric"),
                ),
                None => problem(
                    n.line,
                    &n.element,
                    format!("follow source {source} is not a variable of the profile"),
                ),
            }
        }
        for m in &self.methods {
            if !method_exists(&m.id) {
                problem(
                    m.line,
                    &m.element,
                    format!("no method {} in the loaded nodesets", m.id),
                );
                continue;
            }
            let groups = || -> Result<Vec<usize>, String> {
                m.groups
                    .iter()
                    .map(|g| {
                        model
                            .groups
                            .iter()
                            .position(|x| &x.name == g)
                            .ok_or_else(|| format!("unknown group {g:?}"))
                    })
                    .collect()
            };
            let running = || -> Result<Option<usize>, String> {
                match &m.running {
                    None => Ok(None),
                    Some(id) => match model.var_index(id) {
                        Some(i) if model.vars[i].ty.kind == Kind::Boolean => Ok(Some(i)),
                        Some(_) => Err(format!("running variable {id} is not Boolean")),
                        None => Err(format!("running variable {id} is not in the profile")),
                    },
                }
            };
            let action = match m.action.as_str() {
                "reset_counters" => m
                    .counters
                    .iter()
                    .map(|c| match model.var_index(c) {
                        Some(i) if matches!(model.vars[i].behaviour, Behaviour::Counter { .. }) => {
                            Ok(i)
                        }
                        Some(_) => Err(format!("{c} is not a counter")),
                        None => Err(format!("counter {c} is not in the profile")),
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map(|counters| Action::ResetCounters { counters }),
                "start" => groups()
                    .and_then(|groups| running().map(|running| Action::Start { groups, running })),
                "stop" => groups()
                    .and_then(|groups| running().map(|running| Action::Stop { groups, running })),
                other => Err(format!(
                    "unknown action {other:?} (expected reset_counters, start or stop)"
                )),
            };
            match action {
                Ok(a) => model.add_method(m.id.clone(), a),
                Err(msg) => problem(m.line, &m.element, msg),
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(SimError::Input(problems))
        }
    }
}

fn check_sim(sim: &RawSim) -> Result<RawSimChecked, String> {
    let d = |s: &Option<String>, default: Duration| -> Result<Duration, String> {
        match s {
            None => Ok(default),
            Some(s) => match humantime::parse_duration(s) {
                Ok(d) if !d.is_zero() => Ok(d),
                Ok(_) => Err(format!("duration {s:?} must be above zero")),
                Err(e) => Err(format!("bad duration {s:?}: {e}")),
            },
        }
    };
    let b = match sim {
        RawSim::Counter { start, step, max } => {
            let step = step.unwrap_or(1);
            if step <= 0 {
                return Err("counter step must be positive".into());
            }
            Behaviour::Counter {
                start: i128::from(start.unwrap_or(0)),
                step: i128::from(step),
                max: max.map(i128::from),
            }
        }
        RawSim::Sine {
            amplitude,
            offset,
            period,
            noise,
        } => Behaviour::Sine {
            amplitude: amplitude.unwrap_or(1.0),
            offset: offset.unwrap_or(0.0),
            period: d(period, Duration::from_secs(10))?,
            noise: noise.unwrap_or(0.0).abs(),
        },
        RawSim::Ramp { from, to, period } => Behaviour::Ramp {
            from: from.unwrap_or(0.0),
            to: to.unwrap_or(100.0),
            period: d(period, Duration::from_secs(60))?,
        },
        RawSim::RandomWalk {
            start,
            step,
            min,
            max,
        } => {
            if let (Some(lo), Some(hi)) = (min, max) {
                if lo >= hi {
                    return Err(format!("random_walk min {lo} must be below max {hi}"));
                }
            }
            Behaviour::RandomWalk {
                start: start.unwrap_or(0.0),
                step: step.unwrap_or(1.0).abs(),
                min: *min,
                max: *max,
            }
        }
        RawSim::Toggle {} => Behaviour::Toggle,
        RawSim::Steps { values } if values.is_empty() => return Err("steps needs values".into()),
        RawSim::Steps { values } => Behaviour::Steps {
            values: values.clone(),
        },
        RawSim::Strings { values } if values.is_empty() => {
            return Err("strings needs values".into())
        }
        RawSim::Strings { values } => Behaviour::Strings {
            values: values.clone(),
        },
        RawSim::Constant { value } => Behaviour::Constant {
            value: value.as_ref().map(toml_value).transpose()?,
        },
        RawSim::Setpoint { value, min, max } => {
            if let (Some(lo), Some(hi)) = (min, max) {
                if lo > hi {
                    return Err(format!("setpoint min {lo} is above max {hi}"));
                }
            }
            Behaviour::Setpoint {
                value: *value,
                min: *min,
                max: *max,
            }
        }
        RawSim::Follow {
            source,
            time_constant,
            noise,
        } => {
            return Ok(RawSimChecked::Follow {
                source: source.clone(),
                time_constant: d(time_constant, Duration::from_secs(1))?,
                noise: noise.unwrap_or(0.0).abs(),
            })
        }
        RawSim::Clock {} => Behaviour::Clock,
        RawSim::Bytes { len } => Behaviour::Bytes {
            len: len.unwrap_or(16),
        },
        RawSim::Batch {} => Behaviour::Batch,
        RawSim::NozzleStatus {} => Behaviour::NozzleStatus,
    };
    Ok(RawSimChecked::Ready(b))
}

fn toml_value(v: &toml::Value) -> Result<Value, String> {
    Ok(match v {
        toml::Value::Boolean(b) => Value::Bool(*b),
        toml::Value::Integer(i) => Value::Int(*i),
        toml::Value::Float(f) => Value::Float(*f),
        toml::Value::String(s) => Value::Text(s.clone()),
        other => {
            return Err(format!(
                "constant value must be a number, bool or string, not {}",
                other.type_str()
            ))
        }
    })
}

/// Converts a constant from the profile to the variable's kind.
fn coerce_constant(v: Value, ty: VarType) -> Result<Value, String> {
    let k = ty.kind;
    let out = match (&v, k) {
        (Value::Bool(_), Kind::Boolean) => v,
        (Value::Text(_), k) if k.is_text() => v,
        (Value::Int(_) | Value::Float(_), k) if k.is_numeric() => {
            let x = v.as_f64().unwrap_or(0.0);
            if k.is_integer() && x.fract() != 0.0 {
                return Err(format!(
                    "constant {x} is not an integer for a {k:?} variable"
                ));
            }
            match (v, k) {
                (Value::Int(i), Kind::UInt64) => {
                    Value::UInt(u64::try_from(i).map_err(|_| "negative constant for UInt64")?)
                }
                (Value::Int(i), k) if k.is_integer() => Value::Int(i),
                _ => Value::numeric(k, x),
            }
        }
        _ => return Err(format!("constant {v:?} does not fit a {k:?} variable")),
    };
    Ok(out)
}

/// Does this behaviour produce values of the variable's type?
fn fits(b: &Behaviour, info: &NodeInfo) -> Result<(), String> {
    let k = info.ty.kind;
    let ok = match b {
        Behaviour::Counter { .. } => k.is_integer(),
        Behaviour::Sine { .. }
        | Behaviour::Ramp { .. }
        | Behaviour::RandomWalk { .. }
        | Behaviour::Steps { .. }
        | Behaviour::Setpoint { .. }
        | Behaviour::Follow { .. } => k.is_numeric(),
        Behaviour::Toggle => k == Kind::Boolean,
        Behaviour::Strings { .. } => k.is_text(),
        Behaviour::Clock => k == Kind::DateTime,
        Behaviour::Bytes { .. } => k == Kind::ByteString,
        Behaviour::Batch => k == Kind::Structure && info.ty.array.is_none(),
        Behaviour::NozzleStatus => k == Kind::Structure && info.ty.array.is_some(),
        Behaviour::Constant { .. } => true,
    };
    if !ok {
        return Err(format!(
            "behaviour {} does not fit a {k:?} variable",
            name(b)
        ));
    }
    if matches!(b, Behaviour::Setpoint { .. }) && !info.writable {
        return Err("a setpoint must be writable (AccessLevel CurrentWrite) in the nodeset".into());
    }
    Ok(())
}

fn name(b: &Behaviour) -> &'static str {
    match b {
        Behaviour::Counter { .. } => "counter",
        Behaviour::Sine { .. } => "sine",
        Behaviour::Ramp { .. } => "ramp",
        Behaviour::RandomWalk { .. } => "random_walk",
        Behaviour::Toggle => "toggle",
        Behaviour::Steps { .. } => "steps",
        Behaviour::Strings { .. } => "strings",
        Behaviour::Constant { .. } => "constant",
        Behaviour::Setpoint { .. } => "setpoint",
        Behaviour::Follow { .. } => "follow",
        Behaviour::Clock => "clock",
        Behaviour::Bytes { .. } => "bytes",
        Behaviour::Batch => "batch",
        Behaviour::NozzleStatus => "nozzle_status",
    }
}

#[cfg(test)]
mod tests;
