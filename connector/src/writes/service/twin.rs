//! The IoT Hub twin: the full twin GET after every hub ConnAck (asked again when not
//! answered), its reconciliation with what was handled, desired PATCH notifications, and the
//! twin write of each mapped desired property (when it may go: rate, PLC session, startup
//! grace), answered in reported properties.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use super::write::rate_wait;
use super::{add, text, Origin, Service, Want, STARTUP_GRACE};
use crate::backoff::Backoff;
use crate::cloud::control::Outbound;
use crate::cloud::hub::topics;
use crate::ratelog::RateLog;
use crate::writes::ack::{reported_patch, TwinAck};
use crate::writes::coerce::coerce;
use crate::writes::requests::{desired_patch, find_mapping};
use crate::writes::{Refusal, MAX_PROPERTY_BYTES};

/// A twin GET without an answer is asked again after this.
pub(super) const TWIN_GET_TIMEOUT: Duration = Duration::from_secs(10);

impl Service {
    /// At a hub ConnAck: a write state recorded for another hub identity (the device moved
    /// to another hub, or a new identity) is set aside, the twin reconciled from scratch.
    pub(super) fn check_identity(&mut self) {
        let Some(id) = self.hub_identity.as_ref().and_then(|c| c.text()) else {
            return;
        };
        if let Some(old) = self.state.identity().filter(|old| *old != id) {
            warn!(
                state_identity = %old,
                hub_identity = %id,
                handled_version = self.state.newest_handled(),
                "the write state was written for another hub identity: the old twin's versions are set aside and this twin reconciled from its own reported acknowledgements"
            );
            self.state.set_twin_aside();
        }
        self.state.set_identity(&id);
    }

    /// Asks the hub for the full twin (after every hub ConnAck, and again without an answer).
    pub(super) fn get_twin(&mut self) {
        if self.hub_out.is_none() {
            return;
        }
        let rid = self.next_rid();
        info!(rid = %rid, "asking the hub for the twin");
        if let Some(out) = &self.hub_out {
            out.send(Outbound {
                topic: topics::twin_get(&rid),
                payload: Vec::new(),
                correlation: None,
            });
        }
        self.twin_get = Some((rid, Instant::now() + TWIN_GET_TIMEOUT));
    }

    /// At the tick: a twin GET without an answer for [`TWIN_GET_TIMEOUT`] is asked again.
    pub(super) fn twin_get_overdue(&mut self) {
        if let Some((_, again_at)) = &self.twin_get {
            if Instant::now() >= *again_at {
                warn!("no answer to the twin GET; asking again");
                self.get_twin();
            }
        }
    }

    /// `$iothub/twin/res/{status}/?$rid={rid}`: the answer to our twin GET, or to a reported
    /// properties PATCH.
    pub(super) fn twin_response(&mut self, status: u16, rid: String, payload: &[u8]) {
        let ours = self.twin_get.as_ref().is_some_and(|(r, _)| *r == rid);
        if !ours {
            return self.ack_response(status, &rid);
        }
        if status == 200 {
            self.twin_get = None;
            self.reconcile(payload);
        } else {
            warn!(status, "twin GET failed; asking again in 2 s");
            // A deadline ahead, not a start time behind: `now - 10 s` underflows (and panics)
            // in the first seconds after boot, where the monotonic clock starts.
            self.twin_get = Some((rid, Instant::now() + Duration::from_secs(2)));
        }
    }

    /// `$iothub/twin/PATCH/properties/desired/?$version=V`: desired properties changed.
    pub(super) fn desired_patched(&mut self, payload: &[u8]) {
        match desired_patch(payload, &self.writes) {
            Ok(patch) => {
                let unmapped: Vec<(String, Value)> = patch
                    .unmapped
                    .iter()
                    .map(|p| (p.clone(), lookup(payload, p)))
                    .collect();
                self.desired(
                    patch.version,
                    patch
                        .properties
                        .into_iter()
                        .map(|p| (p.property, p.value, patch.version))
                        .collect(),
                    unmapped,
                );
            }
            Err(e) => self.malformed("desired properties patch", &e),
        }
    }

    /// The full twin: apply what is newer than what was handled.
    fn reconcile(&mut self, body: &[u8]) {
        let twin: Value = match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(e) => return self.malformed("twin", &e),
        };
        let (Some(desired), reported) = (twin.get("desired"), twin.get("reported")) else {
            return self.malformed("twin", &"no \"desired\" section");
        };
        let patch = match desired_patch(desired.to_string().as_bytes(), &self.writes) {
            Ok(p) => p,
            Err(e) => return self.malformed("twin desired section", &e),
        };
        // A twin's desired $version only grows: one below a version handled is another twin
        // (the identity deleted and added again, or provisioned to another hub), whose
        // versions start again at 1. What was handled belongs to the old one.
        let newest = self.state.newest_handled();
        if patch.version < newest {
            warn!(
                twin_version = patch.version,
                handled_version = newest,
                "the twin's desired $version is below the last one handled: a new twin (the device re-created or re-provisioned); the write state of the old twin is set aside and this one reconciled from its own reported acknowledgements"
            );
            self.state.set_twin_aside();
        }
        // Acknowledgements already in the twin count as handled (a lost state file must not
        // make the connector write old values again).
        if let Some(reported) = reported {
            let paths = patch.properties.iter().map(|p| &p.property);
            for path in paths.chain(&patch.unmapped) {
                let ack = lookup_value(reported, path);
                let code = ack.and_then(|a| a.get("ac")).and_then(Value::as_i64);
                let av = ack.and_then(|a| a.get("av")).and_then(Value::as_i64);
                if let (Some(200 | 400), Some(av)) = (code, av) {
                    self.state.raise_handled(path, av);
                }
            }
        }
        let version_of = |path: &str| {
            let mut node = desired.get("$metadata");
            for part in path.split('.') {
                node = node.and_then(|n| n.get(part));
            }
            node.and_then(|n| n.get("$lastUpdatedVersion"))
                .and_then(Value::as_i64)
                .unwrap_or(patch.version)
        };
        let props: Vec<(String, Value, i64)> = patch
            .properties
            .iter()
            .map(|p| (p.property.clone(), p.value.clone(), version_of(&p.property)))
            .collect();
        let unmapped: Vec<(String, Value)> = patch
            .unmapped
            .iter()
            .filter(|p| version_of(p) > self.state.handled(p))
            .map(|p| {
                (
                    p.clone(),
                    lookup_value(desired, p).cloned().unwrap_or(Value::Null),
                )
            })
            .collect();
        info!(
            version = patch.version,
            mapped = props.len(),
            unmapped = unmapped.len(),
            "twin received"
        );
        self.desired(patch.version, props, unmapped);
    }

    /// Desired properties at document `version`: (property, value, the property's version).
    fn desired(
        &mut self,
        version: i64,
        props: Vec<(String, Value, i64)>,
        unmapped: Vec<(String, Value)>,
    ) {
        let mut acks = Vec::new();
        for (path, value) in unmapped {
            if value.is_null() {
                // A desired property removed from the twin: nothing was asked.
                continue;
            }
            if path.len() > MAX_PROPERTY_BYTES {
                // Not a name anyone mapped, and too long to echo into reported properties.
                self.malformed(
                    "desired property",
                    &format!(
                        "name is {} bytes; at most {MAX_PROPERTY_BYTES}: not acknowledged",
                        path.len()
                    ),
                );
                continue;
            }
            add(&self.metrics.writes_refused);
            let refusal = Refusal::NotMapped {
                property: path.clone(),
            };
            info!(target: "audit", who = %format!("twin v{version}"), property = %path, new = %text(&value), result = 400, detail = %refusal, "write refused");
            // In memory only: unmapped names are not kept in the state file (at the next
            // start the 400 acknowledgement in the twin's reported section counts).
            self.state.raise_handled(&path, version);
            acks.push(TwinAck {
                property: path,
                value,
                code: 400,
                version,
                description: refusal.to_string(),
            });
        }
        self.twin_ack(&acks);
        for (property, value, prop_version) in props {
            if prop_version <= self.state.handled(&property) {
                debug!(property = %property, version = prop_version, "desired version already handled");
                continue;
            }
            let p = self.props.entry(property.clone()).or_default();
            if value.is_null() {
                // IoT Hub removes a desired property by patching it to null: the PLC keeps its
                // value, and a waiting write of an older value is dropped.
                info!(target: "audit", who = %format!("twin v{version}"), property = %property, result = "removed", "desired property removed: nothing written");
                p.pending = None;
                self.state.set_handled(&property, version);
                continue;
            }
            if p.arrived.is_none_or(|(v, _)| v != version) {
                p.arrived = Some((version, Instant::now()));
            }
            p.pending = Some(Want {
                version,
                value,
                told_unreachable: false,
                not_before: None,
            });
            self.kick(&property);
        }
    }

    /// Starts the pending twin write of `property` if it can go now.
    pub(super) fn kick(&mut self, property: &str) {
        let Some(mapping) = find_mapping(&self.writes, property).cloned() else {
            return;
        };
        let Some(p) = self.props.get_mut(property) else {
            return;
        };
        if p.running {
            return;
        }
        let Some(want) = p.pending.clone() else {
            return;
        };
        let origin = Origin::Twin {
            version: want.version,
        };
        let now = Instant::now();
        let waited = p
            .arrived
            .filter(|(v, _)| *v == want.version)
            .map(|(_, at)| now.saturating_duration_since(at));
        if let Some(waited) = waited.filter(|w| *w > self.pending_max_age) {
            // Too old to be what anyone wants now: not written, acknowledged as expired.
            p.pending = None;
            let r = Refusal::TooOld {
                waited_s: waited.as_secs(),
                max_s: self.pending_max_age.as_secs(),
            };
            return self.refused(&mapping, origin, want.value, &r);
        }
        if want.not_before.is_some_and(|t| now < t) {
            return;
        }
        // Checks that need no PLC: type and range.
        let variant = match coerce(&want.value, &mapping) {
            Ok(v) => v,
            Err(r) => {
                p.pending = None;
                return self.refused(&mapping, origin, want.value, &r);
            }
        };
        if let Some(next) = mapping
            .max_rate
            .and_then(|rate| rate_wait(rate, p.last_write, now))
        {
            // Latest wins: written once the interval has passed.
            if let Some(w) = p.pending.as_mut() {
                w.not_before = Some(next);
            }
            return;
        }
        let plc = self.plcs.get(&mapping.plc);
        if plc.is_some_and(|s| s.busy() && s.link.is_some()) {
            // max_concurrent_commands running on this PLC: tried again at the tick.
            return;
        }
        let ready = plc.and_then(|s| s.link.clone().filter(|_| s.checked));
        let Some(link) = ready else {
            let grace_end = self.started + STARTUP_GRACE;
            let never = plc.is_some_and(|s| !s.ever_linked);
            // Connected, its nodes being checked: kicked again when the check is done.
            let checking = plc.is_some_and(|s| s.link.is_some());
            if checking || (never && now < grace_end) {
                return;
            }
            if !want.told_unreachable {
                if let Some(w) = p.pending.as_mut() {
                    w.told_unreachable = true;
                }
                add(&self.metrics.writes_unreachable);
                let detail = format!(
                    "BadNotConnected: plc {} is not connected; written when it is back",
                    mapping.plc
                );
                info!(target: "audit", who = %format!("twin v{}", want.version), plc = %mapping.plc, node = %mapping.node, new = %text(&want.value), result = 500, detail = %detail, "write waits for the plc");
                self.twin_ack(&[TwinAck {
                    property: mapping.property.clone(),
                    value: want.value,
                    code: 500,
                    version: want.version,
                    description: detail,
                }]);
            }
            return;
        };
        p.pending = None;
        self.start_write(&mapping, origin, want.value, variant, link);
    }

    /// Acknowledges `acks` in reported properties; each becomes the latest of its property
    /// (replacing one waiting to be sent again).
    pub(super) fn twin_ack(&mut self, acks: &[TwinAck]) {
        let acks: Vec<(TwinAck, u64)> = acks
            .iter()
            .map(|a| {
                self.acks.seq += 1;
                self.acks.latest.insert(a.property.clone(), self.acks.seq);
                self.acks.retry.remove(&a.property);
                (a.clone(), self.acks.seq)
            })
            .collect();
        self.send_acks(acks);
    }

    fn send_acks(&mut self, acks: Vec<(TwinAck, u64)>) {
        if acks.is_empty() || self.hub_out.is_none() {
            return;
        }
        let rid = self.next_rid();
        let body: Vec<TwinAck> = acks.iter().map(|(a, _)| a.clone()).collect();
        self.publish_hub(topics::twin_patch_reported(&rid), &reported_patch(&body));
        self.acks
            .in_flight
            .insert(rid, (acks, Instant::now() + ACK_TIMEOUT));
    }

    /// The hub's answer to a reported-properties PATCH: 2xx done; 429 (throttled) or 5xx
    /// (or no answer within [`ACK_TIMEOUT`]): its acknowledgements that are still the latest
    /// of their property are sent again after a back-off; another 4xx: logged, not sent again
    /// (the same document would be refused again).
    fn ack_response(&mut self, status: u16, rid: &str) {
        let Some((acks, _)) = self.acks.in_flight.remove(rid) else {
            debug!(status, rid = %rid, "answer to an unknown request id");
            return;
        };
        if (200..300).contains(&status) {
            debug!(status, rid = %rid, "reported properties updated");
            self.acks.backoff.reset();
            return;
        }
        if status == 429 || status >= 500 {
            self.ack_failed(acks, &format!("hub answered {status}"));
        } else {
            static LOG: RateLog = RateLog::per_minute();
            add(&self.metrics.acks_refused);
            if let Some(suppressed) = LOG.hit() {
                let properties: Vec<&str> = acks.iter().map(|(a, _)| a.property.as_str()).collect();
                error!(status, rid = %rid, properties = ?properties, suppressed,
                    "hub refused a reported-properties update; not sent again");
            }
        }
    }

    /// A PATCH throttled, failed or unanswered: its latest acknowledgements wait for a retry.
    fn ack_failed(&mut self, acks: Vec<(TwinAck, u64)>, why: &str) {
        static LOG: RateLog = RateLog::per_minute();
        add(&self.metrics.acks_retried);
        for (ack, seq) in acks {
            if self.acks.latest.get(&ack.property) == Some(&seq) {
                self.acks.retry.insert(ack.property.clone(), (ack, seq));
            }
        }
        let wait = self.acks.backoff.next_wait();
        self.acks.retry_at = Instant::now() + wait;
        if let Some(suppressed) = LOG.hit() {
            warn!(
                why,
                retry_in_ms = wait.as_millis() as u64,
                waiting = self.acks.retry.len(),
                suppressed,
                "reported-properties update not accepted; sent again after a back-off"
            );
        }
    }

    /// At the tick: PATCHes without an answer count as failed; waiting acknowledgements go
    /// out again once their back-off has passed.
    pub(super) fn acks_due(&mut self) {
        let now = Instant::now();
        let overdue: Vec<String> = self
            .acks
            .in_flight
            .iter()
            .filter(|(_, (_, deadline))| now >= *deadline)
            .map(|(rid, _)| rid.clone())
            .collect();
        for rid in overdue {
            if let Some((acks, _)) = self.acks.in_flight.remove(&rid) {
                self.ack_failed(acks, "no answer from the hub");
            }
        }
        if !self.acks.retry.is_empty() && now >= self.acks.retry_at {
            let acks: Vec<(TwinAck, u64)> =
                std::mem::take(&mut self.acks.retry).into_values().collect();
            self.send_acks(acks);
        }
    }
}

/// A reported-properties PATCH without an answer counts as failed after this.
pub(super) const ACK_TIMEOUT: Duration = Duration::from_secs(30);

/// The twin acknowledgements on their way to the hub.
pub(super) struct Acks {
    seq: u64,
    /// The sequence number of the latest acknowledgement of each property.
    latest: HashMap<String, u64>,
    /// PATCHes sent, by request id: their acknowledgements and when to give up waiting.
    in_flight: HashMap<String, (Vec<(TwinAck, u64)>, Instant)>,
    /// Acknowledgements to send again (the latest of their property only), and when.
    retry: BTreeMap<String, (TwinAck, u64)>,
    retry_at: Instant,
    backoff: Backoff,
}

impl Acks {
    pub(super) fn new() -> Acks {
        Acks {
            seq: 0,
            latest: HashMap::new(),
            in_flight: HashMap::new(),
            retry: BTreeMap::new(),
            retry_at: Instant::now(),
            backoff: Backoff::new(Duration::from_secs(1), Duration::from_secs(60)),
        }
    }
}

/// The value at a dotted path of a JSON document.
fn lookup_value<'a>(doc: &'a Value, path: &str) -> Option<&'a Value> {
    let mut node = doc;
    for part in path.split('.') {
        node = node.get(part)?;
    }
    Some(node)
}

fn lookup(body: &[u8], path: &str) -> Value {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| lookup_value(&v, path).cloned())
        .unwrap_or(Value::Null)
}
