//! The two tables a Parquet sink writes: samples (schema 3, the data set under `dir`) and
//! events (under `events_dir`), and the row builders of each behind one type.

use arrow_array::RecordBatch;
use arrow_schema::{ArrowError, SchemaRef};

use super::events::{
    events_schema, EventBatchBuilder, EVENTS_SCHEMA_VERSION, EVENT_DICTIONARY_COLUMNS,
};
use super::schema::{self, BatchBuilder};
use crate::sample::Sample;

/// Which table a sink writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    Samples,
    Events,
}

impl Table {
    pub fn schema(self) -> SchemaRef {
        match self {
            Table::Samples => schema::schema(),
            Table::Events => events_schema(),
        }
    }

    pub fn version(self) -> &'static str {
        match self {
            Table::Samples => schema::SCHEMA_VERSION,
            Table::Events => EVENTS_SCHEMA_VERSION,
        }
    }

    /// Columns written with dictionary encoding.
    pub fn dictionary_columns(self) -> Vec<&'static str> {
        match self {
            Table::Samples => {
                let mut c = schema::DICTIONARY_COLUMNS.to_vec();
                c.push(schema::COL_VALUE_STRING);
                c
            }
            Table::Events => EVENT_DICTIONARY_COLUMNS.to_vec(),
        }
    }

    /// Columns written with DELTA_BINARY_PACKED.
    pub fn delta_columns(self) -> &'static [&'static str] {
        match self {
            Table::Samples => &[
                schema::COL_TIME,
                schema::COL_SERVER_TIME,
                schema::COL_STATUS,
                schema::COL_VALUE_INT,
                schema::COL_VALUE_UINT,
                schema::COL_VALUE_TIME,
            ],
            Table::Events => &["time", "receive_time"],
        }
    }

    /// Columns written with BYTE_STREAM_SPLIT.
    pub fn split_columns(self) -> &'static [&'static str] {
        match self {
            Table::Samples => &[schema::COL_VALUE_DOUBLE],
            Table::Events => &[],
        }
    }

    pub(crate) fn builder(self, rows: usize) -> Rows {
        match self {
            Table::Samples => Rows::Samples(BatchBuilder::new(rows)),
            Table::Events => Rows::Events(EventBatchBuilder::new()),
        }
    }

    /// Whether `sample` is a row of this table.
    pub fn holds(self, sample: &Sample) -> bool {
        matches!(sample.value, crate::sample::SampleValue::Event(_)) == (self == Table::Events)
    }
}

/// The rows buffered for one chunk, of either table.
pub(crate) enum Rows {
    Samples(BatchBuilder),
    Events(EventBatchBuilder),
}

impl Rows {
    pub(crate) fn rows(&self) -> usize {
        match self {
            Rows::Samples(b) => b.rows(),
            Rows::Events(b) => b.rows(),
        }
    }

    pub(crate) fn var_bytes(&self) -> usize {
        match self {
            Rows::Samples(b) => b.var_bytes(),
            Rows::Events(b) => b.var_bytes(),
        }
    }

    pub(crate) fn time_range(&self) -> Option<(i64, i64)> {
        match self {
            Rows::Samples(b) => b.time_range(),
            Rows::Events(b) => b.time_range(),
        }
    }

    pub(crate) fn append(&mut self, sample: &Sample) {
        match self {
            Rows::Samples(b) => b.append(sample),
            Rows::Events(b) => b.append(sample),
        }
    }

    pub(crate) fn finish(&mut self) -> Result<RecordBatch, ArrowError> {
        match self {
            Rows::Samples(b) => b.finish(),
            Rows::Events(b) => b.finish(),
        }
    }
}
