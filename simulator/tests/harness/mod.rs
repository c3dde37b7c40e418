//! Test harness: an embedded simulator on 127.0.0.1:0 and an async-opcua client.

#![allow(dead_code)]

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{BoxStream, StreamExt};
use opcua::client::{ClientBuilder, IdentityToken, Session, SessionPollResult};
use opcua::crypto::SecurityPolicy;
use opcua::types::{
    AttributeId, DataValue, MessageSecurityMode, NodeId, ReadValueId, StatusCode,
    TimestampsToReturn, Variant, WriteValue,
};
use simulator::{SimConfig, Simulator};
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;

pub const NS: &str = simulator::BOTTLING_LINE_NAMESPACE;

pub struct Sim {
    pub sim: Simulator,
    pub token: CancellationToken,
    pub dir: TempDir,
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

/// Starts the bundled bottling line on a free loopback port, after `tweak` adjusted the config.
pub async fn start(tweak: impl FnOnce(&mut SimConfig)) -> Sim {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = SimConfig::bottling_line(dir.path().join("server-pki"));
    tweak(&mut config);
    let token = CancellationToken::new();
    let sim = simulator::start(config, token.clone())
        .await
        .expect("simulator starts");
    Sim { sim, token, dir }
}

pub type Events = BoxStream<'static, Result<SessionPollResult, StatusCode>>;

pub struct Client {
    pub session: Arc<Session>,
    /// The session's event loop as a stream; poll it (or `drive` it) or nothing happens.
    pub events: Option<Events>,
}

/// Polls the event loop until it ends; returns the error it ended with, if any.
pub fn drive(mut events: Events) -> tokio::task::JoinHandle<Option<StatusCode>> {
    tokio::spawn(async move {
        while let Some(e) = events.next().await {
            if let Err(status) = e {
                return Some(status);
            }
        }
        None
    })
}

/// Connects with the given security and identity; the event loop is returned unspawned so a
/// test can watch its events, or spawned by `connect`.
pub async fn connect_with(
    sim: &Sim,
    policy: SecurityPolicy,
    mode: MessageSecurityMode,
    identity: IdentityToken,
) -> Result<Client, String> {
    connect_retrying(sim, policy, mode, identity, -1).await
}

/// As `connect_with`, with a session retry limit (-1: forever).
pub async fn connect_retrying(
    sim: &Sim,
    policy: SecurityPolicy,
    mode: MessageSecurityMode,
    identity: IdentityToken,
    retry_limit: i32,
) -> Result<Client, String> {
    let mut client = ClientBuilder::new()
        .application_name("simulator tests")
        .application_uri("urn:opcua-connector:simulator-tests")
        .product_uri("urn:opcua-connector:simulator-tests")
        .create_sample_keypair(true)
        .pki_dir(sim.dir.path().join("client-pki"))
        .trust_server_certs(true)
        .session_retry_limit(retry_limit)
        .session_retry_initial(Duration::from_millis(100))
        .session_retry_max(Duration::from_millis(500))
        .max_message_size(64 << 20)
        .max_chunk_count(4096)
        .max_array_length(1_000_000)
        .client()
        .map_err(|e| format!("client config: {e:?}"))?;
    let (session, event_loop) = client
        .connect_to_matching_endpoint((sim.sim.endpoint_url(), policy.to_str(), mode), identity)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    Ok(Client {
        session,
        events: Some(event_loop.enter().boxed()),
    })
}

/// Anonymous, no security, event loop spawned, connected.
pub async fn connect(sim: &Sim) -> Arc<Session> {
    let mut c = connect_with(
        sim,
        SecurityPolicy::None,
        MessageSecurityMode::None,
        IdentityToken::Anonymous,
    )
    .await
    .expect("connects");
    drive(c.events.take().expect("event loop"));
    assert!(
        tokio::time::timeout(Duration::from_secs(10), c.session.wait_for_connection())
            .await
            .unwrap_or(false),
        "session connected"
    );
    c.session
}

/// Node id of `BottlingLine` variable `name` (e.g. `Filler.Speed`) on this session.
/// A subscription publishing every 100 ms whose notifications go to `callback`.
pub async fn subscription(
    session: &Session,
    callback: impl opcua::client::OnSubscriptionNotificationCore + 'static,
) -> u32 {
    session
        .create_subscription(Duration::from_millis(100), 300, 10, 0, 0, true, callback)
        .await
        .expect("subscription")
}

pub async fn node(session: &Session, name: &str) -> NodeId {
    let ns = session.get_namespace_index(NS).await.expect("namespace");
    NodeId::new(ns, name)
}

pub async fn read(session: &Session, id: &NodeId) -> DataValue {
    let r = session
        .read(&[ReadValueId::from(id)], TimestampsToReturn::Both, 0.0)
        .await
        .expect("read");
    r.into_iter().next().expect("one value")
}

pub async fn write(session: &Session, id: &NodeId, value: Variant) -> StatusCode {
    let w = WriteValue {
        node_id: id.clone(),
        attribute_id: AttributeId::Value as u32,
        index_range: Default::default(),
        value: DataValue::value_only(value),
    };
    session.write(&[w]).await.expect("write")[0]
}

/// Polls `check` until it returns `Some` or the deadline passes.
pub async fn eventually<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let end = Instant::now() + deadline;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < end,
            "timed out after {deadline:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn f64_of(v: &DataValue) -> f64 {
    match v.value {
        Some(Variant::Double(x)) => x,
        Some(Variant::UInt64(x)) => x as f64,
        Some(Variant::UInt32(x)) => x.into(),
        Some(Variant::Int64(x)) => x as f64,
        Some(Variant::Int32(x)) => x.into(),
        ref other => panic!("not numeric: {other:?}"),
    }
}
