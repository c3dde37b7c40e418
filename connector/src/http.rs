//! `[metrics] listen`: Prometheus text exposition at `/metrics` and `/healthz` (200 only when
//! every PLC session and every telemetry sink is connected). A deliberately small HTTP/1.1
//! responder: two GET routes, one request per connection, nothing else to serve.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::buffer::outbox::Outbox;
use crate::metrics::{
    DpsMetrics, Metrics, MqttMetrics, PlcMetrics, RuleCounters, RuleMetrics, WriteMetrics,
    LATENCY_BUCKETS_MS,
};

/// What the endpoint reports.
pub struct State {
    pub line: String,
    pub metrics: Metrics,
    /// Telemetry sinks by name (`mqtt`, `hub`).
    pub sinks: Vec<(&'static str, Arc<Outbox>)>,
    /// Cloud-to-PLC counters, when writes or methods are mapped.
    pub writes: Option<Arc<WriteMetrics>>,
}

fn counter(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP opcua_connector_{name} {help}");
    let _ = writeln!(out, "# TYPE opcua_connector_{name} {kind}");
}

fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The Prometheus text of every counter. Labels: line, plc, sink; never node ids.
pub fn render(state: &State) -> String {
    let mut out = String::with_capacity(4096);
    let line = esc(&state.line);
    counter(
        &mut out,
        "build_info",
        "The connector's version and git commit (value 1).",
        "gauge",
    );
    let _ = writeln!(
        out,
        "opcua_connector_build_info{{line=\"{line}\",version=\"{}\",commit=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION"),
        esc(env!("OPCUA_CONNECTOR_COMMIT"))
    );
    type Get = fn(&PlcMetrics) -> &AtomicU64;
    let per_plc: [(&str, &str, &str, Get); 24] = [
        (
            "samples_received_total",
            "Samples received from the PLC.",
            "counter",
            |p| &p.samples_received,
        ),
        (
            "samples_written_total",
            "Samples in completed Parquet chunks.",
            "counter",
            |p| &p.samples_written,
        ),
        (
            "samples_discarded_total",
            "Samples given up by a failed Parquet write (a chunk that could not be written or finished; each failure logged and in write_errors_total).",
            "counter",
            |p| &p.samples_discarded,
        ),
        (
            "parquet_chunks_total",
            "Completed Parquet chunks.",
            "counter",
            |p| &p.chunks_written,
        ),
        (
            "parquet_bytes_total",
            "Bytes of completed Parquet chunks.",
            "counter",
            |p| &p.bytes_written,
        ),
        (
            "write_errors_total",
            "Failed sink writes (logged: the first, then once a minute with the count).",
            "counter",
            |p| &p.write_errors,
        ),
        (
            "samples_dropped_total",
            "Samples that found no writer thread (it died or had stopped).",
            "counter",
            |p| &p.samples_dropped,
        ),
        (
            "reconnects_total",
            "PLC sessions re-established.",
            "counter",
            |p| &p.reconnects,
        ),
        (
            "connect_failures_total",
            "Failed PLC connection attempts.",
            "counter",
            |p| &p.connect_failures,
        ),
        (
            "monitored_items",
            "Monitored items created.",
            "gauge",
            |p| &p.monitored_items,
        ),
        (
            "failed_items",
            "Configured nodes that could not be resolved or monitored.",
            "gauge",
            |p| &p.failed_items,
        ),
        (
            "sequence_gaps_total",
            "Notification messages missing in the sequence.",
            "counter",
            |p| &p.sequence_gaps,
        ),
        (
            "republished_total",
            "Missing notification messages recovered by Republish.",
            "counter",
            |p| &p.republished,
        ),
        (
            "lost_messages_total",
            "Missing notification messages the server no longer had.",
            "counter",
            |p| &p.lost_messages,
        ),
        (
            "server_overflows_total",
            "Samples with the Overflow bit (the server's queue dropped values).",
            "counter",
            |p| &p.overflows,
        ),
        (
            "loss_events_total",
            "Values lost for good: lost notification messages plus samples with the Overflow bit.",
            "counter",
            |p| &p.loss_events,
        ),
        (
            "events_received_total",
            "Events of [[plc.events]] streams received.",
            "counter",
            |p| &p.events_received,
        ),
        (
            "events_written_total",
            "Events in completed chunks of the events table.",
            "counter",
            |p| &p.events_written,
        ),
        (
            "events_discarded_total",
            "Events given up by a failed write of the events table.",
            "counter",
            |p| &p.events_discarded,
        ),
        (
            "backfilled_samples_total",
            "Values read back from the server's history after outages.",
            "counter",
            |p| &p.backfilled,
        ),
        (
            "backfill_gaps_total",
            "Outage gaps of a node read completely from the server's history.",
            "counter",
            |p| &p.backfill_gaps,
        ),
        (
            "backfill_unfilled_total",
            "Outage gaps (or their older parts) not backfilled: no history, refused, beyond backfill_max.",
            "counter",
            |p| &p.backfill_unfilled,
        ),
        (
            "backpressure_waits_total",
            "Waits of the OPC UA side for a full sink queue.",
            "counter",
            |p| &p.backpressure_waits,
        ),
        (
            "subscribe_seconds",
            "Time of the last (re)subscription, in microseconds / 1e6.",
            "gauge",
            |p| &p.subscribe_us,
        ),
    ];
    for (name, help, kind, get) in per_plc {
        counter(&mut out, name, help, kind);
        for p in &state.metrics.plcs {
            let v = get(p).load(Ordering::Relaxed);
            let v = if name == "subscribe_seconds" {
                v as f64 / 1e6
            } else {
                v as f64
            };
            let _ = writeln!(
                out,
                "opcua_connector_{name}{{line=\"{line}\",plc=\"{}\"}} {v}",
                esc(&p.plc)
            );
        }
    }
    counter(
        &mut out,
        "plc_connected",
        "1 when the PLC session is up.",
        "gauge",
    );
    for p in &state.metrics.plcs {
        let _ = writeln!(
            out,
            "opcua_connector_plc_connected{{line=\"{line}\",plc=\"{}\"}} {}",
            esc(&p.plc),
            u8::from(p.connected.load(Ordering::Relaxed))
        );
    }
    counter(
        &mut out,
        "last_sample_age_seconds",
        "Time since the newest sample was received (our clock).",
        "gauge",
    );
    let now = chrono::Utc::now().timestamp_micros();
    for p in &state.metrics.plcs {
        let last = p.last_sample_us.load(Ordering::Relaxed);
        if last > 0 {
            let _ = writeln!(
                out,
                "opcua_connector_last_sample_age_seconds{{line=\"{line}\",plc=\"{}\"}} {}",
                esc(&p.plc),
                (now - last) as f64 / 1e6
            );
        }
    }
    let r = &state.metrics.retention;
    for (name, help, kind, value) in [
        (
            "parquet_retention_deleted_chunks_total",
            "Completed chunks deleted by retention (max_bytes, max_age, min_free).",
            "counter",
            &r.chunks_deleted,
        ),
        (
            "parquet_retention_deleted_bytes_total",
            "Bytes of chunks deleted by retention.",
            "counter",
            &r.bytes_deleted,
        ),
        (
            "parquet_retention_deleted_for_space_total",
            "Chunks deleted because the disk was below min_free.",
            "counter",
            &r.deleted_for_space,
        ),
        (
            "parquet_kept_bytes",
            "Bytes of completed chunks on disk.",
            "gauge",
            &r.bytes_kept,
        ),
    ] {
        counter(&mut out, name, help, kind);
        let _ = writeln!(
            out,
            "opcua_connector_{name}{{line=\"{line}\"}} {}",
            value.load(Ordering::Relaxed)
        );
    }
    let lost = &r.lost_before_upload;
    if let Some(u) = &state.metrics.upload {
        for (name, help, kind, value) in [
            (
                "parquet_upload_chunks_total",
                "Chunks confirmed by the object store.",
                "counter",
                &u.chunks,
            ),
            (
                "parquet_upload_bytes_total",
                "Bytes of chunks confirmed by the object store.",
                "counter",
                &u.bytes,
            ),
            (
                "parquet_upload_failures_total",
                "Upload attempts that failed (each retried).",
                "counter",
                &u.failures,
            ),
            (
                "parquet_upload_pending_chunks",
                "Completed chunks not yet confirmed by the store.",
                "gauge",
                &u.pending,
            ),
            (
                "parquet_upload_pending_bytes",
                "Bytes of completed chunks not yet confirmed.",
                "gauge",
                &u.pending_bytes,
            ),
            (
                "parquet_upload_oldest_pending_seconds",
                "Age of the oldest chunk not yet confirmed.",
                "gauge",
                &u.oldest_pending_s,
            ),
            (
                "parquet_upload_lost_chunks_total",
                "Chunks the disk limits deleted before they were uploaded.",
                "counter",
                lost,
            ),
        ] {
            counter(&mut out, name, help, kind);
            let _ = writeln!(
                out,
                "opcua_connector_{name}{{line=\"{line}\"}} {}",
                value.load(Ordering::Relaxed)
            );
        }
    }
    type Sink = fn(&MqttMetrics) -> &AtomicU64;
    let per_sink: [(&str, &str, Sink); 15] = [
        (
            "telemetry_messages_sent_total",
            "Messages handed to the broker.",
            |m| &m.messages_sent,
        ),
        (
            "telemetry_messages_acked_total",
            "Messages the broker acknowledged (then removed from the buffer).",
            |m| &m.messages_acked,
        ),
        (
            "telemetry_samples_buffered_total",
            "Samples encoded into buffered messages.",
            |m| &m.samples_buffered,
        ),
        (
            "telemetry_windows_buffered_total",
            "Windows of shaped telemetry encoded into buffered messages.",
            |m| &m.windows_buffered,
        ),
        (
            "telemetry_shaped_late_total",
            "Samples of a shaped group that came after their window was sent (sent raw).",
            |m| &m.shaped_late,
        ),
        (
            "telemetry_exception_suppressed_total",
            "Samples report by exception held back (within the deadband or min_interval; Parquet keeps them).",
            |m| &m.exception_suppressed,
        ),
        (
            "telemetry_heartbeats_total",
            "Last values sent again after max_interval without a change (report by exception).",
            |m| &m.heartbeats,
        ),
        (
            "telemetry_alerts_buffered_total",
            "Alerts of local rules buffered for the destination.",
            |m| &m.alerts_buffered,
        ),
        (
            "telemetry_reconnects_total",
            "Broker or hub reconnects.",
            |m| &m.reconnects,
        ),
        (
            "telemetry_renewals_total",
            "Reconnects to renew credentials (SAS tokens).",
            |m| &m.renewals,
        ),
        (
            "telemetry_status_failures_total",
            "Status updates the hub (connectorStatus) or the broker (an MQTT 5 PUBACK refusing the status topic) did not take, sent again later.",
            |m| &m.status_failures,
        ),
        (
            "telemetry_rejected_total",
            "Messages the broker refused for a passing reason (MQTT 5), sent again.",
            |m| &m.rejected,
        ),
        (
            "telemetry_dead_letters_total",
            "Messages the destination can never take (too large, refused for good), moved to dead-letters.jsonl.",
            |m| &m.dead_letters,
        ),
        (
            "telemetry_held_total",
            "Messages that waited in memory because the buffer or its disk was full.",
            |m| &m.held_in_memory,
        ),
        (
            "telemetry_refused_full_total",
            "Messages not buffered: buffer or disk full and the memory hold full too (Parquet keeps the samples).",
            |m| &m.refused_full,
        ),
    ];
    for (name, help, get) in per_sink {
        counter(&mut out, name, help, "counter");
        for (sink, ob) in &state.sinks {
            let _ = writeln!(
                out,
                "opcua_connector_{name}{{line=\"{line}\",sink=\"{sink}\"}} {}",
                get(&ob.metrics).load(Ordering::Relaxed)
            );
        }
    }
    let stats: Vec<_> = state
        .sinks
        .iter()
        .map(|(s, ob)| {
            (
                *s,
                ob.buffer.lock().unwrap_or_else(|e| e.into_inner()).stats(),
                ob.metrics.connected.load(Ordering::Relaxed),
            )
        })
        .collect();
    let gauges: [(&str, &str); 5] = [
        (
            "telemetry_connected",
            "1 when connected to the broker or hub.",
        ),
        ("buffer_bytes", "Bytes in the store-and-forward buffer."),
        (
            "buffer_pending_messages",
            "Messages not yet acknowledged by the broker.",
        ),
        (
            "buffer_oldest_age_seconds",
            "Age of the oldest unacknowledged message.",
        ),
        (
            "buffer_dropped_total",
            "Messages evicted by when_full = \"drop_oldest\".",
        ),
    ];
    for (i, (name, help)) in gauges.iter().enumerate() {
        counter(
            &mut out,
            name,
            help,
            if i == 4 { "counter" } else { "gauge" },
        );
        for (sink, s, connected) in &stats {
            let v = match i {
                0 => f64::from(u8::from(*connected)),
                1 => s.bytes_on_disk as f64,
                2 => s.pending as f64,
                3 => s.oldest_pending_age.map_or(0.0, |d| d.as_secs_f64()),
                _ => s.dropped as f64,
            };
            let _ = writeln!(
                out,
                "opcua_connector_{name}{{line=\"{line}\",sink=\"{sink}\"}} {v}"
            );
        }
    }
    if let Some(w) = &state.writes {
        writes(&mut out, &line, w);
    }
    if let Some(r) = &state.metrics.rules {
        rules(&mut out, &line, r);
    }
    if let Some(d) = &state.metrics.dps {
        dps(&mut out, &line, d);
    }
    out
}

/// The Device Provisioning Service's counters (`[dps]`).
fn dps(out: &mut String, line: &str, d: &DpsMetrics) {
    let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
    counter(
        out,
        "dps_registrations_total",
        "Registrations with the Device Provisioning Service by result: assigned, refused (the credential), failed (enrollment disabled, registration failed, another 4xx), throttled (429), error (network, timeout, 5xx, unreadable answer, unreadable credential).",
        "counter",
    );
    for (result, c) in [
        ("assigned", &d.assigned),
        ("refused", &d.refused),
        ("failed", &d.failed),
        ("throttled", &d.throttled),
        ("error", &d.errors),
    ] {
        let _ = writeln!(
            out,
            "opcua_connector_dps_registrations_total{{line=\"{line}\",result=\"{result}\"}} {}",
            get(c)
        );
    }
    for (name, help, c) in [
        (
            "dps_polls_total",
            "Operation-status polls sent to the Device Provisioning Service.",
            &d.polls,
        ),
        (
            "dps_cache_used_total",
            "Starts that used the cached DPS assignment without registering.",
            &d.cache_used,
        ),
        (
            "dps_reprovisions_total",
            "Registrations started because the hub refused the identity DPS had assigned.",
            &d.reprovisions,
        ),
        (
            "dps_cache_errors_total",
            "The DPS assignment cache could not be read (a damaged file), written or removed.",
            &d.cache_errors,
        ),
    ] {
        counter(out, name, help, "counter");
        let _ = writeln!(out, "opcua_connector_{name}{{line=\"{line}\"}} {}", get(c));
    }
}

fn rules(out: &mut String, line: &str, r: &RuleMetrics) {
    let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
    for (name, help, pick) in [
        (
            "rule_firings_total",
            "Times a local rule's condition held and its actions ran.",
            (|c: &RuleCounters| &c.firings) as fn(&RuleCounters) -> &AtomicU64,
        ),
        (
            "rule_suppressed_total",
            "Firings of a local rule held back because its condition held within min_interval of its last firing (it fires when the interval is over, if it still holds).",
            |c| &c.suppressed,
        ),
        ("rule_clears_total", "Times a fired local rule cleared.", |c| &c.clears),
        (
            "rule_errors_total",
            "Local rule actions that failed, and values a rule could not compare.",
            |c| &c.errors,
        ),
    ] {
        counter(out, name, help, "counter");
        for c in &r.rules {
            let _ = writeln!(
                out,
                "opcua_connector_{name}{{line=\"{line}\",rule=\"{}\"}} {}",
                c.rule,
                get(pick(c))
            );
        }
    }
    counter(
        out,
        "rule_inputs_dropped_total",
        "Samples of rule nodes dropped because the rule engine was behind.",
        "counter",
    );
    let _ = writeln!(
        out,
        "opcua_connector_rule_inputs_dropped_total{{line=\"{line}\"}} {}",
        get(&r.inputs_dropped)
    );
    let name = "rule_action_latency_seconds";
    counter(
        out,
        name,
        "From the arrival of the sample that fired a rule to its PLC write or call being issued.",
        "histogram",
    );
    let l = &r.action_latency;
    let mut cumulative = 0;
    for (i, le) in LATENCY_BUCKETS_MS.iter().enumerate() {
        cumulative += get(&l.buckets[i]);
        let _ = writeln!(
            out,
            "opcua_connector_{name}_bucket{{line=\"{line}\",le=\"{}\"}} {cumulative}",
            le / 1000.0
        );
    }
    cumulative += get(&l.buckets[LATENCY_BUCKETS_MS.len()]);
    let _ = writeln!(
        out,
        "opcua_connector_{name}_bucket{{line=\"{line}\",le=\"+Inf\"}} {cumulative}"
    );
    let _ = writeln!(
        out,
        "opcua_connector_{name}_sum{{line=\"{line}\"}} {}",
        get(&l.sum_us) as f64 / 1e6
    );
    let _ = writeln!(
        out,
        "opcua_connector_{name}_count{{line=\"{line}\"}} {}",
        get(&l.count)
    );
}

fn writes(out: &mut String, line: &str, w: &WriteMetrics) {
    let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
    counter(
        out,
        "writes_total",
        "Cloud-to-PLC writes by result: ok (200), refused (400), plc_error and unreachable (500).",
        "counter",
    );
    for (result, c) in [
        ("ok", &w.writes_ok),
        ("refused", &w.writes_refused),
        ("plc_error", &w.writes_failed),
        ("unreachable", &w.writes_unreachable),
    ] {
        let _ = writeln!(
            out,
            "opcua_connector_writes_total{{line=\"{line}\",result=\"{result}\"}} {}",
            get(c)
        );
    }
    counter(
        out,
        "method_calls_total",
        "Direct method and MQTT method calls by result.",
        "counter",
    );
    for (result, c) in [
        ("ok", &w.calls_ok),
        ("bad_arguments", &w.calls_bad_arguments),
        ("unknown_method", &w.calls_unknown),
        ("timeout", &w.calls_timeout),
        ("plc_error", &w.calls_failed),
    ] {
        let _ = writeln!(
            out,
            "opcua_connector_method_calls_total{{line=\"{line}\",result=\"{result}\"}} {}",
            get(c)
        );
    }
    counter(
        out,
        "c2d_messages_total",
        "IoT Hub cloud-to-device messages: write or method requests, other messages (not acted upon), refused for their size.",
        "counter",
    );
    for (kind, c) in [
        ("request", &w.c2d_requests),
        ("other", &w.c2d_other),
        ("refused", &w.c2d_refused),
    ] {
        let _ = writeln!(
            out,
            "opcua_connector_c2d_messages_total{{line=\"{line}\",kind=\"{kind}\"}} {}",
            get(c)
        );
    }
    for (name, help, c) in [
        (
            "commands_malformed_total",
            "Cloud requests that could not be understood (nothing written).",
            &w.malformed,
        ),
        (
            "commands_duplicate_total",
            "Requests repeated by id, answered again and not applied.",
            &w.duplicates,
        ),
        (
            "commands_dropped_total",
            "Cloud requests dropped because too many were waiting.",
            &*w.dropped,
        ),
        (
            "commands_busy_total",
            "Cloud requests answered 503 busy (the PLC's max_concurrent_commands reached, or too many held at start).",
            &w.busy,
        ),
        (
            "answers_dropped_total",
            "Answers to cloud requests dropped because too many were waiting for the connection.",
            &*w.answers_dropped,
        ),
        (
            "twin_ack_retries_total",
            "Reported-properties updates throttled (429), failed (5xx) or unanswered, sent again.",
            &w.acks_retried,
        ),
        (
            "twin_acks_refused_total",
            "Reported-properties updates refused by the hub with another 4xx, not sent again.",
            &w.acks_refused,
        ),
    ] {
        counter(out, name, help, "counter");
        let _ = writeln!(out, "opcua_connector_{name}{{line=\"{line}\"}} {}", get(c));
    }
}

/// Healthy when every PLC session and every telemetry sink is connected; else the reasons.
pub fn health(state: &State) -> Result<(), Vec<String>> {
    let mut bad = Vec::new();
    for p in &state.metrics.plcs {
        if p.writer_dead.load(Ordering::Relaxed) {
            bad.push(format!("plc {}: writer thread died", p.plc));
        }
        if !p.connected.load(Ordering::Relaxed) {
            bad.push(format!("plc {} not connected", p.plc));
        }
    }
    for (sink, ob) in &state.sinks {
        if !ob.metrics.connected.load(Ordering::Relaxed) {
            bad.push(format!("{sink} not connected"));
        }
    }
    if bad.is_empty() {
        Ok(())
    } else {
        Err(bad)
    }
}

/// Serves until `shutdown`.
pub async fn serve(listener: TcpListener, state: Arc<State>, shutdown: CancellationToken) {
    loop {
        let (mut conn, _) = tokio::select! {
            _ = shutdown.cancelled() => return,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    warn!(error = %e, "metrics: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let state = state.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let n = match tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf)).await {
                Ok(Ok(n)) => n,
                _ => return,
            };
            let req = String::from_utf8_lossy(&buf[..n]);
            let path = req.split_whitespace().nth(1).unwrap_or("");
            let get = req.starts_with("GET ");
            let (status, ctype, body) = match (get, path) {
                (true, "/metrics") => ("200 OK", "text/plain; version=0.0.4", render(&state)),
                (true, "/healthz") => match health(&state) {
                    Ok(()) => ("200 OK", "text/plain", "ok\n".to_owned()),
                    Err(bad) => (
                        "503 Service Unavailable",
                        "text/plain",
                        bad.join("\n") + "\n",
                    ),
                },
                (true, _) => (
                    "404 Not Found",
                    "text/plain",
                    "try /metrics or /healthz\n".to_owned(),
                ),
                _ => (
                    "405 Method Not Allowed",
                    "text/plain",
                    "GET only\n".to_owned(),
                ),
            };
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = conn.write_all(head.as_bytes()).await;
            let _ = conn.write_all(body.as_bytes()).await;
            let _ = conn.shutdown().await;
        });
    }
}
