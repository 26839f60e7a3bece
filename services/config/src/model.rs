//! The validated, cluster-wide model: what [`crate::validate`] produces from the raw TOML
//! once every check passed. Names are checked to exist, addresses are parsed, defaults are
//! filled in; per-node details (devices, peer, expansion) are left to [`crate::resolve`].

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::view::{Action, Interface, Objects, RateLimit, SnatTarget};

/// Default `[vrrp] advert_interval_ms` (RFC 5798: 100 centiseconds).
pub const DEFAULT_ADVERT_INTERVAL_MS: u32 = 1000;
/// Default `[vrrp] garp_count` (as keepalived's `vrrp_garp_master_repeat`).
pub const DEFAULT_GARP_COUNT: u32 = 5;
/// Default `[vrrp] garp_interval_ms`.
pub const DEFAULT_GARP_INTERVAL_MS: u32 = 100;
/// Default `[sync] port`.
pub const DEFAULT_SYNC_PORT: u16 = 3780;
/// Default `[management] port`.
pub const DEFAULT_MANAGEMENT_PORT: u16 = 9780;

/// A validated cluster.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Model {
    pub cluster: String,
    pub version: u64,
    /// Exactly two, sorted by name.
    pub nodes: Vec<Node>,
    pub vrrp: VrrpSettings,
    pub groups: Vec<Group>,
    pub sync: Option<SyncSettings>,
    pub routes: Vec<RouteDef>,
    pub objects: Objects,
    pub policy: PolicyDef,
    pub nat: Vec<NatDef>,
    pub management: ManagementDef,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Node {
    pub name: String,
    pub priority: u8,
    pub interfaces: BTreeMap<String, Interface>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct VrrpSettings {
    pub advert_interval_ms: u32,
    pub preempt: bool,
    pub preempt_delay_ms: u32,
    pub accept_mode: bool,
    pub garp_count: u32,
    pub garp_interval_ms: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Group {
    pub name: String,
    pub track: Vec<String>,
    pub vips: Vec<Vip>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Vip {
    pub vrid: u8,
    pub zone: String,
    pub addresses: Vec<IpNet>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SyncSettings {
    pub zone: String,
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RouteDef {
    pub destination: IpNet,
    pub gateway: IpAddr,
    pub zone: String,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum EndpointDef {
    Any,
    SelfNode,
    Zone(String),
    Network(String),
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RuleDef {
    pub name: String,
    pub from: EndpointDef,
    pub to: EndpointDef,
    pub service: Option<String>,
    pub action: Action,
    pub log: bool,
    pub rate_limit: Option<RateLimit>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PolicyDef {
    pub default: Action,
    pub log_default: bool,
    pub rules: Vec<RuleDef>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum NatDef {
    Snat {
        name: String,
        from: Vec<IpNet>,
        from_name: Option<String>,
        out: String,
        to: SnatTarget,
    },
    Dnat {
        name: String,
        in_zone: String,
        destination: Vec<IpAddr>,
        service: Option<String>,
        to: IpAddr,
        to_name: Option<String>,
        to_port: Option<u16>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ManagementDef {
    pub port: u16,
    pub interfaces: Vec<String>,
    pub allowed_from: Vec<IpNet>,
    pub allowed_from_names: Vec<String>,
}
