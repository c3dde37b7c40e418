//! Rolling by rows, time and bytes.

use super::size::Rng;
use super::*;

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
            origin: crate::sample::Origin::Live,
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
