//! Structure values of the model: [`Fields`] (named fields in definition order) and the two
//! scripted structure behaviours of the bottling line, `batch` (FillerBatch) and
//! `nozzle_status` (NozzleStatus[4]), both pure functions of the node's update number `n`.

use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};

use super::Value;

/// The fields of a structure value, by name, in the order of the type's definition. Empty
/// means "no value yet" (the variable reads as null).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Fields(pub Vec<(String, Value)>);

impl Fields {
    pub fn new(fields: impl IntoIterator<Item = (&'static str, Value)>) -> Self {
        Fields(fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
    }

    pub fn get(&self, name: &str) -> Option<&Value> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v)
    }
}

/// A structure is written as a JSON object (field order kept).
impl Serialize for Fields {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

/// Number of nozzles in `Filler.NozzleStatus` and in a batch's `Nozzles`.
pub const NOZZLES: u64 = 4;

/// NozzleStatus `i` at update `n`: { Index: i, FillLevel: 500 + i + (n % 10) * 0.25,
/// Ok: (n + i) % 7 != 0 }.
pub fn nozzle(n: u64, i: u64) -> Value {
    Value::Struct(Fields::new([
        ("Index", Value::Int(i as i64)),
        (
            "FillLevel",
            Value::Float(500.0 + i as f64 + (n % 10) as f64 * 0.25),
        ),
        ("Ok", Value::Bool(!(n + i).is_multiple_of(7))),
    ]))
}

/// NozzleStatus[4] at update `n`.
pub fn nozzles(n: u64) -> Value {
    Value::Array((0..NOZZLES).map(|i| nozzle(n, i)).collect())
}

/// FillerBatch at update `n`: { Id: "B-%05d" of n / 100, Count: n, Recipe: { Name: "Cola 0.5 l",
/// TargetVolume: 500.0 }, Nozzles: NozzleStatus[4] at n }.
pub fn batch(n: u64) -> Value {
    Value::Struct(Fields::new([
        ("Id", Value::Text(format!("B-{:05}", n / 100))),
        ("Count", Value::Int(i64::from(n as u32))),
        (
            "Recipe",
            Value::Struct(Fields::new([
                ("Name", Value::Text("Cola 0.5 l".into())),
                ("TargetVolume", Value::Float(500.0)),
            ])),
        ),
        ("Nozzles", nozzles(n)),
    ]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_and_nozzles_follow_the_formulas() {
        let Value::Struct(b) = batch(1234) else {
            panic!("a structure")
        };
        assert_eq!(b.get("Id"), Some(&Value::Text("B-00012".into())));
        assert_eq!(b.get("Count"), Some(&Value::Int(1234)));
        let Some(Value::Array(n)) = b.get("Nozzles") else {
            panic!("nozzles")
        };
        assert_eq!(n.len(), 4);
        let Value::Struct(n3) = &n[3] else {
            panic!("a structure")
        };
        assert_eq!(n3.get("Index"), Some(&Value::Int(3)));
        assert_eq!(n3.get("FillLevel"), Some(&Value::Float(504.0)));
        // (1234 + 3) % 7 == 5
        assert_eq!(n3.get("Ok"), Some(&Value::Bool(true)));
        let Value::Struct(n0) = nozzle(7, 0) else {
            panic!()
        };
        assert_eq!(n0.get("Ok"), Some(&Value::Bool(false)));
        assert_eq!(
            serde_json::to_string(&nozzle(0, 1)).unwrap(),
            r#"{"Index":1,"FillLevel":501.0,"Ok":true}"#
        );
    }
}
