//! The faults the simulator can inject (on the command line, in the profile's schedule or on
//! demand) and the `--fault KIND@AT[:DURATION][:CODE]` syntax. Times count from the
//! simulator's start; the runtime's supervisor injects each fault at its time.

use std::str::FromStr;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq)]
pub enum FaultKind {
    /// Stop the endpoint (every connection and session is gone), restart it after `down`.
    Restart { down: Duration },
    /// Drop every connection and forget every session; the endpoint is back at once.
    CloseSessions,
    /// Values stop changing for `duration` (the model does not advance); sessions stay up.
    Freeze { duration: Duration },
    /// Every generated variable reports `code` (value unchanged) for `duration`.
    Status { duration: Duration, code: u32 },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Fault {
    pub at: Duration,
    pub kind: FaultKind,
}

impl FromStr for Fault {
    type Err = String;

    /// `restart@10s:3s`, `close_sessions@5s`, `freeze@5s:2s`, `status@5s:2s:BadCommunicationError`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (kind, rest) = s
            .split_once('@')
            .ok_or_else(|| format!("fault {s:?}: expected KIND@AT[:DURATION][:CODE]"))?;
        let mut parts = rest.split(':');
        let dur = |p: Option<&str>, what: &str| -> Result<Duration, String> {
            let p = p.ok_or_else(|| format!("fault {s:?}: missing {what}"))?;
            humantime::parse_duration(p).map_err(|e| format!("fault {s:?}: bad {what} {p:?}: {e}"))
        };
        let at = dur(parts.next(), "time")?;
        let kind = match kind.replace('-', "_").as_str() {
            "restart" => FaultKind::Restart {
                down: dur(parts.next(), "down time")?,
            },
            "close_sessions" => FaultKind::CloseSessions,
            "freeze" => FaultKind::Freeze {
                duration: dur(parts.next(), "duration")?,
            },
            "status" => {
                let duration = dur(parts.next(), "duration")?;
                let name = parts.next().unwrap_or("BadCommunicationError");
                let code = crate::convert::status_from_name(name)
                    .ok_or_else(|| format!("fault {s:?}: unknown status code {name:?}"))?;
                FaultKind::Status { duration, code }
            }
            other => {
                return Err(format!(
                    "fault {s:?}: unknown kind {other:?} (restart, close_sessions, freeze, status)"
                ))
            }
        };
        if parts.next().is_some() {
            return Err(format!("fault {s:?}: too many fields"));
        }
        Ok(Fault { at, kind })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opcua::types::StatusCode;

    #[test]
    fn parses_every_kind() {
        assert_eq!(
            "restart@10s:3s".parse::<Fault>().unwrap(),
            Fault {
                at: Duration::from_secs(10),
                kind: FaultKind::Restart {
                    down: Duration::from_secs(3)
                }
            }
        );
        assert_eq!(
            "close-sessions@1s".parse::<Fault>().unwrap().kind,
            FaultKind::CloseSessions
        );
        assert!(matches!(
            "freeze@1s:500ms".parse::<Fault>().unwrap().kind,
            FaultKind::Freeze { .. }
        ));
        let FaultKind::Status { code, .. } = "status@1s:2s:BadNoCommunication"
            .parse::<Fault>()
            .unwrap()
            .kind
        else {
            panic!()
        };
        assert_eq!(code, StatusCode::BadNoCommunication.bits());
        assert!("restart@10s".parse::<Fault>().is_err());
        assert!("explode@1s".parse::<Fault>().is_err());
    }
}
