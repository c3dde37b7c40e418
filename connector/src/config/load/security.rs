//! Set-ups that work but expose the line: refused unless opted into (cloud commands over a
//! plain, anonymous broker connection; a plain hub endpoint off loopback), or allowed with a
//! warning that `check` prints and `run` logs at start (a password on an unencrypted OPC UA
//! channel, metrics on a non-loopback address, the opt-ins themselves).

use std::net::IpAddr;

use super::Check;
use crate::config::raw::RawMqtt;
use crate::config::types::MqttSinkConfig;

/// `127.0.0.0/8`, `::1` (bracketed or not) or `localhost`.
pub fn is_loopback_host(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare.eq_ignore_ascii_case("localhost")
        || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

impl Check<'_> {
    /// Writes and methods over `[sink.mqtt]`: with plain `mqtt://` and no username, anyone
    /// who can reach the broker can write to the PLCs, so it takes
    /// `allow_insecure_commands = true` (then a warning). With a username but no TLS, the
    /// password crosses the network in clear: a warning.
    pub(super) fn mqtt_commands_secure(
        &mut self,
        raw: &RawMqtt,
        c: &MqttSinkConfig,
        commands: bool,
    ) {
        let url_span = raw.url.as_ref().map(|u| u.span());
        if c.tls.is_none() && c.username.is_some() {
            self.warn(
                url_span.clone(),
                "sink.mqtt.url",
                "plain mqtt:// with a username: the password crosses the network in clear; use mqtts://",
            );
        }
        let open = c.tls.is_none() && c.username.is_none();
        match (&raw.allow_insecure_commands, open && commands) {
            (Some(a), true) if *a.get_ref() => self.warn(
                Some(a.span()),
                "sink.mqtt.allow_insecure_commands",
                "writes and methods are served over plain mqtt:// without credentials: anyone who can reach the broker can write to the PLCs",
            ),
            (_, true) => self.problem(
                url_span,
                "sink.mqtt.url",
                "this file maps [[write]]/[[method]] and the broker connection is plain mqtt:// without a username: anyone who can reach the broker could write to the PLCs. Use mqtts:// or a username (and a broker that checks it), or set allow_insecure_commands = true to accept it",
            ),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        for h in [
            "127.0.0.1",
            "127.8.9.1",
            "::1",
            "[::1]",
            "localhost",
            "LocalHost",
        ] {
            assert!(is_loopback_host(h), "{h}");
        }
        for h in [
            "0.0.0.0",
            "10.0.0.1",
            "example.com",
            "::",
            "[::]",
            "127.example.com",
        ] {
            assert!(!is_loopback_host(h), "{h}");
        }
    }
}
