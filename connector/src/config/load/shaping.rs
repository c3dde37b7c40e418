//! `[plc.group.telemetry]`: shaped telemetry of a group.

use super::Check;
use crate::config::raw::{RawShaping, Spanned};
use crate::config::types::*;

impl Check<'_> {
    /// The group's shaping: a window dividing a day, known aggregates once each, known
    /// destinations.
    pub(super) fn shaping(
        &mut self,
        raw: Option<&Spanned<RawShaping>>,
        key: &str,
    ) -> Option<Option<Shaping>> {
        let Some(raw) = raw else {
            return Some(None);
        };
        let key = format!("{key}.telemetry");
        let span = Some(raw.span());
        let raw = raw.get_ref();
        let window = self
            .required(&raw.window, span, &format!("{key}.window"))
            .and_then(|w| {
                let d = self.positive_duration(w, &format!("{key}.window"))?;
                let day = 86_400_000_000u128;
                let us = d.as_micros();
                if us < 1_000_000 || !day.is_multiple_of(us) {
                    let message = format!(
                        "window {} must be at least 1s and divide a day (10s, 1m, 15m, 1h), so that windows align to UTC midnight",
                        humantime::format_duration(d)
                    );
                    self.at(w, &format!("{key}.window"), message);
                    return None;
                }
                Some(d)
            });
        let mut ok = true;
        let aggregates = match &raw.aggregates {
            None => Shaping::AGGREGATES.to_vec(),
            Some(list) => {
                let mut chosen = Vec::new();
                for (i, a) in list.get_ref().iter().enumerate() {
                    let akey = format!("{key}.aggregates[{i}]");
                    match Shaping::AGGREGATES.iter().find(|k| **k == a.get_ref()) {
                        Some(k) if chosen.contains(k) => {
                            self.at(a, &akey, format!("{k} is listed twice"));
                            ok = false;
                        }
                        Some(k) => chosen.push(*k),
                        None => {
                            let message = format!(
                                "unknown aggregate {:?}: use {}",
                                a.get_ref(),
                                Shaping::AGGREGATES.join(" | ")
                            );
                            self.at(a, &akey, message);
                            ok = false;
                        }
                    }
                }
                if list.get_ref().is_empty() {
                    self.at(
                        list,
                        &format!("{key}.aggregates"),
                        "empty: leave it out for all",
                    );
                    ok = false;
                }
                // In the documented order, whatever the file's.
                Shaping::AGGREGATES
                    .iter()
                    .copied()
                    .filter(|k| chosen.contains(k))
                    .collect()
            }
        };
        let (mut mqtt, mut hub) = (raw.to.is_none(), raw.to.is_none());
        if let Some(to) = raw.to.as_ref().filter(|t| t.get_ref().is_empty()) {
            self.at(
                to,
                &format!("{key}.to"),
                "empty: leave it out for mqtt and hub",
            );
            ok = false;
        }
        for (i, t) in raw.to.iter().flat_map(|t| t.get_ref().iter()).enumerate() {
            match t.get_ref().as_str() {
                "mqtt" => mqtt = true,
                "hub" => hub = true,
                other => {
                    let message = format!("unknown destination {other:?}: use mqtt | hub");
                    self.at(t, &format!("{key}.to[{i}]"), message);
                    ok = false;
                }
            }
        }
        let window = window?;
        ok.then_some(Some(Shaping {
            window,
            aggregates,
            mqtt,
            hub,
        }))
    }
}
