//! The network phase in a real network namespace: links up and addresses over rtnetlink,
//! router sysctls written into that namespace, forwarding left alone until the ruleset.
//! Needs root (CI runs as root); each test makes its own uniquely named namespace and
//! removes it on drop, even when the test fails.

use std::os::fd::AsFd;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use twinwall_init::network::{self, NetPlan};
use twinwall_init::sys::RealSyscalls;

static COUNTER: AtomicU32 = AtomicU32::new(0);

struct Netns(String);

impl Netns {
    fn new() -> Netns {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let name = format!("twi-{}-{n}", std::process::id());
        ip(&["netns", "add", &name]);
        Netns(name)
    }

    /// Runs `f` on a thread that has entered the namespace (netlink sockets and
    /// /proc/sys/net opened there belong to it).
    fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.0);
        std::thread::spawn(move || {
            let fd = std::fs::File::open(&path).expect("open netns");
            nix::sched::setns(fd.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
        .join()
        .expect("netns thread")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn network_phase_brings_links_up_and_adds_addresses_in_a_netns() {
    let ns = Netns::new();
    ip(&[
        "-n", &ns.0, "link", "add", "outside0", "type", "veth", "peer", "name", "peer0",
    ]);
    let plan = NetPlan {
        links: vec![
            ("loopback".into(), "lo".into()),
            ("outside".into(), "outside0".into()),
            ("inside".into(), "missing9".into()),
        ],
        addresses: vec![
            ("outside0".into(), "203.0.113.2/24".parse().unwrap()),
            ("outside0".into(), "2001:db8::2/64".parse().unwrap()),
        ],
    };
    let p = plan.clone();
    let errors = ns.run(move || network::apply(&p, false)).unwrap();
    // The one missing device is reported by zone and name; the rest was done.
    let msgs: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(msgs, ["interface inside: device missing9 not found"]);
    let addrs = ip(&["-n", &ns.0, "addr", "show", "dev", "outside0"]);
    assert!(addrs.contains("inet 203.0.113.2/24"), "{addrs}");
    assert!(addrs.contains("inet6 2001:db8::2/64"), "{addrs}");
    assert!(addrs.contains(",UP"), "{addrs}");
    let lo = ip(&["-n", &ns.0, "link", "show", "dev", "lo"]);
    assert!(lo.contains(",UP"), "{lo}");
    // Running it again is not an error (addresses are replaced, links already up).
    let p = plan.clone();
    let again = ns.run(move || network::apply(&p, false)).unwrap();
    assert_eq!(again.len(), 1);
}

#[test]
fn network_phase_all_links_mode_brings_every_link_up() {
    let ns = Netns::new();
    ip(&[
        "-n", &ns.0, "link", "add", "eth7", "type", "veth", "peer", "name", "eth8",
    ]);
    let plan = network::plan(None);
    let errors = ns.run(move || network::apply(&plan, true)).unwrap();
    assert!(errors.is_empty(), "{errors:?}");
    for dev in ["eth7", "eth8"] {
        let l = ip(&["-n", &ns.0, "link", "show", "dev", dev]);
        assert!(l.contains(",UP"), "{l}");
    }
}

fn sysctl_in(ns: &Netns, key: &str) -> String {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.0, "cat", &path])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn router_sysctls_are_written_in_the_namespace_and_forwarding_is_not() {
    let ns = Netns::new();
    let errors = ns.run(|| {
        network::write_sysctls(&RealSyscalls, &network::ROUTER_SYSCTLS)
            .into_iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
    });
    // Conntrack keys exist only with nf_conntrack loaded; anything else must succeed.
    for e in &errors {
        assert!(e.starts_with("sysctl net.netfilter."), "{e}");
    }
    assert_eq!(sysctl_in(&ns, "net.ipv4.conf.all.arp_ignore"), "1");
    assert_eq!(sysctl_in(&ns, "net.ipv4.conf.all.arp_announce"), "2");
    assert_eq!(sysctl_in(&ns, "net.ipv4.conf.all.rp_filter"), "2");
    assert_eq!(sysctl_in(&ns, "net.ipv4.ip_forward"), "0");
    let errors = ns.run(|| network::write_sysctls(&RealSyscalls, &network::FORWARDING).len());
    assert_eq!(errors, 0);
    assert_eq!(sysctl_in(&ns, "net.ipv4.ip_forward"), "1");
    assert_eq!(sysctl_in(&ns, "net.ipv6.conf.all.forwarding"), "1");
}
