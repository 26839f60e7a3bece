//! Planted lint cases: shadowed rules (exact over prefixes, protocols and port ranges),
//! rules that are not shadowed although they overlap, unused objects, any-to-any accepts,
//! and `--strict`.

use twinwall_config::{Action, Endpoint, NodeView, RateLimit, RateUnit, Rule, Service};
use twinwall_ruleset::{CompileError, LintKind, Options, compile, fixtures, lint};

fn net(name: &str, nets: &[&str]) -> Endpoint {
    Endpoint::Network {
        name: name.into(),
        networks: nets.iter().map(|n| n.parse().unwrap()).collect(),
    }
}

fn zone(name: &str, device: &str) -> Endpoint {
    Endpoint::Zone {
        name: name.into(),
        device: device.into(),
    }
}

fn rule(name: &str, from: Endpoint, to: Endpoint, services: Vec<Service>, action: Action) -> Rule {
    Rule {
        name: name.into(),
        from,
        to,
        service_name: None,
        services,
        action,
        log: false,
        rate_limit: None,
    }
}

fn tcp(from: u16, to: u16) -> Service {
    Service::Tcp { from, to }
}

fn view_with(rules: Vec<Rule>) -> NodeView {
    let mut v = fixtures::seed_pair("lj-fw-1");
    v.policy.rules = rules;
    v.nat.clear();
    v.objects.networks.clear();
    v.objects.services.clear();
    v
}

fn shadowed(v: &NodeView) -> Vec<String> {
    lint(v)
        .into_iter()
        .filter(|l| l.kind == LintKind::Shadowed)
        .map(|l| l.subject)
        .collect()
}

#[test]
fn union_of_two_half_prefixes_shadows_the_whole_prefix() {
    let out = zone("outside", "eth0");
    let v = view_with(vec![
        rule(
            "low-half",
            out.clone(),
            net("a", &["198.51.100.0/25"]),
            vec![tcp(80, 80)],
            Action::Accept,
        ),
        rule(
            "high-half",
            out.clone(),
            net("b", &["198.51.100.128/25"]),
            vec![tcp(80, 80)],
            Action::Drop,
        ),
        rule(
            "whole",
            out.clone(),
            net("c", &["198.51.100.0/24"]),
            vec![tcp(80, 80)],
            Action::Accept,
        ),
    ]);
    let lints = lint(&v);
    let l = lints
        .iter()
        .find(|l| l.kind == LintKind::Shadowed)
        .expect("shadowed");
    assert_eq!(l.subject, "whole");
    assert!(
        l.message.contains("`low-half`") && l.message.contains("`high-half`"),
        "{}",
        l.message
    );
}

#[test]
fn port_ranges_are_exact() {
    let out = zone("outside", "eth0");
    let dst = || net("web", &["198.51.100.10/32"]);
    // 1000-1999 and 2000-2999 together cover 1500-2500 ...
    let v = view_with(vec![
        rule(
            "a",
            out.clone(),
            dst(),
            vec![tcp(1000, 1999)],
            Action::Accept,
        ),
        rule(
            "b",
            out.clone(),
            dst(),
            vec![tcp(2000, 2999)],
            Action::Accept,
        ),
        rule("c", out.clone(), dst(), vec![tcp(1500, 2500)], Action::Drop),
    ]);
    assert_eq!(shadowed(&v), ["c"]);
    // ... but with a one-port gap (2000 missing) nothing is shadowed.
    let v = view_with(vec![
        rule(
            "a",
            out.clone(),
            dst(),
            vec![tcp(1000, 1999)],
            Action::Accept,
        ),
        rule(
            "b",
            out.clone(),
            dst(),
            vec![tcp(2001, 2999)],
            Action::Accept,
        ),
        rule("c", out.clone(), dst(), vec![tcp(1500, 2500)], Action::Drop),
    ]);
    assert!(shadowed(&v).is_empty());
    // UDP does not cover TCP.
    let v = view_with(vec![
        rule(
            "udp",
            out.clone(),
            dst(),
            vec![Service::Udp { from: 1, to: 65535 }],
            Action::Accept,
        ),
        rule("tcp", out.clone(), dst(), vec![tcp(80, 80)], Action::Drop),
    ]);
    assert!(shadowed(&v).is_empty());
}

#[test]
fn any_protocol_and_broader_zones_shadow_narrower_rules() {
    let v = view_with(vec![
        rule(
            "in-to-out",
            zone("inside", "eth1"),
            zone("outside", "eth0"),
            vec![],
            Action::Accept,
        ),
        rule(
            "lan-web-out",
            net("lan", &["198.51.100.0/24"]),
            zone("outside", "eth0"),
            vec![tcp(443, 443)],
            Action::Accept,
        ),
        rule(
            "inside-web-out",
            zone("inside", "eth1"),
            zone("outside", "eth0"),
            vec![tcp(443, 443)],
            Action::Accept,
        ),
    ]);
    // lan-web-out is not shadowed: lan traffic may arrive on any interface.
    assert_eq!(shadowed(&v), ["inside-web-out"]);
}

#[test]
fn chains_and_rate_limits_are_respected() {
    let mut limited = rule(
        "limited",
        Endpoint::Any,
        Endpoint::SelfNode,
        vec![tcp(22, 22)],
        Action::Accept,
    );
    limited.rate_limit = Some(RateLimit {
        count: 5,
        per: RateUnit::Second,
    });
    let v = view_with(vec![
        // A forward rule does not shadow an input rule.
        rule(
            "fwd",
            Endpoint::Any,
            zone("inside", "eth1"),
            vec![tcp(22, 22)],
            Action::Accept,
        ),
        limited,
        // A rate-limited rule lets what exceeds the limit fall through: no shadowing.
        rule(
            "ssh-self",
            Endpoint::Any,
            Endpoint::SelfNode,
            vec![tcp(22, 22)],
            Action::Drop,
        ),
        rule(
            "ssh-self-again",
            net("x", &["192.0.2.0/24"]),
            Endpoint::SelfNode,
            vec![tcp(22, 22)],
            Action::Accept,
        ),
    ]);
    assert_eq!(shadowed(&v), ["ssh-self-again"]);
}

#[test]
fn ipv6_is_checked_per_family() {
    let v = view_with(vec![
        rule(
            "v4-only",
            Endpoint::Any,
            net("lan4", &["198.51.100.0/24"]),
            vec![],
            Action::Accept,
        ),
        // Covers v4 but not v6: not shadowed.
        rule(
            "dual",
            Endpoint::Any,
            net("lan", &["198.51.100.0/24", "2001:db8::/64"]),
            vec![],
            Action::Drop,
        ),
        rule(
            "v6",
            Endpoint::Any,
            net("lan6", &["2001:db8::/65"]),
            vec![],
            Action::Drop,
        ),
        rule(
            "never",
            net("a4", &["198.51.100.0/24"]),
            net("b6", &["2001:db8::/64"]),
            vec![],
            Action::Drop,
        ),
    ]);
    assert_eq!(shadowed(&v), ["v6"]);
    assert!(
        lint(&v)
            .iter()
            .any(|l| l.kind == LintKind::NeverMatches && l.subject == "never")
    );
}

#[test]
fn unused_objects_and_any_to_any_are_found_and_strict_fails() {
    let mut v = fixtures::seed_pair("lj-fw-1");
    v.objects.networks.insert(
        "planted_unused".into(),
        vec!["192.0.2.128/25".parse().unwrap()],
    );
    v.policy.rules.push(rule(
        "open-door",
        Endpoint::Any,
        Endpoint::Any,
        vec![],
        Action::Accept,
    ));
    let lints = lint(&v);
    let kinds: Vec<(LintKind, &str)> = lints.iter().map(|l| (l.kind, l.subject.as_str())).collect();
    assert!(
        kinds.contains(&(LintKind::UnusedObject, "planted_unused")),
        "{kinds:?}"
    );
    assert!(
        kinds.contains(&(LintKind::UnusedObject, "dns")),
        "{kinds:?}"
    );
    assert!(
        kinds.contains(&(LintKind::AnyToAnyAccept, "open-door")),
        "{kinds:?}"
    );
    assert!(
        !kinds
            .iter()
            .any(|k| k.1 == "lan" || k.1 == "web_server" || k.1 == "web")
    );
    // Warnings by default, an error with strict.
    assert!(compile(&v, &Options::default()).is_ok());
    match compile(
        &v,
        &Options {
            strict: true,
            ..Options::default()
        },
    ) {
        Err(CompileError::Strict { lints }) => assert_eq!(lints.len(), 3),
        other => panic!("expected a strict error, got {other:?}"),
    }
}

#[test]
fn dual_stack_example_has_no_findings() {
    assert!(lint(&fixtures::dual_stack("fw-a")).is_empty());
}
