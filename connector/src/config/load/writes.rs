//! What the cloud may do to the PLCs: `[[write]]` (an allow-list of nodes, with limits) and
//! `[[method]]`.

use std::time::Duration;

use crate::config::raw::Spanned;

use super::{optional, Check};
use crate::config::raw::{RawMethod, RawWrite};
use crate::config::types::*;

pub const DEFAULT_METHOD_TIMEOUT: Duration = Duration::from_secs(10);

/// Default `[[plc]] max_concurrent_commands`: cloud writes and method calls running at once
/// on one PLC.
pub const DEFAULT_MAX_CONCURRENT_COMMANDS: usize = 4;

/// Default `[hub] pending_write_max_age`: how long a desired value may wait for its PLC.
pub const DEFAULT_PENDING_WRITE_MAX_AGE: Duration = Duration::from_secs(3600);

impl Check<'_> {
    /// `plc = "..."` of a write or method: must name a configured plc.
    fn plc_ref(&mut self, value: &Spanned<String>, key: &str, plcs: &[String]) -> Option<String> {
        if plcs.iter().any(|p| p == value.get_ref()) {
            return Some(value.get_ref().clone());
        }
        let message = format!(
            "no plc {:?} in this file (plcs: {})",
            value.get_ref(),
            plcs.join(", ")
        );
        self.at(value, key, message);
        None
    }

    pub(super) fn writes(
        &mut self,
        raw: &[Spanned<RawWrite>],
        plcs: &[String],
    ) -> Vec<Option<WriteMapping>> {
        let mut properties: Vec<(String, usize)> = Vec::new();
        let mut out = Vec::new();
        for (i, w) in raw.iter().enumerate() {
            let key = format!("write[{i}]");
            let span = Some(w.span());
            let w = w.get_ref();
            let property = self.required(&w.property, span.clone(), &format!("{key}.property")).and_then(|p| {
                let v = p.get_ref();
                if v.is_empty() || v.split('.').any(str::is_empty) {
                    self.at(p, &format!("{key}.property"), format!("property {v:?} must be a name or a dotted path like \"filler.speedSetpoint\""));
                    return None;
                }
                if let Some((_, first)) = properties.iter().find(|(seen, _)| seen == v) {
                    self.at(p, &format!("{key}.property"), format!("duplicate property {v:?} (also write[{first}])"));
                    return None;
                }
                properties.push((v.clone(), i));
                Some(v.clone())
            });
            let plc = self
                .required(&w.plc, span.clone(), &format!("{key}.plc"))
                .and_then(|p| self.plc_ref(p, &format!("{key}.plc"), plcs));
            let node = self
                .required(&w.node, span.clone(), &format!("{key}.node"))
                .and_then(|n| self.node(n, &format!("{key}.node")));
            let write_type = self
                .required(&w.write_type, span, &format!("{key}.type"))
                .and_then(|t| {
                    let found = WriteType::from_name(t.get_ref());
                    if found.is_none() {
                        let names: Vec<_> = WriteType::ALL.iter().map(|t| t.name()).collect();
                        self.at(
                            t,
                            &format!("{key}.type"),
                            format!(
                                "unknown type {:?}: use one of {}",
                                t.get_ref(),
                                names.join(", ")
                            ),
                        );
                    }
                    found
                });
            let limits = write_type.and_then(|t| self.limits(w, t, &key));
            let max_rate = w
                .max_rate
                .as_ref()
                .map(|d| self.positive_duration(d, &format!("{key}.max_rate")));
            out.push((|| {
                let (min, max) = limits?;
                Some(WriteMapping {
                    property: property?,
                    plc: plc?,
                    node: node?,
                    write_type: write_type?,
                    min,
                    max,
                    readback: w.readback.as_ref().is_none_or(|r| *r.get_ref()),
                    max_rate: optional(max_rate)?,
                })
            })());
        }
        out
    }

    /// `min`/`max` of a write: numeric types only, within the type, `min <= max`.
    #[allow(clippy::type_complexity)]
    fn limits(
        &mut self,
        w: &RawWrite,
        t: WriteType,
        key: &str,
    ) -> Option<(Option<f64>, Option<f64>)> {
        let Some((lo, hi)) = t.numeric_range() else {
            for (bound, name) in [(&w.min, "min"), (&w.max, "max")] {
                if let Some(b) = bound {
                    self.at(
                        b,
                        &format!("{key}.{name}"),
                        format!("type {} takes no {name}", t.name()),
                    );
                    return None;
                }
            }
            return Some((None, None));
        };
        let mut ok = true;
        for (bound, name) in [(&w.min, "min"), (&w.max, "max")] {
            if let Some(b) = bound {
                let v = *b.get_ref();
                if !(v.is_finite() && lo <= v && v <= hi) {
                    self.at(
                        b,
                        &format!("{key}.{name}"),
                        format!("{name} {v} is outside the range of {}", t.name()),
                    );
                    ok = false;
                }
            }
        }
        if let (Some(min), Some(max)) = (&w.min, &w.max) {
            if ok && min.get_ref() > max.get_ref() {
                self.at(
                    max,
                    &format!("{key}.max"),
                    format!("max {} is less than min {}", max.get_ref(), min.get_ref()),
                );
                ok = false;
            }
        }
        ok.then(|| {
            (
                w.min.as_ref().map(|m| *m.get_ref()),
                w.max.as_ref().map(|m| *m.get_ref()),
            )
        })
    }

    pub(super) fn methods(
        &mut self,
        raw: &[Spanned<RawMethod>],
        plcs: &[String],
    ) -> Vec<Option<MethodMapping>> {
        let mut names: Vec<(String, usize)> = Vec::new();
        let mut out = Vec::new();
        for (i, m) in raw.iter().enumerate() {
            let key = format!("method[{i}]");
            let span = Some(m.span());
            let m = m.get_ref();
            let name = self
                .required(&m.name, span.clone(), &format!("{key}.name"))
                .and_then(|n| {
                    let v = self.non_empty(n, &format!("{key}.name"))?;
                    if let Some((_, first)) = names.iter().find(|(seen, _)| *seen == v) {
                        self.at(
                            n,
                            &format!("{key}.name"),
                            format!("duplicate method name {v:?} (also method[{first}])"),
                        );
                        return None;
                    }
                    names.push((v.clone(), i));
                    Some(v)
                });
            let plc = self
                .required(&m.plc, span.clone(), &format!("{key}.plc"))
                .and_then(|p| self.plc_ref(p, &format!("{key}.plc"), plcs));
            let object = self
                .required(&m.object, span.clone(), &format!("{key}.object"))
                .and_then(|n| self.node(n, &format!("{key}.object")));
            let method = self
                .required(&m.method, span, &format!("{key}.method"))
                .and_then(|n| self.node(n, &format!("{key}.method")));
            let timeout = match &m.timeout {
                None => Some(DEFAULT_METHOD_TIMEOUT),
                Some(t) => self.positive_duration(t, &format!("{key}.timeout")),
            };
            out.push((|| {
                Some(MethodMapping {
                    name: name?,
                    plc: plc?,
                    object: object?,
                    method: method?,
                    timeout: timeout?,
                })
            })());
        }
        out
    }
}
