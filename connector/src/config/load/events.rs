//! `[[plc.events]]`: event subscriptions (alarms and conditions) of a PLC.

use super::Check;
use crate::config::raw::{RawEventField, RawEvents, RawPlc, Spanned};
use crate::config::types::*;

impl Check<'_> {
    /// The events of a plc; `groups`: the plc's group names (an event stream's name is unique
    /// among both, it names the telemetry stream).
    pub(super) fn events_of(
        &mut self,
        raw: &RawPlc,
        key: &str,
        groups: &[(String, usize)],
    ) -> Option<Vec<Events>> {
        let mut out = Vec::new();
        let mut names: Vec<(String, usize)> = Vec::new();
        for (j, e) in raw.events.iter().enumerate() {
            let ekey = format!("{key}.events[{j}]");
            if let Some(name) = &e.get_ref().name {
                let n = name.get_ref();
                if let Some((_, g)) = groups.iter().find(|(seen, _)| seen == n) {
                    let message = format!("name {n:?} is also the name of {key}.group[{g}]");
                    self.at(name, &format!("{ekey}.name"), message);
                } else if let Some((_, first)) = names.iter().find(|(seen, _)| seen == n) {
                    let message =
                        format!("duplicate events name {n:?} (also {key}.events[{first}])");
                    self.at(name, &format!("{ekey}.name"), message);
                } else {
                    names.push((n.clone(), j));
                }
            }
            out.push(self.events(e, &ekey));
        }
        out.into_iter().collect()
    }

    fn events(&mut self, raw: &Spanned<RawEvents>, key: &str) -> Option<Events> {
        let span = Some(raw.span());
        let raw = raw.get_ref();
        let name = self
            .required(&raw.name, span, &format!("{key}.name"))
            .and_then(|n| self.name(n, &format!("{key}.name")));
        let source = match &raw.source {
            None => Some(NodeRef::Index {
                namespace: 0,
                identifier: Identifier::Numeric(2253),
            }),
            Some(s) => self.node(s, &format!("{key}.source")),
        };
        let types: Vec<Option<NodeRef>> = raw
            .types
            .iter()
            .flatten()
            .enumerate()
            .map(|(i, t)| self.node(t, &format!("{key}.types[{i}]")))
            .collect();
        let fields: Vec<Option<EventField>> = raw
            .fields
            .iter()
            .flatten()
            .enumerate()
            .map(|(i, f)| self.event_field(f, &format!("{key}.fields[{i}]")))
            .collect();
        let publishing_interval = match &raw.publishing_interval {
            None => Some(Events::DEFAULT_PUBLISHING),
            Some(d) => self.positive_duration(d, &format!("{key}.publishing_interval")),
        };
        let queue_size = match &raw.queue_size {
            None => Some(Events::DEFAULT_QUEUE),
            Some(q) => match u32::try_from(*q.get_ref()) {
                Ok(n) if (1..=100_000).contains(&n) => Some(n),
                _ => {
                    let message = format!("queue_size {} must be 1..=100000", q.get_ref());
                    self.at(q, &format!("{key}.queue_size"), message);
                    None
                }
            },
        };
        Some(Events {
            name: name?,
            source: source?,
            types: types.into_iter().collect::<Option<_>>()?,
            fields: fields.into_iter().collect::<Option<_>>()?,
            publishing_interval: publishing_interval?,
            queue_size: queue_size?,
        })
    }

    fn event_field(&mut self, raw: &Spanned<RawEventField>, key: &str) -> Option<EventField> {
        let span = Some(raw.span());
        let raw = raw.get_ref();
        let type_id = match &raw.type_id {
            None => Some(NodeRef::Index {
                namespace: 0,
                identifier: Identifier::Numeric(2041),
            }),
            Some(t) => self.node(t, &format!("{key}.type")),
        };
        let path = self.required(&raw.path, span, &format!("{key}.path"))?;
        let mut names = Vec::new();
        let mut rest = path.get_ref().as_str();
        loop {
            // `nsu=URI;Name`: the URI may hold `/` (http://...), up to the `;`.
            let (uri, after) = match rest.strip_prefix("nsu=") {
                Some(r) => match r.split_once(';') {
                    Some((uri, after)) if !uri.is_empty() => (Some(uri.to_owned()), after),
                    _ => (None, ""),
                },
                None => (None, rest),
            };
            let (name, next) = match after.split_once('/') {
                Some((name, next)) => (name, Some(next)),
                None => (after, None),
            };
            let name = (uri, name.to_owned());
            if name.1.is_empty() {
                let message = format!(
                    "{:?}: empty browse name; write Name/Name or nsu=URI;Name",
                    path.get_ref()
                );
                self.at(path, &format!("{key}.path"), message);
                return None;
            }
            names.push(name);
            match next {
                Some(n) => rest = n,
                None => break,
            }
        }
        Some(EventField {
            text: path.get_ref().clone(),
            type_id: type_id?,
            path: names,
        })
    }
}
