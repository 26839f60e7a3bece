//! Tests of the harness itself: namespaces and their processes are gone after a
//! panicking test body, veth/bridge plumbing carries traffic, the shipped topologies load
//! and build.

use std::process::Command;
use std::time::Duration;

use twinwall_testkit::{Netns, Topology, require_root, veth, wait_for};

fn netns_exists(name: &str) -> bool {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.split_whitespace().next() == Some(name))
}

fn pid_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

#[test]
fn netns_and_its_processes_are_gone_after_a_panicking_body() {
    if !require_root() {
        return;
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let result = std::panic::catch_unwind(move || {
        let ns = Netns::new("panic").unwrap();
        // One process through a guard, one left behind without a guard (daemonised).
        let guarded = ns.spawn("sleep", ["30"]).unwrap();
        let stray = ns
            .spawn_command({
                let mut c = ns.command("sleep", ["31"]);
                c.stdin(std::process::Stdio::null());
                c
            })
            .unwrap();
        let stray_pid = stray.id();
        std::mem::forget(stray); // the namespace's Drop must still kill it
        tx.send((ns.name().to_string(), guarded.id(), stray_pid))
            .unwrap();
        assert!(netns_exists(ns.name()));
        panic!("planted failure in the test body");
    });
    assert!(result.is_err(), "the body panicked");
    let (name, guarded, stray) = rx.recv().unwrap();
    assert!(!netns_exists(&name), "netns {name} still exists");
    assert!(!pid_alive(guarded), "guarded child {guarded} still alive");
    assert!(
        wait_for(Duration::from_secs(2), Duration::from_millis(20), || {
            !pid_alive(stray)
        }),
        "stray child {stray} still alive"
    );
}

#[test]
fn names_are_unique_and_carry_pid_and_prefix() {
    if !require_root() {
        return;
    }
    let a = Netns::new("uniq").unwrap();
    let b = Netns::new("uniq").unwrap();
    assert_ne!(a.name(), b.name());
    let pid = std::process::id().to_string();
    assert!(a.name().starts_with("tw-uniq-") && a.name().contains(&pid));
}

#[test]
fn veth_pair_carries_ping_and_exec_reports_failure() {
    if !require_root() {
        return;
    }
    let a = Netns::new("va").unwrap();
    let b = Netns::new("vb").unwrap();
    veth((&a, "e0"), (&b, "e1")).unwrap();
    a.add_addr("e0", "192.0.2.1/30".parse().unwrap()).unwrap();
    b.add_addr("e1", "192.0.2.2/30".parse().unwrap()).unwrap();
    let out = a
        .exec("ping", ["-c1", "-W2", "192.0.2.2"])
        .expect("ping runs");
    assert!(out.status.success(), "{out:?}");
    // Unreachable address: exec returns the failure, run turns it into an error.
    let err = a
        .run("ping", ["-c1", "-W1", "192.0.2.3"])
        .expect_err("nobody at .3");
    assert!(err.to_string().contains("ping"), "{err}");
}

#[test]
fn shipped_seed_pair_topology_builds_and_switches_traffic() {
    if !require_root() {
        return;
    }
    let topo = Topology::shipped("seed-pair").unwrap();
    assert_eq!(topo.hosts.len(), 4);
    let lab = topo.build().unwrap();
    // Through the inside bridge: client -> fw1 and fw2.
    for target in ["198.51.100.2", "198.51.100.3"] {
        let out = lab
            .ns("client")
            .exec("ping", ["-c1", "-W2", target])
            .unwrap();
        assert!(out.status.success(), "client -> {target}: {out:?}");
    }
    // Through the outside bridge and over the sync veth.
    let out = lab
        .ns("server")
        .exec("ping", ["-c1", "-W2", "203.0.113.3"])
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let out = lab
        .ns("fw1")
        .exec("ping", ["-c1", "-W2", "192.0.2.2"])
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let names: Vec<String> = lab.namespaces().values().map(|n| n.name().into()).collect();
    drop(lab);
    for n in names {
        assert!(!netns_exists(&n), "{n} left behind");
    }
}

#[test]
fn shipped_dual_stack_topology_carries_ipv6() {
    if !require_root() {
        return;
    }
    let lab = Topology::shipped("dual-stack").unwrap().build().unwrap();
    let out = lab
        .ns("client")
        .exec("ping", ["-6", "-c1", "-W2", "2001:db8:0:2::2"])
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn bad_topologies_are_rejected_with_the_reason() {
    let dir = std::env::temp_dir().join(format!("tw-topo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("t.toml");
    std::fs::write(
        &f,
        "[hosts.a]\n[[links]]\na = \"a:eth0\"\nb = \"nowhere:eth0\"\n",
    )
    .unwrap();
    let e = Topology::load(&f).unwrap_err().to_string();
    assert!(e.contains("unknown host or bridge `nowhere`"), "{e}");
    std::fs::write(&f, "[hosts.a]\nbogus = 1\n").unwrap();
    let e = Topology::load(&f).unwrap_err().to_string();
    assert!(e.contains("t.toml") && e.contains("bogus"), "{e}");
    std::fs::write(&f, "[hosts.a]\naddresses.eth9 = [\"192.0.2.1/24\"]\n").unwrap();
    let e = Topology::load(&f).unwrap_err().to_string();
    assert!(e.contains("eth9"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn enter_creates_sockets_inside_the_namespace() {
    if !require_root() {
        return;
    }
    let a = Netns::new("enter").unwrap();
    a.add_addr("lo", "192.0.2.77/32".parse().unwrap()).unwrap();
    // The address exists only inside the namespace: binding works there, not here.
    let sock = a
        .enter(|| std::net::UdpSocket::bind("192.0.2.77:0"))
        .unwrap()
        .expect("bind inside the namespace");
    assert!(sock.local_addr().is_ok());
    assert!(std::net::UdpSocket::bind("192.0.2.77:0").is_err());
}
