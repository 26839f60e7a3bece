//! Resolution: the validated cluster model into one node's [`NodeView`] — devices looked
//! up, the peer filled in, VIPs split into one virtual router per family, objects
//! expanded, the conntrack ignore list derived.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::model::{EndpointDef, Model, NatDef, Node};
use crate::view::*;

fn device(node: &Node, zone: &str) -> String {
    // Validation guarantees every zone exists on both nodes.
    node.interfaces
        .get(zone)
        .map(|i| i.device.clone())
        .unwrap_or_default()
}

/// The view of `me` (an index into `model.nodes`, which holds exactly two).
pub(crate) fn node_view(model: &Model, me: usize) -> NodeView {
    let node = &model.nodes[me];
    let peer = &model.nodes[1 - me];

    let groups = model
        .groups
        .iter()
        .map(|g| {
            let mut routers = Vec::new();
            for vip in &g.vips {
                for family in [Family::Ipv4, Family::Ipv6] {
                    let addresses: Vec<IpNet> = vip
                        .addresses
                        .iter()
                        .copied()
                        .filter(|a| Family::of(&a.addr()) == family)
                        .collect();
                    if !addresses.is_empty() {
                        routers.push(VirtualRouter {
                            vrid: vip.vrid,
                            family,
                            interface: vip.zone.clone(),
                            device: device(node, &vip.zone),
                            addresses,
                        });
                    }
                }
            }
            VrrpGroup {
                name: g.name.clone(),
                track: g.track.clone(),
                routers,
            }
        })
        .collect();

    let sync = model.sync.as_ref().and_then(|s| {
        let mine = node.interfaces.get(&s.zone)?;
        let theirs = peer.interfaces.get(&s.zone)?;
        let local = mine.addresses.first()?.addr();
        let peer_addr = theirs
            .addresses
            .iter()
            .map(IpNet::addr)
            .find(|a| Family::of(a) == Family::of(&local))?;
        Some(Sync {
            interface: s.zone.clone(),
            device: mine.device.clone(),
            local,
            peer: peer_addr,
            port: s.port,
        })
    });

    let vip_families: Vec<(&str, Family)> = model
        .groups
        .iter()
        .flat_map(|g| &g.vips)
        .flat_map(|v| {
            v.addresses
                .iter()
                .map(move |a| (v.zone.as_str(), Family::of(&a.addr())))
        })
        .collect();
    let routes = model
        .routes
        .iter()
        .map(|r| Route {
            destination: r.destination,
            gateway: r.gateway,
            interface: r.zone.clone(),
            device: device(node, &r.zone),
            // A route follows the VIP when its next hop is reached through an interface
            // carrying a VIP of the same family: only the master owns that path.
            follows_vip: vip_families.contains(&(r.zone.as_str(), Family::of(&r.gateway))),
        })
        .collect();

    let mut conntrack_ignore: Vec<IpAddr> = model
        .nodes
        .iter()
        .flat_map(|n| n.interfaces.values())
        .flat_map(|i| i.addresses.iter().map(IpNet::addr))
        .collect();
    conntrack_ignore.sort();
    conntrack_ignore.dedup();

    let endpoint = |e: &EndpointDef| match e {
        EndpointDef::Any => Endpoint::Any,
        EndpointDef::SelfNode => Endpoint::SelfNode,
        EndpointDef::Zone(z) => Endpoint::Zone {
            name: z.clone(),
            device: device(node, z),
        },
        EndpointDef::Network(n) => Endpoint::Network {
            name: n.clone(),
            networks: model.objects.networks.get(n).cloned().unwrap_or_default(),
        },
    };
    let services = |s: &Option<String>| -> Vec<Service> {
        s.as_ref()
            .and_then(|s| model.objects.services.get(s))
            .cloned()
            .unwrap_or_default()
    };
    let policy = Policy {
        default: model.policy.default,
        log_default: model.policy.log_default,
        rules: model
            .policy
            .rules
            .iter()
            .map(|r| Rule {
                name: r.name.clone(),
                from: endpoint(&r.from),
                to: endpoint(&r.to),
                service_name: r.service.clone(),
                services: services(&r.service),
                action: r.action,
                log: r.log,
                rate_limit: r.rate_limit,
            })
            .collect(),
    };

    let nat = model
        .nat
        .iter()
        .map(|n| match n {
            NatDef::Snat {
                name,
                from,
                from_name,
                out,
                to,
            } => NatRule::Snat {
                name: name.clone(),
                from: from.clone(),
                from_name: from_name.clone(),
                out: out.clone(),
                out_device: device(node, out),
                to: to.clone(),
            },
            NatDef::Dnat {
                name,
                in_zone,
                destination,
                service,
                to,
                to_name,
                to_port,
            } => NatRule::Dnat {
                name: name.clone(),
                r#in: in_zone.clone(),
                in_device: device(node, in_zone),
                destination: destination.clone(),
                services: services(service),
                service_name: service.clone(),
                to: *to,
                to_name: to_name.clone(),
                to_port: *to_port,
            },
        })
        .collect();

    NodeView {
        cluster: model.cluster.clone(),
        version: model.version,
        node: node.name.clone(),
        priority: node.priority,
        interfaces: node.interfaces.clone(),
        peer: Peer {
            node: peer.name.clone(),
            priority: peer.priority,
            interfaces: peer.interfaces.clone(),
        },
        vrrp: Vrrp {
            advert_interval_ms: model.vrrp.advert_interval_ms,
            preempt: model.vrrp.preempt,
            preempt_delay_ms: model.vrrp.preempt_delay_ms,
            accept_mode: model.vrrp.accept_mode,
            garp_count: model.vrrp.garp_count,
            garp_interval_ms: model.vrrp.garp_interval_ms,
            groups,
        },
        sync,
        routes,
        conntrack_ignore,
        objects: model.objects.clone(),
        policy,
        nat,
        management: Management {
            port: model.management.port,
            interfaces: model.management.interfaces.clone(),
            allowed_from: model.management.allowed_from.clone(),
            allowed_from_names: model.management.allowed_from_names.clone(),
        },
    }
}
