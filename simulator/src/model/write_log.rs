//! The ground truth of client writes: every accepted write of a variable with the time it
//! reached the simulator, the newest [`WRITE_LOG_CAPACITY`] per variable.

use std::collections::VecDeque;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::Value;

/// How many accepted writes a variable keeps (the oldest are dropped).
pub const WRITE_LOG_CAPACITY: usize = 10_000;

/// One accepted client write.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WriteRecord {
    /// UTC microseconds since the Unix epoch: when the Write request reached the simulator's
    /// node manager (the clock of the source timestamps).
    pub at_us: i64,
    /// The value written, as the model holds it.
    pub value: Value,
}

/// The newest accepted writes of one variable, oldest first.
#[derive(Debug, Clone, Default)]
pub struct WriteLog(VecDeque<WriteRecord>);

impl WriteLog {
    pub fn push(&mut self, at: DateTime<Utc>, value: Value) {
        if self.0.len() == WRITE_LOG_CAPACITY {
            self.0.pop_front();
        }
        self.0.push_back(WriteRecord {
            at_us: at.timestamp_micros(),
            value,
        });
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The records, oldest first.
    pub fn to_vec(&self) -> Vec<WriteRecord> {
        self.0.iter().cloned().collect()
    }
}
