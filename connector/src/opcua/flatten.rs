//! Chosen fields of a structure as rows of their own (`flatten = ["Speed", "Axes[1].Position"]`
//! on a node): next to the structure's row, one row per field, named `<tag>.<field path>`,
//! with the field's own type and value column, so users who query by tag find `Motor.Speed`
//! like any other tag.
//!
//! A field that is not there is never invented: the row lands without a value and with a Bad
//! status saying why (`BadNoMatch`: the structure has no such field or element;
//! `BadDataTypeIdUnknown`: the value could not be decoded as a structure), logged once per
//! field. A sample without a value (a Bad status from the PLC) gives rows with its status.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use opcua::types::custom::DynamicStructure;
use opcua::types::{DataValue, StatusCode, Variant};
use tracing::warn;

use crate::config::{FieldPath, FieldStep};
use crate::opcua::backfill::Tracks;
use crate::opcua::convert;
use crate::opcua::events::EventDecode;
use crate::opcua::resolve::Namespaces;
use crate::opcua::structures::Structures;
use crate::sample::{Item, Origin, Sample, SampleValue, TypeName};

/// One flattened field of a monitored structure.
#[derive(Debug)]
pub struct Flat {
    pub path: FieldPath,
    /// The row's identity: the structure's node, named `<tag>.<path>`.
    pub item: Arc<Item>,
    warned: AtomicBool,
}

impl Flat {
    pub fn new(structure: &Item, path: FieldPath) -> Flat {
        let item = Arc::new(Item {
            name: format!("{}.{}", structure.name, path).into(),
            ..structure.clone()
        });
        Flat {
            path,
            item,
            warned: AtomicBool::new(false),
        }
    }
}

/// The flattened fields of a subscription's items, by item index (client handle - 1).
pub type Flattening = HashMap<usize, Vec<Flat>>;

/// What a monitored item's samples are decoded with.
#[derive(Debug)]
pub struct Watch {
    /// Client handle `i + 1` is `items[i]`.
    pub items: Vec<Arc<Item>>,
    pub flatten: Flattening,
    pub ns: Arc<Namespaces>,
    pub structures: Option<Arc<Structures>>,
    /// Backfilled nodes (`backfill = true` groups): their tracks by item index, set once the
    /// watch exists.
    pub tracks: OnceLock<Tracks>,
    /// An event stream's subscription: how its events' fields are read (its one item, client
    /// handle 1, is the stream).
    pub events: Option<EventDecode>,
}

impl Watch {
    /// A subscription of samples: its items, their flattened fields.
    pub fn of_items(
        items: Vec<Arc<Item>>,
        flatten: Flattening,
        ns: Arc<Namespaces>,
        structures: Option<Arc<Structures>>,
    ) -> Watch {
        Watch {
            items,
            flatten,
            ns,
            structures,
            tracks: OnceLock::new(),
            events: None,
        }
    }

    /// The row of one event of the stream with client handle `handle`.
    pub fn event_row(&self, handle: u32, fields: &[Variant], received_us: i64) -> Option<Sample> {
        let decode = self.events.as_ref()?;
        let stream = self.items.get((handle as usize).checked_sub(1)?)?;
        decode.row(stream, fields, received_us, &self.ns)
    }

    /// The rows of one notification of item `index` (or of a value read from history): its
    /// own, then its flattened fields.
    pub fn rows(
        &self,
        index: usize,
        dv: DataValue,
        received_us: i64,
        origin: Origin,
        out: &mut Vec<Sample>,
    ) {
        let Some(item) = self.items.get(index) else {
            return;
        };
        // No hashing on the common path: most subscriptions flatten nothing.
        let flats: &[Flat] = if self.flatten.is_empty() {
            &[]
        } else {
            self.flatten.get(&index).map_or(&[], Vec::as_slice)
        };
        // The fields are taken before the value moves into the structure's row; `None`: the
        // sample has no value.
        let fields: Vec<Option<Result<Variant, StatusCode>>> = flats
            .iter()
            .map(|f| dv.value.as_ref().map(|v| pick(v, &f.path).cloned()))
            .collect();
        let structures = self.structures.as_deref();
        let mut row = convert::sample(item, dv, received_us, &self.ns, structures);
        row.origin = origin;
        if origin == Origin::Live {
            if let Some((backfill, tracks)) = self.tracks.get() {
                if let Some(Some(track)) = tracks.get(index) {
                    let has_value = !matches!(row.value, SampleValue::Null);
                    backfill.seen(track, row.time_us, has_value);
                }
            }
        }
        let mut extra = Vec::with_capacity(flats.len());
        for (flat, field) in flats.iter().zip(fields) {
            let (status, (type_name, value)) = match field {
                Some(Ok(v)) => (row.status, convert::named(v, &self.ns, structures)),
                None => (row.status, (TypeName::NULL, SampleValue::Null)),
                Some(Err(why)) => {
                    if !flat.warned.swap(true, Ordering::Relaxed) {
                        warn!(plc = %item.plc, node = %item.node, field = %flat.path, status = %why,
                            "a flattened field is not in the structure's value: its rows land without a value and with this status (said once per field)");
                    }
                    (why.bits(), (TypeName::NULL, SampleValue::Null))
                }
            };
            extra.push(Sample {
                item: flat.item.clone(),
                time_us: row.time_us,
                server_time_us: row.server_time_us,
                status,
                type_name,
                value,
                origin: row.origin,
            });
        }
        out.push(row);
        out.extend(extra);
    }
}

/// The field at `path` inside a structure value.
pub fn pick<'a>(v: &'a Variant, path: &FieldPath) -> Result<&'a Variant, StatusCode> {
    let mut at = v;
    for step in &path.steps {
        at = match (step, at) {
            (FieldStep::Field(name), Variant::ExtensionObject(eo)) => {
                let Some(s) = eo.inner_as::<DynamicStructure>() else {
                    return Err(StatusCode::BadDataTypeIdUnknown);
                };
                s.get_field_by_name(name).ok_or(StatusCode::BadNoMatch)?
            }
            (FieldStep::Index(i), Variant::Array(a)) => {
                a.values.get(*i).ok_or(StatusCode::BadNoMatch)?
            }
            _ => return Err(StatusCode::BadNoMatch),
        };
    }
    Ok(at)
}
