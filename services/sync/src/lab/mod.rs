//! The sync failover lab for tests and benchmarks (root only, feature `lab`): the
//! client — fw1/fw2 — server topology of [`pair`] (failover by hand) and the real
//! services on testkit's seed-pair lab in [`cluster`] (VRRP failover), built on `twinwall-testkit`'s
//! namespaces (RAII, deleted even when a test fails) and its echo [`flows`].

pub use twinwall_testkit::{Netns, TestkitError as LabError, flows};

pub mod cluster;
pub mod pair;
