//! An IoT Hub test double for cloud-to-PLC: mosquitto (a real broker that, unlike rumqttd,
//! routes `$`-topics) carries the hub's device topics, and this client plays the hub's
//! service side: it answers twin GETs with the twin it keeps (desired with `$version` and
//! `$metadata.{path}.$lastUpdatedVersion`, reported merged from the device's patches),
//! answers reported PATCHes with 204 (or, when told to, with 429 "throttled" and without
//! applying them: `$iothub/twin/res/429/?$rid={rid}`, as IoT Hub does over its quota), sends desired PATCH notifications and direct-method
//! requests, and records everything the device sent.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{json, Map, Value};

/// A free loopback port (bound and released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("free port")
        .local_addr()
        .expect("addr")
        .port()
}

/// A mosquitto process, killed when dropped.
pub struct Mosquitto(Child);

impl Mosquitto {
    /// The process id (to send it signals, e.g. SIGHUP to reload its configuration).
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts mosquitto with `conf` (written to `dir/mosquitto.conf`) and waits until every port
/// of `ports` accepts connections.
pub fn mosquitto(dir: &Path, conf: &str, ports: &[u16]) -> Mosquitto {
    let conf_path = dir.join("mosquitto.conf");
    std::fs::write(&conf_path, conf).expect("write mosquitto.conf");
    // Debian installs it in /usr/sbin, which is not on every PATH.
    let bin = if Path::new("/usr/sbin/mosquitto").exists() {
        "/usr/sbin/mosquitto"
    } else {
        "mosquitto"
    };
    let child = Command::new(bin)
        .arg("-c")
        .arg(&conf_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("mosquitto is installed (apt-get install mosquitto; .ci/run does it)");
    let deadline = Instant::now() + Duration::from_secs(10);
    for port in ports {
        while std::net::TcpStream::connect(("127.0.0.1", *port)).is_err() {
            assert!(Instant::now() < deadline, "mosquitto listens on {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Mosquitto(child)
}

/// mosquitto with one plain listener on loopback: (process, port).
pub fn plain_mosquitto(dir: &Path) -> (Mosquitto, u16) {
    let port = free_port();
    let conf = format!(
        "user root\nallow_anonymous true\nset_tcp_nodelay true\nmax_queued_messages 100000\nlistener {port} 127.0.0.1\n"
    );
    (mosquitto(dir, &conf, &[port]), port)
}

#[derive(Default)]
struct Twin {
    version: i64,
    desired: Map<String, Value>,
    metadata: Map<String, Value>,
    reported: Map<String, Value>,
    /// Reported patches in arrival order, with when they arrived.
    patches: Vec<(Instant, Value)>,
    gets: usize,
    /// Method responses: (rid, status, body).
    method_responses: Vec<(String, u16, Value)>,
    /// When each desired version was sent.
    sent: Vec<(i64, Instant)>,
    /// Reported PATCHes still to refuse with 429 (throttled), as IoT Hub does.
    throttle: usize,
    /// Reported PATCHes refused with 429 (not merged).
    throttled: usize,
}

fn merge(into: &mut Map<String, Value>, patch: &Map<String, Value>) {
    for (k, v) in patch {
        match (into.get_mut(k), v) {
            (Some(Value::Object(a)), Value::Object(b)) => merge(a, b),
            (_, Value::Null) => {
                into.remove(k);
            }
            _ => {
                into.insert(k.clone(), v.clone());
            }
        }
    }
}

/// `$metadata` entries for every leaf of `patch`.
fn stamp(meta: &mut Map<String, Value>, patch: &Map<String, Value>, version: i64) {
    for (k, v) in patch {
        let entry = meta
            .entry(k.clone())
            .or_insert_with(|| Value::Object(Map::new()));
        if !entry.is_object() {
            *entry = Value::Object(Map::new());
        }
        let Value::Object(m) = entry else {
            unreachable!()
        };
        m.insert("$lastUpdatedVersion".into(), json!(version));
        if let Value::Object(inner) = v {
            stamp(m, inner, version);
        }
    }
}

/// The service side of the hub.
pub struct HubDouble {
    client: AsyncClient,
    twin: Arc<Mutex<Twin>>,
    task: tokio::task::JoinHandle<()>,
    rid: std::sync::atomic::AtomicU64,
}

impl Drop for HubDouble {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The value of `key` in a topic's query (`...?$rid=1&...`).
pub fn query(topic: &str, key: &str) -> Option<String> {
    let (_, q) = topic.split_once('?')?;
    q.split('&')
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=').map(str::to_owned))
}

/// The service side of a cloud double on the broker at `port`: connects as `name`, subscribes
/// to `filters` after every ConnAck, and publishes (QoS 1) what `handle` answers to each
/// message (topic, body). Returns once every filter is subscribed.
pub async fn serve(
    port: u16,
    name: &str,
    filters: &'static [&'static str],
    max_incoming: usize,
    mut handle: impl FnMut(&str, &[u8]) -> Vec<(String, Vec<u8>)> + Send + 'static,
) -> (AsyncClient, tokio::task::JoinHandle<()>) {
    let mut o = MqttOptions::new(format!("{name}-{port}"), "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_max_packet_size(max_incoming, 4 << 20);
    let (client, mut el) = AsyncClient::new(o, 1000);
    el.set_network_options(connector::cloud::mqtt::sender::network_options());
    let c2 = client.clone();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let mut ready_tx = Some(ready_tx);
    let task = tokio::spawn(async move {
        let mut subacks = 0;
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    for f in filters {
                        let _ = c2.subscribe(*f, QoS::AtLeastOnce).await;
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    subacks += 1;
                    if subacks >= filters.len() {
                        if let Some(tx) = ready_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    for (topic, body) in handle(&p.topic, &p.payload) {
                        let _ = c2.publish(topic, QoS::AtLeastOnce, false, body).await;
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), ready_rx)
        .await
        .unwrap_or_else(|_| panic!("{name} subscribed"))
        .unwrap_or_else(|_| panic!("{name} task"));
    (client, task)
}

impl HubDouble {
    /// Connects to the broker on `port` and subscribes to what devices send the hub.
    pub async fn start(port: u16) -> HubDouble {
        let twin: Arc<Mutex<Twin>> = Arc::default();
        let t2 = twin.clone();
        let filters = &[
            "$iothub/twin/GET/#",
            "$iothub/twin/PATCH/properties/reported/#",
            "$iothub/methods/res/#",
        ];
        let (client, task) = serve(
            port,
            "hub-double",
            filters,
            1 << 20,
            move |topic, payload| {
                let rid = query(topic, "$rid").unwrap_or_default();
                let mut t = t2.lock().unwrap();
                if topic.starts_with("$iothub/twin/GET/") {
                    t.gets += 1;
                    let mut desired = t.desired.clone();
                    desired.insert("$version".into(), json!(t.version));
                    desired.insert("$metadata".into(), Value::Object(t.metadata.clone()));
                    let body = json!({"desired": desired, "reported": t.reported.clone()});
                    vec![(
                        format!("$iothub/twin/res/200/?$rid={rid}"),
                        body.to_string().into_bytes(),
                    )]
                } else if topic.starts_with("$iothub/twin/PATCH/properties/reported/") {
                    let v: Value = serde_json::from_slice(payload).unwrap_or(Value::Null);
                    let answer = if t.throttle > 0 {
                        t.throttle -= 1;
                        t.throttled += 1;
                        format!("$iothub/twin/res/429/?$rid={rid}")
                    } else {
                        if let Value::Object(o) = &v {
                            merge(&mut t.reported, o);
                        }
                        t.patches.push((Instant::now(), v));
                        let version = t.patches.len();
                        format!("$iothub/twin/res/204/?$rid={rid}&$version={version}")
                    };
                    vec![(answer, Vec::new())]
                } else {
                    if let Some(rest) = topic.strip_prefix("$iothub/methods/res/") {
                        let status = rest
                            .split('/')
                            .next()
                            .and_then(|s| s.parse().ok())
                            .unwrap_or(0);
                        let body = serde_json::from_slice(payload).unwrap_or(Value::Null);
                        t.method_responses.push((rid, status, body));
                    }
                    Vec::new()
                }
            },
        )
        .await;
        HubDouble {
            client,
            twin,
            task,
            rid: 0.into(),
        }
    }

    /// Changes desired properties: merges `patch`, bumps `$version`, notifies the device.
    /// Returns the new version.
    pub async fn desire(&self, patch: Value) -> i64 {
        let Value::Object(p) = patch else {
            panic!("a desired patch is an object")
        };
        let (version, body) = {
            let mut t = self.twin.lock().unwrap();
            t.version += 1;
            let v = t.version;
            merge(&mut t.desired, &p);
            stamp(&mut t.metadata, &p, v);
            t.sent.push((v, Instant::now()));
            let mut body = p.clone();
            body.insert("$version".into(), json!(v));
            (v, Value::Object(body))
        };
        self.send_raw(
            &format!("$iothub/twin/PATCH/properties/desired/?$version={version}"),
            body.to_string().into_bytes(),
        )
        .await;
        version
    }

    /// Sets desired properties without notifying (the device sees them at its next GET).
    pub fn desire_silently(&self, patch: Value) -> i64 {
        let Value::Object(p) = patch else {
            panic!("a desired patch is an object")
        };
        let mut t = self.twin.lock().unwrap();
        t.version += 1;
        let v = t.version;
        merge(&mut t.desired, &p);
        stamp(&mut t.metadata, &p, v);
        v
    }

    /// Publishes anything on any topic (for hostile input).
    pub async fn send_raw(&self, topic: &str, payload: Vec<u8>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .expect("publish");
    }

    /// Calls a direct method; returns its rid (see [`HubDouble::method_response`]).
    pub async fn call(&self, name: &str, payload: &[u8]) -> String {
        let rid = format!(
            "m{}",
            self.rid.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        self.send_raw(
            &format!("$iothub/methods/POST/{name}/?$rid={rid}"),
            payload.to_vec(),
        )
        .await;
        rid
    }

    /// The response to the call with `rid`, once it arrived.
    pub fn method_response(&self, rid: &str) -> Option<(u16, Value)> {
        self.twin
            .lock()
            .unwrap()
            .method_responses
            .iter()
            .find(|(r, _, _)| r == rid)
            .map(|(_, s, b)| (*s, b.clone()))
    }

    /// The reported acknowledgement at a dotted `path`.
    pub fn ack(&self, path: &str) -> Option<Value> {
        let t = self.twin.lock().unwrap();
        let mut node = t.reported.get(path.split('.').next()?)?;
        for part in path.split('.').skip(1) {
            node = node.get(part)?;
        }
        Some(node.clone())
    }

    /// Every acknowledgement of `path` in arrival order.
    pub fn acks(&self, path: &str) -> Vec<Value> {
        let t = self.twin.lock().unwrap();
        t.patches
            .iter()
            .filter_map(|(_, p)| {
                let mut node = p;
                for part in path.split('.') {
                    node = node.get(part)?;
                }
                Some(node.clone())
            })
            .collect()
    }

    /// When the first acknowledgement of `path` with `av = version` and the given `ac`
    /// arrived, measured from when that version was sent.
    pub fn round_trip(&self, path: &str, version: i64, ac: i64) -> Option<Duration> {
        let t = self.twin.lock().unwrap();
        let sent = t.sent.iter().find(|(v, _)| *v == version)?.1;
        t.patches.iter().find_map(|(at, p)| {
            let mut node = p;
            for part in path.split('.') {
                node = node.get(part)?;
            }
            let hit = node.get("av")?.as_i64()? == version && node.get("ac")?.as_i64()? == ac;
            hit.then(|| at.duration_since(sent))
        })
    }

    /// Answers the next `n` reported PATCHes with 429 (throttled), not applying them.
    pub fn throttle_patches(&self, n: usize) {
        self.twin.lock().unwrap().throttle = n;
    }

    /// Reported PATCHes answered 429 so far.
    pub fn throttled(&self) -> usize {
        self.twin.lock().unwrap().throttled
    }

    pub fn gets(&self) -> usize {
        self.twin.lock().unwrap().gets
    }

    /// Every reported patch received, in order.
    pub fn patch_log(&self) -> Vec<Value> {
        self.twin
            .lock()
            .unwrap()
            .patches
            .iter()
            .map(|(_, p)| p.clone())
            .collect()
    }

    pub fn patches(&self) -> usize {
        self.twin.lock().unwrap().patches.len()
    }
}
