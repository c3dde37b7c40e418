//! `opcua-simulator`: serves NodeSet2 models with simulated values.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use simulator::{parse_security, Fault, Limits, ScaleSpec, SimConfig, Source};
use tokio_util::sync::CancellationToken;

/// Serves NodeSet2 models with scripted, deterministic values, users, security and faults.
#[derive(Debug, Parser)]
#[command(name = "opcua-simulator", version)]
struct Args {
    /// NodeSet2 XML file to serve (repeatable). Default: the bundled bottling line.
    #[arg(long = "nodeset", value_name = "FILE")]
    nodesets: Vec<PathBuf>,
    /// Simulation profile (TOML). Default: the bundled bottling-line profile when no
    /// --nodeset is given, otherwise none (values stay at their nodeset values).
    #[arg(long, value_name = "FILE")]
    profile: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on; 0 picks a free one. The endpoint is printed on stdout.
    #[arg(long, default_value_t = 4840)]
    port: u16,
    /// Add N generated variables changing every INTERVAL, e.g. 100000@1s.
    #[arg(long, value_name = "N@INTERVAL", value_parser = parse_scale)]
    scale: Option<ScaleSpec>,
    /// Endpoints to offer: `all`, or a comma list of `None` and `POLICY:MODE`
    /// (Basic256Sha256, Aes128_Sha256_RsaOaep, Aes256_Sha256_RsaPss; Sign, SignAndEncrypt).
    #[arg(long, default_value = "all")]
    security: String,
    /// A username/password user, NAME:PASSWORD (repeatable).
    #[arg(long = "user", value_name = "NAME:PASSWORD")]
    users: Vec<String>,
    /// Refuse anonymous sessions.
    #[arg(long)]
    no_anonymous: bool,
    /// PKI directory: own/, private/, trusted/, rejected/ (a certificate is generated).
    #[arg(long, default_value = "pki/simulator")]
    pki_dir: PathBuf,
    /// Trust only client certificates placed in PKI_DIR/trusted (default: trust all).
    #[arg(long)]
    no_auto_trust: bool,
    /// Scheduled fault (repeatable): restart@10s:3s, close_sessions@5s, freeze@5s:2s,
    /// status@5s:2s:BadCommunicationError.
    #[arg(long = "fault", value_name = "SPEC", value_parser = parse_fault)]
    faults: Vec<Fault>,
    /// Seed for noise and jitter (overrides the profile's).
    #[arg(long)]
    seed: Option<u64>,
    /// Write ground truth (values produced per node, ticks) as JSON to FILE every 2 s.
    #[arg(long, value_name = "FILE")]
    stats_file: Option<PathBuf>,
    /// Server limit: monitored items per subscription.
    #[arg(long, default_value_t = Limits::default().max_monitored_items_per_sub)]
    max_items_per_sub: usize,
    /// Server limit: monitored items per CreateMonitoredItems call.
    #[arg(long, default_value_t = Limits::default().max_monitored_items_per_call)]
    max_items_per_call: usize,
    /// Keep the history of every counter for this long (at most 200,000 values per node).
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    history_window: std::time::Duration,
    /// No history: counters are not Historizing and HistoryRead answers
    /// BadHistoryOperationUnsupported.
    #[arg(long)]
    no_history: bool,
    /// Subscription tick: how often notifications are published (rounded up to whole ms) and
    /// the fastest publishing interval granted, e.g. 5ms. At least 1ms.
    #[arg(long, default_value = "100ms", value_parser = parse_publish_tick)]
    publish_tick: std::time::Duration,
    /// Log format on stderr.
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
}

fn parse_scale(s: &str) -> Result<ScaleSpec, String> {
    s.parse()
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("bad duration {s:?}: {e}"))
}

fn parse_publish_tick(s: &str) -> Result<std::time::Duration, String> {
    let d = parse_duration(s)?;
    if d < simulator::runtime::MIN_PUBLISH_TICK {
        return Err(format!("{s:?} is below the fastest subscription tick, 1ms"));
    }
    Ok(d)
}

fn parse_fault(s: &str) -> Result<Fault, String> {
    s.parse()
}

fn main() -> ExitCode {
    let args = Args::parse();
    init_logs(&args.log_format);
    let config = match config(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    rt.block_on(async move {
        let token = CancellationToken::new();
        let sim = match simulator::start(config, token.clone()).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("error: {e}");
                return if e.is_input() {
                    ExitCode::from(2)
                } else {
                    ExitCode::from(1)
                };
            }
        };
        println!("endpoint: {}", sim.endpoint_url());
        let stop = token.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            stop.cancel();
        });
        match sim.wait().await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(1)
            }
        }
    })
}

fn config(args: Args) -> Result<SimConfig, simulator::SimError> {
    let mut c = SimConfig::bottling_line(args.pki_dir);
    if !args.nodesets.is_empty() {
        c.nodesets = args
            .nodesets
            .into_iter()
            .map(Source::read)
            .collect::<Result<_, _>>()?;
        c.profile = None;
    }
    if let Some(p) = args.profile {
        c.profile = Some(Source::read(p)?);
    }
    c.host = args.host;
    c.port = args.port;
    c.scale = args.scale;
    if args.security != "all" {
        c.security = args
            .security
            .split(',')
            .map(|s| parse_security(s.trim()))
            .collect::<Result<_, _>>()
            .map_err(|m| {
                simulator::SimError::input("--security", None, args.security.clone(), m)
            })?;
    }
    for u in &args.users {
        let (name, pass) = u.split_once(':').ok_or_else(|| {
            simulator::SimError::input("--user", None, u.clone(), "expected NAME:PASSWORD")
        })?;
        c.users.push((name.to_owned(), pass.to_owned()));
    }
    c.anonymous = !args.no_anonymous;
    c.auto_trust_clients = !args.no_auto_trust;
    c.faults = args.faults;
    c.seed = args.seed;
    c.stats_file = args.stats_file;
    c.history = !args.no_history;
    c.history_window = args.history_window;
    c.publish_tick = args.publish_tick;
    c.limits.max_monitored_items_per_sub = args.max_items_per_sub;
    c.limits.max_monitored_items_per_call = args.max_items_per_call;
    Ok(c)
}

fn init_logs(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,opcua=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // colours only on a terminal: a log file must be greppable (`condition=TemperatureHigh`)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
