//! The handle of a connected PLC session that cloud-to-PLC writes and method calls use. The
//! write session of a PLC publishes a new [`Link`] after every (re)connect and `None` while
//! it is down.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use opcua::client::Session;

use crate::opcua::resolve::Namespaces;

/// A connected PLC session, as the write service sees it. A new `generation` after every
/// (re)connect: checks made on an older one are redone.
#[derive(Clone)]
pub struct Link {
    pub session: Arc<Session>,
    pub ns: Namespaces,
    pub generation: u64,
}

/// Where a PLC's session is published for cloud-to-PLC writes (`None` while disconnected).
pub type LinkSender = tokio::sync::watch::Sender<Option<Link>>;

/// Where the write service watches a PLC's session.
pub type LinkReceiver = tokio::sync::watch::Receiver<Option<Link>>;

static GENERATION: AtomicU64 = AtomicU64::new(1);

/// Publishes a freshly (re)connected session under a new generation.
pub fn publish_link(link: &LinkSender, session: &Arc<Session>, ns: &Namespaces) {
    link.send_replace(Some(Link {
        session: session.clone(),
        ns: ns.clone(),
        generation: GENERATION.fetch_add(1, Ordering::Relaxed),
    }));
}
