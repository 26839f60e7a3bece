//! Turns a [`NodeView`] into the service's plan: groups, routers, tracked devices and the
//! routes that follow the VIPs, with every setting checked for what VRRPv3 can carry.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;
use twinwall_config::{Family, NodeView, Route};

/// A configuration VRRP cannot run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// The advert interval does not fit the 12-bit centisecond field.
    #[error("vrrp.advert_interval_ms = {ms}: must be a multiple of 10 between 10 and 40950")]
    Interval {
        /// The configured value.
        ms: u32,
    },
    /// Priority 0 and 255 have protocol meanings.
    #[error("node {node}: priority {priority} must be between 1 and 254")]
    Priority {
        /// Node name.
        node: String,
        /// The priority.
        priority: u8,
    },
    /// An IPv4 router needs an IPv4 address of the node on its interface.
    #[error(
        "group {group}, VRID {vrid}: interface {zone} ({device}) has no IPv4 address of this node"
    )]
    NoPrimary {
        /// Group.
        group: String,
        /// VRID.
        vrid: u8,
        /// Zone.
        zone: String,
        /// Device.
        device: String,
    },
    /// A tracked zone that the node does not have.
    #[error("group {group}: tracked interface {zone} is not an interface of node {node}")]
    UnknownTrack {
        /// Group.
        group: String,
        /// Zone.
        zone: String,
        /// Node.
        node: String,
    },
    /// Two routers with one VRID and family on one device.
    #[error("VRID {vrid} ({family:?}) is configured twice on {device}")]
    Duplicate {
        /// VRID.
        vrid: u8,
        /// Family.
        family: Family,
        /// Device.
        device: String,
    },
    /// A router whose addresses are not all of its family, or none at all.
    #[error("group {group}, VRID {vrid}: addresses must be non-empty and all {family:?}")]
    Addresses {
        /// Group.
        group: String,
        /// VRID.
        vrid: u8,
        /// Family.
        family: Family,
    },
}

/// One virtual router to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouterPlan {
    /// VRID.
    pub vrid: u8,
    /// Family.
    pub family: Family,
    /// Zone name.
    pub zone: String,
    /// Kernel device.
    pub device: String,
    /// The VIPs with prefix length.
    pub addresses: Vec<IpNet>,
    /// The node's IPv4 address on the device (IPv6 routers use the link-local address,
    /// found at start-up).
    pub primary_v4: Option<IpAddr>,
}

/// One sync group to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupPlan {
    /// Name.
    pub name: String,
    /// Tracked zones.
    pub track: Vec<String>,
    /// Their devices, in the same order.
    pub track_devices: Vec<String>,
    /// The routers.
    pub routers: Vec<RouterPlan>,
    /// Routes that follow this group's VIPs (their device carries one of its routers).
    pub routes: Vec<Route>,
}

/// Everything the service runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Node name.
    pub node: String,
    /// Priority.
    pub priority: u8,
    /// Advertisement_Interval in centiseconds.
    pub advert_interval_cs: u16,
    /// Preempt_Mode.
    pub preempt: bool,
    /// Preempt delay.
    pub preempt_delay: Duration,
    /// Accept_Mode.
    pub accept_mode: bool,
    /// GARP / NA repetitions.
    pub garp_count: u32,
    /// Interval between repetitions.
    pub garp_interval: Duration,
    /// The groups.
    pub groups: Vec<GroupPlan>,
}

impl Plan {
    /// Every VIP of the plan with its device (the start-up cleanup removes these).
    pub fn all_vips(&self) -> Vec<(String, IpNet)> {
        self.groups
            .iter()
            .flat_map(|g| g.routers.iter())
            .flat_map(|r| r.addresses.iter().map(|a| (r.device.clone(), *a)))
            .collect()
    }
}

/// Checks the view and builds the plan.
pub fn plan(view: &NodeView) -> Result<Plan, PlanError> {
    let ms = view.vrrp.advert_interval_ms;
    if !ms.is_multiple_of(10) || !(10..=40950).contains(&ms) {
        return Err(PlanError::Interval { ms });
    }
    if !(1..=254).contains(&view.priority) {
        return Err(PlanError::Priority {
            node: view.node.clone(),
            priority: view.priority,
        });
    }
    let mut seen = BTreeSet::new();
    let mut groups = Vec::new();
    for g in &view.vrrp.groups {
        let mut track_devices = Vec::new();
        for z in &g.track {
            let iface = view
                .interfaces
                .get(z)
                .ok_or_else(|| PlanError::UnknownTrack {
                    group: g.name.clone(),
                    zone: z.clone(),
                    node: view.node.clone(),
                })?;
            track_devices.push(iface.device.clone());
        }
        let mut routers = Vec::new();
        for r in &g.routers {
            if !seen.insert((r.vrid, r.family, r.device.clone())) {
                return Err(PlanError::Duplicate {
                    vrid: r.vrid,
                    family: r.family,
                    device: r.device.clone(),
                });
            }
            if r.addresses.is_empty()
                || r.addresses
                    .iter()
                    .any(|a| Family::of(&a.addr()) != r.family)
            {
                return Err(PlanError::Addresses {
                    group: g.name.clone(),
                    vrid: r.vrid,
                    family: r.family,
                });
            }
            let primary_v4 = match r.family {
                Family::Ipv6 => None,
                Family::Ipv4 => {
                    let p = view
                        .interfaces
                        .get(&r.interface)
                        .and_then(|i| i.addresses.iter().find(|a| a.addr().is_ipv4()))
                        .map(|a| a.addr())
                        .ok_or_else(|| PlanError::NoPrimary {
                            group: g.name.clone(),
                            vrid: r.vrid,
                            zone: r.interface.clone(),
                            device: r.device.clone(),
                        })?;
                    Some(p)
                }
            };
            routers.push(RouterPlan {
                vrid: r.vrid,
                family: r.family,
                zone: r.interface.clone(),
                device: r.device.clone(),
                addresses: r.addresses.clone(),
                primary_v4,
            });
        }
        let routes = view
            .routes
            .iter()
            .filter(|rt| rt.follows_vip)
            .filter(|rt| {
                routers
                    .iter()
                    .any(|r| r.device == rt.device && r.family == Family::of(&rt.gateway))
            })
            .cloned()
            .collect();
        groups.push(GroupPlan {
            name: g.name.clone(),
            track: g.track.clone(),
            track_devices,
            routers,
            routes,
        });
    }
    Ok(Plan {
        node: view.node.clone(),
        priority: view.priority,
        advert_interval_cs: (ms / 10) as u16,
        preempt: view.vrrp.preempt,
        preempt_delay: Duration::from_millis(u64::from(view.vrrp.preempt_delay_ms)),
        accept_mode: view.vrrp.accept_mode,
        garp_count: view.vrrp.garp_count,
        garp_interval: Duration::from_millis(u64::from(view.vrrp.garp_interval_ms)),
        groups,
    })
}
