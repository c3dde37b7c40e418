//! The `spike` key of a profile node: a scripted overlay that adds a constant (and seeded
//! noise) to a numeric behaviour during periodic windows, checked key by key with lines.

use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::error::line_of;
use crate::model::Spike;

/// `spike = { every = "120s", at = "60s", add = 6.0, length = "20s", noise = 0.4 }`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSpike {
    every: Spanned<String>,
    at: Option<Spanned<String>>,
    add: Spanned<f64>,
    length: Spanned<String>,
    noise: Option<Spanned<f64>>,
}

/// Checks a node's spike (`element` is the node's key path, `text` the profile for lines).
/// Every problem goes to `problem` with the line of its key; `None` when there was one.
pub(super) fn check(
    raw: &RawSpike,
    element: &str,
    text: &str,
    problem: &mut dyn FnMut(usize, String, String),
) -> Option<Spike> {
    let mut ok = true;
    let mut report = |line: usize, key: &str, message: String| {
        ok = false;
        problem(line, format!("{element}.spike.{key}"), message);
    };
    let mut duration = |s: &Spanned<String>, key: &str| -> Option<Duration> {
        match humantime::parse_duration(s.get_ref()) {
            Ok(d) => Some(d),
            Err(e) => {
                report(
                    line_of(text, s.span().start),
                    key,
                    format!(
                        "bad duration {:?}: {e} (write e.g. \"500ms\", \"20s\")",
                        s.get_ref()
                    ),
                );
                None
            }
        }
    };
    let every = duration(&raw.every, "every");
    let length = duration(&raw.length, "length");
    let at = match &raw.at {
        Some(at) => duration(at, "at"),
        None => Some(Duration::ZERO),
    };
    if let (Some(every), Some(length)) = (every, length) {
        if length.is_zero() {
            report(
                line_of(text, raw.length.span().start),
                "length",
                "spike length must be above zero".into(),
            );
        } else if every <= length {
            report(
                line_of(text, raw.every.span().start),
                "every",
                format!(
                    "spike every ({}) must be longer than its length ({})",
                    raw.every.get_ref(),
                    raw.length.get_ref()
                ),
            );
        }
    }
    let add = *raw.add.get_ref();
    if !add.is_finite() {
        report(
            line_of(text, raw.add.span().start),
            "add",
            format!("spike add must be a finite number, not {add}"),
        );
    }
    let noise = raw.noise.as_ref().map_or(0.0, |n| *n.get_ref());
    if let Some(n) = raw.noise.as_ref().filter(|_| !noise.is_finite()) {
        report(
            line_of(text, n.span().start),
            "noise",
            format!("spike noise must be a finite number, not {noise}"),
        );
    }
    let (every, at, length) = (every?, at?, length?);
    ok.then_some(Spike {
        every,
        at,
        add,
        length,
        noise: noise.abs(),
    })
}
