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
fn shadowing_is_found_across_single_port_and_range_rules() {
    // The index files few-port rules by exact port and wide ones by 64-port bucket:
    // shadowing must be seen in every combination.
    let out = zone("outside", "eth0");
    let dst = || net("web", &["198.51.100.10/32"]);
    let v = view_with(vec![
        rule("p80", out.clone(), dst(), vec![tcp(80, 80)], Action::Accept),
        rule(
            "r81",
            out.clone(),
            dst(),
            vec![tcp(81, 200)],
            Action::Accept,
        ),
        // A range covered by one single-port rule and one range rule.
        rule(
            "r80-200",
            out.clone(),
            dst(),
            vec![tcp(80, 200)],
            Action::Drop,
        ),
        // A single port inside an earlier range.
        rule(
            "p150",
            out.clone(),
            dst(),
            vec![tcp(150, 150)],
            Action::Drop,
        ),
        // Not covered: 201 is in no earlier rule.
        rule(
            "r80-201",
            out.clone(),
            dst(),
            vec![tcp(80, 201)],
            Action::Drop,
        ),
    ]);
    assert_eq!(shadowed(&v), ["r80-200", "p150"]);
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

#[test]
fn contained_and_duplicate_prefixes_collapse_in_sets() {
    let mut v = fixtures::seed_pair("lj-fw-1");
    v.objects.networks.insert(
        "lan".into(),
        [
            "198.51.100.0/24",
            "198.51.100.7/32",
            "198.51.100.0/25",
            "192.0.2.9/32",
            "192.0.2.9/32",
        ]
        .iter()
        .map(|n| n.parse().unwrap())
        .collect(),
    );
    let text = compile(&v, &Options::default()).unwrap().text;
    assert!(
        text.contains("flags interval\n        elements = { 192.0.2.9/32, 198.51.100.0/24 }"),
        "{text}"
    );
}

/// A complete config whose objects are each used in exactly one of the places a name
/// can appear, plus two planted unused ones that only look used by value.
const EVERY_USE: &str = r#"
[cluster]
name = "uses"
version = 1

[nodes.a]
priority = 200
interfaces.outside = { device = "eth0", address = "203.0.113.2/24" }
interfaces.inside = { device = "eth1", address = "198.51.100.2/24" }
interfaces.sync = { device = "eth2", address = "192.0.2.1/30" }

[nodes.b]
priority = 100
interfaces.outside = { device = "eth0", address = "203.0.113.3/24" }
interfaces.inside = { device = "eth1", address = "198.51.100.3/24" }
interfaces.sync = { device = "eth2", address = "192.0.2.2/30" }

[[vrrp.group]]
name = "edge"
track = ["outside"]

[[vrrp.group.vip]]
vrid = 51
interface = "outside"
address = "203.0.113.1/24"

[sync]
interface = "sync"

[management]
interfaces = ["inside"]
allowed_from = ["admins", "198.51.100.64/26"]

[objects.networks]
admins = ["198.51.100.20/32", "198.51.100.21/32"]
lan = ["198.51.100.0/24"]
web_host = ["198.51.100.10/32"]
resolvers = ["198.51.100.53/32"]
blocked = ["203.0.113.66/32"]
# Planted: the same host as the dnat target, and the same prefix as a literal
# allowed_from entry; neither is named anywhere.
web_alias = ["198.51.100.10/32"]
mgmt_alias = ["198.51.100.64/26"]

[objects.services]
web = ["tcp/80", "tcp/443"]
dns = ["udp/53", "tcp/53"]
ssh = ["tcp/22"]
# Planted.
unused_svc = ["tcp/9999"]

[policy]
default = "drop"

[[policy.rule]]
name = "own-dns"
from = "self"
to = "resolvers"
service = "dns"
action = "accept"

[[policy.rule]]
name = "ssh-in"
from = "inside"
to = "self"
service = "ssh"
action = "accept"

[[policy.rule]]
name = "drop-blocked"
from = "blocked"
to = "inside"
action = "drop"

[[nat.rule]]
name = "masq"
type = "snat"
from = "lan"
out = "outside"
to = "vip:outside"

[[nat.rule]]
name = "publish"
type = "dnat"
in = "outside"
destination = "vip:outside"
service = "web"
to = "web_host"
"#;

#[test]
fn unused_object_lint_sees_every_use_and_only_names() {
    let cfg = twinwall_config::parse("every-use.toml", EVERY_USE).unwrap_or_else(|d| panic!("{d}"));
    let v = cfg.node_view("a").unwrap();
    let mut unused: Vec<String> = lint(&v)
        .into_iter()
        .filter(|l| l.kind == LintKind::UnusedObject)
        .map(|l| l.subject)
        .collect();
    unused.sort();
    // admins: management allowed_from; lan: snat from; web_host: dnat to; web: dnat
    // service; resolvers and dns: a `from = "self"` rule; ssh: a `to = "self"` rule;
    // blocked: a policy `from`.
    assert_eq!(unused, ["mgmt_alias", "unused_svc", "web_alias"]);
}
