//! Node identity: config node references to this server's node ids and back to the
//! namespace-URI form that rows, payloads and logs use.

use std::str::FromStr;

use opcua::types::{ByteString, Guid, Identifier as UaIdentifier, NodeId};

use crate::config::{Identifier, NodeRef};

/// The server's namespace array, read at every (re)connect.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Namespaces(pub Vec<String>);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    #[error("namespace {0} is not in the server's namespace array")]
    UnknownUri(String),
    #[error("namespace index {0} is not in the server's namespace array")]
    UnknownIndex(u16),
    #[error("bad identifier: {0}")]
    BadIdentifier(String),
}

impl Namespaces {
    pub fn index_of(&self, uri: &str) -> Option<u16> {
        self.0
            .iter()
            .position(|u| u == uri)
            .and_then(|i| u16::try_from(i).ok())
    }

    /// The server node id of a config reference.
    pub fn resolve(&self, node: &NodeRef) -> Result<NodeId, ResolveError> {
        let (ns, ident) = match node {
            NodeRef::Uri {
                namespace_uri,
                identifier,
            } => (
                self.index_of(namespace_uri)
                    .ok_or_else(|| ResolveError::UnknownUri(namespace_uri.clone()))?,
                identifier,
            ),
            NodeRef::Index {
                namespace,
                identifier,
            } => {
                if usize::from(*namespace) >= self.0.len().max(1) {
                    return Err(ResolveError::UnknownIndex(*namespace));
                }
                (*namespace, identifier)
            }
        };
        let id = match ident {
            Identifier::Numeric(n) => UaIdentifier::Numeric(*n),
            Identifier::String(s) => UaIdentifier::String(s.as_str().into()),
            Identifier::Guid(g) => UaIdentifier::Guid(
                Guid::from_str(g).map_err(|_| ResolveError::BadIdentifier(g.clone()))?,
            ),
            Identifier::Opaque(b) => UaIdentifier::ByteString(
                ByteString::from_base64(b).ok_or_else(|| ResolveError::BadIdentifier(b.clone()))?,
            ),
        };
        Ok(NodeId {
            namespace: ns,
            identifier: id,
        })
    }

    /// `nsu=URI;s=...` form of a server node id (namespace 0 keeps the bare form `i=85`).
    pub fn uri_form(&self, id: &NodeId) -> String {
        let ident = match &id.identifier {
            UaIdentifier::Numeric(n) => format!("i={n}"),
            UaIdentifier::String(s) => format!("s={}", s.as_ref()),
            UaIdentifier::Guid(g) => format!("g={g}"),
            UaIdentifier::ByteString(b) => format!("b={}", b.as_base64()),
        };
        match (id.namespace, self.0.get(usize::from(id.namespace))) {
            (0, _) => ident,
            (_, Some(uri)) => format!("nsu={uri};{ident}"),
            (ns, None) => format!("ns={ns};{ident}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_by_uri_whatever_the_index() {
        let a = Namespaces(vec![
            "http://opcfoundation.org/UA/".into(),
            "urn:a".into(),
            "urn:line".into(),
        ]);
        let b = Namespaces(vec![
            "http://opcfoundation.org/UA/".into(),
            "urn:line".into(),
        ]);
        let r = NodeRef::Uri {
            namespace_uri: "urn:line".into(),
            identifier: Identifier::String("X".into()),
        };
        assert_eq!(a.resolve(&r).unwrap(), NodeId::new(2, "X"));
        assert_eq!(b.resolve(&r).unwrap(), NodeId::new(1, "X"));
        assert_eq!(a.uri_form(&NodeId::new(2, "X")), "nsu=urn:line;s=X");
        assert_eq!(a.uri_form(&NodeId::new(0, 85u32)), "i=85");
        let missing = NodeRef::Uri {
            namespace_uri: "urn:nope".into(),
            identifier: Identifier::Numeric(1),
        };
        assert_eq!(
            a.resolve(&missing),
            Err(ResolveError::UnknownUri("urn:nope".into()))
        );
    }
}
