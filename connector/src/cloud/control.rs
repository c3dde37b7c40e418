//! The cloud-to-PLC side of a sender's connection: the topics it subscribes to after every
//! ConnAck, the messages that arrive on them (handed to the write service), and the answers
//! the write service sends back (twin acknowledgements, write and method responses).
//!
//! Answers go out at QoS 1 on the telemetry connection, ahead of buffered telemetry; they are
//! not buffered on disk. An answer made while the connection is down waits in memory and
//! goes out after the next ConnAck.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;
use tracing::warn;

/// Inbound messages waiting for the write service at most; more are dropped (counted).
pub const INBOUND_QUEUE: usize = 1024;

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
    pub inbound: mpsc::Receiver<Inbound>,
    pub outbound: mpsc::UnboundedSender<Outbound>,
}

/// The sender's end of a control channel.
pub struct Control {
    subscriptions: Vec<String>,
    inbound: mpsc::Sender<Inbound>,
    outbound: mpsc::UnboundedReceiver<Outbound>,
    queue: VecDeque<Outbound>,
    /// Inbound messages dropped because the write service was behind.
    pub dropped: Arc<AtomicU64>,
}

/// A control channel subscribing to `subscriptions`.
pub fn channel(subscriptions: Vec<String>, dropped: Arc<AtomicU64>) -> (Control, ServiceEnds) {
    let (in_tx, in_rx) = mpsc::channel(INBOUND_QUEUE);
    let (out_tx, out_rx) = mpsc::unbounded_channel();
    (
        Control {
            subscriptions,
            inbound: in_tx,
            outbound: out_rx,
            queue: VecDeque::new(),
            dropped,
        },
        ServiceEnds {
            inbound: in_rx,
            outbound: out_tx,
        },
    )
}

impl Control {
    /// A control channel for a sender without cloud-to-PLC traffic: no subscriptions, and
    /// nobody on the other ends.
    pub fn none() -> Control {
        channel(Vec::new(), Arc::default()).0
    }

    /// After a ConnAck: requests the subscriptions with `subscribe` (failures are logged
    /// with `tag`), then tells the write service.
    pub fn subscribe(&self, tag: &str, mut subscribe: impl FnMut(&str) -> Result<(), String>) {
        for topic in &self.subscriptions {
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
        if let Err(e) = self.inbound.try_send(item) {
            if matches!(e, mpsc::error::TrySendError::Full(_)) {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                warn!(
                    "cloud-to-PLC: {INBOUND_QUEUE} requests are waiting already; an incoming message was dropped"
                );
            }
        }
    }

    /// Waits for the next answer to publish and queues it (never returns once the write
    /// service is gone).
    pub async fn ready(&mut self) {
        match self.outbound.recv().await {
            Some(out) => self.queue.push_back(out),
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
