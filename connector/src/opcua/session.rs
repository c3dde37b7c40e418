//! One PLC: connect, subscribe, and keep it that way without a human.
//!
//! The session's event loop reconnects by itself (async-opcua, retry limit -1). We watch its
//! events: after a new session (the server restarted) we re-read the namespace array and
//! subscribe again from scratch, so namespace indexes that moved cannot point us at the wrong
//! nodes; after a reactivated session (the connection dropped, the session survived) the
//! server's subscriptions are still there and we only kick the publish loop. Sequence gaps are
//! recovered with Republish where the server still has the message.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use opcua::client::{Client, Session, SessionConnectMode, SessionPollResult};
use opcua::types::{
    AttributeId, EndpointDescription, ReadValueId, StatusCode, TimestampsToReturn, VariableId,
    Variant,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::backoff::Backoff;
use crate::config::{Pki, Plc};
use crate::metrics::PlcMetrics;
use crate::opcua::backfill::Backfill;
use crate::opcua::connect::{
    check_certificate, client, client_trying_once, endpoint, identity, refusal, SessionError,
};
use crate::opcua::events::LastEvents;
use crate::opcua::link::{publish_link, LinkSender};
use crate::opcua::resolve::Namespaces;
use crate::opcua::structures::Structures;
use crate::opcua::subscribe::Kept;
use crate::opcua::subscribe::{self, Created};
use crate::pipeline::SampleSender;

/// How a session retries after a failure: at the network pace for what a retry may fix
/// soon, slowly for refusals (credentials, certificates), and each cause logged once per
/// outage, not per attempt (the attempts are counted).
#[derive(Debug)]
struct Pacing {
    network: Backoff,
    refused: Backoff,
    logged: std::collections::HashSet<String>,
}

impl Pacing {
    fn new() -> Pacing {
        Pacing {
            network: session_backoff(),
            refused: refusal_backoff(),
            logged: std::collections::HashSet::new(),
        }
    }

    /// The session is up: the next failure starts a new outage.
    fn connected(&mut self) {
        self.network.reset();
        self.refused.reset();
        self.logged.clear();
    }

    /// The wait before the next attempt after `e`, and whether `e` is news (to be logged
    /// as an error; a repeated refusal is logged at debug level).
    fn failed(&mut self, e: &SessionError) -> (Duration, bool) {
        match e {
            // By status: a reason may hold the current time.
            SessionError::Certificate { status, .. } => (
                self.refused.next_wait(),
                self.logged.insert(format!("certificate {status}")),
            ),
            SessionError::Refused { status, .. } => {
                // async-opcua reports a server certificate that is already in rejected/ as
                // BadSecurityChecksFailed: the same outage as the BadCertificateUntrusted
                // that put it there, said once.
                let cause = match *status {
                    StatusCode::BadSecurityChecksFailed => StatusCode::BadCertificateUntrusted,
                    s => s,
                };
                (
                    self.refused.next_wait(),
                    self.logged.insert(cause.to_string()),
                )
            }
            other => (
                self.network.next_wait(),
                self.logged.insert(other.to_string()),
            ),
        }
    }
}

/// The failure of a session's connect attempt as the event loop reports it: a refusal ends
/// the attempt (retried slowly by our loop), anything else is retried by the event loop.
fn refused(
    plc: &Plc,
    pki: &Pki,
    session: &'static str,
    status: StatusCode,
) -> Option<SessionError> {
    refusal(status, pki).map(|cause| SessionError::Refused {
        plc: plc.id.clone(),
        session,
        status,
        cause,
    })
}

static CLOSING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// True once a session is being closed by us (shutdown): what async-opcua then logs as
/// errors (a server answering the pending Publish requests with BadSessionClosed) is the
/// close we asked for, and the log filter of `main` leaves it out.
pub fn closing() -> bool {
    CLOSING.load(Ordering::Relaxed)
}

/// Closes a session we are done with (shutdown), within 3 s.
async fn close(session: &Session) {
    CLOSING.store(true, Ordering::Relaxed);
    let _ = tokio::time::timeout(Duration::from_secs(3), session.disconnect()).await;
}

pub async fn read_namespaces(session: &Session) -> Result<Namespaces, StatusCode> {
    let read = ReadValueId::from(opcua::types::NodeId::from(
        VariableId::Server_NamespaceArray,
    ));
    let v = session
        .read(&[read], TimestampsToReturn::Neither, 0.0)
        .await
        .map_err(|e| e.status())?;
    match v.into_iter().next().and_then(|d| d.value) {
        Some(Variant::Array(a)) => Ok(Namespaces(
            a.values
                .iter()
                .map(|v| match v {
                    Variant::String(s) => s.as_ref().to_owned(),
                    _ => String::new(),
                })
                .collect(),
        )),
        _ => Err(StatusCode::BadNoValue),
    }
}

/// A session opened once, for a command that reads a few things from a PLC and is done
/// (`opcua-connector dtdl`): the PLC's endpoint, security and user as `run` opens them, the
/// server's certificate checked against `[pki]` the same way.
pub struct OneShot {
    pub session: Arc<Session>,
    pub ns: Namespaces,
    driver: tokio::task::JoinHandle<StatusCode>,
}

/// Opens a [`OneShot`] session and reads the namespace array, all within `within`; the
/// reason in words when it cannot (the endpoint's answer, a refusal, or the time up).
pub async fn connect_once(plc: &Plc, pki: &Pki, within: Duration) -> Result<OneShot, String> {
    let deadline = tokio::time::Instant::now() + within;
    let late = |what: &str| format!("{what} within {} s", within.as_secs_f64());
    let client = client_trying_once(pki, &plc.id).map_err(|e| e.to_string())?;
    let (session, event_loop, _) =
        tokio::time::timeout_at(deadline, open_with(client, plc, pki, None))
            .await
            .map_err(|_| late("no answer from the endpoint"))?
            .map_err(|e| e.to_string())?;
    let mut driver = event_loop.spawn();
    // Tried once: a session that cannot be made ends its event loop, with the reason.
    let connected = tokio::time::timeout_at(deadline, async {
        tokio::select! {
            ok = session.wait_for_connection() => Ok(ok),
            ended = &mut driver => Err(match ended {
                Ok(status) => format!("the session ended: {status}"),
                Err(e) => format!("the session ended: {e}"),
            }),
        }
    })
    .await;
    match connected {
        Ok(Ok(true)) => {}
        Ok(Ok(false)) => {
            driver.abort();
            return Err("no session".to_owned());
        }
        Ok(Err(why)) => return Err(why),
        Err(_) => {
            driver.abort();
            return Err(late("no session"));
        }
    }
    match tokio::time::timeout_at(deadline, read_namespaces(&session)).await {
        Ok(Ok(ns)) => Ok(OneShot {
            session,
            ns,
            driver,
        }),
        failed => {
            let _ = tokio::time::timeout(Duration::from_secs(1), session.disconnect()).await;
            driver.abort();
            Err(match failed {
                Ok(Err(status)) => format!("cannot read the namespace array: {status}"),
                _ => late("no namespace array"),
            })
        }
    }
}

impl OneShot {
    /// The session as the write service sees one (what `writes::plc` reads through).
    pub fn link(&self) -> crate::opcua::link::Link {
        crate::opcua::link::Link {
            session: self.session.clone(),
            ns: self.ns.clone(),
            generation: 0,
        }
    }

    /// Closes the session (within 3 s) and stops its event loop.
    pub async fn close(self) {
        close(&self.session).await;
        self.driver.abort();
    }
}

enum Event {
    Lost(StatusCode),
    Reconnected(bool),
    ReconnectFailed(StatusCode),
}

type EventLoop = opcua::client::SessionEventLoop<crate::opcua::tcp::NoDelayConnector>;

/// A session to the PLC's endpoint (not yet connected: drive its event loop), decoding the
/// server's structures with `structures` when given.
async fn open(
    plc: &Plc,
    pki: &Pki,
    structures: Option<Arc<Structures>>,
) -> Result<(Arc<Session>, EventLoop, EndpointDescription), SessionError> {
    open_with(client(pki, &plc.id)?, plc, pki, structures).await
}

async fn open_with(
    client: Client,
    plc: &Plc,
    pki: &Pki,
    structures: Option<Arc<Structures>>,
) -> Result<(Arc<Session>, EventLoop, EndpointDescription), SessionError> {
    let endpoint = endpoint(&client, plc, &pki.dir).await?;
    let identity = identity(&plc.id, &plc.auth)?;
    let connect_error = |e: opcua::types::Error| SessionError::Connect {
        plc: plc.id.clone(),
        status: e.status(),
    };
    // Our TCP connector (TCP_NODELAY), otherwise what `connect_to_endpoint_directly` does.
    let mut builder = client
        .session_builder()
        .with_connector(crate::opcua::tcp::NoDelay)
        .connect_to_endpoint_directly(endpoint.clone())
        .map_err(connect_error)?
        .user_identity_token(identity);
    if let Some(s) = structures {
        builder = builder.type_loader(s);
    }
    let (session, event_loop) = builder
        .build(client.certificate_store().clone())
        .map_err(connect_error)?;
    Ok((session, event_loop, endpoint))
}

/// Drives a session's event loop, forwarding what we act on.
fn drive(
    event_loop: EventLoop,
    plc_id: &str,
    (backfill, samples): (Option<&Arc<Backfill>>, Option<&SampleSender>),
) -> (
    tokio::task::JoinHandle<StatusCode>,
    mpsc::UnboundedReceiver<Event>,
) {
    let (ev_tx, events) = mpsc::unbounded_channel();
    let plc_id = plc_id.to_owned();
    let backfill = backfill.cloned();
    let samples = samples.cloned();
    let driver = tokio::spawn(async move {
        let mut stream = std::pin::pin!(event_loop.enter());
        while let Some(e) = stream.next().await {
            let ev = match e {
                Ok(SessionPollResult::ConnectionLost(s)) => {
                    // Here, in the task that also hands the notifications over, so that no
                    // sample of a reconnected session comes before the outage is marked.
                    if let Some(b) = &backfill {
                        b.cut();
                    }
                    if let Some(t) = &samples {
                        t.session_down(true);
                    }
                    Event::Lost(s)
                }
                Ok(SessionPollResult::Reconnected(mode)) => {
                    let new = matches!(mode, SessionConnectMode::NewSession(_));
                    // A resumed session keeps its subscriptions: the last values stand again
                    // (a new one subscribes afresh, and its first samples bring them).
                    if let (Some(t), false) = (&samples, new) {
                        t.session_down(false);
                    }
                    Event::Reconnected(new)
                }
                Ok(SessionPollResult::ReconnectFailed(s)) => Event::ReconnectFailed(s),
                Ok(_) => continue,
                Err(s) => return s,
            };
            if ev_tx.send(ev).is_err() {
                break;
            }
        }
        warn!(plc = %plc_id, "session event loop ended");
        StatusCode::BadConnectionClosed
    });
    (driver, events)
}

/// The session of cloud-to-PLC writes and method calls, beside the one that subscribes: a
/// write must not queue behind a large publish response (on a shared session the p99 of a
/// write under 100,000 samples/s was ~30 ms, most of it waiting). It publishes the session
/// for the write service while connected (namespaces read), `None` otherwise.
pub async fn run_writes(plc: Plc, pki: Pki, link: LinkSender, shutdown: CancellationToken) {
    let mut pacing = Pacing::new();
    while !shutdown.is_cancelled() {
        let served = serve_writes(&plc, &pki, &link, &shutdown, &mut pacing).await;
        link.send_replace(None);
        match served {
            Ok(()) => break,
            Err(e) => {
                let (wait, news) = pacing.failed(&e);
                let retry_in_s = wait.as_secs_f64().round();
                if !news {
                    debug!(plc = %plc.id, error = %e, retry_in_s, "write session still not connected");
                } else if matches!(
                    e,
                    SessionError::Refused { .. } | SessionError::Certificate { .. }
                ) {
                    error!(plc = %plc.id, error = %e, retry_in_s, "write session refused, retrying slowly (up to every 5 min)");
                } else {
                    warn!(plc = %plc.id, error = %e, retry_in_ms = wait.as_millis() as u64, "write session not connected");
                }
                if !sleep_unless_shutdown(wait, &shutdown).await {
                    break;
                }
            }
        }
    }
}

async fn serve_writes(
    plc: &Plc,
    pki: &Pki,
    link: &LinkSender,
    shutdown: &CancellationToken,
    pacing: &mut Pacing,
) -> Result<(), SessionError> {
    let (session, event_loop, endpoint) = open(plc, pki, None).await?;
    let (driver, mut events) = drive(event_loop, &plc.id, (None, None));
    let mut namespaces: Option<Namespaces> = None;
    let mut read_at: Option<tokio::time::Instant> = None;
    let result = loop {
        let retry = sleep_until_set(read_at);
        tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            ev = events.recv() => match ev {
                None => break Err(SessionError::Connect { plc: plc.id.clone(), status: StatusCode::BadConnectionClosed }),
                Some(Event::Lost(_)) => {
                    link.send_replace(None);
                }
                Some(Event::ReconnectFailed(status)) => {
                    if let Some(e) = refused(plc, pki, "write", status) {
                        break Err(e);
                    }
                }
                Some(Event::Reconnected(new_session)) => {
                    // The stack made a new session inside its event loop with the pinned
                    // certificate: ours to check again (a CRL or a date may say no now).
                    if new_session {
                        if let Err(e) = check_certificate(plc, &pki.dir, &endpoint) {
                            break Err(e);
                        }
                    }
                    pacing.connected();
                    match (&namespaces, new_session) {
                        // The same session: the namespaces are still valid.
                        (Some(ns), false) => publish_link(link, &session, ns),
                        _ => read_at = Some(tokio::time::Instant::now()),
                    }
                }
            },
            _ = retry => {
                read_at = None;
                match read_namespaces(&session).await {
                    Ok(ns) => {
                        publish_link(link, &session, &ns);
                        namespaces = Some(ns);
                    }
                    Err(status) => {
                        warn!(plc = %plc.id, status = %status, "write session: cannot read the namespace array, retrying in 1 s");
                        read_at = Some(tokio::time::Instant::now() + Duration::from_secs(1));
                    }
                }
            }
        }
    };
    link.send_replace(None);
    if result.is_ok() {
        close(&session).await;
    }
    driver.abort();
    result
}

/// Runs one PLC until `shutdown`: connects (retrying forever), subscribes, recovers.
pub async fn run(
    plc: Plc,
    pki: Pki,
    tx: SampleSender,
    metrics: Arc<PlcMetrics>,
    shutdown: CancellationToken,
) {
    let mut pacing = Pacing::new();
    let backfill = plc
        .groups
        .iter()
        .any(|g| g.backfill.is_some())
        .then(|| Backfill::new(&plc.id, metrics.clone()));
    let last_events = Arc::new(LastEvents::default());
    while !shutdown.is_cancelled() {
        let served = connect_and_serve(
            &plc,
            &pki,
            (&tx, &metrics),
            &shutdown,
            &mut pacing,
            (backfill.as_ref(), &last_events),
        )
        .await;
        match served {
            Ok(()) => break,
            Err(e) => {
                if let Some(b) = &backfill {
                    b.cut();
                }
                tx.session_down(true);
                PlcMetrics::add(&metrics.connect_failures, 1);
                metrics.connected.store(false, Ordering::Relaxed);
                let (wait, news) = pacing.failed(&e);
                let retry_in_s = wait.as_secs_f64().round();
                if !news {
                    debug!(plc = %plc.id, error = %e, retry_in_s, "plc still not connected");
                } else if matches!(e, SessionError::Certificate { .. }) {
                    error!(plc = %plc.id, error = %e, retry_in_s, "server certificate refused, retrying slowly (up to every 5 min)");
                } else if matches!(e, SessionError::Refused { .. }) {
                    error!(plc = %plc.id, error = %e, retry_in_s, "plc refused the session, retrying slowly (up to every 5 min)");
                } else {
                    error!(plc = %plc.id, error = %e, retry_in_ms = wait.as_millis() as u64, "plc not connected");
                }
                if !sleep_unless_shutdown(wait, &shutdown).await {
                    break;
                }
            }
        }
    }
    info!(plc = %plc.id, "plc stopped");
}

/// Sleeps until `at`; forever when it is not set.
async fn sleep_until_set(at: Option<tokio::time::Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// 500 ms doubling to 5 s (plus jitter) between connection attempts.
fn session_backoff() -> Backoff {
    Backoff::new(Duration::from_millis(500), Duration::from_secs(5))
}

/// 10 s doubling to 5 min (plus jitter) after a refusal: a few logins an hour, not one a
/// second, against a PLC that locks accounts.
fn refusal_backoff() -> Backoff {
    Backoff::new(Duration::from_secs(10), Duration::from_secs(300))
}

/// Sleeps `wait`; false when shut down meanwhile.
async fn sleep_unless_shutdown(wait: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => false,
        _ = tokio::time::sleep(wait) => true,
    }
}

async fn connect_and_serve(
    plc: &Plc,
    pki: &Pki,
    (tx, metrics): (&SampleSender, &Arc<PlcMetrics>),
    shutdown: &CancellationToken,
    pacing: &mut Pacing,
    (backfill, last_events): (Option<&Arc<Backfill>>, &Arc<LastEvents>),
) -> Result<(), SessionError> {
    let structures = Arc::new(Structures::default());
    let (session, event_loop, endpoint) = open(plc, pki, Some(structures.clone())).await?;
    let (driver, mut events) = drive(event_loop, &plc.id, (backfill, Some(tx)));

    // The first connect: the event loop reports Reconnected(NewSession) once connected.
    let (gap_tx, mut gaps) = mpsc::unbounded_channel::<(u32, u32)>();
    let mut subscriptions: Vec<Created> = Vec::new();
    let mut first = true;
    let mut spread = true;
    let mut resubscribe_at: Option<tokio::time::Instant> = None;
    // Reads the gaps of outages from the server's history while this session lasts.
    let backfilling = backfill.map(|b| tokio::spawn(b.clone().run(session.clone(), tx.clone())));
    let result = loop {
        let retry = sleep_until_set(resubscribe_at);
        tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            ev = events.recv() => match ev {
                None => break Err(SessionError::Connect { plc: plc.id.clone(), status: StatusCode::BadConnectionClosed }),
                Some(Event::Lost(status)) => {
                    metrics.connected.store(false, Ordering::Relaxed);
                    warn!(plc = %plc.id, status = %status, "connection lost, reconnecting");
                }
                Some(Event::ReconnectFailed(status)) => {
                    if let Some(e) = refused(plc, pki, "data", status) {
                        break Err(e);
                    }
                }
                Some(Event::Reconnected(new_session)) => {
                    if new_session {
                        // As in the write session: the certificate checked again.
                        if let Err(e) = check_certificate(plc, &pki.dir, &endpoint) {
                            break Err(e);
                        }
                    }
                    pacing.connected();
                    metrics.connected.store(true, Ordering::Relaxed);
                    if first {
                        info!(plc = %plc.id, endpoint = %plc.endpoint, "connected");
                    } else {
                        PlcMetrics::add(&metrics.reconnects, 1);
                        info!(plc = %plc.id, new_session, "reconnected");
                    }
                    if new_session || first {
                        if let Some(b) = backfill {
                            // What the old session's subscriptions had queued is gone too.
                            b.cut();
                        }
                        // Everything the old session had is gone on the server.
                        let old: Vec<u32> = subscriptions.drain(..).map(|c| c.id).collect();
                        if !old.is_empty() {
                            let _ = session.delete_subscriptions(&old).await;
                        }
                        resubscribe_at = Some(tokio::time::Instant::now());
                    } else {
                        // Workaround for async-opcua 0.19: the publish loop rebuilt after a
                        // reconnect waits for a trigger that was already consumed.
                        session.trigger_publish_now();
                    }
                    first = false;
                }
            },
            _ = retry => {
                resubscribe_at = None;
                // A new subscription, a new outage: its first loss is logged at once.
                let recovery = subscribe::Recovery { gaps: gap_tx.clone(), losses: subscribe::LossLog::new() };
                let kept = Kept { structures: Some(&structures), backfill, last_events };
                match setup(&session, plc, (tx, &recovery, metrics), spread, kept).await {
                    Ok(created) => {
                        subscriptions = created;
                        session.trigger_publish_now();
                        if let Some(b) = backfill {
                            b.subscribed();
                        }
                    }
                    Err(StatusCode::BadTooManySubscriptions) if spread => {
                        // The server allows fewer subscriptions than it announced (or than
                        // we assumed): one per group, at once.
                        spread = false;
                        warn!(plc = %plc.id, "the server refused more subscriptions: one subscription per group from now on");
                        resubscribe_at = Some(tokio::time::Instant::now());
                    }
                    Err(status) => {
                        warn!(plc = %plc.id, status = %status, "subscribing failed, retrying in 1 s");
                        resubscribe_at = Some(tokio::time::Instant::now() + Duration::from_secs(1));
                    }
                }
            }
            Some((sub, seq)) = gaps.recv() => {
                recover(&session, &subscriptions, sub, seq, tx, metrics).await;
            }
        }
    };
    if result.is_ok() {
        // Shutting down: delete our subscriptions and close the session politely.
        close(&session).await;
    }
    driver.abort();
    if let Some(task) = backfilling {
        task.abort();
    }
    metrics.connected.store(false, Ordering::Relaxed);
    result
}

async fn setup(
    session: &Session,
    plc: &Plc,
    (tx, recovery, metrics): (&SampleSender, &subscribe::Recovery, &Arc<PlcMetrics>),
    spread: bool,
    kept: Kept<'_>,
) -> Result<Vec<Created>, StatusCode> {
    let ns = read_namespaces(session).await?;
    if let Some(structures) = kept.structures {
        read_structures(session, plc, structures).await;
    }
    let created =
        subscribe::subscribe_all(session, plc, &ns, tx, recovery, metrics, spread, kept).await?;
    info!(
        plc = %plc.id,
        monitored_items = metrics.monitored_items.load(Ordering::Relaxed),
        subscribe_ms = metrics.subscribe_us.load(Ordering::Relaxed) / 1000,
        "subscribed"
    );
    Ok(created)
}

/// Reads the server's own data types (not namespace 0) into `structures`, before the
/// subscriptions deliver values of them; a server that cannot say keeps them as bytes.
async fn read_structures(session: &Session, plc: &Plc, structures: &Structures) {
    let builder =
        opcua::client::custom_types::DataTypeTreeBuilder::new(|id: &opcua::types::NodeId| {
            id.namespace != 0
        });
    match builder.build(session).await {
        Ok(tree) => {
            let names = structure_names(session, &Structures::types(&tree)).await;
            structures.set(tree, names);
            let n = structures.count();
            if n > 0 {
                info!(plc = %plc.id, structures = n, "the server's structure types read: their values land with field names");
            }
        }
        Err(e) => {
            // The previous session's definitions may no longer hold.
            structures.clear();
            warn!(plc = %plc.id, error = %e, "cannot read the server's data types: values of its own structures stay bytes with their type id");
        }
    }
}

/// The browse names of structure types, for the `type` column (`MotorData`); a type whose
/// name cannot be read stays `ExtensionObject` there.
async fn structure_names(
    session: &Session,
    types: &[opcua::types::NodeId],
) -> std::collections::HashMap<opcua::types::NodeId, Arc<str>> {
    let mut names = std::collections::HashMap::new();
    // Small reads: the limits of the server (MaxNodesPerRead) are not read yet here.
    for chunk in types.chunks(100) {
        let reads: Vec<ReadValueId> = chunk
            .iter()
            .map(|id| ReadValueId {
                node_id: id.clone(),
                attribute_id: AttributeId::BrowseName as u32,
                ..Default::default()
            })
            .collect();
        let values = match session.read(&reads, TimestampsToReturn::Neither, 0.0).await {
            Ok(v) => v,
            Err(e) => {
                warn!(status = %e.status(), "cannot read the names of the server's structure types: their type stays ExtensionObject");
                break;
            }
        };
        for (id, v) in chunk.iter().zip(values) {
            if let Some(Variant::QualifiedName(q)) = v.value {
                names.insert(id.clone(), q.name.as_ref().into());
            }
        }
    }
    names
}

/// Asks the server for a notification message we did not receive.
async fn recover(
    session: &Session,
    subscriptions: &[Created],
    sub: u32,
    seq: u32,
    tx: &SampleSender,
    metrics: &Arc<PlcMetrics>,
) {
    let Some(c) = subscriptions.iter().find(|c| c.id == sub) else {
        // The subscription is gone (deleted after a new session): its messages with it.
        PlcMetrics::add(&metrics.lost_messages, 1);
        PlcMetrics::add(&metrics.loss_events, 1);
        return;
    };
    match session.republish(sub, seq).await {
        Ok(msg) => {
            PlcMetrics::add(&metrics.republished, 1);
            let batch = subscribe::samples(&c.watch, msg, metrics, &c.losses);
            tx.send(batch);
        }
        Err(e) => {
            PlcMetrics::add(&metrics.lost_messages, 1);
            PlcMetrics::add(&metrics.loss_events, 1);
            if let Some(more) = c.losses.gaps.hit() {
                warn!(plc = %metrics.plc, subscription = sub, sequence = seq, status = %e.status(), suppressed = more, "notification message lost: the server no longer has it");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused_with(status: StatusCode) -> SessionError {
        SessionError::Refused {
            plc: "p".into(),
            session: "data",
            status,
            cause: String::new(),
        }
    }

    #[test]
    fn each_cause_is_news_once_per_outage_and_refusals_wait_10s_to_5min() {
        let mut p = Pacing::new();
        let expired = refused_with(StatusCode::BadCertificateTimeInvalid);
        let host = refused_with(StatusCode::BadCertificateHostNameInvalid);
        let (wait, news) = p.failed(&expired);
        assert!(news && wait >= Duration::from_secs(10) && wait <= Duration::from_secs(12));
        assert!(!p.failed(&expired).1, "the same cause again is not news");
        assert!(p.failed(&host).1, "another cause is");
        let waits: Vec<Duration> = (0..10).map(|_| p.failed(&host).0).collect();
        assert!(waits.iter().all(|w| *w <= Duration::from_secs(360)));
        assert!(waits[9] >= Duration::from_secs(300));
        // Untrusted, then the same certificate found in rejected/: one outage, one line.
        assert!(
            p.failed(&refused_with(StatusCode::BadCertificateUntrusted))
                .1
        );
        assert!(
            !p.failed(&refused_with(StatusCode::BadSecurityChecksFailed))
                .1
        );
        // A network failure keeps the quick pace.
        let net = SessionError::Connect {
            plc: "p".into(),
            status: StatusCode::BadTimeout,
        };
        let (wait, news) = p.failed(&net);
        assert!(wait <= Duration::from_secs(1) && news);
        assert!(
            !p.failed(&net).1,
            "the same network failure is said once per outage too"
        );
        p.connected();
        assert!(p.failed(&expired).1, "a new outage says it again");
    }
}
