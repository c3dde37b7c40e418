//! An Azure Device Provisioning Service (DPS) test double, speaking DPS's documented MQTT
//! topics over a real broker (mosquitto routes `$` topics) behind the TLS front
//! ([`MqttFront`]), which checks each CONNECT as DPS does: the client id is the registration
//! id, the username `{idScope}/registrations/{registrationId}/api-version=2019-03-31...`, the
//! password a SAS token for `{idScope}/registrations/{registrationId}` signed with the
//! enrollment's key (individual) or the key derived from the group key (group), verified by
//! [`front::sas_check`] and [`front::derived_key`], written here independently of the
//! connector and tested against the SDK's vectors.
//!
//! The service side (a client of the broker) answers a register request with 202
//! `assigning` and an operation id, and each operation-status poll with 202 until the
//! operation has been polled `assigning_polls` times, then 200 `assigned` with the
//! assignment it holds at that moment ([`DpsDouble::assign`] changes it at run time). It
//! counts registrations and polls. Every answer carries `retry-after=1`, but for the 429
//! ("throttled") that [`DpsDouble::throttle`] asks for, which carries its own.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

use crate::front::{self, MqttFront};
use crate::hub_double::{query, serve};

/// How the double authenticates registrations.
#[derive(Debug, Clone)]
pub enum Enrollment {
    /// One registration id with its own device key (base64).
    Individual {
        registration_id: String,
        key: String,
    },
    /// Any registration id whose token is signed with the key derived from this group key.
    Group { key: String },
    /// One registration id with its own certificate (DER): no password, the certificate
    /// presented in the TLS handshake (the front's server config asks for one).
    X509 {
        registration_id: String,
        certificate: Vec<u8>,
    },
}

impl Enrollment {
    /// The device key of `registration_id`, if the enrollment knows it.
    pub fn device_key(&self, registration_id: &str) -> Option<String> {
        match self {
            Enrollment::Individual {
                registration_id: r,
                key,
            } => (r == registration_id).then(|| key.clone()),
            Enrollment::Group { key } => Some(front::derived_key(key, registration_id)),
            Enrollment::X509 { .. } => None,
        }
    }
}

/// DPS's check of a CONNECT for `id_scope` and `enrollment`.
pub fn dps_check(
    id_scope: &str,
    enrollment: Enrollment,
) -> impl Fn(&front::Connect) -> bool + Send + Sync + 'static {
    let scope = id_scope.to_owned();
    move |c| {
        let reg = &c.client_id;
        let resource = format!("{scope}/registrations/{reg}");
        let user = format!("{resource}/api-version=2019-03-31");
        let user_ok = c.username == user || c.username.starts_with(&format!("{user}&"));
        if let Enrollment::X509 {
            registration_id,
            certificate,
        } = &enrollment
        {
            return user_ok
                && reg == registration_id
                && c.password.is_empty()
                && c.client_cert_der.as_ref() == Some(certificate);
        }
        let Some(key) = enrollment.device_key(reg) else {
            return false;
        };
        user_ok && front::sas_check(&c.password, &resource, &key, front::now_s()).is_ok()
    }
}

#[derive(Default)]
struct State {
    /// (assigned hub, device id) handed out by the next 200.
    assignment: (String, String),
    assigning_polls: usize,
    /// Polls still answered 202, per operation id.
    operations: HashMap<String, usize>,
    registrations: usize,
    /// When each register request came.
    register_times: Vec<std::time::Instant>,
    /// Register requests still answered 429, and the retry-after (s) they carry.
    throttle: (usize, u64),
    polls: usize,
    /// The bodies of the register requests, in order.
    register_bodies: Vec<Value>,
}

/// The double: its TLS front (`front.port` is DPS's endpoint) and service side.
pub struct DpsDouble {
    pub front: MqttFront,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for DpsDouble {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl DpsDouble {
    /// DPS for `id_scope` on the broker at `broker` (plain, loopback), behind a TLS front
    /// with `tls`; assigns `device` on `hub` until told otherwise.
    pub async fn start(
        broker: u16,
        tls: Arc<rustls::ServerConfig>,
        id_scope: &str,
        enrollment: Enrollment,
        (hub, device): (&str, &str),
    ) -> DpsDouble {
        let front = MqttFront::start(broker, Some(tls), dps_check(id_scope, enrollment)).await;
        let state = Arc::new(Mutex::new(State {
            assignment: (hub.to_owned(), device.to_owned()),
            assigning_polls: 1,
            ..State::default()
        }));
        let s2 = state.clone();
        let filters = &[
            "$dps/registrations/PUT/iotdps-register/#",
            "$dps/registrations/GET/iotdps-get-operationstatus/#",
        ];
        let (_, task) = serve(
            broker,
            "dps-double",
            filters,
            1 << 20,
            move |topic, payload| {
                let (status, body, retry_after) = answer(&s2, topic, payload);
                let rid = query(topic, "$rid").unwrap_or_default();
                let topic = format!(
                    "$dps/registrations/res/{status}/?$rid={rid}&retry-after={retry_after}"
                );
                vec![(topic, body.to_string().into_bytes())]
            },
        )
        .await;
        DpsDouble { front, state, task }
    }

    /// What the next registration is assigned from now on.
    pub fn assign(&self, hub: &str, device: &str) {
        self.state.lock().unwrap().assignment = (hub.to_owned(), device.to_owned());
    }

    /// Register requests received.
    pub fn registrations(&self) -> usize {
        self.state.lock().unwrap().registrations
    }

    /// When each register request came, in order.
    pub fn register_times(&self) -> Vec<std::time::Instant> {
        self.state.lock().unwrap().register_times.clone()
    }

    /// The next `requests` register requests are answered 429 with `retry-after`
    /// `retry_after_s`.
    pub fn throttle(&self, requests: usize, retry_after_s: u64) {
        self.state.lock().unwrap().throttle = (requests, retry_after_s);
    }

    /// Operation-status polls received.
    pub fn polls(&self) -> usize {
        self.state.lock().unwrap().polls
    }

    /// The bodies of the register requests, in order.
    pub fn register_bodies(&self) -> Vec<Value> {
        self.state.lock().unwrap().register_bodies.clone()
    }
}

/// The status, body and retry-after (s) DPS answers a request on `topic` with.
fn answer(state: &Mutex<State>, topic: &str, payload: &[u8]) -> (u16, Value, u64) {
    let (status, body) = answer_status(state, topic, payload);
    let mut s = state.lock().unwrap();
    match (status, &mut s.throttle) {
        (429, (left, after)) => {
            *left -= 1;
            (status, body, *after)
        }
        _ => (status, body, 1),
    }
}

fn answer_status(state: &Mutex<State>, topic: &str, payload: &[u8]) -> (u16, Value) {
    let mut s = state.lock().unwrap();
    if topic.starts_with("$dps/registrations/PUT/iotdps-register/") {
        s.registrations += 1;
        s.register_times.push(std::time::Instant::now());
        let body: Value = serde_json::from_slice(payload).unwrap_or(Value::Null);
        s.register_bodies.push(body);
        if s.throttle.0 > 0 {
            let message = "Operations are being throttled for this tenant.";
            return (429, json!({"errorCode": 429001, "message": message}));
        }
        let op = format!("4.double.op-{}", s.registrations);
        let polls = s.assigning_polls;
        s.operations.insert(op.clone(), polls);
        return (202, json!({"operationId": op, "status": "assigning"}));
    }
    s.polls += 1;
    let op = query(topic, "operationId").unwrap_or_default();
    let Some(left) = s.operations.get_mut(&op) else {
        return (
            404,
            json!({"errorCode": 404002, "message": format!("no operation {op}")}),
        );
    };
    if *left > 0 {
        *left -= 1;
        return (202, json!({"operationId": op, "status": "assigning"}));
    }
    let (hub, device) = s.assignment.clone();
    let registration = s
        .register_bodies
        .last()
        .and_then(|b| b.get("registrationId"))
        .cloned()
        .unwrap_or(Value::Null);
    (
        200,
        json!({
            "operationId": op,
            "status": "assigned",
            "registrationState": {
                "registrationId": registration,
                "assignedHub": hub,
                "deviceId": device,
                "status": "assigned",
                "substatus": "initialAssignment"
            }
        }),
    )
}
