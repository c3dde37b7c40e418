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

mod midnight;
mod rolling;
mod size;

const PLC: &str = "filler";

fn config(dir: &Path, roll_rows: usize) -> ParquetSinkConfig {
    ParquetSinkConfig {
        dir: dir.to_owned(),
        events_dir: dir.join("..").join("events"),
        compression: Compression::Zstd { level: 3 },
        roll_rows: NonZeroUsize::new(roll_rows).unwrap(),
        roll_bytes: 128 * 1024 * 1024,
        roll_interval: Duration::from_secs(300),
        queue_samples: NonZeroUsize::new(10_000).unwrap(),
        retention: crate::config::ParquetRetention::default(),
        upload: None,
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
    TypeName::builtin(builtin, array)
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
        origin: crate::sample::Origin::Live,
    }
}

/// Rows of [`fixture_samples`] on its first day.
const FIXTURE_FIRST_DAY_ROWS: usize = 7;

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
            SampleValue::Event(_) => panic!("{ctx}: an event among the sample rows"),
        }
    }
}

#[test]
fn round_trips_every_value_kind() {
    let dir = tempfile::tempdir().unwrap();
    let samples = fixture_samples();
    let mut sink = ParquetSink::new(config(dir.path(), 1_000), line(), PLC).unwrap();
    sink.write(&samples).unwrap();
    let info = sink.close().unwrap().expect("a chunk");
    // One chunk per UTC day; close() names the one written last.
    let (day1, day2) = samples.split_at(FIXTURE_FIRST_DAY_ROWS);
    let files = parquet_files(dir.path());
    assert_eq!(files.len(), 2, "{files:?}");
    assert_eq!(info.path, files[1]);
    assert_eq!(info.rows, day2.len() as u64);
    assert_eq!(info.bytes, fs::metadata(&info.path).unwrap().len());
    let batches = read_batches(&files[1]);
    assert_eq!(batches.len(), 1);
    assert_rows(&batches[0], day2);
    let batches = read_batches(&files[0]);
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
    assert_eq!(sch.fields().len(), 17);
    assert_rows(batch, day1);

    let stats = sink.stats();
    assert_eq!(stats.rows_written, 13);
    assert_eq!(stats.chunks_written, 2);
    let bytes: u64 = files.iter().map(|f| fs::metadata(f).unwrap().len()).sum();
    assert_eq!(stats.bytes_written, bytes);
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
    // Rolled by the UTC midnight the samples span, not by rows.
    let mut sink = ParquetSink::new(config(&dir, 1_000), line(), PLC).unwrap();
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
    assert_rows(&first[0], &samples[..FIXTURE_FIRST_DAY_ROWS]);
    assert_rows(&second[0], &samples[FIXTURE_FIRST_DAY_ROWS..]);
    assert_eq!(all_files(&dir), files, "no temporary files left");
}

#[test]
fn footer_metadata_present() {
    let dir = tempfile::tempdir().unwrap();
    let mut sink = ParquetSink::new(config(dir.path(), 1_000), line(), PLC).unwrap();
    sink.write(&fixture_samples()).unwrap();
    sink.close().unwrap().unwrap();
    let files = parquet_files(dir.path());
    let ranges = [
        ("2026-11-26T23:59:58.000001Z", "2026-11-26T23:59:58.600001Z"),
        ("2026-11-27T00:00:00.000123Z", "2026-11-27T00:00:00.000128Z"),
    ];
    assert_eq!(files.len(), ranges.len());
    for (file, (first, last)) in files.iter().zip(ranges) {
        let kv = footer(file);
        assert_eq!(kv[s::META_SCHEMA_VERSION], "3");
        assert_eq!(kv[s::META_LINE], "line-a");
        assert_eq!(kv[s::META_SITE], "plant-1");
        assert_eq!(kv[s::META_PLC], "filler");
        assert_eq!(kv[s::META_CONNECTOR_VERSION], env!("CARGO_PKG_VERSION"));
        assert_eq!(kv[s::META_FIRST_TIME], first);
        assert_eq!(kv[s::META_LAST_TIME], last);
        assert!(kv.contains_key("ARROW:schema"));
    }

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
            origin: crate::sample::Origin::Live,
        })
        .collect()
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
        sink.close().unwrap().unwrap();
        let files = parquet_files(dir.path());
        assert_eq!(files.len(), 2, "one chunk per day: {files:?}");
        let (day1, day2) = samples.split_at(FIXTURE_FIRST_DAY_ROWS);
        assert_rows(&read_batches(&files[0])[0], day1);
        assert_rows(&read_batches(&files[1])[0], day2);
    }
}
