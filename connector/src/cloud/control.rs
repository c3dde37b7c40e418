//! The cloud-to-PLC side of a sender's connection: the topics it subscribes to after every
//! ConnAck, the messages that arrive on them (handed to the write service), and the answers
//! the write service sends back (twin acknowledgements, write and method responses).
//!
//! Answers go out at QoS 1 on the telemetry connection, ahead of buffered telemetry; they are
//! not buffered on disk. An answer made while the connection is down waits in memory and
//! goes out after the next ConnAck.
//!
//! Both directions are bounded: at most [`INBOUND_QUEUE`] requests of at most
//! [`INBOUND_BYTES`] together wait for the write service (more are dropped and counted), at most [`OUTBOUND_QUEUE`] answers wait for the
//! connection (beyond, the oldest waiting answer is dropped and counted; a twin
//! acknowledgement dropped so is sent again by the write service when the hub does not
//! answer it).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;
use tracing::warn;

use crate::ratelog::RateLog;

/// Inbound messages waiting for the write service at most; more are dropped (counted).
pub const INBOUND_QUEUE: usize = 1024;

/// Payload bytes of the inbound messages waiting for the write service at most (a flood of
/// large messages is dropped, counted, long before [`INBOUND_QUEUE`] of them pile up).
pub const INBOUND_BYTES: usize = 16 << 20;

/// Answers waiting for the connection at most; beyond, the oldest is dropped (counted).
pub const OUTBOUND_QUEUE: usize = 1024;

/// What the sender hands to the write service.
#[derive(Debug, Clone, PartialEq)]
pub enum Inbound {
    /// Connected and subscribed (sent after every ConnAck).
    Connected,
    Message(Message),
}

/// A message on one of the subscribed topics.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub topic: String,
    pub payload: Vec<u8>,
    /// MQTT 5 response topic, if the requester gave one.
    pub response_topic: Option<String>,
    /// MQTT 5 correlation data, echoed in the answer.
    pub correlation: Option<Vec<u8>>,
}

/// An answer to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Outbound {
    pub topic: String,
    pub payload: Vec<u8>,
    /// MQTT 5 correlation data (ignored by the 3.1.1 sender).
    pub correlation: Option<Vec<u8>>,
}

/// The write service's ends of a control channel.
pub struct ServiceEnds {
    pub inbound: Requests,
    pub outbound: Answers,
}

/// The write service's end of the requests.
#[derive(Debug)]
pub struct Requests {
    rx: mpsc::Receiver<Inbound>,
    /// Payload bytes waiting (shared with the sender's end).
    bytes: Arc<AtomicUsize>,
}

impl From<mpsc::Receiver<Inbound>> for Requests {
    fn from(rx: mpsc::Receiver<Inbound>) -> Requests {
        Requests {
            rx,
            bytes: Arc::default(),
        }
    }
}

impl Requests {
    /// The next request (`None` once the connection's end is gone).
    pub async fn recv(&mut self) -> Option<Inbound> {
        let item = self.rx.recv().await?;
        if let Inbound::Message(m) = &item {
            self.bytes.fetch_sub(m.payload.len(), Ordering::Relaxed);
        }
        Some(item)
    }
}

/// The write service's end of the answers: bounded, never waits.
#[derive(Debug, Clone)]
pub struct Answers {
    tx: mpsc::Sender<Outbound>,
    dropped: Arc<AtomicU64>,
}

impl Answers {
    /// A bounded answer channel of `capacity`, counting drops in `dropped`.
    pub fn channel(
        capacity: usize,
        dropped: Arc<AtomicU64>,
    ) -> (Answers, mpsc::Receiver<Outbound>) {
        let (tx, rx) = mpsc::channel(capacity);
        (Answers { tx, dropped }, rx)
    }

    /// Queues an answer; when [`OUTBOUND_QUEUE`] are waiting already, it is dropped, counted
    /// and logged (rate-limited).
    pub fn send(&self, out: Outbound) {
        static LOG: RateLog = RateLog::per_minute();
        if let Err(mpsc::error::TrySendError::Full(_)) = self.tx.try_send(out) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            if let Some(suppressed) = LOG.hit() {
                warn!(suppressed, "cloud-to-PLC: {OUTBOUND_QUEUE} answers are waiting for the connection already; an answer was dropped");
            }
        }
    }
}

/// The sender's end of a control channel.
pub struct Control {
    subscriptions: Vec<String>,
    identity_subscription: Option<String>,
    inbound: mpsc::Sender<Inbound>,
    /// Payload bytes waiting for the write service (shared with [`Requests`]).
    inbound_bytes: Arc<AtomicUsize>,
    outbound: mpsc::Receiver<Outbound>,
    queue: VecDeque<Outbound>,
    /// Inbound messages dropped because the write service was behind.
    pub dropped: Arc<AtomicU64>,
    /// Answers dropped because too many were waiting for the connection.
    answers_dropped: Arc<AtomicU64>,
}

/// A control channel subscribing to `subscriptions`; drops are counted in `dropped`
/// (requests) and `answers_dropped`.
pub fn channel(
    subscriptions: Vec<String>,
    dropped: Arc<AtomicU64>,
    answers_dropped: Arc<AtomicU64>,
) -> (Control, ServiceEnds) {
    let (in_tx, in_rx) = mpsc::channel(INBOUND_QUEUE);
    let inbound_bytes: Arc<AtomicUsize> = Arc::default();
    let (answers, out_rx) = Answers::channel(OUTBOUND_QUEUE, answers_dropped.clone());
    (
        Control {
            subscriptions,
            identity_subscription: None,
            inbound: in_tx,
            inbound_bytes: inbound_bytes.clone(),
            outbound: out_rx,
            queue: VecDeque::new(),
            dropped,
            answers_dropped,
        },
        ServiceEnds {
            inbound: Requests {
                rx: in_rx,
                bytes: inbound_bytes,
            },
            outbound: answers,
        },
    )
}

impl Control {
    /// A control channel for a sender without cloud-to-PLC traffic: no subscriptions, and
    /// nobody on the other ends.
    pub fn none() -> Control {
        channel(Vec::new(), Arc::default(), Arc::default()).0
    }

    /// The topic filter that depends on who the connection is (a device's cloud-to-device
    /// messages), subscribed after every ConnAck besides the fixed ones; replaced when the
    /// identity changes (DPS), `None` for none.
    pub fn set_identity_subscription(&mut self, filter: Option<String>) {
        self.identity_subscription = filter;
    }

    /// After a ConnAck: requests the subscriptions with `subscribe` (failures are logged
    /// with `tag`), then tells the write service.
    pub fn subscribe(&self, tag: &str, mut subscribe: impl FnMut(&str) -> Result<(), String>) {
        for topic in self.subscriptions.iter().chain(&self.identity_subscription) {
            if let Err(e) = subscribe(topic) {
                warn!(topic = %topic, error = %e, "{tag}: cannot subscribe");
            }
        }
        self.hand_over(Inbound::Connected);
    }

    /// A message arrived on a subscribed topic.
    pub fn deliver(&self, message: Message) {
        self.hand_over(Inbound::Message(message));
    }

    fn hand_over(&self, item: Inbound) {
        static LOG: RateLog = RateLog::per_minute();
        let size = match &item {
            Inbound::Message(m) => m.payload.len(),
            Inbound::Connected => 0,
        };
        let waiting = self.inbound_bytes.fetch_add(size, Ordering::Relaxed);
        let over = size > 0 && waiting + size > INBOUND_BYTES;
        let result = if over {
            Err(mpsc::error::TrySendError::Full(item))
        } else {
            self.inbound.try_send(item)
        };
        if let Err(e) = result {
            self.inbound_bytes.fetch_sub(size, Ordering::Relaxed);
            if matches!(e, mpsc::error::TrySendError::Full(_)) {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                if let Some(suppressed) = LOG.hit() {
                    warn!(
                        suppressed,
                        "cloud-to-PLC: {INBOUND_QUEUE} requests or {INBOUND_BYTES} bytes are waiting already; an incoming message was dropped"
                    );
                }
            }
        }
    }

    /// Waits for the next answer to publish and queues it (never returns once the write
    /// service is gone). At most [`OUTBOUND_QUEUE`] wait: beyond, the oldest is dropped.
    pub async fn ready(&mut self) {
        static LOG: RateLog = RateLog::per_minute();
        match self.outbound.recv().await {
            Some(out) => {
                if self.queue.len() >= OUTBOUND_QUEUE {
                    self.queue.pop_front();
                    self.answers_dropped.fetch_add(1, Ordering::Relaxed);
                    if let Some(suppressed) = LOG.hit() {
                        warn!(suppressed, "cloud-to-PLC: {OUTBOUND_QUEUE} answers are waiting for the connection; the oldest was dropped");
                    }
                }
                self.queue.push_back(out);
            }
            None => std::future::pending().await,
        }
    }

    /// The oldest queued answer, to publish ahead of telemetry.
    pub fn next(&self) -> Option<&Outbound> {
        self.queue.front()
    }

    /// The oldest queued answer was handed to the client.
    pub fn sent(&mut self) {
        self.queue.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(bytes: usize) -> Message {
        Message {
            topic: "t".into(),
            payload: vec![b'x'; bytes],
            response_topic: None,
            correlation: None,
        }
    }

    #[tokio::test]
    async fn requests_are_bounded_in_count_and_bytes_answers_in_count() {
        let dropped = Arc::new(AtomicU64::new(0));
        let answers_dropped = Arc::new(AtomicU64::new(0));
        let (mut control, mut ends) = channel(vec![], dropped.clone(), answers_dropped.clone());
        // 1 MiB messages: 16 fit in INBOUND_BYTES, the rest are dropped and counted.
        for _ in 0..20 {
            control.deliver(message(1 << 20));
        }
        assert_eq!(dropped.load(Ordering::Relaxed), 4);
        // Taking one makes room for one.
        assert!(ends.inbound.recv().await.is_some());
        control.deliver(message(1 << 20));
        control.deliver(message(1 << 20));
        assert_eq!(dropped.load(Ordering::Relaxed), 5);
        // Small messages: bounded by count.
        let (small, _small_ends) = channel(vec![], dropped.clone(), answers_dropped.clone());
        for _ in 0..INBOUND_QUEUE + 3 {
            small.deliver(message(10));
        }
        assert_eq!(dropped.load(Ordering::Relaxed), 8);
        // Answers: at most OUTBOUND_QUEUE in the channel...
        let answer = |i: usize| Outbound {
            topic: i.to_string(),
            payload: vec![],
            correlation: None,
        };
        for i in 0..OUTBOUND_QUEUE + 5 {
            ends.outbound.send(answer(i));
        }
        assert_eq!(answers_dropped.load(Ordering::Relaxed), 5);
        // ... and as many waiting for the connection; beyond, the oldest go.
        for _ in 0..OUTBOUND_QUEUE {
            control.ready().await;
        }
        for i in 0..7 {
            ends.outbound.send(answer(OUTBOUND_QUEUE + 5 + i));
            control.ready().await;
        }
        assert_eq!(answers_dropped.load(Ordering::Relaxed), 5 + 7);
        assert_eq!(control.queue.len(), OUTBOUND_QUEUE);
        assert_eq!(control.next().map(|o| o.topic.as_str()), Some("7"));
    }
}
