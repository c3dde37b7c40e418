//! The DTDL v3 Interface of a line, as the connector presents it on IoT Hub: a Telemetry per
//! stream of messages (a group's samples or windows, an event stream, a PLC's rule alerts)
//! whose schema is the message body, a writable Property per `[[write]]` (dotted paths nest
//! as Objects, as the twin nests them) and a Command per `[[method]]` with the method's
//! arguments as read from the PLC.
//!
//! Pure: the PLC's answers come in as [`Arguments`]; nothing here does I/O.

use std::collections::BTreeMap;

use opcua::types::Argument;
use serde_json::{json, Map, Value};

use crate::config::{
    check_model_id, is_dtmi_segment, Action, Config, Line, WriteMapping, WriteType, MAX_MODEL_ID,
};
use crate::writes::plc::{write_type_of, Signature};

use super::schemas::*;

/// The JSON-LD context of DTDL version 3.
pub const CONTEXT: &str = "dtmi:dtdl:context;3";

/// The longest name given (DTDL v3 allows 512; IoT Plug and Play tools and DTDL v2 stop at
/// 64).
pub const MAX_NAME: usize = 64;

/// DTDL v3's limit on `description` and `comment`.
pub(super) const MAX_TEXT: usize = 512;

/// The longest `displayName` given (DTDL v2's limit, which v3 tools still show best).
const MAX_DISPLAY: usize = 64;

/// DTDL v3 allows at most 5 `schema` steps below an Object: a `[[write]]` path of at most 6
/// parts.
const MAX_PATH_PARTS: usize = 6;

/// What is known of a `[[method]]`'s arguments.
#[derive(Debug, Clone)]
pub enum Arguments {
    /// Read from the method's InputArguments / OutputArguments on the PLC.
    Plc(Signature),
    /// Not known, and why (the PLC was not reachable, `--offline`, ...).
    Unknown(String),
}

/// The Interface and what the person running `dtdl` should know about it.
#[derive(Debug, Clone)]
pub struct Model {
    pub interface: Value,
    /// Its `@id`.
    pub id: String,
    /// `[hub] model_id` was not set: `id` was made from the line's site and id.
    pub derived_id: bool,
    /// Where the Interface says less than it could, or the cloud's names differ from DTDL's.
    pub notes: Vec<String>,
}

/// `text` cut to `max` characters (an ellipsis marks the cut).
pub(super) fn cut(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut out: String = text.chars().take(max - 1).collect();
    out.push('…');
    out
}

/// Whether `name` is a DTDL name: a letter, then letters, digits and `_`, not ending with
/// `_`, at most [`MAX_NAME`] characters.
pub fn is_dtdl_name(name: &str) -> bool {
    name.len() <= MAX_NAME && is_dtmi_segment(name)
}

/// Letters and digits of `text` kept, every run of anything else one `_`, no `_` at either
/// end; `prefix` and `_` before it when it would not start with a letter; at most `max`
/// characters.
fn sanitise(text: &str, prefix: &str, max: usize) -> String {
    let mut out = String::new();
    for c in text.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c);
        } else if !out.is_empty() && !out.ends_with('_') {
            out.push('_');
        }
    }
    if !out.starts_with(|c: char| c.is_ascii_alphabetic()) {
        out = if out.is_empty() {
            prefix.to_owned()
        } else {
            format!("{prefix}_{out}")
        };
    }
    out.truncate(max);
    out.trim_end_matches('_').to_owned()
}

/// The DTDL name for `text`: itself when it is one, else [`sanitise`]d.
pub fn dtdl_name(text: &str, prefix: &str) -> String {
    if is_dtdl_name(text) {
        text.to_owned()
    } else {
        sanitise(text, prefix, MAX_NAME)
    }
}

/// The model id made from the line when `[hub] model_id` is not set:
/// `dtmi:opcua_connector[:<site>]:<line>;1`, each part sanitised to DTMI syntax.
pub fn derived_model_id(line: &Line) -> String {
    let mut parts = vec!["opcua_connector".to_owned()];
    if let Some(site) = &line.site {
        parts.push(sanitise(site, "site", 48));
    }
    parts.push(sanitise(&line.id, "line", 48));
    let id = format!("dtmi:{};1", parts.join(":"));
    debug_assert!(id.len() <= MAX_MODEL_ID && check_model_id(&id).is_ok());
    id
}

/// The names of one scope (an Interface's contents, an Object's fields): each once, and who
/// took it, for the error that names both entries.
struct Names {
    taken: BTreeMap<String, String>,
}

impl Names {
    fn new() -> Names {
        Names {
            taken: BTreeMap::new(),
        }
    }

    /// Takes `name` for `entry` (`write[2] (property "a-b")`); a collision is an error.
    fn claim(&mut self, name: &str, entry: &str, errors: &mut Vec<String>) {
        match self.taken.get(name) {
            Some(other) => errors.push(format!(
                "{entry} and {other} both have the DTDL name {name:?} (names keep letters, digits and _): rename one of them"
            )),
            None => {
                self.taken.insert(name.to_owned(), entry.to_owned());
            }
        }
    }
}

/// The line's Interface. `arguments` holds what is known of each `[[method]]` by name; an
/// error lists every name collision, naming both config entries.
pub fn interface(
    config: &Config,
    arguments: &BTreeMap<String, Arguments>,
) -> Result<Model, String> {
    let model_id = config.hub.as_ref().and_then(|h| h.model_id.clone());
    let derived_id = model_id.is_none();
    let id = model_id.unwrap_or_else(|| derived_model_id(&config.line));
    let mut b = Builder {
        names: Names::new(),
        errors: Vec::new(),
        notes: Vec::new(),
        contents: Vec::new(),
    };
    b.telemetry(config);
    b.properties(&config.writes);
    if config
        .hub
        .as_ref()
        .is_some_and(|h| h.status_interval.is_some())
    {
        b.connector_status();
    }
    b.commands(config, arguments);
    if !b.errors.is_empty() {
        return Err(b.errors.join("\n"));
    }
    let line = &config.line;
    let place = match &line.site {
        Some(site) => format!("line {} of site {site}", line.id),
        None => format!("line {}", line.id),
    };
    let file = config
        .source
        .file_name()
        .map_or_else(String::new, |f| f.to_string_lossy().into_owned());
    let mut top = Map::new();
    top.insert("@context".into(), CONTEXT.into());
    top.insert("@id".into(), id.clone().into());
    top.insert("@type".into(), "Interface".into());
    top.insert("displayName".into(), cut(&line.id, MAX_DISPLAY).into());
    top.insert("contents".into(), Value::Array(b.contents));
    let interface = with_text(
        top,
        &format!("The OPC UA {place} as opcua-connector presents it on Azure IoT Hub: telemetry messages, writable setpoints ([[write]]) and PLC methods ([[method]])"),
        &format!("Made by `opcua-connector dtdl` {} from {file}", env!("CARGO_PKG_VERSION")),
    );
    Ok(Model {
        interface,
        id,
        derived_id,
        notes: b.notes,
    })
}

struct Builder {
    names: Names,
    errors: Vec<String>,
    notes: Vec<String>,
    contents: Vec<Value>,
}

impl Builder {
    fn telemetry_element(
        &mut self,
        (plc, group): (&str, &str),
        entry: String,
        what: &str,
        (array_name, element): (&str, Value),
        more: Option<(&str, Value)>,
    ) {
        let name = dtdl_name(&format!("{plc}_{group}"), "t");
        self.names.claim(&name, &entry, &mut self.errors);
        let mut fields = header_fields();
        fields.push(field(array_name, array(element), ""));
        if let Some((n, e)) = more {
            fields.push(field(n, array(e), ""));
        }
        let mut t = Map::new();
        t.insert("@type".into(), "Telemetry".into());
        t.insert("name".into(), name.into());
        t.insert(
            "displayName".into(),
            cut(&format!("{plc} / {group}"), MAX_DISPLAY).into(),
        );
        t.insert("schema".into(), object(fields));
        self.contents.push(with_text(
            t,
            &format!("{what} of plc {plc}, group {group}: one message per batch, with the IoT Hub application properties plc={plc} and group={group}"),
            BODY_COMMENT,
        ));
    }

    fn telemetry(&mut self, config: &Config) {
        for (p, plc) in config.plcs.iter().enumerate() {
            for (g, group) in plc.groups.iter().enumerate() {
                let entry = format!(
                    "plc[{p}].group[{g}] (plc {:?}, group {:?})",
                    plc.id, group.name
                );
                let mut origins = Vec::new();
                if group.backfill.is_some() {
                    origins.push("history");
                }
                let heartbeat =
                    |e: &crate::config::acquisition::Exception| e.hub && e.max_interval.is_some();
                if group.exception.as_ref().is_some_and(heartbeat)
                    || group
                        .nodes
                        .iter()
                        .any(|n| n.exception.as_ref().is_some_and(heartbeat))
                {
                    origins.push("heartbeat");
                }
                let windows = group
                    .telemetry
                    .as_ref()
                    .filter(|s| s.hub)
                    .map(|s| ("windows", window_schema(&s.aggregates)));
                let what = if windows.is_some() {
                    "Windows of numeric values (windows) and other samples (samples)"
                } else {
                    "Samples"
                };
                self.telemetry_element(
                    (&plc.id, &group.name),
                    entry,
                    what,
                    ("samples", sample_schema(&origins)),
                    windows,
                );
            }
            for (e, events) in plc.events.iter().enumerate() {
                let entry = format!(
                    "plc[{p}].events[{e}] (plc {:?}, event stream {:?})",
                    plc.id, events.name
                );
                self.telemetry_element(
                    (&plc.id, &events.name),
                    entry,
                    "Events (application property messageType=event)",
                    ("events", event_schema(!events.fields.is_empty())),
                    None,
                );
            }
        }
        // Alerts go on the stream of the plc a rule reads first.
        let mut alerting: Vec<(String, usize)> = Vec::new();
        for (r, rule) in config.rules.iter().enumerate() {
            let alerts = rule
                .on_fire
                .iter()
                .chain(&rule.on_clear)
                .any(|a| matches!(a, Action::Alert { .. }));
            let plc = rule.nodes().first().map(|t| t.plc.clone());
            if let (true, Some(plc)) = (alerts, plc) {
                if !alerting.iter().any(|(p, _)| *p == plc) {
                    alerting.push((plc, r));
                }
            }
        }
        for (plc, r) in alerting {
            let entry = format!("the alerts of rule[{r}] (plc {plc:?}, group \"alerts\")");
            self.telemetry_element(
                (&plc, crate::sinks::telemetry::alerts::ALERTS_GROUP),
                entry,
                "Alerts of the local rules (application property messageType=alert)",
                ("alerts", alert_schema()),
                None,
            );
        }
    }

    fn properties(&mut self, writes: &[WriteMapping]) {
        // The twin nests a dotted path: `recipe.name` is field `name` of property `recipe`.
        let mut tree = Tree::default();
        for (i, w) in writes.iter().enumerate() {
            let parts: Vec<&str> = w.property.split('.').collect();
            let entry = format!("write[{i}] (property {:?})", w.property);
            if parts.len() > MAX_PATH_PARTS {
                self.errors.push(format!(
                    "{entry} has {} parts; DTDL nests at most {MAX_PATH_PARTS}",
                    parts.len()
                ));
                continue;
            }
            if let Err(e) = tree.insert(&parts, i, &entry) {
                self.errors.push(e);
            }
        }
        for (key, node) in &tree.0 {
            let name = dtdl_name(key, "p");
            let entry = node.entry(writes, key);
            self.names.claim(&name, &entry, &mut self.errors);
            if name != *key {
                self.notes.push(format!(
                    "{entry}: the twin's desired property {key:?} is {name:?} in DTDL; Plug and Play tools will write {name:?}, which no [[write]] maps: give the property a name of letters, digits and _"
                ));
            }
            let (schema, description, comment) = self.property_schema(node, writes, key);
            let mut p = Map::new();
            p.insert("@type".into(), "Property".into());
            p.insert("name".into(), name.into());
            p.insert("schema".into(), schema);
            p.insert("writable".into(), true.into());
            self.contents.push(with_text(p, &description, &comment));
        }
    }

    /// `[hub] status_interval`: the read-only property the connector reports its state in.
    fn connector_status(&mut self) {
        let name = crate::cloud::status::REPORTED_PROPERTY;
        let entry = "[hub] status_interval (the reported property connectorStatus)";
        self.names.claim(name, entry, &mut self.errors);
        let mut p = Map::new();
        p.insert("@type".into(), "Property".into());
        p.insert("name".into(), name.into());
        p.insert("schema".into(), super::schemas::connector_status_schema());
        p.insert("writable".into(), false.into());
        self.contents.push(with_text(
            p,
            "The connector's state, reported after every connection and on change: version, PLC sessions, the backlog of its buffer. IoT Hub has no last will: state stays online after the connector is gone; the device's connectionState tells whether it is connected",
            "[hub] status_interval",
        ));
    }

    /// Schema, description and comment of a property or field.
    fn property_schema(
        &mut self,
        node: &TreeNode,
        writes: &[WriteMapping],
        path: &str,
    ) -> (Value, String, String) {
        match node {
            TreeNode::Leaf(i) => {
                let w = &writes[*i];
                (
                    write_schema(w.write_type).into(),
                    write_description(w),
                    format!(
                        "[[write]] {:?}: plc {}, node {}. Acknowledged in reported properties as Plug and Play does: {{\"value\", \"ac\", \"av\", \"ad\"}}",
                        w.property, w.plc, w.node
                    ),
                )
            }
            TreeNode::Branch(children) => {
                let mut names = Names::new();
                let mut fields = Vec::new();
                for (key, child) in children {
                    let sub = format!("{path}.{key}");
                    let name = dtdl_name(key, "f");
                    let entry = child.entry(writes, &sub);
                    names.claim(&name, &entry, &mut self.errors);
                    if name != *key {
                        self.notes.push(format!(
                            "{entry}: {key:?} is {name:?} in DTDL; Plug and Play tools will write {name:?}, which no [[write]] maps: give the property a name of letters, digits and _"
                        ));
                    }
                    let (schema, description, _) = self.property_schema(child, writes, &sub);
                    fields.push(field(&name, schema, &description));
                }
                (
                    object(fields),
                    format!("Setpoints under {path}: each field is a [[write]] of its own"),
                    "Each field is written and acknowledged on its own, nested as the twin nests it ({\"<path>\": {\"<field>\": {\"value\", \"ac\", \"av\", \"ad\"}}}), not as one acknowledgement of the whole object".to_owned(),
                )
            }
        }
    }

    fn commands(&mut self, config: &Config, arguments: &BTreeMap<String, Arguments>) {
        for (i, m) in config.methods.iter().enumerate() {
            let entry = format!("method[{i}] (name {:?})", m.name);
            let name = dtdl_name(&m.name, "m");
            self.names.claim(&name, &entry, &mut self.errors);
            if name != m.name {
                self.notes.push(format!(
                    "{entry}: the direct method {:?} is {name:?} in DTDL; Plug and Play tools will call {name:?}, which no [[method]] maps: give the method a name of letters, digits and _",
                    m.name
                ));
            }
            let mut c = Map::new();
            c.insert("@type".into(), "Command".into());
            c.insert("name".into(), name.into());
            let comment = format!(
                "[[method]] {:?}: plc {}, method {} on object {}, timeout {} s",
                m.name,
                m.plc,
                m.method,
                m.object,
                m.timeout.as_secs_f64()
            );
            let description = match arguments.get(&m.name) {
                Some(Arguments::Plc(sig)) => {
                    if let Some(request) = self.request(&entry, &sig.inputs) {
                        c.insert("request".into(), request);
                    }
                    if !sig.outputs.is_empty() {
                        c.insert("response".into(), self.response(&entry, &sig.outputs));
                    }
                    format!(
                        "Calls the OPC UA method on plc {}; arguments as the PLC declares them",
                        m.plc
                    )
                }
                other => {
                    let why = match other {
                        Some(Arguments::Unknown(why)) => why.clone(),
                        _ => "not read".to_owned(),
                    };
                    self.notes.push(format!(
                        "{entry}: its arguments are not known ({why}), so its Command has no request or response schema"
                    ));
                    format!("Calls the OPC UA method on plc {}. Its arguments were not known when this model was made: the payload is an object by argument name, an array by position, a bare value for one argument, or null for none; the answer is an object of the outputs by name", m.plc)
                }
            };
            self.contents.push(with_text(c, &description, &comment));
        }
    }

    fn request(&mut self, entry: &str, inputs: &[Argument]) -> Option<Value> {
        if inputs.is_empty() {
            return None;
        }
        let mut names = Names::new();
        let mut fields = Vec::new();
        for a in inputs {
            let arg = a.name.as_ref();
            let name = dtdl_name(arg, "a");
            let what = format!("{entry} argument {arg:?}");
            names.claim(&name, &what, &mut self.errors);
            if name != arg {
                self.notes.push(format!(
                    "{what} is {name:?} in DTDL: a call by name from a Plug and Play tool is refused (unknown argument); call it with an array by position"
                ));
            }
            let ty = write_type_of(&a.data_type).filter(|_| a.value_rank < 0);
            let mut text = a.description.text.as_ref().to_owned();
            let schema = match ty {
                Some(t) => {
                    if let Some(note) = type_note(t) {
                        text = join(&text, &format!("OPC UA {}: {note}", t.name()));
                    }
                    write_schema(t)
                }
                None => {
                    self.notes.push(format!(
                        "{what} has DataType {} (value rank {}), which the connector does not convert: its calls are refused 400",
                        a.data_type, a.value_rank
                    ));
                    text = join(
                        &text,
                        "not supported by the connector (arrays and non-scalar types): calls are refused",
                    );
                    "string"
                }
            };
            fields.push(field(&name, schema.into(), &text));
        }
        Some(json!({
            "@type": "CommandRequest",
            "name": "arguments",
            "schema": object(fields),
            "description": "The input arguments by name (the connector also takes an array by position)",
        }))
    }

    fn response(&mut self, entry: &str, outputs: &[Argument]) -> Value {
        let mut names = Names::new();
        let mut fields = Vec::new();
        for (i, a) in outputs.iter().enumerate() {
            // As the connector names them in its answer.
            let arg = match a.name.as_ref() {
                "" => format!("out{i}"),
                n => n.to_owned(),
            };
            let name = dtdl_name(&arg, "a");
            let what = format!("{entry} output {arg:?}");
            names.claim(&name, &what, &mut self.errors);
            if name != arg {
                self.notes.push(format!(
                    "{what} is {name:?} in DTDL; the answer names it {arg:?}"
                ));
            }
            let mut text = a.description.text.as_ref().to_owned();
            let schema = match output_schema(&a.data_type) {
                Some(s) => {
                    let numeric = write_type_of(&a.data_type)
                        .filter(|t| !matches!(t, WriteType::LocalizedText | WriteType::ByteString));
                    if let Some(t) = numeric.and_then(type_note) {
                        text = join(&text, &t);
                    }
                    ranked(s, a.value_rank)
                }
                None => {
                    text = join(
                        &text,
                        &format!("DataType {}: its OPC UA JSON encoding, which this model does not describe", a.data_type),
                    );
                    ranked("string".into(), a.value_rank)
                }
            };
            fields.push(field(&name, schema, &text));
        }
        json!({
            "@type": "CommandResponse",
            "name": "outputs",
            "schema": object(fields),
            "description": "The output arguments by name, with status 200",
        })
    }
}

fn join(a: &str, b: &str) -> String {
    match (a.is_empty(), b.is_empty()) {
        (true, _) => b.to_owned(),
        (_, true) => a.to_owned(),
        _ => format!("{a}; {b}"),
    }
}

/// What a `[[write]]` accepts, in words: DTDL v3 has no range keywords.
fn write_description(w: &WriteMapping) -> String {
    let mut parts = vec![format!("OPC UA {} on plc {}", w.write_type.name(), w.plc)];
    match (w.min, w.max) {
        (Some(lo), Some(hi)) => parts.push(format!("from {lo} to {hi}")),
        (Some(lo), None) => parts.push(format!("at least {lo}")),
        (None, Some(hi)) => parts.push(format!("at most {hi}")),
        (None, None) => {}
    }
    if let Some(note) = type_note(w.write_type) {
        parts.push(note);
    }
    if let Some(rate) = w.max_rate {
        parts.push(format!(
            "at most one write every {}",
            humantime::format_duration(rate)
        ));
    }
    parts.push(if w.readback {
        "the value acknowledged is read back from the PLC".to_owned()
    } else {
        "not read back: the value acknowledged is the one written".to_owned()
    });
    parts.join("; ")
}

/// The `[[write]]` properties as the twin nests them, in file order.
#[derive(Default)]
struct Tree(Vec<(String, TreeNode)>);

enum TreeNode {
    /// The index of its `[[write]]`.
    Leaf(usize),
    Branch(Vec<(String, TreeNode)>),
}

impl TreeNode {
    /// The config entries under it, for messages.
    fn entry(&self, writes: &[WriteMapping], path: &str) -> String {
        match self {
            TreeNode::Leaf(i) => format!("write[{i}] (property {:?})", writes[*i].property),
            TreeNode::Branch(_) => format!("the [[write]] properties under {path:?}"),
        }
    }
}

impl Tree {
    fn insert(&mut self, parts: &[&str], index: usize, entry: &str) -> Result<(), String> {
        let mut level = &mut self.0;
        for (depth, part) in parts.iter().enumerate() {
            let last = depth + 1 == parts.len();
            let at = level.iter().position(|(k, _)| k == part);
            match (at, last) {
                (None, true) => {
                    level.push(((*part).to_owned(), TreeNode::Leaf(index)));
                    return Ok(());
                }
                (None, false) => {
                    level.push(((*part).to_owned(), TreeNode::Branch(Vec::new())));
                    let end = level.len() - 1;
                    level = match &mut level[end].1 {
                        TreeNode::Branch(children) => children,
                        TreeNode::Leaf(_) => unreachable!("just made a branch"),
                    };
                }
                (Some(i), false) if matches!(level[i].1, TreeNode::Branch(_)) => {
                    level = match &mut level[i].1 {
                        TreeNode::Branch(children) => children,
                        TreeNode::Leaf(_) => unreachable!("matched a branch"),
                    };
                }
                (Some(i), _) => {
                    let prefix = parts[..=depth].join(".");
                    let other = match &level[i].1 {
                        TreeNode::Leaf(j) => format!("write[{j}]"),
                        TreeNode::Branch(_) => format!("the [[write]] properties under {prefix:?}"),
                    };
                    return Err(format!(
                        "{entry} and {other}: {prefix:?} cannot be both a value and an object of values in the twin: rename one of them"
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
