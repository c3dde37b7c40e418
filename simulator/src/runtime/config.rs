//! What `start` is given: [`SimConfig`] (inputs, listen address, endpoints and users, PKI,
//! faults, seed, [`Limits`], stats file, subscription tick), the bundled bottling-line model
//! and profile, and the parsing of `--security` endpoint specs.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use opcua::crypto::SecurityPolicy;
use opcua::types::MessageSecurityMode;

use crate::error::SimError;
use crate::faults::Fault;
use crate::scale::ScaleSpec;

/// The bundled bottling-line model and its simulation profile, compiled in so that the
/// binary and the connector's `demo` work from any directory.
pub const BOTTLING_LINE_NODESET: &str =
    include_str!("../../../nodesets/bottling-line.NodeSet2.xml");
pub const BOTTLING_LINE_PROFILE: &str = include_str!("../../../nodesets/bottling-line.sim.toml");
/// The default subscription tick ([`SimConfig::publish_tick`]).
pub const DEFAULT_PUBLISH_TICK: Duration = Duration::from_millis(100);
/// The fastest subscription tick.
pub const MIN_PUBLISH_TICK: Duration = Duration::from_millis(1);

/// Namespace URI of the bottling-line model.
pub const BOTTLING_LINE_NAMESPACE: &str = "urn:opcua-connector:bottling-line";

/// An input text and the name it is reported under in errors.
#[derive(Debug, Clone)]
pub struct Source {
    pub name: String,
    pub text: String,
}

impl Source {
    pub fn read(path: impl Into<PathBuf>) -> Result<Self, SimError> {
        let path = path.into();
        let text = std::fs::read_to_string(&path).map_err(|source| SimError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Ok(Source {
            name: path.display().to_string(),
            text,
        })
    }
}

/// Server limits; the defaults carry 100,000 monitored items and large messages.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_monitored_items_per_sub: usize,
    pub max_monitored_items_per_call: usize,
    pub max_message_size: usize,
    pub max_chunk_count: usize,
    pub max_queued_notifications: usize,
    pub max_monitored_item_queue_size: usize,
    pub max_sessions: usize,
    pub max_nodes_per_read: usize,
    pub max_nodes_per_browse: usize,
    /// Fastest sampling interval granted. 0 lets a client ask for every change as it
    /// happens; async-opcua otherwise re-times samples that come faster than the granted
    /// interval, which would erase the scan jitter of the source timestamps.
    pub min_sampling_interval_ms: f64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_monitored_items_per_sub: 200_000,
            max_monitored_items_per_call: 10_000,
            max_message_size: 64 << 20,
            max_chunk_count: 4096,
            max_queued_notifications: 200,
            max_monitored_item_queue_size: 1_000,
            max_sessions: 100,
            max_nodes_per_read: 100_000,
            max_nodes_per_browse: 10_000,
            min_sampling_interval_ms: 0.0,
        }
    }
}

/// Everything `start` needs.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub nodesets: Vec<Source>,
    pub profile: Option<Source>,
    pub host: String,
    /// 0 picks a free port.
    pub port: u16,
    pub scale: Option<ScaleSpec>,
    pub security: Vec<(SecurityPolicy, MessageSecurityMode)>,
    /// Username/password users.
    pub users: Vec<(String, String)>,
    pub anonymous: bool,
    pub pki_dir: PathBuf,
    /// Trust every client certificate (default); otherwise only those in `pki_dir/trusted`.
    pub auto_trust_clients: bool,
    pub faults: Vec<Fault>,
    /// Overrides the profile's seed.
    pub seed: Option<u64>,
    pub limits: Limits,
    /// Written every 2 s and at exit when set.
    pub stats_file: Option<PathBuf>,
    /// Keep the history of every `counter` of the profile and serve HistoryRead (default).
    pub history: bool,
    /// How long values are kept (at most 200,000 per node).
    pub history_window: Duration,
    /// The subscription tick: how often async-opcua looks for notifications to publish
    /// (rounded up to whole milliseconds) and the fastest publishing interval granted.
    /// Default 100 ms (async-opcua's own); at least 1 ms.
    pub publish_tick: Duration,
}

impl SimConfig {
    /// The bundled bottling line on a free loopback port, every endpoint, anonymous access.
    pub fn bottling_line(pki_dir: impl Into<PathBuf>) -> Self {
        SimConfig {
            nodesets: vec![Source {
                name: "nodesets/bottling-line.NodeSet2.xml".into(),
                text: BOTTLING_LINE_NODESET.into(),
            }],
            profile: Some(Source {
                name: "nodesets/bottling-line.sim.toml".into(),
                text: BOTTLING_LINE_PROFILE.into(),
            }),
            host: "127.0.0.1".into(),
            port: 0,
            scale: None,
            security: all_security(),
            users: Vec::new(),
            anonymous: true,
            pki_dir: pki_dir.into(),
            auto_trust_clients: true,
            faults: Vec::new(),
            seed: None,
            limits: Limits::default(),
            stats_file: None,
            history: true,
            history_window: Duration::from_secs(600),
            publish_tick: DEFAULT_PUBLISH_TICK,
        }
    }
}

/// None, and Basic256Sha256 / Aes128_Sha256_RsaOaep / Aes256_Sha256_RsaPss with Sign and
/// SignAndEncrypt.
pub fn all_security() -> Vec<(SecurityPolicy, MessageSecurityMode)> {
    let mut v = vec![(SecurityPolicy::None, MessageSecurityMode::None)];
    for p in [
        SecurityPolicy::Basic256Sha256,
        SecurityPolicy::Aes128Sha256RsaOaep,
        SecurityPolicy::Aes256Sha256RsaPss,
    ] {
        v.push((p, MessageSecurityMode::Sign));
        v.push((p, MessageSecurityMode::SignAndEncrypt));
    }
    v
}

/// Parses `None`, `Basic256Sha256:SignAndEncrypt`, ... (policy names with `_` or `-`).
pub fn parse_security(s: &str) -> Result<(SecurityPolicy, MessageSecurityMode), String> {
    if s.eq_ignore_ascii_case("none") {
        return Ok((SecurityPolicy::None, MessageSecurityMode::None));
    }
    let (p, m) = s
        .split_once(':')
        .ok_or_else(|| format!("security {s:?}: expected None or POLICY:MODE"))?;
    let policy = SecurityPolicy::from_str(&p.replace('_', "-"));
    let policy = match policy {
        Ok(p) if p != SecurityPolicy::Unknown && p != SecurityPolicy::None => p,
        _ => return Err(format!("security {s:?}: unknown policy {p:?}")),
    };
    let mode = match m {
        "Sign" => MessageSecurityMode::Sign,
        "SignAndEncrypt" => MessageSecurityMode::SignAndEncrypt,
        _ => {
            return Err(format!(
                "security {s:?}: mode must be Sign or SignAndEncrypt"
            ))
        }
    };
    Ok((policy, mode))
}
