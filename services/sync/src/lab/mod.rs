//! The sync failover lab for tests and benchmarks (root only, feature `lab`): the
//! client — fw1/fw2 — server topology of [`pair`] (failover by hand) and the real
//! services on testkit's seed-pair lab in [`cluster`] (VRRP failover), built on `twinwall-testkit`'s
//! namespaces (RAII, deleted even when a test fails) and its echo [`flows`].

pub use twinwall_testkit::{Netns, TestkitError as LabError, flows};

pub mod cluster;
pub mod pair;

use std::net::IpAddr;

use crate::entry::{Entry, L4, Tuple};

/// `n` idle UDP (DNS-like) entries for bulk tests and benchmarks: entry `i` goes from
/// `client(i / 60000)`, source port `1024 + i % 60000`, to `server:53`.
pub fn udp_entries(n: usize, client: impl Fn(usize) -> IpAddr, server: IpAddr) -> Vec<Entry> {
    (0..n)
        .map(|i| {
            let c = client(i / 60000);
            let port = 1024 + (i % 60000) as u16;
            Entry {
                orig: Tuple {
                    src: c,
                    dst: server,
                    l4: L4::Udp {
                        sport: port,
                        dport: 53,
                    },
                },
                reply: Tuple {
                    src: server,
                    dst: c,
                    l4: L4::Udp {
                        sport: 53,
                        dport: port,
                    },
                },
                status: 0,
                timeout: 3600,
                mark: 0,
                zone: 0,
                tcp: None,
            }
        })
        .collect()
}
