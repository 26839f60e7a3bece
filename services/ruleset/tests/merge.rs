//! Merged runs against real nftables: every shape of run the compiler merges (IPv4 and
//! IPv6 prefixes as destination or source, port ranges, address . port concatenations
//! with prefixes) becomes one rule over a set, every rule's name appears exactly once,
//! logged rules stay plain, and the script loads with `nft -f` in a fresh network
//! namespace with one counter per rule.

use twinwall_config::{Action, Endpoint, NodeView, Rule, Service};
use twinwall_ruleset::{Nft, Options, compile, fixtures};
use twinwall_testkit::{Netns, require_root};

fn net(name: &str, n: &str) -> Endpoint {
    Endpoint::Network {
        name: name.into(),
        networks: vec![n.parse().unwrap()],
    }
}

fn zone(device: &str) -> Endpoint {
    Endpoint::Zone {
        name: device.into(),
        device: device.into(),
    }
}

fn rule(name: String, from: Endpoint, to: Endpoint, svc: Service, action: Action) -> Rule {
    Rule {
        name,
        from,
        to,
        service_name: None,
        services: vec![svc],
        action,
        log: false,
        rate_limit: None,
    }
}

fn view() -> NodeView {
    let tcp = |from, to| Service::Tcp { from, to };
    let mut rules = Vec::new();
    for k in 0..6 {
        rules.push(rule(
            format!("v4dst-{k}"),
            zone("eth0"),
            net("n", &format!("10.{k}.0.0/16")),
            tcp(80, 80),
            Action::Accept,
        ));
    }
    for k in 0..5 {
        rules.push(rule(
            format!("v6src-{k}"),
            net("n", &format!("2001:db8:{k}::/48")),
            zone("eth1"),
            Service::Udp { from: 53, to: 53 },
            Action::Accept,
        ));
    }
    for k in 1..6 {
        rules.push(rule(
            format!("ports-{k}"),
            zone("eth0"),
            net("n", "192.0.2.10/32"),
            tcp(1000 * k, 1000 * k + 99),
            Action::Accept,
        ));
    }
    for k in 0..6 {
        rules.push(rule(
            format!("concat-{k}"),
            zone("eth0"),
            net("n", &format!("172.16.{k}.0/24")),
            tcp(7000 + k, 7000 + k),
            Action::Drop,
        ));
    }
    for k in 0..4 {
        let mut r = rule(
            format!("logged-{k}"),
            zone("eth0"),
            net("n", &format!("10.{}.0.0/16", 100 + k)),
            tcp(80, 80),
            Action::Accept,
        );
        r.log = true;
        rules.push(r);
    }
    let mut v = fixtures::seed_pair("lj-fw-1");
    v.policy.rules = rules;
    v
}

#[test]
fn every_shape_of_run_merges_and_loads() {
    let v = view();
    let script = compile(&v, &Options::default()).unwrap();
    let text = &script.text;
    for merged in [
        "iifname \"eth0\" tcp dport 80 ip daddr @forward_merged_0 counter accept comment \"v4dst-0 .. v4dst-5\"",
        "oifname \"eth1\" udp dport 53 ip6 saddr @forward_merged_1 counter accept comment \"v6src-0 .. v6src-4\"",
        "iifname \"eth0\" ip daddr 192.0.2.10 tcp dport @forward_merged_2 counter accept comment \"ports-1 .. ports-5\"",
        "iifname \"eth0\" ip daddr . tcp dport @forward_merged_3 counter drop comment \"concat-0 .. concat-5\"",
    ] {
        assert!(text.contains(merged), "missing `{merged}` in\n{text}");
    }
    assert!(text.contains("type ipv4_addr . inet_service\n        flags interval"));
    assert!(text.contains("172.16.5.0/24 . 7005 comment \"concat-5\""));
    assert!(text.contains("5000-5099 comment \"ports-5\""));
    assert!(text.contains("2001:db8:4::/48 comment \"v6src-4\""));
    for r in &v.policy.rules {
        let n = text.matches(&format!("comment \"{}\"", r.name)).count();
        assert_eq!(n, 1, "rule {} appears {n} times in\n{text}", r.name);
    }
    assert!(text.contains("log prefix \"tw:logged-3 \" accept comment \"logged-3\""));

    if !require_root() {
        return;
    }
    let ns = Netns::new("merge").unwrap();
    let nft = Nft::in_netns(ns.name());
    nft.apply(text).unwrap();
    let listed = nft.list_ruleset().unwrap();
    for r in v.policy.rules.iter().filter(|r| !r.log) {
        let pat = format!("counter packets 0 bytes 0 comment \"{}\"", r.name);
        assert_eq!(listed.matches(&pat).count(), 1, "{pat} in\n{listed}");
    }
}
