//! The network phase: links up, the node's own addresses (rtnetlink; the appliance has no
//! `ip`), and the sysctls a router needs. The plan is pure ([`plan`]); [`apply`] talks
//! netlink. IP forwarding is deliberately *not* part of the phase: [`FORWARDING`] is
//! written only after the ruleset service has applied a ruleset.
//!
//! Sysctl choices (also in docs/init.md):
//! * `rp_filter=2` (loose): a VRRP takeover briefly makes paths asymmetric; strict mode
//!   would drop that traffic. The ruleset does the anti-spoofing per zone.
//! * `arp_ignore=1`, `arp_announce=2`: answer ARP only for addresses on the asking
//!   interface and source ARP from it, so VIPs are announced by the right link only.
//! * `ip_nonlocal_bind=1`: services may bind VIPs the node does not hold yet (backup).
//! * `nf_conntrack_max=262144`: room for a busy pair; sync replicates at that scale.
//! * `nf_conntrack_buckets=262144`: one hash bucket per entry of that limit. The kernel
//!   sizes the hash from the RAM (4,096 buckets on a 512 MB node), not from the limit: 100k
//!   entries then sit in chains of ~50 tuples, and the takeover commit of 100k took 0.82 s
//!   against 0.22 s with 262,144 buckets (`bench_sync`, docs/sync.md); about 2 MB.
//! * `nf_conntrack_tcp_loose=0`: the backup must not adopt mid-stream TCP flows by itself;
//!   they come from conntrack sync with their real state. `nf_conntrack_tcp_be_liberal=1`:
//!   after a takeover the synced window data may lag, and strict window tracking would
//!   mark such packets invalid (conntrackd's documented recommendation).
//! * redirects and source routing off, as on any firewall.

use std::net::IpAddr;

use futures::TryStreamExt;
use ipnet::IpNet;
use twinwall_config::NodeView;

use crate::sys::Syscalls;

/// The forwarding switches, written once a ruleset is in force.
pub const FORWARDING: [(&str, &str); 2] = [
    ("net.ipv4.ip_forward", "1"),
    ("net.ipv6.conf.all.forwarding", "1"),
];

/// Router sysctls written in the network phase (before any service starts).
pub const ROUTER_SYSCTLS: [(&str, &str); 16] = [
    ("net.ipv4.conf.all.rp_filter", "2"),
    ("net.ipv4.conf.default.rp_filter", "2"),
    ("net.ipv4.conf.all.arp_ignore", "1"),
    ("net.ipv4.conf.all.arp_announce", "2"),
    ("net.ipv4.conf.default.arp_ignore", "1"),
    ("net.ipv4.conf.default.arp_announce", "2"),
    ("net.ipv4.ip_nonlocal_bind", "1"),
    ("net.ipv6.ip_nonlocal_bind", "1"),
    ("net.ipv4.conf.all.send_redirects", "0"),
    ("net.ipv4.conf.all.accept_redirects", "0"),
    ("net.ipv6.conf.all.accept_redirects", "0"),
    ("net.ipv4.conf.all.accept_source_route", "0"),
    ("net.netfilter.nf_conntrack_max", "262144"),
    ("net.netfilter.nf_conntrack_buckets", "262144"),
    ("net.netfilter.nf_conntrack_tcp_loose", "0"),
    ("net.netfilter.nf_conntrack_tcp_be_liberal", "1"),
];

/// Errors of the network phase (none is fatal: they degrade the phase).
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// The netlink socket could not be opened.
    #[error("cannot open rtnetlink: {0}")]
    Connect(std::io::Error),
    /// The async runtime for netlink could not be built.
    #[error("cannot start the netlink runtime: {0}")]
    Runtime(std::io::Error),
    /// A configured device does not exist.
    #[error("interface {zone}: device {device} not found")]
    NoDevice {
        /// Zone name.
        zone: String,
        /// Device name.
        device: String,
    },
    /// A netlink request failed.
    #[error("{what} on {device}: {source}")]
    Netlink {
        /// What was attempted.
        what: String,
        /// Device.
        device: String,
        /// Cause.
        source: rtnetlink::Error,
    },
    /// A sysctl write failed.
    #[error("sysctl {key}={value}: {source}")]
    Sysctl {
        /// Key.
        key: String,
        /// Value.
        value: String,
        /// Cause.
        source: std::io::Error,
    },
}

/// What the phase will do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetPlan {
    /// (zone, device) to bring up; `lo` always first.
    pub links: Vec<(String, String)>,
    /// (device, address) to add.
    pub addresses: Vec<(String, IpNet)>,
}

/// The plan for a node view; without one (fail-closed) only `lo` and whatever links exist
/// are brought up, with no addresses. Pure.
pub fn plan(view: Option<&NodeView>) -> NetPlan {
    let mut links = vec![("loopback".to_string(), "lo".to_string())];
    let mut addresses = Vec::new();
    if let Some(v) = view {
        for iface in v.interfaces.values() {
            links.push((iface.name.clone(), iface.device.clone()));
            for a in &iface.addresses {
                addresses.push((iface.device.clone(), *a));
            }
        }
    }
    NetPlan { links, addresses }
}

/// Writes the router sysctls; returns the failures (a missing conntrack module is one).
pub fn write_sysctls(sys: &dyn Syscalls, list: &[(&str, &str)]) -> Vec<NetworkError> {
    list.iter()
        .filter_map(|(k, v)| {
            sys.sysctl(k, v).err().map(|source| NetworkError::Sysctl {
                key: (*k).to_string(),
                value: (*v).to_string(),
                source,
            })
        })
        .collect()
}

/// Applies links and addresses over rtnetlink on the calling thread's network namespace.
/// An address that is already present counts as done. Returns the per-item failures.
pub fn apply(plan: &NetPlan, all_links: bool) -> Result<Vec<NetworkError>, NetworkError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(NetworkError::Runtime)?;
    rt.block_on(apply_async(plan, all_links))
}

async fn apply_async(plan: &NetPlan, all_links: bool) -> Result<Vec<NetworkError>, NetworkError> {
    let (conn, handle, _) = rtnetlink::new_connection().map_err(NetworkError::Connect)?;
    let task = tokio::spawn(conn);
    let mut errors = Vec::new();
    let mut links = plan.links.clone();
    if all_links {
        let mut stream = handle.link().get().execute();
        while let Ok(Some(msg)) = stream.try_next().await {
            for attr in &msg.attributes {
                if let rtnetlink::packet_route::link::LinkAttribute::IfName(n) = attr
                    && !links.iter().any(|(_, d)| d == n)
                {
                    links.push((n.clone(), n.clone()));
                }
            }
        }
    }
    let mut index = std::collections::BTreeMap::new();
    for (zone, device) in &links {
        let mut found = handle.link().get().match_name(device.clone()).execute();
        let Ok(Some(link)) = found.try_next().await else {
            errors.push(NetworkError::NoDevice {
                zone: zone.clone(),
                device: device.clone(),
            });
            continue;
        };
        let idx = link.header.index;
        index.insert(device.clone(), idx);
        // The MAC goes into the log: it shows which NIC got which kernel name (names follow
        // the PCI probe order; docs/init.md).
        let mac = link
            .attributes
            .iter()
            .find_map(|a| match a {
                rtnetlink::packet_route::link::LinkAttribute::Address(m) => Some(
                    m.iter()
                        .map(|b| format!("{b:02x}"))
                        .collect::<Vec<_>>()
                        .join(":"),
                ),
                _ => None,
            })
            .unwrap_or_default();
        let req = rtnetlink::LinkUnspec::new_with_index(idx).up().build();
        if let Err(source) = handle.link().set(req).execute().await {
            errors.push(NetworkError::Netlink {
                what: "link up".into(),
                device: device.clone(),
                source,
            });
        } else {
            tracing::info!(zone = %zone, device = %device, mac = %mac, "link up");
        }
    }
    for (device, net) in &plan.addresses {
        let Some(&idx) = index.get(device) else {
            continue;
        };
        let addr: IpAddr = net.addr();
        // `replace` makes the phase idempotent (a re-run or an address set by the kernel
        // command line is not an error).
        let req = handle.address().add(idx, addr, net.prefix_len()).replace();
        match req.execute().await {
            Ok(()) => tracing::info!(device = %device, address = %net, "address added"),
            Err(source) => errors.push(NetworkError::Netlink {
                what: format!("add address {net}"),
                device: device.clone(),
                source,
            }),
        }
    }
    task.abort();
    Ok(errors)
}
