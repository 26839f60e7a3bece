//! Every example config must be valid: the acceptance fixtures in `<repo>/../shared/examples`
//! (whenever that folder exists) and the project's own `<repo>/examples`. Their node views
//! are compared with reviewed golden JSON files in `tests/golden/` (regenerate with
//! `TWINWALL_UPDATE_GOLDEN=1 cargo test -p twinwall-config --test examples`, then review
//! the diff), and the fixtures are checked to mean what their comments say.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use twinwall_config::{
    Action, Endpoint, Family, NatRule, NodeView, RateLimit, RateUnit, Service, SnatTarget, load,
};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn shared_examples() -> Option<PathBuf> {
    let dir = repo_root().join("../shared/examples");
    dir.is_dir().then_some(dir)
}

fn toml_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    v.sort();
    v
}

fn all_examples() -> Vec<(&'static str, PathBuf)> {
    let mut v: Vec<(&str, PathBuf)> = toml_files(&repo_root().join("examples"))
        .into_iter()
        .map(|p| ("examples", p))
        .collect();
    if let Some(dir) = shared_examples() {
        v.extend(toml_files(&dir).into_iter().map(|p| ("shared", p)));
    }
    v
}

#[test]
fn every_example_is_valid_and_matches_its_golden_views() {
    let examples = all_examples();
    assert!(examples.len() >= 2, "no examples found");
    let update = std::env::var_os("TWINWALL_UPDATE_GOLDEN").is_some();
    let golden_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut mismatches = Vec::new();
    for (origin, path) in examples {
        let cfg = load(&path).unwrap_or_else(|d| panic!("{} is invalid:\n{d}", path.display()));
        assert!(
            cfg.warnings().is_empty(),
            "{} has warnings:\n{}",
            path.display(),
            cfg.warnings()
        );
        let stem = path.file_stem().unwrap().to_string_lossy();
        for node in cfg.node_names() {
            let view = cfg.node_view(&node).unwrap();
            let json = serde_json::to_string_pretty(&view).unwrap() + "\n";
            // JSON round trip: the services read what `config show --json` prints.
            let back: NodeView = serde_json::from_str(&json).unwrap();
            assert_eq!(back, view);
            let golden = golden_dir.join(format!("{origin}-{stem}.{node}.json"));
            if update {
                std::fs::create_dir_all(&golden_dir).unwrap();
                std::fs::write(&golden, &json).unwrap();
                continue;
            }
            match std::fs::read_to_string(&golden) {
                Ok(want) if want == json => {}
                Ok(_) => mismatches.push(format!("{} differs", golden.display())),
                Err(e) => mismatches.push(format!("{}: {e}", golden.display())),
            }
        }
    }
    assert!(
        mismatches.is_empty(),
        "golden views out of date (regenerate with TWINWALL_UPDATE_GOLDEN=1 and review):\n{}",
        mismatches.join("\n")
    );
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn seed_pair_means_what_its_comments_say() {
    let Some(dir) = shared_examples() else {
        return;
    };
    let cfg = load(&dir.join("seed-pair.toml")).unwrap_or_else(|d| panic!("{d}"));
    assert_eq!(cfg.node_names(), ["lj-fw-1", "lj-fw-2"]);
    let v = cfg.node_view("lj-fw-2").unwrap();
    assert_eq!((v.priority, v.peer.priority), (100, 200));
    assert_eq!(v.interfaces["outside"].device, "eth0");
    assert_eq!(v.vrrp.advert_interval_ms, 100);
    assert!(v.vrrp.preempt);
    // One sync group holding both VIPs.
    assert_eq!(v.vrrp.groups.len(), 1);
    let g = &v.vrrp.groups[0];
    assert_eq!(g.track, ["outside", "inside"]);
    let routers: Vec<(u8, &str, Family)> = g
        .routers
        .iter()
        .map(|r| (r.vrid, r.interface.as_str(), r.family))
        .collect();
    assert_eq!(
        routers,
        [(51, "outside", Family::Ipv4), (52, "inside", Family::Ipv4)]
    );
    // Sync over the dedicated link; the ignore list is derived: the nodes' own
    // addresses, never the VIPs.
    let sync = v.sync.as_ref().unwrap();
    assert_eq!(
        (sync.device.as_str(), sync.local, sync.peer, sync.port),
        ("eth2", ip("192.0.2.2"), ip("192.0.2.1"), 3780)
    );
    for a in [
        "203.0.113.2",
        "203.0.113.3",
        "198.51.100.2",
        "198.51.100.3",
        "192.0.2.1",
        "192.0.2.2",
    ] {
        assert!(v.conntrack_ignore.contains(&ip(a)), "{a}");
    }
    assert!(!v.conntrack_ignore.contains(&ip("203.0.113.1")));
    assert_eq!(v.conntrack_ignore.len(), 6);
    // The default route follows the outside VIP.
    assert_eq!(v.routes.len(), 1);
    assert!(v.routes[0].follows_vip);
    assert_eq!(v.routes[0].gateway, ip("203.0.113.254"));
    // Default drop, logged; three rules in order, objects expanded.
    assert_eq!(v.policy.default, Action::Drop);
    assert!(v.policy.log_default);
    let names: Vec<&str> = v.policy.rules.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "lan-to-internet",
            "web-from-internet",
            "admin-ssh-to-firewall"
        ]
    );
    assert_eq!(v.policy.rules[2].to, Endpoint::SelfNode);
    assert_eq!(
        v.policy.rules[1].services,
        [
            Service::Tcp { from: 80, to: 80 },
            Service::Tcp { from: 443, to: 443 }
        ]
    );
    // SNAT to the outside VIP, DNAT from it to the web server.
    match &v.nat[0] {
        NatRule::Snat { to, out_device, .. } => {
            assert_eq!(
                to,
                &SnatTarget::Address {
                    addresses: vec![ip("203.0.113.1")]
                }
            );
            assert_eq!(out_device, "eth0");
        }
        other => panic!("{other:?}"),
    }
    match &v.nat[1] {
        NatRule::Dnat {
            destination,
            to,
            services,
            ..
        } => {
            assert_eq!(destination, &[ip("203.0.113.1")]);
            assert_eq!(*to, ip("198.51.100.10"));
            assert_eq!(services.len(), 2);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn dual_stack_means_what_its_comments_say() {
    let Some(dir) = shared_examples() else {
        return;
    };
    let cfg = load(&dir.join("dual-stack.toml")).unwrap_or_else(|d| panic!("{d}"));
    let v = cfg.node_view("fw-a").unwrap();
    // One virtual router per family with the same VRID, all in one group.
    let g = &v.vrrp.groups[0];
    let routers: Vec<(u8, Family, String)> = g
        .routers
        .iter()
        .map(|r| (r.vrid, r.family, r.addresses[0].to_string()))
        .collect();
    assert_eq!(
        routers,
        [
            (61, Family::Ipv4, "203.0.113.1/24".to_owned()),
            (61, Family::Ipv6, "2001:db8:0:1::1/64".to_owned()),
            (62, Family::Ipv4, "198.51.100.1/24".to_owned()),
            (62, Family::Ipv6, "2001:db8:0:2::1/64".to_owned()),
        ]
    );
    assert_eq!(v.vrrp.preempt_delay_ms, 5000);
    assert_eq!(v.vrrp.advert_interval_ms, 50);
    // Both default routes follow the outside VIPs of their family.
    assert!(v.routes.iter().all(|r| r.follows_vip));
    // Rate limit on the ping rule.
    let ping = v
        .policy
        .rules
        .iter()
        .find(|r| r.name == "ping-firewall")
        .unwrap();
    assert_eq!(
        ping.rate_limit,
        Some(RateLimit {
            count: 10,
            per: RateUnit::Second
        })
    );
    // The v4 masquerade translates to the v4 VIP only.
    match &v.nat[0] {
        NatRule::Snat { to, .. } => assert_eq!(
            to,
            &SnatTarget::Address {
                addresses: vec![ip("203.0.113.1")]
            }
        ),
        other => panic!("{other:?}"),
    }
    // The sync link is IPv4 only; the ignore list holds all ten node addresses.
    assert_eq!(v.conntrack_ignore.len(), 10);
}

#[test]
fn single_vip_example() {
    let cfg = load(&repo_root().join("examples/single-vip.toml")).unwrap_or_else(|d| panic!("{d}"));
    let v = cfg.node_view("office-b").unwrap();
    assert_eq!(v.vrrp.groups[0].routers.len(), 1);
    assert!(!v.vrrp.preempt);
    // The WAN has no VIP: its default route is always installed, NAT masquerades.
    assert!(!v.routes[0].follows_vip);
    assert!(matches!(
        &v.nat[0],
        NatRule::Snat {
            to: SnatTarget::Masquerade,
            ..
        }
    ));
    assert_eq!(v.management.port, 9443);
    assert_eq!(v.management.interfaces, ["lan", "sync"]);
    assert_eq!(
        v.objects.networks["printer"][0].to_string(),
        "198.51.100.40/32"
    );
    assert_eq!(v.sync.as_ref().unwrap().port, 3780);
}
