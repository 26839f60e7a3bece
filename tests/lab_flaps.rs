//! A measurement, not a test of behaviour (ignored; `scripts/lab-flaps.sh` runs it): how
//! often a TCG-starved master lets its backup take over for a moment. Boots fw1 and fw2
//! of the seed pair, waits for one master, then watches the wire for
//! `TWINWALL_LAB_WATCH_SECS` (default 120) and prints one line: the backup's takeovers
//! (its adverts starting, each a moment of two masters), the master's longest interval
//! between two adverts on the wire (100 ms when nothing is starved; past
//! Master_Down_Interval the backup takes over), and its advert count. The QEMU options
//! under comparison come from the environment (`TWINWALL_LAB_MACHINE`,
//! `TWINWALL_LAB_NICE`), so the script can alternate them in one run.

mod lab_common;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use lab_common::*;
use twinwall_lab::lab::Lab;
use twinwall_lab::scenario::sole_master;
use twinwall_lab::switch::core::ObservedKind;

#[test]
#[ignore = "a measurement: run by scripts/lab-flaps.sh"]
fn backup_takeovers_of_an_idle_pair() {
    let secs: u64 = std::env::var("TWINWALL_LAB_WATCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120);
    let run = run_dir("flaps");
    let topo = repo().join("testkit/topologies/seed-pair");
    let mut opts = options(&topo, &run);
    opts.only = vec!["fw1".into(), "fw2".into()];
    let booted = Instant::now();
    let lab = Mutex::new(Lab::up(&opts).expect("lab up"));
    // The final master: with preemption the higher priority, whichever booted first.
    let master = wait_for(&lab, "the final master", Duration::from_secs(400), |l| {
        let m = sole_master(&l.status())?;
        l.expected_master().is_none_or(|e| e == m).then_some(m)
    });
    let boot_s = booted.elapsed().as_secs_f64();
    // Let the start-up settle (preemption, the first GARP series), then watch.
    std::thread::sleep(Duration::from_secs(10));
    let (t0, backup_ports, master_ports) = {
        let l = lab.lock().unwrap();
        l.switch.core().reset_advert_gaps();
        let ports = |node: &str| -> Vec<(usize, String)> {
            l.plan
                .ports
                .iter()
                .enumerate()
                .filter(|(_, p)| p.node == node && p.segment != "sync")
                .map(|(i, p)| (i, format!("{}:{}", p.node, p.segment)))
                .collect()
        };
        let backup = if master == "fw1" { "fw2" } else { "fw1" };
        (l.switch.now_ms(), ports(backup), ports(&master))
    };
    std::thread::sleep(Duration::from_secs(secs));
    let l = lab.lock().unwrap();
    let core = l.switch.core();
    let takeovers = core
        .observed_since(t0)
        .iter()
        .filter(|o| {
            backup_ports.iter().any(|(_, n)| *n == o.port)
                && matches!(o.what, ObservedKind::AdvertStart { .. })
        })
        .count();
    let vrids: Vec<u8> = l.vips.iter().map(|v| v.vrid).collect();
    let (mut gap, mut adverts) = (0, 0);
    for (id, _) in &master_ports {
        for v in &vrids {
            if let Some(a) = core.advert(*id, *v) {
                gap = gap.max(a.max_gap_ms);
                adverts += a.count;
            }
        }
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "flaps: machine {} nice {} boot-to-master {boot_s:.1} s; watched {secs} s: backup takeovers {takeovers}, master's longest advert interval {gap} ms ({adverts} adverts in all); load {}",
        twinwall_lab::vm::machine(),
        twinwall_lab::vm::nice().map_or("-".into(), |n| n.to_string()),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
    );
}
