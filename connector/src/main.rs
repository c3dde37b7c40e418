//! `opcua-connector`: the command line. The library does the work.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
#[cfg(feature = "demo")]
use connector::commands::demo::DemoArgs;
use connector::commands::{self, browse::BrowseArgs, dtdl::DtdlArgs, logs, Failure};
use connector::config::{SecurityMode, SecurityPolicy};

/// OPC UA edge connector: PLC subscriptions to Parquet, MQTT and Azure IoT Hub; cloud writes back.
#[derive(Debug, Parser)]
#[command(name = "opcua-connector", version = connector::VERSION)]
struct Cli {
    /// Log format on stderr. Text is plain unless stderr is a terminal (colours) or the
    /// systemd journal (each line prefixed with its syslog priority, no timestamp).
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
    /// Print the line's IoT Plug and Play model: a DTDL v3 Interface (JSON-LD) of its
    /// telemetry, writable [[write]] properties and [[method]] commands.
    ///
    /// The @id is [hub] model_id, or one made from the line's site and id (noted on stderr).
    /// The methods' arguments are read from the PLCs (the config's endpoints, security and
    /// users, as `run` connects); a PLC not reachable within --timeout leaves its methods
    /// without request and response schemas, noted on stderr. Names that DTDL does not
    /// allow are changed (noted); two entries with one DTDL name are an error (exit 2).
    Dtdl {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Do not connect to the PLCs (the methods' arguments stay unknown).
        #[arg(long)]
        offline: bool,
        /// How long each PLC may take to connect and answer.
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
    /// The newcomer's first run: bundled simulator + connector writing Parquet.
    #[cfg(feature = "demo")]
    Demo {
        /// How long to run.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        duration: std::time::Duration,
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
    // The demo shows its own progress, dtdl prints a model: only warnings and errors
    // interleave with them.
    #[cfg(feature = "demo")]
    let quiet = matches!(cli.command, Command::Demo { .. } | Command::Dtdl { .. });
    #[cfg(not(feature = "demo"))]
    let quiet = matches!(cli.command, Command::Dtdl { .. });
    let format = match cli.log_format {
        LogFormat::Text => logs::Format::Text,
        LogFormat::Json => logs::Format::Json,
    };
    // dtdl says in its notes why a PLC could not be reached: the stack's lines add nothing.
    let stack = if matches!(cli.command, Command::Dtdl { .. }) {
        "off"
    } else {
        "error"
    };
    logs::init(format, if quiet { "warn" } else { "info" }, stack);
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
            logs::final_error(&f);
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
        Command::Dtdl {
            config,
            offline,
            timeout,
        } => {
            commands::dtdl::dtdl(DtdlArgs {
                config,
                offline,
                timeout,
            })
            .await
        }
        #[cfg(feature = "demo")]
        Command::Demo { duration, out } => commands::demo::demo(DemoArgs { duration, out }).await,
        Command::Check { config } => commands::check::check(&config),
        Command::Schema => commands::schema::schema(),
    }
}

/// Faults injected by tests through the environment, only in builds with the
/// `fault-injection` feature (the test suite's; never a release package).
#[cfg(feature = "fault-injection")]
fn hooks() -> connector::runner::Hooks {
    connector::runner::Hooks {
        writer_panic_after: std::env::var("OPCUA_CONNECTOR_FAULT_WRITER_PANIC_AFTER")
            .ok()
            .and_then(|v| v.parse().ok()),
        writer_hang_while: std::env::var_os("OPCUA_CONNECTOR_FAULT_WRITER_HANG_WHILE")
            .map(Into::into),
        upload_part_bytes: std::env::var("OPCUA_CONNECTOR_FAULT_UPLOAD_PART_BYTES")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|&n: &usize| n > 0),
    }
}

#[cfg(not(feature = "fault-injection"))]
fn hooks() -> connector::runner::Hooks {
    connector::runner::Hooks::default()
}
