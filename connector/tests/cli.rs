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
fn version_names_the_git_commit() {
    let (code, out, _) = run(&["--version"]);
    assert_eq!(code, 0);
    let want = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".to_owned());
    let prefix = format!("opcua-connector {} ({want}", env!("CARGO_PKG_VERSION"));
    assert!(
        out.starts_with(&prefix),
        "{out:?} should start with {prefix:?}"
    );
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

#[test]
fn schema_prints_the_committed_schema() {
    let (code, out, err) = run(&["schema"]);
    assert_eq!(code, 0, "{err}");
    let committed = std::fs::read_to_string(configs_dir().join("opcua-connector.schema.json"))
        .expect("configs/opcua-connector.schema.json");
    assert!(
        out == committed,
        "`opcua-connector schema` is not configs/opcua-connector.schema.json: regenerate it with \
         `cargo run -p connector -- schema > configs/opcua-connector.schema.json`"
    );
    let schema: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(schema["$schema"], "http://json-schema.org/draft-07/schema#");
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
    std::fs::write(&p, text).expect("write the config");
    let (code, _, stderr) = run(&["check", "--config", p.to_str().expect("utf-8 path")]);
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

    // Rules and windows: an unknown node, a write to an unmapped property, a window that does
    // not divide a day, conflicting actions; every problem at once.
    let rules = format!(
        "{}\n[[write]]\nproperty = \"valve\"\nplc = \"filler\"\nnode = \"nsu=urn:x;s=V\"\ntype = \"Boolean\"\n\n\
         [[rule]]\nname = \"r\"\nwhen = {{ node = \"nsu=urn:x;s=Nope\", above = 1 }}\n\
         on_fire = [{{ write = \"door\", value = true }}]\n\
         on_clear = [{{ write = \"valve\", value = true }}, {{ write = \"valve\", value = false }}]\n",
        GOOD.replace(
            "nodes = [\"nsu=urn:x;s=A\"]",
            "nodes = [\"nsu=urn:x;s=A\"]\n  telemetry = { window = \"7m\" }"
        )
    );
    let (code, err) = check_text(dir.path(), "rules.toml", &rules);
    assert_eq!(code, 2, "{err}");
    for expected in [
        "rules.toml:12: plc[0].group[0].telemetry.window: window 7m must be at least 1s and divide a day",
        "rules.toml:25: rule[0].when.node: node nsu=urn:x;s=Nope is not listed in a group of plc \"filler\"",
        "rules.toml:26: rule[0].on_fire[0].write: no [[write]] property \"door\"",
        "rules.toml:27: rule[0].on_clear[1]: conflicting actions",
    ] {
        assert!(err.contains(expected), "{expected:?} in {err}");
    }

    let (code, _, err) = run(&["check", "--config", "/nonexistent/line.toml"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("/nonexistent/line.toml"), "{err}");
}

/// `dtdl` on `config` with `args`: exit code, the model (when stdout is JSON) and stderr.
fn dtdl(config: &Path, args: &[&str]) -> (i32, Option<serde_json::Value>, String) {
    let mut all = vec!["dtdl", "--config", config.to_str().expect("utf-8 path")];
    all.extend_from_slice(args);
    let (code, out, err) = run(&all);
    (code, serde_json::from_str(&out).ok(), err)
}

fn named<'a>(model: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    model["contents"]
        .as_array()
        .expect("contents")
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {model:#}"))
}

#[test]
fn dtdl_prints_the_demo_lines_interface() {
    let (code, model, err) = dtdl(&configs_dir().join("demo.toml"), &["--offline"]);
    assert_eq!(code, 0, "{err}");
    let model = model.expect("JSON on stdout");
    assert_eq!(model["@context"], "dtmi:dtdl:context;3");
    assert_eq!(model["@type"], "Interface");
    assert_eq!(
        model["@id"],
        "dtmi:opcua_connector:demo_plant:bottling_demo;1"
    );
    assert!(
        err.contains("[hub] model_id is not set")
            && err.contains("dtmi:opcua_connector:demo_plant:bottling_demo;1"),
        "{err}"
    );
    for (name, kind) in [
        ("line1_fast", "Telemetry"),
        ("line1_process", "Telemetry"),
        ("fillerSpeedSetpoint", "Property"),
        ("coolingValve", "Property"),
        ("resetCounters", "Command"),
    ] {
        assert_eq!(named(&model, name)["@type"], kind, "{name}");
    }
    assert_eq!(named(&model, "fillerSpeedSetpoint")["writable"], true);
    // Offline: the method is described, and stderr says why it has no arguments.
    assert!(named(&model, "resetCounters").get("request").is_none());
    assert!(
        err.contains("note: method[0] (name \"resetCounters\")") && err.contains("--offline"),
        "{err}"
    );
}

#[test]
fn dtdl_notes_a_plc_it_cannot_reach_and_refuses_names_that_collide() {
    let dir = tempfile::tempdir().unwrap();
    // A port that was free a moment ago: nothing answers there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let line = format!(
        "{}\n[pki]\ndir = \"{}\"\n\n[[method]]\nname = \"reset\"\nplc = \"filler\"\n\
         object = \"nsu=urn:x;s=F\"\nmethod = \"nsu=urn:x;s=F.Reset\"\n",
        GOOD.replace("127.0.0.1:4840", &format!("127.0.0.1:{port}")),
        dir.path().join("pki").display()
    );
    let path = dir.path().join("line.toml");
    std::fs::write(&path, &line).unwrap();
    let (code, model, err) = dtdl(&path, &["--timeout", "3s"]);
    assert_eq!(code, 0, "{err}");
    let model = model.expect("JSON on stdout");
    assert!(named(&model, "reset").get("request").is_none());
    assert!(
        err.contains("note: method[0] (name \"reset\")")
            && err.contains(&format!(
                "plc filler at opc.tcp://127.0.0.1:{port}/ not reachable"
            )),
        "{err}"
    );

    let collide = format!(
        "{line}\n[[write]]\nproperty = \"filler-fast\"\nplc = \"filler\"\nnode = \"nsu=urn:x;s=B\"\ntype = \"Double\"\n"
    );
    std::fs::write(&path, collide).unwrap();
    let (code, model, err) = dtdl(&path, &["--offline"]);
    assert_eq!(code, 2, "{err}");
    assert!(model.is_none());
    assert!(
        err.contains("write[0] (property \"filler-fast\") and plc[0].group[0] (plc \"filler\", group \"fast\") both have the DTDL name \"filler_fast\""),
        "{err}"
    );

    let (code, out, _) = run(&["dtdl", "--help"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("model_id") && out.contains("--offline"),
        "{out}"
    );
}

#[test]
fn check_warns_of_insecure_set_ups_and_refuses_anonymous_plain_commands() {
    let dir = tempfile::tempdir().unwrap();
    let write = "\n[[write]]\nproperty = \"speed\"\nplc = \"filler\"\nnode = \"nsu=urn:x;s=B\"\ntype = \"Double\"\n";
    let plain = format!("{GOOD}\n[sink.mqtt]\nurl = \"mqtt://127.0.0.1:1883\"\n{write}");
    let (code, err) = check_text(dir.path(), "plain.toml", &plain);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("plain.toml:17: sink.mqtt.url:") && err.contains("allow_insecure_commands"),
        "{err}"
    );
    let opted = plain.replace(
        "url = \"mqtt://127.0.0.1:1883\"\n",
        "url = \"mqtt://127.0.0.1:1883\"\nallow_insecure_commands = true\n",
    );
    let open = format!("{opted}\n[metrics]\nlisten = \"0.0.0.0:9464\"\n");
    let (code, err) = check_text(dir.path(), "opted.toml", &open);
    assert_eq!(code, 0, "{err}");
    let warnings: Vec<&str> = err.lines().filter(|l| l.starts_with("warning: ")).collect();
    assert_eq!(warnings.len(), 2, "{err}");
    assert!(
        warnings[0].contains("opted.toml:18: sink.mqtt.allow_insecure_commands:"),
        "{err}"
    );
    assert!(
        warnings[1].contains("opted.toml:27: metrics.listen: 0.0.0.0:9464"),
        "{err}"
    );
    let remote_hub = format!(
        "{GOOD}\n[hub]\nconnection_string_env = \"CS\"\ninsecure_endpoint = \"192.0.2.7:1883\"\n"
    );
    let (code, err) = check_text(dir.path(), "hub.toml", &remote_hub);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("hub.toml:18: hub.insecure_endpoint:") && err.contains("loopback"),
        "{err}"
    );
    // Nothing insecure: no warning.
    let (code, err) = check_text(dir.path(), "good.toml", GOOD);
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("warning"), "{err}");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_the_open_chunk_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let token = CancellationToken::new();
    let sim = simulator::start(
        SimConfig::bottling_line(dir.path().join("sim-pki")),
        token.clone(),
    )
    .await
    .expect("simulator");
    let out = dir.path().join("out");
    let config = dir.path().join("line.toml");
    let text = std::fs::read_to_string(configs_dir().join("demo.toml"))
        .unwrap()
        .replace("opc.tcp://127.0.0.1:4840/", sim.endpoint_url())
        .replace(
            "dir = \"data/demo\"",
            &format!(
                "dir = \"{}\"\n\n[pki]\ndir = \"{}\"\ntrust_unknown_servers = true\n\n[buffer]\ndir = \"{}\"",
                out.display(),
                dir.path().join("pki").display(),
                dir.path().join("buffer").display()
            ),
        );
    std::fs::write(&config, text).unwrap();
    let mut child = bin()
        .args(["run", "--config", config.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn connector");
    // Wait until the open chunk exists (rows are being written), then stop it.
    let deadline = Instant::now() + Duration::from_secs(30);
    while files(&out, &|n| n.ends_with(".tmp")).is_empty() {
        assert!(Instant::now() < deadline, "an open chunk appears");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the connector exits after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status.code(), Some(0));
    assert!(
        files(&out, &|n| n.ends_with(".tmp")).is_empty(),
        "no open chunk is left behind"
    );
    let chunks = files(&out, &|n| n.ends_with(".parquet"));
    let rows: usize = chunks.iter().map(|c| readable(c).unwrap()).sum();
    assert!(rows > 50, "the drained chunk holds the samples: {rows}");
    token.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browse_prints_a_group_block_that_check_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let token = CancellationToken::new();
    let sim = simulator::start(
        SimConfig::bottling_line(dir.path().join("sim-pki")),
        token.clone(),
    )
    .await
    .expect("simulator");
    let pki = dir.path().join("pki");
    let endpoint = sim.endpoint_url().to_owned();
    let out = tokio::task::spawn_blocking(move || {
        bin()
            .args([
                "browse",
                "--endpoint",
                &endpoint,
                "--root",
                "nsu=urn:opcua-connector:bottling-line;s=BottlingLine",
                "--trust-server",
                "--pki-dir",
            ])
            .arg(&pki)
            .output()
            .expect("run browse")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("[[plc.group]]"), "{stdout}");
    let nodes = stdout
        .lines()
        .filter(|l| {
            l.trim_start()
                .starts_with("{ id = \"nsu=urn:opcua-connector:bottling-line;s=")
        })
        .count();
    assert_eq!(
        nodes, 76,
        "every variable of the line, no properties: {stdout}"
    );
    assert!(stdout.contains("Filler/Speed\" },  # Double"), "{stdout}");
    // Pasted under a [[plc]], it is a valid config.
    let config = format!(
        "[line]\nid = \"pasted\"\n\n[[plc]]\nid = \"sim\"\nendpoint = \"{}\"\n\n{stdout}\n[sink.parquet]\ndir = \"data\"\n",
        sim.endpoint_url()
    );
    let (code, err) = check_text(dir.path(), "pasted.toml", &config);
    assert_eq!(code, 0, "{err}");
    token.cancel();
}
