//! The sync failover lab for tests and benchmarks (root only, feature `lab`): the
//! client — fw1/fw2 — server topology of [`pair`], built on `twinwall-testkit`'s
//! namespaces (RAII, deleted even when a test fails) and its echo [`flows`].

pub use twinwall_testkit::{Netns, TestkitError as LabError, flows};

pub mod pair;
