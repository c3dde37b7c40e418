//! In-memory history of the historized variables (every `counter` of the profile): each value
//! produced is kept, as sent to subscribers (value, status, source and server timestamps), for
//! the last `--history-window` and at most [`MAX_VALUES_PER_NODE`] values per node, whether a
//! client is connected or not. [`History::read_raw`] answers a HistoryRead ReadRawModified
//! request for one node, one page at a time.
//!
//! Time ranges follow OPC UA Part 11 (6.4.3): with both times given, forward when
//! start <= end (start <= t < end; start == end returns exactly that time), backward when
//! start > end (start >= t > end); a missing end reads forward from start, a missing start
//! backward from end, and then `num_values_per_node` must be above 0. Bounds: the value at or
//! before the starting time and the value at or after the ending time (in read order), or a
//! `BadBoundNotFound` placeholder at that time; they count towards `num_values_per_node`.

use std::collections::VecDeque;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use std::sync::atomic::AtomicU64;

use opcua::server::node_manager::HistoryNode;
use opcua::server::ContinuationPoint;
use opcua::types::{
    DataValue, DateTime, HistoryData, ReadRawModifiedDetails, StatusCode, TimestampsToReturn,
};

use crate::server::Binding;

/// At most this many values are kept per node, whatever the window.
pub const MAX_VALUES_PER_NODE: usize = 200_000;

/// Position in a node's history: source time in ticks, then arrival order.
type Key = (i64, u64);

#[derive(Debug, Clone)]
struct Entry {
    key: Key,
    value: DataValue,
}

/// Where the next page starts: after the item with this key (in read order).
#[derive(Debug, Clone, Copy)]
pub struct Resume {
    last: Key,
}

/// One page of a raw read.
#[derive(Debug)]
pub struct Page {
    pub values: Vec<DataValue>,
    /// Set when more values remain.
    pub next: Option<Resume>,
}

#[derive(Debug)]
pub struct History {
    window: Duration,
    cap: usize,
    /// One buffer per model variable, `None` for variables without history; set once the
    /// model is built.
    nodes: OnceLock<Vec<Option<Mutex<VecDeque<Entry>>>>>,
    seq: std::sync::atomic::AtomicU64,
}

impl History {
    pub fn new(window: Duration) -> Self {
        History {
            window,
            cap: MAX_VALUES_PER_NODE,
            nodes: OnceLock::new(),
            seq: std::sync::atomic::AtomicU64::new(1),
        }
    }

    /// Says which model variables (by index) keep a history.
    pub fn enable(&self, historized: &[bool]) {
        let _ = self.nodes.set(
            historized
                .iter()
                .map(|&h| h.then(|| Mutex::new(VecDeque::new())))
                .collect(),
        );
    }

    fn buffer(&self, idx: usize) -> Option<&Mutex<VecDeque<Entry>>> {
        self.nodes.get()?.get(idx)?.as_ref()
    }

    pub fn is_historized(&self, idx: usize) -> bool {
        self.buffer(idx).is_some()
    }

    /// Records a value of variable `idx` (ignored if it keeps no history or has no source
    /// timestamp); drops what fell out of the window or over the cap.
    pub fn record(&self, idx: usize, value: &DataValue) {
        let Some(buf) = self.buffer(idx) else { return };
        let Some(ts) = value.source_timestamp else {
            return;
        };
        let seq = self.seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let entry = Entry {
            key: (ts.ticks(), seq),
            value: value.clone(),
        };
        let mut buf = buf.lock().unwrap_or_else(|e| e.into_inner());
        match buf.back() {
            Some(last) if last.key > entry.key => {
                let at = buf.partition_point(|e| e.key < entry.key);
                buf.insert(at, entry);
            }
            _ => buf.push_back(entry),
        }
        let window_ticks = i64::try_from(self.window.as_nanos() / 100).unwrap_or(i64::MAX);
        let newest = buf.back().map_or(0, |e| e.key.0);
        let oldest_kept = newest.saturating_sub(window_ticks);
        while buf.len() > self.cap || buf.front().is_some_and(|e| e.key.0 < oldest_kept) {
            buf.pop_front();
        }
    }

    /// One page of a raw read of variable `idx`, resuming after `resume` when given.
    pub fn read_raw(
        &self,
        idx: usize,
        d: &ReadRawModifiedDetails,
        resume: Option<Resume>,
    ) -> Result<Page, StatusCode> {
        let buf = self
            .buffer(idx)
            .ok_or(StatusCode::BadHistoryOperationUnsupported)?;
        let (start, end) = (
            (!d.start_time.is_null()).then(|| d.start_time.ticks()),
            (!d.end_time.is_null()).then(|| d.end_time.ticks()),
        );
        // (forward?, from, to)
        let (forward, from, to) = match (start, end) {
            (None, None) => return Err(StatusCode::BadInvalidTimestampArgument),
            (Some(_), None) | (None, Some(_)) if d.num_values_per_node == 0 => {
                return Err(StatusCode::BadInvalidTimestampArgument)
            }
            (Some(s), None) => (true, s, None),
            (None, Some(e)) => (false, e, None),
            (Some(s), Some(e)) => (s <= e, s, Some(e)),
        };
        let items = {
            let buf = buf.lock().unwrap_or_else(|e| e.into_inner());
            select(&buf, forward, from, to, d.return_bounds)
        };
        let begin = match resume {
            None => 0,
            Some(r) if forward => items.partition_point(|(k, _)| *k <= r.last),
            Some(r) => items.partition_point(|(k, _)| *k >= r.last),
        };
        let rest = &items[begin.min(items.len())..];
        let limit = match d.num_values_per_node {
            0 => rest.len(),
            n => (n as usize).min(rest.len()),
        };
        let page = &rest[..limit];
        let next = (limit < rest.len())
            .then(|| page.last().map(|(k, _)| Resume { last: *k }))
            .flatten();
        Ok(Page {
            values: page.iter().map(|(_, v)| v.clone()).collect(),
            next,
        })
    }
}

/// The values of a read in read order, each with its key, bounds included when asked.
fn select(
    buf: &VecDeque<Entry>,
    forward: bool,
    from: i64,
    to: Option<i64>,
    bounds: bool,
) -> Vec<(Key, DataValue)> {
    let placeholder = |t: i64, seq: u64| {
        let time = DateTime::from(t);
        (
            (t, seq),
            DataValue {
                status: Some(StatusCode::BadBoundNotFound),
                source_timestamp: Some(time),
                server_timestamp: Some(time),
                ..DataValue::null()
            },
        )
    };
    let pick = |e: &Entry| (e.key, e.value.clone());
    let mut out = Vec::new();
    if forward {
        let lo = buf.partition_point(|e| e.key.0 < from);
        let hi = match to {
            Some(t) if t == from => buf.partition_point(|e| e.key.0 <= t),
            Some(t) => buf.partition_point(|e| e.key.0 < t),
            None => buf.len(),
        };
        if bounds && buf.get(lo).is_none_or(|e| e.key.0 != from) {
            out.push(match lo.checked_sub(1).and_then(|i| buf.get(i)) {
                Some(e) => pick(e),
                None => placeholder(from, 0),
            });
        }
        out.extend(buf.range(lo..hi.max(lo)).map(pick));
        if let (true, Some(t)) = (bounds, to) {
            out.push(match buf.get(hi).filter(|e| e.key.0 >= t) {
                Some(e) => pick(e),
                None => placeholder(t, u64::MAX),
            });
        }
    } else {
        let hi = buf.partition_point(|e| e.key.0 <= from);
        let lo = match to {
            Some(t) => buf.partition_point(|e| e.key.0 <= t),
            None => 0,
        };
        if bounds
            && hi
                .checked_sub(1)
                .and_then(|i| buf.get(i))
                .is_none_or(|e| e.key.0 != from)
        {
            out.push(match buf.get(hi) {
                Some(e) => pick(e),
                None => placeholder(from, u64::MAX),
            });
        }
        out.extend(buf.range(lo.min(hi)..hi).rev().map(pick));
        if let (true, Some(t)) = (bounds, to) {
            out.push(match lo.checked_sub(1).and_then(|i| buf.get(i)) {
                Some(e) => pick(e),
                None => placeholder(t, 0),
            });
        }
    }
    out
}

/// Answers one node of a HistoryRead ReadRawModified request (the node manager's hook):
/// resumes from the node's continuation point, sets the page, the next continuation point,
/// the status (Good, or GoodNoData for an empty page) and applies `timestamps_to_return`.
pub fn answer(
    history: &History,
    binding: &Binding,
    details: &ReadRawModifiedDetails,
    node: &mut HistoryNode,
    timestamps_to_return: TimestampsToReturn,
    answered: &AtomicU64,
) {
    let Some(&idx) = binding.vars.get(node.node_id()) else {
        node.set_status(StatusCode::BadHistoryOperationUnsupported);
        return;
    };
    let resume = match node.continuation_point() {
        None => None,
        Some(cp) => match cp.get::<Resume>() {
            Some(r) => Some(*r),
            None => {
                node.set_status(StatusCode::BadContinuationPointInvalid);
                return;
            }
        },
    };
    match history.read_raw(idx, details, resume) {
        Err(status) => node.set_status(status),
        Ok(page) => {
            let values: Vec<DataValue> = page
                .values
                .into_iter()
                .map(|mut v| {
                    use TimestampsToReturn as T;
                    if matches!(timestamps_to_return, T::Server | T::Neither) {
                        v.source_timestamp = None;
                    }
                    if matches!(timestamps_to_return, T::Source | T::Neither) {
                        v.server_timestamp = None;
                    }
                    v
                })
                .collect();
            let status = if values.is_empty() {
                StatusCode::GoodNoData
            } else {
                StatusCode::Good
            };
            node.set_next_continuation_point(
                page.next.map(|r| ContinuationPoint::new(Box::new(r))),
            );
            node.set_result(HistoryData {
                data_values: Some(values),
            });
            node.set_status(status);
            answered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(t: i64, v: u32) -> DataValue {
        DataValue {
            value: Some(v.into()),
            status: Some(StatusCode::Good),
            source_timestamp: Some(DateTime::from(t)),
            server_timestamp: Some(DateTime::from(t)),
            ..DataValue::null()
        }
    }

    fn history(n: u32) -> History {
        let h = History::new(Duration::from_secs(3600));
        h.enable(&[true, false]);
        // one value every 1,000 ticks (100 µs), from tick 10,000
        for i in 0..n {
            h.record(0, &value(10_000 + i64::from(i) * 1_000, i));
        }
        h
    }

    fn details(start: i64, end: i64, n: u32, bounds: bool) -> ReadRawModifiedDetails {
        let t = |x: i64| {
            if x == 0 {
                DateTime::null()
            } else {
                DateTime::from(x)
            }
        };
        ReadRawModifiedDetails {
            is_read_modified: false,
            start_time: t(start),
            end_time: t(end),
            num_values_per_node: n,
            return_bounds: bounds,
        }
    }

    fn numbers(p: &Page) -> Vec<Option<u32>> {
        p.values
            .iter()
            .map(|v| match v.value {
                Some(opcua::types::Variant::UInt32(x)) => Some(x),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn ranges_directions_pages_and_bounds() {
        let h = history(10); // values 0..=9 at 10_000..=19_000
        let all = h
            .read_raw(0, &details(10_000, 20_000, 0, false), None)
            .unwrap();
        assert_eq!(numbers(&all), (0..10).map(Some).collect::<Vec<_>>());
        assert!(all.next.is_none());
        // end excluded, start included
        let p = h
            .read_raw(0, &details(12_000, 15_000, 0, false), None)
            .unwrap();
        assert_eq!(numbers(&p), vec![Some(2), Some(3), Some(4)]);
        // backward: start included, end excluded
        let p = h
            .read_raw(0, &details(15_000, 12_000, 0, false), None)
            .unwrap();
        assert_eq!(numbers(&p), vec![Some(5), Some(4), Some(3)]);
        // pages of 3 give the same values
        let mut seen = Vec::new();
        let mut resume = None;
        loop {
            let p = h
                .read_raw(0, &details(10_000, 20_000, 3, false), resume)
                .unwrap();
            seen.extend(numbers(&p));
            match p.next {
                Some(r) => resume = Some(r),
                None => break,
            }
        }
        assert_eq!(seen, numbers(&all));
        // no end: forward from start; no start: backward from end
        let p = h.read_raw(0, &details(17_000, 0, 5, false), None).unwrap();
        assert_eq!(numbers(&p), vec![Some(7), Some(8), Some(9)]);
        let p = h.read_raw(0, &details(0, 11_000, 5, false), None).unwrap();
        assert_eq!(numbers(&p), vec![Some(1), Some(0)]);
        assert!(h.read_raw(0, &details(0, 11_000, 0, false), None).is_err());
        assert!(h.read_raw(1, &details(1, 11_000, 0, false), None).is_err());
        // bounds: the value before the start and the one at the end
        let p = h
            .read_raw(0, &details(12_500, 15_000, 0, true), None)
            .unwrap();
        assert_eq!(numbers(&p), vec![Some(2), Some(3), Some(4), Some(5)]);
        let p = h
            .read_raw(0, &details(5_000, 25_000, 0, true), None)
            .unwrap();
        assert_eq!(p.values.len(), 12);
        assert_eq!(p.values[0].status, Some(StatusCode::BadBoundNotFound));
        assert_eq!(p.values[11].status, Some(StatusCode::BadBoundNotFound));
        // nothing in range
        let p = h
            .read_raw(0, &details(30_000, 40_000, 0, false), None)
            .unwrap();
        assert!(p.values.is_empty());
    }

    #[test]
    fn keeps_the_window_and_the_cap() {
        let h = History::new(Duration::from_micros(500)); // 5,000 ticks
        h.enable(&[true]);
        for i in 0..20u32 {
            h.record(0, &value(10_000 + i64::from(i) * 1_000, i));
        }
        let p = h.read_raw(0, &details(1, 100_000, 0, false), None).unwrap();
        assert_eq!(numbers(&p), (14..20).map(Some).collect::<Vec<_>>());
    }
}
