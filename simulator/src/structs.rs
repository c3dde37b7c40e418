//! Structure data types of the served nodesets, on the server side: a [`DataTypeTree`] built
//! from the imported DataType nodes (async-opcua builds one only in its client), and the
//! conversion of the model's structure values into `DynamicStructure` ExtensionObjects that
//! are encoded with the type's "Default Binary" encoding id.
//!
//! It also repairs what async-opcua 0.19's NodeSet2 importer leaves out: it matches the
//! "Default Binary" encoding objects by the node id *string of the file* against the node id
//! *remapped to the server's namespace index*, so a structure's `DefaultEncodingId` stays null
//! whenever the file's namespace index differs from the server's (always, for us: ns=1 in the
//! file, ns=2 in the server). [`StructTypes::build`] writes the encoding found by the
//! HasEncoding reference back into every DataTypeDefinition.

use std::collections::HashMap;
use std::io::Write;
use std::sync::Arc;

use opcua::nodes::{NodeBase, TypeTree};
use opcua::server::address_space::{AddressSpace, NodeType};
use opcua::types::custom::{
    DataTypeTree, DynamicStructure, EncodingIds, ParentIds, StructTypeInfo, TypeInfo,
};
use opcua::types::json::JsonEncodable;
use opcua::types::xml::{XmlEncodable, XmlType};
use opcua::types::{
    Array, BinaryEncodable, BrowseDirection, Context, DataTypeDefinition, DataTypeId,
    EncodingResult, ExpandedMessageInfo, ExpandedNodeId, ExtensionObject, NodeId, ReferenceTypeId,
    UaNullable, Variant, VariantScalarTypeId,
};
use tracing::warn;

use crate::convert::{kind_of, to_variant};
use crate::model::{Value, VarType};

/// The structure types of our nodesets and the tree their values are encoded with.
#[derive(Debug, Clone)]
pub struct StructTypes {
    tree: Arc<DataTypeTree>,
}

impl StructTypes {
    /// Reads every DataType below Structure (and Enumeration) in `address_space` (our imported
    /// nodes only), patches their DefaultEncodingId and builds the tree.
    pub fn build(address_space: &mut AddressSpace, type_tree: &dyn TypeTree) -> Self {
        let mut parent_ids = ParentIds::new();
        let mut found = Vec::new();
        let mut stack: Vec<NodeId> =
            vec![DataTypeId::Structure.into(), DataTypeId::Enumeration.into()];
        while let Some(parent) = stack.pop() {
            let kids: Vec<NodeId> = address_space
                .find_references(
                    &parent,
                    Some((ReferenceTypeId::HasSubtype, false)),
                    type_tree,
                    BrowseDirection::Forward,
                )
                .map(|r| r.target_node.clone())
                .collect();
            for k in kids {
                if found.contains(&k) {
                    continue;
                }
                parent_ids.add_type(k.clone(), parent.clone());
                found.push(k.clone());
                stack.push(k);
            }
        }
        let mut infos = Vec::new();
        for id in &found {
            let mut enc = EncodingIds::default();
            let targets: Vec<NodeId> = address_space
                .find_references(
                    id,
                    Some((ReferenceTypeId::HasEncoding, false)),
                    type_tree,
                    BrowseDirection::Forward,
                )
                .map(|r| r.target_node.clone())
                .collect();
            for t in targets {
                let Some(node) = address_space.find(&t) else {
                    continue;
                };
                match node.as_node().browse_name().name.as_ref() {
                    "Default Binary" => enc.binary_id = t,
                    "Default XML" => enc.xml_id = t,
                    "Default JSON" => enc.json_id = t,
                    _ => {}
                }
            }
            let Some(NodeType::DataType(dt)) = address_space.find(id) else {
                continue;
            };
            let Some(def) = dt.data_type_definition().cloned() else {
                continue;
            };
            let name = dt.browse_name().name.as_ref().to_owned();
            infos.push((id.clone(), def, name, enc, dt.is_abstract()));
        }
        let mut tree = DataTypeTree::new(parent_ids);
        for (id, mut def, name, enc, is_abstract) in infos {
            if let DataTypeDefinition::Structure(s) = &mut def {
                if s.default_encoding_id.is_null() && !enc.binary_id.is_null() {
                    s.default_encoding_id = enc.binary_id.clone();
                    if let Some(NodeType::DataType(dt)) = address_space.find_mut(&id) {
                        dt.set_data_type_definition(Some(def.clone()));
                    }
                }
            }
            match TypeInfo::from_type_definition(
                def,
                name,
                Some(enc),
                is_abstract,
                &id,
                tree.parent_ids(),
            ) {
                Ok(info) => tree.add_type(id, info),
                Err(e) => warn!(data_type = %id, error = %e, "structure type not usable"),
            }
        }
        StructTypes {
            tree: Arc::new(tree),
        }
    }

    /// Is `data_type` a structure of our nodesets?
    pub fn is_structure(&self, data_type: &NodeId) -> bool {
        self.tree.get_struct_type(data_type).is_some()
    }

    /// The tree (for a type loader that decodes structures clients send).
    pub fn tree(&self) -> Arc<DataTypeTree> {
        self.tree.clone()
    }

    /// A structure value (or an array of them when `array`) of `data_type` as a variant of
    /// ExtensionObjects. An empty structure (no value yet) is `Variant::Empty`.
    pub fn to_variant(
        &self,
        data_type: &NodeId,
        value: &Value,
        array: bool,
    ) -> Result<Variant, String> {
        let t = self
            .tree
            .get_struct_type(data_type)
            .ok_or_else(|| format!("{data_type} is not a known structure"))?;
        match (value, array) {
            (Value::Struct(f), _) if f.0.is_empty() => Ok(Variant::Empty),
            (Value::Array(items), true) => {
                let items = items
                    .iter()
                    .map(|v| self.object(t, v).map(Variant::from))
                    .collect::<Result<Vec<_>, _>>()?;
                Array::new(VariantScalarTypeId::ExtensionObject, items)
                    .map(|a| Variant::Array(Box::new(a)))
                    .map_err(|e| format!("{e:?}"))
            }
            (v, false) => self.object(t, v).map(Variant::from),
            (v, true) => Err(format!("expected an array of {}, got {v:?}", t.name)),
        }
    }

    fn object(&self, t: &Arc<StructTypeInfo>, value: &Value) -> Result<ExtensionObject, String> {
        let Value::Struct(fields) = value else {
            return Err(format!("expected a {} structure, got {value:?}", t.name));
        };
        let mut data = Vec::with_capacity(t.fields.len());
        let by_name: HashMap<&str, &Value> =
            fields.0.iter().map(|(k, v)| (k.as_str(), v)).collect();
        for f in &t.fields {
            let v = by_name
                .get(f.name.as_str())
                .ok_or_else(|| format!("{}: field {} missing", t.name, f.name))?;
            let array = f.value_rank >= 1;
            let variant = if let Some(kind) = kind_of(&f.type_id) {
                let len = match v {
                    Value::Array(a) => a.len(),
                    _ => 1,
                };
                to_variant(
                    v,
                    VarType {
                        kind,
                        array: array.then_some(len),
                    },
                )
            } else {
                self.to_variant(&f.type_id, v, array)?
            };
            data.push(variant);
        }
        let s = DynamicStructure::new_struct(t.clone(), self.tree.clone(), data)
            .map_err(|e| format!("{}: {e}", t.name))?;
        Ok(ExtensionObject::from_message(Measured(s)))
    }
}

/// A structure value whose encoded length is measured by encoding it. async-opcua 0.19's
/// `DynamicStructure` counts each element of an array-of-structures field as a whole
/// ExtensionObject in its length, while it writes the elements inline: the length prefix of
/// such a value (`Filler.Batch`, whose `Nozzles` are four NozzleStatus) came out 152 bytes too
/// long, and a client that decodes exactly that many bytes read past the value. The bytes
/// themselves are right; only the length is taken from them.
#[derive(Debug, Clone, PartialEq)]
struct Measured(DynamicStructure);

impl BinaryEncodable for Measured {
    fn byte_len(&self, ctx: &Context<'_>) -> usize {
        let mut bytes = Vec::new();
        match BinaryEncodable::encode(&self.0, &mut bytes, ctx) {
            Ok(()) => bytes.len(),
            // Encoding will fail the same way; the library's count is as good as any.
            Err(_) => self.0.byte_len(ctx),
        }
    }

    fn encode<S: Write + ?Sized>(&self, stream: &mut S, ctx: &Context<'_>) -> EncodingResult<()> {
        BinaryEncodable::encode(&self.0, stream, ctx)
    }
}

impl ExpandedMessageInfo for Measured {
    fn full_type_id(&self) -> ExpandedNodeId {
        self.0.full_type_id()
    }

    fn full_json_type_id(&self) -> ExpandedNodeId {
        self.0.full_json_type_id()
    }

    fn full_xml_type_id(&self) -> ExpandedNodeId {
        self.0.full_xml_type_id()
    }

    fn full_data_type_id(&self) -> ExpandedNodeId {
        self.0.full_data_type_id()
    }
}

impl UaNullable for Measured {}

impl JsonEncodable for Measured {
    fn encode(
        &self,
        stream: &mut opcua::types::json::JsonStreamWriter<&mut dyn Write>,
        ctx: &Context<'_>,
    ) -> EncodingResult<()> {
        JsonEncodable::encode(&self.0, stream, ctx)
    }
}

impl XmlType for Measured {
    const TAG: &'static str = "Unknown";
    fn tag(&self) -> &str {
        self.0.tag()
    }
}

impl XmlEncodable for Measured {
    fn encode(
        &self,
        writer: &mut opcua::types::xml::XmlStreamWriter<&mut dyn Write>,
        context: &Context<'_>,
    ) -> EncodingResult<()> {
        XmlEncodable::encode(&self.0, writer, context)
    }
}
