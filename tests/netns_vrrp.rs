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
