//! Walking the address space: browse selections of a group, and `opcua-connector browse`.

use std::collections::{HashSet, VecDeque};

use opcua::client::Session;
use opcua::types::{
    BrowseDescription, BrowseDirection, BrowseResult, BrowseResultMask, ByteString, NodeClass,
    NodeClassMask, NodeId, ReferenceDescription, ReferenceTypeId, StatusCode,
};

/// A variable found by browsing, with its path of browse names from the root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundVariable {
    pub node: NodeId,
    /// Browse names from the root (included) to the variable, joined with `/`.
    pub path: String,
    pub data_type: Option<NodeId>,
}

#[derive(Debug, thiserror::Error)]
pub enum BrowseError {
    #[error("browse of {node} failed: {status}")]
    Service {
        node: NodeId,
        status: opcua::types::StatusCode,
    },
    #[error("browse of {node}: the server still offered more references after {pages} continuation pages, gave up (a broken server?)")]
    EndlessContinuation { node: NodeId, pages: usize },
}

/// At most this many BrowseNext pages for the references of one node. A broken or hostile
/// server can hand out continuation points forever.
pub const MAX_CONTINUATIONS: usize = 1000;

/// Fetches the pages after `cp` with `next` (a BrowseNext of one continuation point), at most
/// [`MAX_CONTINUATIONS`] of them, appending their references to `refs`.
async fn follow<F, Fut>(
    node: &NodeId,
    mut cp: ByteString,
    refs: &mut Vec<ReferenceDescription>,
    mut next: F,
) -> Result<(), BrowseError>
where
    F: FnMut(ByteString) -> Fut,
    Fut: std::future::Future<Output = Result<Option<BrowseResult>, StatusCode>>,
{
    let mut pages = 0;
    while !cp.is_null_or_empty() {
        if pages == MAX_CONTINUATIONS {
            return Err(BrowseError::EndlessContinuation {
                node: node.clone(),
                pages,
            });
        }
        pages += 1;
        let Some(r) = next(cp).await.map_err(|status| BrowseError::Service {
            node: node.clone(),
            status,
        })?
        else {
            break;
        };
        refs.extend(r.references.unwrap_or_default());
        cp = r.continuation_point;
    }
    Ok(())
}

/// Variables below `root` (its components and organized children; properties such as
/// EURange are left out). `recursive = false` looks at direct children only. `max_nodes`
/// bounds how many nodes go into one Browse call (the server's MaxNodesPerBrowse).
pub async fn variables(
    session: &Session,
    root: &NodeId,
    root_name: &str,
    recursive: bool,
    max_nodes: usize,
    max_depth: usize,
) -> Result<Vec<FoundVariable>, BrowseError> {
    let mut found = Vec::new();
    let mut seen: HashSet<NodeId> = HashSet::new();
    seen.insert(root.clone());
    let mut queue: VecDeque<(NodeId, String, usize)> = VecDeque::new();
    queue.push_back((root.clone(), root_name.to_owned(), 0));
    while !queue.is_empty() {
        let take = queue.len().min(max_nodes.max(1));
        let batch: Vec<_> = queue.drain(..take).collect();
        let descriptions: Vec<BrowseDescription> =
            batch.iter().map(|(id, _, _)| describe(id)).collect();
        let results =
            session
                .browse(&descriptions, 0, None)
                .await
                .map_err(|e| BrowseError::Service {
                    node: batch[0].0.clone(),
                    status: e.status(),
                })?;
        for ((parent, path, depth), result) in batch.into_iter().zip(results) {
            if result.status_code.is_bad() {
                return Err(BrowseError::Service {
                    node: parent,
                    status: result.status_code,
                });
            }
            let mut refs = result.references.unwrap_or_default();
            follow(
                &parent,
                result.continuation_point,
                &mut refs,
                |cp| async move {
                    session
                        .browse_next(false, std::slice::from_ref(&cp))
                        .await
                        .map(|r| r.into_iter().next())
                        .map_err(|e| e.status())
                },
            )
            .await?;
            for r in refs {
                if !wanted(&r) {
                    continue;
                }
                let id = r.node_id.node_id.clone();
                if !r.node_id.namespace_uri.is_null() || r.node_id.server_index != 0 {
                    continue; // a node of another server
                }
                if !seen.insert(id.clone()) {
                    continue;
                }
                let child_path = format!("{path}/{}", r.browse_name.name.as_ref());
                if r.node_class == NodeClass::Variable {
                    found.push(FoundVariable {
                        node: id.clone(),
                        path: child_path.clone(),
                        data_type: None,
                    });
                }
                if recursive && depth + 1 < max_depth {
                    queue.push_back((id, child_path, depth + 1));
                }
            }
        }
    }
    Ok(found)
}

fn describe(id: &NodeId) -> BrowseDescription {
    BrowseDescription {
        node_id: id.clone(),
        browse_direction: BrowseDirection::Forward,
        reference_type_id: ReferenceTypeId::HierarchicalReferences.into(),
        include_subtypes: true,
        node_class_mask: (NodeClassMask::OBJECT | NodeClassMask::VARIABLE).bits(),
        result_mask: (BrowseResultMask::All as u32),
    }
}

/// Components and organized nodes; not properties (EURange, EngineeringUnits, arguments).
fn wanted(r: &ReferenceDescription) -> bool {
    r.reference_type_id != ReferenceTypeId::HasProperty
        && matches!(r.node_class, NodeClass::Object | NodeClass::Variable)
}

/// Shell-style glob: `*` any run, `?` one character; everything else literal.
pub fn glob(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server that always has one more page: the walk stops with an error naming the node.
    #[tokio::test]
    async fn endless_continuation_points_stop_with_an_error_naming_the_node() {
        let node = NodeId::new(2, "Endless");
        let mut refs = Vec::new();
        let mut asked = 0usize;
        let err = follow(&node, ByteString::from(vec![1u8]), &mut refs, |_| {
            asked += 1;
            async {
                Ok(Some(BrowseResult {
                    status_code: StatusCode::Good,
                    continuation_point: ByteString::from(vec![1u8]),
                    references: Some(vec![ReferenceDescription::default()]),
                }))
            }
        })
        .await
        .expect_err("must give up");
        assert_eq!(asked, MAX_CONTINUATIONS);
        assert_eq!(refs.len(), MAX_CONTINUATIONS);
        let text = err.to_string();
        assert!(text.contains("ns=2;s=Endless"), "{text}");
        assert!(text.contains("1000 continuation pages"), "{text}");
    }

    #[test]
    fn globs_match_like_a_shell() {
        assert!(glob("*Temp*", "BottlingLine/Filler/ProductTemperature"));
        assert!(glob("*", ""));
        assert!(glob("Filler/?peed", "Filler/Speed"));
        assert!(!glob("*Temp", "Filler/TempX"));
        assert!(glob("a*b*c", "aXXbYYc"));
        assert!(!glob("a*b*c", "aXXbYY"));
    }
}
