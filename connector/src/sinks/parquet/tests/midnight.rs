//! Chunks roll at UTC midnight: a chunk never holds rows of two days, so its `date=` partition
//! names every row's day. The wall clock is simulated (`write_at`, `tick`).

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arrow_array::cast::AsArray;
use arrow_array::types::TimestampMicrosecondType;
use chrono::NaiveDate;

use super::super::sink::{sample_day, MAX_OPEN_CHUNKS, PAST_DAY_GRACE};
use super::*;

const US_PER_DAY: i64 = 86_400_000_000;

/// The wall clock at `rfc3339` plus `offset_us`.
fn clock(rfc3339: &str, offset_us: i64) -> SystemTime {
    let us = us(rfc3339) + offset_us;
    UNIX_EPOCH + Duration::from_micros(u64::try_from(us).unwrap())
}

fn counter(tag: &str, t: i64, value: i64) -> Sample {
    sample(
        "fast",
        tag,
        t,
        Some(t.saturating_add(2_000)),
        0,
        ty(6, false),
        SampleValue::Int(value),
    )
}

/// `date=YYYY-MM-DD` of a chunk path.
fn partition_date(path: &Path) -> String {
    let dir = path
        .parent()
        .unwrap()
        .file_name()
        .unwrap()
        .to_str()
        .unwrap();
    dir.strip_prefix("date=").unwrap().to_owned()
}

fn day_of(t: i64) -> String {
    chrono::DateTime::from_timestamp_micros(t)
        .unwrap()
        .format("%Y-%m-%d")
        .to_string()
}

/// (node, time µs) of every row of a chunk.
fn rows_of(path: &Path) -> Vec<(String, i64)> {
    let mut rows = Vec::new();
    for batch in read_batches(path) {
        let time = batch
            .column_by_name(s::COL_TIME)
            .unwrap()
            .as_primitive::<TimestampMicrosecondType>()
            .clone();
        for row in 0..batch.num_rows() {
            rows.push((dict_value(&batch, s::COL_NODE, row), time.value(row)));
        }
    }
    rows
}

/// Every file's rows are of its partition's day; returns the rows per `date=` partition.
fn rows_by_partition(dir: &Path) -> BTreeMap<String, Vec<(String, i64)>> {
    let mut by_date: BTreeMap<String, Vec<(String, i64)>> = BTreeMap::new();
    for file in parquet_files(dir) {
        let date = partition_date(&file);
        let rows = rows_of(&file);
        assert!(!rows.is_empty(), "{} is empty", file.display());
        for (node, t) in &rows {
            assert_eq!(day_of(*t), date, "{node} at {t} in {}", file.display());
        }
        by_date.entry(date).or_default().extend(rows);
    }
    by_date
}

/// 40 nodes every 100 ms from 23:59:58 to 00:00:02 UTC; the source timestamps jitter by up to
/// ±3 ms, so that around midnight the rows of one publish cycle straddle both days, and the
/// cycles arrive in publish order (as the session delivers them).
fn cycles_across_midnight() -> Vec<Vec<Sample>> {
    let start = us("2026-11-26T23:59:58Z");
    (0..40)
        .map(|c| {
            let cycle_t = start + c * 100_000;
            (0..40)
                .map(|n| {
                    let jitter = ((n * 3 + c) % 7 - 3) * 1_000;
                    counter(&format!("Tag{n:02}"), cycle_t + jitter, c)
                })
                .collect()
        })
        .collect()
}

#[test]
fn rows_of_each_utc_day_land_in_their_own_partition() {
    let dir = tempfile::tempdir().unwrap();
    let mut sink = ParquetSink::new(config(dir.path(), 1_000_000), line(), PLC).unwrap();
    let cycles = cycles_across_midnight();
    let mut written: Vec<(String, i64)> = Vec::new();
    let mut straddling = 0;
    for cycle in &cycles {
        let days: std::collections::BTreeSet<String> =
            cycle.iter().map(|s| day_of(s.time_us)).collect();
        straddling += usize::from(days.len() == 2);
        // The wall clock runs 50 ms behind the publish cycle's end.
        let latest = cycle.iter().map(|s| s.time_us).max().unwrap();
        sink.write_at(cycle, clock("1970-01-01T00:00:00Z", latest + 50_000))
            .unwrap();
        assert!(sink.open_chunk_paths().len() <= 2);
        written.extend(cycle.iter().map(|s| (s.item.node.to_string(), s.time_us)));
    }
    assert!(straddling > 0, "some publish cycle must span midnight");
    sink.close().unwrap();

    let files = parquet_files(dir.path());
    let dates: Vec<String> = files.iter().map(|f| partition_date(f)).collect();
    assert_eq!(
        dates,
        ["2026-11-26", "2026-11-27"],
        "one chunk per day: {files:?}"
    );
    let by_date = rows_by_partition(dir.path());
    let mut read: Vec<(String, i64)> = by_date.values().flatten().cloned().collect();
    read.sort();
    written.sort();
    assert_eq!(read.len(), written.len(), "no row lost or doubled");
    assert_eq!(read, written);
    for (date, rows) in &by_date {
        let expected = written.iter().filter(|(_, t)| day_of(*t) == *date).count();
        assert_eq!(rows.len(), expected, "{date}");
    }
    assert_eq!(
        by_date.values().map(Vec::len).sum::<usize>(),
        cycles.len() * 40
    );
    let stats = sink.stats();
    assert_eq!(stats.rows_written, written.len() as u64);
    assert_eq!(stats.chunks_written, 2);
    assert_eq!(stats.rows_discarded, 0);
}

#[test]
fn a_past_day_is_completed_on_the_tick_once_its_samples_stop() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 1_000_000);
    cfg.roll_interval = Duration::from_secs(3600);
    let mut sink = ParquetSink::new(cfg, line(), PLC).unwrap();
    let evening = us("2026-11-26T23:59:59Z");
    let at = |t: &str| clock(t, 0);

    sink.write_at(
        &[counter("A", evening, 1), counter("B", evening + 1_000, 1)],
        at("2026-11-26T23:59:59.050Z"),
    )
    .unwrap();
    assert_eq!(sink.tick(at("2026-11-26T23:59:59.900Z")).unwrap(), None);
    // Past midnight, but not yet PAST_DAY_GRACE without a sample.
    assert_eq!(PAST_DAY_GRACE, Duration::from_secs(10));
    assert_eq!(sink.tick(at("2026-11-27T00:00:09Z")).unwrap(), None);
    let done = sink
        .tick(at("2026-11-27T00:00:09.050Z"))
        .unwrap()
        .expect("the day's chunk completed");
    assert_eq!(partition_date(&done.path), "2026-11-26");
    assert_eq!(done.rows, 2);
    assert!(sink.open_chunk_path().is_none());

    // A PLC whose clock lags the wall clock still sends the old day: its chunk stays open
    // while the samples keep coming, however far past midnight the wall clock is.
    sink.write_at(
        &[counter("A", evening + 500_000, 2)],
        at("2026-11-27T00:00:20Z"),
    )
    .unwrap();
    sink.write_at(
        &[counter("A", evening + 900_000, 3)],
        at("2026-11-27T00:00:28Z"),
    )
    .unwrap();
    assert_eq!(sink.tick(at("2026-11-27T00:00:37Z")).unwrap(), None);
    let late = sink
        .tick(at("2026-11-27T00:00:38Z"))
        .unwrap()
        .expect("completed 10 s after its last sample");
    assert_eq!(partition_date(&late.path), "2026-11-26");
    assert_eq!(late.rows, 2);
    assert_ne!(late.path, done.path);

    // Today's chunk is not completed by the day rule, only by its limits.
    sink.write_at(
        &[counter("A", us("2026-11-27T00:01:00Z"), 4)],
        at("2026-11-27T00:01:00Z"),
    )
    .unwrap();
    assert_eq!(sink.tick(at("2026-11-27T00:59:59Z")).unwrap(), None);
    let today = sink.tick(at("2026-11-27T01:01:00Z")).unwrap().unwrap();
    assert_eq!(partition_date(&today.path), "2026-11-27");

    let by_date = rows_by_partition(dir.path());
    assert_eq!(by_date["2026-11-26"].len(), 4);
    assert_eq!(by_date["2026-11-27"].len(), 1);
    assert_eq!(sink.stats().rows_written, 5);
}

/// Initial values carry the source timestamp of their last change, which can be days old:
/// each such day gets a chunk of its own, beside today's, which stays open throughout.
#[test]
fn old_source_timestamps_keep_todays_chunk_open() {
    let dir = tempfile::tempdir().unwrap();
    let mut sink = ParquetSink::new(config(dir.path(), 1_000_000), line(), PLC).unwrap();
    let today = us("2026-11-26T10:00:00Z");
    let now = clock("2026-11-26T10:00:00.100Z", 0);
    let days_back = [0, 5, 0, 3, 0, 7, 5, 0, 1, 0, 3];
    let samples: Vec<Sample> = days_back
        .iter()
        .enumerate()
        .map(|(i, d)| counter(&format!("Tag{i:02}"), today - d * US_PER_DAY + i as i64, 1))
        .collect();
    for (i, one) in samples.chunks(1).enumerate() {
        sink.write_at(one, now).unwrap();
        assert!(
            sink.open_chunk_paths().len() <= MAX_OPEN_CHUNKS,
            "after {i}"
        );
    }
    assert_eq!(MAX_OPEN_CHUNKS, 3);
    sink.close().unwrap();

    let by_date = rows_by_partition(dir.path());
    let counts: Vec<(&str, usize)> = by_date.iter().map(|(d, r)| (d.as_str(), r.len())).collect();
    assert_eq!(
        counts,
        [
            ("2026-11-19", 1),
            ("2026-11-21", 2),
            ("2026-11-23", 2),
            ("2026-11-25", 1),
            ("2026-11-26", 5),
        ]
    );
    let today_files: Vec<PathBuf> = parquet_files(dir.path())
        .into_iter()
        .filter(|f| partition_date(f) == "2026-11-26")
        .collect();
    assert_eq!(today_files.len(), 1, "today's chunk was never closed early");
    assert_eq!(sink.stats().rows_written, days_back.len() as u64);
}

#[test]
fn rows_limit_and_midnight_together() {
    let dir = tempfile::tempdir().unwrap();
    let mut sink = ParquetSink::new(config(dir.path(), 30), line(), PLC).unwrap();
    let cycles = cycles_across_midnight();
    let all: Vec<Sample> = cycles.into_iter().flatten().collect();
    for part in all.chunks(25) {
        let latest = part.iter().map(|s| s.time_us).max().unwrap();
        sink.write_at(part, clock("1970-01-01T00:00:00Z", latest))
            .unwrap();
    }
    sink.close().unwrap();
    let mut total = 0;
    for file in parquet_files(dir.path()) {
        let rows = rows_of(&file);
        assert!(rows.len() <= 30, "{}: {}", file.display(), rows.len());
        total += rows.len();
    }
    assert_eq!(total, all.len());
    let by_date = rows_by_partition(dir.path());
    for (date, rows) in by_date {
        let expected = all.iter().filter(|s| day_of(s.time_us) == date).count();
        assert_eq!(rows.len(), expected, "{date}");
    }
}

/// A time no chunk name can show (outside years 0-9999) goes into the wall clock's day.
#[test]
fn unnameable_times_go_to_the_clocks_day() {
    let first = NaiveDate::from_ymd_opt(0, 1, 1).unwrap();
    let last = NaiveDate::from_ymd_opt(9999, 12, 31).unwrap();
    let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).unwrap();
    let first_us = (first - epoch).num_days() * US_PER_DAY;
    let end_us = ((last - epoch).num_days() + 1) * US_PER_DAY;
    assert!(sample_day(first_us).is_some());
    assert!(sample_day(first_us - 1).is_none());
    assert!(sample_day(end_us - 1).is_some());
    assert!(sample_day(end_us).is_none());
    assert_eq!(sample_day(-1), Some(-1));
    assert_eq!(sample_day(0), Some(0));

    let dir = tempfile::tempdir().unwrap();
    let mut sink = ParquetSink::new(config(dir.path(), 1_000), line(), PLC).unwrap();
    let now = clock("2026-11-26T12:00:00Z", 0);
    sink.write_at(
        &[counter("Far", i64::MAX, 1), counter("Near", end_us, 2)],
        now,
    )
    .unwrap();
    let info = sink.close().unwrap().unwrap();
    assert_eq!(partition_date(&info.path), "2026-11-26");
    assert_eq!(info.rows, 2);
    assert!(file_name(&info.path).starts_with("filler-20261126T120000Z-"));
}
