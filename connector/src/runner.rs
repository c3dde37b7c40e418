//! Runs a line: one session task per PLC feeding one Parquet writer thread per PLC.
//!
//! Shutdown drains: sessions stop first (subscriptions deleted, no new samples), then every
//! writer empties its queue into the open chunk and closes it, within a grace time.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle as ThreadHandle;
use std::time::{Duration, SystemTime};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::Config;
use crate::opcua::session;
use crate::pipeline::{self, Batch};
use crate::sinks::mqtt::flow::Sending;
use crate::sinks::mqtt::{self, control, Encoder, EncoderSettings, MqttMetrics, Outbox};
use crate::sinks::parquet::ParquetSink;
use crate::telemetry::{Metrics, PlcMetrics};
use crate::writes::service::{self, CommandTopics, Setup, WriteMetrics};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{0}")]
    Sink(String),
    #[error("the configuration has no sink: add [sink.parquet], [sink.mqtt] or [hub]")]
    NoSink,
    #[error("mqtt: {0}")]
    Mqtt(String),
    #[error("hub: {0}")]
    Hub(String),
    #[error("metrics: {0}")]
    Metrics(String),
}

/// A running line.
pub struct Running {
    pub metrics: Metrics,
    /// Counters of the MQTT telemetry, when configured.
    pub mqtt: Option<Arc<MqttMetrics>>,
    /// Counters of the IoT Hub telemetry, when configured.
    pub hub: Option<Arc<MqttMetrics>>,
    /// The telemetry buffers (broker first, then hub), for their stats.
    pub outboxes: Vec<Arc<Outbox>>,
    /// Where `/metrics` and `/healthz` are served, when `[metrics]` is configured.
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Counters of cloud-to-PLC writes and method calls.
    pub writes: Arc<WriteMetrics>,
    service_stop: CancellationToken,
    /// Signals of the write thread: the service ended, the write sessions ended.
    writes_done: Option<(
        tokio::sync::oneshot::Receiver<()>,
        tokio::sync::oneshot::Receiver<()>,
    )>,
    http_stop: CancellationToken,
    mqtt_stop: CancellationToken,
    mqtt_tasks: Vec<JoinHandle<()>>,
    sessions: CancellationToken,
    session_tasks: Vec<JoinHandle<()>>,
    stop_writers: Arc<AtomicBool>,
    writers: Vec<ThreadHandle<()>>,
}

/// Starts every PLC of the line. Returns once the sinks are open; connecting and subscribing
/// go on in the background (a PLC that is down is retried forever).
pub fn start(config: &Config) -> Result<Running, RunError> {
    if config.parquet.is_none() && config.mqtt.is_none() && config.hub.is_none() {
        return Err(RunError::NoSink);
    }
    // Cloud-to-PLC: served when the file maps writes or methods, over the hub's twin and
    // methods and the broker's command topics.
    let mapped = !config.writes.is_empty() || !config.methods.is_empty();
    let commands = mapped && (config.hub.is_some() || config.mqtt.is_some());
    let write_metrics = Arc::new(WriteMetrics::default());
    let mut hub_control = None;
    let mut mqtt_control = None;
    let mut service_ends = (None, None);
    if commands {
        if config.hub.is_some() {
            let subs = crate::sinks::hub::topics::SUBSCRIPTIONS
                .iter()
                .map(|s| s.to_string())
                .collect();
            let (c, ends) = control::channel(subs, write_metrics.dropped.clone());
            hub_control = Some(c);
            service_ends.0 = Some(ends);
        }
        if let Some(mc) = &config.mqtt {
            let base = mqtt::topic(
                &mc.command_topic,
                config.line.site.as_deref().unwrap_or(""),
                &config.line.id,
                "",
                "",
            );
            let topics = CommandTopics::new(&base);
            let (c, ends) = control::channel(topics.subscriptions(), write_metrics.dropped.clone());
            mqtt_control = Some(c);
            service_ends.1 = Some((ends, topics));
        }
    }
    if mapped && !commands {
        warn!(
            writes = config.writes.len(),
            methods = config.methods.len(),
            "[[write]] and [[method]] need [hub] or [sink.mqtt] to receive requests; none is configured"
        );
    }
    let sessions = CancellationToken::new();
    let stop_writers = Arc::new(AtomicBool::new(false));
    let mut metrics = Metrics::default();
    let mut session_tasks = Vec::new();
    let mut writers = Vec::new();
    // One notification batch is at most one publish response; the queue holds about
    // `queue_samples` samples assuming batches of ~1000.
    let queue_samples = config
        .parquet
        .as_ref()
        .map_or(1_000_000, |p| p.queue_samples.get());
    let capacity = (queue_samples / 1000).max(16);
    // Telemetry: per destination (broker, hub) one buffer and one sender for the line;
    // every PLC's writer encodes into each.
    let mqtt_stop = CancellationToken::new();
    let mut outputs: Vec<(EncoderSettings, Arc<Outbox>)> = Vec::new();
    let mut mqtt_tasks = Vec::new();
    let mut mqtt_metrics = None;
    let mut hub_metrics = None;
    // One message must fit in one buffer segment (a segment is at most half of max_bytes).
    let segment = config.buffer.segment_bytes.min(config.buffer.max_bytes / 2);
    let largest = [
        config.mqtt.as_ref().map(|m| m.max_message_bytes as u64),
        config
            .hub
            .as_ref()
            .map(|_| crate::sinks::hub::sender::MAX_MESSAGE_BYTES as u64),
    ];
    if let Some(msg) = largest.into_iter().flatten().max() {
        if segment < msg + 1024 {
            return Err(RunError::Mqtt(format!(
                "[buffer] segments of {segment} bytes (segment_bytes, at most max_bytes / 2) cannot hold a message of {msg} bytes: raise segment_bytes and max_bytes or lower max_message_bytes"
            )));
        }
    }
    if let Some(mc) = &config.mqtt {
        let m = Arc::new(MqttMetrics::default());
        let outbox = Outbox::open(&config.buffer, "mqtt", m.clone())
            .map_err(|e| RunError::Mqtt(e.to_string()))?;
        let sending = Sending {
            qos: mc.qos,
            outbox: outbox.clone(),
            shutdown: mqtt_stop.clone(),
            grace: Duration::from_secs(5),
            renew: None,
            control: mqtt_control.take(),
        };
        if mc.version == crate::config::MqttVersion::V5 {
            let opts = mqtt::sender_v5::options(mc).map_err(|e| RunError::Mqtt(e.to_string()))?;
            mqtt_tasks.push(tokio::spawn(mqtt::sender_v5::run(opts, sending)));
        } else {
            let opts = mqtt::sender::options(mc).map_err(|e| RunError::Mqtt(e.to_string()))?;
            mqtt_tasks.push(tokio::spawn(mqtt::sender::run(opts, sending)));
        }
        let site = config.line.site.as_deref().unwrap_or("");
        outputs.push((EncoderSettings::broker(mc, &config.line.id, site), outbox));
        mqtt_metrics = Some(m);
    }
    if let Some(hc) = &config.hub {
        let hub =
            crate::sinks::hub::sender::Hub::new(hc).map_err(|e| RunError::Hub(e.to_string()))?;
        let m = Arc::new(MqttMetrics::default());
        let outbox = Outbox::open(&config.buffer, "hub", m.clone())
            .map_err(|e| RunError::Hub(e.to_string()))?;
        let opts = hub.options().map_err(|e| RunError::Hub(e.to_string()))?;
        let sending = Sending {
            qos: 1,
            outbox: outbox.clone(),
            shutdown: mqtt_stop.clone(),
            grace: Duration::from_secs(5),
            renew: hub.renewer(),
            control: hub_control.take(),
        };
        mqtt_tasks.push(tokio::spawn(mqtt::sender::run(opts, sending)));
        outputs.push((hub.encoder_settings(), outbox));
        hub_metrics = Some(m);
    }
    let mut links = Vec::new();
    let mut write_sessions = Vec::new();
    for plc in &config.plcs {
        let (link_tx, link_rx) = tokio::sync::watch::channel(None);
        links.push((plc.id.clone(), link_rx));
        let m = PlcMetrics::new(&plc.id);
        metrics.plcs.push(m.clone());
        let sink = match &config.parquet {
            Some(p) => Some(
                ParquetSink::new(p.clone(), config.line.clone(), &plc.id)
                    .map_err(|e| RunError::Sink(e.to_string()))?,
            ),
            None => None,
        };
        let encoders: Vec<Encoder> = outputs
            .iter()
            .map(|(settings, outbox)| {
                Encoder::new(settings.clone(), &config.line.id, outbox.clone())
            })
            .collect();
        let (tx, rx) = pipeline::channel(capacity, m.clone());
        let stop = stop_writers.clone();
        let wm = m.clone();
        writers.push(
            std::thread::Builder::new()
                .name(format!("parquet-{}", plc.id))
                .spawn(move || write_loop(sink, encoders, rx, wm, stop))
                .map_err(|e| RunError::Sink(format!("cannot start writer thread: {e}")))?,
        );
        session_tasks.push(tokio::spawn(session::run(
            plc.clone(),
            config.pki.clone(),
            tx,
            m,
            sessions.clone(),
        )));
        let writes_here = config.writes.iter().any(|w| w.plc == plc.id)
            || config.methods.iter().any(|w| w.plc == plc.id);
        if commands && writes_here {
            write_sessions.push(session::run_writes(
                plc.clone(),
                config.pki.clone(),
                link_tx,
                sessions.clone(),
            ));
        }
    }
    let service_stop = CancellationToken::new();
    let mut writes_done = None;
    if commands {
        let (hub, mqtt) = service_ends;
        let setup = Setup {
            writes: config.writes.clone(),
            methods: config.methods.clone(),
            links,
            hub,
            mqtt,
            state_file: config.buffer.dir.join("writes").join("state.json"),
            metrics: write_metrics.clone(),
        };
        // The write service and the write sessions run on a thread of their own, so that a
        // write never waits for a runtime worker busy decoding a large publish response.
        let (service_tx, service_rx) = tokio::sync::oneshot::channel();
        let (sessions_tx, sessions_rx) = tokio::sync::oneshot::channel();
        let stop = service_stop.clone();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| RunError::Sink(format!("cannot start the write runtime: {e}")))?;
        std::thread::Builder::new()
            .name("writes".into())
            .spawn(move || {
                rt.block_on(async move {
                    let service = tokio::spawn(async move {
                        service::run(setup, stop).await;
                        let _ = service_tx.send(());
                    });
                    let tasks: Vec<_> = write_sessions.into_iter().map(tokio::spawn).collect();
                    for t in tasks {
                        let _ = t.await;
                    }
                    let _ = sessions_tx.send(());
                    let _ = service.await;
                })
            })
            .map_err(|e| RunError::Sink(format!("cannot start the write thread: {e}")))?;
        writes_done = Some((service_rx, sessions_rx));
    }
    // /metrics and /healthz.
    let http_stop = CancellationToken::new();
    let mut metrics_addr = None;
    if let Some(mc) = &config.metrics {
        let std_listener = std::net::TcpListener::bind(mc.listen)
            .map_err(|e| RunError::Metrics(format!("cannot listen on {}: {e}", mc.listen)))?;
        std_listener
            .set_nonblocking(true)
            .map_err(|e| RunError::Metrics(e.to_string()))?;
        metrics_addr = std_listener.local_addr().ok();
        let listener = tokio::net::TcpListener::from_std(std_listener)
            .map_err(|e| RunError::Metrics(e.to_string()))?;
        let mut sinks = Vec::new();
        for (i, (_, ob)) in outputs.iter().enumerate() {
            let name = if config.mqtt.is_some() && i == 0 {
                "mqtt"
            } else {
                "hub"
            };
            sinks.push((name, ob.clone()));
        }
        let state = Arc::new(crate::telemetry::http::State {
            line: config.line.id.clone(),
            metrics: metrics.clone(),
            sinks,
            writes: commands.then(|| write_metrics.clone()),
        });
        tokio::spawn(crate::telemetry::http::serve(
            listener,
            state,
            http_stop.clone(),
        ));
    }
    Ok(Running {
        writes: write_metrics,
        service_stop,
        writes_done,
        metrics_addr,
        http_stop,
        metrics,
        mqtt: mqtt_metrics,
        hub: hub_metrics,
        outboxes: outputs.iter().map(|(_, o)| o.clone()).collect(),
        mqtt_stop,
        mqtt_tasks,
        sessions,
        session_tasks,
        stop_writers,
        writers,
    })
}

impl Running {
    /// Stops the sessions, then drains and closes every sink.
    pub async fn stop(self, grace: Duration) {
        // No new writes; a write in flight ends with its session.
        self.service_stop.cancel();
        let (service_done, write_sessions_done) = match self.writes_done {
            Some((a, b)) => (Some(a), Some(b)),
            None => (None, None),
        };
        if let Some(done) = service_done {
            let _ = tokio::time::timeout(grace, done).await;
        }
        self.sessions.cancel();
        for t in self.session_tasks {
            if tokio::time::timeout(grace, t).await.is_err() {
                warn!("a plc session did not stop within the grace time");
            }
        }
        if let Some(done) = write_sessions_done {
            if tokio::time::timeout(grace, done).await.is_err() {
                warn!("a plc write session did not stop within the grace time");
            }
        }
        self.stop_writers.store(true, Ordering::Relaxed);
        let writers = self.writers;
        let joined = tokio::task::spawn_blocking(move || {
            for w in writers {
                let _ = w.join();
            }
        });
        if tokio::time::timeout(grace.max(Duration::from_secs(10)), joined)
            .await
            .is_err()
        {
            error!("a parquet writer did not finish within the grace time");
        }
        // Writers have buffered everything; the sender delivers what it can within the grace
        // time, the rest stays on disk for the next start.
        self.mqtt_stop.cancel();
        self.http_stop.cancel();
        for t in self.mqtt_tasks {
            let _ = tokio::time::timeout(grace, t).await;
        }
    }
}

/// The writer thread of one PLC: batches into the sinks, rolls and flushes on time, drains
/// at the end.
fn write_loop(
    mut sink: Option<ParquetSink>,
    mut encoders: Vec<Encoder>,
    rx: Receiver<Batch>,
    m: Arc<PlcMetrics>,
    stop: Arc<AtomicBool>,
) {
    let write = |sink: &mut Option<ParquetSink>, encoders: &mut Vec<Encoder>, batch: Batch| {
        if let Some(sink) = sink.as_mut() {
            if let Err(e) = sink.write(&batch) {
                PlcMetrics::add(&m.write_errors, 1);
                error!(plc = %m.plc, error = %e, samples = batch.len(), "parquet write failed");
            }
        }
        for enc in encoders.iter_mut() {
            if let Err(e) = enc.write(&batch) {
                PlcMetrics::add(&m.write_errors, 1);
                error!(plc = %m.plc, error = %e, samples = batch.len(), "mqtt buffering failed");
            }
        }
    };
    loop {
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(batch) => write(&mut sink, &mut encoders, batch),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        if let Some(s) = sink.as_mut() {
            if let Err(e) = s.tick(SystemTime::now()) {
                PlcMetrics::add(&m.write_errors, 1);
                error!(plc = %m.plc, error = %e, "parquet roll failed");
            }
            publish_stats(s, &m);
        }
        for enc in encoders.iter_mut() {
            if let Err(e) = enc.tick() {
                PlcMetrics::add(&m.write_errors, 1);
                error!(plc = %m.plc, error = %e, "mqtt buffering failed");
            }
        }
        if stop.load(Ordering::Relaxed) {
            break;
        }
    }
    // Drain whatever is queued, then close the open chunk and flush the batches.
    while let Ok(batch) = rx.try_recv() {
        write(&mut sink, &mut encoders, batch);
    }
    for enc in encoders.iter_mut() {
        if let Err(e) = enc.flush() {
            PlcMetrics::add(&m.write_errors, 1);
            error!(plc = %m.plc, error = %e, "mqtt buffering failed at shutdown");
        }
    }
    if let Some(mut s) = sink {
        match s.close() {
            Ok(Some(c)) => {
                info!(plc = %m.plc, path = %c.path.display(), rows = c.rows, "last chunk closed")
            }
            Ok(None) => {}
            Err(e) => {
                PlcMetrics::add(&m.write_errors, 1);
                error!(plc = %m.plc, error = %e, "closing the last chunk failed");
            }
        }
        publish_stats(&s, &m);
    }
}

fn publish_stats(sink: &ParquetSink, m: &PlcMetrics) {
    let s = sink.stats();
    m.samples_written.store(s.rows_written, Ordering::Relaxed);
    m.chunks_written.store(s.chunks_written, Ordering::Relaxed);
    m.bytes_written.store(s.bytes_written, Ordering::Relaxed);
}
