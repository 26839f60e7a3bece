//! Failover with the real services in the loop (root, netns): `twinwall ruleset apply`,
//! `twinwall sync` and `twinwall vrrp` on fw1/fw2 of the seed-pair lab; fw1's links are
//! cut and VRRP fails over to fw2 through the commit handshake (`becoming_master` ->
//! commit of the external cache -> `commit-ack` -> VIPs). 1,000 TCP flows with continuous
//! echo plus 100 UDP flows, all SNATed to the outside VIP, must survive (fail under
//! 99.9 %); without sync the TCP flows must die. `FLOWS=N` changes the TCP count.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use twinwall_sync::lab::cluster::{Cluster, Options, SERVER, takeover};
use twinwall_sync::lab::flows::{Flows, Proto, Survival, echo_server, survival};
use twinwall_testkit::require_root;

fn config() -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/examples/seed-pair.toml"),
    )
    .expect("seed-pair.toml")
}

/// Runs the flows through fw1, cuts it, lets VRRP fail over and counts survivors.
fn failover(sync: bool) -> (Survival, twinwall_sync::lab::cluster::Takeover, Cluster) {
    let tcp: usize = std::env::var("FLOWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let udp = tcp / 10;
    let opts = Options {
        sync,
        ..Options::default()
    };
    let c = Cluster::start(Path::new(env!("CARGO_BIN_EXE_twinwall")), &config(), &opts)
        .unwrap_or_else(|e| panic!("{e}"));
    let stop = Arc::new(AtomicBool::new(false));
    let s2 = stop.clone();
    c.lab
        .ns("server")
        .enter(move || echo_server(&[7000], &[7002], s2))
        .unwrap()
        .unwrap();
    let server = SERVER.parse().unwrap();
    let mut targets = vec![(Proto::Tcp, std::net::SocketAddr::new(server, 7000)); tcp];
    targets.extend(vec![
        (Proto::Udp, std::net::SocketAddr::new(server, 7002));
        udp
    ]);
    let flows = c
        .lab
        .ns("client")
        .enter(move || Flows::start(&targets, Duration::from_millis(100)))
        .unwrap()
        .unwrap_or_else(|e| panic!("flows through fw1 did not start: {e}\n{}", c.logs()));
    if sync {
        let want = (tcp + udp) as u64;
        assert!(
            twinwall_testkit::wait_for(Duration::from_secs(30), Duration::from_millis(100), || {
                c.sync_status(1)["external_entries"].as_u64().unwrap_or(0) >= want
            }),
            "fw2 never held the {want} flows: {}\n{}",
            c.sync_status(1),
            c.logs()
        );
    }
    std::thread::sleep(Duration::from_secs(1));
    let mut events = c.vrrp_events(1).unwrap();
    c.cut(0).unwrap();
    let t = takeover(&mut events, Duration::from_secs(10))
        .unwrap_or_else(|| panic!("fw2 never announced the VIPs\n{}", c.logs()));
    // Flows that echo again at any time after the takeover survived.
    std::thread::sleep(Duration::from_secs(4));
    let stats = flows.stop();
    stop.store(true, Ordering::Relaxed);
    (survival(&stats, t.announced_at), t, c)
}

#[test]
fn vrrp_failover_keeps_every_synced_flow() {
    if !require_root() {
        return;
    }
    let (s, t, c) = failover(true);
    eprintln!(
        "real VRRP failover: {}/{} TCP, {}/{} UDP survived; echo gap longest {:.0} ms, median \
         {:.0} ms; handshake (becoming_master -> VIPs) {:?}, acked {}; fw2 commit {}",
        s.tcp.1,
        s.tcp.0,
        s.udp.1,
        s.udp.0,
        s.longest_gap_ms,
        s.median_gap_ms,
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
        "only {} of {} flows survived (TCP {}/{}, UDP {}/{})\n{}",
        s.survived,
        s.flows,
        s.tcp.1,
        s.tcp.0,
        s.udp.1,
        s.udp.0,
        c.logs()
    );
}

#[test]
fn vrrp_failover_without_sync_loses_the_tcp_flows() {
    if !require_root() {
        return;
    }
    let (s, _t, c) = failover(false);
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
