//! The lab-host role and the traffic agent on real VMs (QEMU TCG), joined only by the lab
//! switch, no firewall: the image boots as a client and a server, the client's flows echo
//! through the switch, and a cut of the client's port shows as a gap as long as the cut
//! (at least) with no flow reset, while the switch counts the dropped frames.

mod lab_common;

use std::sync::Mutex;
use std::time::Duration;

use lab_common::*;
use twinwall_lab::lab::Lab;

/// A two-host topology written for this test (the shipped ones all have firewalls).
fn topology(dir: &std::path::Path) -> std::path::PathBuf {
    let t = dir.join("topology");
    std::fs::create_dir_all(&t).unwrap();
    std::fs::write(
        t.join("topology.toml"),
        r#"
[hosts.client]
addresses.eth0 = ["198.51.100.10/24"]
[hosts.server]
addresses.eth0 = ["198.51.100.20/24"]
[bridges.lan]
[[links]]
a = "client:eth0"
b = "lan:p-client"
[[links]]
a = "server:eth0"
b = "lan:p-server"
"#,
    )
    .unwrap();
    std::fs::write(
        t.join("lab.toml"),
        r#"
[vm.client]
role = "lab-host"
agent = "client"
target = "198.51.100.20:7000"
flows = 4
[vm.server]
role = "lab-host"
agent = "server"
"#,
    )
    .unwrap();
    t
}

const BOOT: Duration = Duration::from_secs(420);

#[test]
fn client_and_server_vms_echo_through_the_switch_and_a_cut_shows_as_a_gap() {
    let run = run_dir("hosts");
    let topo = topology(&run);
    let lab = Mutex::new(Lab::up(&options(&topo, &run)).expect("lab up"));
    // Every flow (4 TCP + 1 UDP) echoes: both VMs booted into the lab-host role, got
    // their addresses over rtnetlink and run the agents.
    let first = wait_for(&lab, "all client flows echoing", BOOT, |l| {
        l.traffic(false).ok().filter(|t| t.all_flowing(1000))
    });
    assert_eq!(first.flows.len(), 5, "{first:?}");
    let mut l = lab.lock().unwrap();
    l.traffic(true).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let calm = l.traffic(true).unwrap();
    assert_eq!(calm.tcp_broken(), (0, 4), "{calm:?}");
    let dropped_before = {
        let core = l.switch.core();
        core.counters(core.port("client:lan").unwrap()).rx_dropped
    };
    // A 3 s cut of the client's port, in the switch and as a carrier loss.
    l.cut("client:lan", true).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    l.heal(None).unwrap();
    drop(l);
    let after = wait_for(&lab, "flows echoing after the heal", BOOT, |l| {
        l.traffic(false).ok().filter(|t| t.all_flowing(500))
    });
    eprintln!(
        "after a 3 s cut: longest gap {} ms, TCP broken {:?}",
        after.longest_gap_ms(),
        after.tcp_broken()
    );
    assert!(
        after.longest_gap_ms() >= 2500,
        "a 3 s cut must show as a gap of about that length: {after:?}"
    );
    assert_eq!(
        after.tcp_broken(),
        (0, 4),
        "TCP flows survive a cut: {after:?}"
    );
    let l = lab.lock().unwrap();
    let core = l.switch.core();
    let p = core.port("server:lan").unwrap();
    assert!(core.counters(p).tx > 0);
    let c = core.port("client:lan").unwrap();
    // The guest lost carrier, so it sent little; whatever it sent was dropped, and the
    // frames for it were dropped on the way out.
    assert!(
        core.counters(c).tx_dropped > 0 || core.counters(c).rx_dropped > dropped_before,
        "{:?}",
        core.counters(c)
    );
    drop(core);
    drop(l);
    let _ = std::fs::remove_dir_all(&run);
}
