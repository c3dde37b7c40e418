//! A PLC's own structures (Siemens UDTs, Beckhoff structs, companion-spec types): decoded at
//! runtime from the DataTypeDefinitions the server publishes, so that their values land with
//! field names (nested structures and arrays of them included) instead of opaque bytes.
//!
//! After each new session the server's own data types (every namespace but 0) are read with
//! async-opcua's `DataTypeTreeBuilder` and swapped into the one loader the session was built
//! with. A value of such a type is decoded from exactly its encoded length and accepted only
//! if the definition used every byte; anything else (a type without a definition, a field
//! of a type the tree lacks, a definition that does not match the bytes) stays as it was
//! before: bytes with the type's id, logged once per type, never an error that stops the
//! subscription (a decode error inside a Publish response would close the connection).

use std::collections::{HashMap, HashSet};
use std::io::{Cursor, Read};
use std::sync::{Arc, Mutex, RwLock};

use opcua::types::custom::{DataTypeTree, DynamicStructure, DynamicTypeLoader};
use opcua::types::{
    ByteString, ByteStringBody, Context, DynEncodable, EncodingResult, ExtensionObject, NodeId,
    TypeLoader, TypeLoaderPriority, Variant,
};

use crate::sample::TypeName;

/// The tree, its loader, and the browse names of its structure types (async-opcua's tree
/// builder leaves the names empty).
type Current = (Arc<DataTypeTree>, DynamicTypeLoader, HashMap<NodeId, Named>);

/// A structure's type name as a scalar and as an array, interned once per session.
type Named = (TypeName, TypeName);

/// The session's loader of the server's structures; empty until a tree is set.
#[derive(Default)]
pub struct Structures {
    current: RwLock<Option<Arc<Current>>>,
    /// Types whose values could not be decoded (logged once each).
    failed: Mutex<HashSet<NodeId>>,
}

impl std::fmt::Debug for Structures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Structures")
            .field("types", &self.count())
            .finish()
    }
}

impl Structures {
    /// Uses `tree` from now on (a new session: the server's types may have changed).
    pub fn set(&self, tree: DataTypeTree, names: HashMap<NodeId, Arc<str>>) {
        let tree = Arc::new(tree);
        let loader = DynamicTypeLoader::new(tree.clone());
        let names = names
            .into_iter()
            .map(|(id, name)| {
                let named = (
                    TypeName::structure(&name, false),
                    TypeName::structure(&name, true),
                );
                (id, named)
            })
            .collect();
        *self.current.write().unwrap_or_else(|e| e.into_inner()) =
            Some(Arc::new((tree, loader, names)));
        self.failed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// No tree: values of the server's structures stay bytes.
    pub fn clear(&self) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// The current tree and loader, the lock released (a nested field comes back here).
    fn current(&self) -> Option<Arc<Current>> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The type name of a decoded structure or array of one structure type (`MotorData`,
    /// `Array<MotorData>`); `None` for anything else (values kept as bytes stay
    /// `ExtensionObject`).
    pub fn type_name(&self, v: &Variant) -> Option<TypeName> {
        let decoded = |eo: &ExtensionObject| {
            eo.inner_is::<DynamicStructure>()
                .then(|| eo.data_type())
                .flatten()
        };
        let (id, array) = match v {
            Variant::ExtensionObject(eo) => (decoded(eo)?, false),
            Variant::Array(a) => {
                let mut ids = a.values.iter().map(|v| match v {
                    Variant::ExtensionObject(eo) => decoded(eo),
                    _ => None,
                });
                let first = ids.next()??;
                if !ids.all(|id| id.as_ref() == Some(&first)) {
                    return None;
                }
                (first, true)
            }
            _ => return None,
        };
        let current = self.current()?;
        let (scalar, many) = current.2.get(&id.node_id)?;
        Some(if array { *many } else { *scalar })
    }

    /// The structure types of a tree (whose browse names are to be read).
    pub fn types(tree: &DataTypeTree) -> Vec<NodeId> {
        let types: HashSet<&NodeId> = tree.encoding_to_data_type().values().collect();
        types.into_iter().cloned().collect()
    }

    /// How many structure types the current tree can decode.
    pub fn count(&self) -> usize {
        self.current().map_or(0, |c| {
            let tree = &c.0;
            Self::types(tree)
                .iter()
                .filter(|t| tree.get_struct_type(t).is_some_and(|s| s.is_supported()))
                .count()
        })
    }
}

impl TypeLoader for Structures {
    fn load_from_binary(
        &self,
        node_id: &NodeId,
        stream: &mut dyn Read,
        ctx: &Context<'_>,
        length: Option<usize>,
    ) -> Option<EncodingResult<Box<dyn DynEncodable>>> {
        if node_id.is_null() {
            return None;
        }
        let current = self.current()?;
        let (tree, loader, _) = &*current;
        let data_type = tree.encoding_to_data_type().get(node_id).unwrap_or(node_id);
        if !tree
            .get_struct_type(data_type)
            .is_some_and(|t| t.is_supported())
        {
            // Not one of ours: the stack's fallback keeps the bytes.
            return None;
        }
        let Some(length) = length else {
            // A field of a structure being decoded (its length is the enclosing value's,
            // checked there), at a bounded depth: a definition that contains itself must
            // not recurse without end.
            let _depth = match ctx.options().depth_lock() {
                Ok(d) => d,
                Err(e) => return Some(Err(e)),
            };
            return loader.load_from_binary(node_id, stream, ctx, None);
        };
        let mut body = vec![0u8; length];
        if let Err(e) = stream.read_exact(&mut body) {
            return Some(Err(e.into()));
        }
        let mut cursor = Cursor::new(&body[..]);
        let decoded = loader.load_from_binary(node_id, &mut cursor, ctx, Some(length));
        match decoded {
            Some(Ok(value)) if cursor.position() as usize == length => Some(Ok(value)),
            other => {
                let why = match other {
                    Some(Err(e)) => e.to_string(),
                    Some(Ok(_)) => format!(
                        "the definition read {} of {length} bytes",
                        cursor.position()
                    ),
                    None => "no decoder for it".to_owned(),
                };
                let first = self
                    .failed
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(node_id.clone());
                if first {
                    tracing::warn!(encoding = %node_id, data_type = %data_type, error = %why,
                        "a value of this structure does not match its DataTypeDefinition: kept as bytes with its type id (said once per type)");
                }
                Some(Ok(Box::new(ByteStringBody::new(
                    ByteString::from(body),
                    node_id.clone(),
                ))))
            }
        }
    }

    fn load_from_xml(
        &self,
        _node_id: &NodeId,
        _stream: &mut opcua::types::xml::XmlStreamReader<&mut dyn Read>,
        _ctx: &Context<'_>,
        _name: &str,
    ) -> Option<EncodingResult<Box<dyn DynEncodable>>> {
        None
    }

    fn load_from_json(
        &self,
        _node_id: &NodeId,
        _stream: &mut opcua::types::json::JsonStreamReader<&mut dyn Read>,
        _ctx: &Context<'_>,
    ) -> Option<EncodingResult<Box<dyn DynEncodable>>> {
        None
    }

    fn priority(&self) -> TypeLoaderPriority {
        TypeLoaderPriority::Dynamic(50)
    }
}
