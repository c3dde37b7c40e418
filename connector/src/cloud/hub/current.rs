//! The hub identity in use, shared by the hub's connection (which sets it: at start from the
//! connection string, or whenever DPS assigns one), the encoders and the write service (which
//! read it), and the resolution of a buffered message's topic when it is sent.
//!
//! A hub telemetry topic names the device (`devices/{device}[/modules/{module}]/messages/
//! events/{property bag}`), and the buffer keeps each message with the topic it was encoded
//! with. A message buffered before provisioning, or under an identity DPS has since replaced,
//! would name another device, which the hub refuses (it closes the connection). So the hub's
//! sender publishes every message under the identity in use when it is sent: the device part
//! of the stored topic is replaced, its property bag kept ([`at_send`]).

use std::sync::{Arc, RwLock};

use super::connection::Identity;
use super::topics;
use crate::cloud::mqtt::{TopicFn, TopicMap};
use crate::config::Payload;

const EVENTS: &str = "/messages/events/";

/// The identity in use, or none yet (before the first DPS assignment).
#[derive(Debug, Clone, Default)]
pub struct CurrentIdentity(Arc<RwLock<Option<Identity>>>);

impl CurrentIdentity {
    /// An identity known from the start (a connection string, an X.509 table).
    pub fn fixed(identity: Identity) -> CurrentIdentity {
        let c = CurrentIdentity::default();
        c.set(identity);
        c
    }

    pub fn set(&self, identity: Identity) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Some(identity);
    }

    pub fn get(&self) -> Option<Identity> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// `host/device` or `host/device/module`, as the write state records it.
    pub fn text(&self) -> Option<String> {
        self.get()
            .map(|id| format!("{}/{}", id.host, id.client_id()))
    }

    /// The sender's map of a buffered topic to the topic it is published on (see
    /// [`at_send`]).
    pub fn topic_map(&self) -> TopicMap {
        let current = self.clone();
        Arc::new(move |stored: &str| at_send(stored, &current.get()?))
    }

    /// The encoders' topics of the three kinds of stream, under the identity in use, or under
    /// `device` until there is one (resolved again when sent).
    pub fn encoder_topics(&self, payload: Payload, device: &str) -> [TopicFn; 3] {
        let fallback = Identity {
            host: String::new(),
            device_id: device.to_owned(),
            module_id: None,
        };
        let make = |kind: fn(&Identity, Payload, &str, &str) -> String| -> TopicFn {
            let (current, fallback) = (self.clone(), fallback.clone());
            Arc::new(move |plc: &str, group: &str| {
                let id = current.get().unwrap_or_else(|| fallback.clone());
                kind(&id, payload, plc, group)
            })
        };
        [
            make(Identity::telemetry_topic),
            make(Identity::event_topic),
            make(Identity::alert_topic),
        ]
    }
}

/// The topic to publish a buffered hub message on: `stored` with its device part replaced by
/// `identity`'s, `None` when it is already right (or not a hub telemetry topic, which is sent
/// as it is).
pub fn at_send(stored: &str, identity: &Identity) -> Option<String> {
    if !stored.starts_with("devices/") {
        return None;
    }
    // Ids never contain '/', so the first "/messages/events/" ends the device part.
    let end = stored.find(EVENTS)? + EVENTS.len();
    let base = topics::telemetry_base(&identity.device_id, identity.module_id.as_deref());
    if stored[..end] == base {
        return None;
    }
    Some(format!("{base}{}", &stored[end..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(device: &str, module: Option<&str>) -> Identity {
        Identity {
            host: "h.example".into(),
            device_id: device.into(),
            module_id: module.map(str::to_owned),
        }
    }

    #[test]
    fn a_stored_topic_is_sent_under_the_identity_in_use() {
        let bag = "$.ct=application%2Fjson&$.ce=utf-8&plc=filler&group=fast";
        let old = format!("devices/line-a/messages/events/{bag}");
        assert_eq!(at_send(&old, &id("line-a", None)), None);
        assert_eq!(
            at_send(&old, &id("dev-7", None)).as_deref(),
            Some(format!("devices/dev-7/messages/events/{bag}").as_str())
        );
        assert_eq!(
            at_send(&old, &id("dev-7", Some("opcua"))).as_deref(),
            Some(format!("devices/dev-7/modules/opcua/messages/events/{bag}").as_str())
        );
        let module = format!("devices/d/modules/m/messages/events/{bag}&messageType=alert");
        assert_eq!(
            at_send(&module, &id("e", None)).as_deref(),
            Some(format!("devices/e/messages/events/{bag}&messageType=alert").as_str())
        );
        // Anything else goes out as it was stored.
        assert_eq!(at_send("opcua/line/plc/group", &id("e", None)), None);
        assert_eq!(at_send("devices/x/twin", &id("e", None)), None);
    }

    #[test]
    fn encoders_use_the_identity_in_use_or_the_fallback_device() {
        let current = CurrentIdentity::default();
        let [telemetry, events, alerts] = current.encoder_topics(Payload::Json, "reg-1");
        assert!(telemetry("p", "g").starts_with("devices/reg-1/messages/events/"));
        current.set(id("dev-2", None));
        assert!(telemetry("p", "g").starts_with("devices/dev-2/messages/events/"));
        assert!(events("p", "g").ends_with("messageType=event"));
        assert!(alerts("p", "g").ends_with("messageType=alert"));
        assert_eq!(current.text().as_deref(), Some("h.example/dev-2"));
        let map = current.topic_map();
        assert_eq!(
            map("devices/reg-1/messages/events/x=1").as_deref(),
            Some("devices/dev-2/messages/events/x=1")
        );
        assert_eq!(
            CurrentIdentity::default().topic_map()("devices/a/messages/events/"),
            None
        );
    }
}
