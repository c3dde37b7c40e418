//! `--rules`: a local rule under the scenario's load. The simulator's
//! Filler.ProductTemperature (every 20 ms, no scan jitter) spikes by +6 for 50 ms every
//! 100 ms; the rule `spike` opens Filler.CoolingValve above 16 and closes it below 14 (about
//! ten firings a second). Two latencies, p50 / p99 over every firing of the run:
//! - sample received -> write issued: the connector's `rule_action_latency_seconds` histogram
//!   (bucket bounds);
//! - PLC value change -> PLC sees the write: from the source timestamp of the first sample
//!   above 16 after one below 14 (the Parquet rows) to the simulator's write log entry of the
//!   write that opened the valve (the same clock).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

const TEMP: &str = "s=Filler.ProductTemperature";
const VALVE: &str = "s=Filler.CoolingValve";

/// The simulator's profile for the run: the bundled one, changed as above.
pub fn profile(dir: &Path) -> Result<PathBuf> {
    let mut text = simulator::runtime::BOTTLING_LINE_PROFILE.to_owned();
    for (from, to) in [
        ("scan_jitter = \"3ms\"", "scan_jitter = \"0ms\""),
        (
            "name = \"filler-slow\"\nrate = \"2s\"",
            "name = \"filler-slow\"\nrate = \"20ms\"",
        ),
        (
            "spike = { every = \"120s\", at = \"60s\", add = 6.0, length = \"20s\", noise = 0.4 }",
            "spike = { every = \"100ms\", at = \"0s\", add = 6.0, length = \"50ms\" }",
        ),
    ] {
        anyhow::ensure!(text.contains(from), "the bundled profile has no {from:?}");
        text = text.replace(from, to);
    }
    let path = dir.join("rules.sim.toml");
    std::fs::write(&path, text)?;
    Ok(path)
}

/// The rule's group (after the scenario's group), published every `publishing`.
pub fn group(publishing: &str) -> String {
    let ns = tests::LINE_NS;
    format!(
        "\n  [[plc.group]]\n  name = \"rules\"\n  publishing_interval = \"{publishing}\"\n  sampling_interval = \"0ms\"\n  nodes = [\"nsu={ns};{TEMP}\", \"nsu={ns};{VALVE}\"]\n"
    )
}

/// The write mapping and the rule.
pub fn rule() -> String {
    let ns = tests::LINE_NS;
    format!(
        "\n[[write]]\nproperty = \"coolingValve\"\nplc = \"sim\"\nnode = \"nsu={ns};{VALVE}\"\ntype = \"Boolean\"\n\n\
         [[rule]]\nname = \"spike\"\nwhen = {{ node = \"nsu={ns};{TEMP}\", above = 16.0 }}\nclear = {{ node = \"nsu={ns};{TEMP}\", below = 14.0 }}\n\
         on_fire = [{{ write = \"coolingValve\", value = true }}]\non_clear = [{{ write = \"coolingValve\", value = false }}]\n"
    )
}

/// The quantile `p` of a Prometheus histogram as its bucket's upper bound, in ms.
fn bucket_quantile(buckets: &[(f64, f64)], p: f64) -> f64 {
    let total = buckets.last().map_or(0.0, |b| b.1);
    buckets
        .iter()
        .find(|(_, n)| *n >= total * p)
        .map_or(f64::INFINITY, |(le, _)| le * 1000.0)
}

/// Prints the rule's figures (stderr) from the last `/metrics` text, the simulator's stats
/// file and the Parquet rows.
pub fn report(
    id: &str,
    metrics: &str,
    stats: &Path,
    rows: &[tests::Row],
    plc_ms: Vec<f64>,
) -> Result<()> {
    let get = |name: &str| super::metric(metrics, name);
    let firings = get("opcua_connector_rule_firings_total");
    let suppressed = get("opcua_connector_rule_suppressed_total");
    let errors = get("opcua_connector_rule_errors_total");
    let dropped = get("opcua_connector_rule_inputs_dropped_total");
    let buckets: Vec<(f64, f64)> = metrics
        .lines()
        .filter(|l| l.starts_with("opcua_connector_rule_action_latency_seconds_bucket{"))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, l.rsplit(' ').next()?.parse().ok()?))
        })
        .collect();
    let issued = buckets.last().map_or(0.0, |b| b.1);
    eprintln!(
        "{id}: rule: {firings:.0} firings, {suppressed:.0} suppressed, {errors:.0} errors, {dropped:.0} inputs dropped; sample received -> write issued ({issued:.0} writes): p50 <= {} ms, p99 <= {} ms (histogram bucket bounds)",
        bucket_quantile(&buckets, 0.5),
        bucket_quantile(&buckets, 0.99),
    );
    if !plc_ms.is_empty() {
        let n = plc_ms.len();
        let (p50, p99, max) = super::quantiles(plc_ms);
        eprintln!("{id}: rule: the PLC part of its {n} writes (write, read back) ms p50 {p50:.2} p99 {p99:.2} max {max:.2}");
    }
    // PLC value change -> PLC sees the write.
    let truth: serde_json::Value =
        serde_json::from_slice(&std::fs::read(stats).context("the simulator's stats file")?)?;
    let valve = format!("nsu={};{VALVE}", tests::LINE_NS);
    let opened: Vec<i64> = truth["nodes"][&valve]["write_log"]
        .as_array()
        .context("the valve's write log")?
        .iter()
        .filter(|w| w["value"] == true)
        .filter_map(|w| w["at_us"].as_i64())
        .collect();
    let temp = format!("nsu={};{TEMP}", tests::LINE_NS);
    let mut series: Vec<(i64, f64)> = rows
        .iter()
        .filter(|r| r.group == "rules" && r.node == temp)
        .filter_map(|r| match r.value {
            tests::Val::Double(x) => Some((r.time, x)),
            _ => None,
        })
        .collect();
    series.sort_by_key(|s| s.0);
    let mut edges = Vec::new();
    let mut armed = true;
    for (t, x) in &series {
        if *x > 16.0 && armed {
            edges.push(*t);
            armed = false;
        } else if *x < 14.0 {
            armed = true;
        }
    }
    // Each opening write answers the latest edge before it (one edge, one write).
    let mut ms = Vec::new();
    let mut unmatched = 0;
    for w in &opened {
        match edges.iter().rev().find(|e| **e <= *w) {
            Some(e) => ms.push((*w - *e) as f64 / 1000.0),
            None => unmatched += 1,
        }
    }
    if ms.is_empty() {
        eprintln!("{id}: rule: no opening write matched a change");
        return Ok(());
    }
    let n = ms.len();
    let (p50, p99, max) = super::quantiles(ms);
    eprintln!(
        "{id}: rule: PLC value change -> PLC sees the write over {n} firings ({} edges in Parquet, {} opening writes, {unmatched} unmatched): p50 {p50:.2} ms, p99 {p99:.2} ms, max {max:.2} ms",
        edges.len(),
        opened.len()
    );
    Ok(())
}
