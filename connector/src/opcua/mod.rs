//! The OPC UA side: sessions, node identity, browse, subscriptions, sample conversion.

pub mod browse;
pub mod convert;
pub mod resolve;
pub mod session;
pub mod subscribe;
pub mod tcp;
