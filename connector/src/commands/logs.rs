//! The log lines on stderr: plain text (colours only on a terminal; every field escaped, one
//! event one line), JSON on request, and, when stderr is the systemd journal, each line
//! prefixed with its syslog priority (`<3>` error, `<4>` warning, `<6>` info, `<7>` debug, as
//! sd-daemon(3) describes) and without a timestamp, since journald stamps every line itself.

use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::{Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

/// Installs the process's log subscriber: `level` and up by default (async-opcua's own lines
/// at `stack_level`: `error`, or `off` for a command that reports its failures itself),
/// `RUST_LOG` overrides.
pub fn init(format: Format, level: &str, stack_level: &str) {
    // async-opcua logs routine events (keep-alives, reconnect attempts) as warnings; ours say
    // what matters with the plc named. Audit records of cloud-to-PLC writes stay at any level.
    let s = stack_level;
    let default = format!(
        "{level},audit=info,opcua_client={s},opcua_core={s},opcua_server={s},opcua_crypto={s},opcua_types={s},opcua_nodes={s}"
    );
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // While we close our own sessions (shutdown), async-opcua's errors are the close we asked
    // for (e.g. `publish failed ... BadSessionClosed` from the pending Publish requests).
    let not_our_close = tracing_subscriber::filter::filter_fn(|m| {
        !(*m.level() == tracing::Level::ERROR
            && m.target().starts_with("opcua_client")
            && crate::opcua::session::closing())
    });
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt: Box<dyn Layer<_> + Send + Sync> = match format {
        Format::Json => fmt.json().boxed(),
        // Every field escaped (see `escaped_fields`).
        Format::Text if to_journal() => fmt
            .with_ansi(false)
            .fmt_fields(escaped_fields())
            .event_format(Priority(
                tracing_subscriber::fmt::format()
                    .without_time()
                    .with_ansi(false),
            ))
            .boxed(),
        // Colours only on a terminal.
        Format::Text => fmt
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .fmt_fields(escaped_fields())
            .boxed(),
    };
    tracing_subscriber::registry()
        .with(fmt.with_filter(filter).with_filter(not_our_close))
        .init();
    if to_journal() {
        panics_to_the_journal();
    }
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

/// Whether stderr is the systemd journal (asked once).
pub fn to_journal() -> bool {
    static JOURNAL: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *JOURNAL.get_or_init(stderr_is_the_journal)
}

/// What a command says when it fails (`error: ...`; an invalid file has a line per
/// problem), every line an error on the journal.
pub fn final_error(message: &dyn std::fmt::Display) {
    let text = format!("error: {message}");
    if to_journal() {
        for line in text.lines() {
            eprintln!("<3>{line}");
        }
    } else {
        eprintln!("{text}");
    }
}

/// On the journal, a panic's message as a critical line (`<2>`) instead of an info line.
fn panics_to_the_journal() {
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current();
        let name = thread.name().unwrap_or("unnamed");
        let text = escape_controls(&info.to_string()).into_owned();
        eprintln!("<2>thread '{name}' {text}");
    }));
}

/// Whether stderr is connected to the systemd journal: `JOURNAL_STREAM` names its device and
/// inode (systemd.exec(5)); a child whose stderr was redirected elsewhere keeps the variable
/// but not the stream, so both are compared.
fn stderr_is_the_journal() -> bool {
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = stream.to_str().and_then(|s| s.split_once(':')) else {
        return false;
    };
    let Ok(st) = rustix::fs::fstat(std::io::stderr()) else {
        return false;
    };
    dev.parse::<u64>().ok() == Some(st.st_dev) && ino.parse::<u64>().ok() == Some(st.st_ino)
}

/// An event format with the event's syslog priority in front (`<4>` for a warning).
struct Priority<F>(F);

impl<S, N, F> FormatEvent<S, N> for Priority<F>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        write!(writer, "<{}>", priority(event.metadata().level()))?;
        self.0.format_event(ctx, writer, event)
    }
}

/// The syslog priority of a level.
fn priority(level: &tracing::Level) -> u8 {
    match *level {
        tracing::Level::ERROR => 3,
        tracing::Level::WARN => 4,
        tracing::Level::INFO => 6,
        _ => 7,
    }
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
