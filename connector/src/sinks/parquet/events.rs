//! The events table (`[[plc.events]]`, docs/parquet.md#events): one row per OPC UA event, in
//! chunks of their own under `events_dir` (the samples' data set stays one schema), rolled,
//! named and made durable like the sample chunks.

use std::sync::{Arc, OnceLock};

use arrow_array::builder::{
    BinaryBuilder, BooleanBuilder, StringBuilder, StringDictionaryBuilder,
    TimestampMicrosecondBuilder, UInt16Builder,
};
use arrow_array::types::Int32Type;
use arrow_array::{ArrayRef, RecordBatch, TimestampMicrosecondArray};
use arrow_schema::{ArrowError, DataType, Field, Schema, SchemaRef, TimeUnit};

use crate::sample::{EventRecord, Sample, SampleValue};

/// Value of the footer key `opcua_connector.schema_version` of an events chunk.
pub const EVENTS_SCHEMA_VERSION: &str = "events-1";

/// The dictionary-encoded columns of the events table.
pub const EVENT_DICTIONARY_COLUMNS: [&str; 7] = [
    "plc",
    "group",
    "event_type",
    "source_node",
    "source_name",
    "condition_id",
    "condition_name",
];

fn timestamp() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

fn dictionary() -> DataType {
    DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8))
}

/// The Arrow schema of the events table, in column order.
pub fn events_schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            Arc::new(Schema::new(vec![
                Field::new("time", timestamp(), false),
                Field::new("receive_time", timestamp(), true),
                Field::new("plc", dictionary(), false),
                Field::new("group", dictionary(), false),
                Field::new("event_id", DataType::Binary, false),
                Field::new("event_type", dictionary(), false),
                Field::new("source_node", dictionary(), false),
                Field::new("source_name", dictionary(), false),
                Field::new("severity", DataType::UInt16, false),
                Field::new("message", DataType::Utf8, false),
                Field::new("condition_id", dictionary(), true),
                Field::new("condition_name", dictionary(), true),
                Field::new("branch_id", DataType::Utf8, true),
                Field::new("retain", DataType::Boolean, true),
                Field::new("enabled", DataType::Boolean, true),
                Field::new("active", DataType::Boolean, true),
                Field::new("acked", DataType::Boolean, true),
                Field::new("confirmed", DataType::Boolean, true),
                Field::new("comment", DataType::Utf8, true),
                Field::new("fields_json", DataType::Utf8, true),
            ]))
        })
        .clone()
}

/// Arrow builders for one record batch of the events table.
pub(crate) struct EventBatchBuilder {
    rows: usize,
    var_bytes: usize,
    time: Vec<i64>,
    receive_time: TimestampMicrosecondBuilder,
    plc: StringDictionaryBuilder<Int32Type>,
    group: StringDictionaryBuilder<Int32Type>,
    event_id: BinaryBuilder,
    event_type: StringDictionaryBuilder<Int32Type>,
    source_node: StringDictionaryBuilder<Int32Type>,
    source_name: StringDictionaryBuilder<Int32Type>,
    severity: UInt16Builder,
    message: StringBuilder,
    condition_id: StringDictionaryBuilder<Int32Type>,
    condition_name: StringDictionaryBuilder<Int32Type>,
    branch_id: StringBuilder,
    retain: BooleanBuilder,
    enabled: BooleanBuilder,
    active: BooleanBuilder,
    acked: BooleanBuilder,
    confirmed: BooleanBuilder,
    comment: StringBuilder,
    fields_json: StringBuilder,
    min_time: i64,
    max_time: i64,
}

impl EventBatchBuilder {
    pub(crate) fn new() -> Self {
        EventBatchBuilder {
            rows: 0,
            var_bytes: 0,
            time: Vec::new(),
            receive_time: TimestampMicrosecondBuilder::new(),
            plc: StringDictionaryBuilder::new(),
            group: StringDictionaryBuilder::new(),
            event_id: BinaryBuilder::new(),
            event_type: StringDictionaryBuilder::new(),
            source_node: StringDictionaryBuilder::new(),
            source_name: StringDictionaryBuilder::new(),
            severity: UInt16Builder::new(),
            message: StringBuilder::new(),
            condition_id: StringDictionaryBuilder::new(),
            condition_name: StringDictionaryBuilder::new(),
            branch_id: StringBuilder::new(),
            retain: BooleanBuilder::new(),
            enabled: BooleanBuilder::new(),
            active: BooleanBuilder::new(),
            acked: BooleanBuilder::new(),
            confirmed: BooleanBuilder::new(),
            comment: StringBuilder::new(),
            fields_json: StringBuilder::new(),
            min_time: i64::MAX,
            max_time: i64::MIN,
        }
    }

    pub(crate) fn rows(&self) -> usize {
        self.rows
    }

    pub(crate) fn var_bytes(&self) -> usize {
        self.var_bytes
    }

    pub(crate) fn time_range(&self) -> Option<(i64, i64)> {
        (self.rows > 0).then_some((self.min_time, self.max_time))
    }

    /// Appends the event of `sample` (other samples are not rows of this table).
    pub(crate) fn append(&mut self, sample: &Sample) {
        let SampleValue::Event(e) = &sample.value else {
            return;
        };
        let e: &EventRecord = e;
        self.rows += 1;
        self.var_bytes += e.message.len()
            + e.event_id.len()
            + e.comment.as_ref().map_or(0, String::len)
            + e.fields_json.as_ref().map_or(0, String::len);
        self.time.push(sample.time_us);
        self.min_time = self.min_time.min(sample.time_us);
        self.max_time = self.max_time.max(sample.time_us);
        self.receive_time.append_option(e.receive_time_us);
        self.plc.append_value(&*sample.item.plc);
        self.group.append_value(&*sample.item.group);
        self.event_id.append_value(&e.event_id);
        self.event_type.append_value(&e.event_type);
        self.source_node.append_value(&e.source_node);
        self.source_name.append_value(&e.source_name);
        self.severity.append_value(e.severity);
        self.message.append_value(&e.message);
        self.condition_id.append_option(e.condition_id.as_deref());
        self.condition_name
            .append_option(e.condition_name.as_deref());
        self.branch_id.append_option(e.branch_id.as_deref());
        self.retain.append_option(e.retain);
        self.enabled.append_option(e.enabled);
        self.active.append_option(e.active);
        self.acked.append_option(e.acked);
        self.confirmed.append_option(e.confirmed);
        self.comment.append_option(e.comment.as_deref());
        self.fields_json.append_option(e.fields_json.as_deref());
    }

    /// The buffered rows, in arrival order (the server's order of events), as a batch.
    pub(crate) fn finish(&mut self) -> Result<RecordBatch, ArrowError> {
        let time = std::mem::take(&mut self.time);
        let columns: Vec<ArrayRef> = vec![
            Arc::new(TimestampMicrosecondArray::from(time).with_timezone("UTC")),
            Arc::new(self.receive_time.finish().with_timezone("UTC")),
            Arc::new(self.plc.finish()),
            Arc::new(self.group.finish()),
            Arc::new(self.event_id.finish()),
            Arc::new(self.event_type.finish()),
            Arc::new(self.source_node.finish()),
            Arc::new(self.source_name.finish()),
            Arc::new(self.severity.finish()),
            Arc::new(self.message.finish()),
            Arc::new(self.condition_id.finish()),
            Arc::new(self.condition_name.finish()),
            Arc::new(self.branch_id.finish()),
            Arc::new(self.retain.finish()),
            Arc::new(self.enabled.finish()),
            Arc::new(self.active.finish()),
            Arc::new(self.acked.finish()),
            Arc::new(self.confirmed.finish()),
            Arc::new(self.comment.finish()),
            Arc::new(self.fields_json.finish()),
        ];
        self.rows = 0;
        self.var_bytes = 0;
        self.min_time = i64::MAX;
        self.max_time = i64::MIN;
        RecordBatch::try_new(events_schema(), columns)
    }
}
