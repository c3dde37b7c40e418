//! Values and messages a destination can never take: a 1 MB ByteString and a 100,000-element
//! array beside the counters (dead-lettered, Parquet keeps them, the counters flow), and a
//! broker that refuses one kind of message for good (MQTT 5 PUBACK 0x95 from mosquitto's
//! `message_size_limit`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use connector::buffer::dead;
use connector::config;
use connector::runner;
use tests::*;

const FINGERPRINT: &str = "Filler.Fingerprint";
const LEVELS: &str = "Filler.NozzleFillLevels";

/// The bottling line with `Filler.Fingerprint` `bytes` long (every 2 s) and
/// `Filler.NozzleFillLevels` an array of `levels` doubles (every 500 ms).
async fn big_sim(dir: &Path, bytes: usize, levels: usize) -> Sim {
    start_sim(dir, |c| {
        let ns = &mut c.nodesets[0].text;
        // The length comes from the initial value, else from ArrayDimensions: drop the
        // value of the instance and give it 100,000 elements.
        let start = ns
            .find(r#"<UAVariable NodeId="ns=1;s=Filler.NozzleFillLevels""#)
            .unwrap();
        let end = start + ns[start..].find("</UAVariable>").unwrap();
        let node = &ns[start..end];
        let (v0, v1) = (
            node.find("<Value>").unwrap(),
            node.find("</Value>").unwrap(),
        );
        let node = format!("{}{}", &node[..v0], &node[v1 + "</Value>".len()..]).replace(
            "ArrayDimensions=\"8\"",
            &format!("ArrayDimensions=\"{levels}\""),
        );
        ns.replace_range(start..end, &node);
        let profile = &mut c.profile.as_mut().unwrap().text;
        let before = "s=Filler.Fingerprint\"\n  sim = { kind = \"bytes\", len = 16 }";
        assert!(profile.contains(before));
        *profile = profile.replace(before, &before.replace("16", &bytes.to_string()));
    })
    .await
}

/// The counters in group `fast` and the two big nodes in group `big`, to an MQTT broker,
/// with Parquet.
fn config(dir: &Path, opc: &str, mqtt: &str) -> config::Config {
    counters_config(
        dir,
        opc,
        &format!(
            "{mqtt}\nbatch_max_samples = 50\nbatch_max_delay = \"100ms\"\n\n\
             [buffer]\ndir = \"{b}\"\n\n\
             [sink.parquet]\ndir = \"{p}\"\n\n\
             [[plc.group]]\nname = \"big\"\npublishing_interval = \"250ms\"\nsampling_interval = \"0ms\"\n\
             nodes = [\"{f}\", \"{l}\"]\n",
            b = dir.join("buffer").display(),
            p = dir.join("parquet").display(),
            f = counter_id(FINGERPRINT),
            l = counter_id(LEVELS),
        ),
    )
}

/// Splits what arrived into the `fast` stream (decoded and checked by the caller) and the
/// seqs of the `big` stream.
fn split(messages: &[(String, Vec<u8>)]) -> (Vec<(String, Vec<u8>)>, Vec<u64>) {
    let (big, fast): (Vec<_>, Vec<_>) = messages
        .iter()
        .cloned()
        .partition(|(t, _)| t.ends_with("/big"));
    let seqs = big
        .iter()
        .map(|(_, b)| {
            let v: serde_json::Value = serde_json::from_slice(b).unwrap();
            v["seq"].as_u64().unwrap()
        })
        .collect();
    (fast, seqs)
}

fn dead_letters(dir: &Path) -> Vec<serde_json::Value> {
    let path = dir.join("buffer").join("mqtt").join(dead::FILE);
    dead::read_all(&path).unwrap_or_default()
}

/// Every seq of the `big` stream is either received or dead-lettered, none both, none missing.
fn assert_big_stream_accounted(received: &[u64], dead: &[serde_json::Value]) {
    let got: BTreeSet<u64> = received.iter().copied().collect();
    let moved: BTreeSet<u64> = dead.iter().map(|d| d["seq"].as_u64().unwrap()).collect();
    assert_eq!(moved.len(), dead.len(), "each dead letter once");
    assert!(got.is_disjoint(&moved), "a dead letter was also delivered");
    let all: Vec<u64> = got.union(&moved).copied().collect();
    let last = *all.last().unwrap();
    assert_eq!(
        all,
        (1..=last).collect::<Vec<_>>(),
        "big stream: no seq lost"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_1mb_bytestring_and_a_100k_array_are_dead_lettered_while_the_counters_flow() {
    let dir = tempfile::tempdir().unwrap();
    let sim = big_sim(dir.path(), 1_000_000, 100_000).await;
    let broker = start_broker();
    let sub = Subscriber::start(broker, "opcua/#").await;
    let mqtt = format!("[sink.mqtt]\nurl = \"mqtt://127.0.0.1:{broker}\"\nqos = 1");
    let running =
        runner::start(&config(dir.path(), sim.sim.endpoint_url(), &mqtt)).expect("runner");
    let m = running.mqtt.clone().unwrap();
    eventually(
        "4 big values dead-lettered and 30 messages",
        Duration::from_secs(40),
        || async {
            (m.dead_letters.load(Ordering::Relaxed) >= 4 && sub.count() >= 30).then_some(())
        },
    )
    .await;
    freeze_and_settle(&sim, || sub.count()).await;
    running.stop().await;

    let messages = sub.messages.lock().unwrap().clone();
    let (fast, big_seqs) = split(&messages);
    decode(&unique_by_seq(&fast)).assert_complete(&sim);
    assert_eq!(
        fast.len(),
        unique_by_seq(&fast).len(),
        "no reconnect, so no repeat"
    );
    assert_eq!(m.reconnects.load(Ordering::Relaxed), 0, "no reconnect loop");

    // Parquet keeps every big value whole; each one's message went to the dead letters.
    let rows = read_all(&dir.path().join("parquet"));
    let by = by_node(&rows);
    let prints = &by[&counter_id(FINGERPRINT)];
    let levels = &by[&counter_id(LEVELS)];
    assert!(!prints.is_empty() && !levels.is_empty());
    for r in prints {
        assert!(
            matches!(&r.value, Val::Bytes(b) if b.len() == 1_000_000),
            "{:?}",
            r.time
        );
    }
    for r in levels {
        let Val::Json(j) = &r.value else {
            panic!("array as JSON: {:?}", r.value)
        };
        let v: serde_json::Value = serde_json::from_str(j).unwrap();
        let n = v["Body"].as_array().map(Vec::len);
        assert_eq!(n, Some(100_000), "{}", &j[..j.len().min(200)]);
    }
    let dead = dead_letters(dir.path());
    let counted = m.dead_letters.load(Ordering::Relaxed);
    eprintln!(
        "big values: {} fingerprints + {} level arrays in Parquet; {counted} dead letters; {} big messages delivered",
        prints.len(),
        levels.len(),
        big_seqs.len()
    );
    assert_eq!(
        counted as usize,
        prints.len() + levels.len(),
        "every big sample's message dead-lettered, exactly"
    );
    assert_eq!(dead.len(), counted as usize, "each one kept in the file");
    assert!(dead
        .iter()
        .all(|d| d["topic"] == "opcua/plant/line-m/sim/big"));
    assert_big_stream_accounted(&big_seqs, &dead);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_refused_for_good_by_the_broker_is_dead_lettered_and_the_stream_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    // 50,000 random bytes are ~66,700 in base64: over mosquitto's limit of 60,000, under the
    // connector's message limit; the 8 levels are small.
    let sim = big_sim(dir.path(), 50_000, 8).await;
    let port = free_port();
    let _broker = mosquitto(
        dir.path(),
        &format!(
            "user root\nallow_anonymous true\nmessage_size_limit 60000\nlistener {port} 127.0.0.1\n"
        ),
        &[port],
    );
    let sub = Subscriber::start(port, "opcua/#").await;
    let mqtt = format!(
        "[sink.mqtt]\nurl = \"mqtt://127.0.0.1:{port}\"\nversion = \"5\"\nqos = 1\nmax_message_bytes = \"200KiB\""
    );
    let running =
        runner::start(&config(dir.path(), sim.sim.endpoint_url(), &mqtt)).expect("runner");
    let m = running.mqtt.clone().unwrap();
    eventually(
        "3 refused messages dead-lettered",
        Duration::from_secs(60),
        || async { (m.dead_letters.load(Ordering::Relaxed) >= 3).then_some(()) },
    )
    .await;
    freeze_and_settle(&sim, || sub.count()).await;
    running.stop().await;

    let messages = sub.messages.lock().unwrap().clone();
    let (fast, big_seqs) = split(&messages);
    decode(&unique_by_seq(&fast)).assert_complete(&sim);
    let dead = dead_letters(dir.path());
    let mut reasons = BTreeMap::new();
    for d in &dead {
        *reasons
            .entry(d["reason"].as_str().unwrap().to_owned())
            .or_insert(0) += 1;
    }
    eprintln!(
        "dead letters {} ({reasons:?}); big messages delivered {}; reconnects {}",
        dead.len(),
        big_seqs.len(),
        m.reconnects.load(Ordering::Relaxed)
    );
    assert_eq!(dead.len() as u64, m.dead_letters.load(Ordering::Relaxed));
    assert!(reasons.keys().all(|r| r.contains("0x95")), "{reasons:?}");
    // Each refused message is one with a fingerprint; the levels of the same group arrive.
    for d in &dead {
        let body = base64_decode(d["body_base64"].as_str().unwrap());
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert!(
            v["samples"]
                .as_array()
                .unwrap()
                .iter()
                .any(|s| s["node"] == counter_id(FINGERPRINT)),
            "{}",
            &String::from_utf8_lossy(&body)[..300]
        );
    }
    assert!(!big_seqs.is_empty(), "the rest of the big stream arrives");
    assert_big_stream_accounted(&big_seqs, &dead);
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}
