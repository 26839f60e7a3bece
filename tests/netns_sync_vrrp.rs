//! Failover with the real services in the loop (root, netns): `twinwall ruleset apply`,
//! `twinwall sync` and `twinwall vrrp` on fw1/fw2 of the seed-pair lab; fw1's links are
//! cut and VRRP fails over to fw2 through the commit handshake (`becoming_master` ->
//! commit of the external cache -> `commit-ack` -> VIPs). 1,000 TCP flows with continuous
//! echo plus 100 UDP flows, all SNATed to the outside VIP, must survive (fail under
//! 99.9 %); without sync the TCP flows must die. `FLOWS=N` changes the TCP count.

use std::path::Path;

use twinwall_sync::lab::cluster::{Cluster, Failover, Options};
use twinwall_testkit::require_root;

fn config() -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/examples/seed-pair.toml"),
    )
    .expect("seed-pair.toml")
}

/// Runs the flows through fw1, cuts it, lets VRRP fail over and counts survivors.
fn failover(sync: bool) -> (Failover, Cluster) {
    let tcp: usize = std::env::var("FLOWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let opts = Options {
        sync,
        ..Options::default()
    };
    let c = Cluster::start(Path::new(env!("CARGO_BIN_EXE_twinwall")), &config(), &opts)
        .unwrap_or_else(|e| panic!("{e}"));
    let f = c
        .failover(&opts, tcp, tcp / 10)
        .unwrap_or_else(|e| panic!("{e}"));
    (f, c)
}

#[test]
fn vrrp_failover_keeps_every_synced_flow() {
    if !require_root() {
        return;
    }
    let (f, c) = failover(true);
    let (s, t) = (&f.survival, f.takeover.expect("twinwall vrrp events"));
    eprintln!(
        "real VRRP failover: {}/{} TCP, {}/{} UDP survived; echo gap longest {:.0} ms, median \
         {:.0} ms; cut -> VIPs {:?}, handshake (becoming_master -> VIPs) {:?}, acked {}; fw2 \
         commit {}",
        s.tcp.1,
        s.tcp.0,
        s.udp.1,
        s.udp.0,
        s.longest_gap_ms,
        s.median_gap_ms,
        f.cut_to_vips,
        t.handshake,
        t.acked,
        c.sync_status(1)["last_commit"]
    );
    assert!(
        t.acked,
        "the VIPs moved without the sync service's ack\n{}",
        c.logs()
    );
    assert_eq!(c.vrrp_role(1), "master");
    assert!(
        s.survived as f64 >= 0.999 * s.flows as f64,
        "only {} of {} flows survived (TCP {}/{}, UDP {}/{})\n{}\n{}",
        s.survived,
        s.flows,
        s.tcp.1,
        s.tcp.0,
        s.udp.1,
        s.udp.0,
        c.diagnosis(),
        c.logs()
    );
}

#[test]
fn vrrp_failover_without_sync_loses_the_tcp_flows() {
    if !require_root() {
        return;
    }
    let (f, c) = failover(false);
    let s = &f.survival;
    eprintln!(
        "real VRRP failover without sync: {}/{} TCP, {}/{} UDP survived",
        s.tcp.1, s.tcp.0, s.udp.1, s.udp.0
    );
    assert_eq!(c.vrrp_role(1), "master");
    assert!(
        s.tcp.1 * 10 < s.tcp.0,
        "{} of {} TCP flows survived without sync: the test cannot tell",
        s.tcp.1,
        s.tcp.0
    );
}
