//! Loading and checking the NodeSet2 inputs: each file is parsed by the XML layer first, so
//! a syntax error is reported with its line and element, then imported for async-opcua; after
//! the server is built, every node of every file must be in the address space (async-opcua
//! skips nodes it cannot import with only a log line, which becomes an input error here).

use opcua::nodes::NodeSet2Import;
use opcua::server::ServerHandle;

use super::config::Source;
use super::server_build::resolve;
use crate::error::{line_of, Problem, SimError};
use crate::server::PlcNodeManager;

/// Parses and imports every nodeset; reports the problems of every file, not only the first.
pub(super) fn load_imports(nodesets: &[Source]) -> Result<Vec<NodeSet2Import>, SimError> {
    let mut problems = Vec::new();
    let mut imports = Vec::new();
    for ns in nodesets {
        // Parse once with the XML layer first: its errors carry the position of the element.
        if let Err(e) = opcua::xml::load_nodeset2_file(&ns.text) {
            problems.push(xml_problem(ns, &e));
            continue;
        }
        match NodeSet2Import::new_str("en", &ns.text, Vec::new()) {
            Ok(i) => imports.push(i),
            Err(e) => problems.push(Problem {
                source: ns.name.clone(),
                line: None,
                element: "UANodeSet".into(),
                message: format!("not a valid NodeSet2 file: {e}"),
            }),
        }
    }
    if problems.is_empty() {
        Ok(imports)
    } else {
        Err(SimError::Input(problems))
    }
}

/// Locates an XML layer error: its line and the start of the element (or `document`).
fn xml_problem(ns: &Source, e: &opcua::xml::XmlError) -> Problem {
    let (line, element) = if e.span.end > 0 {
        let start = e.span.start.min(ns.text.len());
        let end = e.span.end.min(ns.text.len()).min(start + 160);
        let snippet = ns
            .text
            .get(start..end)
            .unwrap_or("")
            .split('\n')
            .next()
            .unwrap_or("");
        (Some(line_of(&ns.text, start)), snippet.trim().to_owned())
    } else {
        match &e.error {
            opcua::xml::XmlErrorInner::Xml(r) => {
                (Some(r.pos().row as usize), "document".to_owned())
            }
            _ => (None, "document".to_owned()),
        }
    };
    Problem {
        source: ns.name.clone(),
        line,
        element,
        message: format!("not a valid NodeSet2 file: {e}"),
    }
}

/// Every node of every nodeset must have made it into the address space; async-opcua skips
/// nodes it cannot import with only a log line, which we turn into an input error.
pub(super) fn check_imported(nodesets: &[Source], handle: &ServerHandle) -> Result<(), SimError> {
    let nm = handle
        .node_managers()
        .get_of_type::<PlcNodeManager>()
        .ok_or_else(|| SimError::Server("node manager missing".into()))?;
    let asp = nm.address_space().read();
    let mut problems = Vec::new();
    for ns in nodesets {
        let Ok(doc) = opcua::xml::load_nodeset2_file(&ns.text) else {
            continue;
        };
        let Some(set) = doc.node_set else { continue };
        let uris: Vec<String> = set
            .namespace_uris
            .as_ref()
            .map(|u| u.uris.clone())
            .unwrap_or_default();
        for node in &set.nodes {
            let raw = &node.base().node_id.0;
            let resolved = file_node_id(raw, &uris)
                .and_then(|id| resolve(&id, &|u| handle.get_namespace_index(u)));
            let present = resolved.as_ref().is_some_and(|id| asp.find(id).is_some());
            if !present {
                let pattern = format!("NodeId=\"{raw}\"");
                let line = ns.text.find(&pattern).map(|o| line_of(&ns.text, o));
                problems.push(Problem {
                    source: ns.name.clone(),
                    line,
                    element: format!("<{} NodeId=\"{raw}\" BrowseName=\"{}\">", kind_name(node), node.base().browse_name.0),
                    message: "node could not be imported (bad data type, value or reference; see the warning logged above)".into(),
                });
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(SimError::Input(problems))
    }
}

fn kind_name(node: &opcua::xml::schema::ua_node_set::UANode) -> &'static str {
    use opcua::xml::schema::ua_node_set::UANode;
    match node {
        UANode::Object(_) => "UAObject",
        UANode::Variable(_) => "UAVariable",
        UANode::Method(_) => "UAMethod",
        UANode::View(_) => "UAView",
        UANode::ObjectType(_) => "UAObjectType",
        UANode::VariableType(_) => "UAVariableType",
        UANode::DataType(_) => "UADataType",
        UANode::ReferenceType(_) => "UAReferenceType",
    }
}

/// A node id as written in a nodeset file (`ns=1;s=X`, index into the file's NamespaceUris)
/// in namespace-URI form.
fn file_node_id(raw: &str, uris: &[String]) -> Option<String> {
    let Some(rest) = raw.strip_prefix("ns=") else {
        return Some(format!("nsu=http://opcfoundation.org/UA/;{raw}"));
    };
    let (idx, id) = rest.split_once(';')?;
    let idx: usize = idx.parse().ok()?;
    let uri = if idx == 0 {
        "http://opcfoundation.org/UA/"
    } else {
        uris.get(idx - 1)?
    };
    Some(format!("nsu={uri};{id}"))
}
