//! Telemetry payload, schema version 2:
//! `{"schema":2,"epoch":"<16 hex>","line":..,"plc":..,"group":..,"seq":N,"samples":[{"node":..,"name":..,"t":..,"v":..,"type":..,"st":..}]}`
//!
//! `seq` counts the messages of a (plc, group) stream within an `epoch` (version 2 added it:
//! a lost seq state starts a new epoch instead of repeating seqs); consumers drop repeats by
//! (`epoch`, `plc`, `group`, `seq`).
//!
//! Values follow OPC UA JSON where JSON itself falls short: Int64 / UInt64 as strings (a JSON
//! number loses precision above 2^53), NaN and infinities as "NaN" / "Infinity" /
//! "-Infinity", ByteStrings as base64, DateTimes as RFC 3339 UTC with microseconds; arrays and
//! structures embed their OPC UA JSON. `st` (the status code) is omitted when Good; `origin`
//! (`"history"` for a sample backfilled after an outage) is omitted for live samples.

use std::fmt::Write as _;

use super::shape::Window;
use crate::sample::{Sample, SampleValue};

/// Appends `s` as a JSON string literal.
pub fn json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// RFC 3339 UTC with microseconds.
pub fn rfc3339(us: i64) -> String {
    match chrono::DateTime::from_timestamp_micros(us) {
        Some(t) => t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string(),
        None => us.to_string(),
    }
}

fn base64(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        out.push(T[(n >> 18) as usize & 63] as char);
        out.push(T[(n >> 12) as usize & 63] as char);
        out.push(if chunk.len() > 1 {
            T[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        out.push(if chunk.len() > 2 {
            T[n as usize & 63] as char
        } else {
            '='
        });
    }
    out
}

/// Appends one event object: `t` (Time), `received` (ReceiveTime), the event's fields by
/// name, `null`s left out, `fields` for the configured extra fields.
fn event(out: &mut String, t: i64, e: &crate::sample::EventRecord) {
    out.push_str("{\"t\":\"");
    out.push_str(&rfc3339(t));
    out.push('"');
    if let Some(r) = e.receive_time_us {
        out.push_str(",\"received\":\"");
        out.push_str(&rfc3339(r));
        out.push('"');
    }
    out.push_str(",\"event_id\":\"");
    out.push_str(&base64(&e.event_id));
    out.push('"');
    for (key, value) in [
        ("event_type", Some(&e.event_type)),
        ("source_node", Some(&e.source_node)),
        ("source_name", Some(&e.source_name)),
        ("message", Some(&e.message)),
        ("condition_id", e.condition_id.as_ref()),
        ("condition_name", e.condition_name.as_ref()),
        ("branch_id", e.branch_id.as_ref()),
        ("comment", e.comment.as_ref()),
    ] {
        if let Some(v) = value {
            let _ = write!(out, ",\"{key}\":");
            json_str(out, v);
        }
    }
    let _ = write!(out, ",\"severity\":{}", e.severity);
    for (key, value) in [
        ("retain", e.retain),
        ("enabled", e.enabled),
        ("active", e.active),
        ("acked", e.acked),
        ("confirmed", e.confirmed),
    ] {
        if let Some(v) = value {
            let _ = write!(out, ",\"{key}\":{v}");
        }
    }
    if let Some(f) = &e.fields_json {
        out.push_str(",\"fields\":");
        out.push_str(f);
    }
    out.push('}');
}

/// `{"node":…,"name":…,"<key>":"<time>"`: how a sample or a window object begins.
fn opening(out: &mut String, item: &crate::sample::Item, key: &str, time_us: i64) {
    out.push_str("{\"node\":");
    json_str(out, &item.node);
    out.push_str(",\"name\":");
    json_str(out, &item.name);
    let _ = write!(out, ",\"{key}\":\"");
    out.push_str(&rfc3339(time_us));
    out.push('"');
}

/// Appends one window object of shaped telemetry: `node`, `name`, `start`, `end`, the chosen
/// `aggregates` (in their documented order), `bad` when some samples were Bad or Uncertain,
/// `partial` when it was sent before its end. An aggregate without a value (no Good sample)
/// is `null`.
pub fn window(out: &mut String, w: &Window, aggregates: &[&str]) {
    opening(out, &w.item, "start", w.start_us);
    out.push_str(",\"end\":\"");
    out.push_str(&rfc3339(w.end_us));
    out.push('"');
    let some = w.count > 0;
    for a in aggregates {
        let v = match *a {
            "count" => {
                let _ = write!(out, ",\"count\":{}", w.count);
                continue;
            }
            "sum" => some.then_some(w.sum),
            "min" => some.then_some(w.min),
            "max" => some.then_some(w.max),
            "mean" => w.mean(),
            "twa" => w.twa,
            "first" => some.then_some(w.first),
            "last" => some.then_some(w.last),
            _ => continue,
        };
        let _ = write!(out, ",\"{a}\":");
        match v {
            Some(x) if x.is_finite() => {
                let _ = write!(out, "{x}");
            }
            Some(x) if x.is_nan() => out.push_str("\"NaN\""),
            Some(x) if x > 0.0 => out.push_str("\"Infinity\""),
            Some(_) => out.push_str("\"-Infinity\""),
            None => out.push_str("null"),
        }
    }
    if w.bad > 0 {
        let _ = write!(out, ",\"bad\":{}", w.bad);
    }
    if w.partial {
        out.push_str(",\"partial\":true");
    }
    out.push('}');
}

/// Appends one sample object (an event's object for an event).
pub fn sample(out: &mut String, s: &Sample) {
    if let SampleValue::Event(e) = &s.value {
        event(out, s.time_us, e);
        return;
    }
    opening(out, &s.item, "t", s.time_us);
    out.push_str(",\"v\":");
    let wide = matches!(s.type_name.builtin, 8 | 9) && !s.type_name.array;
    match &s.value {
        SampleValue::Null | SampleValue::Event(_) => out.push_str("null"),
        SampleValue::Double(x) if x.is_nan() => out.push_str("\"NaN\""),
        SampleValue::Double(x) if x.is_infinite() => out.push_str(if *x > 0.0 {
            "\"Infinity\""
        } else {
            "\"-Infinity\""
        }),
        SampleValue::Double(x) => {
            let _ = write!(out, "{x}");
        }
        SampleValue::Int(i) if wide => {
            let _ = write!(out, "\"{i}\"");
        }
        SampleValue::Int(i) => {
            let _ = write!(out, "{i}");
        }
        SampleValue::UInt(u) => {
            let _ = write!(out, "\"{u}\"");
        }
        SampleValue::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        SampleValue::String(t) => json_str(out, t),
        SampleValue::Time(us) => {
            out.push('"');
            out.push_str(&rfc3339(*us));
            out.push('"');
        }
        SampleValue::Bytes(b) => {
            out.push('"');
            out.push_str(&base64(b));
            out.push('"');
        }
        SampleValue::Json(j) => out.push_str(j),
    }
    out.push_str(",\"type\":");
    json_str(out, &s.type_name.to_string());
    if s.status != 0 {
        let _ = write!(out, ",\"st\":{}", s.status);
    }
    if s.origin != crate::sample::Origin::Live {
        let _ = write!(out, ",\"origin\":\"{}\"", s.origin.as_str());
    }
    out.push('}');
}

/// Whose messages: the stream a header names.
#[derive(Debug, Clone, Copy)]
pub struct Stream<'a> {
    pub line: &'a str,
    pub epoch: &'a str,
    pub plc: &'a str,
    pub group: &'a str,
    /// What the message's array holds: `samples`, `events` (an event stream) or `windows`
    /// (shaped telemetry).
    pub array: &'static str,
}

/// The message header up to the samples array.
pub fn header(s: Stream<'_>, seq: u64) -> String {
    let mut out = String::with_capacity(128);
    out.push_str("{\"schema\":2,\"epoch\":");
    json_str(&mut out, s.epoch);
    out.push_str(",\"line\":");
    json_str(&mut out, s.line);
    out.push_str(",\"plc\":");
    json_str(&mut out, s.plc);
    out.push_str(",\"group\":");
    json_str(&mut out, s.group);
    let _ = write!(out, ",\"seq\":{seq},\"{}\":[", s.array);
    out
}

/// Splits samples into the bodies (the inside of the `samples` array) of messages of at most
/// `max_samples` samples and `max_bytes` bytes once the header (sized for the largest seq) is
/// added. A single sample larger than that still goes alone: it is never dropped. Each sample
/// is encoded once; the seqs are known only afterwards (see [`assemble`]).
pub fn split(
    stream: Stream<'_>,
    samples: &[Sample],
    max_samples: usize,
    max_bytes: usize,
) -> Vec<String> {
    split_with(stream, samples, max_samples, max_bytes, sample)
}

/// [`split`] for any kind of array entry, encoded by `encode`.
pub fn split_with<T>(
    stream: Stream<'_>,
    items: &[T],
    max_samples: usize,
    max_bytes: usize,
    encode: impl Fn(&mut String, &T),
) -> Vec<String> {
    // 2 = the closing "]}".
    let room = max_bytes.saturating_sub(header(stream, u64::MAX).len() + 2);
    let mut bodies = Vec::new();
    let mut current = String::new();
    let mut count = 0;
    let mut one = String::new();
    for s in items {
        one.clear();
        encode(&mut one, s);
        if count > 0 && (count >= max_samples || current.len() + 1 + one.len() > room) {
            bodies.push(std::mem::take(&mut current));
            count = 0;
        }
        if count > 0 {
            current.push(',');
        }
        current.push_str(&one);
        count += 1;
    }
    if count > 0 {
        bodies.push(current);
    }
    bodies
}

/// One whole message from a body made by [`split`].
pub fn assemble(stream: Stream<'_>, seq: u64, body: &str) -> String {
    let mut m = header(stream, seq);
    m.reserve(body.len() + 2);
    m.push_str(body);
    m.push_str("]}");
    m
}

/// [`split`] then [`assemble`], numbering the messages with `next_seq`.
pub fn encode(
    stream: Stream<'_>,
    samples: &[Sample],
    max_samples: usize,
    max_bytes: usize,
    mut next_seq: impl FnMut() -> u64,
) -> Vec<String> {
    split(stream, samples, max_samples, max_bytes)
        .iter()
        .map(|b| assemble(stream, next_seq(), b))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::{Item, TypeName};
    use std::sync::Arc;

    const TEST_STREAM: Stream<'static> = Stream {
        array: "samples",
        line: "l",
        epoch: "00000000000000ab",
        plc: "p",
        group: "g",
    };

    fn s(value: SampleValue, builtin: u8, status: u32) -> Sample {
        Sample {
            item: Arc::new(Item {
                plc: "p".into(),
                group: "g".into(),
                node: "nsu=urn:x;s=A\"q".into(),
                name: "A".into(),
            }),
            time_us: 1_700_000_000_123_456,
            server_time_us: None,
            status,
            type_name: TypeName::builtin(builtin, false),
            value,
            origin: crate::sample::Origin::Live,
        }
    }

    #[test]
    fn encodes_valid_json_with_exact_values() {
        let samples = vec![
            s(SampleValue::Double(1.5), 11, 0),
            s(SampleValue::Double(f64::NAN), 11, 0),
            s(SampleValue::Int(-(1 << 40)), 8, 0),
            s(SampleValue::UInt(u64::MAX), 9, 0),
            s(SampleValue::Int(7), 6, 0x8000_0000),
            s(SampleValue::Bytes(vec![0, 255, 1]), 15, 0),
            s(SampleValue::Json("{\"a\":[1,2]}".into()), 22, 0),
            s(SampleValue::Null, 0, 0x8031_0000),
        ];
        let mut seq = 41;
        let msgs = encode(TEST_STREAM, &samples, 100, 1 << 20, || {
            seq += 1;
            seq
        });
        assert_eq!(msgs.len(), 1);
        let v: serde_json::Value = serde_json::from_str(&msgs[0]).expect("valid JSON");
        assert_eq!(v["schema"], 2);
        assert_eq!(v["epoch"], "00000000000000ab");
        assert_eq!(v["seq"], 42);
        let x = &v["samples"];
        assert_eq!(x[0]["v"], 1.5);
        assert_eq!(x[0]["t"], "2023-11-14T22:13:20.123456Z");
        assert!(x[0].get("st").is_none(), "st omitted when Good");
        assert_eq!(x[1]["v"], "NaN");
        assert_eq!(x[2]["v"], (-(1i64 << 40)).to_string());
        assert_eq!(x[3]["v"], u64::MAX.to_string());
        assert_eq!(x[4]["v"], 7);
        assert_eq!(x[4]["st"], 0x8000_0000u32);
        assert_eq!(x[5]["v"], "AP8B");
        assert_eq!(x[6]["v"]["a"][1], 2);
        assert_eq!(x[7]["v"], serde_json::Value::Null);
        assert_eq!(x[0]["node"], "nsu=urn:x;s=A\"q");
    }

    #[test]
    fn splits_by_samples_and_bytes_with_consecutive_seq() {
        let samples: Vec<Sample> = (0..10).map(|i| s(SampleValue::Int(i), 6, 0)).collect();
        let mut seq = 0;
        let msgs = encode(TEST_STREAM, &samples, 4, 1 << 20, || {
            seq += 1;
            seq
        });
        assert_eq!(msgs.len(), 3);
        let seqs: Vec<u64> = msgs
            .iter()
            .map(|m| {
                serde_json::from_str::<serde_json::Value>(m).unwrap()["seq"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        assert_eq!(seqs, vec![1, 2, 3]);
        let msgs = encode(TEST_STREAM, &samples, 1000, 400, || 0);
        assert!(
            msgs.len() > 1 && msgs.iter().all(|m| m.len() <= 400),
            "{:?}",
            msgs.iter().map(String::len).collect::<Vec<_>>()
        );
        let total: usize = msgs
            .iter()
            .map(|m| {
                serde_json::from_str::<serde_json::Value>(m).unwrap()["samples"]
                    .as_array()
                    .unwrap()
                    .len()
            })
            .sum();
        assert_eq!(total, 10, "nothing lost by splitting");
    }
}
