//! How cloud-to-PLC requests reach the write service: a control channel per cloud connection
//! that carries them (the hub's twin and direct methods, the broker's command topics).

use std::sync::Arc;

use tokio::sync::mpsc::UnboundedReceiver;

use super::service::{CommandTopics, RuleCommand, Setup};
use crate::cloud::control::{self, Control, ServiceEnds};
use crate::cloud::hub::topics::SUBSCRIPTIONS;
use crate::cloud::mqtt::topic;
use crate::config::Config;
use crate::metrics::{RuleMetrics, WriteMetrics};
use crate::opcua::link::LinkReceiver;

/// Whether the line runs the write service: the file maps writes or methods, and a hub or
/// broker carries requests or a local rule writes or calls.
pub fn served(config: &Config) -> bool {
    let mapped = !config.writes.is_empty() || !config.methods.is_empty();
    mapped && (config.hub.is_some() || config.mqtt.is_some() || rules_act(config))
}

/// Whether a local rule writes or calls (alerts need no write service).
pub fn rules_act(config: &Config) -> bool {
    config
        .rules
        .iter()
        .flat_map(|r| r.actions())
        .any(|a| !matches!(a, crate::config::Action::Alert { .. }))
}

/// The connection ends of the control channels, one per cloud connection that carries requests.
#[derive(Default)]
pub struct Controls {
    pub hub: Option<Control>,
    pub mqtt: Option<Control>,
}

/// The write service's ends, waiting for the PLC sessions.
pub struct Ends {
    hub: Option<ServiceEnds>,
    mqtt: Option<(ServiceEnds, CommandTopics)>,
    metrics: Arc<WriteMetrics>,
}

/// The control channels of a line that serves requests.
pub fn open(config: &Config, metrics: &Arc<WriteMetrics>) -> (Controls, Ends) {
    let mut controls = Controls::default();
    let mut ends = Ends {
        hub: None,
        mqtt: None,
        metrics: metrics.clone(),
    };
    // Over HTTPS the hub has no twin, methods or cloud-to-device messages to serve.
    let hub_commands = config
        .hub
        .as_ref()
        .is_some_and(|h| !matches!(h.transport, crate::config::HubTransport::Https { .. }));
    if hub_commands {
        let subs = SUBSCRIPTIONS.iter().map(|s| s.to_string()).collect();
        let (c, e) = control::channel(
            subs,
            metrics.dropped.clone(),
            metrics.answers_dropped.clone(),
        );
        controls.hub = Some(c);
        ends.hub = Some(e);
    }
    if let Some(mc) = &config.mqtt {
        let site = config.line.site.as_deref().unwrap_or("");
        let topics = CommandTopics::new(&topic(&mc.command_topic, site, &config.line.id, "", ""));
        let (c, e) = control::channel(
            topics.subscriptions(),
            metrics.dropped.clone(),
            metrics.answers_dropped.clone(),
        );
        controls.mqtt = Some(c);
        ends.mqtt = Some((e, topics));
    }
    (controls, ends)
}

impl Ends {
    /// What the service runs with, once every PLC's write session can be watched.
    pub fn setup(
        self,
        config: &Config,
        links: Vec<(String, LinkReceiver)>,
        rules: Option<(UnboundedReceiver<RuleCommand>, Arc<RuleMetrics>)>,
    ) -> Setup {
        Setup {
            writes: config.writes.clone(),
            methods: config.methods.clone(),
            links,
            hub: self.hub,
            mqtt: self.mqtt,
            state_file: config.buffer.dir.join("writes").join("state.jsonl"),
            metrics: self.metrics,
            limits: config
                .plcs
                .iter()
                .map(|p| (p.id.clone(), p.max_concurrent_commands))
                .collect(),
            pending_max_age: config
                .hub
                .as_ref()
                .map_or(crate::config::load::DEFAULT_PENDING_WRITE_MAX_AGE, |h| {
                    h.pending_write_max_age
                }),
            rules,
            hub_identity: None,
        }
    }
}
