//! The shared example configs as [`NodeView`] values built in code, exactly as
//! `twinwall_config` resolves `shared/examples/seed-pair.toml` and `dual-stack.toml`.
//! Tests, benchmarks and the golden files use them; the config-parser-based tests check
//! that the parser's views and these agree.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use twinwall_config::{
    Action, Endpoint, Family, Interface, Management, NatRule, NodeView, Objects, Peer, Policy,
    RateLimit, RateUnit, Route, Rule, Service, SnatTarget, Sync, VirtualRouter, Vrrp, VrrpGroup,
};

fn net(s: &str) -> IpNet {
    s.parse().expect("fixture prefix")
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("fixture address")
}

fn iface(name: &str, device: &str, addrs: &[&str]) -> (String, Interface) {
    (
        name.to_string(),
        Interface {
            name: name.to_string(),
            device: device.to_string(),
            addresses: addrs.iter().map(|a| net(a)).collect(),
        },
    )
}

fn zone(name: &str, device: &str) -> Endpoint {
    Endpoint::Zone {
        name: name.into(),
        device: device.into(),
    }
}

fn network(name: &str, nets: &[&str]) -> Endpoint {
    Endpoint::Network {
        name: name.into(),
        networks: nets.iter().map(|n| net(n)).collect(),
    }
}

fn sorted(mut v: Vec<IpAddr>) -> Vec<IpAddr> {
    v.sort();
    v
}

fn tcp(p: u16) -> Service {
    Service::Tcp { from: p, to: p }
}

fn udp(p: u16) -> Service {
    Service::Udp { from: p, to: p }
}

/// The view of `seed-pair.toml` for `lj-fw-1` or `lj-fw-2`.
pub fn seed_pair(node: &str) -> NodeView {
    let nodes = [
        (
            "lj-fw-1",
            200u8,
            "203.0.113.2/24",
            "198.51.100.2/24",
            "192.0.2.1/30",
        ),
        (
            "lj-fw-2",
            100u8,
            "203.0.113.3/24",
            "198.51.100.3/24",
            "192.0.2.2/30",
        ),
    ];
    let me = nodes
        .iter()
        .position(|n| n.0 == node)
        .expect("node of seed-pair");
    let ifs = |i: usize| -> BTreeMap<String, Interface> {
        let n = nodes[i];
        [
            iface("outside", "eth0", &[n.2]),
            iface("inside", "eth1", &[n.3]),
            iface("sync", "eth2", &[n.4]),
        ]
        .into_iter()
        .collect()
    };
    let peer = 1 - me;
    let web = vec![tcp(80), tcp(443)];
    NodeView {
        cluster: "lj-fw".into(),
        version: 1,
        node: node.into(),
        priority: nodes[me].1,
        interfaces: ifs(me),
        peer: Peer {
            node: nodes[peer].0.into(),
            priority: nodes[peer].1,
            interfaces: ifs(peer),
        },
        vrrp: Vrrp {
            advert_interval_ms: 100,
            preempt: true,
            preempt_delay_ms: 0,
            accept_mode: false,
            garp_count: 5,
            garp_interval_ms: 100,
            groups: vec![VrrpGroup {
                name: "edge".into(),
                track: vec!["outside".into(), "inside".into()],
                routers: vec![
                    VirtualRouter {
                        vrid: 51,
                        family: Family::Ipv4,
                        interface: "outside".into(),
                        device: "eth0".into(),
                        addresses: vec![net("203.0.113.1/24")],
                    },
                    VirtualRouter {
                        vrid: 52,
                        family: Family::Ipv4,
                        interface: "inside".into(),
                        device: "eth1".into(),
                        addresses: vec![net("198.51.100.1/24")],
                    },
                ],
            }],
        },
        sync: Some(Sync {
            interface: "sync".into(),
            device: "eth2".into(),
            local: nodes[me].4.parse::<IpNet>().expect("sync").addr(),
            peer: nodes[peer].4.parse::<IpNet>().expect("sync").addr(),
            port: 3780,
        }),
        routes: vec![Route {
            destination: net("0.0.0.0/0"),
            gateway: ip("203.0.113.254"),
            interface: "outside".into(),
            device: "eth0".into(),
            follows_vip: true,
        }],
        conntrack_ignore: sorted(
            nodes
                .iter()
                .flat_map(|n| [n.2, n.3, n.4])
                .map(|a| a.parse::<IpNet>().expect("addr").addr())
                .collect(),
        ),
        objects: Objects {
            networks: [
                ("lan".to_string(), vec![net("198.51.100.0/24")]),
                ("web_server".to_string(), vec![net("198.51.100.10/32")]),
                (
                    "admin_hosts".to_string(),
                    vec![net("198.51.100.20/32"), net("198.51.100.21/32")],
                ),
            ]
            .into_iter()
            .collect(),
            services: [
                ("web".to_string(), web.clone()),
                ("dns".to_string(), vec![udp(53), tcp(53)]),
                ("ssh".to_string(), vec![tcp(22)]),
            ]
            .into_iter()
            .collect(),
        },
        policy: Policy {
            default: Action::Drop,
            log_default: true,
            rules: vec![
                Rule {
                    name: "lan-to-internet".into(),
                    from: zone("inside", "eth1"),
                    to: zone("outside", "eth0"),
                    service_name: None,
                    services: vec![],
                    action: Action::Accept,
                    log: false,
                    rate_limit: None,
                },
                Rule {
                    name: "web-from-internet".into(),
                    from: zone("outside", "eth0"),
                    to: network("web_server", &["198.51.100.10/32"]),
                    service_name: Some("web".into()),
                    services: web.clone(),
                    action: Action::Accept,
                    log: false,
                    rate_limit: None,
                },
                Rule {
                    name: "admin-ssh-to-firewall".into(),
                    from: network("admin_hosts", &["198.51.100.20/32", "198.51.100.21/32"]),
                    to: Endpoint::SelfNode,
                    service_name: Some("ssh".into()),
                    services: vec![tcp(22)],
                    action: Action::Accept,
                    log: false,
                    rate_limit: None,
                },
            ],
        },
        nat: vec![
            NatRule::Snat {
                name: "lan-masquerade".into(),
                from: vec![net("198.51.100.0/24")],
                from_name: Some("lan".into()),
                out: "outside".into(),
                out_device: "eth0".into(),
                to: SnatTarget::Address {
                    addresses: vec![ip("203.0.113.1")],
                },
            },
            NatRule::Dnat {
                name: "publish-web".into(),
                r#in: "outside".into(),
                in_device: "eth0".into(),
                destination: vec![ip("203.0.113.1")],
                services: web,
                service_name: Some("web".into()),
                to: ip("198.51.100.10"),
                to_name: Some("web_server".into()),
                to_port: None,
            },
        ],
        management: Management {
            port: 9780,
            interfaces: vec!["sync".into()],
            allowed_from: vec![],
            allowed_from_names: vec![],
        },
    }
}

/// The view of `dual-stack.toml` for `fw-a` or `fw-b`.
pub fn dual_stack(node: &str) -> NodeView {
    let nodes = [
        (
            "fw-a",
            150u8,
            ["203.0.113.2/24", "2001:db8:0:1::2/64"],
            ["198.51.100.2/24", "2001:db8:0:2::2/64"],
            "192.0.2.1/30",
        ),
        (
            "fw-b",
            100u8,
            ["203.0.113.3/24", "2001:db8:0:1::3/64"],
            ["198.51.100.3/24", "2001:db8:0:2::3/64"],
            "192.0.2.2/30",
        ),
    ];
    let me = nodes
        .iter()
        .position(|n| n.0 == node)
        .expect("node of dual-stack");
    let ifs = |i: usize| -> BTreeMap<String, Interface> {
        let n = &nodes[i];
        [
            iface("outside", "eth0", &n.2),
            iface("inside", "eth1", &n.3),
            iface("sync", "eth2", &[n.4]),
        ]
        .into_iter()
        .collect()
    };
    let peer = 1 - me;
    let router = |vrid, family, zone: &str, dev: &str, a: &str| VirtualRouter {
        vrid,
        family,
        interface: zone.into(),
        device: dev.into(),
        addresses: vec![net(a)],
    };
    let icmp_echo = vec![
        Service::Icmp {
            r#type: Some("echo-request".into()),
        },
        Service::Icmpv6 {
            r#type: Some("echo-request".into()),
        },
    ];
    NodeView {
        cluster: "ds-fw".into(),
        version: 1,
        node: node.into(),
        priority: nodes[me].1,
        interfaces: ifs(me),
        peer: Peer {
            node: nodes[peer].0.into(),
            priority: nodes[peer].1,
            interfaces: ifs(peer),
        },
        vrrp: Vrrp {
            advert_interval_ms: 50,
            preempt: true,
            preempt_delay_ms: 5000,
            accept_mode: false,
            garp_count: 5,
            garp_interval_ms: 100,
            groups: vec![VrrpGroup {
                name: "edge".into(),
                track: vec!["outside".into(), "inside".into()],
                routers: vec![
                    router(61, Family::Ipv4, "outside", "eth0", "203.0.113.1/24"),
                    router(61, Family::Ipv6, "outside", "eth0", "2001:db8:0:1::1/64"),
                    router(62, Family::Ipv4, "inside", "eth1", "198.51.100.1/24"),
                    router(62, Family::Ipv6, "inside", "eth1", "2001:db8:0:2::1/64"),
                ],
            }],
        },
        sync: Some(Sync {
            interface: "sync".into(),
            device: "eth2".into(),
            local: nodes[me].4.parse::<IpNet>().expect("sync").addr(),
            peer: nodes[peer].4.parse::<IpNet>().expect("sync").addr(),
            port: 3780,
        }),
        routes: vec![
            Route {
                destination: net("::/0"),
                gateway: ip("2001:db8:0:1::fe"),
                interface: "outside".into(),
                device: "eth0".into(),
                follows_vip: true,
            },
            Route {
                destination: net("0.0.0.0/0"),
                gateway: ip("203.0.113.254"),
                interface: "outside".into(),
                device: "eth0".into(),
                follows_vip: true,
            },
        ],
        conntrack_ignore: sorted(
            nodes
                .iter()
                .flat_map(|n| n.2.iter().chain(n.3.iter()).chain([&n.4]).copied())
                .map(|a| a.parse::<IpNet>().expect("addr").addr())
                .collect(),
        ),
        objects: Objects {
            networks: [
                (
                    "lan".to_string(),
                    vec![net("198.51.100.0/24"), net("2001:db8:0:2::/64")],
                ),
                (
                    "dns_servers".to_string(),
                    vec![net("198.51.100.53/32"), net("2001:db8:0:2::53/128")],
                ),
            ]
            .into_iter()
            .collect(),
            services: [
                ("dns".to_string(), vec![udp(53), tcp(53)]),
                ("icmp_echo".to_string(), icmp_echo.clone()),
            ]
            .into_iter()
            .collect(),
        },
        policy: Policy {
            default: Action::Drop,
            log_default: false,
            rules: vec![
                Rule {
                    name: "lan-out".into(),
                    from: network("lan", &["198.51.100.0/24", "2001:db8:0:2::/64"]),
                    to: zone("outside", "eth0"),
                    service_name: None,
                    services: vec![],
                    action: Action::Accept,
                    log: false,
                    rate_limit: None,
                },
                Rule {
                    name: "dns-in".into(),
                    from: zone("outside", "eth0"),
                    to: network("dns_servers", &["198.51.100.53/32", "2001:db8:0:2::53/128"]),
                    service_name: Some("dns".into()),
                    services: vec![udp(53), tcp(53)],
                    action: Action::Accept,
                    log: false,
                    rate_limit: None,
                },
                Rule {
                    name: "ping-firewall".into(),
                    from: Endpoint::Any,
                    to: Endpoint::SelfNode,
                    service_name: Some("icmp_echo".into()),
                    services: icmp_echo,
                    action: Action::Accept,
                    log: false,
                    rate_limit: Some(RateLimit {
                        count: 10,
                        per: RateUnit::Second,
                    }),
                },
            ],
        },
        nat: vec![NatRule::Snat {
            name: "lan-masquerade-v4".into(),
            from: vec![net("198.51.100.0/24")],
            from_name: None,
            out: "outside".into(),
            out_device: "eth0".into(),
            to: SnatTarget::Address {
                addresses: vec![ip("203.0.113.1")],
            },
        }],
        management: Management {
            port: 9780,
            interfaces: vec!["sync".into()],
            allowed_from: vec![],
            allowed_from_names: vec![],
        },
    }
}
