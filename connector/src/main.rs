//! `opcua-connector`: the command line. The library does the work.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use connector::commands::{self, browse::BrowseArgs, demo::DemoArgs, Failure};
use connector::config::{SecurityMode, SecurityPolicy};
use tracing_subscriber::layer::{Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;

/// OPC UA edge connector: PLC subscriptions to Parquet, MQTT and Azure IoT Hub; cloud writes back.
#[derive(Debug, Parser)]
#[command(name = "opcua-connector", version = connector::VERSION)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run until SIGINT/SIGTERM, then drain: flush open chunks, close sessions.
    Run {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Validate a config offline (every problem, with file:line and key) and print the plan.
    Check {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Walk a server's address space and print a ready-to-paste [[plc.group]] block.
    Browse {
        #[arg(long, value_name = "URL")]
        endpoint: String,
        /// Root node (nsu=..., ns=..., i=85); default the Objects folder.
        #[arg(long, value_name = "NODE")]
        root: Option<String>,
        /// How deep to walk below the root.
        #[arg(long, default_value_t = 10)]
        depth: usize,
        #[arg(long, value_enum, default_value_t = Policy::None)]
        security_policy: Policy,
        #[arg(long, value_enum, default_value_t = Mode::None)]
        security_mode: Mode,
        #[arg(long)]
        username: Option<String>,
        /// Environment variable holding the password.
        #[arg(long, value_name = "VAR")]
        password_env: Option<String>,
        #[arg(long, default_value = "pki")]
        pki_dir: PathBuf,
        /// Trust an unknown server certificate (stored in PKI_DIR/trusted).
        #[arg(long)]
        trust_server: bool,
    },
    /// Print the JSON Schema of the config file (editor completion and checks of keys).
    Schema,
    /// The newcomer's first run: bundled simulator + connector writing Parquet.
    Demo {
        /// How long to run.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        duration: Duration,
        /// Output directory.
        #[arg(long, default_value = "data/demo")]
        out: PathBuf,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Policy {
    #[value(name = "None")]
    None,
    #[value(name = "Basic256Sha256")]
    Basic256Sha256,
    #[value(name = "Aes128_Sha256_RsaOaep")]
    Aes128Sha256RsaOaep,
    #[value(name = "Aes256_Sha256_RsaPss")]
    Aes256Sha256RsaPss,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Mode {
    #[value(name = "None")]
    None,
    #[value(name = "Sign")]
    Sign,
    #[value(name = "SignAndEncrypt")]
    SignAndEncrypt,
}

fn main() -> ExitCode {
    // Keys, certificates, state, buffers and chunks are the owner's only (0600 / 0700); a
    // reader of the data (an upload agent) is given access by group ACLs, deliberately.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    let cli = Cli::parse();
    // The demo shows its own progress; only warnings and errors interleave with it.
    let quiet = matches!(cli.command, Command::Demo { .. });
    init_logs(cli.log_format, if quiet { "warn" } else { "info" });
    let outcome = match cli.command {
        Command::Check { config } => commands::check::check(&config),
        Command::Schema => commands::schema::schema(),
        other => match tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt.block_on(async_command(other)),
            Err(e) => Err(Failure::Runtime(format!("cannot start the runtime: {e}"))),
        },
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("error: {f}");
            ExitCode::from(f.exit_code())
        }
    }
}

async fn async_command(command: Command) -> commands::Outcome {
    match command {
        Command::Run { config } => commands::run::run(&config, &hooks()).await,
        Command::Browse {
            endpoint,
            root,
            depth,
            security_policy,
            security_mode,
            username,
            password_env,
            pki_dir,
            trust_server,
        } => {
            commands::browse::browse(BrowseArgs {
                endpoint,
                root,
                depth,
                security_policy: match security_policy {
                    Policy::None => SecurityPolicy::None,
                    Policy::Basic256Sha256 => SecurityPolicy::Basic256Sha256,
                    Policy::Aes128Sha256RsaOaep => SecurityPolicy::Aes128Sha256RsaOaep,
                    Policy::Aes256Sha256RsaPss => SecurityPolicy::Aes256Sha256RsaPss,
                },
                security_mode: match security_mode {
                    Mode::None => SecurityMode::None,
                    Mode::Sign => SecurityMode::Sign,
                    Mode::SignAndEncrypt => SecurityMode::SignAndEncrypt,
                },
                username,
                password_env,
                pki_dir,
                trust_server,
            })
            .await
        }
        Command::Demo { duration, out } => commands::demo::demo(DemoArgs { duration, out }).await,
        Command::Check { config } => commands::check::check(&config),
        Command::Schema => commands::schema::schema(),
    }
}

fn init_logs(format: LogFormat, level: &str) {
    // async-opcua logs routine events (keep-alives, reconnect attempts) as warnings; ours say
    // what matters with the plc named. Audit records of cloud-to-PLC writes stay at any level.
    let default = format!(
        "{level},audit=info,opcua_client=error,opcua_core=error,opcua_server=error,opcua_crypto=error,opcua_types=error,opcua_nodes=error"
    );
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // While we close our own sessions (shutdown), async-opcua's errors are the close we asked
    // for (e.g. `publish failed ... BadSessionClosed` from the pending Publish requests).
    let not_our_close = tracing_subscriber::filter::filter_fn(|m| {
        !(*m.level() == tracing::Level::ERROR
            && m.target().starts_with("opcua_client")
            && connector::opcua::session::closing())
    });
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt: Box<dyn Layer<_> + Send + Sync> = match format {
        LogFormat::Json => fmt.json().boxed(),
        // Colours only on a terminal; every field escaped (see `escaped_fields`).
        LogFormat::Text => fmt
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .fmt_fields(escaped_fields())
            .boxed(),
    };
    tracing_subscriber::registry()
        .with(fmt.with_filter(filter).with_filter(not_our_close))
        .init();
}

/// Text-log fields with control characters escaped: a line break or a terminal escape in a
/// request id, a property name or any other field taken from the cloud or a PLC is written as
/// `\n`, `\u{1b}`, ..., so it can neither start a forged log line (a fake `audit: written`)
/// nor drive the reader's terminal. One event, one line.
fn escaped_fields() -> impl for<'w> tracing_subscriber::fmt::FormatFields<'w> {
    use tracing_subscriber::field::MakeExt;
    tracing_subscriber::fmt::format::debug_fn(
        |w: &mut tracing_subscriber::fmt::format::Writer<'_>,
         field: &tracing::field::Field,
         value: &dyn std::fmt::Debug| {
            let raw = format!("{value:?}");
            let text = escape_controls(&raw);
            if field.name() == "message" {
                write!(w, "{text}")
            } else {
                write!(w, "{}={text}", field.name())
            }
        },
    )
    .delimited(" ")
}

/// `s` with every control character (and the Unicode line and paragraph separators) written
/// as its Rust escape.
fn escape_controls(s: &str) -> std::borrow::Cow<'_, str> {
    let bad = |c: char| c.is_control() || c == '\u{2028}' || c == '\u{2029}';
    if !s.contains(bad) {
        return s.into();
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if bad(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out.into()
}

/// Faults injected by tests through the environment, only in builds with the
/// `fault-injection` feature (the test suite's; never a release package).
#[cfg(feature = "fault-injection")]
fn hooks() -> connector::runner::Hooks {
    connector::runner::Hooks {
        writer_panic_after: std::env::var("OPCUA_CONNECTOR_FAULT_WRITER_PANIC_AFTER")
            .ok()
            .and_then(|v| v.parse().ok()),
    }
}

#[cfg(not(feature = "fault-injection"))]
fn hooks() -> connector::runner::Hooks {
    connector::runner::Hooks::default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_in_fields_cannot_break_a_log_line() {
        let forged = "r-1\nINFO audit: written who=twin result=200\u{1b}[2J\r\u{2028}";
        let text = escape_controls(forged);
        assert_eq!(
            text,
            "r-1\\nINFO audit: written who=twin result=200\\u{1b}[2J\\r\\u{2028}"
        );
        assert_eq!(
            escape_controls("plain text, ünïcode"),
            "plain text, ünïcode"
        );
        // Through a real subscriber, the way `run` formats text logs.
        #[derive(Clone, Default)]
        struct Buf(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let writer = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .fmt_fields(escaped_fields())
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let who = format!("request {forged}");
            tracing::info!(target: "audit", who = %who, result = 400, "write refused");
        });
        let out = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert_eq!(out.lines().count(), 1, "{out}");
        assert!(!out.contains('\u{1b}'), "{out}");
        assert!(
            out.contains("audit: write refused who=request r-1\\nINFO audit: written"),
            "{out}"
        );
    }
}
