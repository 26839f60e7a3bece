//! Traffic through a client / firewall / server topology (testkit's seed-pair and
//! dual-stack topologies) with the compiled ruleset applied in the firewall namespace:
//! what the policy allows passes, everything else is dropped, for TCP, UDP, ICMP and
//! IPv6; dnat via the VIP reaches the web server; snat makes inside clients appear as the
//! outside VIP; the per-source rate limit lets a burst through and drops the rest.
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
