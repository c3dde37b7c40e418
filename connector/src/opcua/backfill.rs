//! History backfill: after a connection outage, what a `backfill = true` group's subscription
//! missed is read back from the server's history (HistoryRead, raw values) and lands like
//! any sample, marked `origin = "history"`.
//!
//! Per node the connector remembers the source time of its last sample. An outage (the
//! connection lost, a session that had to be replaced) marks every node as cut at that time;
//! the node's first sample after the outage closes the gap. The gap is read strictly between
//! the two (both ends excluded, so nothing already received comes twice) in pages of at
//! most 1000 values with continuation points, one read at a time, at most `backfill_rate`
//! values per second, and only its latest `backfill_max`. A gap that cannot be filled (the
//! node is not historizing, the server refuses, the part beyond `backfill_max`) is counted
//! (`opcua_connector_backfill_unfilled_total`) and logged with the node and its span; nothing
//! is invented. Gaps wait in memory until a session can read them: a session lost during a
//! backfill resumes after the last value handed on. An outage of the connector itself is not
//! backfilled.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use opcua::client::{HistoryReadAction, Session};
use opcua::types::{
    AttributeId, ByteString, DataValue, DateTime, HistoryData, HistoryReadValueId,
    ReadRawModifiedDetails, ReadValueId, StatusCode, TimestampsToReturn, Variant,
};
use tokio::sync::Notify;
use tracing::{info, warn};

use crate::config::BackfillConfig;
use crate::metrics::PlcMetrics;
use crate::opcua::flatten::Watch;
use crate::pipeline::SampleSender;
use crate::ratelog::RateLog;
use crate::sample::Origin;

/// Values asked for per HistoryRead (fewer when `backfill_rate` is lower).
pub const PAGE: u32 = 1000;

/// One node of a `backfill = true` group, kept across sessions.
#[derive(Debug)]
pub struct Track {
    config: BackfillConfig,
    /// Where its samples are decoded now: the subscription's watch, the item's index, the
    /// node id in this session's namespace indexes.
    at: Mutex<Option<(Weak<Watch>, usize, opcua::types::NodeId)>>,
    /// Source time of the last sample with a value, µs; 0 before the first.
    last_us: AtomicI64,
    /// The last sample's time when an outage began, µs; 0 when no outage is pending.
    cut_from: AtomicI64,
    /// Whether this session's server keeps history of the node (read once per session).
    historizing: Mutex<Option<Result<(), &'static str>>>,
    /// Source times of live samples that arrived after a later one (republished messages),
    /// the latest [`LATE`]: a gap read from history leaves them out.
    late: Mutex<VecDeque<i64>>,
    /// The subscribe round that last monitored the node ([`Backfill::subscribed`]).
    generation: AtomicU64,
}

/// Gaps waiting at most; more are reported unfilled at once.
pub const MAX_GAPS: usize = 100_000;

/// Failures of a connected session that end the read of a gap (each retried after 1 s).
pub const MAX_ATTEMPTS: u32 = 10;

/// Out-of-order live sample times remembered per node.
const LATE: usize = 4096;

/// A gap is read this long after it closed, so that the messages the server republishes
/// after the reconnect arrive first (and are left out of the read).
pub const SETTLE: Duration = Duration::from_secs(1);

impl Track {
    /// A sample of the node arrived live at `time_us`.
    fn seen(self: &Arc<Self>, time_us: i64, has_value: bool, backfill: &Backfill) {
        if !has_value {
            return;
        }
        if time_us < self.last_us.load(Ordering::Relaxed) {
            let mut late = self.late.lock().unwrap_or_else(|e| e.into_inner());
            if late.len() == LATE {
                late.pop_front();
            }
            late.push_back(time_us);
        }
        // Only a later sample closes the gap: a republished older message, or a first value
        // unchanged since before the outage, leaves it open.
        let from = self.cut_from.load(Ordering::Relaxed);
        if from != 0
            && time_us > from
            && self
                .cut_from
                .compare_exchange(from, 0, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            backfill.push(Gap {
                track: self.clone(),
                from_us: from,
                to_us: time_us,
                closed: tokio::time::Instant::now(),
                attempts: 0,
            });
        }
        self.last_us.fetch_max(time_us, Ordering::Relaxed);
    }
}

/// A tracked node: (group, node id in namespace-URI form).
type TrackKey = (Arc<str>, Arc<str>);

/// The backfill of a subscription's items: tracks by item index.
pub type Tracks = (Arc<Backfill>, Vec<Option<Arc<Track>>>);

/// A span of one node's history to read, both ends excluded.
#[derive(Debug, Clone)]
struct Gap {
    track: Arc<Track>,
    from_us: i64,
    to_us: i64,
    /// When the first sample after the outage arrived.
    closed: tokio::time::Instant,
    /// Failed reads while the session was connected.
    attempts: u32,
}

/// What reading a gap came to.
enum Filled {
    /// Read (or reported unfillable): the gap is done.
    Done,
    /// The session failed meanwhile: try again with the next one.
    Retry(StatusCode),
}

/// The backfill of one PLC: its tracked nodes and the gaps waiting to be read.
#[derive(Debug)]
pub struct Backfill {
    plc: Arc<str>,
    tracks: Mutex<HashMap<TrackKey, Arc<Track>>>,
    gaps: Mutex<VecDeque<Gap>>,
    notify: Notify,
    metrics: Arc<PlcMetrics>,
    unfilled_log: RateLog,
    retry_log: RateLog,
    /// Values read since the queue was last empty (for the summary line).
    read: AtomicU64,
    /// Subscribe rounds completed (a new session, a resubscription).
    generation: AtomicU64,
}

impl Backfill {
    pub fn new(plc: &str, metrics: Arc<PlcMetrics>) -> Arc<Backfill> {
        Arc::new(Backfill {
            plc: plc.into(),
            tracks: Mutex::default(),
            gaps: Mutex::default(),
            notify: Notify::new(),
            metrics,
            unfilled_log: RateLog::per_minute(),
            retry_log: RateLog::per_minute(),
            read: AtomicU64::new(0),
            generation: AtomicU64::new(1),
        })
    }

    /// The node `node` (namespace-URI form) of `group`, now monitored as item `index` of
    /// `watch` with this session's id `id`.
    pub fn track(
        &self,
        group: &str,
        node: &Arc<str>,
        config: BackfillConfig,
        at: (&Arc<Watch>, usize, &opcua::types::NodeId),
    ) -> Arc<Track> {
        let mut tracks = self.tracks.lock().unwrap_or_else(|e| e.into_inner());
        let track = tracks
            .entry((group.into(), node.clone()))
            .or_insert_with(|| {
                Arc::new(Track {
                    config,
                    at: Mutex::new(None),
                    last_us: AtomicI64::new(0),
                    cut_from: AtomicI64::new(0),
                    historizing: Mutex::new(None),
                    late: Mutex::default(),
                    generation: AtomicU64::new(0),
                })
            })
            .clone();
        track
            .generation
            .store(self.generation.load(Ordering::Relaxed), Ordering::Relaxed);
        *track.at.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((Arc::downgrade(at.0), at.1, at.2.clone()));
        *track.historizing.lock().unwrap_or_else(|e| e.into_inner()) = None;
        track
    }

    /// An outage begins: every node with a sample is cut at its last one (an earlier cut
    /// whose gap is not closed yet stays).
    pub fn cut(&self) {
        let tracks = self.tracks.lock().unwrap_or_else(|e| e.into_inner());
        for t in tracks.values() {
            let last = t.last_us.load(Ordering::Relaxed);
            if last != 0 {
                let _ = t
                    .cut_from
                    .compare_exchange(0, last, Ordering::Relaxed, Ordering::Relaxed);
            }
        }
    }

    /// A subscribe round is complete: gaps of nodes it did not monitor again (a browse that
    /// found other variables, a node that no longer resolves) can never be read; they are
    /// reported instead of waiting for ever.
    pub fn subscribed(&self) {
        let current = self.generation.fetch_add(1, Ordering::Relaxed);
        let stale: Vec<Gap> = {
            let mut gaps = self.gaps.lock().unwrap_or_else(|e| e.into_inner());
            let all = std::mem::take(&mut *gaps);
            let (stale, keep): (Vec<Gap>, Vec<Gap>) = all
                .into_iter()
                .partition(|g| g.track.generation.load(Ordering::Relaxed) != current);
            *gaps = keep.into();
            stale
        };
        for g in stale {
            self.unfilled(
                &g,
                g.from_us,
                g.to_us,
                "the node is not subscribed any more",
            );
        }
        self.notify.notify_one();
    }

    /// A live sample of `track` at `time_us`.
    pub fn seen(&self, track: &Arc<Track>, time_us: i64, has_value: bool) {
        track.seen(time_us, has_value, self);
    }

    fn push(&self, gap: Gap) {
        let mut gaps = self.gaps.lock().unwrap_or_else(|e| e.into_inner());
        if gaps.len() >= MAX_GAPS {
            drop(gaps);
            self.unfilled(
                &gap,
                gap.from_us,
                gap.to_us,
                "too many gaps waiting (100,000)",
            );
            return;
        }
        gaps.push_back(gap);
        drop(gaps);
        self.notify.notify_one();
    }

    fn front(&self) -> Option<Gap> {
        self.gaps
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .front()
            .cloned()
    }

    /// The front gap is read up to `to_us` (its values handed on), or done (`None`).
    fn progress(&self, gap: &Gap, upto: Option<i64>) {
        let mut gaps = self.gaps.lock().unwrap_or_else(|e| e.into_inner());
        let Some(front) = gaps.front_mut() else {
            return;
        };
        if !Arc::ptr_eq(&front.track, &gap.track) || front.to_us != gap.to_us {
            return;
        }
        match upto {
            Some(us) => front.from_us = front.from_us.max(us),
            None => {
                gaps.pop_front();
            }
        }
    }

    /// One more failed read of the front gap; true when it has had [`MAX_ATTEMPTS`].
    fn failed(&self, gap: &Gap) -> bool {
        let mut gaps = self.gaps.lock().unwrap_or_else(|e| e.into_inner());
        match gaps.front_mut() {
            Some(front) if Arc::ptr_eq(&front.track, &gap.track) && front.to_us == gap.to_us => {
                front.attempts += 1;
                front.attempts >= MAX_ATTEMPTS
            }
            _ => false,
        }
    }

    /// Reads the gaps with `session` as they come, until the task is aborted (the session
    /// ended: what is left is read with the next one).
    pub async fn run(self: Arc<Self>, session: Arc<Session>, tx: SampleSender) {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let Some(gap) = self.front() else {
                let n = self.read.swap(0, Ordering::Relaxed);
                if n > 0 {
                    info!(plc = %self.plc, values = n, "backfill done: the values missed during the outage were read from the server's history");
                }
                notified.await;
                continue;
            };
            tokio::time::sleep_until(gap.closed + SETTLE).await;
            match self.fill(&session, &gap, &tx).await {
                Filled::Done => self.progress(&gap, None),
                Filled::Retry(status) => {
                    // Failures of a session that is down do not count: the gap waits for it.
                    let connected = self.metrics.connected.load(Ordering::Relaxed);
                    if connected && self.failed(&gap) {
                        let from = self.front().map_or(gap.from_us, |g| g.from_us);
                        self.unfilled(&gap, from, gap.to_us, "the history read failed 10 times");
                        self.progress(&gap, None);
                        continue;
                    }
                    if let Some(more) = self.retry_log.hit() {
                        warn!(plc = %self.plc, status = %status, suppressed = more, "backfill interrupted: it goes on in 1 s or with the next session");
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// Reports a span of a node's history that is not read, once a minute at most.
    fn unfilled(&self, gap: &Gap, from_us: i64, to_us: i64, why: &str) {
        PlcMetrics::add(&self.metrics.backfill_unfilled, 1);
        let node = gap
            .track
            .at
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .and_then(|(w, i, _)| w.upgrade().and_then(|w| w.items.get(*i).cloned()));
        if let Some(more) = self.unfilled_log.hit() {
            let seconds = (to_us - from_us) as f64 / 1e6;
            warn!(plc = %self.plc, node = node.as_ref().map_or("?", |i| &*i.node), from = %rfc3339(from_us), to = %rfc3339(to_us), seconds, reason = why, suppressed = more,
                "values of an outage not backfilled: they stay missing (counted in opcua_connector_backfill_unfilled_total)");
        }
    }

    async fn fill(&self, session: &Session, gap: &Gap, tx: &SampleSender) -> Filled {
        let Some((watch, index, node)) = gap
            .track
            .at
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
        else {
            return Filled::Done;
        };
        let Some(watch) = watch.upgrade() else {
            // Not subscribed in this session (yet): its subscription will be made again.
            return Filled::Retry(StatusCode::BadSubscriptionIdInvalid);
        };
        match self.historizing(session, &gap.track, &node).await {
            Ok(Ok(())) => {}
            Ok(Err(why)) => {
                self.unfilled(gap, gap.from_us, gap.to_us, why);
                return Filled::Done;
            }
            Err(status) => return Filled::Retry(status),
        }
        let max = i64::try_from(gap.track.config.max.as_micros()).unwrap_or(i64::MAX);
        let mut from = gap.from_us;
        if gap.to_us - from > max {
            self.unfilled(gap, from, gap.to_us - max, "longer than backfill_max");
            from = gap.to_us - max;
            self.progress(gap, Some(from));
        }
        let rate = gap.track.config.rate.max(1);
        let mut continuation = ByteString::null();
        loop {
            let details = ReadRawModifiedDetails {
                is_read_modified: false,
                start_time: date_time(from + 1),
                end_time: date_time(gap.to_us),
                num_values_per_node: PAGE.min(rate),
                return_bounds: false,
            };
            let id = HistoryReadValueId {
                node_id: node.clone(),
                continuation_point: continuation.clone(),
                ..Default::default()
            };
            let started = tokio::time::Instant::now();
            let result = session
                .history_read(
                    HistoryReadAction::ReadRawModifiedDetails(details),
                    TimestampsToReturn::Both,
                    false,
                    &[id],
                )
                .await;
            let result = match result {
                Ok(mut r) if !r.is_empty() => r.swap_remove(0),
                Ok(_) => return Filled::Retry(StatusCode::BadUnexpectedError),
                Err(e) => return Filled::Retry(e.status()),
            };
            let status = result.status_code;
            if status.is_bad() {
                release(session, &node, &continuation).await;
                return match refusal(status) {
                    Some(why) => {
                        self.unfilled(gap, from, gap.to_us, why);
                        Filled::Done
                    }
                    // Out of continuation points, busy, timed out: again from where it is.
                    None => Filled::Retry(status),
                };
            }
            let values: Vec<DataValue> = result
                .history_data
                .into_inner_as::<HistoryData>()
                .and_then(|h| h.data_values)
                .unwrap_or_default();
            let received = chrono::Utc::now().timestamp_micros();
            let returned = values.len();
            let mut batch = Vec::with_capacity(values.len());
            let mut last = from;
            let late: std::collections::HashSet<i64> = gap
                .track
                .late
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .copied()
                .collect();
            for dv in values {
                let t = dv
                    .source_timestamp
                    .as_ref()
                    .or(dv.server_timestamp.as_ref())
                    .map(crate::opcua::convert::micros);
                // Strictly inside the gap, in order: a server that includes an end (or
                // returns older values again) must not duplicate a sample.
                match t {
                    Some(t) if t > last && t < gap.to_us => last = t,
                    _ => continue,
                }
                if late.contains(&last) {
                    // Received live after all (a republished message).
                    continue;
                }
                watch.rows(index, dv, received, Origin::History, &mut batch);
            }
            let n = batch.len() as u64;
            if n > 0 {
                PlcMetrics::add(&self.metrics.backfilled, n);
                self.read.fetch_add(n, Ordering::Relaxed);
                tx.send(batch);
                from = last;
                self.progress(gap, Some(from));
            }
            // At most `rate` values per second: a page of n values takes n / rate seconds,
            // the last one of a gap too (the next gap follows at once).
            let pace = Duration::from_secs_f64(returned as f64 / f64::from(rate));
            tokio::time::sleep_until(started + pace).await;
            continuation = result.continuation_point;
            if continuation.is_null_or_empty() {
                PlcMetrics::add(&self.metrics.backfill_gaps, 1);
                return Filled::Done;
            }
        }
    }

    /// Whether the server keeps history of `node` (else why not): Historizing, and the
    /// HistoryRead bit of its user access level; read once per session. `Err`: the read
    /// failed.
    async fn historizing(
        &self,
        session: &Session,
        track: &Track,
        node: &opcua::types::NodeId,
    ) -> Result<Result<(), &'static str>, StatusCode> {
        if let Some(known) = *track.historizing.lock().unwrap_or_else(|e| e.into_inner()) {
            return Ok(known);
        }
        let reads = [AttributeId::Historizing, AttributeId::UserAccessLevel].map(|a| ReadValueId {
            node_id: node.clone(),
            attribute_id: a as u32,
            ..Default::default()
        });
        let answer = match session.read(&reads, TimestampsToReturn::Neither, 0.0).await {
            Ok(v) => match (
                v.first().and_then(|d| d.value.clone()),
                v.get(1).and_then(|d| d.value.clone()),
            ) {
                (Some(Variant::Boolean(true)), Some(Variant::Byte(level))) if level & 0x04 != 0 => {
                    Ok(())
                }
                (Some(Variant::Boolean(true)), _) => {
                    Err("the server does not let this session read the node's history")
                }
                _ => Err("the server keeps no history of this node (Historizing is false)"),
            },
            Err(e) => return Err(e.status()),
        };
        *track.historizing.lock().unwrap_or_else(|e| e.into_inner()) = Some(answer);
        Ok(answer)
    }
}

/// Why the server will not give a node's history (for the log), or `None` when the failure
/// may pass (out of continuation points, busy, a timeout: read again).
fn refusal(status: StatusCode) -> Option<&'static str> {
    let permanent = |codes: &[StatusCode]| codes.contains(&status);
    if permanent(&[
        StatusCode::BadHistoryOperationUnsupported,
        StatusCode::BadHistoryOperationInvalid,
        StatusCode::BadNotSupported,
    ]) {
        Some("the server does not support reading history")
    } else if permanent(&[StatusCode::BadUserAccessDenied, StatusCode::BadNotReadable]) {
        Some("the server does not let this session read the node's history")
    } else if permanent(&[StatusCode::BadNodeIdUnknown, StatusCode::BadNodeIdInvalid]) {
        Some("the server no longer knows the node")
    } else {
        None
    }
}

/// Gives a continuation point back to the server (it holds few) when a read stops early.
async fn release(session: &Session, node: &opcua::types::NodeId, continuation: &ByteString) {
    if continuation.is_null_or_empty() {
        return;
    }
    let id = HistoryReadValueId {
        node_id: node.clone(),
        continuation_point: continuation.clone(),
        ..Default::default()
    };
    let _ = session
        .history_read(
            HistoryReadAction::ReadRawModifiedDetails(ReadRawModifiedDetails::default()),
            TimestampsToReturn::Neither,
            true,
            &[id],
        )
        .await;
}

fn date_time(us: i64) -> DateTime {
    chrono::DateTime::from_timestamp_micros(us)
        .map(DateTime::from)
        .unwrap_or_else(DateTime::null)
}

fn rfc3339(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backfill() -> (Arc<Backfill>, Arc<Track>) {
        let b = Backfill::new("p", Arc::new(PlcMetrics::default()));
        let watch = Arc::new(Watch::of_items(
            Vec::new(),
            Default::default(),
            Arc::new(crate::opcua::resolve::Namespaces(vec![])),
            None,
        ));
        let config = BackfillConfig {
            max: Duration::from_secs(60),
            rate: 100,
        };
        let id = opcua::types::NodeId::new(2, "A");
        let t = b.track("g", &Arc::from("nsu=x;s=A"), config, (&watch, 0, &id));
        (b, t)
    }

    fn gaps(b: &Backfill) -> Vec<(i64, i64)> {
        let g = b.gaps.lock().unwrap();
        g.iter().map(|g| (g.from_us, g.to_us)).collect()
    }

    #[test]
    fn an_outage_is_the_span_between_the_last_sample_before_and_the_first_after() {
        let (b, t) = backfill();
        b.cut(); // nothing received yet: no gap
        b.seen(&t, 100, true);
        b.seen(&t, 200, true);
        assert!(gaps(&b).is_empty());
        b.cut();
        b.cut(); // a second cut of the same outage keeps the first
        b.seen(&t, 150, true); // a republished older message does not close it
        b.seen(&t, 200, true); // nor a value unchanged since before the outage
        b.seen(&t, 900, false); // nor a sample without a value
        assert!(gaps(&b).is_empty());
        b.seen(&t, 1000, true);
        b.seen(&t, 1100, true);
        assert_eq!(gaps(&b), [(200, 1000)]);
        // Progress moves the start; done removes it.
        let gap = b.front().unwrap();
        b.progress(&gap, Some(500));
        assert_eq!(gaps(&b), [(500, 1000)]);
        b.progress(&gap, None);
        assert!(gaps(&b).is_empty());
    }

    #[test]
    fn gaps_of_nodes_not_subscribed_again_are_reported_not_kept_for_ever() {
        let (b, t) = backfill();
        b.seen(&t, 100, true);
        b.cut();
        b.seen(&t, 300, true);
        b.subscribed(); // the round that tracked it
        assert_eq!(gaps(&b), [(100, 300)]);
        b.subscribed(); // a round without the node
        assert!(gaps(&b).is_empty());
        assert_eq!(PlcMetrics::get(&b.metrics.backfill_unfilled), 1);
    }

    #[test]
    fn a_track_survives_resubscribing_with_its_last_time() {
        let (b, t) = backfill();
        b.seen(&t, 100, true);
        b.cut();
        let watch = Arc::new(Watch::of_items(
            Vec::new(),
            Default::default(),
            Arc::new(crate::opcua::resolve::Namespaces(vec![])),
            None,
        ));
        let id = opcua::types::NodeId::new(3, "A");
        let again = b.track("g", &Arc::from("nsu=x;s=A"), t.config, (&watch, 4, &id));
        assert!(Arc::ptr_eq(&t, &again));
        again.seen(300, true, &b);
        assert_eq!(gaps(&b), [(100, 300)]);
        let at = again.at.lock().unwrap();
        assert_eq!(at.as_ref().map(|a| (a.1, a.2.namespace)), Some((4, 3)));
    }
}
