//! What the MQTT 3.1.1 and 5 senders share: the in-flight window, the pairing of buffer ids
//! with packet ids, the connection state and its counters, back-off, credential renewal,
//! the drain at shutdown and the periodic report. The senders only speak their version's
//! packets.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt::Display;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::backoff::Backoff;
use crate::buffer::outbox::{unframe, Outbox};
use crate::cloud::control::{Control, Outbound};
use crate::cloud::mqtt::TopicMap;

/// Messages in flight at once (also the client's request channel size, plus a margin).
pub const WINDOW: usize = 100;

/// How often a sender logs its counters (besides `/metrics`, for logs read later).
const REPORT_EVERY: Duration = Duration::from_secs(60);

/// Bytes of a PUBLISH packet besides its topic and body (fixed header, packet id, MQTT 5
/// properties), for the size check before sending.
pub const PUBLISH_OVERHEAD: usize = 256;

/// MQTT 5 PUBACK (and DISCONNECT) reason codes that no retry can change: the message is
/// moved to the dead letters. 0x90 topic name invalid, 0x95 packet too large, 0x99 payload
/// format invalid. Other failures (0x80 unspecified, 0x83 implementation specific, 0x87 not
/// authorized, 0x97 quota exceeded) may pass and are retried.
pub fn permanent(code: u8) -> bool {
    matches!(code, 0x90 | 0x95 | 0x99)
}

/// Fresh credentials: (username, password, when to renew them). IoT Hub SAS tokens expire;
/// the sender reconnects with a fresh one before they do (MQTT 3.1.1 has no re-auth).
pub type Renewer = Arc<dyn Fn() -> Result<(String, String, SystemTime), String> + Send + Sync>;

/// What each publish handed to the client was, in order, to pair with its packet id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sent {
    /// A buffered message (its id).
    Buffered(u64),
    /// An answer to a request: its PUBACK is not waited for.
    Control,
    /// A status message: a PUBACK refusing it (MQTT 5) is counted.
    Status,
}

/// What both senders are given besides their client options.
pub struct Sending {
    /// 0 or 1.
    pub qos: u8,
    pub outbox: Arc<Outbox>,
    pub shutdown: CancellationToken,
    /// How long to keep delivering what is buffered after `shutdown`.
    pub grace: Duration,
    /// Fresh credentials before the old ones expire (IoT Hub SAS).
    pub renew: Option<Renewer>,
    /// The cloud-to-PLC side of the connection, when writes or methods are served.
    pub control: Option<Control>,
    /// The connector's status on this connection (a retained topic, or reported properties).
    pub status: Option<crate::cloud::status::StatusPlan>,
    /// The largest packet the connection may send, when it is not the client's incoming
    /// limit (rumqttc's `max_packet_size()`): the hub takes less than it sends us.
    pub send_limit: Option<usize>,
    /// The topic each buffered message is published on, resolved when it is sent (IoT Hub:
    /// under the identity in use); `None`: the topic it was stored with.
    pub topics: Option<TopicMap>,
}

pub struct Flow {
    outbox: Arc<Outbox>,
    /// QoS 0: a message is done once written; QoS 1: once acknowledged.
    qos0: bool,
    tag: &'static str,
    /// Publishes handed to the client, in order: a buffer id, or `None` for a control message
    /// (twin acknowledgement, write or method response), which the buffer does not track.
    sent: VecDeque<Sent>,
    /// Packet ids of the status messages awaiting their PUBACK.
    status_inflight: HashSet<u16>,
    inflight: HashMap<u16, u64>,
    pub connected: bool,
    ever_connected: bool,
    backoff: Backoff,
    /// After refused credentials: 5 s doubling to 5 min, so that a wrong key does not get
    /// the device throttled or blocked (IoT Hub) or an account locked.
    refusals: Backoff,
    /// The last refusal logged (one line per cause, not per attempt).
    refused_cause: Option<String>,
    /// The connection's keep-alive and when the last PINGREQ went out without an answer yet:
    /// a broker that does not answer within 0.4 x keep-alive is taken as gone, so a hung
    /// broker is noticed within 1.4 x keep-alive.
    keep_alive: Duration,
    ping_sent: Option<Instant>,
    draining_until: Option<Instant>,
    last_report: Instant,
    renew: Option<Renewer>,
    pub renew_at: Option<Instant>,
    /// The largest packet the client may send (its own limit, or the broker's from ConnAck).
    limit: usize,
    /// Probe mode, after a permanent refusal that could not be matched to a packet id (see
    /// [`Flow::refused_unmatched`]): one message in flight at a time, for this many more
    /// acknowledgements.
    probe: Option<usize>,
    /// The topic a buffered message is sent on (see [`Sending::topics`]).
    topics: Option<TopicMap>,
}

impl Flow {
    /// Publishes the queued cloud-to-PLC answers of `control`, ahead of telemetry, while the
    /// window has room and `publish` hands them to the client.
    pub fn send_control(
        &mut self,
        control: &mut Control,
        mut publish: impl FnMut(&Outbound) -> bool,
    ) {
        while let Some(out) = control.next() {
            if !self.has_room() {
                break;
            }
            // An answer made under an earlier identity (DPS re-provisioning meanwhile) goes
            // out under the one in use, as buffered telemetry does.
            let resolved = self.topics.as_ref().and_then(|map| map(&out.topic));
            let sent = match resolved {
                Some(topic) => publish(&Outbound {
                    topic,
                    ..out.clone()
                }),
                None => publish(out),
            };
            if !sent {
                break;
            }
            self.control_sent();
            control.sent();
        }
    }

    pub fn new(outbox: Arc<Outbox>, qos0: bool, tag: &'static str, renew: Option<Renewer>) -> Self {
        Flow {
            outbox,
            qos0,
            tag,
            sent: VecDeque::new(),
            status_inflight: HashSet::new(),
            inflight: HashMap::new(),
            connected: false,
            ever_connected: false,
            backoff: Backoff::new(Duration::from_millis(200), Duration::from_secs(1)),
            refusals: Backoff::new(Duration::from_secs(5), Duration::from_secs(300)),
            refused_cause: None,
            keep_alive: Duration::ZERO,
            ping_sent: None,
            draining_until: None,
            last_report: Instant::now(),
            renew,
            renew_at: None,
            limit: usize::MAX,
            probe: None,
            topics: None,
        }
    }

    /// Resolves each buffered message's topic with `topics` when it is sent.
    pub fn set_topics(&mut self, topics: Option<TopicMap>) {
        self.topics = topics;
    }

    /// The largest packet the client may send.
    pub fn set_limit(&mut self, limit: usize) {
        self.limit = limit;
    }

    /// The keep-alive the client pings with (zero: none).
    pub fn set_keep_alive(&mut self, keep_alive: Duration) {
        self.keep_alive = keep_alive;
    }

    /// A PINGREQ went out.
    pub fn ping_sent(&mut self) {
        self.ping_sent.get_or_insert_with(Instant::now);
    }

    /// Something came from the broker: it is alive.
    pub fn heard(&mut self) {
        self.ping_sent = None;
    }

    /// Sleeps until an unanswered PINGREQ is overdue (forever if none is out).
    pub async fn ping_overdue(&self) {
        match self.ping_sent {
            Some(t) if !self.keep_alive.is_zero() && self.connected => {
                tokio::time::sleep_until(t + self.keep_alive.mul_f64(0.4)).await
            }
            _ => std::future::pending().await,
        }
    }

    /// The text of a hung broker, for [`Flow::after_failure`].
    pub fn hung(&self) -> String {
        format!(
            "the broker did not answer a ping within {:.1} s (keep_alive {} s): taking the connection as lost",
            self.keep_alive.mul_f64(0.4).as_secs_f64(),
            self.keep_alive.as_secs()
        )
    }

    /// New credentials if a renewer is set (None otherwise, or on failure: retried in 5 s).
    pub fn credentials(&mut self) -> Option<(String, String)> {
        let r = self.renew.as_ref()?;
        match r() {
            Ok((user, pass, at)) => {
                let wait = at
                    .duration_since(SystemTime::now())
                    .unwrap_or(Duration::ZERO);
                self.renew_at = Some(Instant::now() + wait);
                Some((user, pass))
            }
            Err(e) => {
                warn!(error = %e, "{}: cannot make credentials, retrying in 5 s", self.tag);
                self.renew_at = Some(Instant::now() + Duration::from_secs(5));
                None
            }
        }
    }

    /// Sleeps until the credentials must be renewed (forever without a renewer).
    pub async fn renewal_due(&self) {
        match self.renew_at {
            Some(t) => tokio::time::sleep_until(t).await,
            None => std::future::pending().await,
        }
    }

    /// Called before each poll: reports, and decides whether to stop (shutdown requested and
    /// the buffer drained, or the grace time over).
    pub fn keep_going(&mut self, shutdown: &CancellationToken, grace: Duration) -> bool {
        // The last acks of a burst are saved even when no further ack comes.
        if let Err(e) = self.lock().save_cursor_if_due() {
            warn!(error = %e, "{}: cannot save the buffer cursor", self.tag);
        }
        if self.last_report.elapsed() >= REPORT_EVERY {
            self.last_report = Instant::now();
            self.report();
        }
        if self.draining_until.is_none() && shutdown.is_cancelled() {
            self.draining_until = Some(Instant::now() + grace);
        }
        let Some(t) = self.draining_until else {
            return true;
        };
        let empty = self.lock().stats().pending == 0;
        if empty || Instant::now() >= t {
            if !empty {
                warn!(
                    "{}: stopping with messages still buffered; they go out after the next start",
                    self.tag
                );
            }
            return false;
        }
        true
    }

    pub fn draining(&self) -> bool {
        self.draining_until.is_some()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, crate::buffer::Buffer> {
        self.outbox.buffer.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Hands buffered messages to `publish(topic, gzip, body)` while the window has room.
    pub fn fill(&mut self, mut publish: impl FnMut(&str, bool, &[u8]) -> bool) {
        if !self.connected {
            return;
        }
        let window = if self.probe.is_some() { 1 } else { WINDOW };
        let room = window.saturating_sub(self.sent.len() + self.inflight.len());
        if room == 0 {
            return;
        }
        let batch = match self.lock().next_unsent(room) {
            Ok(b) => b,
            Err(e) => {
                warn!(error = %e, "{}: cannot read the buffer", self.tag);
                return;
            }
        };
        for (id, f) in batch {
            let Some((topic, gzip, body)) = unframe(&f) else {
                warn!(id, "{}: unreadable buffered message skipped", self.tag);
                self.ack(id);
                continue;
            };
            let resolved = self.topics.as_ref().and_then(|map| map(topic));
            let topic = resolved.as_deref().unwrap_or(topic);
            let size = topic.len() + body.len() + PUBLISH_OVERHEAD;
            if size > self.limit {
                let reason = format!(
                    "a packet of about {size} bytes, over the largest the connection may send ({} bytes)",
                    self.limit
                );
                self.outbox.dead_letter(topic, gzip, body, &reason);
                self.settle(id);
                continue;
            }
            if publish(topic, gzip, body) {
                self.sent.push_back(Sent::Buffered(id));
            }
        }
    }

    /// ConnAck: the broker forgot what was in flight (clean session); send it all again.
    pub fn connack(&mut self) {
        let m = &self.outbox.metrics;
        self.connected = true;
        self.backoff.reset();
        self.refusals.reset();
        self.ping_sent = None;
        if self.refused_cause.take().is_some() {
            info!("{}: credentials accepted again", self.tag);
        }
        m.connected.store(true, Ordering::Relaxed);
        if self.ever_connected {
            m.reconnects.fetch_add(1, Ordering::Relaxed);
        }
        self.ever_connected = true;
        self.reset();
        self.lock().rewind();
        info!("{}: connected", self.tag);
    }

    /// A publish went out with packet id `pkid`: pair it with the oldest sent buffer id.
    pub fn outgoing_publish(&mut self, pkid: u16) {
        match self.sent.pop_front() {
            Some(Sent::Buffered(id)) => {
                self.outbox
                    .metrics
                    .messages_sent
                    .fetch_add(1, Ordering::Relaxed);
                if self.qos0 {
                    self.ack(id);
                } else {
                    self.inflight.insert(pkid, id);
                }
            }
            Some(Sent::Status) => {
                self.status_inflight.insert(pkid);
            }
            Some(Sent::Control) | None => {}
        }
    }

    /// A control message (an answer) was handed to the client: its `Outgoing::Publish`
    /// pairs with no buffer id (and its PUBACK is ignored).
    pub fn control_sent(&mut self) {
        self.sent.push_back(Sent::Control);
    }

    /// A status message (QoS 1) was handed to the client: its PUBACK is told apart
    /// ([`Self::status_puback`]).
    pub fn status_sent(&mut self) {
        self.sent.push_back(Sent::Status);
    }

    /// Whether a PUBACK that answers no buffered message answers a status message.
    pub fn status_puback(&mut self, pkid: u16) -> bool {
        self.status_inflight.remove(&pkid)
    }

    /// What waits in the buffer.
    pub fn backlog(&self) -> crate::cloud::status::Backlog {
        let s = self.lock().stats();
        crate::cloud::status::Backlog {
            messages: s.pending,
            bytes: s.bytes_on_disk,
            oldest: s.oldest_pending_age,
        }
    }

    /// Whether the in-flight window has room for a control message.
    pub fn has_room(&self) -> bool {
        // While probing, only telemetry goes out, one message at a time.
        self.connected && self.probe.is_none() && self.sent.len() + self.inflight.len() < WINDOW
    }

    /// The buffer id a PUBACK answers, if it is one of ours.
    pub fn puback(&mut self, pkid: u16) -> Option<u64> {
        let id = self.inflight.remove(&pkid);
        if id.is_some() {
            self.probe = match self.probe {
                Some(n) if n > 1 => Some(n - 1),
                _ => None,
            };
        }
        id
    }

    /// The broker refused message `id` for good (`reason`): moved to the dead letters and
    /// removed from the buffer; the stream goes on.
    pub fn refused(&mut self, id: u64, reason: &str) {
        let stored = self.lock().read(id);
        match stored {
            Ok(Some(f)) => match unframe(&f) {
                Some((topic, gzip, body)) => self.outbox.dead_letter(topic, gzip, body, reason),
                None => warn!(id, "{}: unreadable buffered message skipped", self.tag),
            },
            Ok(None) => {}
            Err(e) => warn!(id, error = %e, "{}: cannot read a refused message", self.tag),
        }
        self.settle(id);
    }

    /// A PUBACK refused a message with reason `code`, but the client could not decode it (the
    /// connection failed; rumqttc 0.25 knows no 0x95 in a PUBACK), so which message is not
    /// known: the connection dropped with several in flight. The sender then probes: after the
    /// reconnect it sends one message at a time (for [`WINDOW`] acknowledgements), so that a
    /// refusal with exactly one message in flight names it; that one is moved to the dead
    /// letters. Returns its id then.
    pub fn refused_unmatched(&mut self, code: u8) -> Option<u64> {
        let only = match (self.probe, self.inflight.len(), self.sent.len()) {
            (Some(_), 1, 0) => self.inflight.values().next().copied(),
            _ => None,
        };
        self.probe = Some(WINDOW);
        let id = only?;
        self.refused(
            id,
            &format!("refused by the broker with reason {code:#04x}"),
        );
        Some(id)
    }

    /// Forgets what is in flight (a reconnect follows; the buffer rewinds at its ConnAck).
    pub fn reset(&mut self) {
        self.sent.clear();
        self.inflight.clear();
        self.status_inflight.clear();
    }

    /// Drops the connection on purpose (renewal, rejected message).
    pub fn disconnected(&mut self) {
        self.connected = false;
        self.outbox
            .metrics
            .connected
            .store(false, Ordering::Relaxed);
        self.reset();
    }

    /// The connection failed: logs once per outage, returns how long to wait.
    pub fn failed(&mut self, error: &dyn Display) -> Duration {
        if self.connected || self.backoff.failures() == 0 {
            warn!(error = %error, "{}: connection lost; buffering until the broker is back", self.tag);
        }
        self.disconnected();
        self.backoff.next_wait()
    }

    /// The broker refused the credentials (`cause`): the long back-off, one log line per
    /// distinct cause.
    fn refused_login(&mut self, cause: &str) -> Duration {
        self.disconnected();
        let wait = self.refusals.next_wait();
        if self.refused_cause.as_deref() != Some(cause) {
            warn!(
                cause,
                "{}: the broker refused the credentials; retrying with a back-off up to 5 min (check the key, token, username or certificate)",
                self.tag
            );
            self.refused_cause = Some(cause.to_owned());
        }
        wait
    }

    /// Login attempts refused since the last accepted one.
    pub fn refused_logins(&self) -> u32 {
        self.refusals.failures()
    }

    /// After a connection error: waits the back-off (cut short by a shutdown request) and
    /// says whether the sender should stop. `refused`: the broker refused the credentials.
    pub async fn after_failure(
        &mut self,
        error: String,
        refused: bool,
        shutdown: &CancellationToken,
    ) -> bool {
        self.ping_sent = None;
        let wait = if refused {
            self.refused_login(&error)
        } else {
            self.failed(&error)
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.cancelled(), if !self.draining() => {}
        }
        self.give_up()
    }

    /// During the drain, a broker that stays away ends the sender: the rest stays on disk.
    fn give_up(&self) -> bool {
        let stop = self.draining()
            && !self.connected
            && (self.backoff.failures() > 3 || self.refusals.failures() > 0);
        if stop {
            warn!(
                "{}: broker unreachable at shutdown; messages stay buffered on disk",
                self.tag
            );
        }
        stop
    }

    pub fn renewed(&self) {
        self.outbox.metrics.renewals.fetch_add(1, Ordering::Relaxed);
        info!("{}: credentials renewed, reconnecting", self.tag);
    }

    /// Removes `id` from the buffer without counting it as delivered.
    fn settle(&self, id: u64) {
        if let Err(e) = self.lock().ack(id) {
            warn!(error = %e, id, "{}: cannot remove a dead-lettered message", self.tag);
        }
    }

    pub fn ack(&self, id: u64) {
        if let Err(e) = self.lock().ack(id) {
            warn!(error = %e, id, "{}: cannot record the ack", self.tag);
            return;
        }
        self.outbox
            .metrics
            .messages_acked
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Logs buffer bytes, pending messages and the oldest one's age, sent, acked, dropped,
    /// reconnects.
    pub fn report(&self) {
        let s = self.lock().stats();
        let m = &self.outbox.metrics;
        info!(
            connected = m.connected.load(Ordering::Relaxed),
            buffer_bytes = s.bytes_on_disk,
            pending = s.pending,
            oldest_pending_s = s.oldest_pending_age.map_or(0.0, |d| d.as_secs_f64()),
            sent = m.messages_sent.load(Ordering::Relaxed),
            acked = m.messages_acked.load(Ordering::Relaxed),
            dropped = s.dropped,
            reconnects = m.reconnects.load(Ordering::Relaxed),
            "{}: telemetry",
            self.tag
        );
    }

    pub fn shut(&self) {
        self.outbox
            .metrics
            .connected
            .store(false, Ordering::Relaxed);
    }
}
