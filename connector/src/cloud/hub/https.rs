//! IoT Hub telemetry over HTTPS, the ephemeral pattern (`[hub] transport = "https"`): every
//! `send_every` the buffered messages are POSTed to the device's events endpoint
//! (`/devices/{id}/messages/events`) on one fresh connection, which is closed when the
//! buffer is empty; nothing stays open between schedules. The same buffer as over MQTT: a
//! message leaves it only once the hub answered 2xx, in order, and the seq rules hold.
//!
//! The message's properties travel as headers: content type and encoding as
//! `iothub-contenttype` / `iothub-contentencoding`, application properties (plc, group,
//! messageType) as `iothub-app-{name}`. A 401 / 403 is a refused identity (the long back-off,
//! said once per cause); 429, 5xx and network errors wait for the next schedule (or the short
//! back-off, capped by it); a 400 / 413 for one message moves it to the dead-letter file.

use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;
use tracing::{info, warn};

use super::files::describe;
use super::sender::Hub;
use crate::backoff::Backoff;
use crate::buffer::outbox::{unframe, Outbox};
use crate::cloud::mqtt::flow::Sending;

/// The api-version of the device events endpoint.
pub const EVENTS_API_VERSION: &str = "2021-04-12";
/// How long one POST may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Messages taken from the buffer at a time.
const BATCH: usize = 32;

/// Why a schedule's sending stopped before the buffer was empty.
enum Stop {
    /// The hub refused the identity (401 / 403): the long back-off.
    Refused(String),
    /// The hub or the network failed: the next schedule.
    Failed(String),
}

/// The hub's events endpoint for this device, with its authentication.
pub struct Events {
    url: String,
    make_client: Box<dyn Fn() -> Result<reqwest::Client, String> + Send + Sync>,
    renewer: Option<crate::cloud::mqtt::flow::Renewer>,
}

impl Events {
    pub fn new(hub: &Hub) -> Result<Events, String> {
        let (url, make_client) = hub.events_client()?;
        Ok(Events {
            url,
            make_client,
            renewer: hub.renewer(),
        })
    }
}

/// The SAS token of the POSTs, made again when it is due for renewal (a long drain outlives
/// one); none with X.509.
struct Token {
    current: Option<(String, SystemTime)>,
}

impl Token {
    fn get(&mut self, events: &Events) -> Result<Option<String>, Stop> {
        let Some(renew) = &events.renewer else {
            return Ok(None);
        };
        let due = self
            .current
            .as_ref()
            .is_none_or(|(_, at)| SystemTime::now() >= *at);
        if due {
            // A token that cannot be made is this side's problem, not a refusal by the hub.
            let (_, token, renew_at) = renew().map_err(Stop::Failed)?;
            self.current = Some((token, renew_at));
        }
        Ok(self.current.as_ref().map(|(t, _)| t.clone()))
    }
}

/// The headers of a buffered message: from the property bag of its (MQTT) topic.
pub fn headers(topic: &str) -> Vec<(String, String)> {
    let bag = topic.split_once("/messages/events/").map_or("", |(_, b)| b);
    let mut out = vec![("content-type".to_owned(), "application/json".to_owned())];
    for (key, value) in super::topics::property_pairs(bag) {
        let name = match key.as_str() {
            "$.ct" => "iothub-contenttype".to_owned(),
            "$.ce" => "iothub-contentencoding".to_owned(),
            k if k.starts_with('$') => continue,
            k => format!("iothub-app-{k}"),
        };
        out.push((name, value));
    }
    out
}

/// Sends every `every` until `shutdown`; then once more within `grace`. `connected` says
/// whether the last schedule that reached the hub succeeded (no connection stays open).
pub async fn run(events: Events, sending: Sending, every: Duration) {
    let Sending {
        outbox,
        shutdown,
        grace,
        ..
    } = sending;
    let metrics = outbox.metrics.clone();
    metrics.connected.store(true, Ordering::Relaxed);
    let mut failures = Backoff::new(Duration::from_secs(1), every);
    let mut refusals = Backoff::new(Duration::from_secs(5), Duration::from_secs(300));
    let mut said: Option<String> = None;
    let mut token = Token { current: None };
    let mut next = Instant::now();
    loop {
        let mut stopping = tokio::select! {
            _ = tokio::time::sleep_until(next) => false,
            _ = shutdown.cancelled() => true,
        };
        let mut result = Ok(0);
        if !stopping && pending(&outbox) > 0 {
            // A stop during a long drain ends it; the rest goes in the grace below.
            tokio::select! {
                r = send_all(&events, &outbox, &mut token) => result = r,
                _ = shutdown.cancelled() => {
                    rewind(&outbox);
                    stopping = true;
                }
            }
        }
        if stopping && pending(&outbox) > 0 {
            result = match tokio::time::timeout(grace, send_all(&events, &outbox, &mut token)).await
            {
                Ok(r) => r,
                Err(_) => {
                    rewind(&outbox);
                    Err(Stop::Failed("the drain took longer than its grace".into()))
                }
            };
        }
        let wait = match result {
            Ok(n) => {
                if n > 0 {
                    metrics.connected.store(true, Ordering::Relaxed);
                    if said.take().is_some() {
                        info!(sent = n, "hub: HTTPS telemetry sent again");
                    }
                }
                failures.reset();
                refusals.reset();
                every
            }
            Err(Stop::Refused(cause)) => {
                metrics.connected.store(false, Ordering::Relaxed);
                if said.as_deref() != Some(cause.as_str()) {
                    warn!(cause = %cause, "hub: the hub refused the device's credentials over HTTPS; retrying with a back-off up to 5 min (check the key, token or certificate)");
                    said = Some(cause);
                }
                refusals.next_wait().max(every)
            }
            Err(Stop::Failed(cause)) => {
                metrics.connected.store(false, Ordering::Relaxed);
                if said.is_none() {
                    warn!(error = %cause, "hub: HTTPS telemetry failed; buffering until the hub answers");
                    said = Some(cause);
                }
                failures.next_wait().min(every)
            }
        };
        if stopping {
            break;
        }
        next = Instant::now() + wait;
    }
    metrics.connected.store(false, Ordering::Relaxed);
}

fn pending(outbox: &Outbox) -> u64 {
    outbox
        .buffer
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .stats()
        .pending
}

/// One schedule: a fresh client (connection), every pending message POSTed in order until
/// the buffer is empty; the client is dropped at the end, closing the connection.
async fn send_all(events: &Events, outbox: &Outbox, token: &mut Token) -> Result<usize, Stop> {
    let client = (events.make_client)().map_err(Stop::Failed)?;
    let metrics = &outbox.metrics;
    let mut sent = 0;
    loop {
        let batch = {
            let mut b = outbox.buffer.lock().unwrap_or_else(|e| e.into_inner());
            b.next_unsent(BATCH)
                .map_err(|e| Stop::Failed(format!("cannot read the buffer: {e}")))?
        };
        if batch.is_empty() {
            return Ok(sent);
        }
        for (id, frame) in batch {
            let Some((topic, gzip, body)) = unframe(&frame) else {
                warn!(id, "hub: unreadable buffered message skipped");
                settle(outbox, id);
                continue;
            };
            let token = match token.get(events) {
                Ok(t) => t,
                Err(e) => {
                    rewind(outbox);
                    return Err(e);
                }
            };
            let mut request = client
                .post(&events.url)
                .timeout(REQUEST_TIMEOUT)
                .body(body.to_vec());
            for (name, value) in headers(topic) {
                request = request.header(name, value);
            }
            if let Some(t) = &token {
                request = request.header(reqwest::header::AUTHORIZATION, t);
            }
            metrics.messages_sent.fetch_add(1, Ordering::Relaxed);
            let status = match request.send().await {
                Ok(r) => r.status(),
                Err(e) => {
                    rewind(outbox);
                    return Err(Stop::Failed(describe(&e)));
                }
            };
            match status.as_u16() {
                200..=299 => {
                    ack(outbox, id, body.len());
                    sent += 1;
                }
                401 | 403 => {
                    rewind(outbox);
                    return Err(Stop::Refused(format!("the hub answered {status}")));
                }
                400 | 413 => {
                    let reason = format!("the hub refused the message with {status}");
                    outbox.dead_letter(topic, gzip, body, &reason);
                    settle(outbox, id);
                }
                _ => {
                    rewind(outbox);
                    return Err(Stop::Failed(format!("the hub answered {status}")));
                }
            }
        }
    }
}

/// A message that leaves the buffer without being delivered (dead-lettered, unreadable):
/// not counted as acknowledged.
fn settle(outbox: &Outbox, id: u64) {
    let mut b = outbox.buffer.lock().unwrap_or_else(|e| e.into_inner());
    if let Err(e) = b.ack(id) {
        warn!(error = %e, id, "hub: cannot record the ack");
    }
}

fn ack(outbox: &Outbox, id: u64, bytes: usize) {
    let mut b = outbox.buffer.lock().unwrap_or_else(|e| e.into_inner());
    if let Err(e) = b.ack(id) {
        warn!(error = %e, id, "hub: cannot record the ack");
        return;
    }
    outbox
        .metrics
        .messages_acked
        .fetch_add(1, Ordering::Relaxed);
    outbox
        .metrics
        .bytes_acked
        .fetch_add(bytes as u64, Ordering::Relaxed);
}

/// What was handed out and not acknowledged goes out again, in order, next time.
fn rewind(outbox: &Outbox) {
    outbox
        .buffer
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .rewind();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_topic_property_bag_becomes_iothub_headers() {
        let topic = "devices/d/messages/events/$.ct=application%2Fjson&$.ce=gzip&plc=filler&group=fast&messageType=alert";
        assert_eq!(
            headers(topic),
            vec![
                ("content-type".to_owned(), "application/json".to_owned()),
                (
                    "iothub-contenttype".to_owned(),
                    "application/json".to_owned()
                ),
                ("iothub-contentencoding".to_owned(), "gzip".to_owned()),
                ("iothub-app-plc".to_owned(), "filler".to_owned()),
                ("iothub-app-group".to_owned(), "fast".to_owned()),
                ("iothub-app-messageType".to_owned(), "alert".to_owned()),
            ]
        );
    }
}
