use std::collections::BTreeMap;
use std::fs::{self, File};
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use ::parquet::basic::Encoding;
use arrow_array::cast::AsArray;
use arrow_array::types::{
    Float64Type, Int32Type, Int64Type, TimestampMicrosecondType, UInt32Type, UInt64Type,
};
use arrow_array::{Array, RecordBatch};

use super::schema::{self as s, schema};
use super::sink::{chunk_file_name, parse_chunk_name, temp_file_name};
use super::{ParquetError, ParquetSink};
use crate::config::{Compression, Line, ParquetSinkConfig};
use crate::sample::{Item, Sample, SampleValue, TypeName};

const PLC: &str = "filler";

fn config(dir: &Path, roll_rows: usize) -> ParquetSinkConfig {
    ParquetSinkConfig {
        dir: dir.to_owned(),
        compression: Compression::Zstd { level: 3 },
        roll_rows: NonZeroUsize::new(roll_rows).unwrap(),
        roll_bytes: 128 * 1024 * 1024,
        roll_interval: Duration::from_secs(300),
        queue_samples: NonZeroUsize::new(10_000).unwrap(),
        retention: crate::config::ParquetRetention::default(),
    }
}

fn line() -> Line {
    Line {
        id: "line-a".into(),
        site: Some("plant-1".into()),
    }
}

fn us(rfc3339: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(rfc3339)
        .unwrap()
        .timestamp_micros()
}

fn item(group: &str, tag: &str) -> Arc<Item> {
    Arc::new(Item {
        plc: PLC.into(),
        group: group.into(),
        node: format!("nsu=urn:opcua-connector:test;s=Filler.{tag}").into(),
        name: format!("Filler.{tag}").into(),
    })
}

fn ty(builtin: u8, array: bool) -> TypeName {
    TypeName { builtin, array }
}

fn sample(
    group: &str,
    tag: &str,
    t: i64,
    server: Option<i64>,
    status: u32,
    type_name: TypeName,
    value: SampleValue,
) -> Sample {
    Sample {
        item: item(group, tag),
        time_us: t,
        server_time_us: server,
        status,
        type_name,
        value,
    }
}

/// 13 samples, every value kind; the first 7 on 2026-11-26, the rest on 2026-11-27.
/// `tests/interop/test_parquet_readers.py` checks the same values: keep both in step.
fn fixture_samples() -> Vec<Sample> {
    let d1 = us("2026-11-26T23:59:58.000001Z");
    let d2 = us("2026-11-27T00:00:00.000123Z");
    use SampleValue as V;
    vec![
        sample(
            "fast",
            "Speed",
            d1,
            Some(d1 + 250),
            0,
            ty(11, false),
            V::Double(1.5),
        ),
        sample(
            "fast",
            "Nan",
            d1 + 100_123,
            Some(d1 + 100_200),
            0,
            ty(11, false),
            V::Double(f64::NAN),
        ),
        sample(
            "fast",
            "PosInf",
            d1 + 200_000,
            Some(d1 + 200_001),
            0,
            ty(11, false),
            V::Double(f64::INFINITY),
        ),
        sample(
            "fast",
            "NegInf",
            d1 + 300_000,
            None,
            0x4000_0000,
            ty(10, false),
            V::Double(f64::NEG_INFINITY),
        ),
        sample(
            "fast",
            "BigInt",
            d1 + 400_000,
            Some(d1 + 400_000),
            0,
            ty(8, false),
            V::Int(-5_000_000_000),
        ),
        sample(
            "fast",
            "MaxUInt",
            d1 + 500_000,
            Some(d1 + 500_000),
            0,
            ty(9, false),
            V::UInt(u64::MAX),
        ),
        sample(
            "fast",
            "HalfUInt",
            d1 + 600_000,
            Some(d1 + 600_000),
            0,
            ty(9, false),
            V::UInt(1 << 63),
        ),
        sample(
            "slow",
            "Running",
            d2,
            Some(d2 + 1),
            0,
            ty(1, false),
            V::Bool(true),
        ),
        sample(
            "slow",
            "Recipe",
            d2 + 1,
            Some(d2 + 2),
            0,
            ty(12, false),
            V::String("Cola 0,5 l – ✓".into()),
        ),
        sample(
            "slow",
            "LastCip",
            d2 + 2,
            Some(d2 + 3),
            0,
            ty(13, false),
            V::Time(us("2026-11-20T12:34:56.789012Z")),
        ),
        sample(
            "slow",
            "Serial",
            d2 + 3,
            Some(d2 + 4),
            0,
            ty(15, false),
            V::Bytes(vec![0x00, 0xff, 0x10, 0x80]),
        ),
        sample(
            "slow",
            "Temps",
            d2 + 4,
            Some(d2 + 5),
            0,
            ty(11, true),
            V::Json("[1.5,2.5,3]".into()),
        ),
        sample(
            "slow",
            "Missing",
            d2 + 5,
            None,
            0x8034_0000,
            TypeName::NULL,
            V::Null,
        ),
    ]
}

/// Every `*.parquet` file under `dir`, sorted by path.
fn parquet_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
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

fn all_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn read_batches(path: &Path) -> Vec<RecordBatch> {
    let builder = ParquetRecordBatchReaderBuilder::try_new(File::open(path).unwrap()).unwrap();
    // Names, types (incl. time zone and dictionary) and nullability; the reader adds the footer
    // metadata and dictionary ids.
    let shape = |s: &arrow_schema::Schema| -> Vec<(String, arrow_schema::DataType, bool)> {
        s.fields()
            .iter()
            .map(|f| (f.name().clone(), f.data_type().clone(), f.is_nullable()))
            .collect()
    };
    assert_eq!(
        shape(builder.schema()),
        shape(&schema()),
        "schema of {}",
        path.display()
    );
    builder.build().unwrap().map(|b| b.unwrap()).collect()
}

fn footer(path: &Path) -> BTreeMap<String, String> {
    let builder = ParquetRecordBatchReaderBuilder::try_new(File::open(path).unwrap()).unwrap();
    builder
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .unwrap()
        .iter()
        .map(|kv| (kv.key.clone(), kv.value.clone().unwrap_or_default()))
        .collect()
}

fn file_name(p: &Path) -> String {
    p.file_name().unwrap().to_str().unwrap().to_owned()
}

fn dict_value(batch: &RecordBatch, col: &str, row: usize) -> String {
    let d = batch
        .column_by_name(col)
        .unwrap()
        .as_dictionary::<Int32Type>();
    let values = d.values().as_string::<i32>();
    values.value(d.keys().value(row) as usize).to_owned()
}

/// Asserts that `batch` holds exactly `expected`, column by column.
fn assert_rows(batch: &RecordBatch, expected: &[Sample]) {
    assert_eq!(batch.num_rows(), expected.len());
    let col = |name: &str| batch.column_by_name(name).unwrap().clone();
    let time = col(s::COL_TIME);
    let time = time.as_primitive::<TimestampMicrosecondType>();
    let server = col(s::COL_SERVER_TIME);
    let server = server.as_primitive::<TimestampMicrosecondType>();
    let status = col(s::COL_STATUS);
    let status = status.as_primitive::<UInt32Type>();
    let double = col(s::COL_VALUE_DOUBLE);
    let double = double.as_primitive::<Float64Type>();
    let int = col(s::COL_VALUE_INT);
    let int = int.as_primitive::<Int64Type>();
    let uint = col(s::COL_VALUE_UINT);
    let uint = uint.as_primitive::<UInt64Type>();
    let boolean = col(s::COL_VALUE_BOOL);
    let boolean = boolean.as_boolean();
    let string = col(s::COL_VALUE_STRING);
    let string = string.as_string::<i32>();
    let vtime = col(s::COL_VALUE_TIME);
    let vtime = vtime.as_primitive::<TimestampMicrosecondType>();
    let bytes = col(s::COL_VALUE_BYTES);
    let bytes = bytes.as_binary::<i32>();
    let json = col(s::COL_VALUE_JSON);
    let json = json.as_string::<i32>();

    for (row, exp) in expected.iter().enumerate() {
        let ctx = format!("row {row} ({})", exp.item.name);
        assert_eq!(time.value(row), exp.time_us, "{ctx}");
        assert_eq!(
            server.is_valid(row).then(|| server.value(row)),
            exp.server_time_us,
            "{ctx}"
        );
        assert_eq!(dict_value(batch, s::COL_PLC, row), &*exp.item.plc, "{ctx}");
        assert_eq!(
            dict_value(batch, s::COL_GROUP, row),
            &*exp.item.group,
            "{ctx}"
        );
        assert_eq!(
            dict_value(batch, s::COL_NODE, row),
            &*exp.item.node,
            "{ctx}"
        );
        assert_eq!(
            dict_value(batch, s::COL_NAME, row),
            &*exp.item.name,
            "{ctx}"
        );
        assert_eq!(
            dict_value(batch, s::COL_TYPE, row),
            exp.type_name.to_string(),
            "{ctx}"
        );
        assert_eq!(status.value(row), exp.status, "{ctx}");

        let valid = [
            double.is_valid(row),
            int.is_valid(row),
            uint.is_valid(row),
            boolean.is_valid(row),
            string.is_valid(row),
            vtime.is_valid(row),
            bytes.is_valid(row),
            json.is_valid(row),
        ];
        let filled = valid.iter().filter(|v| **v).count();
        match &exp.value {
            SampleValue::Null => assert_eq!(filled, 0, "{ctx}"),
            _ => assert_eq!(filled, 1, "{ctx}: exactly one value column"),
        }
        match &exp.value {
            SampleValue::Null => {}
            SampleValue::Double(v) => {
                assert!(valid[0], "{ctx}");
                assert_eq!(double.value(row).to_bits(), v.to_bits(), "{ctx}");
            }
            SampleValue::Int(v) => assert!(valid[1] && int.value(row) == *v, "{ctx}"),
            SampleValue::UInt(v) => assert!(valid[2] && uint.value(row) == *v, "{ctx}"),
            SampleValue::Bool(v) => assert!(valid[3] && boolean.value(row) == *v, "{ctx}"),
            SampleValue::String(v) => assert!(valid[4] && string.value(row) == v, "{ctx}"),
            SampleValue::Time(v) => assert!(valid[5] && vtime.value(row) == *v, "{ctx}"),
            SampleValue::Bytes(v) => assert!(valid[6] && bytes.value(row) == v.as_slice(), "{ctx}"),
            SampleValue::Json(v) => assert!(valid[7] && json.value(row) == v, "{ctx}"),
        }
    }
}

#[test]
fn round_trips_every_value_kind() {
    let dir = tempfile::tempdir().unwrap();
    let samples = fixture_samples();
    let mut sink = ParquetSink::new(config(dir.path(), 1_000), line(), PLC).unwrap();
    sink.write(&samples).unwrap();
    let info = sink.close().unwrap().expect("one chunk");
    assert_eq!(info.rows, samples.len() as u64);
    assert_eq!(info.bytes, fs::metadata(&info.path).unwrap().len());

    let files = parquet_files(dir.path());
    assert_eq!(files, vec![info.path.clone()]);
    let batches = read_batches(&info.path);
    assert_eq!(batches.len(), 1);
    let batch = &batches[0];
    // Exact Arrow types, incl. the UTC time zone and the dictionary columns.
    let sch = batch.schema();
    for name in [s::COL_TIME, s::COL_SERVER_TIME, s::COL_VALUE_TIME] {
        assert_eq!(
            sch.field_with_name(name).unwrap().data_type().to_string(),
            "Timestamp(µs, \"UTC\")"
        );
    }
    assert!(!sch.field_with_name(s::COL_TIME).unwrap().is_nullable());
    for name in s::DICTIONARY_COLUMNS {
        let f = sch.field_with_name(name).unwrap();
        assert_eq!(
            f.data_type().to_string(),
            "Dictionary(Int32, Utf8)",
            "{name}"
        );
        assert!(!f.is_nullable(), "{name}");
    }
    // No column is named like a Hive partition key (schema v2): readers take `line` and `date`
    // from the path.
    for key in [s::PARTITION_LINE, s::PARTITION_DATE] {
        assert!(sch.field_with_name(key).is_err(), "{key}");
    }
    assert_eq!(sch.fields().len(), 16);
    assert_rows(batch, &samples);

    let stats = sink.stats();
    assert_eq!(stats.rows_written, 13);
    assert_eq!(stats.chunks_written, 1);
    assert_eq!(stats.bytes_written, info.bytes);
    assert_eq!(stats.rows_open, 0);
    assert_eq!(stats.last_chunk, Some(info));
}

#[test]
fn uses_the_tuned_encodings_and_statistics() {
    let dir = tempfile::tempdir().unwrap();
    let mut sink = ParquetSink::new(config(dir.path(), 1_000), line(), PLC).unwrap();
    sink.write(&fixture_samples()).unwrap();
    let info = sink.close().unwrap().unwrap();
    let builder =
        ParquetRecordBatchReaderBuilder::try_new(File::open(&info.path).unwrap()).unwrap();
    let meta = builder.metadata();
    assert_eq!(meta.file_metadata().version(), 2);
    let rg = meta.row_group(0);
    let encodings = |name: &str| -> Vec<Encoding> {
        let c = rg
            .columns()
            .iter()
            .find(|c| c.column_path().string() == name)
            .unwrap();
        assert!(c.statistics().is_some(), "statistics of {name}");
        c.encodings().collect()
    };
    for name in [
        "time",
        "server_time",
        "status",
        "value_int",
        "value_uint",
        "value_time",
    ] {
        assert!(
            encodings(name).contains(&Encoding::DELTA_BINARY_PACKED),
            "{name}: {:?}",
            encodings(name)
        );
    }
    assert!(encodings("value_double").contains(&Encoding::BYTE_STREAM_SPLIT));
    for name in ["plc", "group", "node", "name", "type", "value_string"] {
        assert!(
            encodings(name).contains(&Encoding::RLE_DICTIONARY),
            "{name}: {:?}",
            encodings(name)
        );
    }
    for name in ["value_bytes", "value_json"] {
        assert!(
            !encodings(name).contains(&Encoding::RLE_DICTIONARY),
            "{name}"
        );
    }
    assert!(rg
        .columns()
        .iter()
        .all(|c| c.compression().to_string().starts_with("ZSTD")));
}

/// Writes the fixture chunks that `tests/interop/test_parquet_readers.py` reads with pyarrow and
/// DuckDB: into `$PARQUET_FIXTURE_DIR` when set, else into a temporary directory.
#[test]
fn writes_reader_fixture() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = match std::env::var_os("PARQUET_FIXTURE_DIR") {
        Some(d) => PathBuf::from(d),
        None => tmp.path().to_owned(),
    };
    assert!(
        fs::read_dir(&dir).map_or(true, |mut d| d.next().is_none()),
        "the fixture directory {} must be empty or absent",
        dir.display()
    );
    let samples = fixture_samples();
    let mut sink = ParquetSink::new(config(&dir, 7), line(), PLC).unwrap();
    sink.write(&samples).unwrap();
    sink.close().unwrap();

    let files = parquet_files(&dir);
    let rel: Vec<String> = files
        .iter()
        .map(|p| p.strip_prefix(&dir).unwrap().to_str().unwrap().to_owned())
        .collect();
    assert_eq!(rel.len(), 2, "{rel:?}");
    assert!(
        rel[0].starts_with("line=line-a/date=2026-11-26/filler-20261126T235958Z-"),
        "{rel:?}"
    );
    assert!(
        rel[1].starts_with("line=line-a/date=2026-11-27/filler-20261127T000000Z-"),
        "{rel:?}"
    );
    let first = read_batches(&files[0]);
    let second = read_batches(&files[1]);
    assert_rows(&first[0], &samples[..7]);
    assert_rows(&second[0], &samples[7..]);
    assert_eq!(all_files(&dir), files, "no temporary files left");
}

#[test]
fn footer_metadata_present() {
    let dir = tempfile::tempdir().unwrap();
    let mut sink = ParquetSink::new(config(dir.path(), 1_000), line(), PLC).unwrap();
    sink.write(&fixture_samples()).unwrap();
    let info = sink.close().unwrap().unwrap();
    let kv = footer(&info.path);
    assert_eq!(kv[s::META_SCHEMA_VERSION], "2");
    assert_eq!(kv[s::META_LINE], "line-a");
    assert_eq!(kv[s::META_SITE], "plant-1");
    assert_eq!(kv[s::META_PLC], "filler");
    assert_eq!(kv[s::META_CONNECTOR_VERSION], env!("CARGO_PKG_VERSION"));
    assert_eq!(kv[s::META_FIRST_TIME], "2026-11-26T23:59:58.000001Z");
    assert_eq!(kv[s::META_LAST_TIME], "2026-11-27T00:00:00.000128Z");
    assert!(kv.contains_key("ARROW:schema"));

    // Without a site the key is absent.
    let dir = tempfile::tempdir().unwrap();
    let no_site = Line {
        id: "line-b".into(),
        site: None,
    };
    let mut sink = ParquetSink::new(config(dir.path(), 1_000), no_site, PLC).unwrap();
    sink.write(&fixture_samples()[..1]).unwrap();
    let info = sink.close().unwrap().unwrap();
    let kv = footer(&info.path);
    assert!(!kv.contains_key(s::META_SITE));
    assert_eq!(kv[s::META_LINE], "line-b");
}

/// Samples of one node at 1 s steps starting at 2026-11-26T10:00:00Z.
fn seconds(n: usize) -> Vec<Sample> {
    let it = item("fast", "Counter");
    let t0 = us("2026-11-26T10:00:00Z");
    (0..n)
        .map(|i| Sample {
            item: it.clone(),
            time_us: t0 + i as i64 * 1_000_000,
            server_time_us: None,
            status: 0,
            type_name: ty(6, false),
            value: SampleValue::Int(i as i64),
        })
        .collect()
}

fn assert_increasing_names(files: &[PathBuf]) {
    let names: Vec<String> = files.iter().map(|p| file_name(p)).collect();
    let mut sorted = names.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(names, sorted, "names are unique and sort in write order");
}

#[test]
fn rolls_by_rows() {
    let dir = tempfile::tempdir().unwrap();
    let mut sink = ParquetSink::new(config(dir.path(), 10), line(), PLC)
        .unwrap()
        .with_batch_rows(4);
    let samples = seconds(35);
    // Several calls of odd sizes: rolling does not depend on call boundaries.
    for part in samples.chunks(6) {
        sink.write(part).unwrap();
    }
    assert_eq!(parquet_files(dir.path()).len(), 3);
    assert_eq!(sink.stats().rows_open, 5);
    sink.close().unwrap().unwrap();

    let files = parquet_files(dir.path());
    assert_eq!(files.len(), 4);
    assert_increasing_names(&files);
    let seqs: Vec<u64> = files
        .iter()
        .map(|p| parse_chunk_name(PLC, &file_name(p)).unwrap())
        .collect();
    assert_eq!(seqs, vec![1, 2, 3, 4]);
    assert_eq!(
        file_name(&files[1]),
        "filler-20261126T100010Z-000002.parquet",
        "named by the chunk's first sample"
    );
    let rows: Vec<usize> = files
        .iter()
        .map(|f| read_batches(f).iter().map(|b| b.num_rows()).sum())
        .collect();
    assert_eq!(rows, vec![10, 10, 10, 5]);
    let stats = sink.stats();
    assert_eq!((stats.rows_written, stats.chunks_written), (35, 4));
}

#[test]
fn rolls_by_interval() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 1_000_000);
    cfg.roll_interval = Duration::from_secs(60);
    let mut sink = ParquetSink::new(cfg, line(), PLC).unwrap();
    let samples = seconds(30);
    let mut rolled = Vec::new();
    for (i, part) in samples.chunks(10).enumerate() {
        sink.write(part).unwrap();
        let now = SystemTime::now();
        assert_eq!(sink.tick(now).unwrap(), None, "not yet due");
        // The caller's clock says a minute and a bit has passed.
        let info = sink
            .tick(now + Duration::from_secs(61))
            .unwrap()
            .expect("rolled");
        assert_eq!(info.rows, 10, "part {i}");
        rolled.push(info.path);
    }
    assert_eq!(
        sink.tick(SystemTime::now() + Duration::from_secs(3600))
            .unwrap(),
        None
    );
    assert_eq!(sink.close().unwrap(), None);
    let files = parquet_files(dir.path());
    assert_eq!(files, rolled);
    assert_eq!(files.len(), 3);
    assert_increasing_names(&files);
}

#[test]
fn rolls_by_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 1_000_000);
    cfg.roll_bytes = 16 * 1024;
    cfg.compression = Compression::None;
    let mut sink = ParquetSink::new(cfg, line(), PLC)
        .unwrap()
        .with_batch_rows(512);
    let it = item("fast", "Serial");
    let mut rng = Rng(42);
    let samples: Vec<Sample> = (0..8_000u64)
        .map(|i| Sample {
            item: it.clone(),
            time_us: us("2026-11-26T10:00:00Z") + i as i64,
            server_time_us: None,
            status: 0,
            type_name: ty(9, false),
            value: SampleValue::UInt(rng.next()), // incompressible
        })
        .collect();
    sink.write(&samples).unwrap();
    sink.close().unwrap();
    let files = parquet_files(dir.path());
    let sizes: Vec<u64> = files
        .iter()
        .map(|f| fs::metadata(f).unwrap().len())
        .collect();
    assert!(files.len() >= 3, "{sizes:?}");
    assert_increasing_names(&files);
    // A chunk rolls at the first batch boundary where the estimate reaches the limit; the
    // estimate trails the encoder by up to about one batch.
    let full = &sizes[..sizes.len() - 1];
    assert!(
        full.iter().all(|len| (16 * 1024..40 * 1024).contains(len)),
        "{sizes:?}"
    );
    assert_eq!(sink.stats().rows_written, 8_000);
}

#[test]
fn open_chunk_is_a_hidden_temporary_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut sink = ParquetSink::new(config(dir.path(), 1_000), line(), PLC)
        .unwrap()
        .with_batch_rows(2);
    sink.write(&seconds(5)).unwrap();
    assert!(
        parquet_files(dir.path()).is_empty(),
        "nothing visible while the chunk is open"
    );
    let files = all_files(dir.path());
    assert_eq!(files.len(), 1);
    let name = file_name(&files[0]);
    assert_eq!(name, ".filler-20261126T100000Z-000001.parquet.tmp");
    assert_eq!(
        sink.open_chunk_path().unwrap(),
        files[0].with_file_name("filler-20261126T100000Z-000001.parquet")
    );
    sink.close().unwrap();
    assert_eq!(all_files(dir.path()), parquet_files(dir.path()));
}

#[test]
fn removes_leftover_temporary_files_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let part = dir.path().join("line=line-a/date=2026-11-26");
    fs::create_dir_all(&part).unwrap();
    let stale = part.join(temp_file_name("filler-20261126T100000Z-000007.parquet"));
    let other_plc = part.join(temp_file_name("capper-20261126T100000Z-000001.parquet"));
    let done = part.join("filler-20261126T090000Z-000006.parquet");
    fs::write(&stale, b"PAR1 half a chunk").unwrap();
    fs::write(&other_plc, b"PAR1 another sink's chunk").unwrap();
    fs::write(&done, b"complete").unwrap();
    assert!(!file_name(&stale).ends_with(".parquet") && file_name(&stale).starts_with('.'));

    let mut sink = ParquetSink::new(config(dir.path(), 1_000), line(), PLC).unwrap();
    assert_eq!(sink.stats().temp_files_removed, 1);
    assert!(!stale.exists());
    assert!(
        other_plc.exists(),
        "another plc's files are its own sink's business"
    );
    assert!(done.exists());

    // The sequence continues after the temporary file's number too.
    sink.write(&seconds(1)).unwrap();
    let info = sink.close().unwrap().unwrap();
    assert_eq!(
        file_name(&info.path),
        "filler-20261126T100000Z-000007.parquet"
    );
}

#[test]
fn names_continue_the_sequence_after_existing_files() {
    let dir = tempfile::tempdir().unwrap();
    let part = dir.path().join("line=line-a/date=2026-11-26");
    fs::create_dir_all(&part).unwrap();
    fs::write(part.join("filler-20261126T080000Z-000041.parquet"), b"x").unwrap();
    fs::write(part.join("filler-20261126T070000Z-000040.parquet"), b"x").unwrap();
    // Other plcs (even one whose id starts with ours) and unrelated files do not count.
    fs::write(part.join("filler-2-20261126T080000Z-000099.parquet"), b"x").unwrap();
    fs::write(part.join("capper-20261126T080000Z-000500.parquet"), b"x").unwrap();
    fs::write(part.join("filler-notes-000777.parquet"), b"x").unwrap();

    let mut sink = ParquetSink::new(config(dir.path(), 3), line(), PLC).unwrap();
    sink.write(&seconds(7)).unwrap();
    sink.close().unwrap();
    let mine: Vec<String> = parquet_files(dir.path())
        .iter()
        .map(|p| file_name(p))
        .filter(|n| parse_chunk_name(PLC, n).is_some())
        .collect();
    assert_eq!(
        mine,
        vec![
            "filler-20261126T070000Z-000040.parquet",
            "filler-20261126T080000Z-000041.parquet",
            "filler-20261126T100000Z-000042.parquet",
            "filler-20261126T100003Z-000043.parquet",
            "filler-20261126T100006Z-000044.parquet",
        ]
    );

    // A restarted sink continues as well.
    let mut sink = ParquetSink::new(config(dir.path(), 3), line(), PLC).unwrap();
    sink.write(&seconds(1)).unwrap();
    let info = sink.close().unwrap().unwrap();
    assert_eq!(
        file_name(&info.path),
        "filler-20261126T100000Z-000045.parquet"
    );
}

#[test]
fn chunk_names_parse_strictly() {
    let t = chrono::DateTime::from_timestamp_micros(us("2026-11-26T03:12:00Z")).unwrap();
    let name = chunk_file_name("filler", t, 42);
    assert_eq!(name, "filler-20261126T031200Z-000042.parquet");
    assert_eq!(parse_chunk_name("filler", &name), Some(42));
    assert_eq!(
        parse_chunk_name("filler", "filler-20261126T031200Z-1234567.parquet"),
        Some(1_234_567)
    );
    assert_eq!(parse_chunk_name("fill", &name), None);
    assert_eq!(
        parse_chunk_name("filler", "filler-20261126T031200Z-.parquet"),
        None
    );
    assert_eq!(
        parse_chunk_name("filler", "filler-20261126X031200Z-000001.parquet"),
        None
    );
    assert_eq!(
        parse_chunk_name("filler", "filler-20261126T031200Z-000001.parquet.tmp"),
        None
    );
}

#[test]
fn rejects_ids_unfit_for_paths() {
    let dir = tempfile::tempdir().unwrap();
    for bad in ["", "_hidden", ".hidden", "a/b", "..", "a b", "line=x"] {
        let err = ParquetSink::new(config(dir.path(), 10), line(), bad).unwrap_err();
        assert!(matches!(err, ParquetError::Config(_)), "{bad:?}: {err}");
    }
    let err = ParquetSink::new(
        config(dir.path(), 10),
        Line {
            id: "a/../b".into(),
            site: None,
        },
        PLC,
    )
    .unwrap_err();
    assert!(err.to_string().contains("line id"), "{err}");
}

#[test]
fn errors_name_the_operation_and_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("data");
    fs::write(&blocker, b"a file where the data directory should be").unwrap();
    let err = ParquetSink::new(config(&blocker, 10), line(), PLC).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!("cannot create directory {}: ", blocker.display())),
        "{msg}"
    );

    let err = ParquetSink::new(
        ParquetSinkConfig {
            compression: Compression::Zstd { level: 99 },
            ..config(dir.path(), 10)
        },
        line(),
        PLC,
    )
    .unwrap_err();
    assert!(err.to_string().contains("zstd level 99"), "{err}");

    // A chunk that cannot be created: the partition path is taken by a file.
    let mut sink = ParquetSink::new(config(dir.path(), 10), line(), PLC).unwrap();
    fs::write(
        dir.path().join("line=line-a/date=2026-11-26"),
        b"not a directory",
    )
    .unwrap();
    let err = sink.write(&seconds(3)).unwrap_err();
    let msg = err.to_string();
    assert!(msg.starts_with("cannot create directory "), "{msg}");
    assert!(msg.contains("date=2026-11-26"), "{msg}");
    assert_eq!(sink.stats().rows_discarded, 3);
    assert_eq!(sink.close().unwrap(), None);
}

#[test]
fn every_compression_is_readable() {
    for compression in [
        Compression::Zstd { level: 1 },
        Compression::Snappy,
        Compression::Gzip,
        Compression::None,
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = ParquetSink::new(
            ParquetSinkConfig {
                compression,
                ..config(dir.path(), 1_000)
            },
            line(),
            PLC,
        )
        .unwrap();
        let samples = fixture_samples();
        sink.write(&samples).unwrap();
        let info = sink.close().unwrap().unwrap();
        assert_rows(&read_batches(&info.path)[0], &samples);
    }
}

/// Deterministic xorshift64* generator for the benchmark data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in [-1, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 52) as f64 - 1.0
    }
}

/// How the generated source data looks.
#[derive(Clone, Copy, Debug)]
enum Profile {
    /// Full-precision `Double` noise and µs-resolution jitter: close to incompressible.
    Worst,
    /// PLC-typical: analog values are `Float` (REAL, f32 precision) and source timestamps have
    /// ms resolution.
    Plc,
}

/// `cycles` × 1000 samples of a packaging-line-like profile: 1000 nodes sampled every 100 ms
/// with ±3 ms jitter on the source timestamps, the server timestamp shared by one publish
/// cycle; 450 noisy sines, 300 counters, 200 booleans that rarely change, 50 state strings.
/// Rows arrive in publish order (all nodes of a cycle, then the next cycle).
fn realistic_samples(cycles: usize, profile: Profile) -> Vec<Sample> {
    let mut rng = Rng(0x5eed_1234_abcd_ef01);
    let items: Vec<Arc<Item>> = (0..1000)
        .map(|i| {
            let group = ["fast", "slow", "states"][i % 3];
            Arc::new(Item {
                plc: PLC.into(),
                group: group.into(),
                node: format!("nsu=urn:opcua-connector:bottling-line;s=Line.Tag{i:04}").into(),
                name: format!("Line.Tag{i:04}").into(),
            })
        })
        .collect();
    let states = ["Running", "Idle", "Stopped", "Fault"];
    let mut counters: Vec<i64> = (0..300).map(|i| i * 1000).collect();
    let mut bools = [false; 200];
    let mut state = [0usize; 50];
    let t0 = us("2026-11-26T10:00:00Z");
    let mut out = Vec::with_capacity(cycles * 1000);
    for c in 0..cycles {
        let cycle_t = t0 + c as i64 * 100_000;
        let server = cycle_t + 8_000 + (rng.next() % 2_000) as i64;
        for (i, it) in items.iter().enumerate() {
            let jitter = match profile {
                Profile::Worst => (rng.next() % 6_001) as i64 - 3_000,
                Profile::Plc => ((rng.next() % 7) as i64 - 3) * 1_000,
            };
            let (type_name, value) = match i {
                0..=449 => {
                    let phase = i as f64 * 0.37;
                    let amp = 10.0 + (i % 17) as f64 * 25.0;
                    let x = (c as f64 * 0.05 + phase).sin() * amp + rng.unit() * amp * 0.01;
                    match profile {
                        Profile::Worst => (ty(11, false), SampleValue::Double(x)),
                        Profile::Plc => (ty(10, false), SampleValue::Double(f64::from(x as f32))),
                    }
                }
                450..=749 => {
                    let k = i - 450;
                    counters[k] += (rng.next() % 3) as i64;
                    (ty(6, false), SampleValue::Int(counters[k]))
                }
                750..=949 => {
                    let k = i - 750;
                    if rng.next().is_multiple_of(100) {
                        bools[k] = !bools[k];
                    }
                    (ty(1, false), SampleValue::Bool(bools[k]))
                }
                _ => {
                    let k = i - 950;
                    if rng.next().is_multiple_of(200) {
                        state[k] = (state[k] + 1) % states.len();
                    }
                    (ty(12, false), SampleValue::String(states[state[k]].into()))
                }
            };
            out.push(Sample {
                item: it.clone(),
                time_us: cycle_t + jitter,
                server_time_us: Some(server),
                status: 0,
                type_name,
                value,
            });
        }
    }
    out
}

/// Not a speed benchmark: measures bytes/sample of 200k realistic samples (printed with
/// `--nocapture`) and bounds it loosely.
#[test]
fn realistic_bytes_per_sample() {
    for profile in [Profile::Worst, Profile::Plc] {
        let samples = realistic_samples(200, profile);
        assert_eq!(samples.len(), 200_000);
        let dir = tempfile::tempdir().unwrap();
        let started = std::time::Instant::now();
        let mut sink = ParquetSink::new(config(dir.path(), 1_000_000), line(), PLC).unwrap();
        for part in samples.chunks(1_000) {
            sink.write(part).unwrap();
        }
        let info = sink.close().unwrap().unwrap();
        let elapsed = started.elapsed();
        assert_eq!(info.rows, 200_000);
        let per_sample = info.bytes as f64 / info.rows as f64;
        let reader =
            ParquetRecordBatchReaderBuilder::try_new(File::open(&info.path).unwrap()).unwrap();
        let mut per_column = BTreeMap::<String, i64>::new();
        for rg in reader.metadata().row_groups() {
            for c in rg.columns() {
                *per_column.entry(c.column_path().string()).or_default() += c.compressed_size();
            }
        }
        let breakdown: Vec<String> = per_column
            .iter()
            .filter(|(_, v)| **v as f64 / info.rows as f64 >= 0.005)
            .map(|(k, v)| format!("{k} {:.2}", *v as f64 / info.rows as f64))
            .collect();
        eprintln!(
            "parquet bytes/sample, profile {profile:?}: {per_sample:.2} ({} samples, {} bytes, \
             zstd 3, written in {elapsed:?}, connector crate unoptimised); by column: {}",
            info.rows,
            info.bytes,
            breakdown.join(", ")
        );
        assert!(
            per_sample < 8.0,
            "{profile:?}: {per_sample:.2} bytes/sample"
        );
    }
}
