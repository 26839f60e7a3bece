//! Traffic through a client / firewall / server topology (testkit's seed-pair and
//! dual-stack topologies) with the compiled ruleset applied in the firewall namespace:
//! what the policy allows passes, everything else is dropped, for TCP, UDP, ICMP and
//! IPv6; dnat via the VIP reaches the web server; snat makes inside clients appear as the
//! outside VIP; the per-source rate limit lets a burst through and drops the rest; the
//! firewall's own connections pass only where a `from = "self"` rule allows them, while
//! the cluster plumbing (VRRP adverts, sync, management replies) still leaves.
//!
//! TCP/UDP traffic uses testkit's `PeerEcho` listeners (they answer with the peer address
//! they saw, which shows what NAT did) and probes; ICMP uses `ping`.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use twinwall_config::NodeView;
use twinwall_ruleset::{Nft, Options, compile};
use twinwall_testkit::{Lab, Netns, PeerEcho, Topology, require_root, tcp_probe, udp_probe};

/// How long a probe waits: an answer on an idle veth topology takes milliseconds, so
/// this only bounds how long a dropped probe costs.
const WAIT: Duration = Duration::from_millis(1500);

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn tcp(ns: &Netns, target: &str, bind: Option<&str>) -> Option<IpAddr> {
    tcp_probe(ns, sa(target), bind.map(ip), WAIT).unwrap()
}

fn udp(ns: &Netns, target: &str) -> Option<IpAddr> {
    udp_probe(ns, sa(target), None, WAIT).unwrap()
}

fn tcp_listen(ns: &Netns, addr: &str) -> PeerEcho {
    PeerEcho::tcp(ns, sa(addr)).unwrap()
}

fn udp_listen(ns: &Netns, addr: &str) -> PeerEcho {
    PeerEcho::udp(ns, sa(addr)).unwrap()
}

fn ping(ns: &Netns, args: &[&str]) -> bool {
    let mut a = vec!["-c1", "-W2"];
    a.extend_from_slice(args);
    ns.exec("ping", a).unwrap().status.success()
}

/// One node's view of a shared example, through the config parser.
fn example(file: &str, node: &str) -> NodeView {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/examples")
        .join(file);
    let cfg = twinwall_config::load(&path).unwrap_or_else(|d| panic!("{d}"));
    cfg.node_view(node).unwrap()
}

/// One node's view of a ruleset fixture (`tests/fixtures/`), through the config parser.
fn fixture(file: &str, node: &str) -> NodeView {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(file);
    let cfg = twinwall_config::load(&path).unwrap_or_else(|d| panic!("{d}"));
    cfg.node_view(node).unwrap()
}

/// Sends one raw IPv4 packet of `proto` from inside `ns` to a multicast group out of
/// the interface with address `via`: `Ok` when the stack sent it, the error when the
/// output chain dropped it (a local drop fails the send with EPERM).
fn raw_multicast_send(ns: &Netns, proto: i32, group: &str, via: &str) -> std::io::Result<()> {
    use socket2::{Domain, Protocol, SockAddr, Socket, Type};
    let group: std::net::Ipv4Addr = group.parse().unwrap();
    let via: std::net::Ipv4Addr = via.parse().unwrap();
    ns.enter(move || {
        let s = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(proto)))?;
        s.set_multicast_if_v4(&via)?;
        s.set_multicast_ttl_v4(255)?;
        // A VRRPv3 advert's shape (version 3, type 1, VRID 51, priority 200); its
        // content does not matter to the filter.
        let advert = [0x31u8, 51, 200, 1, 0, 100, 0, 0, 203, 0, 113, 1];
        s.send_to(&advert, &SockAddr::from(SocketAddr::new(group.into(), 0)))
            .map(|_| ())
    })
    .unwrap()
}

/// Builds a topology, gives the firewall the VIPs (it plays VRRP master) and applies the
/// compiled ruleset in its namespace.
fn lab_with_ruleset(topology: &str, fw: &str, view: &NodeView) -> Lab {
    let lab = Topology::shipped(topology).unwrap().build().unwrap();
    let fw_ns = lab.ns(fw);
    for g in &view.vrrp.groups {
        for r in &g.routers {
            for a in &r.addresses {
                fw_ns.add_addr(&r.device, *a).unwrap();
            }
        }
    }
    let script = compile(view, &Options::default()).unwrap();
    Nft::in_netns(fw_ns.name()).apply(&script.text).unwrap();
    lab
}

#[test]
fn seed_pair_policy_nat_and_default_drop() {
    if !require_root() {
        return;
    }
    let lab = lab_with_ruleset("seed-pair", "fw1", &example("seed-pair.toml", "lj-fw-1"));
    let (client, server, fw) = (lab.ns("client"), lab.ns("server"), lab.ns("fw1"));
    let vip = Some(ip("203.0.113.1"));
    let internet_host = Some(ip("203.0.113.254"));

    // lan-to-internet, all protocols; lan-masquerade: the server sees the outside VIP.
    let _t = tcp_listen(server, "0.0.0.0:8080");
    let _u = udp_listen(server, "0.0.0.0:5353");
    assert_eq!(
        tcp(client, "203.0.113.254:8080", None),
        vip,
        "tcp out, snat"
    );
    assert_eq!(udp(client, "203.0.113.254:5353"), vip, "udp out, snat");
    assert!(ping(client, &["203.0.113.254"]), "icmp inside -> outside");

    // Outside -> inside: only the web server's tcp/80 and tcp/443 (web-from-internet).
    let _w80 = tcp_listen(client, "0.0.0.0:80");
    let _w443 = tcp_listen(client, "0.0.0.0:443");
    let _other = tcp_listen(client, "0.0.0.0:8081");
    let _u53 = udp_listen(client, "0.0.0.0:53");
    assert_eq!(tcp(server, "198.51.100.10:80", None), internet_host);
    assert_eq!(tcp(server, "198.51.100.10:443", None), internet_host);
    assert_eq!(
        tcp(server, "198.51.100.10:8081", None),
        None,
        "tcp/8081 not allowed in"
    );
    assert_eq!(udp(server, "198.51.100.10:53"), None, "udp not allowed in");
    assert!(
        !ping(server, &["198.51.100.10"]),
        "icmp outside -> inside is dropped"
    );

    // publish-web: dnat via the outside VIP reaches the web server, source unchanged.
    assert_eq!(
        tcp(server, "203.0.113.1:80", None),
        internet_host,
        "dnat tcp/80"
    );
    assert_eq!(
        tcp(server, "203.0.113.1:443", None),
        internet_host,
        "dnat tcp/443"
    );
    assert_eq!(
        tcp(server, "203.0.113.1:8081", None),
        None,
        "only web is forwarded"
    );

    // admin-ssh-to-firewall: ssh to the firewall from admin_hosts only; nothing else.
    client
        .add_addr("eth0", "198.51.100.20/24".parse().unwrap())
        .unwrap();
    let _ssh = tcp_listen(fw, "0.0.0.0:22");
    let _fw_other = tcp_listen(fw, "0.0.0.0:2222");
    assert_eq!(
        tcp(client, "198.51.100.2:22", Some("198.51.100.20")),
        Some(ip("198.51.100.20"))
    );
    assert_eq!(tcp(client, "198.51.100.2:22", Some("198.51.100.10")), None);
    assert_eq!(
        tcp(client, "198.51.100.2:2222", Some("198.51.100.20")),
        None
    );
    assert!(
        !ping(client, &["198.51.100.2"]),
        "no rule lets icmp to the firewall"
    );

    // The counters count, and the logged default drop was hit.
    let fwd = fw
        .run("nft", ["list", "chain", "inet", "twinwall", "forward"])
        .unwrap();
    let count = |name: &str| -> u64 {
        let line = fwd
            .lines()
            .find(|l| l.contains(&format!("comment \"{name}\"")))
            .unwrap_or_else(|| panic!("no rule {name} in\n{fwd}"));
        let after = line.split("packets ").nth(1).unwrap();
        after.split_whitespace().next().unwrap().parse().unwrap()
    };
    assert!(count("lan-to-internet") > 0);
    assert!(count("web-from-internet") > 0);
    assert!(count("publish-web") > 0);
    assert!(count("default-drop") > 0);
}

#[test]
fn dual_stack_ipv6_policy_and_rate_limit() {
    if !require_root() {
        return;
    }
    let lab = lab_with_ruleset("dual-stack", "fw-a", &example("dual-stack.toml", "fw-a"));
    let (client, server) = (lab.ns("client"), lab.ns("server"));
    let client6 = Some(ip("2001:db8:0:2::10"));

    // lan-out over IPv6: allowed, not NATed.
    let _t6 = tcp_listen(server, "[::]:8080");
    let _u6 = udp_listen(server, "[::]:5353");
    assert_eq!(
        tcp(client, "[2001:db8:0:1::fe]:8080", None),
        client6,
        "tcp6 out"
    );
    assert_eq!(udp(client, "[2001:db8:0:1::fe]:5353"), client6, "udp6 out");
    assert!(ping(client, &["-6", "2001:db8:0:1::fe"]), "icmpv6 out");
    // IPv4 lan-out is source-NATed to the outside VIP (lan-masquerade-v4).
    let _t4 = tcp_listen(server, "0.0.0.0:8081");
    assert_eq!(
        tcp(client, "203.0.113.254:8081", None),
        Some(ip("203.0.113.1"))
    );

    // dns-in: only to dns_servers, only dns.
    client
        .add_addr("eth0", "2001:db8:0:2::53/64".parse().unwrap())
        .unwrap();
    let _d_u = udp_listen(client, "[::]:53");
    let _d_t = tcp_listen(client, "[::]:53");
    let _other = tcp_listen(client, "[::]:8081");
    let srv6 = Some(ip("2001:db8:0:1::fe"));
    assert_eq!(udp(server, "[2001:db8:0:2::53]:53"), srv6, "udp6 dns in");
    assert_eq!(
        tcp(server, "[2001:db8:0:2::53]:53", None),
        srv6,
        "tcp6 dns in"
    );
    assert_eq!(
        tcp(server, "[2001:db8:0:2::53]:8081", None),
        None,
        "not dns"
    );
    assert_eq!(
        tcp(server, "[2001:db8:0:2::10]:53", None),
        None,
        "not a dns server"
    );
    assert!(
        !ping(server, &["-6", "2001:db8:0:2::10"]),
        "icmpv6 in is dropped"
    );

    // ping-firewall: from anywhere, both families, rate-limited per source to 10 new
    // flows a second with nft's default burst of 5. Each `ping -c1` is a new conntrack
    // flow (its own echo id); 40 of them at once get far fewer answers.
    assert!(ping(server, &["-6", "2001:db8:0:1::2"]));
    assert!(ping(client, &["198.51.100.2"]));
    let burst = "for i in $(seq 40); do (ping -6 -c1 -W1 2001:db8:0:1::2 >/dev/null && echo ok) & done; wait";
    let out = server.run("sh", ["-c", burst]).unwrap();
    let answered = out.lines().filter(|l| *l == "ok").count();
    assert!(
        answered > 0 && answered < 25,
        "rate limit: {answered} of 40 new flows answered"
    );
}

#[test]
fn firewall_own_connections_use_the_output_chain() {
    if !require_root() {
        return;
    }
    let view = fixture("ruleset-own-traffic.toml", "lj-fw-1");
    let lab = lab_with_ruleset("seed-pair", "fw1", &view);
    let (client, server, fw, peer) = (
        lab.ns("client"),
        lab.ns("server"),
        lab.ns("fw1"),
        lab.ns("fw2"),
    );
    let me = Some(ip("203.0.113.2"));

    // fw-dns: DNS (udp and tcp) to the resolver; nothing else to it.
    let _dns_u = udp_listen(server, "0.0.0.0:53");
    let _dns_t = tcp_listen(server, "0.0.0.0:53");
    let _other = tcp_listen(server, "0.0.0.0:8080");
    assert_eq!(udp(fw, "203.0.113.254:53"), me, "udp dns from the firewall");
    assert_eq!(
        tcp(fw, "203.0.113.254:53", None),
        me,
        "tcp dns from the firewall"
    );
    assert_eq!(
        tcp(fw, "203.0.113.254:8080", None),
        None,
        "tcp/8080 from the firewall"
    );
    assert!(
        !ping(fw, &["203.0.113.254"]),
        "no rule lets the firewall ping"
    );

    // fw-ntp: udp/123 out of the outside zone only.
    let _ntp_out = udp_listen(server, "0.0.0.0:123");
    let _ntp_in = udp_listen(client, "0.0.0.0:123");
    assert_eq!(
        udp(fw, "203.0.113.254:123"),
        me,
        "ntp out of the outside zone"
    );
    assert_eq!(
        udp(fw, "198.51.100.10:123"),
        None,
        "ntp into the inside zone"
    );

    // Cluster plumbing with the drop output policy: sync to the peer's sync address
    // and port only, management replies (established), VRRP adverts on VIP interfaces.
    let _sync = udp_listen(peer, "192.0.2.2:3780");
    let _sync_other = udp_listen(peer, "192.0.2.2:3781");
    let sync_me = Some(ip("192.0.2.1"));
    assert_eq!(
        udp_probe(fw, sa("192.0.2.2:3780"), Some(ip("192.0.2.1")), WAIT).unwrap(),
        sync_me,
        "sync out"
    );
    assert_eq!(
        udp_probe(fw, sa("192.0.2.2:3781"), Some(ip("192.0.2.1")), WAIT).unwrap(),
        None,
        "not the sync port"
    );
    let _api = tcp_listen(fw, "0.0.0.0:9780");
    assert_eq!(
        tcp(peer, "192.0.2.1:9780", None),
        Some(ip("192.0.2.2")),
        "management reply from the firewall"
    );
    raw_multicast_send(fw, 112, "224.0.0.18", "203.0.113.2").expect("VRRP advert out of eth0");
    raw_multicast_send(fw, 112, "224.0.0.18", "198.51.100.2").expect("VRRP advert out of eth1");
    let err = raw_multicast_send(fw, 113, "224.0.0.18", "203.0.113.2").unwrap_err();
    assert_eq!(
        err.raw_os_error(),
        Some(libc::EPERM),
        "another protocol is dropped: {err}"
    );

    let out = fw
        .run("nft", ["list", "chain", "inet", "twinwall", "output"])
        .unwrap();
    let count = |name: &str| -> u64 {
        out.lines()
            .filter(|l| l.contains(&format!("comment \"{name}\"")))
            .map(|l| {
                let after = l.split("packets ").nth(1).unwrap();
                after
                    .split_whitespace()
                    .next()
                    .unwrap()
                    .parse::<u64>()
                    .unwrap()
            })
            .sum()
    };
    assert!(count("fw-dns") >= 2, "{out}");
    assert!(count("fw-ntp") >= 1, "{out}");
    assert!(count("cluster:vrrp") >= 2, "{out}");
    assert!(count("cluster:sync") >= 1, "{out}");
    assert!(count("default-drop") >= 1, "{out}");
}

/// The packet counter nft lists just before `comment "NAME"`, summed over every rule or
/// set element of that name in `listing` (`nft list ruleset`).
fn counter_of(listing: &str, name: &str) -> u64 {
    let pat = format!("comment \"{name}\"");
    let mut total = None;
    let mut rest = listing;
    while let Some(at) = rest.find(&pat) {
        let before = &rest[..at];
        let n: u64 = before
            .rsplit("packets ")
            .next()
            .and_then(|s| s.split_whitespace().next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no counter before {pat} in\n{listing}"));
        *total.get_or_insert(0) += n;
        rest = &rest[at + pat.len()..];
    }
    total.unwrap_or_else(|| panic!("no rule or element {name} in\n{listing}"))
}

#[test]
fn firewall_own_ipv6_connections_and_merged_rules() {
    if !require_root() {
        return;
    }
    let view = fixture("ruleset-own-traffic-v6.toml", "fw-a");
    let lab = lab_with_ruleset("dual-stack", "fw-a", &view);
    let (client, server, fw) = (lab.ns("client"), lab.ns("server"), lab.ns("fw-a"));
    // The firewall's outside addresses: its own and the VIP (source address selection
    // may pick either).
    let fw6 = [ip("2001:db8:0:1::2"), ip("2001:db8:0:1::1")];
    let from_fw = |answer: Option<IpAddr>| answer.is_some_and(|a| fw6.contains(&a));

    // fw-dns6: DNS over IPv6 (udp and tcp) from the firewall to the resolver; another
    // port, and DNS to the resolver's IPv4 address, are dropped by the output chain.
    let _dns_u = udp_listen(server, "[2001:db8:0:1::fe]:53");
    let _dns_t = tcp_listen(server, "[2001:db8:0:1::fe]:53");
    let _other = tcp_listen(server, "[2001:db8:0:1::fe]:8080");
    let _dns4 = udp_listen(server, "203.0.113.254:53");
    assert!(from_fw(udp(fw, "[2001:db8:0:1::fe]:53")), "udp6 dns out");
    assert!(
        from_fw(tcp(fw, "[2001:db8:0:1::fe]:53", None)),
        "tcp6 dns out"
    );
    assert_eq!(
        tcp(fw, "[2001:db8:0:1::fe]:8080", None),
        None,
        "tcp6/8080 from the firewall"
    );
    assert_eq!(udp(fw, "203.0.113.254:53"), None, "the rule is IPv6 only");

    // fw-ping6-out: ICMPv6 echo out of the outside zone only; not into the inside
    // zone, and no IPv4 ping.
    assert!(ping(fw, &["-6", "2001:db8:0:1::fe"]), "ping6 out of eth0");
    assert!(
        !ping(fw, &["-6", "2001:db8:0:2::10"]),
        "ping6 into the inside zone"
    );
    assert!(!ping(fw, &["203.0.113.254"]), "no IPv4 ping rule");

    // client-8001..8005, merged into one rule over a set of ports: each port passes
    // (IPv6 only), a port next to them does not.
    let listeners: Vec<PeerEcho> = (8001..=8006)
        .map(|p| tcp_listen(client, &format!("[::]:{p}")))
        .collect();
    let srv6 = Some(ip("2001:db8:0:1::fe"));
    for p in [8001, 8002, 8003, 8005] {
        assert_eq!(
            tcp(server, &format!("[2001:db8:0:2::10]:{p}"), None),
            srv6,
            "tcp6/{p} in"
        );
    }
    assert_eq!(tcp(server, "[2001:db8:0:2::10]:8006", None), None, "8006");
    assert_eq!(tcp(server, "198.51.100.10:8001", None), None, "IPv4 8001");

    // http-10..13, merged into one rule over a set of IPv4 hosts.
    client
        .add_addr("eth0", "198.51.100.11/24".parse().unwrap())
        .unwrap();
    let _http = tcp_listen(client, "0.0.0.0:8080");
    let _http_other = tcp_listen(client, "0.0.0.0:8081");
    let srv4 = Some(ip("203.0.113.254"));
    assert_eq!(tcp(server, "198.51.100.10:8080", None), srv4, "http-10");
    assert_eq!(tcp(server, "198.51.100.11:8080", None), srv4, "http-11");
    assert_eq!(tcp(server, "198.51.100.10:8081", None), None, "8081");

    // mix-1..4, merged into one rule over a concatenated set of host . port: each host
    // only on its own port.
    let _mix1 = tcp_listen(client, "0.0.0.0:9001");
    let _mix2 = tcp_listen(client, "0.0.0.0:9002");
    assert_eq!(tcp(server, "198.51.100.10:9001", None), srv4, "mix-1");
    assert_eq!(tcp(server, "198.51.100.11:9002", None), srv4, "mix-2");
    assert_eq!(
        tcp(server, "198.51.100.10:9002", None),
        None,
        "host 10 is open on 9001 only"
    );
    drop(listeners);

    // The three runs really were merged (one nft rule each).
    let fwd = fw
        .run("nft", ["list", "chain", "inet", "twinwall", "forward"])
        .unwrap();
    for merged in [
        "client-8001 .. client-8005",
        "http-10 .. http-13",
        "mix-1 .. mix-4",
    ] {
        assert!(
            fwd.contains(&format!("comment \"{merged}\"")),
            "{merged}\n{fwd}"
        );
    }

    // Every merged rule keeps its own counter (a set element named after it); the
    // lookup is the rule's last match, so an element counts only what its rule took.
    let all = fw.run("nft", ["list", "ruleset"]).unwrap();
    for name in ["client-8001", "client-8002", "client-8003", "client-8005"] {
        assert!(counter_of(&all, name) >= 1, "{name}\n{all}");
    }
    assert_eq!(counter_of(&all, "client-8004"), 0, "{all}");
    assert!(counter_of(&all, "http-10") >= 1, "{all}");
    assert!(counter_of(&all, "http-11") >= 1, "{all}");
    assert_eq!(counter_of(&all, "http-12"), 0, "{all}");
    assert!(counter_of(&all, "mix-1") >= 1, "{all}");
    assert!(counter_of(&all, "mix-2") >= 1, "{all}");
    assert_eq!(counter_of(&all, "mix-3"), 0, "{all}");
    assert!(counter_of(&all, "fw-dns6") >= 2, "{all}");
    assert!(counter_of(&all, "fw-ping6-out") >= 1, "{all}");
    assert!(counter_of(&all, "default-drop") >= 1, "{all}");

    // The same counters by rule name from the JSON listing (`ruleset counters`,
    // `/metrics`): the policy rules' numbers equal what `nft list ruleset` shows (no
    // traffic since), each merged rule by its own element, the merged nft rule itself
    // is not counted twice.
    let json = fw
        .run("nft", ["-j", "list", "table", "inet", "twinwall"])
        .unwrap();
    if let Ok(path) = std::env::var("TWINWALL_CAPTURE_COUNTERS") {
        std::fs::write(path, &json).unwrap();
    }
    let counters = twinwall_ruleset::counters::parse(&json).unwrap();
    let by_name = |n: &str| {
        counters
            .iter()
            .find(|c| c.rule == n)
            .unwrap_or_else(|| panic!("no counter for {n}: {counters:?}"))
    };
    let policy = [
        "fw-dns6",
        "fw-ping6-out",
        "client-8001",
        "client-8002",
        "client-8003",
        "client-8004",
        "client-8005",
        "http-10",
        "http-11",
        "http-12",
        "http-13",
        "mix-1",
        "mix-2",
        "mix-3",
        "mix-4",
    ];
    for name in policy {
        assert_eq!(by_name(name).packets, counter_of(&all, name), "{name}");
        assert!(
            by_name(name).bytes >= by_name(name).packets * 40,
            "{name}: {:?}",
            by_name(name)
        );
    }
    assert!(by_name("client-8001").merged && !by_name("fw-dns6").merged);
    assert_eq!(by_name("client-8001").chain, "forward");
    assert_eq!(by_name("fw-dns6").chain, "output");
    assert!(
        !counters.iter().any(|c| c.rule.contains(" .. ")),
        "a merged rule counted as a whole: {counters:?}"
    );
    let merged_total: u64 = ["client-8001", "client-8002", "client-8003", "client-8005"]
        .iter()
        .map(|n| by_name(n).packets)
        .sum();
    assert_eq!(
        merged_total,
        counter_of(&all, "client-8001 .. client-8005"),
        "the elements add up to the merged rule's own counter"
    );

    // The CLI reads the same, in the namespace.
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", fw.name(), env!("CARGO_BIN_EXE_twinwall")])
        .args(["ruleset", "counters", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cli: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let cli_of = |n: &str| {
        cli.iter()
            .find(|c| c["rule"] == n)
            .unwrap_or_else(|| panic!("{n} not in {cli:?}"))["packets"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(cli_of("mix-1"), by_name("mix-1").packets);
    assert_eq!(cli_of("client-8004"), 0);

    // /metrics of the management service: one sample per rule name, from one cached
    // read. More traffic through client-8002 shows up after the cache's lifetime.
    let cache = twinwall_mgmt::metrics::RuleCounterCache::new(
        Nft::in_netns(fw.name()),
        Duration::from_millis(300),
    );
    let metrics = |c: &twinwall_mgmt::metrics::RuleCounters| {
        let mut o = String::new();
        twinwall_mgmt::metrics::render_rule_counters(&mut o, c);
        o
    };
    let sample = |text: &str, family: &str, rule: &str| -> u64 {
        let key = format!("{family}{{rule=\"{rule}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&key))
            .unwrap_or_else(|| panic!("no {key} in\n{text}"))
            .parse()
            .unwrap()
    };
    let first = metrics(&cache.get());
    assert!(first.contains("twinwall_rule_counters_up 1\n"), "{first}");
    let before = sample(&first, "twinwall_rule_packets_total", "client-8002");
    assert_eq!(before, by_name("client-8002").packets);
    assert_eq!(
        sample(&first, "twinwall_rule_bytes_total", "http-10"),
        by_name("http-10").bytes
    );
    assert_eq!(sample(&first, "twinwall_rule_packets_total", "mix-3"), 0);
    let _l = tcp_listen(client, "[::]:8002");
    assert_eq!(
        tcp(server, "[2001:db8:0:2::10]:8002", None),
        srv6,
        "tcp6/8002 again"
    );
    let again =
        twinwall_testkit::wait_for(Duration::from_secs(5), Duration::from_millis(100), || {
            sample(
                &metrics(&cache.get()),
                "twinwall_rule_packets_total",
                "client-8002",
            ) > before
        });
    assert!(again, "client-8002's counter did not grow in /metrics");
}
