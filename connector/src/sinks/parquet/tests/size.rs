//! Size of the chunks on realistic data: bytes/sample, and where the bytes go.

use super::*;

/// Deterministic xorshift64* generator for the benchmark data.
pub(super) struct Rng(pub(super) u64);

impl Rng {
    pub(super) fn next(&mut self) -> u64 {
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
                origin: crate::sample::Origin::Live,
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
