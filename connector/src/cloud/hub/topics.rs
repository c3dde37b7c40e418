//! The MQTT names IoT Hub defines for a device or module (from its MQTT documentation):
//! client id, username, telemetry topic with its property bag, twin and direct-method topics,
//! and a parser for the topics the hub publishes to us.
//!
//! Request ids (`$rid`) are passed through as they are: the connector makes its own from
//! digits, and answers a direct method with the `$rid` exactly as the hub sent it.

use std::fmt;

use super::sas::encode_component;
use crate::config::Payload;

/// The IoT Hub MQTT API version sent in the username.
pub const API_VERSION: &str = "2021-04-12";

/// Subscribe first: responses to twin GET and reported PATCH.
pub const TWIN_RESPONSES: &str = "$iothub/twin/res/#";
/// Desired property changes, while connected.
pub const TWIN_DESIRED_PATCHES: &str = "$iothub/twin/PATCH/properties/desired/#";
/// Direct method requests.
pub const METHOD_REQUESTS: &str = "$iothub/methods/POST/#";
/// Everything the connector subscribes to (IoT Hub allows 5 subscriptions).
pub const SUBSCRIPTIONS: [&str; 3] = [TWIN_RESPONSES, TWIN_DESIRED_PATCHES, METHOD_REQUESTS];

/// `{device}` or `{device}/{module}`.
pub fn client_id(device_id: &str, module_id: Option<&str>) -> String {
    match module_id {
        None => device_id.to_owned(),
        Some(module) => format!("{device_id}/{module}"),
    }
}

/// `{host}/{device}/?api-version=2021-04-12` or `{host}/{device}/{module}/?api-version=...`;
/// with a model id (IoT Plug and Play) `&model-id={DTMI}` follows, percent-encoded
/// (`dtmi%3Acom%3Aexample%3ALine%3B1`), as the Azure IoT SDKs send it.
pub fn username(
    host: &str,
    device_id: &str,
    module_id: Option<&str>,
    model_id: Option<&str>,
) -> String {
    let mut name = format!(
        "{host}/{}/?api-version={API_VERSION}",
        client_id(device_id, module_id)
    );
    if let Some(model) = model_id {
        name.push_str("&model-id=");
        name.push_str(&encode_component(model));
    }
    name
}

/// `devices/{device}/messages/events/` or `devices/{device}/modules/{module}/messages/events/`.
pub fn telemetry_base(device_id: &str, module_id: Option<&str>) -> String {
    match module_id {
        None => format!("devices/{device_id}/messages/events/"),
        Some(module) => format!("devices/{device_id}/modules/{module}/messages/events/"),
    }
}

/// `$.ct=application%2Fjson&$.ce=utf-8` (`$.ce=gzip` for `json+gzip`) followed by the
/// application properties, keys and values percent-encoded.
pub fn property_bag(payload: Payload, properties: &[(&str, &str)]) -> String {
    let encoding = match payload {
        Payload::Json => "utf-8",
        Payload::JsonGzip => "gzip",
    };
    let mut bag = format!("$.ct=application%2Fjson&$.ce={encoding}");
    for (key, value) in properties {
        bag.push('&');
        bag.push_str(&encode_component(key));
        bag.push('=');
        bag.push_str(&encode_component(value));
    }
    bag
}

/// The topic a batch of one group's samples is published to, with `$.ct`, `$.ce`, `plc` and
/// `group` in the property bag.
pub fn telemetry_topic(
    device_id: &str,
    module_id: Option<&str>,
    payload: Payload,
    plc: &str,
    group: &str,
) -> String {
    stream_topic(
        device_id,
        module_id,
        payload,
        &[("plc", plc), ("group", group)],
    )
}

/// The topic of an event stream's messages: [`telemetry_topic`] plus the application
/// property `messageType=event`, for routing events apart from samples.
pub fn event_topic(
    device_id: &str,
    module_id: Option<&str>,
    payload: Payload,
    plc: &str,
    group: &str,
) -> String {
    typed_topic(device_id, module_id, payload, (plc, group), "event")
}

/// The telemetry topic of a stream whose messages carry the application property
/// `messageType` (`event`, `alert`), for routing them apart from samples.
pub fn typed_topic(
    device_id: &str,
    module_id: Option<&str>,
    payload: Payload,
    (plc, group): (&str, &str),
    message_type: &str,
) -> String {
    let properties = [
        ("plc", plc),
        ("group", group),
        ("messageType", message_type),
    ];
    stream_topic(device_id, module_id, payload, &properties)
}

fn stream_topic(
    device_id: &str,
    module_id: Option<&str>,
    payload: Payload,
    properties: &[(&str, &str)],
) -> String {
    let mut topic = telemetry_base(device_id, module_id);
    topic.push_str(&property_bag(payload, properties));
    topic
}

/// Cloud-to-device messages of a device (modules receive none over MQTT).
pub fn c2d_filter(device_id: &str) -> String {
    format!("devices/{device_id}/messages/devicebound/#")
}

/// The device-to-cloud topic of an answer to a cloud-to-device request: the application
/// property `messageType` (`writeResponse`, `methodResponse`) and the request's message id as
/// the correlation id `$.cid`, so that a back end matches them.
pub fn response_topic(
    device_id: &str,
    module_id: Option<&str>,
    message_type: &str,
    correlation_id: Option<&str>,
) -> String {
    let mut topic = stream_topic(
        device_id,
        module_id,
        Payload::Json,
        &[("messageType", message_type)],
    );
    if let Some(cid) = correlation_id {
        topic.push_str("&$.cid=");
        topic.push_str(&encode_component(cid));
    }
    topic
}

/// Publish an empty message here to get the full twin.
pub fn twin_get(rid: &str) -> String {
    format!("$iothub/twin/GET/?$rid={rid}")
}

/// Publish a JSON patch of reported properties here.
pub fn twin_patch_reported(rid: &str) -> String {
    format!("$iothub/twin/PATCH/properties/reported/?$rid={rid}")
}

/// Publish a direct method's result here (`rid` as received with the request).
pub fn method_response(status: u16, rid: &str) -> String {
    format!("$iothub/methods/res/{status}/?$rid={rid}")
}

/// A message the hub sent on one of the [`SUBSCRIPTIONS`], by topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// `$iothub/twin/res/{status}/?$rid={rid}[&$version={version}]`: the answer to a twin GET
    /// (200, body = the twin) or a reported PATCH (204, with the new reported `$version`).
    TwinResponse {
        status: u16,
        rid: String,
        version: Option<u64>,
    },
    /// `$iothub/twin/PATCH/properties/desired/?$version={version}`: desired properties changed.
    DesiredPatch { version: u64 },
    /// `$iothub/methods/POST/{name}/?$rid={rid}`: a direct method call.
    MethodRequest { name: String, rid: String },
    /// `devices/{device}/messages/devicebound/{property bag}`: a cloud-to-device message,
    /// its system (`$.mid`, `$.to`, ...) and application properties decoded, in order.
    CloudToDevice { properties: Vec<(String, String)> },
}

/// A topic that is not one the hub sends to a device in the shape it documents.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unexpected hub topic {topic:?}: {reason}")]
pub struct TopicError {
    /// The topic, cut to its first 100 characters.
    pub topic: String,
    pub reason: &'static str,
}

impl TopicError {
    fn new(topic: &str, reason: &'static str) -> TopicError {
        TopicError {
            topic: topic.chars().take(100).collect(),
            reason,
        }
    }
}

impl fmt::Display for Incoming {
    /// The topic it came on.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Incoming::TwinResponse {
                status,
                rid,
                version,
            } => {
                write!(f, "$iothub/twin/res/{status}/?$rid={rid}")?;
                if let Some(v) = version {
                    write!(f, "&$version={v}")?;
                }
                Ok(())
            }
            Incoming::DesiredPatch { version } => {
                write!(
                    f,
                    "$iothub/twin/PATCH/properties/desired/?$version={version}"
                )
            }
            Incoming::MethodRequest { name, rid } => {
                write!(f, "$iothub/methods/POST/{name}/?$rid={rid}")
            }
            Incoming::CloudToDevice { properties } => {
                f.write_str("devices/.../messages/devicebound/")?;
                for (i, (k, v)) in properties.iter().enumerate() {
                    let sep = if i == 0 { "" } else { "&" };
                    write!(f, "{sep}{}={}", encode_component(k), encode_component(v))?;
                }
                Ok(())
            }
        }
    }
}

/// The `$rid` and `$version` of a query string; other parameters are ignored.
struct Query<'a> {
    rid: Option<&'a str>,
    version: Option<u64>,
}

fn parse_query(query: &str) -> Result<Query<'_>, &'static str> {
    let mut q = Query {
        rid: None,
        version: None,
    };
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').ok_or("a parameter is not key=value")?;
        match key {
            "$rid" if q.rid.is_some() => return Err("$rid given twice"),
            "$rid" if value.is_empty() => return Err("empty $rid"),
            "$rid" => q.rid = Some(value),
            "$version" if q.version.is_some() => return Err("$version given twice"),
            "$version" => {
                let digits = !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit());
                let v = value.parse::<u64>().ok().filter(|_| digits);
                q.version = Some(v.ok_or("$version is not an integer")?);
            }
            _ => {}
        }
    }
    Ok(q)
}

/// The properties of a property bag, decoded; a malformed one gives none.
pub fn property_pairs(bag: &str) -> Vec<(String, String)> {
    parse_bag(bag).unwrap_or_default()
}

/// `key=value&...`, percent-decoded; a key without `=` has an empty value.
fn parse_bag(bag: &str) -> Result<Vec<(String, String)>, &'static str> {
    bag.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            match (percent_decode(k), percent_decode(v)) {
                (Some(k), Some(v)) if !k.is_empty() => Ok((k, v)),
                _ => Err("a property is not percent-encoded UTF-8 key=value"),
            }
        })
        .collect()
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// Parses a topic the hub published to us; never panics on malformed input.
pub fn parse_incoming(topic: &str) -> Result<Incoming, TopicError> {
    let err = |reason| TopicError::new(topic, reason);
    if let Some(bag) = topic
        .strip_prefix("devices/")
        .and_then(|rest| rest.split_once("/messages/devicebound/"))
        .filter(|(device, _)| !device.is_empty() && !device.contains('/'))
        .map(|(_, bag)| bag)
    {
        return parse_bag(bag)
            .map(|properties| Incoming::CloudToDevice { properties })
            .map_err(err);
    }
    let (path, query) = topic
        .split_once('?')
        .ok_or_else(|| err("no ?$rid= or ?$version= part"))?;
    let q = parse_query(query).map_err(err)?;
    if let Some(rest) = path.strip_prefix("$iothub/twin/res/") {
        let status = rest
            .strip_suffix('/')
            .filter(|s| s.len() == 3 && s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse::<u16>().ok())
            .ok_or_else(|| err("the status is not a 3-digit integer"))?;
        let rid = q.rid.ok_or_else(|| err("no $rid"))?;
        return Ok(Incoming::TwinResponse {
            status,
            rid: rid.to_owned(),
            version: q.version,
        });
    }
    if path == "$iothub/twin/PATCH/properties/desired/" {
        let version = q.version.ok_or_else(|| err("no $version"))?;
        return Ok(Incoming::DesiredPatch { version });
    }
    if let Some(rest) = path.strip_prefix("$iothub/methods/POST/") {
        let name = rest
            .strip_suffix('/')
            .filter(|n| !n.is_empty() && !n.contains('/'))
            .ok_or_else(|| err("no method name"))?;
        let rid = q.rid.ok_or_else(|| err("no $rid"))?;
        return Ok(Incoming::MethodRequest {
            name: name.to_owned(),
            rid: rid.to_owned(),
        });
    }
    Err(err(
        "not a twin response, desired patch, method request or cloud-to-device message",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_id_and_username_for_device_and_module() {
        assert_eq!(client_id("device-001", None), "device-001");
        assert_eq!(
            client_id("line-a-edge", Some("opcua-connector")),
            "line-a-edge/opcua-connector"
        );
        assert_eq!(
            username("myhub.azure-devices.net", "device-001", None, None),
            "myhub.azure-devices.net/device-001/?api-version=2021-04-12"
        );
        assert_eq!(
            username(
                "myhub.azure-devices.net",
                "line-a-edge",
                Some("opcua-connector"),
                None
            ),
            "myhub.azure-devices.net/line-a-edge/opcua-connector/?api-version=2021-04-12"
        );
    }

    #[test]
    fn username_announces_the_plug_and_play_model_id() {
        let model = Some("dtmi:com:example:BottlingLine;1");
        assert_eq!(
            username("myhub.azure-devices.net", "device-001", None, model),
            "myhub.azure-devices.net/device-001/?api-version=2021-04-12\
             &model-id=dtmi%3Acom%3Aexample%3ABottlingLine%3B1"
        );
        assert_eq!(
            username(
                "myhub.azure-devices.net",
                "line-a-edge",
                Some("opcua-connector"),
                Some("dtmi:opcua_connector:plant_1:line_a;1.2")
            ),
            "myhub.azure-devices.net/line-a-edge/opcua-connector/?api-version=2021-04-12\
             &model-id=dtmi%3Aopcua_connector%3Aplant_1%3Aline_a%3B1.2"
        );
    }

    #[test]
    fn telemetry_topic_carries_content_type_encoding_plc_and_group() {
        assert_eq!(
            telemetry_topic("device-001", None, Payload::Json, "filler", "fast"),
            "devices/device-001/messages/events/$.ct=application%2Fjson&$.ce=utf-8&plc=filler&group=fast"
        );
        assert_eq!(
            telemetry_topic("edge", Some("opcua"), Payload::JsonGzip, "filler", "fast"),
            "devices/edge/modules/opcua/messages/events/$.ct=application%2Fjson&$.ce=gzip&plc=filler&group=fast"
        );
    }

    #[test]
    fn event_topic_says_it_carries_events() {
        assert_eq!(
            event_topic("device-001", None, Payload::Json, "filler", "alarms"),
            "devices/device-001/messages/events/$.ct=application%2Fjson&$.ce=utf-8&plc=filler&group=alarms&messageType=event"
        );
    }

    #[test]
    fn property_bag_encodes_application_keys_and_values() {
        assert_eq!(
            property_bag(Payload::Json, &[("a b", "x&y=z/1"), ("schema", "1")]),
            "$.ct=application%2Fjson&$.ce=utf-8&a%20b=x%26y%3Dz%2F1&schema=1"
        );
    }

    #[test]
    fn twin_and_method_topics_follow_the_hub() {
        assert_eq!(twin_get("7"), "$iothub/twin/GET/?$rid=7");
        assert_eq!(
            twin_patch_reported("8"),
            "$iothub/twin/PATCH/properties/reported/?$rid=8"
        );
        assert_eq!(
            method_response(200, "ab12"),
            "$iothub/methods/res/200/?$rid=ab12"
        );
        assert_eq!(
            SUBSCRIPTIONS,
            [
                "$iothub/twin/res/#",
                "$iothub/twin/PATCH/properties/desired/#",
                "$iothub/methods/POST/#"
            ]
        );
    }

    #[test]
    fn incoming_topics_parse_into_structured_values() {
        assert_eq!(
            parse_incoming("$iothub/twin/res/200/?$rid=1"),
            Ok(Incoming::TwinResponse {
                status: 200,
                rid: "1".into(),
                version: None
            })
        );
        assert_eq!(
            parse_incoming("$iothub/twin/res/204/?$rid=2&$version=17"),
            Ok(Incoming::TwinResponse {
                status: 204,
                rid: "2".into(),
                version: Some(17)
            })
        );
        assert_eq!(
            parse_incoming("$iothub/twin/res/429/?$version=3&$rid=x-1&future=1"),
            Ok(Incoming::TwinResponse {
                status: 429,
                rid: "x-1".into(),
                version: Some(3)
            })
        );
        assert_eq!(
            parse_incoming("$iothub/twin/PATCH/properties/desired/?$version=42"),
            Ok(Incoming::DesiredPatch { version: 42 })
        );
        assert_eq!(
            parse_incoming("$iothub/methods/POST/resetCounters/?$rid=5f"),
            Ok(Incoming::MethodRequest {
                name: "resetCounters".into(),
                rid: "5f".into()
            })
        );
    }

    #[test]
    fn malformed_incoming_topics_are_errors_with_a_reason() {
        for (topic, reason) in [
            ("$iothub/twin/res/200/", "no ?$rid= or ?$version= part"),
            (
                "$iothub/twin/res/ok/?$rid=1",
                "the status is not a 3-digit integer",
            ),
            (
                "$iothub/twin/res/2000/?$rid=1",
                "the status is not a 3-digit integer",
            ),
            (
                "$iothub/twin/res/200?$rid=1",
                "the status is not a 3-digit integer",
            ),
            (
                "$iothub/twin/res/+20/?$rid=1",
                "the status is not a 3-digit integer",
            ),
            ("$iothub/twin/res/200/?$version=1", "no $rid"),
            ("$iothub/twin/res/200/?$rid=", "empty $rid"),
            ("$iothub/twin/res/200/?$rid=1&$rid=2", "$rid given twice"),
            (
                "$iothub/twin/res/200/?$rid=1&$version=-1",
                "$version is not an integer",
            ),
            (
                "$iothub/twin/res/200/?$rid=1&junk",
                "a parameter is not key=value",
            ),
            (
                "$iothub/twin/PATCH/properties/desired/?$rid=1",
                "no $version",
            ),
            (
                "$iothub/twin/PATCH/properties/desired/?$version=+1",
                "$version is not an integer",
            ),
            ("$iothub/methods/POST//?$rid=1", "no method name"),
            ("$iothub/methods/POST/a/b/?$rid=1", "no method name"),
            ("$iothub/methods/POST/reset/?$version=1", "no $rid"),
            (
                "devices/d/messages/events/?x=1",
                "not a twin response, desired patch, method request or cloud-to-device message",
            ),
        ] {
            let e = parse_incoming(topic).unwrap_err();
            assert_eq!(e.reason, reason, "{topic}");
            assert!(e.to_string().starts_with("unexpected hub topic"), "{e}");
        }
        let long = format!("{}?$rid=1", "x".repeat(1000));
        assert_eq!(parse_incoming(&long).unwrap_err().topic.len(), 100);
    }

    /// xorshift64*: a reproducible stream for the property tests below.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    #[test]
    fn random_and_mutated_topics_never_panic() {
        const PIECES: [&str; 18] = [
            "$iothub/",
            "twin/",
            "res/",
            "PATCH/properties/desired/",
            "methods/POST/",
            "200",
            "/",
            "?",
            "&",
            "=",
            "$rid",
            "$version",
            "#",
            "+",
            "é",
            "\u{0}",
            "18446744073709551616",
            "x",
        ];
        let valid = [
            "$iothub/twin/res/204/?$rid=2&$version=17",
            "$iothub/twin/PATCH/properties/desired/?$version=42",
            "$iothub/methods/POST/resetCounters/?$rid=5f",
        ];
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for _ in 0..20_000 {
            // Random concatenations of the pieces that matter to the parser.
            let n = rng.below(12);
            let random: String = (0..n).map(|_| PIECES[rng.below(PIECES.len())]).collect();
            check_invariants(&random);
            // A valid topic with one character replaced, removed or inserted.
            let mut chars: Vec<char> = valid[rng.below(valid.len())].chars().collect();
            let at = rng.below(chars.len());
            let c = ['/', '?', '&', '=', '$', '1', 'a', 'é'][rng.below(8)];
            match rng.below(3) {
                0 => chars[at] = c,
                1 => {
                    chars.remove(at);
                }
                _ => chars.insert(at, c),
            }
            check_invariants(&chars.into_iter().collect::<String>());
        }
    }

    fn check_invariants(topic: &str) {
        match parse_incoming(topic) {
            Ok(Incoming::TwinResponse { rid, .. }) | Ok(Incoming::MethodRequest { rid, .. }) => {
                assert!(!rid.is_empty() && !rid.contains('&'), "{topic}");
            }
            Ok(Incoming::DesiredPatch { .. }) => {}
            Ok(Incoming::CloudToDevice { properties }) => {
                assert!(properties.iter().all(|(k, _)| !k.is_empty()), "{topic}");
            }
            Err(e) => assert!(e.topic.chars().count() <= 100),
        }
    }

    #[test]
    fn cloud_to_device_topics_give_their_decoded_properties() {
        let topic = "devices/line-a-edge/messages/devicebound/%24.mid=m-1&%24.to=%2Fdevices%2Fline-a-edge%2Fmessages%2FdeviceBound&request=write&note=a%20b%26c";
        assert_eq!(
            parse_incoming(topic),
            Ok(Incoming::CloudToDevice {
                properties: vec![
                    ("$.mid".into(), "m-1".into()),
                    (
                        "$.to".into(),
                        "/devices/line-a-edge/messages/deviceBound".into()
                    ),
                    ("request".into(), "write".into()),
                    ("note".into(), "a b&c".into()),
                ]
            })
        );
        assert_eq!(
            parse_incoming("devices/d/messages/devicebound/"),
            Ok(Incoming::CloudToDevice { properties: vec![] })
        );
        assert!(parse_incoming("devices/d/messages/devicebound/a=%zz").is_err());
        assert_eq!(c2d_filter("d"), "devices/d/messages/devicebound/#");
        assert_eq!(
            response_topic("d", None, "writeResponse", Some("m 1")),
            "devices/d/messages/events/$.ct=application%2Fjson&$.ce=utf-8&messageType=writeResponse&$.cid=m%201"
        );
    }

    #[test]
    fn parsed_topics_display_back_to_the_same_topic() {
        let mut rng = Rng(42);
        let alphabet: Vec<char> = "abcXYZ019-_.".chars().collect();
        let word = |rng: &mut Rng| -> String {
            let n = 1 + rng.below(10);
            (0..n)
                .map(|_| alphabet[rng.below(alphabet.len())])
                .collect()
        };
        for _ in 0..2_000 {
            let incoming = match rng.below(3) {
                0 => Incoming::TwinResponse {
                    status: [200, 204, 400, 429, 500][rng.below(5)],
                    rid: word(&mut rng),
                    version: (rng.below(2) == 0).then(|| rng.next()),
                },
                1 => Incoming::DesiredPatch {
                    version: rng.next(),
                },
                _ => Incoming::MethodRequest {
                    name: word(&mut rng),
                    rid: word(&mut rng),
                },
            };
            let topic = incoming.to_string();
            assert_eq!(parse_incoming(&topic), Ok(incoming), "{topic}");
        }
    }
}
