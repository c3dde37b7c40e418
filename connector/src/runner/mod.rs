//! Wires a line: opens the outputs and cloud connections, starts one session and one writer
//! thread per PLC and the write service, serves `/metrics`; stops it all in order
//! ([`shutdown`]). Nothing here decides how data is handled: each piece lives in its stage.

pub mod lock;
pub mod shutdown;
pub mod watchdog;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::buffer::outbox::Outbox;
use crate::cloud::control::Control;
use crate::cloud::dps::DpsHub;
use crate::cloud::hub::sender::Hub;
use crate::cloud::hub::CurrentIdentity;
use crate::cloud::mqtt::flow::Sending;
use crate::cloud::mqtt::{sender, sender_v5};
use crate::cloud::status::{StatusBoard, StatusKind, StatusPlan};
use crate::config::{
    Config, DpsConfig, HubAuth, HubConfig, HubTransport, MqttVersion, Plc, HUB_MAX_MESSAGE_BYTES,
};
use crate::metrics::{Beat, DpsMetrics, Metrics, MqttMetrics, PlcMetrics, WriteMetrics};
use crate::opcua::{connect, session};
use crate::pipeline::tap::{Tap, Tapped, TAP_QUEUE};
use crate::pipeline::{self, Output, Writer};
use crate::rules::{watched, Engine};
use crate::sinks::parquet::retention::Retention;
use crate::sinks::parquet::ParquetSink;
use crate::sinks::telemetry::alerts::Alerts;
use crate::sinks::telemetry::{Encoder, EncoderSettings};
use crate::writes::{self, channels::Controls};
use shutdown::{Shutdown, Stage};
pub use shutdown::{BUDGET, DRAIN};
use watchdog::Watched;

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
    #[error("{0}")]
    Locked(#[from] lock::LockError),
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
    pub metrics_addr: Option<SocketAddr>,
    /// Counters of cloud-to-PLC writes and method calls.
    pub writes: Arc<WriteMetrics>,
    /// Cancelled when the line can no longer do its work (a writer thread died): stop it and
    /// exit non-zero, so that the service manager starts it afresh.
    pub fatal: CancellationToken,
    /// What the service watchdog checks for progress: writer threads, cloud connections, the
    /// write service.
    pub watched: Vec<Watched>,
    shutdown: Shutdown,
    _locks: Vec<lock::DirLock>,
}

/// Test hooks: faults injected on purpose (none by default).
#[derive(Debug, Clone, Default)]
pub struct Hooks {
    /// Every PLC's writer thread panics after this many batches.
    pub writer_panic_after: Option<u64>,
    /// Every PLC's writer thread hangs while this file exists.
    pub writer_hang_while: Option<std::path::PathBuf>,
    /// Uploads go in parts of this many bytes (a chunk larger than it in several).
    pub upload_part_bytes: Option<usize>,
}

/// A telemetry destination: its name in `/metrics`, its batching and its outbox.
struct Destination {
    name: &'static str,
    settings: EncoderSettings,
    outbox: Arc<Outbox>,
}

/// Starts every PLC of the line. Returns once the outputs are open; connecting and
/// subscribing go on in the background (a PLC that is down is retried forever).
pub fn start(config: &Config) -> Result<Running, RunError> {
    start_with(config, &Hooks::default())
}

/// [`start`] with test hooks.
pub fn start_with(config: &Config, hooks: &Hooks) -> Result<Running, RunError> {
    if config.parquet.is_none() && config.mqtt.is_none() && config.hub.is_none() {
        return Err(RunError::NoSink);
    }
    let dirs = written_dirs(config);
    let locks = lock::acquire_all(dirs.iter().map(|d| d.as_path()))?;
    let shutdown = Shutdown::new();
    let started = shutdown.abort_on_drop();
    let fatal = CancellationToken::new();
    let write_metrics = Arc::new(WriteMetrics::default());
    let serve_writes = writes::channels::served(config);
    let cloud = config.hub.is_some() || config.mqtt.is_some();
    if !cloud && (!config.writes.is_empty() || !config.methods.is_empty()) {
        tracing::warn!(
            writes = config.writes.len(),
            methods = config.methods.len(),
            "[[write]] and [[method]] need [hub] or [sink.mqtt] to receive requests; none is configured (local rules still use them)"
        );
    }
    let (controls, ends) = if serve_writes {
        let (c, e) = writes::channels::open(config, &write_metrics);
        (c, Some(e))
    } else {
        (Controls::default(), None)
    };
    let mut watched = Vec::new();
    let board = StatusBoard::new(
        &config.line.id,
        config.plcs.iter().map(|p| p.id.clone()).collect(),
    );
    let mut metrics = Metrics::default();
    let (destinations, hub_identity) = open_destinations(
        config,
        controls,
        &board,
        &shutdown.senders,
        &mut watched,
        &mut metrics,
    )?;
    if let Err(e) = connect::prepare_pki(&config.pki) {
        tracing::error!(error = %e, pki = %config.pki.dir.display(), "cannot prepare the OPC UA certificate");
    }
    let retention = config.parquet.as_ref().map(|p| {
        let r = &p.retention;
        let limits = crate::sinks::parquet::retention::Limits {
            max_bytes: r.max_bytes,
            max_age: r.max_age,
            min_free: r.min_free,
            uploads: p.upload.is_some(),
            keep_local: p.upload.as_ref().and_then(|u| u.keep_local),
        };
        let base = p.dir.join(format!("line={}", config.line.id));
        Retention::open(&base, limits, metrics.retention.clone())
    });
    if let Some(r) = &retention {
        if config.parquet.as_ref().is_some_and(|p| p.upload.is_some()) {
            let m = Arc::new(crate::metrics::UploadMetrics::default());
            metrics.upload = Some(m.clone());
            spawn_uploader(config, r.clone(), m, hooks, &shutdown.senders, &mut watched)?;
        }
    }
    // The events table keeps to the same limits in its own directory (not uploaded).
    let events_retention = config
        .parquet
        .as_ref()
        .filter(|_| config.plcs.iter().any(|p| !p.events.is_empty()))
        .map(|p| {
            let r = &p.retention;
            let limits = crate::sinks::parquet::retention::Limits {
                max_bytes: r.max_bytes,
                max_age: r.max_age,
                min_free: r.min_free,
                uploads: false,
                keep_local: None,
            };
            let base = p.events_dir.join(format!("line={}", config.line.id));
            Retention::open(&base, limits, Arc::default())
        });
    let rules = (!config.rules.is_empty()).then(|| local_rules(config, &destinations));
    metrics.rules = rules.as_ref().map(|r| r.engine.metrics.clone());
    let line_wide = LineWide {
        hooks,
        fatal: &fatal,
        retention,
        events_retention,
        taps: rules.as_ref().map(|r| &r.taps),
    };
    let mut links = Vec::new();
    let mut write_sessions = Vec::new();
    for plc in &config.plcs {
        let m = PlcMetrics::new(&plc.id);
        metrics.plcs.push(m.clone());
        watched.push((
            format!("the writer thread of plc {}", plc.id),
            m.writer_beat.clone(),
        ));
        spawn_plc(config, plc, &destinations, m, &shutdown, &line_wide)?;
        let writes_here = config.writes.iter().any(|w| w.plc == plc.id)
            || config.methods.iter().any(|w| w.plc == plc.id);
        if serve_writes && writes_here {
            let (link_tx, link_rx) = tokio::sync::watch::channel(None);
            links.push((plc.id.clone(), link_rx));
            let token = shutdown.sessions.token.clone();
            write_sessions.push(shutdown.sessions.tasks.track_future(session::run_writes(
                plc.clone(),
                config.pki.clone(),
                link_tx,
                token,
            )));
        }
    }
    board.set_plcs(metrics.plcs.clone());
    let mut commands = None;
    if let Some(r) = rules {
        commands = r.commands.map(|rx| (rx, r.engine.metrics.clone()));
        let beat = Arc::new(Beat::default());
        watched.push(("the rule engine".into(), beat.clone()));
        spawn_rules(r.engine, r.rx, &shutdown, beat)?;
    }
    if let Some(ends) = ends {
        let beat = Arc::new(Beat::default());
        watched.push(("the write service".into(), beat.clone()));
        let mut setup = ends.setup(config, links, commands);
        setup.hub_identity = hub_identity;
        spawn_writes(setup, write_sessions, &shutdown, beat)?;
    }
    let metrics_addr = serve_http(
        config,
        &metrics,
        &destinations,
        serve_writes.then(|| write_metrics.clone()),
        &shutdown.http,
    )?;
    let pick = |name| {
        destinations
            .iter()
            .find(|d| d.name == name)
            .map(|d| d.outbox.metrics.clone())
    };
    started.disarm();
    Ok(Running {
        mqtt: pick("mqtt"),
        hub: pick("hub"),
        outboxes: destinations.iter().map(|d| d.outbox.clone()).collect(),
        writes: write_metrics,
        metrics_addr,
        fatal,
        watched,
        _locks: locks,
        metrics,
        shutdown,
    })
}

/// The directories the line writes: PKI, its own Parquet partition (lines may share one
/// data directory), and the buffer (telemetry and write state).
fn written_dirs(config: &Config) -> Vec<std::path::PathBuf> {
    let mut dirs = vec![config.pki.dir.clone()];
    if let Some(p) = &config.parquet {
        dirs.push(p.dir.join(format!("line={}", config.line.id)));
    }
    if config.mqtt.is_some() || config.hub.is_some() || !config.rules.is_empty() {
        dirs.push(config.buffer.dir.clone());
    }
    dirs
}

/// The telemetry destinations (broker first, then hub): per destination one outbox and one
/// connection task for the line; the hub identity in use (the write state records it).
fn open_destinations(
    config: &Config,
    mut controls: Controls,
    board: &Arc<StatusBoard>,
    senders: &Stage,
    watched: &mut Vec<Watched>,
    metrics: &mut Metrics,
) -> Result<(Vec<Destination>, Option<CurrentIdentity>), RunError> {
    let sending = |outbox: &Arc<Outbox>, qos, control: Option<Control>| Sending {
        qos,
        outbox: outbox.clone(),
        shutdown: senders.token.clone(),
        grace: DRAIN,
        renew: None,
        control,
        status: None,
        send_limit: None,
        topics: None,
    };
    let site = config.line.site.as_deref().unwrap_or("");
    let mut identity = None;
    let mut out = Vec::new();
    if let Some(mc) = &config.mqtt {
        let outbox = Outbox::open(&config.buffer, "mqtt", mc.max_message_bytes)
            .map_err(|e| RunError::Mqtt(e.to_string()))?;
        let s = Sending {
            status: mc.status.as_ref().map(|(template, interval)| StatusPlan {
                kind: StatusKind::Retained {
                    topic: crate::cloud::mqtt::topic(template, site, &config.line.id, "", ""),
                },
                board: board.clone(),
                interval: *interval,
            }),
            ..sending(&outbox, mc.qos, controls.mqtt.take())
        };
        if mc.version == MqttVersion::V5 {
            let opts = sender_v5::options(mc).map_err(|e| RunError::Mqtt(e.to_string()))?;
            spawn_sender(senders, "mqtt", sender_v5::run(opts, s), watched)?;
        } else {
            let opts = sender::options(mc).map_err(|e| RunError::Mqtt(e.to_string()))?;
            spawn_sender(senders, "mqtt", sender::run(opts, s), watched)?;
        }
        out.push(Destination {
            name: "mqtt",
            settings: EncoderSettings::broker(mc, &config.line.id, site),
            outbox,
        });
    }
    if let (Some(hc), Some(dps)) = (&config.hub, config.hub.as_ref().and_then(dps_of)) {
        // The identity comes from DPS: the sender registers first (or uses the cached
        // assignment); the encoders buffer meanwhile, under the identity in use or the
        // registration id (every topic is resolved again when it is sent).
        let m = Arc::new(DpsMetrics::default());
        metrics.dps = Some(m.clone());
        let dps_hub = DpsHub::new(hc, dps, &config.buffer.dir, m);
        let current = dps_hub.current();
        identity = Some(current.clone());
        let outbox = Outbox::open(&config.buffer, "hub", HUB_MAX_MESSAGE_BYTES)
            .map_err(|e| RunError::Hub(e.to_string()))?;
        let s = Sending {
            topics: Some(current.topic_map()),
            send_limit: Some(HUB_MAX_MESSAGE_BYTES + 4096),
            status: hc.status_interval.map(|interval| StatusPlan {
                kind: StatusKind::Reported,
                board: board.clone(),
                interval,
            }),
            ..sending(&outbox, 1, controls.hub.take())
        };
        spawn_sender(senders, "hub", dps_hub.run(s), watched)?;
        let [telemetry, events, alerts] = current.encoder_topics(hc.payload, &dps.registration_id);
        out.push(Destination {
            name: "hub",
            settings: EncoderSettings::hub(hc, telemetry, events, alerts),
            outbox,
        });
    } else if let Some(hc) = &config.hub {
        let hub = Hub::new(hc).map_err(|e| RunError::Hub(e.to_string()))?;
        let current = CurrentIdentity::fixed(hub.identity().clone());
        identity = Some(current.clone());
        let outbox = Outbox::open(&config.buffer, "hub", HUB_MAX_MESSAGE_BYTES)
            .map_err(|e| RunError::Hub(e.to_string()))?;
        let mut control = controls.hub.take();
        if let Some(c) = control.as_mut() {
            // Cloud-to-device messages reach devices only (a module gets none over MQTT).
            c.set_identity_subscription(hub.c2d_filter());
        }
        let s = Sending {
            renew: hub.renewer(),
            // It takes larger packets (cloud-to-device) than the hub takes from it.
            send_limit: Some(HUB_MAX_MESSAGE_BYTES + 4096),
            status: hc.status_interval.map(|interval| StatusPlan {
                kind: StatusKind::Reported,
                board: board.clone(),
                interval,
            }),
            // Messages buffered under another identity (a previous connection string) are
            // sent under this one.
            topics: Some(current.topic_map()),
            ..sending(&outbox, 1, control)
        };
        match hc.transport {
            HubTransport::Https { send_every } => {
                let events = crate::cloud::hub::https::Events::new(&hub).map_err(RunError::Hub)?;
                let run = crate::cloud::hub::https::run(events, s, send_every);
                spawn_sender(senders, "hub", run, watched)?;
            }
            HubTransport::Mqtt | HubTransport::WebSockets => {
                let opts = hub.options().map_err(|e| RunError::Hub(e.to_string()))?;
                spawn_sender(senders, "hub", sender::run(opts, s), watched)?;
            }
        }
        out.push(Destination {
            name: "hub",
            settings: EncoderSettings::hub(
                hc,
                hub.telemetry_topics(),
                hub.event_topics(),
                hub.alert_topics(),
            ),
            outbox,
        });
    }
    Ok((out, identity))
}

/// The `[dps]` of a hub whose identity DPS assigns.
fn dps_of(hub: &HubConfig) -> Option<&DpsConfig> {
    match &hub.auth {
        HubAuth::Dps(d) => Some(d),
        _ => None,
    }
}

/// A cloud connection on a thread of its own (a current-thread runtime): its buffer reads,
/// fsyncs and segment deletes block only itself, never the runtime that serves the PLC
/// sessions and `/metrics`. Tracked by the senders' stage like a task; watched for progress.
fn spawn_sender(
    stage: &Stage,
    name: &str,
    run: impl std::future::Future<Output = ()> + Send + 'static,
    watched: &mut Vec<Watched>,
) -> Result<(), RunError> {
    let beat = Arc::new(Beat::default());
    watched.push((format!("the {name} connection"), beat.clone()));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| RunError::Sink(format!("cannot start the {name} runtime: {e}")))?;
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::Builder::new()
        .name(format!("send-{name}"))
        .spawn(move || {
            rt.block_on(watchdog::beating(beat, run));
            let _ = done_tx.send(());
        })
        .map_err(|e| RunError::Sink(format!("cannot start the {name} thread: {e}")))?;
    stage.tasks.spawn(done_rx);
    Ok(())
}

/// The uploader of the line's completed chunks, on a thread of its own like a cloud
/// connection (its file reads and the marker fsyncs block only itself).
fn spawn_uploader(
    config: &Config,
    retention: Arc<Retention>,
    metrics: Arc<crate::metrics::UploadMetrics>,
    hooks: &Hooks,
    stage: &Stage,
    watched: &mut Vec<Watched>,
) -> Result<(), RunError> {
    use crate::sinks::parquet::upload::{Destination, Uploader, PART};
    let Some((parquet, upload)) = config
        .parquet
        .as_ref()
        .and_then(|p| p.upload.as_ref().map(|u| (p, u)))
    else {
        return Ok(());
    };
    let destination = Destination::open(upload, config.hub.as_ref())
        .map_err(|e| RunError::Sink(format!("upload: {e}")))?;
    let uploader = Uploader {
        destination,
        retention,
        root: parquet.dir.clone(),
        metrics,
        part: hooks.upload_part_bytes.unwrap_or(PART),
        busy: Default::default(),
    };
    let token = stage.token.clone();
    spawn_sender(stage, "upload", uploader.run(token), watched)
}

/// What every PLC of the line shares.
struct LineWide<'a> {
    hooks: &'a Hooks,
    fatal: &'a CancellationToken,
    retention: Option<Arc<Retention>>,
    events_retention: Option<Arc<Retention>>,
    /// Per PLC id, the tap of the local rules (PLCs whose nodes a rule reads).
    taps: Option<&'a HashMap<String, Arc<Tap>>>,
}

/// The local rules of a line, before they run.
struct LocalRules {
    engine: Engine,
    rx: tokio::sync::mpsc::Receiver<Tapped>,
    taps: HashMap<String, Arc<Tap>>,
    /// The write service's end of the rules' writes and calls, when a rule writes or calls.
    commands: Option<tokio::sync::mpsc::UnboundedReceiver<writes::service::RuleCommand>>,
}

fn local_rules(config: &Config, destinations: &[Destination]) -> LocalRules {
    let (tx, rx) = tokio::sync::mpsc::channel(TAP_QUEUE);
    let (commands_tx, commands) = if writes::channels::served(config) {
        let (t, r) = tokio::sync::mpsc::unbounded_channel();
        (Some(t), Some(r))
    } else {
        (None, None)
    };
    let alerts = (!destinations.is_empty()).then(|| {
        let d = destinations
            .iter()
            .map(|d| (d.settings.clone(), d.outbox.clone()))
            .collect();
        Alerts::new(&config.line.id, d)
    });
    let fired =
        crate::rules::state::Fired::open(config.buffer.dir.join("rules").join("fired.json"));
    let engine = Engine::new(&config.rules, commands_tx, alerts, fired);
    let dropped = engine.metrics.inputs_dropped.clone();
    let taps = watched(&config.rules)
        .into_iter()
        .map(|(plc, nodes)| {
            let tap = Tap::new(&plc, nodes, tx.clone(), dropped.clone());
            (plc, Arc::new(tap))
        })
        .collect();
    LocalRules {
        engine,
        rx,
        taps,
        commands,
    }
}

/// The rule engine on a thread of its own (a current-thread runtime), so that a rule never
/// waits for a runtime worker busy decoding a large publish response; it stops with the write
/// service.
fn spawn_rules(
    engine: Engine,
    rx: tokio::sync::mpsc::Receiver<Tapped>,
    shutdown: &Shutdown,
    beat: Arc<Beat>,
) -> Result<(), RunError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| RunError::Sink(format!("cannot start the rules runtime: {e}")))?;
    let token = shutdown.writes.token.clone();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::Builder::new()
        .name("rules".into())
        .spawn(move || {
            rt.block_on(watchdog::beating(beat, engine.run(rx, token)));
            let _ = done_tx.send(());
        })
        .map_err(|e| RunError::Sink(format!("cannot start the rules thread: {e}")))?;
    shutdown.writes.tasks.spawn(done_rx);
    Ok(())
}

/// One PLC: its outputs on a writer thread of its own, fed by its session task.
fn spawn_plc(
    config: &Config,
    plc: &Plc,
    destinations: &[Destination],
    m: Arc<PlcMetrics>,
    shutdown: &Shutdown,
    line: &LineWide<'_>,
) -> Result<(), RunError> {
    let (hooks, fatal) = (line.hooks, line.fatal);
    let mut outputs = Vec::new();
    if let Some(p) = &config.parquet {
        let mut sink = ParquetSink::new(p.clone(), config.line.clone(), &plc.id)
            .map_err(|e| RunError::Sink(e.to_string()))?;
        if let Some(r) = &line.retention {
            sink = sink.with_retention(r.clone());
        }
        if let Some(r) = &line.events_retention {
            sink = sink.with_events_retention(r.clone());
        }
        outputs.push(Output::Parquet(sink));
    }
    for d in destinations {
        let enc =
            Encoder::new(d.settings.clone(), &config.line.id, d.outbox.clone()).with_shaping(plc);
        outputs.push(Output::Telemetry(enc));
    }
    // One notification batch is at most one publish response; the queue holds about
    // `queue_samples` samples assuming batches of ~1000.
    let queue_samples = config
        .parquet
        .as_ref()
        .map_or(1_000_000, |p| p.queue_samples.get());
    let (tx, rx) = pipeline::channel((queue_samples / 1000).max(16), m.clone());
    let tx = tx.with_tap(line.taps.and_then(|t| t.get(&plc.id).cloned()));
    let writer = Writer {
        outputs,
        rx,
        metrics: m.clone(),
        panic_after: hooks.writer_panic_after,
        hang_while: hooks.writer_hang_while.clone(),
        log: Default::default(),
    };
    let stop = shutdown.writers.token.clone();
    // The writer also ends when its queue has no sender left: normal once the sessions are
    // stopping, a fault before (the session task panicked), and then fatal like a panic.
    let sessions_stopping = shutdown.sessions.token.clone();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let (metrics, fatal) = (m.clone(), fatal.clone());
    std::thread::Builder::new()
        .name(format!("parquet-{}", plc.id))
        .spawn(move || {
            let run = std::panic::AssertUnwindSafe(|| writer.run(stop));
            let ended = std::panic::catch_unwind(run);
            if ended.is_ok() && !sessions_stopping.is_cancelled() {
                tracing::error!(plc = %metrics.plc,
                    "the PLC's session task ended unexpectedly: no more samples can come; stopping the connector (exit 1) so that the service manager restarts it");
                fatal.cancel();
            }
            if let Err(panic) = ended {
                let why = panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("a panic");
                metrics.writer_dead.store(true, std::sync::atomic::Ordering::Relaxed);
                tracing::error!(plc = %metrics.plc, panic = why,
                    "the PLC's writer thread died: its samples can no longer be written; stopping the connector (exit 1) so that the service manager restarts it");
                fatal.cancel();
            }
            let _ = done_tx.send(());
        })
        .map_err(|e| RunError::Sink(format!("cannot start writer thread: {e}")))?;
    shutdown.writers.tasks.spawn(done_rx);
    shutdown.sessions.tasks.spawn(session::run(
        plc.clone(),
        config.pki.clone(),
        tx,
        m,
        shutdown.sessions.token.clone(),
    ));
    Ok(())
}

/// The write service and the write sessions, on a thread of their own, so that a write never
/// waits for a runtime worker busy decoding a large publish response.
fn spawn_writes<S>(
    setup: writes::service::Setup,
    write_sessions: Vec<S>,
    shutdown: &Shutdown,
    beat: Arc<Beat>,
) -> Result<(), RunError>
where
    S: std::future::Future<Output = ()> + Send + 'static,
{
    let service = shutdown
        .writes
        .tasks
        .track_future(writes::service::run(setup, shutdown.writes.token.clone()));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| RunError::Sink(format!("cannot start the write runtime: {e}")))?;
    std::thread::Builder::new()
        .name("writes".into())
        .spawn(move || {
            rt.block_on(watchdog::beating(beat, async move {
                let service = tokio::spawn(service);
                let tasks: Vec<_> = write_sessions.into_iter().map(tokio::spawn).collect();
                for t in tasks {
                    let _ = t.await;
                }
                let _ = service.await;
            }))
        })
        .map_err(|e| RunError::Sink(format!("cannot start the write thread: {e}")))?;
    Ok(())
}

/// `/metrics` and `/healthz`, when `[metrics]` is configured; returns where.
fn serve_http(
    config: &Config,
    metrics: &Metrics,
    destinations: &[Destination],
    writes: Option<Arc<WriteMetrics>>,
    stage: &Stage,
) -> Result<Option<SocketAddr>, RunError> {
    let Some(mc) = &config.metrics else {
        return Ok(None);
    };
    let std_listener = std::net::TcpListener::bind(mc.listen)
        .map_err(|e| RunError::Metrics(format!("cannot listen on {}: {e}", mc.listen)))?;
    std_listener
        .set_nonblocking(true)
        .map_err(|e| RunError::Metrics(e.to_string()))?;
    let addr = std_listener.local_addr().ok();
    let listener = tokio::net::TcpListener::from_std(std_listener)
        .map_err(|e| RunError::Metrics(e.to_string()))?;
    let state = Arc::new(crate::http::State {
        line: config.line.id.clone(),
        metrics: metrics.clone(),
        sinks: destinations
            .iter()
            .map(|d| (d.name, d.outbox.clone()))
            .collect(),
        writes,
    });
    stage
        .tasks
        .spawn(crate::http::serve(listener, state, stage.token.clone()));
    Ok(addr)
}

impl Running {
    /// Stops the write service and the sessions, drains every writer into its outputs, lets
    /// the cloud connections deliver what they can ([`DRAIN`]): all within [`BUDGET`].
    pub async fn stop(self) {
        self.shutdown.stop(BUDGET).await;
    }
}
