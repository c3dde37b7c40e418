//! HistoryRead of the counters: contiguous values in order, the same set page by page through
//! continuation points, backward reads, values produced while the endpoint was down, and a
//! server without history (`--no-history`).

mod harness;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use harness::*;
use opcua::client::{DataChangeCallback, HistoryReadAction, Session};
use opcua::nodes::AccessLevel;
use opcua::types::{
    AttributeId, ByteString, DataValue, DateTime, HistoryData, HistoryReadValueId,
    MonitoredItemCreateRequest, NodeId, ReadRawModifiedDetails, ReadValueId, StatusCode,
    TimestampsToReturn, Variant,
};

fn counter(v: &DataValue) -> u64 {
    match v.value {
        Some(Variant::UInt64(x)) => x,
        ref other => panic!("not a UInt64 counter: {other:?}"),
    }
}

fn details(start: DateTime, end: DateTime, n: u32) -> ReadRawModifiedDetails {
    ReadRawModifiedDetails {
        is_read_modified: false,
        start_time: start,
        end_time: end,
        num_values_per_node: n,
        return_bounds: false,
    }
}

/// Reads every page; returns the values, the number of requests and the last status.
async fn read_all(
    session: &Session,
    id: &NodeId,
    d: ReadRawModifiedDetails,
) -> (Vec<DataValue>, usize, StatusCode) {
    read_all_pages(session, id, d, 10_000).await
}

/// Reads up to `pages` pages (the continuation point left is released).
async fn read_all_pages(
    session: &Session,
    id: &NodeId,
    d: ReadRawModifiedDetails,
    pages: usize,
) -> (Vec<DataValue>, usize, StatusCode) {
    let mut cp = ByteString::null();
    let mut values = Vec::new();
    let mut requests = 0;
    loop {
        requests += 1;
        let r = session
            .history_read(
                HistoryReadAction::ReadRawModifiedDetails(d.clone()),
                TimestampsToReturn::Both,
                false,
                &[HistoryReadValueId {
                    node_id: id.clone(),
                    continuation_point: cp.clone(),
                    ..Default::default()
                }],
            )
            .await
            .expect("history read")
            .remove(0);
        if r.status_code.is_bad() {
            return (values, requests, r.status_code);
        }
        if let Some(h) = r.history_data.into_inner_as::<HistoryData>() {
            values.extend(h.data_values.unwrap_or_default());
        }
        if r.continuation_point.is_null_or_empty() {
            return (values, requests, r.status_code);
        }
        cp = r.continuation_point;
        if requests == pages {
            let released = session
                .history_read(
                    HistoryReadAction::ReadRawModifiedDetails(d.clone()),
                    TimestampsToReturn::Both,
                    true,
                    &[HistoryReadValueId {
                        node_id: id.clone(),
                        continuation_point: cp,
                        ..Default::default()
                    }],
                )
                .await
                .expect("release");
            assert_eq!(released[0].status_code, StatusCode::Good);
            return (values, requests, StatusCode::GoodMoreData);
        }
    }
}

async fn attribute(session: &Session, id: &NodeId, attribute: AttributeId) -> Variant {
    let r = session
        .read(
            &[ReadValueId {
                node_id: id.clone(),
                attribute_id: attribute as u32,
                ..Default::default()
            }],
            TimestampsToReturn::Neither,
            0.0,
        )
        .await
        .expect("read attribute");
    r[0].value.clone().expect("attribute value")
}

fn hour() -> chrono::Duration {
    chrono::Duration::hours(1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counter_history_is_contiguous_pages_the_same_and_reads_backward() {
    let sim = start(|_| {}).await;
    let session = connect(&sim).await;
    let filled = node(&session, "Filler.BottlesFilled").await;

    assert_eq!(
        attribute(&session, &filled, AttributeId::Historizing).await,
        Variant::Boolean(true)
    );
    let Variant::Byte(level) = attribute(&session, &filled, AttributeId::UserAccessLevel).await
    else {
        panic!("UserAccessLevel is a Byte")
    };
    assert!(AccessLevel::from_bits_truncate(level).contains(AccessLevel::HISTORY_READ));

    // Notifications carry the same source timestamps as the history.
    let received = Arc::new(Mutex::new(Vec::<DataValue>::new()));
    let sink = received.clone();
    let sub = subscription(
        &session,
        DataChangeCallback::new(move |dv, _| sink.lock().unwrap().push(dv)),
    )
    .await;
    let mut item = MonitoredItemCreateRequest::from(filled.clone());
    item.requested_parameters.sampling_interval = 0.0;
    item.requested_parameters.queue_size = 10;
    session
        .create_monitored_items(sub, TimestampsToReturn::Both, vec![item])
        .await
        .expect("monitored item");
    eventually("40 notifications", Duration::from_secs(15), || async {
        (received.lock().unwrap().len() >= 40).then_some(())
    })
    .await;

    let t0 = DateTime::from(chrono::Utc::now() - hour());
    let t1 = DateTime::now();
    let (all, _, status) = read_all(&session, &filled, details(t0, t1, 0)).await;
    assert_eq!(status, StatusCode::Good);
    assert!(all.len() >= 40, "{} values", all.len());
    let numbers: Vec<u64> = all.iter().map(counter).collect();
    assert_eq!(numbers[0], 1, "the history starts at the first update");
    for w in all.windows(2) {
        assert_eq!(
            counter(&w[1]),
            counter(&w[0]) + 1,
            "contiguous: {numbers:?}"
        );
        assert!(
            w[1].source_timestamp > w[0].source_timestamp,
            "in time order"
        );
    }
    assert!(all.iter().all(|v| v.status() == StatusCode::Good
        && v.server_timestamp.is_some()
        && v.source_timestamp.is_some_and(|t| t < t1)));
    for n in received.lock().unwrap().iter().skip(1) {
        let h = all
            .iter()
            .find(|h| counter(h) == counter(n))
            .unwrap_or_else(|| panic!("notified {} is in the history", counter(n)));
        assert_eq!(
            h.source_timestamp,
            n.source_timestamp,
            "value {}",
            counter(n)
        );
    }

    // Pages of 7 through continuation points: the same values, in the same order.
    let (paged, requests, _) = read_all(&session, &filled, details(t0, t1, 7)).await;
    assert_eq!(paged, all);
    assert_eq!(requests, all.len().div_ceil(7));

    // Backward: start after end.
    let (backward, _, _) = read_all(&session, &filled, details(t1, t0, 0)).await;
    let mut reversed = all.clone();
    reversed.reverse();
    assert_eq!(backward, reversed);
    // No start: the last 5 values before the end, newest first (first page only).
    let (last5, _, _) =
        read_all_pages(&session, &filled, details(DateTime::null(), t1, 5), 1).await;
    assert_eq!(last5, reversed[..5].to_vec());

    // Nothing in the range: GoodNoData.
    let (none, _, status) = read_all(
        &session,
        &filled,
        details(t0, DateTime::from(chrono::Utc::now() - hour() / 2), 0),
    )
    .await;
    assert!(none.is_empty());
    assert_eq!(status, StatusCode::GoodNoData);

    // Read-modified is not supported; neither is a variable without history.
    let mut modified = details(t0, t1, 0);
    modified.is_read_modified = true;
    let (_, _, status) = read_all(&session, &filled, modified).await;
    assert_eq!(status, StatusCode::BadHistoryOperationUnsupported);
    let speed = node(&session, "Filler.Speed").await;
    assert_eq!(
        attribute(&session, &speed, AttributeId::Historizing).await,
        Variant::Boolean(false)
    );
    let (_, _, status) = read_all(&session, &speed, details(t0, t1, 0)).await;
    assert!(status.is_bad(), "{status}");

    assert!(sim.sim.stats().history_reads >= 4 + requests as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_produced_while_the_endpoint_is_down_are_in_the_history() {
    let sim = start(|c| c.faults = vec!["restart@1s:2s".parse().unwrap()]).await;
    eventually(
        "the endpoint restarted",
        Duration::from_secs(15),
        || async { (sim.sim.stats().restarts == 1).then_some(()) },
    )
    .await;
    let session = connect(&sim).await;
    let filled = node(&session, "Filler.BottlesFilled").await;
    let truth = sim
        .sim
        .node_stats(&format!("nsu={NS};s=Filler.BottlesFilled"))
        .expect("ground truth");
    assert!(truth.produced_offline >= 10, "{truth:?}");
    let t0 = DateTime::from(chrono::Utc::now() - hour());
    let (all, _, _) = read_all(&session, &filled, details(t0, DateTime::now(), 0)).await;
    let numbers: Vec<u64> = all.iter().map(counter).collect();
    assert_eq!(numbers[0], 1);
    assert!(
        numbers.len() as u64 >= truth.produced,
        "{} values in the history, {} produced before the read",
        numbers.len(),
        truth.produced
    );
    assert!(numbers.windows(2).all(|w| w[1] == w[0] + 1), "{numbers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_history_counters_are_not_historizing_and_reads_are_refused() {
    let sim = start(|c| c.history = false).await;
    let session = connect(&sim).await;
    let filled = node(&session, "Filler.BottlesFilled").await;
    assert_eq!(
        attribute(&session, &filled, AttributeId::Historizing).await,
        Variant::Boolean(false)
    );
    let Variant::Byte(level) = attribute(&session, &filled, AttributeId::AccessLevel).await else {
        panic!("AccessLevel is a Byte")
    };
    assert!(!AccessLevel::from_bits_truncate(level).contains(AccessLevel::HISTORY_READ));
    let t0 = DateTime::from(chrono::Utc::now() - hour());
    let (values, _, status) = read_all(&session, &filled, details(t0, DateTime::now(), 0)).await;
    assert!(values.is_empty());
    assert_eq!(status, StatusCode::BadHistoryOperationUnsupported);
    assert_eq!(sim.sim.stats().history_reads, 0);
}
