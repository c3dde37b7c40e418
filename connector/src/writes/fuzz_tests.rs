//! Property-style tests: thousands of random and mutated inputs never panic the parsers or
//! `coerce`; each gives a value or a 400 refusal.

use serde_json::{json, Map, Value};

use super::ack::{reported_patch, write_response, TwinAck};
use super::coerce::{coerce, mapping};
use super::requests::{desired_patch, parse_request};
use super::Refusal;
use crate::config::types::{WriteMapping, WriteType};

/// A tiny seeded linear congruential generator (Knuth's MMIX constants).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 11
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

const KEYS: [&str; 10] = [
    "id",
    "property",
    "value",
    "expires",
    "$version",
    "$metadata",
    "filler",
    "speed",
    "a",
    "b",
];

fn number(rng: &mut Lcg) -> Value {
    match rng.below(10) {
        0 => json!(i64::MAX),
        1 => json!(i64::MIN),
        2 => json!(u64::MAX),
        3 => json!(rng.next() as i64),
        4 => json!(rng.below(300) as i64 - 150),
        5 => json!(f64::from_bits(rng.next() << 11 | rng.below(2048))),
        6 => json!((rng.below(2000) as f64 - 1000.0) / 8.0),
        7 => json!(*rng.pick(&[1e300, -1e300, 1e-300, -0.0, 3.4e38, 3.5e38, 0.5])),
        8 => json!(rng.below(1 << 40) as f64),
        _ => json!(rng.below(256)),
    }
}

fn string(rng: &mut Lcg) -> String {
    let pool = [
        "",
        "1",
        "true",
        "NaN",
        "2026-01-01T00:00:00Z",
        "x.y",
        "filler.speed",
        "é\u{0}\"\\",
        "2026-13-45T99:99:99Z",
    ];
    rng.pick(&pool).to_string()
}

fn value(rng: &mut Lcg, depth: u32) -> Value {
    let kinds = if depth >= 4 { 4 } else { 6 };
    match rng.below(kinds) {
        0 => Value::Null,
        1 => Value::Bool(rng.below(2) == 1),
        2 => number(rng),
        3 => Value::String(string(rng)),
        4 => Value::Array((0..rng.below(4)).map(|_| value(rng, depth + 1)).collect()),
        _ => {
            let mut m = Map::new();
            for _ in 0..rng.below(5) {
                let k = if rng.below(4) == 0 {
                    string(rng)
                } else {
                    rng.pick(&KEYS).to_string()
                };
                m.insert(k, value(rng, depth + 1));
            }
            Value::Object(m)
        }
    }
}

/// A plausible body (request or desired patch), with some fields randomised.
fn body(rng: &mut Lcg) -> Value {
    let mut m = Map::new();
    for k in KEYS {
        if rng.below(3) != 0 {
            let v = match k {
                "$version" if rng.below(2) == 0 => json!(rng.below(100)),
                "id" | "property" | "expires" if rng.below(2) == 0 => json!(string(rng)),
                _ => value(rng, 1),
            };
            m.insert(k.to_string(), v);
        }
    }
    Value::Object(m)
}

fn mutate(rng: &mut Lcg, mut bytes: Vec<u8>) -> Vec<u8> {
    for _ in 0..=rng.below(4) {
        let len = bytes.len() as u64;
        match rng.below(5) {
            0 if len > 0 => bytes.truncate(rng.below(len) as usize),
            1 if len > 0 => {
                let i = rng.below(len) as usize;
                bytes[i] = rng.next() as u8;
            }
            2 => {
                let i = rng.below(len + 1) as usize;
                let b = *rng.pick(b"{}[]\":,.-0e9\\ntfu\xff");
                bytes.insert(i, b);
            }
            3 if len > 0 => {
                bytes.remove(rng.below(len) as usize);
            }
            _ => {}
        }
    }
    bytes
}

fn mappings() -> Vec<WriteMapping> {
    let mut ms: Vec<WriteMapping> = WriteType::ALL
        .iter()
        .enumerate()
        .map(|(i, ty)| mapping(&format!("t{i}"), *ty, None, None))
        .collect();
    ms.push(mapping(
        "filler.speed",
        WriteType::Double,
        Some(0.0),
        Some(10.0),
    ));
    ms.push(mapping("a.b", WriteType::Int16, Some(-5.0), Some(5.0)));
    ms.push(mapping("value", WriteType::String, None, None));
    ms.push(mapping("speed", WriteType::Float, Some(-1.5), Some(1e6)));
    ms
}

fn check_refusal(r: &Refusal) {
    assert_eq!(r.code(), 400);
    assert!(!r.to_string().is_empty());
}

#[test]
fn coerce_never_panics_on_random_values() {
    let ms = mappings();
    let mut rng = Lcg(0x5eed_0001);
    let mut ok = 0;
    for _ in 0..20_000 {
        let v = value(&mut rng, 0);
        let m = rng.pick(&ms);
        match coerce(&v, m) {
            Ok(_) => ok += 1,
            Err(r) => check_refusal(&r),
        }
    }
    assert!(ok > 1000, "generator too weak: {ok} accepted");
}

#[test]
fn coerced_numbers_keep_their_value() {
    use opcua::types::Variant;
    let mut rng = Lcg(0x5eed_0002);
    for _ in 0..20_000 {
        let v = number(&mut rng);
        for ty in WriteType::ALL {
            let Ok(var) = coerce(&v, &mapping("p", ty, None, None)) else {
                continue;
            };
            let got: Option<i128> = match var {
                Variant::SByte(x) => Some(x.into()),
                Variant::Byte(x) => Some(x.into()),
                Variant::Int16(x) => Some(x.into()),
                Variant::UInt16(x) => Some(x.into()),
                Variant::Int32(x) => Some(x.into()),
                Variant::UInt32(x) => Some(x.into()),
                Variant::Int64(x) => Some(x.into()),
                Variant::UInt64(x) => Some(x.into()),
                Variant::Float(f) => {
                    assert!(f.is_finite(), "{v} -> {f}");
                    None
                }
                Variant::Double(d) => {
                    assert_eq!(Some(d), v.as_f64(), "{v}");
                    None
                }
                other => panic!("{ty:?} {v} -> {other:?}"),
            };
            if let Some(i) = got {
                let want = v
                    .as_i64()
                    .map(i128::from)
                    .or(v.as_u64().map(i128::from))
                    .unwrap_or_else(|| v.as_f64().unwrap() as i128);
                assert_eq!(i, want, "{ty:?} {v}");
            }
        }
    }
}

#[test]
fn parse_request_never_panics_on_mutations() {
    let mut rng = Lcg(0x5eed_0003);
    let seeds: Vec<Vec<u8>> = vec![
        br#"{"id":"r1","property":"filler.speed","value":1.5,"expires":"2026-01-01T00:00:00Z"}"#
            .to_vec(),
        br#"{"id":"r2","property":"t3","value":-7}"#.to_vec(),
    ];
    let ms = mappings();
    let mut parsed = 0;
    for i in 0..20_000 {
        let bytes = if i % 2 == 0 {
            {
                let seed = rng.pick(&seeds).clone();
                mutate(&mut rng, seed)
            }
        } else {
            serde_json::to_vec(&body(&mut rng)).unwrap()
        };
        match parse_request(&bytes) {
            Ok(req) => {
                parsed += 1;
                assert!(!req.id.is_empty() && !req.property.is_empty());
                if let Some(m) = super::requests::find_mapping(&ms, &req.property) {
                    if let Err(r) = coerce(&req.value, m) {
                        check_refusal(&r);
                    }
                }
                let resp = write_response(&req.id, 200, "written", Some(&req.value));
                assert_eq!(resp["id"], Value::from(req.id.as_str()));
            }
            Err(r) => check_refusal(&r),
        }
    }
    assert!(parsed > 100, "only {parsed} parsed");
}

#[test]
fn desired_patch_never_panics_on_random_documents() {
    let ms = mappings();
    let mut rng = Lcg(0x5eed_0004);
    let seed =
        br#"{"$version":3,"$metadata":{"a":{}},"filler":{"speed":2,"x":1},"a":{"b":4},"t5":9}"#;
    let mut parsed = 0;
    for i in 0..20_000 {
        let bytes = match i % 3 {
            0 => mutate(&mut rng, seed.to_vec()),
            1 => serde_json::to_vec(&body(&mut rng)).unwrap(),
            _ => serde_json::to_vec(&value(&mut rng, 0)).unwrap(),
        };
        match desired_patch(&bytes, &ms) {
            Ok(p) => {
                parsed += 1;
                let mut acks = Vec::new();
                for prop in &p.properties {
                    let m = super::requests::find_mapping(&ms, &prop.property).unwrap();
                    let (code, ad) = match coerce(&prop.value, m) {
                        Ok(_) => (200, "written".to_string()),
                        Err(r) => (r.code(), r.to_string()),
                    };
                    acks.push(TwinAck {
                        property: prop.property.clone(),
                        value: prop.value.clone(),
                        code,
                        version: p.version,
                        description: ad,
                    });
                }
                for u in &p.unmapped {
                    assert!(super::requests::find_mapping(&ms, u).is_none());
                    assert!(!u.starts_with('$'));
                }
                assert!(reported_patch(&acks).is_object());
            }
            Err(r) => check_refusal(&r),
        }
    }
    assert!(parsed > 100, "only {parsed} parsed");
}
