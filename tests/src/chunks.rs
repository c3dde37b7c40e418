//! The Parquet chunks read back for the tests: every row with its typed value, the files of
//! a directory, partition keys, and helpers over counter series.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Float64Type, Int32Type, Int64Type, TimestampMicrosecondType, UInt32Type, UInt64Type,
};
use arrow_array::{Array, RecordBatch};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

/// A value as read back from a row.
#[derive(Debug, Clone, PartialEq)]
pub enum Val {
    Null,
    Double(f64),
    Int(i64),
    UInt(u64),
    Bool(bool),
    Str(String),
    Time(i64),
    Bytes(Vec<u8>),
    Json(String),
}

impl Val {
    pub fn as_i128(&self) -> Option<i128> {
        match self {
            Val::Int(i) => Some((*i).into()),
            Val::UInt(u) => Some((*u).into()),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub time: i64,
    pub server_time: Option<i64>,
    pub line: String,
    pub plc: String,
    pub group: String,
    pub node: String,
    pub name: String,
    pub type_name: String,
    pub status: u32,
    pub value: Val,
    /// `live` or `history` (schema 3; `live` for older chunks).
    pub origin: String,
}

/// Every `*.parquet` file below `dir` (temporary files are never named so).
pub fn parquet_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "parquet") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// One row of the events table, the columns the tests look at.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRow {
    pub time: i64,
    pub plc: String,
    pub group: String,
    pub event_id: Vec<u8>,
    pub event_type: String,
    pub source_node: String,
    pub source_name: String,
    pub severity: u16,
    pub message: String,
    pub condition_id: Option<String>,
    pub condition_name: Option<String>,
    pub retain: Option<bool>,
    pub enabled: Option<bool>,
    pub active: Option<bool>,
    pub acked: Option<bool>,
    pub confirmed: Option<bool>,
    pub comment: Option<String>,
    pub fields_json: Option<String>,
}

/// Every row of the events chunks below `dir`, in file order then row order.
pub fn read_events(dir: &Path) -> Vec<EventRow> {
    let mut rows = Vec::new();
    for path in parquet_files(dir) {
        for b in batches(&path) {
            let col = |c: &str| {
                b.column_by_name(c)
                    .unwrap_or_else(|| panic!("column {c}"))
                    .clone()
            };
            let time = col("time");
            let time = time.as_primitive::<TimestampMicrosecondType>();
            let severity = col("severity");
            let severity = severity.as_primitive::<arrow_array::types::UInt16Type>();
            let ids = col("event_id");
            let ids = ids.as_binary::<i32>();
            let bools = |c: &str| {
                let a = col(c);
                let a = a.as_boolean();
                (0..a.len())
                    .map(|i| a.is_valid(i).then(|| a.value(i)))
                    .collect::<Vec<_>>()
            };
            let (retain, enabled, active, acked, confirmed) = (
                bools("retain"),
                bools("enabled"),
                bools("active"),
                bools("acked"),
                bools("confirmed"),
            );
            let s = |c: &str| strings(&b, c);
            let (plc, group, et, sn, sname, msg) = (
                s("plc"),
                s("group"),
                s("event_type"),
                s("source_node"),
                s("source_name"),
                s("message"),
            );
            let (cid, cname, comment, fields) = (
                s("condition_id"),
                s("condition_name"),
                s("comment"),
                s("fields_json"),
            );
            for i in 0..b.num_rows() {
                rows.push(EventRow {
                    time: time.value(i),
                    plc: plc[i].clone().unwrap_or_default(),
                    group: group[i].clone().unwrap_or_default(),
                    event_id: ids.value(i).to_vec(),
                    event_type: et[i].clone().unwrap_or_default(),
                    source_node: sn[i].clone().unwrap_or_default(),
                    source_name: sname[i].clone().unwrap_or_default(),
                    severity: severity.value(i),
                    message: msg[i].clone().unwrap_or_default(),
                    condition_id: cid[i].clone(),
                    condition_name: cname[i].clone(),
                    retain: retain[i],
                    enabled: enabled[i],
                    active: active[i],
                    acked: acked[i],
                    confirmed: confirmed[i],
                    comment: comment[i].clone(),
                    fields_json: fields[i].clone(),
                });
            }
        }
    }
    rows
}

/// The record batches of one chunk file (of either table).
fn batches(path: &Path) -> impl Iterator<Item = RecordBatch> {
    let file = std::fs::File::open(path).expect("open chunk");
    ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap_or_else(|e| panic!("{} is not a readable parquet file: {e}", path.display()))
        .build()
        .expect("reader")
        .map(|batch| batch.expect("batch"))
}

fn strings(batch: &RecordBatch, col: &str) -> Vec<Option<String>> {
    let a = batch
        .column_by_name(col)
        .unwrap_or_else(|| panic!("column {col}"));
    if let Some(d) = a.as_dictionary_opt::<Int32Type>() {
        let values = d.values().as_string::<i32>();
        return d
            .keys()
            .iter()
            .map(|k| k.map(|k| values.value(k as usize).to_owned()))
            .collect();
    }
    let s = a.as_string::<i32>();
    (0..s.len())
        .map(|i| s.is_valid(i).then(|| s.value(i).to_owned()))
        .collect()
}

/// The value of the Hive partition key `key` in `path` (its `key=value` component), if any.
pub fn partition_value(path: &Path, key: &str) -> Option<String> {
    path.components().rev().find_map(|c| {
        let value = c
            .as_os_str()
            .to_str()?
            .strip_prefix(key)?
            .strip_prefix('=')?;
        Some(value.to_owned())
    })
}

/// Reads every row of one chunk file. `line` comes from the `line=` partition of its path, as
/// Hive-partitioning readers take it (the chunks have no `line` column since schema v2).
pub fn read_file(path: &Path) -> Vec<Row> {
    let line = partition_value(path, "line").unwrap_or_default();
    let mut rows = Vec::new();
    for b in batches(path) {
        let n = b.num_rows();
        let col = |c: &str| {
            b.column_by_name(c)
                .unwrap_or_else(|| panic!("column {c}"))
                .clone()
        };
        let time = col("time");
        let time = time.as_primitive::<TimestampMicrosecondType>();
        let server = col("server_time");
        let server = server.as_primitive::<TimestampMicrosecondType>();
        let status = col("status");
        let status = status.as_primitive::<UInt32Type>();
        let (plc, group, node, name, ty) = (
            strings(&b, "plc"),
            strings(&b, "group"),
            strings(&b, "node"),
            strings(&b, "name"),
            strings(&b, "type"),
        );
        let vd = col("value_double");
        let vd = vd.as_primitive::<Float64Type>();
        let vi = col("value_int");
        let vi = vi.as_primitive::<Int64Type>();
        let vu = col("value_uint");
        let vu = vu.as_primitive::<UInt64Type>();
        let vb = col("value_bool");
        let vb = vb.as_boolean();
        let vs = strings(&b, "value_string");
        let vt = col("value_time");
        let vt = vt.as_primitive::<TimestampMicrosecondType>();
        let vby = col("value_bytes");
        let vby = vby.as_binary::<i32>();
        let vj = strings(&b, "value_json");
        let origin = b
            .column_by_name("origin")
            .map(|_| strings(&b, "origin"))
            .unwrap_or_else(|| vec![None; n]);
        for i in 0..n {
            let value = if vd.is_valid(i) {
                Val::Double(vd.value(i))
            } else if vi.is_valid(i) {
                Val::Int(vi.value(i))
            } else if vu.is_valid(i) {
                Val::UInt(vu.value(i))
            } else if vb.is_valid(i) {
                Val::Bool(vb.value(i))
            } else if let Some(s) = &vs[i] {
                Val::Str(s.clone())
            } else if vt.is_valid(i) {
                Val::Time(vt.value(i))
            } else if vby.is_valid(i) {
                Val::Bytes(vby.value(i).to_vec())
            } else if let Some(j) = &vj[i] {
                Val::Json(j.clone())
            } else {
                Val::Null
            };
            rows.push(Row {
                time: time.value(i),
                server_time: server.is_valid(i).then(|| server.value(i)),
                line: line.clone(),
                plc: plc[i].clone().unwrap_or_default(),
                group: group[i].clone().unwrap_or_default(),
                node: node[i].clone().unwrap_or_default(),
                name: name[i].clone().unwrap_or_default(),
                type_name: ty[i].clone().unwrap_or_default(),
                status: status.value(i),
                value,
                origin: origin[i].clone().unwrap_or_else(|| "live".to_owned()),
            });
        }
    }
    rows
}

pub fn read_all(dir: &Path) -> Vec<Row> {
    parquet_files(dir)
        .iter()
        .flat_map(|p| read_file(p))
        .collect()
}

/// Values of one node in one group, sorted by time.
pub fn series(rows: &[Row], group: &str, node: &str) -> Vec<Row> {
    let mut v: Vec<Row> = rows
        .iter()
        .filter(|r| r.group == group && r.node == node)
        .cloned()
        .collect();
    v.sort_by_key(|r| r.time);
    v
}

/// Gaps and duplicates of an integer counter series (values must step by +1; a reset to
/// the start value is allowed when `allow_reset`).
pub fn counter_defects(values: &[i128]) -> (usize, usize) {
    let (mut gaps, mut dups) = (0, 0);
    for w in values.windows(2) {
        match w[1] - w[0] {
            1 => {}
            0 => dups += 1,
            _ => gaps += 1,
        }
    }
    (gaps, dups)
}

/// Groups rows by node for quick lookups.
pub fn by_node(rows: &[Row]) -> BTreeMap<String, Vec<Row>> {
    let mut m: BTreeMap<String, Vec<Row>> = BTreeMap::new();
    for r in rows {
        m.entry(r.node.clone()).or_default().push(r.clone());
    }
    m
}
