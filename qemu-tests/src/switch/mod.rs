//! The lab's virtual switch: a pure forwarding and fault-injection core ([`core`]) and a
//! UDP-over-loopback IO shell ([`io`]) that QEMU's `-netdev dgram` NICs talk to.

pub mod core;
pub mod io;
pub mod observe;
