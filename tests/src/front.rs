//! The front door of a cloud-service double (IoT Hub, DPS): a listener on 127.0.0.1:0, with
//! TLS when given a server certificate, that reads each client's MQTT 3.1.1 CONNECT, records
//! it, and asks a check (the service's authentication: client id, username, SAS password)
//! whether to let it through. Refused: CONNACK "not authorized" and the connection closed, as
//! IoT Hub and DPS do. Accepted: the CONNECT and everything after it are relayed both ways to
//! the broker behind (mosquitto or rumqttd), which carries the service's topics.
//!
//! With a guard ([`MqttFront::guard`], [`hub_topics`] for IoT Hub) the client's packets are
//! relayed one by one and each PUBLISH topic and SUBSCRIBE filter is checked against the
//! identity of the CONNECT: one the service would not take (another device's topic) closes the
//! connection, as IoT Hub does, and is recorded ([`MqttFront::violations`]).
//!
//! [`sas_check`] verifies a SAS token as the service does, written here from Microsoft's
//! description (not with the connector's signing code), and is tested against the vectors
//! computed with Microsoft's SDK (`shared/research/`).

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One CONNECT as the front saw it.
#[derive(Debug, Clone)]
pub struct Connect {
    pub client_id: String,
    pub username: String,
    pub password: String,
    /// The TLS client presented a certificate (accepted by the server config).
    pub client_cert: bool,
    /// That certificate (DER), to check it is the enrolled one.
    pub client_cert_der: Option<Vec<u8>>,
    pub accepted: bool,
    pub at: Instant,
}

/// Decides whether a CONNECT is let through.
pub type Check = Arc<dyn Fn(&Connect) -> bool + Send + Sync>;

/// What a client does with a topic after its CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicUse<'a> {
    Publish(&'a str),
    Subscribe(&'a str),
}

/// Decides whether the client of a CONNECT may publish to / subscribe to a topic.
pub type Guard = Arc<dyn Fn(&Connect, TopicUse<'_>) -> bool + Send + Sync>;

pub struct MqttFront {
    pub port: u16,
    /// When each TCP connection came (a TLS handshake refused reaches no CONNECT).
    attempts: Arc<Mutex<Vec<Instant>>>,
    seen: Arc<Mutex<Vec<Connect>>>,
    check: Arc<Mutex<Check>>,
    guard: Arc<Mutex<Option<Guard>>>,
    violations: Arc<Mutex<Vec<String>>>,
}

/// What a connection shares with its front.
#[derive(Clone)]
struct Shared {
    upstream: u16,
    seen: Arc<Mutex<Vec<Connect>>>,
    check: Arc<Mutex<Check>>,
    guard: Arc<Mutex<Option<Guard>>>,
    violations: Arc<Mutex<Vec<String>>>,
}

impl MqttFront {
    /// Listens on a free loopback port; relays accepted connections to `127.0.0.1:upstream`.
    pub async fn start(
        upstream: u16,
        tls: Option<Arc<rustls::ServerConfig>>,
        check: impl Fn(&Connect) -> bool + Send + Sync + 'static,
    ) -> MqttFront {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let shared = Shared {
            upstream,
            seen: Arc::default(),
            check: Arc::new(Mutex::new(Arc::new(check))),
            guard: Arc::default(),
            violations: Arc::default(),
        };
        let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
        let attempts: Arc<Mutex<Vec<Instant>>> = Arc::default();
        let (s2, a2) = (shared.clone(), attempts.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                a2.lock().unwrap().push(Instant::now());
                let (shared, acceptor) = (s2.clone(), acceptor.clone());
                tokio::spawn(async move {
                    match acceptor {
                        None => serve(client, None, shared).await,
                        Some(a) => {
                            // A handshake refused (an untrusted client certificate) ends here.
                            if let Ok(tls) = a.accept(client).await {
                                let cert = tls
                                    .get_ref()
                                    .1
                                    .peer_certificates()
                                    .and_then(|c| c.first())
                                    .map(|c| c.to_vec());
                                serve(tls, cert, shared).await;
                            }
                        }
                    }
                });
            }
        });
        MqttFront {
            port,
            attempts,
            seen: shared.seen,
            check: shared.check,
            guard: shared.guard,
            violations: shared.violations,
        }
    }

    /// From now on, each new connection's PUBLISH topics and SUBSCRIBE filters must pass
    /// `guard`; the first that does not closes the connection.
    pub fn guard(&self, guard: impl Fn(&Connect, TopicUse<'_>) -> bool + Send + Sync + 'static) {
        *self.guard.lock().unwrap() = Some(Arc::new(guard));
    }

    /// The uses the guard refused (`client id: use`), in order.
    pub fn violations(&self) -> Vec<String> {
        self.violations.lock().unwrap().clone()
    }

    /// When each connection was opened, in order.
    pub fn attempts(&self) -> Vec<Instant> {
        self.attempts.lock().unwrap().clone()
    }

    /// Replaces the check (e.g. the hub stops knowing a device).
    pub fn set_check(&self, check: impl Fn(&Connect) -> bool + Send + Sync + 'static) {
        *self.check.lock().unwrap() = Arc::new(check);
    }

    /// Every CONNECT so far, in order.
    pub fn connects(&self) -> Vec<Connect> {
        self.seen.lock().unwrap().clone()
    }

    pub fn accepted(&self) -> usize {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.accepted)
            .count()
    }

    pub fn refused(&self) -> usize {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|c| !c.accepted)
            .count()
    }
}

async fn serve<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    mut client: S,
    client_cert_der: Option<Vec<u8>>,
    shared: Shared,
) {
    let Some(packet) = read_packet(&mut client).await else {
        return;
    };
    let Some((client_id, username, password)) = parse_connect(packet_body(&packet)) else {
        return;
    };
    let mut connect = Connect {
        client_id,
        username: username.unwrap_or_default(),
        password: password.unwrap_or_default(),
        client_cert: client_cert_der.is_some(),
        client_cert_der,
        accepted: false,
        at: Instant::now(),
    };
    let check = shared.check.lock().unwrap().clone();
    connect.accepted = packet[0] == 0x10 && check(&connect);
    shared.seen.lock().unwrap().push(connect.clone());
    if !connect.accepted {
        // CONNACK return code 5, "not authorized", then close.
        let _ = client.write_all(&[0x20, 0x02, 0x00, 0x05]).await;
        let _ = client.shutdown().await;
        return;
    }
    let Ok(mut broker) = TcpStream::connect(("127.0.0.1", shared.upstream)).await else {
        return;
    };
    let _ = broker.set_nodelay(true);
    if broker.write_all(&packet).await.is_err() {
        return;
    }
    let guard = shared.guard.lock().unwrap().clone();
    let Some(guard) = guard else {
        let _ = tokio::io::copy_bidirectional(&mut client, &mut broker).await;
        return;
    };
    // Guarded: the broker's side is copied as it comes, the client's checked packet by packet.
    let (mut from_client, mut to_client) = tokio::io::split(client);
    let (mut from_broker, mut to_broker) = broker.into_split();
    let down = async {
        let _ = tokio::io::copy(&mut from_broker, &mut to_client).await;
    };
    let up = async {
        while let Some(packet) = read_packet(&mut from_client).await {
            if let Some(refused) = first_refused(&packet, &connect, &guard) {
                let what = format!("{}: {refused}", connect.client_id);
                shared.violations.lock().unwrap().push(what);
                break;
            }
            if to_broker.write_all(&packet).await.is_err() {
                break;
            }
        }
    };
    // Either side ending ends both, as a service dropping the connection does: the halves
    // are dropped here, which closes the client's connection and the broker's.
    tokio::select! {
        _ = down => {}
        _ = up => {}
    }
}

/// The first use (topic of a PUBLISH, filter of a SUBSCRIBE) of `packet` that `guard`
/// refuses, as text.
fn first_refused(packet: &[u8], connect: &Connect, guard: &Guard) -> Option<String> {
    let body = packet_body(packet);
    let refused = |u: TopicUse<'_>| (!guard(connect, u)).then(|| format!("{u:?}"));
    match packet[0] >> 4 {
        3 => refused(TopicUse::Publish(&field(body, &mut 0).unwrap_or_default())),
        8 => {
            // Packet id, then (filter, requested QoS) pairs.
            let mut at = 2;
            while let Some(filter) = field(body, &mut at) {
                at += 1;
                if let Some(r) = refused(TopicUse::Subscribe(&filter)) {
                    return Some(r);
                }
            }
            None
        }
        _ => None,
    }
}

/// What follows a packet's fixed header (type and flags, remaining length).
fn packet_body(packet: &[u8]) -> &[u8] {
    let header = 1 + packet[1..].iter().position(|b| b & 0x80 == 0).unwrap_or(0) + 1;
    packet.get(header..).unwrap_or_default()
}

/// IoT Hub's topics for the identity of a CONNECT (client id `{device}` or
/// `{device}/{module}`): telemetry on its own events topic, the twin and direct-method topics,
/// and a device's own cloud-to-device topic. Anything else (another device's topic) is refused.
pub fn hub_topics(c: &Connect, u: TopicUse<'_>) -> bool {
    let own = match c.client_id.split_once('/') {
        None => format!("devices/{}/", c.client_id),
        Some((device, module)) => format!("devices/{device}/modules/{module}/"),
    };
    match u {
        TopicUse::Publish(t) => {
            t.strip_prefix(&own)
                .is_some_and(|rest| rest.starts_with("messages/events/"))
                || t.starts_with("$iothub/twin/GET/")
                || t.starts_with("$iothub/twin/PATCH/properties/reported/")
                || t.starts_with("$iothub/methods/res/")
        }
        TopicUse::Subscribe(f) => {
            (!c.client_id.contains('/') && f == format!("{own}messages/devicebound/#"))
                || [
                    "$iothub/twin/res/#",
                    "$iothub/twin/PATCH/properties/desired/#",
                    "$iothub/methods/POST/#",
                ]
                .contains(&f)
        }
    }
}

fn field(buf: &[u8], at: &mut usize) -> Option<String> {
    let len = usize::from(u16::from_be_bytes([*buf.get(*at)?, *buf.get(*at + 1)?]));
    let s = std::str::from_utf8(buf.get(*at + 2..*at + 2 + len)?)
        .ok()?
        .to_owned();
    *at += 2 + len;
    Some(s)
}

/// An MQTT 3.1.1 CONNECT body (after the fixed header): client id, username, password.
fn parse_connect(body: &[u8]) -> Option<(String, Option<String>, Option<String>)> {
    let mut at = 0;
    let proto = field(body, &mut at)?;
    if proto != "MQTT" || *body.get(at)? != 4 {
        return None;
    }
    let flags = *body.get(at + 1)?;
    at += 4; // level, flags, keep-alive
    let client_id = field(body, &mut at)?;
    if flags & 0x04 != 0 {
        field(body, &mut at)?; // will topic
        field(body, &mut at)?; // will message
    }
    let username = if flags & 0x80 != 0 {
        Some(field(body, &mut at)?)
    } else {
        None
    };
    let password = if flags & 0x40 != 0 {
        Some(field(body, &mut at)?)
    } else {
        None
    };
    Some((client_id, username, password))
}

/// One whole MQTT packet, fixed header included.
async fn read_packet<S: AsyncRead + Unpin>(s: &mut S) -> Option<Vec<u8>> {
    let mut first = [0u8; 1];
    s.read_exact(&mut first).await.ok()?;
    let mut packet = vec![first[0]];
    let (mut len, mut mult) = (0usize, 1usize);
    loop {
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.ok()?;
        packet.push(b[0]);
        len += usize::from(b[0] & 0x7f) * mult;
        mult *= 128;
        if b[0] & 0x80 == 0 || mult > 128 * 128 * 128 {
            break;
        }
    }
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).await.ok()?;
    packet.extend_from_slice(&body);
    Some(packet)
}

/// A TLS server config from PEM files; with `client_ca`, clients must present a certificate
/// that CA signed (as IoT Hub's X.509 authentication asks).
pub fn tls_server(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Arc<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let _ = rustls::crypto::ring::default_provider().install_default();
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(key).unwrap();
    let builder = rustls::ServerConfig::builder();
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(ca).unwrap() {
                roots.add(c.unwrap()).unwrap();
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
                .build()
                .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
    };
    Arc::new(builder.with_single_cert(certs, key).unwrap())
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Checks a SAS token as IoT Hub and DPS do: `SharedAccessSignature sr=..&sig=..&se=..`
/// (any order, `skn` allowed) for `resource` (compared case-insensitively after decoding),
/// signed with the base64 `key` over `{sr as sent}\n{se}`, and not expired at `now_s`.
pub fn sas_check(token: &str, resource: &str, key: &str, now_s: u64) -> Result<(), String> {
    let fields = token
        .strip_prefix("SharedAccessSignature ")
        .ok_or("not a SharedAccessSignature")?;
    let (mut sr, mut sig, mut se) = (None, None, None);
    for part in fields.split('&') {
        match part.split_once('=') {
            Some(("sr", v)) => sr = Some(v),
            Some(("sig", v)) => sig = Some(v),
            Some(("se", v)) => se = Some(v),
            Some(("skn", _)) => {}
            _ => return Err(format!("unexpected field {part:?}")),
        }
    }
    let (sr, sig, se) = (sr.ok_or("no sr")?, sig.ok_or("no sig")?, se.ok_or("no se")?);
    let decoded = percent_decode(sr).ok_or("sr is not percent-encoded text")?;
    if !decoded.eq_ignore_ascii_case(resource) {
        return Err(format!("signed for {decoded:?}, not {resource:?}"));
    }
    let expiry: u64 = se.parse().map_err(|_| "se is not a number")?;
    if expiry <= now_s {
        return Err(format!("expired at {expiry} (now {now_s})"));
    }
    let key = base64::engine::general_purpose::STANDARD
        .decode(key)
        .map_err(|_| "the key is not base64")?;
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).map_err(|e| e.to_string())?;
    mac.update(format!("{sr}\n{se}").as_bytes());
    let sent = percent_decode(sig)
        .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
        .ok_or("sig is not percent-encoded base64")?;
    mac.verify_slice(&sent)
        .map_err(|_| "wrong signature".to_owned())
}

/// The device key of a DPS group enrollment: HMAC-SHA256 of the registration id keyed with
/// the group key, base64 (both keys base64).
pub fn derived_key(group_key: &str, registration_id: &str) -> String {
    let key = base64::engine::general_purpose::STANDARD
        .decode(group_key)
        .unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(registration_id.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// Seconds since the Unix epoch.
pub fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[cfg(test)]
mod tests {
    use super::*;

    // shared/research/iothub-sas-vectors.md and dps-vectors.md (Microsoft's SDK).
    #[test]
    fn the_check_takes_the_sdk_vectors_and_nothing_else() {
        let hub = "SharedAccessSignature sr=myhub.azure-devices.net%2Fdevices%2Fdevice-001&sig=naf90TjQVvBG83HhSshseiyROJtAk%2FTbGw1aRy8M1s8%3D&se=1767225600";
        let key = "c2VjcmV0LWRldmljZS1rZXktMDAxLTAxMjM0NTY3ODk=";
        let resource = "myhub.azure-devices.net/devices/device-001";
        assert_eq!(sas_check(hub, resource, key, 1_767_225_599), Ok(()));
        assert!(
            sas_check(hub, resource, key, 1_767_225_600).is_err(),
            "expired"
        );
        assert!(sas_check(hub, "myhub.azure-devices.net/devices/device-002", key, 0).is_err());
        let other = "Zm9vYmFyYmF6cXV4MTIzNDU2Nzg5MDEyMzQ1Njc4OTA=";
        assert_eq!(
            sas_check(hub, resource, other, 0),
            Err("wrong signature".into())
        );
        let dps = "SharedAccessSignature sr=0ne00000A0A%2Fregistrations%2Fline-a-edge&sig=V92mmkEct9tj18AWzGI0Uavp7kqyx9QKPDrdHdCp530%3D&se=1767225600";
        let dps_key = "c2VjcmV0LWRwcy1pbmRpdmlkdWFsLWtleS0wMDE=";
        assert_eq!(
            sas_check(dps, "0ne00000A0A/registrations/line-a-edge", dps_key, 0),
            Ok(())
        );
    }

    #[test]
    fn the_hub_guard_takes_only_the_identitys_own_topics() {
        let connect = |client_id: &str| Connect {
            client_id: client_id.into(),
            username: String::new(),
            password: String::new(),
            client_cert: false,
            client_cert_der: None,
            accepted: true,
            at: Instant::now(),
        };
        let (device, module) = (connect("dev-a"), connect("edge-1/opcua"));
        let p = TopicUse::Publish;
        let s = TopicUse::Subscribe;
        for (c, u) in [
            (
                &device,
                p("devices/dev-a/messages/events/%24.ct=application%2Fjson"),
            ),
            (&device, p("$iothub/twin/GET/?$rid=1")),
            (&device, p("$iothub/twin/PATCH/properties/reported/?$rid=2")),
            (&device, p("$iothub/methods/res/200/?$rid=3")),
            (&device, s("devices/dev-a/messages/devicebound/#")),
            (&device, s("$iothub/twin/res/#")),
            (&module, p("devices/edge-1/modules/opcua/messages/events/")),
            (&module, s("$iothub/methods/POST/#")),
        ] {
            assert!(hub_topics(c, u), "{} {u:?}", c.client_id);
        }
        for (c, u) in [
            (&device, p("devices/dev-b/messages/events/")),
            (&device, p("devices/dev-a/messages/devicebound/x")),
            (&device, p("opcua/line-a")),
            (&device, s("devices/dev-b/messages/devicebound/#")),
            (&device, s("devices/#")),
            (&module, p("devices/edge-1/messages/events/")),
            (&module, s("devices/edge-1/messages/devicebound/#")),
        ] {
            assert!(!hub_topics(c, u), "{} {u:?}", c.client_id);
        }
    }

    #[test]
    fn derived_group_keys_match_the_sdk_vectors() {
        let group = "R3JvdXBFbnJvbGxtZW50S2V5LXBsYW50LTEtMDEyMzQ1Njc4OWFiY2RlZg==";
        assert_eq!(
            derived_key(group, "line-a-edge"),
            "Ij5BehncSL60XrKn1eO4N1fry8OVFPIAajXBI5XQlbs="
        );
        assert_eq!(
            derived_key(group, "filler-plant1-007"),
            "rZTYcH3hJYumNnxwNusL4ulg31PU8fyx7xcYvy9O+kg="
        );
        let token = "SharedAccessSignature sr=0ne00000A0A%2Fregistrations%2Fline-b-edge&sig=rkoAAtT0BNgLnJ99hg3LuwtrNSrn1AoQwyoIrg4vImk%3D&se=1767225600";
        assert_eq!(
            sas_check(
                token,
                "0ne00000A0A/registrations/line-b-edge",
                &derived_key(group, "line-b-edge"),
                0
            ),
            Ok(())
        );
    }
}
