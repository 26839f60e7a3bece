//! VRRPv3 (RFC 5798) for IPv4 and IPv6: the `twinwall vrrp` service.
//!
//! * [`fsm`]: the pure state machine of one virtual router, timers as data.
//! * [`group`]: sync groups over it (move together, FAULT on tracked link loss, commit
//!   wait before announcing the addresses).
//! * [`packet`]: the advertisement codec and §7.1 receive validation.
//! * [`plan`]: turns a [`twinwall_config::NodeView`] into groups and routers.
//! * [`net`], [`netlink`]: the IO shell's sockets (raw VRRP, ARP, NA) and rtnetlink.
//! * [`service`]: the tokio loop that drives the cores, and [`status`] what it reports.
//!
//! Without the default `io` feature only the pure parts build (the fuzz target uses that).

pub mod fsm;
pub mod group;
#[cfg(feature = "io")]
pub mod net;
#[cfg(feature = "io")]
pub mod netlink;
pub mod packet;
pub mod plan;
#[cfg(feature = "io")]
pub mod service;
pub mod status;

#[cfg(feature = "io")]
pub use service::{Options, ServiceError, run};
