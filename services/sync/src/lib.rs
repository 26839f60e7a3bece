//! twinwall-sync: conntrack state replication between the two nodes over the sync link
//! (the job of conntrackd FTFW). The kernel side speaks ctnetlink ([`ctnetlink`],
//! [`kernel`]); the replication protocol, caches and role handling are a pure core; the
//! service shell runs it against real sockets.

pub mod core;
pub mod ctnetlink;
pub mod entry;
pub mod kernel;
#[cfg(feature = "lab")]
pub mod lab;
pub mod service;
pub mod table;
pub mod wire;
