//! Structure values (FillerBatch, NozzleStatus[]) decoded by an async-opcua client from the
//! server's DataTypeDefinitions, exactly as the contract's formulas say.

mod harness;

use std::sync::Arc;
use std::time::Duration;

use harness::*;
use opcua::client::custom_types::DataTypeTreeBuilder;
use opcua::types::custom::{DynamicStructure, DynamicTypeLoader};
use opcua::types::{AttributeId, ReadValueId, TimestampsToReturn, Variant};

fn structure(v: &Variant) -> &DynamicStructure {
    match v {
        Variant::ExtensionObject(o) => o
            .inner_as::<DynamicStructure>()
            .unwrap_or_else(|| panic!("not decoded as a dynamic structure: {o:?}")),
        other => panic!("not an ExtensionObject: {other:?}"),
    }
}

fn field<'a>(s: &'a DynamicStructure, name: &str) -> &'a Variant {
    s.get_field_by_name(name)
        .unwrap_or_else(|| panic!("no field {name}"))
}

fn items(v: &Variant) -> Vec<Variant> {
    match v {
        Variant::Array(a) => a.values.clone(),
        other => panic!("not an array: {other:?}"),
    }
}

/// Checks nozzle `i` against the formula at update `n`.
fn check_nozzle(v: &Variant, n: u32, i: u16) {
    let s = structure(v);
    assert_eq!(field(s, "Index"), &Variant::UInt16(i));
    assert_eq!(
        field(s, "FillLevel"),
        &Variant::Double(500.0 + f64::from(i) + f64::from(n % 10) * 0.25),
        "nozzle {i} at n={n}"
    );
    assert_eq!(
        field(s, "Ok"),
        &Variant::Boolean(!(n + u32::from(i)).is_multiple_of(7)),
        "nozzle {i} at n={n}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_and_nozzle_status_decode_with_the_servers_type_definitions() {
    let sim = start(|_| {}).await;
    let session = connect(&sim).await;
    let ns = session.get_namespace_index(NS).await.expect("namespace");

    // The importer's null DefaultEncodingId is repaired: the definition names the encoding.
    let def = session
        .read(
            &[ReadValueId {
                node_id: opcua::types::NodeId::new(ns, "FillerBatch"),
                attribute_id: AttributeId::DataTypeDefinition as u32,
                ..Default::default()
            }],
            TimestampsToReturn::Neither,
            0.0,
        )
        .await
        .expect("read definition");
    let Some(Variant::ExtensionObject(obj)) = &def[0].value else {
        panic!("definition: {:?}", def[0])
    };
    let sd = obj
        .inner_as::<opcua::types::StructureDefinition>()
        .expect("a StructureDefinition");
    assert_eq!(
        sd.default_encoding_id,
        opcua::types::NodeId::new(ns, "FillerBatch.DefaultBinary")
    );

    let tree = DataTypeTreeBuilder::new(|id: &opcua::types::NodeId| {
        id.namespace == 0 || id.namespace == ns
    })
    .build(&session)
    .await
    .expect("data type tree");
    session.add_type_loader(Arc::new(DynamicTypeLoader::new(Arc::new(tree))));

    let batch = node(&session, "Filler.Batch").await;
    let nozzles = node(&session, "Filler.NozzleStatus").await;
    // Null until the first update (500 ms), then values.
    let values = eventually("Batch has a value", Duration::from_secs(10), || async {
        let r = session
            .read(
                &[ReadValueId::from(&batch), ReadValueId::from(&nozzles)],
                TimestampsToReturn::Both,
                0.0,
            )
            .await
            .ok()?;
        matches!(r[0].value, Some(Variant::ExtensionObject(_))).then_some(r)
    })
    .await;
    let b = structure(values[0].value.as_ref().unwrap());
    let Variant::UInt32(n) = field(b, "Count") else {
        panic!("Count is UInt32: {:?}", field(b, "Count"))
    };
    let n = *n;
    assert_eq!(field(b, "Id"), &Variant::from(format!("B-{:05}", n / 100)));
    let recipe = structure(field(b, "Recipe"));
    assert_eq!(field(recipe, "Name"), &Variant::from("Cola 0.5 l"));
    assert_eq!(field(recipe, "TargetVolume"), &Variant::Double(500.0));
    let in_batch = items(field(b, "Nozzles"));
    assert_eq!(in_batch.len(), 4);
    for (i, v) in in_batch.iter().enumerate() {
        check_nozzle(v, n, i as u16);
    }
    // Both nodes update in the same tick, from the same update number.
    let array = items(values[1].value.as_ref().expect("NozzleStatus value"));
    assert_eq!(array.len(), 4);
    for (i, v) in array.iter().enumerate() {
        check_nozzle(v, n, i as u16);
    }

    // The values keep coming, and the ground truth counts them like any other node's.
    let later = eventually("Count advances", Duration::from_secs(10), || async {
        let v = read(&session, &batch).await;
        match field(structure(v.value.as_ref()?), "Count") {
            Variant::UInt32(m) if *m > n => Some(*m),
            _ => None,
        }
    })
    .await;
    let truth = sim
        .sim
        .node_stats(&format!("nsu={NS};s=Filler.Batch"))
        .expect("ground truth");
    assert!(
        truth.produced > u64::from(later),
        "produced {} values, Count {later}",
        truth.produced
    );
}
