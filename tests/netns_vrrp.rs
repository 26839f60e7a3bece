//! VRRP pair tests in network namespaces (root): two `twinwall vrrp` processes on the
//! seed-pair topology (testkit/topologies/seed-pair).

mod netns_vrrp_support;

use std::time::Duration;

use netns_vrrp_support::*;
use twinwall_testkit::{require_root, wait_for};

const S: fn(u64) -> Duration = Duration::from_secs;

#[test]
fn higher_priority_becomes_master_and_sigterm_hands_over() {
    if !require_root() {
        return;
    }
    let mut p = Pair::new("advert_interval_ms = 100\npreempt = true");
    p.start(0);
    p.start(1);
    assert!(
        p.wait_holder(0, S(10)),
        "fw1 (priority 200) should hold both VIPs\n{}",
        p.logs()
    );
    assert_eq!(p.role(0), "master");
    assert!(
        wait_for(S(5), Duration::from_millis(20), || p.role(1) == "backup"),
        "{}",
        p.logs()
    );
    // The default route follows the outside VIP.
    let routes = p.ns(0).ip(["route", "show", "default"]).unwrap();
    assert!(
        routes.contains("203.0.113.254"),
        "master lacks the VIP route: {routes}"
    );
    let routes = p.ns(1).ip(["route", "show", "default"]).unwrap();
    assert!(
        !routes.contains("203.0.113.254"),
        "backup kept the VIP route: {routes}"
    );
    // The client reaches the server through the VIPs.
    assert!(ping(p.lab.ns("client"), "203.0.113.254"), "{}", p.logs());

    // SIGTERM on the master: it exits cleanly, removes its VIPs and fw2 takes over.
    let status = p.stop(0);
    assert!(status.success(), "vrrp exited with {status}\n{}", p.logs());
    assert!(
        !p.has(0, "eth0", VIP_OUT) && !p.has(0, "eth1", VIP_IN),
        "VIPs left behind"
    );
    assert!(
        p.wait_holder(1, S(5)),
        "fw2 did not take over\n{}",
        p.logs()
    );
    let st = p.status(1).unwrap();
    assert_eq!(st["groups"][0]["state"], "master");
    let r = &st["groups"][0]["routers"][0];
    assert!(r["adverts_in"].as_u64().unwrap() > 0, "{st}");
    assert!(r["adverts_out"].as_u64().unwrap() > 0, "{st}");
    let trans = r["transitions"].as_array().unwrap();
    assert_eq!(trans.last().unwrap()["to"], "master", "{st}");
    assert!(ping(p.lab.ns("client"), "203.0.113.254"), "{}", p.logs());
}

/// Cuts fw1's inside carrier (its switch port goes down) and brings it back.
fn cut_inside(p: &Pair, up: bool) {
    let sw = p.lab.ns("inside");
    if up {
        sw.link_up("p-fw1").unwrap();
    } else {
        sw.link_down("p-fw1").unwrap();
    }
}

fn tracked_link_moves_the_group(preempt: bool) {
    let mut p = Pair::new(&format!("advert_interval_ms = 100\npreempt = {preempt}"));
    p.start(0);
    p.start(1);
    assert!(p.wait_holder(0, S(10)), "{}", p.logs());
    // The master's inside link loses carrier: the whole group (the outside VIP too, whose
    // link is fine) moves to fw2, and fw1 reports FAULT.
    cut_inside(&p, false);
    assert!(
        p.wait_holder(1, S(5)),
        "the group did not move to fw2\n{}",
        p.logs()
    );
    assert!(
        wait_for(S(2), Duration::from_millis(20), || p.role(0) == "fault"),
        "{}",
        p.logs()
    );
    let st = p.status(0).unwrap();
    assert_eq!(
        st["groups"][0]["links_down"],
        serde_json::json!(["inside"]),
        "{st}"
    );
    cut_inside(&p, true);
    assert!(
        wait_for(S(3), Duration::from_millis(20), || p.role(0) != "fault"),
        "{}",
        p.logs()
    );
    if preempt {
        assert!(
            p.wait_holder(0, S(5)),
            "fw1 did not preempt after its link came back\n{}",
            p.logs()
        );
    } else {
        // Several Master_Down_Intervals later fw2 still holds everything.
        std::thread::sleep(Duration::from_millis(1500));
        assert_eq!(
            p.holders(),
            vec![1],
            "fw1 preempted with preempt = false\n{}",
            p.logs()
        );
        assert_eq!(p.role(0), "backup");
    }
}

#[test]
fn tracked_link_down_moves_the_whole_group_and_preempts_back() {
    if require_root() {
        tracked_link_moves_the_group(true);
    }
}

#[test]
fn tracked_link_back_without_preempt_leaves_the_peer_master() {
    if require_root() {
        tracked_link_moves_the_group(false);
    }
}

/// Drops all traffic between fw1's and fw2's switch ports on both switches (the nodes stay
/// up, their carriers stay up, clients and servers still see both), or heals that.
fn split(p: &Pair, cut: bool) {
    for sw in ["outside", "inside"] {
        let ns = p.lab.ns(sw);
        if cut {
            ns.run("nft", ["add", "table", "bridge", "cut"]).unwrap();
            ns.run(
                "nft",
                "add chain bridge cut links { type filter hook forward priority 0 ; }".split(' '),
            )
            .unwrap();
            ns.run(
                "nft",
                "add rule bridge cut links iifname p-fw1 oifname p-fw2 drop".split(' '),
            )
            .unwrap();
            ns.run(
                "nft",
                "add rule bridge cut links iifname p-fw2 oifname p-fw1 drop".split(' '),
            )
            .unwrap();
        } else {
            ns.run("nft", ["delete", "table", "bridge", "cut"]).unwrap();
        }
    }
}

#[test]
fn split_brain_heals_to_one_master_that_reannounces() {
    if !require_root() {
        return;
    }
    let interval = Duration::from_millis(500);
    let mut p = Pair::new("advert_interval_ms = 500\npreempt = true");
    p.start(0);
    p.start(1);
    assert!(p.wait_holder(0, S(10)), "{}", p.logs());
    let client = p.lab.ns("client");
    assert!(ping(client, VIP_IN), "{}", p.logs());
    let (mac1, mac2) = (mac(p.ns(0), "eth1"), mac(p.ns(1), "eth1"));
    assert_eq!(neigh(client, VIP_IN).as_deref(), Some(mac1.as_str()));

    split(&p, true);
    // Both become master; the client follows fw2's gratuitous ARP.
    assert!(
        wait_for(S(5), Duration::from_millis(20), || p.role(0) == "master"
            && p.role(1) == "master"),
        "no split brain: {} / {}\n{}",
        p.role(0),
        p.role(1),
        p.logs()
    );
    assert_eq!(p.holders(), vec![0, 1]);
    assert!(
        wait_for(S(3), Duration::from_millis(20), || neigh(client, VIP_IN)
            .as_deref()
            == Some(&mac2)),
        "client did not follow fw2's GARP: {:?}",
        neigh(client, VIP_IN)
    );

    split(&p, false);
    let healed = std::time::Instant::now();
    assert!(p.wait_holder(0, S(10)), "{}", p.logs());
    let took = healed.elapsed();
    assert!(
        took <= interval * 3,
        "two masters for {took:?} after the heal (limit 3 advert intervals)\n{}",
        p.logs()
    );
    assert_eq!(p.role(1), "backup");
    // The winner re-announced: the client points at fw1 again without re-resolving.
    assert!(
        wait_for(S(2), Duration::from_millis(20), || neigh(client, VIP_IN)
            .as_deref()
            == Some(&mac1)),
        "winner did not re-send GARP: client has {:?}, fw1 is {mac1}",
        neigh(client, VIP_IN)
    );
}

#[test]
fn flapping_a_tracked_link_100_times_settles_to_one_holder() {
    if !require_root() {
        return;
    }
    let mut p = Pair::new("advert_interval_ms = 100\npreempt = true");
    p.start(0);
    p.start(1);
    assert!(p.wait_holder(0, S(10)), "{}", p.logs());
    for _ in 0..100 {
        cut_inside(&p, false);
        cut_inside(&p, true);
    }
    // Once it settles, exactly one node holds each VIP (fw1: the link ends up, preempt on).
    assert!(
        p.wait_holder(0, S(10)),
        "not settled on fw1: {:?}\n{}",
        p.holders(),
        p.logs()
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(p.holders(), vec![0], "{}", p.logs());
    assert_eq!(
        (p.role(0).as_str(), p.role(1).as_str()),
        ("master", "backup")
    );
}

#[test]
fn dual_stack_group_moves_ipv4_and_ipv6_vips_together() {
    if !require_root() {
        return;
    }
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/examples/dual-stack.toml"),
    )
    .unwrap()
    .replace("preempt_delay_ms = 5000", "preempt_delay_ms = 0");
    let mut p = Pair::with_config(&text, ["fw-a", "fw-b"]);
    // The seed-pair lab plus the dual-stack example's IPv6 addresses.
    for (i, last) in [(0, "2"), (1, "3")] {
        let ns = p.ns(i);
        ns.add_addr("eth0", format!("2001:db8:0:1::{last}/64").parse().unwrap())
            .unwrap();
        ns.add_addr("eth1", format!("2001:db8:0:2::{last}/64").parse().unwrap())
            .unwrap();
    }
    p.lab
        .ns("client")
        .add_addr("eth0", "2001:db8:0:2::10/64".parse().unwrap())
        .unwrap();
    p.start(0);
    p.start(1);
    let all = |p: &Pair, i: usize| {
        p.has(i, "eth0", "203.0.113.1")
            && p.has(i, "eth0", "2001:db8:0:1::1")
            && p.has(i, "eth1", "198.51.100.1")
            && p.has(i, "eth1", "2001:db8:0:2::1")
    };
    let none = |p: &Pair, i: usize| {
        !p.has(i, "eth0", "2001:db8:0:1::1") && !p.has(i, "eth1", "2001:db8:0:2::1")
    };
    assert!(
        wait_for(S(10), Duration::from_millis(20), || all(&p, 0)
            && none(&p, 1)),
        "fw-a should hold all four VIPs\n{}",
        p.logs()
    );
    let st = p.status(0).unwrap();
    assert_eq!(
        st["groups"][0]["routers"].as_array().unwrap().len(),
        4,
        "{st}"
    );
    assert!(
        ping(p.lab.ns("client"), "2001:db8:0:2::1"),
        "IPv6 VIP unreachable\n{}",
        p.logs()
    );
    let fwb_mac = mac(p.ns(1), "eth1");
    assert!(p.stop(0).success());
    assert!(
        wait_for(S(5), Duration::from_millis(20), || all(&p, 1)
            && none(&p, 0)),
        "fw-b should hold all four VIPs\n{}",
        p.logs()
    );
    // fw-b's unsolicited neighbour advertisement (override) repoints the client at once.
    assert!(
        wait_for(S(3), Duration::from_millis(20), || {
            neigh(p.lab.ns("client"), "2001:db8:0:2::1").as_deref() == Some(fwb_mac.as_str())
        }),
        "client's neighbour entry did not follow fw-b's NA: {:?}\n{}",
        neigh(p.lab.ns("client"), "2001:db8:0:2::1"),
        p.logs()
    );
    assert!(
        ping(p.lab.ns("client"), "2001:db8:0:2::1"),
        "IPv6 VIP unreachable after failover\n{}",
        p.logs()
    );
    // The IPv6 routers exchanged adverts: fw-b saw fw-a's.
    let st = p.status(1).unwrap();
    let v6: Vec<_> = st["groups"][0]["routers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["family"] == "ipv6")
        .collect();
    assert!(
        v6.iter().all(|r| r["adverts_in"].as_u64().unwrap() > 0),
        "{st}\n{}",
        p.logs()
    );
}

#[test]
fn vips_left_by_a_crashed_run_are_removed_at_start() {
    if !require_root() {
        return;
    }
    let mut p = Pair::new("advert_interval_ms = 100\npreempt = true");
    // fw2 "crashed" as master: its VIPs are still on its interfaces.
    p.ns(1)
        .add_addr("eth0", "203.0.113.1/24".parse().unwrap())
        .unwrap();
    p.ns(1)
        .add_addr("eth1", "198.51.100.1/24".parse().unwrap())
        .unwrap();
    p.start(0);
    assert!(
        wait_for(S(10), Duration::from_millis(20), || p.role(0) == "master"
            && p.has(0, "eth0", VIP_OUT)),
        "{}",
        p.logs()
    );
    // fw2 starts again: it removes them before starting as backup, and stays backup.
    p.start(1);
    assert!(
        wait_for(S(5), Duration::from_millis(20), || p.role(1) == "backup"),
        "{}",
        p.logs()
    );
    assert_eq!(p.holders(), vec![0], "{}", p.logs());
    assert!(
        p.logs()
            .contains("removing VIP left over by an earlier run")
    );
}
