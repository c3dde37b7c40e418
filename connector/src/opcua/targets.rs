//! The nodes a group monitors: its explicit nodes (named by alias or browse name) and the
//! variables its browse selections find, resolved against the server at every subscribe.

use std::sync::Arc;

use opcua::client::Session;
use opcua::types::{AttributeId, NodeId, ReadValueId, TimestampsToReturn, Variant};
use tracing::warn;

use crate::config::{FieldPath, Group};
use crate::metrics::PlcMetrics;
use crate::opcua::browse;
use crate::opcua::resolve::Namespaces;
use crate::opcua::subscribe::ServerLimits;
use crate::sample::Item;

/// One node to monitor in a group.
#[derive(Debug, Clone)]
pub struct Target {
    pub node: NodeId,
    pub item: Arc<Item>,
    /// Structure fields that also land as rows of their own.
    pub flatten: Vec<FieldPath>,
}

/// Resolves a group's explicit nodes and browse selections against this server.
/// Nodes that cannot be resolved are logged and counted, never fatal.
pub async fn targets(
    session: &Session,
    plc: &str,
    group: &Group,
    ns: &Namespaces,
    limits: &ServerLimits,
    metrics: &PlcMetrics,
) -> Vec<Target> {
    let plc: Arc<str> = plc.into();
    let gname: Arc<str> = group.name.as_str().into();
    let mut out: Vec<Target> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut unnamed = Vec::new();
    for entry in &group.nodes {
        match ns.resolve(&entry.node) {
            Ok(id) => {
                if !seen.insert(id.clone()) {
                    continue;
                }
                let node: Arc<str> = ns.uri_form(&id).into();
                let name: Arc<str> = entry
                    .alias
                    .as_deref()
                    .map(Into::into)
                    .unwrap_or_else(|| node.clone());
                if entry.alias.is_none() {
                    unnamed.push(out.len());
                }
                out.push(Target {
                    node: id,
                    item: Arc::new(Item {
                        plc: plc.clone(),
                        group: gname.clone(),
                        node,
                        name,
                    }),
                    flatten: entry.flatten.clone(),
                });
            }
            Err(e) => {
                PlcMetrics::add(&metrics.failed_items, 1);
                warn!(plc = %plc, group = %group.name, node = ?entry.node, error = %e, "node not resolved, skipped");
            }
        }
    }
    // Explicit nodes without alias are named by their browse name.
    for chunk in unnamed.chunks(ServerLimits::or(limits.max_nodes_per_read, 1000)) {
        let reads: Vec<ReadValueId> = chunk
            .iter()
            .map(|&i| ReadValueId {
                node_id: out[i].node.clone(),
                attribute_id: AttributeId::BrowseName as u32,
                ..Default::default()
            })
            .collect();
        if let Ok(values) = session.read(&reads, TimestampsToReturn::Neither, 0.0).await {
            for (&i, v) in chunk.iter().zip(values) {
                if let Some(Variant::QualifiedName(q)) = v.value {
                    let t = &out[i];
                    let item = Item {
                        name: q.name.as_ref().into(),
                        ..(*t.item).clone()
                    };
                    out[i].item = Arc::new(item);
                }
            }
        }
    }
    for sel in &group.browse {
        let root = match ns.resolve(&sel.root) {
            Ok(id) => id,
            Err(e) => {
                PlcMetrics::add(&metrics.failed_items, 1);
                warn!(plc = %plc, group = %group.name, root = ?sel.root, error = %e, "browse root not resolved, skipped");
                continue;
            }
        };
        let root_name = root_browse_name(session, &root).await;
        let found = match browse::variables(
            session,
            &root,
            &root_name,
            sel.recursive,
            ServerLimits::or(limits.max_nodes_per_browse, 1000),
            64,
        )
        .await
        {
            Ok(f) => f,
            Err(e) => {
                PlcMetrics::add(&metrics.failed_items, 1);
                warn!(plc = %plc, group = %group.name, error = %e, "browse failed, selection skipped");
                continue;
            }
        };
        for v in found {
            if sel
                .include
                .as_deref()
                .is_some_and(|p| !browse::glob(p, &v.path))
                || sel
                    .exclude
                    .as_deref()
                    .is_some_and(|p| browse::glob(p, &v.path))
                || !seen.insert(v.node.clone())
            {
                continue;
            }
            let node: Arc<str> = ns.uri_form(&v.node).into();
            out.push(Target {
                node: v.node,
                item: Arc::new(Item {
                    plc: plc.clone(),
                    group: gname.clone(),
                    node,
                    name: v.path.into(),
                }),
                flatten: Vec::new(),
            });
        }
    }
    out
}

async fn root_browse_name(session: &Session, id: &NodeId) -> String {
    let read = ReadValueId {
        node_id: id.clone(),
        attribute_id: AttributeId::BrowseName as u32,
        ..Default::default()
    };
    match session
        .read(&[read], TimestampsToReturn::Neither, 0.0)
        .await
    {
        Ok(v) => match v.into_iter().next().and_then(|d| d.value) {
            Some(Variant::QualifiedName(q)) => q.name.as_ref().to_owned(),
            _ => id.to_string(),
        },
        Err(_) => id.to_string(),
    }
}
