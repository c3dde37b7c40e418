//! `opcua-connector dtdl --config FILE`: prints the line's DTDL v3 Interface (IoT Plug and
//! Play), the model `[hub] model_id` names. The methods' arguments are read from the PLCs
//! (the config's endpoints, security and users, as `run` connects) within `--timeout`;
//! what could not be read, or is named differently in DTDL, is noted on stderr.

pub mod model;
mod schemas;

use std::collections::BTreeMap;
use std::io::{ErrorKind, Write as _};
use std::path::PathBuf;
use std::time::Duration;

use super::{Failure, Outcome};
use crate::config::{self, Config, MethodMapping, Plc};
use crate::opcua::session::connect_once;
use crate::writes::plc::{signature, status_name};
use model::Arguments;

#[derive(Debug, Clone)]
pub struct DtdlArgs {
    pub config: PathBuf,
    /// Do not connect to the PLCs: the methods' arguments stay unknown.
    pub offline: bool,
    /// How long each PLC may take to connect and answer.
    pub timeout: Duration,
}

pub async fn dtdl(args: DtdlArgs) -> Outcome {
    let config = config::load(&args.config).map_err(|e| Failure::Usage(e.to_string()))?;
    let arguments = if args.offline {
        config
            .methods
            .iter()
            .map(|m| {
                let why = "not read: --offline".to_owned();
                (m.name.clone(), Arguments::Unknown(why))
            })
            .collect()
    } else {
        read_arguments(&config, args.timeout).await
    };
    let model = model::interface(&config, &arguments).map_err(Failure::Usage)?;
    if model.derived_id {
        eprintln!(
            "note: [hub] model_id is not set: the Interface's @id is {}, made from the line's site and id; set [hub] model_id to it (or to a DTMI of your organisation's, e.g. \"dtmi:com:example:BottlingLine;1\", and run dtdl again) so that the hub announces the model",
            model.id
        );
    }
    for note in &model.notes {
        eprintln!("note: {note}");
    }
    let text = serde_json::to_string_pretty(&model.interface)
        .map_err(|e| Failure::Runtime(format!("cannot encode the model: {e}")))?;
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{text}").and_then(|()| out.flush()) {
        // A reader that stopped early (`| head`) has what it wanted.
        Err(e) if e.kind() != ErrorKind::BrokenPipe => {
            Err(Failure::Runtime(format!("cannot write the model: {e}")))
        }
        _ => Ok(()),
    }
}

/// Each `[[method]]`'s arguments, one session per PLC that has methods; a PLC that cannot be
/// reached within `timeout` leaves its methods' arguments unknown, with the reason.
async fn read_arguments(config: &Config, timeout: Duration) -> BTreeMap<String, Arguments> {
    let mut out = BTreeMap::new();
    for plc in &config.plcs {
        let methods: Vec<&MethodMapping> =
            config.methods.iter().filter(|m| m.plc == plc.id).collect();
        if methods.is_empty() {
            continue;
        }
        match from_plc(plc, config, &methods, timeout).await {
            Ok(found) => out.extend(found),
            Err(why) => {
                // The session's errors name the plc already.
                let named = format!("plc {}: ", plc.id);
                let why = format!(
                    "plc {} at {} not reachable: {}; run dtdl where it is",
                    plc.id,
                    plc.endpoint,
                    why.strip_prefix(&named).unwrap_or(&why)
                );
                for m in methods {
                    out.insert(m.name.clone(), Arguments::Unknown(why.clone()));
                }
            }
        }
    }
    out
}

async fn from_plc(
    plc: &Plc,
    config: &Config,
    methods: &[&MethodMapping],
    timeout: Duration,
) -> Result<Vec<(String, Arguments)>, String> {
    let session = connect_once(plc, &config.pki, timeout).await?;
    let link = session.link();
    let mut found = Vec::new();
    for m in methods {
        let read = match link.ns.resolve(&m.method) {
            Ok(id) => match tokio::time::timeout(timeout, signature(&link, &id)).await {
                Ok(Ok(sig)) => Ok(sig),
                Ok(Err(status)) => Err(status_name(status)),
                Err(_) => Err(format!("no answer within {} s", timeout.as_secs_f64())),
            },
            Err(e) => Err(e.to_string()),
        };
        found.push((
            m.name.clone(),
            match read {
                Ok(sig) => Arguments::Plc(sig),
                Err(why) => Arguments::Unknown(format!(
                    "plc {} did not give the arguments of {}: {why}",
                    plc.id, m.method
                )),
            },
        ));
    }
    session.close().await;
    Ok(found)
}
