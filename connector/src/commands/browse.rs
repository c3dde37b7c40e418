//! `opcua-connector browse --endpoint URL`: prints a ready-to-paste `[[plc.group]]` block of
//! the variables found below a root.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use opcua::types::{AttributeId, NodeId, ObjectId, ReadValueId, TimestampsToReturn, Variant};

use super::{Failure, Outcome};
use crate::config::{Auth, Group, Pki, Plc, Secret, SecurityMode, SecurityPolicy};
use crate::opcua::{browse, connect, session};
use crate::sample::TypeName;

#[derive(Debug, Clone)]
pub struct BrowseArgs {
    pub endpoint: String,
    /// Node id (`nsu=...`, `ns=...`, `i=85`); default the Objects folder.
    pub root: Option<String>,
    pub depth: usize,
    pub security_policy: SecurityPolicy,
    pub security_mode: SecurityMode,
    pub username: Option<String>,
    pub password_env: Option<String>,
    pub pki_dir: PathBuf,
    pub trust_server: bool,
}

pub async fn browse(args: BrowseArgs) -> Outcome {
    let auth = match (&args.username, &args.password_env) {
        (Some(u), Some(p)) => Auth::UserName {
            username: u.clone(),
            password: Secret::Env(p.clone()),
        },
        (None, None) => Auth::Anonymous,
        _ => {
            return Err(Failure::Usage(
                "--username and --password-env go together".into(),
            ))
        }
    };
    let plc = Plc {
        id: "browse".into(),
        endpoint: args.endpoint.clone(),
        security_policy: args.security_policy,
        security_mode: args.security_mode,
        auth,
        groups: Vec::<Group>::new(),
        events: Vec::new(),
        max_concurrent_commands: crate::config::load::DEFAULT_MAX_CONCURRENT_COMMANDS,
    };
    let pki = Pki {
        dir: args.pki_dir.clone(),
        trust_unknown_servers: args.trust_server,
    };
    let runtime = |e: String| Failure::Runtime(e);
    let mut client = connect::client(&pki, &plc.id).map_err(|e| runtime(e.to_string()))?;
    let endpoint = connect::endpoint(&client, &plc, &pki.dir)
        .await
        .map_err(|e| runtime(e.to_string()))?;
    let identity =
        connect::identity(&plc.id, &plc.auth).map_err(|e| Failure::Usage(e.to_string()))?;
    let (s, event_loop) = client
        .connect_to_endpoint_directly(endpoint, identity)
        .map_err(|e| runtime(format!("cannot connect to {}: {e}", args.endpoint)))?;
    let driver = event_loop.spawn();
    let connected = tokio::time::timeout(Duration::from_secs(15), s.wait_for_connection()).await;
    if !matches!(connected, Ok(true)) {
        driver.abort();
        return Err(runtime(format!(
            "cannot open a session on {} (see the log above; an untrusted server certificate lands in {}/rejected/)",
            args.endpoint,
            pki.dir.display()
        )));
    }
    let result = walk(&s, &args).await;
    let _ = tokio::time::timeout(Duration::from_secs(3), s.disconnect()).await;
    driver.abort();
    let text = result.map_err(runtime)?;
    print!("{text}");
    Ok(())
}

async fn walk(s: &opcua::client::Session, args: &BrowseArgs) -> Result<String, String> {
    let ns = session::read_namespaces(s)
        .await
        .map_err(|e| format!("cannot read the namespace array: {e}"))?;
    let root = match &args.root {
        None => NodeId::from(ObjectId::ObjectsFolder),
        Some(r) => {
            let parsed: crate::config::NodeRef =
                r.parse().map_err(|e| format!("--root {r:?}: {e}"))?;
            ns.resolve(&parsed)
                .map_err(|e| format!("--root {r:?}: {e}"))?
        }
    };
    let root_name = match s
        .read(
            &[ReadValueId {
                node_id: root.clone(),
                attribute_id: AttributeId::BrowseName as u32,
                ..Default::default()
            }],
            TimestampsToReturn::Neither,
            0.0,
        )
        .await
    {
        Ok(v) => match v.into_iter().next().and_then(|d| d.value) {
            Some(Variant::QualifiedName(q)) => q.name.as_ref().to_owned(),
            _ => "Root".to_owned(),
        },
        Err(_) => "Root".to_owned(),
    };
    let found = browse::variables(s, &root, &root_name, true, 1000, args.depth.max(1))
        .await
        .map_err(|e| e.to_string())?;
    // Data types, for a comment per node.
    let mut types = Vec::with_capacity(found.len());
    for chunk in found.chunks(1000) {
        let reads: Vec<ReadValueId> = chunk
            .iter()
            .map(|v| ReadValueId {
                node_id: v.node.clone(),
                attribute_id: AttributeId::DataType as u32,
                ..Default::default()
            })
            .collect();
        let values = s
            .read(&reads, TimestampsToReturn::Neither, 0.0)
            .await
            .unwrap_or_default();
        for i in 0..chunk.len() {
            types.push(match values.get(i).and_then(|d| d.value.clone()) {
                Some(Variant::NodeId(id)) if id.namespace == 0 => match id.as_u32() {
                    Some(n) if (1..=25).contains(&n) => TypeName::builtin_name(n as u8).to_owned(),
                    _ => id.to_string(),
                },
                Some(Variant::NodeId(id)) => ns.uri_form(&id),
                _ => "?".to_owned(),
            });
        }
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# {} variables below {} ({}) on {}",
        found.len(),
        ns.uri_form(&root),
        root_name,
        args.endpoint
    );
    let _ = writeln!(out, "[[plc.group]]");
    let _ = writeln!(out, "name = \"browsed\"");
    let _ = writeln!(out, "publishing_interval = \"1s\"");
    let _ = writeln!(out, "queue_size = 0");
    let _ = writeln!(out, "nodes = [");
    for (v, t) in found.iter().zip(types) {
        let _ = writeln!(
            out,
            "  {{ id = {}, name = {} }},  # {t}",
            toml_str(&ns.uri_form(&v.node)),
            toml_str(&v.path)
        );
    }
    let _ = writeln!(out, "]");
    Ok(out)
}

fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}
