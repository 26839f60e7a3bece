//! The QEMU lab: a virtual switch with fault injection that owns every frame between the
//! VMs, a VM launcher with QMP control, the traffic agent lab hosts run, the lab topology
//! (data shared with the netns tests), the lab daemon behind `twinwall lab ...`, the
//! firewalls' own status through their forwarded management APIs, and the failover
//! scenarios.

pub mod agent;
pub mod daemon;
pub mod fwstatus;
pub mod lab;
pub mod probe;
pub mod qmp;
pub mod scenario;
pub mod switch;
pub mod topology;
pub mod vm;
