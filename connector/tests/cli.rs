//! The `opcua-connector` binary: exit codes, messages, and crash safety under `kill -9`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use simulator::SimConfig;
use tokio_util::sync::CancellationToken;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_opcua-connector"))
}

fn run(args: &[&str]) -> (i32, String, String) {
    let out = bin().args(args).output().expect("run opcua-connector");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn configs_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs")
}

#[test]
fn check_accepts_every_config_in_configs_and_prints_the_plan() {
    let mut n = 0;
    for e in std::fs::read_dir(configs_dir()).expect("configs/") {
        let p = e.expect("entry").path();
        if p.extension().is_none_or(|x| x != "toml") {
            continue;
        }
        n += 1;
        let (code, stdout, stderr) = run(&["check", "--config", p.to_str().unwrap()]);
        assert_eq!(code, 0, "{}: {stderr}", p.display());
        assert!(
            !stdout.trim().is_empty(),
            "{}: a plan is printed",
            p.display()
        );
    }
    assert!(n >= 2, "configs/ has the demo and an example line");
}

const GOOD: &str = r#"[line]
id = "l"

[[plc]]
id = "filler"
endpoint = "opc.tcp://127.0.0.1:4840/"

  [[plc.group]]
  name = "fast"
  publishing_interval = "100ms"
  nodes = ["nsu=urn:x;s=A"]

[sink.parquet]
dir = "data"
"#;

/// Writes `text` to a file and runs `check` on it.
fn check_text(dir: &Path, name: &str, text: &str) -> (i32, String) {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    let (code, _, stderr) = run(&["check", "--config", p.to_str().unwrap()]);
    (code, stderr)
}

#[test]
fn bad_configs_exit_2_naming_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(check_text(dir.path(), "good.toml", GOOD).0, 0);

    let (code, err) = check_text(
        dir.path(),
        "unknown.toml",
        &GOOD.replace("name = \"fast\"", "name = \"fast\"\n  colour = \"red\""),
    );
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("unknown.toml:10") && err.contains("colour"),
        "{err}"
    );

    let (code, err) = check_text(
        dir.path(),
        "nodeid.toml",
        &GOOD.replace("nsu=urn:x;s=A", "ns=two;s=A"),
    );
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("nodeid.toml:11") && err.contains("ns=two;s=A"),
        "{err}"
    );

    let (code, err) = check_text(
        dir.path(),
        "duration.toml",
        &GOOD.replace("\"100ms\"", "\"fast\""),
    );
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("duration.toml:10") && err.contains("publishing_interval"),
        "{err}"
    );

    let write = format!(
        "{GOOD}\n[[write]]\nproperty = \"speed\"\nplc = \"capper\"\nnode = \"nsu=urn:x;s=B\"\ntype = \"Double\"\n"
    );
    let (code, err) = check_text(dir.path(), "write.toml", &write);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("write.toml:18") && err.contains("capper"),
        "{err}"
    );

    let (code, _, err) = run(&["check", "--config", "/nonexistent/line.toml"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("/nonexistent/line.toml"), "{err}");
}

fn readable(path: &Path) -> Result<usize, String> {
    let f = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(f)
        .map_err(|e| e.to_string())?
        .build()
        .map_err(|e| e.to_string())?;
    let mut rows = 0;
    for b in reader {
        rows += b.map_err(|e| e.to_string())?.num_rows();
    }
    Ok(rows)
}

fn files(dir: &Path, pred: &dyn Fn(&str) -> bool) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.file_name().and_then(|n| n.to_str()).is_some_and(pred) {
                out.push(p);
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_leaves_every_parquet_file_complete_and_readable() {
    let dir = tempfile::tempdir().unwrap();
    let token = CancellationToken::new();
    let mut sc = SimConfig::bottling_line(dir.path().join("sim-pki"));
    sc.scale = Some("2000@100ms".parse().unwrap());
    let sim = simulator::start(sc, token.clone())
        .await
        .expect("simulator");
    let out = dir.path().join("out");
    let config = dir.path().join("line.toml");
    std::fs::write(
        &config,
        format!(
            r#"[line]
id = "crash"

[[plc]]
id = "sim"
endpoint = "{}"

  [[plc.group]]
  name = "scale"
  publishing_interval = "100ms"
  sampling_interval = "0ms"
  browse = [{{ root = "nsu=urn:opcua-connector:simulator:scale;s=Scale" }}]

[pki]
dir = "{}"
trust_unknown_servers = true

[sink.parquet]
dir = "{}"
roll_rows = 30000
roll_interval = "1s"
"#,
            sim.endpoint_url(),
            dir.path().join("pki").display(),
            out.display()
        ),
    )
    .unwrap();
    for round in 0..3 {
        let mut child = bin()
            .args(["run", "--config", config.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn connector");
        let before = files(&out, &|n| n.ends_with(".parquet")).len();
        let deadline = Instant::now() + Duration::from_secs(30);
        while files(&out, &|n| n.ends_with(".parquet")).len() < before + 2 {
            assert!(
                Instant::now() < deadline,
                "round {round}: chunks are written"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Kill in the middle of writing the next chunk.
        tokio::time::sleep(Duration::from_millis(300 + 200 * round)).await;
        child.kill().expect("kill -9");
        let _ = child.wait();
    }
    let chunks = files(&out, &|n| n.ends_with(".parquet"));
    assert!(chunks.len() >= 6, "{} chunks", chunks.len());
    let mut rows = 0;
    for c in &chunks {
        rows += readable(c).unwrap_or_else(|e| panic!("{} is not complete: {e}", c.display()));
    }
    eprintln!(
        "{} chunks, {rows} rows, all readable after 3 x kill -9",
        chunks.len()
    );
    token.cancel();
}
