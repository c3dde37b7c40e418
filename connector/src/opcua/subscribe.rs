//! Subscriptions of a PLC: resolving a group's nodes, creating subscriptions and monitored
//! items within the server's limits, and turning notifications into samples.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use opcua::client::{MonitoredItemMap, OnSubscriptionNotificationCore, Session};
use opcua::types::{
    DataChangeFilter, DataChangeNotification, DataChangeTrigger, DeadbandType,
    EventNotificationList, ExtensionObject, MonitoredItemCreateRequest, MonitoringMode,
    MonitoringParameters, NodeId, NotificationMessage, ReadValueId, StatusCode, TimestampsToReturn,
    VariableId, Variant,
};
use tokio::sync::mpsc::UnboundedSender;
use tracing::{info, warn};

use crate::config::{Deadband, Group, QueueSize};
use crate::metrics::PlcMetrics;
use crate::opcua::backfill::Backfill;
use crate::opcua::events::{self, LastEvents};
use crate::opcua::flatten::{Flat, Flattening, Watch};
use crate::opcua::resolve::Namespaces;
use crate::opcua::structures::Structures;
pub use crate::opcua::targets::{targets, Target};
use crate::pipeline::SampleSender;
use crate::ratelog::RateLog;
use crate::sample::Origin;

/// The server's limits that shape how we subscribe (0 = no limit announced).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerLimits {
    pub max_monitored_items_per_call: usize,
    pub max_monitored_items_per_subscription: usize,
    pub max_nodes_per_browse: usize,
    pub max_nodes_per_read: usize,
    pub max_subscriptions_per_session: usize,
}

impl ServerLimits {
    pub(crate) fn or(n: usize, default: usize) -> usize {
        if n == 0 {
            default
        } else {
            n
        }
    }
}

/// Reads OperationLimits and ServerCapabilities; a limit the server does not publish is 0.
pub async fn read_limits(session: &Session) -> ServerLimits {
    let ids = [
        VariableId::Server_ServerCapabilities_OperationLimits_MaxMonitoredItemsPerCall,
        VariableId::Server_ServerCapabilities_MaxMonitoredItemsPerSubscription,
        VariableId::Server_ServerCapabilities_OperationLimits_MaxNodesPerBrowse,
        VariableId::Server_ServerCapabilities_OperationLimits_MaxNodesPerRead,
        VariableId::Server_ServerCapabilities_MaxSubscriptionsPerSession,
    ];
    let reads: Vec<ReadValueId> = ids
        .iter()
        .map(|id| ReadValueId::from(NodeId::from(*id)))
        .collect();
    let values = session
        .read(&reads, TimestampsToReturn::Neither, 0.0)
        .await
        .unwrap_or_default();
    let n = |i: usize| -> usize {
        match values.get(i).and_then(|v| v.value.as_ref()) {
            Some(Variant::UInt32(x)) => *x as usize,
            Some(Variant::UInt16(x)) => usize::from(*x),
            Some(Variant::UInt64(x)) => usize::try_from(*x).unwrap_or(usize::MAX),
            Some(Variant::Int32(x)) => usize::try_from(*x).unwrap_or(0),
            _ => 0,
        }
    };
    ServerLimits {
        max_monitored_items_per_call: n(0),
        max_monitored_items_per_subscription: n(1),
        max_nodes_per_browse: n(2),
        max_nodes_per_read: n(3),
        max_subscriptions_per_session: n(4),
    }
}

/// The queue size to ask for: `auto` holds every sample of one publishing interval.
pub fn queue_size(group: &Group) -> u32 {
    match group.queue_size {
        QueueSize::Fixed(n) => u32::try_from(n.get()).unwrap_or(u32::MAX),
        QueueSize::Auto => {
            // With sampling "as fast as possible" assume values may change every 50 ms.
            let sampling = group.sampling_interval.max(Duration::from_millis(50));
            let per_interval = group.publishing_interval.as_micros() / sampling.as_micros().max(1);
            u32::try_from(per_interval + 2)
                .unwrap_or(u32::MAX)
                .clamp(4, 10_000)
        }
    }
}

fn filter(deadband: Deadband) -> ExtensionObject {
    let (deadband_type, deadband_value) = match deadband {
        Deadband::None => return ExtensionObject::null(),
        Deadband::Absolute(v) => (DeadbandType::Absolute as u32, v),
        Deadband::Percent(v) => (DeadbandType::Percent as u32, v),
    };
    ExtensionObject::from_message(DataChangeFilter {
        trigger: DataChangeTrigger::StatusValue,
        deadband_type,
        deadband_value,
    })
}

/// A sequence-number gap to recover: (subscription, missing sequence number).
pub type GapSender = UnboundedSender<(u32, u32)>;

/// At most this many missing notification messages of one gap are asked for with Republish
/// (the newest ones: a server keeps only its latest messages); the older ones are counted
/// lost. A broken or hostile server can announce a gap of billions of messages.
pub const MAX_REPUBLISH_PER_GAP: u32 = 16;

/// Losses of one PLC's session, logged once and then at most once a minute per cause.
#[derive(Debug)]
pub struct LossLog {
    /// Notification messages lost (not republished, or the server no longer had them).
    pub gaps: RateLog,
    /// Values with the Overflow bit.
    pub overflows: RateLog,
}

impl LossLog {
    pub fn new() -> Arc<LossLog> {
        Arc::new(LossLog {
            gaps: RateLog::per_minute(),
            overflows: RateLog::per_minute(),
        })
    }
}

/// What a new sequence number means after `last`: the missing messages to ask for with
/// Republish (the newest, at most [`MAX_REPUBLISH_PER_GAP`]) and how many more are lost.
/// A number at or before `last` (a reset or a duplicate) is no gap.
pub fn gap(last: u32, seq: u32) -> (std::ops::Range<u32>, u64) {
    let ahead = seq.wrapping_sub(last);
    if !(2..=u32::MAX / 2).contains(&ahead) {
        return (seq..seq, 0);
    }
    let missing = ahead - 1;
    let asked = missing.min(MAX_REPUBLISH_PER_GAP);
    // Sequence numbers wrap from u32::MAX to 1; a gap across the wrap is asked for in part.
    let from = seq.wrapping_sub(asked);
    let range = if from < seq { from..seq } else { 1..seq };
    let lost = u64::from(missing) - u64::from(range.end - range.start);
    (range, lost)
}

/// Where a PLC's subscriptions report what went missing: the gaps to recover and the lines
/// that say what was lost.
#[derive(Debug, Clone)]
pub struct Recovery {
    pub gaps: GapSender,
    pub losses: Arc<LossLog>,
}

/// Hands notifications of one subscription to the pipeline; never blocks for long.
pub(crate) struct Callback {
    watch: Arc<Watch>,
    tx: SampleSender,
    metrics: Arc<PlcMetrics>,
    subscription: Arc<AtomicU32>,
    last_seq: Option<u32>,
    gaps: GapSender,
    losses: Arc<LossLog>,
}

impl Callback {
    /// The callback of a subscription whose items `watch` decodes; the id is set once the
    /// subscription exists.
    pub(crate) fn new(
        watch: Arc<Watch>,
        tx: &SampleSender,
        metrics: &Arc<PlcMetrics>,
        recovery: &Recovery,
    ) -> (Callback, Arc<AtomicU32>) {
        let subscription = Arc::new(AtomicU32::new(0));
        let callback = Callback {
            watch,
            tx: tx.clone(),
            metrics: metrics.clone(),
            subscription: subscription.clone(),
            last_seq: None,
            gaps: recovery.gaps.clone(),
            losses: recovery.losses.clone(),
        };
        (callback, subscription)
    }

    /// Counts the messages missing before `seq` and asks for the newest of them.
    fn check_sequence(&mut self, seq: u32) {
        if let Some(last) = self.last_seq {
            let (ask, lost) = gap(last, seq);
            let missing = u64::from(ask.end - ask.start) + lost;
            if missing > 0 {
                let sub = self.subscription.load(Ordering::Relaxed);
                PlcMetrics::add(&self.metrics.sequence_gaps, missing);
                for n in ask.clone() {
                    let _ = self.gaps.send((sub, n));
                }
                if lost > 0 {
                    PlcMetrics::add(&self.metrics.lost_messages, lost);
                    PlcMetrics::add(&self.metrics.loss_events, lost);
                    if let Some(more) = self.losses.gaps.hit() {
                        warn!(plc = %self.metrics.plc, subscription = sub, last, sequence = seq, missing, lost, republish = ask.end - ask.start, suppressed = more,
                            "notification messages lost: the server skipped more sequence numbers than are asked for again");
                    }
                }
            }
        }
        self.last_seq = Some(seq);
    }
}

impl OnSubscriptionNotificationCore for Callback {
    fn on_subscription_notification(
        &mut self,
        msg: NotificationMessage,
        _items: MonitoredItemMap<'_>,
    ) {
        let has_data = msg
            .notification_data
            .as_ref()
            .is_some_and(|d| !d.is_empty());
        if has_data {
            self.check_sequence(msg.sequence_number);
        }
        let batch = samples(&self.watch, msg, &self.metrics, &self.losses);
        if !batch.is_empty() {
            self.tx.send(batch);
        }
    }
}

/// The samples of a notification message (also used for republished messages).
pub fn samples(
    watch: &Watch,
    msg: NotificationMessage,
    metrics: &PlcMetrics,
    losses: &LossLog,
) -> Vec<crate::sample::Sample> {
    let Some(data) = msg.notification_data else {
        return Vec::new();
    };
    let received = chrono::Utc::now().timestamp_micros();
    let mut out = Vec::new();
    let mut overflows = 0;
    let mut events = 0u64;
    for obj in data {
        if obj.inner_is::<EventNotificationList>() {
            let list = obj.into_inner_as::<EventNotificationList>();
            for e in list.and_then(|l| l.events).unwrap_or_default() {
                let fields = e.event_fields.unwrap_or_default();
                if let Some(row) = watch.event_row(e.client_handle, &fields, received) {
                    events += 1;
                    out.push(row);
                }
            }
            continue;
        }
        let Some(change) = obj.into_inner_as::<DataChangeNotification>() else {
            continue;
        };
        if watch.events.is_some() {
            // An event stream's item has no value (a server may still send its status).
            continue;
        }
        for n in change.monitored_items.unwrap_or_default() {
            let Some(index) = (n.client_handle as usize).checked_sub(1) else {
                continue;
            };
            if n.value.status.is_some_and(|s| s.overflow()) {
                overflows += 1;
            }
            watch.rows(index, n.value, received, Origin::Live, &mut out);
        }
    }
    if !out.is_empty() {
        // Staleness is measured on our clock: a server clock that is wrong (or one far-future
        // source timestamp) must not make a dead PLC look fresh.
        metrics
            .last_sample_us
            .fetch_max(received, Ordering::Relaxed);
    }
    PlcMetrics::add(&metrics.events_received, events);
    PlcMetrics::add(&metrics.samples_received, out.len() as u64 - events);
    if overflows > 0 {
        PlcMetrics::add(&metrics.overflows, overflows);
        PlcMetrics::add(&metrics.loss_events, overflows);
        if let Some(more) = losses.overflows.hit() {
            warn!(plc = %metrics.plc, samples = overflows, suppressed = more,
                "values lost: the server's queue overflowed (samples with the Overflow bit); the subscription's publishing falls behind the changes");
        }
    }
    out
}

/// One created subscription: its id and what its items' samples are decoded with.
#[derive(Debug, Clone)]
pub struct Created {
    pub id: u32,
    pub watch: Arc<Watch>,
    pub losses: Arc<LossLog>,
}

/// What a PLC keeps across subscribe rounds: the server's structures (read again each new
/// session), the backfill of its outages, the last event of each condition.
#[derive(Debug, Clone, Copy)]
pub struct Kept<'a> {
    pub structures: Option<&'a Arc<Structures>>,
    pub backfill: Option<&'a Arc<Backfill>>,
    pub last_events: &'a Arc<LastEvents>,
}

/// What the samples of a PLC's items are decoded with: namespaces, the server's structures.
#[derive(Debug, Clone)]
pub struct Decoding {
    pub ns: Arc<Namespaces>,
    pub structures: Option<Arc<Structures>>,
    pub backfill: Option<Arc<Backfill>>,
    pub last_events: Arc<LastEvents>,
}

/// Creates the subscriptions of one group: split by the server's per-subscription limit,
/// monitored items created in chunks of its per-call limit. Items the server refuses are
/// logged and counted; items refused for lack of room go to a further subscription.
pub async fn subscribe_group(
    session: &Session,
    group: &Group,
    mut targets: Vec<Target>,
    (decoding, limits): (&Decoding, &ServerLimits),
    tx: &SampleSender,
    recovery: &Recovery,
    metrics: &Arc<PlcMetrics>,
) -> Result<Vec<Created>, StatusCode> {
    let per_sub = ServerLimits::or(limits.max_monitored_items_per_subscription, usize::MAX);
    let per_call = ServerLimits::or(limits.max_monitored_items_per_call, 10_000);
    let publishing_ms = group.publishing_interval.as_secs_f64() * 1000.0;
    let keep_alive = ((5_000.0 / publishing_ms.max(1.0)) as u32).clamp(3, 1000);
    let lifetime = (keep_alive * 3).max((60_000.0 / publishing_ms.max(1.0)) as u32);
    let sampling = group.sampling_interval.as_secs_f64() * 1000.0;
    let queue = queue_size(group);
    let filter = filter(group.deadband);
    let mut created = Vec::new();
    while !targets.is_empty() {
        let take = targets.len().min(per_sub);
        let part: Vec<Target> = targets.drain(..take).collect();
        let flatten: Flattening = part
            .iter()
            .enumerate()
            .filter(|(_, t)| !t.flatten.is_empty())
            .map(|(i, t)| {
                let flats = t.flatten.iter().map(|f| Flat::new(&t.item, f.clone()));
                (i, flats.collect())
            })
            .collect();
        let watch = Arc::new(Watch::of_items(
            part.iter().map(|t| t.item.clone()).collect(),
            flatten,
            decoding.ns.clone(),
            decoding.structures.clone(),
        ));
        if let (Some(config), Some(backfill)) = (group.backfill, &decoding.backfill) {
            let tracks = part
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    Some(backfill.track(&group.name, &t.item.node, config, (&watch, i, &t.node)))
                })
                .collect();
            let _ = watch.tracks.set((backfill.clone(), tracks));
        }
        let (callback, sub_id) = Callback::new(watch.clone(), tx, metrics, recovery);
        let id = session
            .create_subscription(
                group.publishing_interval,
                lifetime,
                keep_alive,
                0,
                0,
                true,
                callback,
            )
            .await;
        let id = match id {
            Ok(id) => id,
            Err(e) => return Err(undo(session, &created, None, e.status()).await),
        };
        sub_id.store(id, Ordering::Relaxed);
        let mut overflow: Vec<Target> = Vec::new();
        let mut ok = 0u64;
        for (chunk_no, chunk) in part.chunks(per_call).enumerate() {
            let requests: Vec<MonitoredItemCreateRequest> = chunk
                .iter()
                .enumerate()
                .map(|(i, t)| MonitoredItemCreateRequest {
                    item_to_monitor: ReadValueId::from(t.node.clone()),
                    monitoring_mode: MonitoringMode::Reporting,
                    requested_parameters: MonitoringParameters {
                        client_handle: (chunk_no * per_call + i + 1) as u32,
                        sampling_interval: sampling,
                        filter: filter.clone(),
                        queue_size: queue,
                        discard_oldest: true,
                    },
                })
                .collect();
            let results = match session
                .create_monitored_items(id, TimestampsToReturn::Both, requests)
                .await
            {
                Ok(r) => r,
                Err(e) => return Err(undo(session, &created, Some(id), e.status()).await),
            };
            for (t, r) in chunk.iter().zip(results) {
                let status = r.result.status_code;
                if status.is_good() {
                    ok += 1;
                } else if status == StatusCode::BadTooManyMonitoredItems {
                    overflow.push(t.clone());
                } else {
                    PlcMetrics::add(&metrics.failed_items, 1);
                    warn!(plc = %t.item.plc, group = %group.name, node = %t.item.node, status = %status, "node cannot be monitored, skipped");
                }
            }
        }
        PlcMetrics::add(&metrics.monitored_items, ok);
        created.push(Created {
            id,
            watch,
            losses: recovery.losses.clone(),
        });
        if !overflow.is_empty() {
            info!(group = %group.name, items = overflow.len(), "server subscription full, opening another one");
            // Items keep their Arc<Item>; they are placed again at the front of the queue.
            overflow.extend(targets);
            targets = overflow;
        }
    }
    Ok(created)
}

/// Deletes the subscriptions of a group that could not be subscribed completely (the caller
/// retries from scratch); returns `status`.
async fn undo(
    session: &Session,
    created: &[Created],
    current: Option<u32>,
    status: StatusCode,
) -> StatusCode {
    let ids: Vec<u32> = created.iter().map(|c| c.id).chain(current).collect();
    if !ids.is_empty() {
        let _ = session.delete_subscriptions(&ids).await;
    }
    status
}

/// Items per subscription above which a group is spread over several subscriptions (when the
/// server allows them). async-opcua keeps two Publish requests in flight per subscription,
/// and servers cap the notifications of one Publish response (node-opcua: 1000): a group of
/// 5,000 items changing 10 times a second needs 25 responses per 500 ms, one round trip each
/// with a single subscription, and the server's queues overflow while they queue up.
pub const SPREAD_ITEMS: usize = 1000;

/// Subscriptions per session assumed when the server does not announce its limit
/// (MaxSubscriptionsPerSession): the default of async-opcua and node-opcua servers.
pub const ASSUMED_MAX_SUBSCRIPTIONS: usize = 10;

/// At most how many items one subscription of a group of `items` gets: [`SPREAD_ITEMS`] while
/// the group's share of the server's subscriptions lasts (`spread`), all of them otherwise.
pub fn items_per_subscription(
    items: usize,
    groups: usize,
    limits: &ServerLimits,
    spread: bool,
) -> usize {
    if !spread {
        return items.max(1);
    }
    let max_subs = ServerLimits::or(
        limits.max_subscriptions_per_session,
        ASSUMED_MAX_SUBSCRIPTIONS,
    );
    let share = (max_subs / groups.max(1)).max(1);
    let parts = items.div_ceil(SPREAD_ITEMS).clamp(1, share);
    items.div_ceil(parts).max(1)
}

/// Subscribes every group of a PLC. Returns the subscriptions and how long it took. With
/// `spread`, large groups are spread over several subscriptions ([`items_per_subscription`]).
/// On failure, the subscriptions created so far are deleted again.
#[allow(clippy::too_many_arguments)]
pub async fn subscribe_all(
    session: &Session,
    plc: &crate::config::Plc,
    ns: &Namespaces,
    tx: &SampleSender,
    recovery: &Recovery,
    metrics: &Arc<PlcMetrics>,
    spread: bool,
    kept: Kept<'_>,
) -> Result<Vec<Created>, StatusCode> {
    let Kept {
        structures,
        backfill,
        last_events,
    } = kept;
    let started = Instant::now();
    let limits = read_limits(session).await;
    let decoding = Decoding {
        ns: Arc::new(ns.clone()),
        structures: structures.cloned(),
        backfill: backfill.cloned(),
        last_events: last_events.clone(),
    };
    metrics.monitored_items.store(0, Ordering::Relaxed);
    let mut all: Vec<Created> = Vec::new();
    for group in &plc.groups {
        let t = targets(session, &plc.id, group, ns, &limits, metrics).await;
        let n = t.len();
        let mut group_limits = limits;
        // Event streams take a subscription each from the server's share too.
        let subscriptions = plc.groups.len() + plc.events.len();
        let per_sub = items_per_subscription(n, subscriptions, &limits, spread);
        group_limits.max_monitored_items_per_subscription =
            ServerLimits::or(limits.max_monitored_items_per_subscription, usize::MAX).min(per_sub);
        let created = subscribe_group(
            session,
            group,
            t,
            (&decoding, &group_limits),
            tx,
            recovery,
            metrics,
        )
        .await;
        let created = match created {
            Ok(c) => c,
            Err(status) => return Err(undo(session, &all, None, status).await),
        };
        info!(plc = %plc.id, group = %group.name, nodes = n, subscriptions = created.len(), "group subscribed");
        all.extend(created);
    }
    match events::subscribe_events(session, plc, &decoding, (tx, recovery, metrics)).await {
        Ok(created) => all.extend(created),
        Err(status) => return Err(undo(session, &all, None, status).await),
    }
    metrics
        .subscribe_us
        .store(started.elapsed().as_micros() as u64, Ordering::Relaxed);
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::Item;
    use opcua::types::{DataValue, DateTime, MonitoredItemNotification};

    fn item() -> Arc<Item> {
        Arc::new(Item {
            plc: "p".into(),
            group: "g".into(),
            node: "n".into(),
            name: "n".into(),
        })
    }

    fn watch() -> Arc<Watch> {
        Arc::new(Watch::of_items(
            vec![item()],
            Default::default(),
            Arc::new(Namespaces(vec![])),
            None,
        ))
    }

    fn callback(
        metrics: &Arc<PlcMetrics>,
    ) -> (
        Callback,
        tokio::sync::mpsc::UnboundedReceiver<(u32, u32)>,
        std::sync::mpsc::Receiver<crate::pipeline::Batch>,
    ) {
        let (gaps, gap_rx) = tokio::sync::mpsc::unbounded_channel();
        let (tx, rx) = crate::pipeline::channel(16, metrics.clone());
        let cb = Callback {
            watch: watch(),
            tx,
            metrics: metrics.clone(),
            subscription: Arc::new(AtomicU32::new(7)),
            last_seq: None,
            gaps,
            losses: LossLog::new(),
        };
        (cb, gap_rx, rx)
    }

    #[test]
    fn a_gap_of_999999_messages_asks_for_the_newest_16_and_counts_the_rest_lost() {
        let metrics = PlcMetrics::new("p");
        let (mut cb, mut gaps, _rx) = callback(&metrics);
        cb.check_sequence(1);
        cb.check_sequence(1_000_001);
        let mut asked = Vec::new();
        while let Ok(g) = gaps.try_recv() {
            asked.push(g);
        }
        let expected: Vec<(u32, u32)> = (999_985..=1_000_000).map(|s| (7, s)).collect();
        assert_eq!(asked, expected);
        assert_eq!(PlcMetrics::get(&metrics.sequence_gaps), 999_999);
        assert_eq!(PlcMetrics::get(&metrics.lost_messages), 999_999 - 16);
        assert_eq!(PlcMetrics::get(&metrics.loss_events), 999_999 - 16);
    }

    #[test]
    fn large_groups_are_spread_within_the_servers_subscriptions() {
        let limits = |max_subs| ServerLimits {
            max_monitored_items_per_call: 0,
            max_monitored_items_per_subscription: 0,
            max_nodes_per_browse: 0,
            max_nodes_per_read: 0,
            max_subscriptions_per_session: max_subs,
        };
        // 5,000 items, one group, limit not announced (10 assumed): 5 x 1,000.
        assert_eq!(items_per_subscription(5000, 1, &limits(0), true), 1000);
        assert_eq!(items_per_subscription(999, 1, &limits(0), true), 999);
        // 100,000 items share 10 subscriptions; 5 groups get 2 each.
        assert_eq!(items_per_subscription(100_000, 1, &limits(0), true), 10_000);
        assert_eq!(items_per_subscription(100_000, 5, &limits(0), true), 50_000);
        // More groups than subscriptions: one each (the server decides).
        assert_eq!(items_per_subscription(5000, 20, &limits(10), true), 5000);
        // An announced limit counts; no spreading after the server refused.
        assert_eq!(items_per_subscription(5000, 1, &limits(2), true), 2500);
        assert_eq!(items_per_subscription(5000, 1, &limits(0), false), 5000);
    }

    #[test]
    fn gaps_small_wrapped_and_backwards() {
        assert_eq!(gap(5, 6), (6..6, 0));
        assert_eq!(gap(5, 8), (6..8, 0));
        assert_eq!(gap(5, 5), (5..5, 0), "a duplicate is no gap");
        assert_eq!(gap(500, 3), (3..3, 0), "a reset is no gap");
        // Across the wrap (u32::MAX -> 1) only the part after it is asked for.
        assert_eq!(gap(u32::MAX - 1, 3), (1..3, 2));
        // A huge jump is a gap, not ignored.
        let (ask, lost) = gap(1, u32::MAX / 2);
        assert_eq!(ask.end - ask.start, MAX_REPUBLISH_PER_GAP);
        assert_eq!(lost + 16, u64::from(u32::MAX / 2 - 2));
    }

    fn message(source: DateTime, status: StatusCode) -> NotificationMessage {
        let change = DataChangeNotification {
            monitored_items: Some(vec![MonitoredItemNotification {
                client_handle: 1,
                value: DataValue {
                    value: Some(Variant::Int32(1)),
                    status: Some(status),
                    source_timestamp: Some(source),
                    server_timestamp: Some(source),
                    ..Default::default()
                },
            }]),
            diagnostic_infos: None,
        };
        NotificationMessage {
            sequence_number: 1,
            publish_time: source,
            notification_data: Some(vec![ExtensionObject::from_message(change)]),
        }
    }

    #[test]
    fn staleness_is_measured_on_the_receive_time_not_a_far_future_server_clock() {
        let metrics = PlcMetrics::new("p");
        let future = DateTime::from(chrono::Utc::now() + chrono::Duration::days(3650));
        let before = chrono::Utc::now().timestamp_micros();
        let batch = samples(
            &watch(),
            message(future, StatusCode::Good),
            &metrics,
            &LossLog::new(),
        );
        let after = chrono::Utc::now().timestamp_micros();
        assert_eq!(batch.len(), 1);
        let last = metrics.last_sample_us.load(Ordering::Relaxed);
        assert!(
            (before..=after).contains(&last),
            "{last} not in {before}..={after}"
        );
    }

    #[test]
    fn an_overflow_bit_counts_as_a_loss() {
        let metrics = PlcMetrics::new("p");
        let status = StatusCode::Good.set_overflow(true);
        let batch = samples(
            &watch(),
            message(DateTime::now(), status),
            &metrics,
            &LossLog::new(),
        );
        assert_eq!(batch.len(), 1);
        assert_eq!(PlcMetrics::get(&metrics.overflows), 1);
        assert_eq!(PlcMetrics::get(&metrics.loss_events), 1);
    }
}
