//! The resolved, per-node view of a cluster config: what one node's services consume.
//!
//! This is the contract between the config crate and the services (ruleset, vrrp, sync,
//! init, mgmt). Everything here is already validated and expanded: object names are
//! resolved to addresses, `vip:IFACE` to concrete VIP addresses, zones to devices. The
//! view serialises to the JSON printed by `twinwall config show --json`.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// Address family of an address, a VIP or a virtual router.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    /// IPv4.
    Ipv4,
    /// IPv6.
    Ipv6,
}

impl Family {
    /// The family of an address.
    pub fn of(addr: &IpAddr) -> Family {
        match addr {
            IpAddr::V4(_) => Family::Ipv4,
            IpAddr::V6(_) => Family::Ipv6,
        }
    }
}

/// Everything one node needs to run, resolved from the cluster config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeView {
    /// `[cluster] name`.
    pub cluster: String,
    /// `[cluster] version` (monotonic; anti-rollback compares it).
    pub version: u64,
    /// This node's name (a key of `[nodes]`).
    pub node: String,
    /// This node's VRRP priority (1..=254).
    pub priority: u8,
    /// This node's interfaces by zone name (`outside`, `inside`, `sync`, ...).
    pub interfaces: BTreeMap<String, Interface>,
    /// The other node of the pair.
    pub peer: Peer,
    /// VRRP settings and the virtual routers this node takes part in.
    pub vrrp: Vrrp,
    /// Conntrack sync over the sync link, when configured.
    pub sync: Option<Sync>,
    /// Static routes; those whose gateway is reached through a VIP interface follow the
    /// VIP (installed on the master, withdrawn on the backup).
    pub routes: Vec<Route>,
    /// Addresses whose traffic conntrack sync ignores: both nodes' own interface addresses
    /// (not the VIPs: NATed and DNATed flows use those and must be replicated).
    pub conntrack_ignore: Vec<IpAddr>,
    /// Named objects, expanded (the ruleset compiler turns them into named sets).
    pub objects: Objects,
    /// The filter policy with every reference resolved.
    pub policy: Policy,
    /// NAT rules with every reference resolved.
    pub nat: Vec<NatRule>,
    /// Where the management API listens and who may reach it.
    pub management: Management,
}

/// One interface (zone) of a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    /// Zone name, e.g. `outside`.
    pub name: String,
    /// Kernel device name, e.g. `eth0`.
    pub device: String,
    /// The node's own addresses with prefix length, in config order.
    pub addresses: Vec<IpNet>,
}

/// The peer node, as seen from this node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    /// The peer's node name.
    pub node: String,
    /// The peer's VRRP priority.
    pub priority: u8,
    /// The peer's interfaces by zone name.
    pub interfaces: BTreeMap<String, Interface>,
}

/// VRRP settings shared by all virtual routers of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vrrp {
    /// Advertisement interval in milliseconds (a multiple of 10, 10..=40950).
    pub advert_interval_ms: u32,
    /// Whether a higher-priority backup preempts a lower-priority master.
    pub preempt: bool,
    /// Delay after start before preempting a running master, in milliseconds.
    pub preempt_delay_ms: u32,
    /// RFC 5798 Accept_Mode: whether the master accepts packets addressed to the VIPs.
    pub accept_mode: bool,
    /// Gratuitous ARPs / unsolicited NAs sent on becoming master.
    pub garp_count: u32,
    /// Interval between those, in milliseconds.
    pub garp_interval_ms: u32,
    /// Sync groups: all routers of a group change state together.
    pub groups: Vec<VrrpGroup>,
}

/// A VRRP sync group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VrrpGroup {
    /// Group name.
    pub name: String,
    /// Zones whose carrier loss puts the whole group in FAULT.
    pub track: Vec<String>,
    /// The group's virtual routers: one per (VIP entry, address family).
    pub routers: Vec<VirtualRouter>,
}

/// One VRRPv3 virtual router: one VRID on one interface for one address family.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VirtualRouter {
    /// Virtual router id, 1..=255.
    pub vrid: u8,
    /// Address family (VRRPv3 runs one router per family with the same VRID).
    pub family: Family,
    /// Zone name.
    pub interface: String,
    /// Kernel device of that zone on this node.
    pub device: String,
    /// The virtual addresses with prefix length.
    pub addresses: Vec<IpNet>,
}

/// Conntrack sync settings resolved for this node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sync {
    /// Zone name of the sync link.
    pub interface: String,
    /// Kernel device of the sync link.
    pub device: String,
    /// This node's address on the sync link.
    pub local: IpAddr,
    /// The peer's address on the sync link.
    pub peer: IpAddr,
    /// UDP port of the sync protocol.
    pub port: u16,
}

/// A static route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// Destination prefix.
    pub destination: IpNet,
    /// Next hop.
    pub gateway: IpAddr,
    /// Zone name.
    pub interface: String,
    /// Kernel device.
    pub device: String,
    /// True when the interface carries a VIP: the route is installed only on the master.
    pub follows_vip: bool,
}

/// Named objects, expanded.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Objects {
    /// `[objects.networks]`: name -> prefixes.
    pub networks: BTreeMap<String, Vec<IpNet>>,
    /// `[objects.services]`: name -> services.
    pub services: BTreeMap<String, Vec<Service>>,
}

/// One protocol/port (or ICMP type) entry of a service object.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(tag = "proto", rename_all = "lowercase")]
pub enum Service {
    /// `tcp/PORT` or `tcp/LOW-HIGH`.
    Tcp {
        /// First port.
        from: u16,
        /// Last port (equal to `from` for a single port).
        to: u16,
    },
    /// `udp/PORT` or `udp/LOW-HIGH`.
    Udp {
        /// First port.
        from: u16,
        /// Last port.
        to: u16,
    },
    /// `icmp/TYPE` (nft type name, e.g. `echo-request`) or plain `icmp` (any type).
    Icmp {
        /// nft ICMP type name; `None` means any.
        r#type: Option<String>,
    },
    /// `icmpv6/TYPE` or plain `icmpv6`.
    Icmpv6 {
        /// nft ICMPv6 type name; `None` means any.
        r#type: Option<String>,
    },
}

/// The filter policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// What happens to traffic no rule accepts.
    pub default: Action,
    /// Log what falls to the default.
    pub log_default: bool,
    /// Rules in config order.
    pub rules: Vec<Rule>,
}

/// accept / drop / reject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Let it through.
    Accept,
    /// Silently discard.
    Drop,
    /// Discard with an ICMP error / TCP reset.
    Reject,
}

/// One side of a rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Endpoint {
    /// `any`.
    Any,
    /// `self`: the firewall itself. As `to` the rule goes to the input chain, as `from`
    /// (its own outgoing connections) to the output chain; not both in one rule.
    #[serde(rename = "self")]
    SelfNode,
    /// A zone (interface), matched by device.
    Zone {
        /// Zone name.
        name: String,
        /// Device on this node.
        device: String,
    },
    /// A network object, matched by address.
    Network {
        /// Object name.
        name: String,
        /// Its prefixes.
        networks: Vec<IpNet>,
    },
}

/// `rate_limit = "N/second|minute|hour"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimit {
    /// Packets per unit.
    pub count: u32,
    /// second, minute, hour or day.
    pub per: RateUnit,
}

/// Time unit of a rate limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RateUnit {
    /// Per second.
    Second,
    /// Per minute.
    Minute,
    /// Per hour.
    Hour,
    /// Per day.
    Day,
}

/// One filter rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    /// Unique rule name (log prefixes and diffs use it).
    pub name: String,
    /// Source.
    pub from: Endpoint,
    /// Destination.
    pub to: Endpoint,
    /// Name of the service object, if any.
    pub service_name: Option<String>,
    /// Expanded services; empty means any protocol.
    pub services: Vec<Service>,
    /// What to do.
    pub action: Action,
    /// Log matches.
    pub log: bool,
    /// Per-source rate limit of new connections.
    pub rate_limit: Option<RateLimit>,
}

/// One NAT rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum NatRule {
    /// Source NAT (or masquerade) on the way out of a zone.
    Snat {
        /// Rule name.
        name: String,
        /// Matched source prefixes (expanded object or literal).
        from: Vec<IpNet>,
        /// Name of the source object, when `from` named one.
        from_name: Option<String>,
        /// Outgoing zone.
        out: String,
        /// Outgoing device.
        out_device: String,
        /// Translation target.
        to: SnatTarget,
    },
    /// Destination NAT (port forward) on the way into a zone.
    Dnat {
        /// Rule name.
        name: String,
        /// Incoming zone.
        r#in: String,
        /// Incoming device.
        in_device: String,
        /// Matched destination addresses (e.g. the resolved `vip:outside`).
        destination: Vec<IpAddr>,
        /// Services matched; empty means any.
        services: Vec<Service>,
        /// Name of the service object, when one was named.
        service_name: Option<String>,
        /// Translated destination address.
        to: IpAddr,
        /// Name of the network object `to` named, when it named one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        to_name: Option<String>,
        /// Translated destination port, when it differs from the original.
        to_port: Option<u16>,
    },
}

/// Where source NAT translates to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum SnatTarget {
    /// Fixed addresses (e.g. the resolved `vip:outside`, one per family present).
    Address {
        /// The addresses.
        addresses: Vec<IpAddr>,
    },
    /// The outgoing interface's primary address.
    Masquerade,
}

/// Management API access.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Management {
    /// TCP port of the management API.
    pub port: u16,
    /// Zones the API listens on (the sync link is always included).
    pub interfaces: Vec<String>,
    /// Source prefixes allowed to reach it (empty: the zones' own subnets).
    pub allowed_from: Vec<IpNet>,
    /// The network objects `allowed_from` named (their prefixes are in `allowed_from`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_from_names: Vec<String>,
}
