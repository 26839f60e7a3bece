//! Address sets of big host groups: a group whose addresses mostly sit next to each
//! other becomes an interval set of ranges (far fewer elements for nft to load) that
//! covers exactly the same addresses; a sparse group stays a hash set of hosts; both load
//! with `nft -f` in a fresh network namespace.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use ipnet::IpNet;
use twinwall_config::{Action, Endpoint, NodeView, Rule, Service};
use twinwall_ruleset::{Nft, Options, compile, fixtures};
use twinwall_testkit::{Netns, require_root};

/// The seed-pair view plus one rule to the group `big` of the given IPv4 hosts.
fn view_with_group(hosts: &[u32]) -> NodeView {
    let mut v = fixtures::seed_pair("lj-fw-1");
    let nets: Vec<IpNet> = hosts
        .iter()
        .map(|&h| IpNet::from(std::net::IpAddr::V4(Ipv4Addr::from(h))))
        .collect();
    v.objects.networks.insert("big".into(), nets.clone());
    v.policy.rules.push(Rule {
        name: "to-big".into(),
        from: Endpoint::Any,
        to: Endpoint::Network {
            name: "big".into(),
            networks: nets,
        },
        service_name: None,
        services: vec![Service::Tcp { from: 80, to: 80 }],
        action: Action::Accept,
        log: false,
        rate_limit: None,
    });
    v
}

/// The element list of set `name` in a compiled script.
fn elements<'s>(script: &'s str, name: &str) -> (&'s str, Vec<&'s str>) {
    let at = script
        .find(&format!("set {name} {{"))
        .unwrap_or_else(|| panic!("no set {name}"));
    let def = &script[at..at + script[at..].find("\n    }\n").unwrap()];
    let list = def.split("elements = { ").nth(1).unwrap();
    let list = &list[..list.find(" }").unwrap()];
    (def, list.split(", ").collect())
}

fn v4(s: &str) -> u32 {
    u32::from(s.parse::<Ipv4Addr>().unwrap())
}

/// Every address the elements cover.
fn covered(elems: &[&str]) -> BTreeSet<u32> {
    let mut out = BTreeSet::new();
    for e in elems {
        match e.split_once('-') {
            Some((a, b)) => out.extend(v4(a)..=v4(b)),
            None => {
                out.insert(v4(e));
            }
        }
    }
    out
}

#[test]
fn a_dense_host_group_becomes_ranges_over_exactly_its_addresses() {
    let base = v4("198.18.0.0");
    // About 3,550 of 4,096 addresses (every eighth one left out, and a few more): about
    // 550 runs.
    let hosts: Vec<u32> = (0..4096u32)
        .filter(|i| i % 8 != 7 && i % 97 != 50)
        .map(|i| base + i)
        .collect();
    let script = compile(&view_with_group(&hosts), &Options::default()).unwrap();
    let (def, elems) = elements(&script.text, "big_v4");
    assert!(def.contains("flags interval"), "{def}");
    assert!(!def.contains("size "), "{def}");
    assert!(elems.len() * 3 <= hosts.len(), "{} elements", elems.len());
    assert!(elems.iter().any(|e| e.contains('-')));
    assert_eq!(
        covered(&elems),
        hosts.iter().copied().collect::<BTreeSet<_>>()
    );
    assert!(
        script
            .text
            .contains("ip daddr @big_v4 tcp dport 80 counter accept")
    );

    if !require_root() {
        return;
    }
    let ns = Netns::new("ranges").unwrap();
    let nft = Nft::in_netns(ns.name());
    nft.apply(&script.text).unwrap();
    let listed = ns
        .run("nft", ["list", "set", "inet", "twinwall", "big_v4"])
        .unwrap();
    assert!(listed.contains("198.18.0.0-198.18.0.6"), "{listed}");
}

#[test]
fn a_sparse_or_small_host_group_stays_a_hash_set_of_hosts() {
    let base = v4("198.18.0.0");
    // Every other address: no two adjacent.
    let sparse: Vec<u32> = (0..1000u32).map(|i| base + 2 * i).collect();
    // Adjacent, but too few to matter.
    let small: Vec<u32> = (0..100u32).map(|i| base + i).collect();
    for hosts in [sparse, small] {
        let script = compile(&view_with_group(&hosts), &Options::default()).unwrap();
        let (def, elems) = elements(&script.text, "big_v4");
        assert!(!def.contains("interval"), "{def}");
        assert!(def.contains(&format!("size {}", hosts.len())), "{def}");
        assert_eq!(elems.len(), hosts.len());
        assert_eq!(
            covered(&elems),
            hosts.iter().copied().collect::<BTreeSet<_>>()
        );
        if require_root() {
            let ns = Netns::new("hosts").unwrap();
            Nft::in_netns(ns.name()).apply(&script.text).unwrap();
        }
    }
}
