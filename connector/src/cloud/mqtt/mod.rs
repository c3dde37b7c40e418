//! MQTT connections: one event-loop task per destination sends the outbox's messages and keeps
//! them until the broker acknowledged them (QoS 1; QoS 0 once written to the socket).
//!
//! - [`flow`]: what both versions share: window, buffer/packet id pairing, back-off, renewal,
//!   drain at shutdown, the periodic report.
//! - [`sender`]: MQTT 3.1.1 (also IoT Hub's connection), TLS and socket options.
//! - [`sender_v5`]: MQTT 5, with PUBACK reason codes, response topics and correlation data.

pub mod flow;
pub mod sender;
pub mod sender_v5;

/// Topic of a stream: the template with `{site}`, `{line}`, `{plc}`, `{group}` filled in.
pub fn topic(template: &str, site: &str, line: &str, plc: &str, group: &str) -> String {
    template
        .replace("{site}", site)
        .replace("{line}", line)
        .replace("{plc}", plc)
        .replace("{group}", group)
}

/// The topic of a (plc, group) stream.
pub type TopicFn = std::sync::Arc<dyn Fn(&str, &str) -> String + Send + Sync>;

/// The topic a buffered message is published on, from the topic it was stored with: `None`
/// keeps it (IoT Hub: the identity in use when it is sent, see `hub::current`).
pub type TopicMap = std::sync::Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    #[error("{0}")]
    Tls(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_templates_fill_in_every_placeholder() {
        assert_eq!(
            topic("opcua/{site}/{line}/{plc}/{group}", "s", "l", "p", "g"),
            "opcua/s/l/p/g"
        );
    }
}
