//! `[plc.group.telemetry]`: shaped telemetry of a group (windows) or report by exception,
//! and a node's own `telemetry = { ... }`.

use super::Check;
use crate::config::raw::{RawDuration, RawNodeTelemetry, RawShaping, Spanned};
use crate::config::types::*;

impl Check<'_> {
    /// The group's telemetry: windows (a window dividing a day, known aggregates once each)
    /// or report by exception, and known destinations.
    pub(super) fn shaping(
        &mut self,
        raw: Option<&Spanned<RawShaping>>,
        key: &str,
    ) -> Option<(Option<Shaping>, Option<Exception>)> {
        let Some(raw) = raw else {
            return Some((None, None));
        };
        let key = format!("{key}.telemetry");
        let span = Some(raw.span());
        let raw = raw.get_ref();
        let keys = ExceptionKeys {
            deadband_absolute: raw.deadband_absolute.as_ref(),
            deadband_percent: raw.deadband_percent.as_ref(),
            min_interval: raw.min_interval.as_ref(),
            max_interval: raw.max_interval.as_ref(),
        };
        if raw.window.is_none() {
            if let Some(a) = &raw.aggregates {
                self.at(a, &format!("{key}.aggregates"), "aggregates need a window");
            }
            if keys.is_empty() {
                self.problem(span, &format!("{key}.window"), "missing: give a window, or deadband_absolute, deadband_percent, min_interval or max_interval for report by exception");
                return None;
            }
            let (mqtt, hub) = self.destinations(raw, &key)?;
            let ex = self.exception(&keys, None, &key, (mqtt, hub))?;
            return Some((None, Some(ex)));
        }
        if let Some((k, at)) = keys.first() {
            self.problem(Some(at), &format!("{key}.{k}"), "a window and report by exception are alternatives: windows already send one summary per node and window");
        }
        let window = raw.window.as_ref()
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
        let destinations = self.destinations(raw, &key);
        let ((mqtt, hub), window) = (destinations?, window?);
        ok.then_some((
            Some(Shaping {
                window,
                aggregates,
                mqtt,
                hub,
            }),
            None,
        ))
    }

    /// `to`: known destinations, not empty; (mqtt, hub).
    fn destinations(&mut self, raw: &RawShaping, key: &str) -> Option<(bool, bool)> {
        let (mut mqtt, mut hub) = (raw.to.is_none(), raw.to.is_none());
        let mut ok = true;
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
        ok.then_some((mqtt, hub))
    }

    /// Report by exception from `keys`, each key absent there taken from `base` (the group's,
    /// for a node's own keys).
    fn exception(
        &mut self,
        keys: &ExceptionKeys<'_>,
        base: Option<&Exception>,
        key: &str,
        (mqtt, hub): (bool, bool),
    ) -> Option<Exception> {
        let mut ok = true;
        let mut deadband = |v: Option<&Spanned<f64>>, name: &str, max: f64| match v {
            None => None,
            Some(v) if v.get_ref().is_finite() && (0.0..=max).contains(v.get_ref()) => {
                Some(*v.get_ref())
            }
            Some(v) => {
                let message = format!("{} must be within 0..={max}", v.get_ref());
                self.at(v, &format!("{key}.{name}"), message);
                ok = false;
                None
            }
        };
        let absolute = deadband(keys.deadband_absolute, "deadband_absolute", f64::MAX);
        let percent = deadband(keys.deadband_percent, "deadband_percent", 100.0);
        let min = keys
            .min_interval
            .map(|d| self.duration(d, &format!("{key}.min_interval")));
        let max = keys
            .max_interval
            .map(|d| self.positive_duration(d, &format!("{key}.max_interval")));
        if min.as_ref().is_some_and(Option::is_none) || max.as_ref().is_some_and(Option::is_none) {
            ok = false;
        }
        let ex = Exception {
            deadband_absolute: absolute.or(base.and_then(|b| b.deadband_absolute)),
            deadband_percent: percent.or(base.and_then(|b| b.deadband_percent)),
            min_interval: min
                .flatten()
                .or(base.map(|b| b.min_interval))
                .unwrap_or_default(),
            max_interval: max.flatten().or(base.and_then(|b| b.max_interval)),
            mqtt,
            hub,
        };
        // After merging with the group's: either may come from there.
        let at = keys
            .max_interval
            .map(|d| (d.span(), "max_interval"))
            .or(keys.min_interval.map(|d| (d.span(), "min_interval")));
        if let (Some((span, k)), Some(hi)) = (at, ex.max_interval) {
            if hi <= ex.min_interval {
                let message = "max_interval must be longer than min_interval";
                self.problem(Some(span), &format!("{key}.{k}"), message);
                ok = false;
            }
        }
        ok.then_some(ex)
    }

    /// A node's `telemetry = { ... }`: its report by exception, merged with the group's.
    pub(super) fn node_exception(
        &mut self,
        raw: &Spanned<RawNodeTelemetry>,
        group: Option<&Exception>,
        key: &str,
    ) -> Option<Exception> {
        let key = format!("{key}.telemetry");
        let Some(group) = group else {
            self.at(raw, &key, "the group has no report by exception: give it [plc.group.telemetry] with deadband_absolute, deadband_percent, min_interval or max_interval (a node's keys override them)");
            return None;
        };
        let r = raw.get_ref();
        let keys = ExceptionKeys {
            deadband_absolute: r.deadband_absolute.as_ref(),
            deadband_percent: r.deadband_percent.as_ref(),
            min_interval: r.min_interval.as_ref(),
            max_interval: r.max_interval.as_ref(),
        };
        self.exception(&keys, Some(group), &key, (group.mqtt, group.hub))
    }
}

/// The keys of report by exception as written (a group's or a node's).
struct ExceptionKeys<'a> {
    deadband_absolute: Option<&'a Spanned<f64>>,
    deadband_percent: Option<&'a Spanned<f64>>,
    min_interval: Option<&'a Spanned<RawDuration>>,
    max_interval: Option<&'a Spanned<RawDuration>>,
}

impl ExceptionKeys<'_> {
    fn is_empty(&self) -> bool {
        self.first().is_none()
    }

    /// The first key given and its span.
    fn first(&self) -> Option<(&'static str, std::ops::Range<usize>)> {
        let spans = [
            (
                "deadband_absolute",
                self.deadband_absolute.map(|v| v.span()),
            ),
            ("deadband_percent", self.deadband_percent.map(|v| v.span())),
            ("min_interval", self.min_interval.map(|v| v.span())),
            ("max_interval", self.max_interval.map(|v| v.span())),
        ];
        spans.into_iter().find_map(|(k, s)| s.map(|s| (k, s)))
    }
}
