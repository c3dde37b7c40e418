//! The resolved plan that `opcua-connector check` prints: what the connector will do with a
//! valid config, defaults filled in. Never prints a secret, only where it comes from.

use std::fmt::Write as _;
use std::time::Duration;

use super::load::format_size;
use super::types::*;

fn duration(d: Duration) -> String {
    if d.is_zero() {
        "0ms".to_owned()
    } else {
        humantime::format_duration(d).to_string()
    }
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn auth(auth: &Auth) -> String {
    match auth {
        Auth::Anonymous => "anonymous".to_owned(),
        Auth::UserName {
            username,
            password: Secret::Env(var),
        } => {
            format!("username {username:?}, password from env {var}")
        }
        Auth::UserName {
            username,
            password: Secret::File(path),
        } => {
            format!(
                "username {username:?}, password from file {}",
                path.display()
            )
        }
        Auth::Certificate {
            cert_file,
            key_file,
        } => {
            format!(
                "certificate {} (key {})",
                cert_file.display(),
                key_file.display()
            )
        }
    }
}

fn secret(s: &Secret) -> String {
    match s {
        Secret::Env(var) => format!("env {var}"),
        Secret::File(path) => format!("file {}", path.display()),
    }
}

fn payload(p: Payload) -> &'static str {
    match p {
        Payload::Json => "json",
        Payload::JsonGzip => "json+gzip",
    }
}

fn mqtt(out: &mut String, m: &MqttSinkConfig, line: &Line) -> std::fmt::Result {
    let version = match m.version {
        MqttVersion::V311 => "3.1.1",
        MqttVersion::V5 => "5",
    };
    writeln!(
        out,
        "  mqtt {} (host {}, port {}, MQTT {version}, client id {:?}, keep-alive {})",
        m.url,
        m.host,
        m.port,
        m.client_id,
        duration(m.keep_alive)
    )?;
    match (&m.username, &m.password) {
        (None, _) => writeln!(out, "    no username")?,
        (Some(u), None) => writeln!(out, "    username {u:?}, no password")?,
        (Some(u), Some(p)) => writeln!(out, "    username {u:?}, password from {}", secret(p))?,
    }
    if let MqttTransport::WebSockets { path } = &m.transport {
        writeln!(out, "    MQTT over WebSockets, path {path}")?;
    }
    proxy(out, m.proxy.as_ref())?;
    if let Some((topic, interval)) = &m.status {
        writeln!(
            out,
            "    status retained on {topic} (online / offline with a last will), on change at most every {}",
            duration(*interval)
        )?;
    }
    if let Some(tls) = &m.tls {
        let path = |p: &Option<std::path::PathBuf>| {
            p.as_ref()
                .map_or_else(|| "none".to_owned(), |p| p.display().to_string())
        };
        let ca = tls
            .ca_file
            .as_ref()
            .map_or_else(|| "none".to_owned(), ToString::to_string);
        write!(out, "    tls ca {ca}")?;
        if tls.cert_file.is_some() {
            write!(
                out,
                ", client certificate {} (key {})",
                path(&tls.cert_file),
                path(&tls.key_file)
            )?;
        }
        writeln!(out)?;
    }
    let mut example = m.topic.replace("{line}", &line.id);
    if let Some(site) = &line.site {
        example = example.replace("{site}", site);
    }
    writeln!(out, "    topic {} -> {example}", m.topic)?;
    let mut base = m.command_topic.replace("{line}", &line.id);
    if let Some(site) = &line.site {
        base = base.replace("{site}", site);
    }
    writeln!(
        out,
        "    cloud-to-PLC (with [[write]] / [[method]]): {base}/write, {base}/method/{{name}}"
    )?;
    writeln!(
        out,
        "    qos {}, {}, batches of up to {} samples, {} or {}",
        m.qos,
        payload(m.payload),
        m.batch_max_samples,
        format_size(m.max_message_bytes as u64),
        duration(m.batch_max_delay)
    )
}

fn proxy(out: &mut String, p: Option<&ProxyConfig>) -> std::fmt::Result {
    let Some(p) = p else { return Ok(()) };
    write!(out, "    through the HTTP proxy {} (CONNECT)", p.url)?;
    match (&p.username, &p.password) {
        (Some(u), Some(s)) => writeln!(out, ", user {u:?}, password from {}", secret(s)),
        (Some(u), None) => writeln!(out, ", user {u:?}, no password"),
        _ => writeln!(out),
    }
}

/// The hub identity DPS assigns: how the connector registers, and where it keeps the
/// assignment.
fn dps(
    out: &mut String,
    d: &DpsConfig,
    sas_ttl: Duration,
    buffer: &std::path::Path,
) -> std::fmt::Result {
    let credential = match &d.credential {
        DpsCredential::SymmetricKey(s) => format!(
            "individual enrollment, device key from {} (SAS tokens valid {}, renewed before expiry)",
            secret(s),
            duration(sas_ttl)
        ),
        DpsCredential::GroupKey(s) => format!(
            "group enrollment, device key derived from the group key in {} (SAS tokens valid {}, renewed before expiry)",
            secret(s),
            duration(sas_ttl)
        ),
        DpsCredential::X509 {
            cert_file,
            key_file,
        } => format!(
            "x509 certificate {} (key {})",
            cert_file.display(),
            key_file.display()
        ),
    };
    writeln!(
        out,
        "  iot hub: device assigned by DPS, id scope {}, registration id {:?}, {credential}",
        d.id_scope, d.registration_id
    )?;
    match &d.endpoint {
        Some(e) => write!(out, "    DPS: MQTT 3.1.1 over TLS to the endpoint {e}")?,
        None => write!(
            out,
            "    DPS: MQTT 3.1.1 over TLS to {}:{DPS_PORT}",
            d.global_endpoint
        )?,
    }
    writeln!(out, ", ca {}", d.ca_file)?;
    writeln!(
        out,
        "    the assignment is kept in {}; registered again when the hub refuses it",
        buffer.join("dps").join("assignment.json").display()
    )
}

fn hub(out: &mut String, h: &HubConfig, buffer: &std::path::Path) -> std::fmt::Result {
    match &h.auth {
        HubAuth::ConnectionString(s) => writeln!(
            out,
            "  iot hub: device from the connection string in {} (SAS tokens valid {}, renewed before expiry)",
            secret(s),
            duration(h.sas_ttl)
        )?,
        HubAuth::X509 {
            host,
            device_id,
            module_id,
            cert_file,
            key_file,
        } => {
            write!(out, "  iot hub {host}: device {device_id}")?;
            if let Some(module) = module_id {
                write!(out, " module {module}")?;
            }
            writeln!(
                out,
                ", x509 certificate {} (key {})",
                cert_file.display(),
                key_file.display()
            )?;
        }
        HubAuth::Dps(d) => dps(out, d, h.sas_ttl, buffer)?,
    }
    let https;
    let how = match h.transport {
        HubTransport::Mqtt => "MQTT 3.1.1 over TLS on 8883",
        HubTransport::WebSockets => "MQTT 3.1.1 over WebSockets over TLS on 443",
        HubTransport::Https { send_every } => {
            https = format!(
                "telemetry only, POSTed over HTTPS every {} (connection closed between) on 443",
                duration(send_every)
            );
            &https
        }
    };
    match (&h.insecure_endpoint, &h.endpoint, &h.ca_file) {
        (Some(endpoint), _, _) => writeln!(
            out,
            "    INSECURE: plain MQTT to {endpoint} instead of the hub (for tests only)"
        )?,
        (None, Some(endpoint), ca) => {
            let how = how.split(" on ").next().unwrap_or(how);
            write!(out, "    {how} to the endpoint {endpoint}")?;
            match ca {
                Some(ca) => writeln!(out, ", ca {ca}")?,
                None => writeln!(out)?,
            }
        }
        (None, None, Some(ca)) => writeln!(out, "    {how}, ca {ca}")?,
        (None, None, None) => writeln!(out, "    {how}")?,
    }
    proxy(out, h.proxy.as_ref())?;
    if let Some(interval) = h.status_interval {
        writeln!(
            out,
            "    the connector's state in the reported property connectorStatus, on change at most every {}",
            duration(interval)
        )?;
    }
    if let Some(endpoint) = &h.https_endpoint {
        writeln!(
            out,
            "    TEST: the hub's HTTPS API (file upload) at {endpoint}, TLS checked against the hub's name"
        )?;
    }
    writeln!(
        out,
        "    qos 1, {}, batches of up to {} samples, 256KB or {}",
        payload(h.payload),
        h.batch_max_samples,
        duration(h.batch_max_delay)
    )?;
    match &h.model_id {
        Some(m) => writeln!(out, "    IoT Plug and Play model {m}"),
        None => Ok(()),
    }
}

fn compression(c: Compression) -> String {
    match c {
        Compression::Zstd { level } => format!("zstd level {level}"),
        Compression::Snappy => "snappy".to_owned(),
        Compression::Gzip => "gzip".to_owned(),
        Compression::None => "none".to_owned(),
    }
}

/// The human-readable plan of a validated config, one line per item, indented by level.
pub fn plan(config: &Config) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = write_plan(&mut out, config);
    out
}

fn write_plan(out: &mut String, c: &Config) -> std::fmt::Result {
    let groups: usize = c.plcs.iter().map(|p| p.groups.len()).sum();
    let nodes: usize = c
        .plcs
        .iter()
        .flat_map(|p| &p.groups)
        .map(|g| g.nodes.len())
        .sum();
    let browses: usize = c
        .plcs
        .iter()
        .flat_map(|p| &p.groups)
        .map(|g| g.browse.len())
        .sum();
    write!(out, "line {}", c.line.id)?;
    if let Some(site) = &c.line.site {
        write!(out, " at site {site}")?;
    }
    writeln!(out, " ({})", c.source.display())?;
    writeln!(
        out,
        "  {}, {}, {} + {} (resolved at connect)",
        plural(c.plcs.len(), "plc", "plcs"),
        plural(groups, "group", "groups"),
        plural(nodes, "listed node", "listed nodes"),
        plural(browses, "browse selection", "browse selections"),
    )?;

    for plc in &c.plcs {
        writeln!(out, "\nplc {}", plc.id)?;
        writeln!(out, "  endpoint  {}", plc.endpoint)?;
        writeln!(
            out,
            "  security  {} / {}",
            plc.security_policy.name(),
            plc.security_mode.name()
        )?;
        writeln!(out, "  auth      {}", auth(&plc.auth))?;
        if plc.groups.is_empty() {
            writeln!(out, "  no groups (used for writes and methods only)")?;
        }
        for g in &plc.groups {
            let sampling = if g.sampling_interval.is_zero() {
                "0ms (server's fastest)".to_owned()
            } else {
                duration(g.sampling_interval)
            };
            let queue = match g.queue_size {
                QueueSize::Auto => "auto".to_owned(),
                QueueSize::Fixed(n) => n.to_string(),
            };
            let deadband = match g.deadband {
                Deadband::None => "none".to_owned(),
                Deadband::Absolute(x) => format!("absolute {x}"),
                Deadband::Percent(x) => format!("{x}% of EU range"),
            };
            writeln!(out, "  group {}", g.name)?;
            writeln!(
                out,
                "    publishing {}, sampling {sampling}, queue {queue}, deadband {deadband}",
                duration(g.publishing_interval)
            )?;
            if !g.nodes.is_empty() || g.browse.is_empty() {
                writeln!(out, "    {}", plural(g.nodes.len(), "node", "nodes"))?;
            }
            for b in &g.browse {
                write!(
                    out,
                    "    browse {} ({})",
                    b.root,
                    if b.recursive {
                        "recursive"
                    } else {
                        "children only"
                    }
                )?;
                if let Some(include) = &b.include {
                    write!(out, " include {include:?}")?;
                }
                if let Some(exclude) = &b.exclude {
                    write!(out, " exclude {exclude:?}")?;
                }
                writeln!(out)?;
            }
            if let Some(b) = &g.backfill {
                writeln!(
                    out,
                    "    backfill from history after outages (at most {}, {} values/s)",
                    duration(b.max),
                    b.rate
                )?;
            }
        }
        for e in &plc.events {
            let types: Vec<String> = e.types.iter().map(ToString::to_string).collect();
            writeln!(
                out,
                "  events {}: source {}, {}, publishing {}{}",
                e.name,
                e.source,
                if types.is_empty() {
                    "every type".to_owned()
                } else {
                    format!("types {}", types.join(" "))
                },
                duration(e.publishing_interval),
                if e.fields.is_empty() {
                    String::new()
                } else {
                    format!(
                        ", {}",
                        plural(e.fields.len(), "extra field", "extra fields")
                    )
                }
            )?;
        }
    }

    writeln!(
        out,
        "\npki {} (unknown servers {})",
        c.pki.dir.display(),
        if c.pki.trust_unknown_servers {
            "trusted"
        } else {
            "refused"
        }
    )?;

    writeln!(out, "\nsinks")?;
    if c.parquet.is_none() && c.mqtt.is_none() && c.hub.is_none() {
        writeln!(out, "  none")?;
    }
    match &c.parquet {
        None => {}
        Some(p) => writeln!(
            out,
            "  parquet {} ({}; new file every {} rows, {} or {}; queue {} samples)",
            p.dir.display(),
            compression(p.compression),
            p.roll_rows,
            format_size(p.roll_bytes),
            duration(p.roll_interval),
            p.queue_samples,
        )
        .and_then(|()| {
            if c.plcs.iter().any(|p| !p.events.is_empty()) {
                writeln!(out, "  parquet events {}", p.events_dir.display())
            } else {
                Ok(())
            }
        })
        .and_then(|()| match &p.upload {
            None => Ok(()),
            Some(u) => {
                let local = u.keep_local.map_or("kept".to_owned(), |k| {
                    format!("deleted {} after the upload", duration(k))
                });
                let settings = match &u.to {
                    UploadTarget::Store(s) => {
                        format!(
                            "{} settings, {} secrets; ",
                            s.options.len(),
                            s.secrets.len()
                        )
                    }
                    UploadTarget::IotHub => "the [hub] identity; ".to_owned(),
                };
                writeln!(
                    out,
                    "    upload to {} ({settings}local copies {local})",
                    u.to
                )
            }
        })?,
    }
    if let Some(m) = &c.mqtt {
        mqtt(out, m, &c.line)?;
    }
    if let Some(h) = &c.hub {
        hub(out, h, &c.buffer.dir)?;
    }
    if c.mqtt.is_some() || c.hub.is_some() {
        let b = &c.buffer;
        writeln!(
            out,
            "\nbuffer {} (up to {} in {} segments; when full: {})",
            b.dir.display(),
            format_size(b.max_bytes),
            format_size(b.segment_bytes),
            match b.when_full {
                WhenFull::DropOldest => "drop the oldest messages",
                WhenFull::Pause => "pause (backpressure to the PLCs)",
            }
        )?;
    }

    writeln!(out, "\nwrites ({})", c.writes.len())?;
    for w in &c.writes {
        write!(
            out,
            "  {} -> {} {} as {}",
            w.property,
            w.plc,
            w.node,
            w.write_type.name()
        )?;
        match (w.min, w.max) {
            (None, None) => {}
            (min, max) => {
                let bound = |b: Option<f64>| b.map_or_else(String::new, |b| b.to_string());
                write!(out, " in [{}, {}]", bound(min), bound(max))?;
            }
        }
        if w.readback {
            write!(out, ", read back")?;
        }
        if let Some(rate) = w.max_rate {
            write!(out, ", at most once per {}", duration(rate))?;
        }
        writeln!(out)?;
    }

    writeln!(out, "\nmethods ({})", c.methods.len())?;
    for m in &c.methods {
        writeln!(
            out,
            "  {} -> {} {} on {} (timeout {})",
            m.name,
            m.plc,
            m.method,
            m.object,
            duration(m.timeout)
        )?;
    }
    if !c.writes.is_empty() || !c.methods.is_empty() {
        for plc in &c.plcs {
            writeln!(
                out,
                "  plc {}: at most {} writes and calls at once (more: 503 busy)",
                plc.id, plc.max_concurrent_commands
            )?;
        }
        if let Some(h) = &c.hub {
            writeln!(
                out,
                "  twin values waiting for their plc expire after {}",
                duration(h.pending_write_max_age)
            )?;
        }
    }

    match &c.metrics {
        None => writeln!(out, "\nmetrics off")?,
        Some(m) => writeln!(out, "\nmetrics http://{}/metrics", m.listen)?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::parse;

    const BROKER_AND_HUB: &str = r#"
[line]
id = "line-a"
site = "plant-1"

[[plc]]
id = "filler"
endpoint = "opc.tcp://192.0.2.10:4840"

[sink.mqtt]
url = "mqtts://broker.example"
username = "connector"
password_file = "/run/secrets/mqtt"
payload = "json+gzip"
tls = { ca_file = "certs/ca.pem", cert_file = "certs/c.pem", key_file = "certs/c.key" }

[hub]
connection_string_env = "IOTHUB_DEVICE_CONNECTION_STRING"
ca_file = "certs/digicert-g2.pem"
model_id = "dtmi:com:example:LineA;1"

[buffer]
when_full = "pause"
"#;

    #[test]
    fn plan_shows_broker_hub_and_buffer_but_no_secret() {
        let config =
            parse(Path::new("line-a.toml"), BROKER_AND_HUB).unwrap_or_else(|e| panic!("{e}"));
        let text = plan(&config);
        for part in [
            "  mqtt mqtts://broker.example (host broker.example, port 8883, MQTT 3.1.1, client id \"opcua-connector-line-a\", keep-alive 30s)",
            "    username \"connector\", password from file /run/secrets/mqtt",
            "    tls ca certs/ca.pem, client certificate certs/c.pem (key certs/c.key)",
            "    topic opcua/{site}/{line}/{plc}/{group} -> opcua/plant-1/line-a/{plc}/{group}",
            "    qos 1, json+gzip, batches of up to 1000 samples, 256KiB or 200ms",
            "  iot hub: device from the connection string in env IOTHUB_DEVICE_CONNECTION_STRING (SAS tokens valid 1h, renewed before expiry)",
            "    MQTT 3.1.1 over TLS on 8883, ca certs/digicert-g2.pem",
            "    qos 1, json, batches of up to 500 samples, 256KB or 200ms",
            "    IoT Plug and Play model dtmi:com:example:LineA;1",
            "buffer data/buffer (up to 2GiB in 16MiB segments; when full: pause (backpressure to the PLCs))",
        ] {
            assert!(text.contains(part), "missing {part:?} in\n{text}");
        }

        let x509 = BROKER_AND_HUB
            .replace(
                "connection_string_env = \"IOTHUB_DEVICE_CONNECTION_STRING\"\nca_file = \"certs/digicert-g2.pem\"",
                "x509 = { host = \"myhub.azure-devices.net\", device_id = \"line-a-edge\", module_id = \"opcua\", cert_file = \"d.pem\", key_file = \"d.key\" }\ninsecure_endpoint = \"127.0.0.1:1883\"",
            );
        let config = parse(Path::new("line-a.toml"), &x509).unwrap_or_else(|e| panic!("{e}"));
        let text = plan(&config);
        for part in [
            "  iot hub myhub.azure-devices.net: device line-a-edge module opcua, x509 certificate d.pem (key d.key)",
            "    INSECURE: plain MQTT to 127.0.0.1:1883 instead of the hub (for tests only)",
        ] {
            assert!(text.contains(part), "missing {part:?} in\n{text}");
        }
    }

    #[test]
    fn plan_shows_plcs_groups_sinks_and_mappings_but_no_secret() {
        let text = r#"
[line]
id = "line-a"
site = "plant-1"

[[plc]]
id = "filler"
endpoint = "opc.tcp://192.0.2.10:4840"
security_policy = "Basic256Sha256"
security_mode = "SignAndEncrypt"
auth = { username = "connector", password_env = "FILLER_PW" }

  [[plc.group]]
  name = "fast"
  publishing_interval = "100ms"
  sampling_interval = "0ms"
  deadband = { percent = 1.5 }
  nodes = ["nsu=urn:x;s=A", "nsu=urn:x;s=B"]
  browse = [{ root = "nsu=urn:x;s=Tank", recursive = true, include = "*Temp*" }]

[sink.parquet]
dir = "data"

[[write]]
property = "speed"
plc = "filler"
node = "nsu=urn:x;s=Speed"
type = "Double"
min = 0
max = 1200

[[method]]
name = "reset"
plc = "filler"
object = "nsu=urn:x;s=Filler"
method = "nsu=urn:x;s=Filler.Reset"
"#;
        let config = parse(Path::new("line-a.toml"), text).unwrap_or_else(|e| panic!("{e}"));
        let plan = plan(&config);
        for part in [
            "line line-a at site plant-1 (line-a.toml)",
            "1 plc, 1 group, 2 listed nodes + 1 browse selection",
            "security  Basic256Sha256 / SignAndEncrypt",
            "password from env FILLER_PW",
            "publishing 100ms, sampling 0ms (server's fastest), queue auto, deadband 1.5% of EU range",
            "    2 nodes",
            "browse nsu=urn:x;s=Tank (recursive) include \"*Temp*\"",
            "parquet data (zstd level 3; new file every 1000000 rows, 128MiB or 5m; queue 1000000 samples)",
            "speed -> filler nsu=urn:x;s=Speed as Double in [0, 1200], read back",
            "reset -> filler nsu=urn:x;s=Filler.Reset on nsu=urn:x;s=Filler (timeout 10s)",
            "plc filler: at most 4 writes and calls at once (more: 503 busy)",
            "metrics off",
        ] {
            assert!(plan.contains(part), "missing {part:?} in\n{plan}");
        }
    }
}
