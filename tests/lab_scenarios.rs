//! The failover scenarios on the seed pair under QEMU TCG: fw1 and fw2 flashed with
//! `testkit/topologies/seed-pair/cluster.toml` (`shared/examples/seed-pair.toml` plus a
//! management zone on eth3, whose API the lab forwards to the host and reads), a client VM
//! (inside) and a server VM (outside) in the lab-host role, everything joined by the lab
//! switch. The pair is booted once and the
//! scenarios run in sequence (`scenario::ALL`; kill-master last), each writing its JSON
//! report to RUN_DIR/reports. The test fails if any scenario check fails — including the
//! killed master's takeover within Master_Down_Interval + a margin and the re-announced
//! VIPs after a healed split brain; the client's gap ≤ 500 ms is a target that is
//! printed and recorded (`target: true` in the report), not an assertion.

mod lab_common;

use std::sync::Mutex;

use lab_common::*;
use twinwall_lab::lab::Lab;
use twinwall_lab::scenario;

#[test]
fn seed_pair_failover_scenarios() {
    let run = run_dir("scenarios");
    let topo = repo().join("testkit/topologies/seed-pair");
    let lab = Mutex::new(Lab::up(&options(&topo, &run)).expect("lab up"));
    let mut failed = Vec::new();
    for name in scenario::ALL {
        let report = scenario::run_by_name(&lab, name)
            .unwrap_or_else(|e| panic!("{name}: {e}; consoles in {}", run.display()));
        eprintln!("{}", report.summary);
        for c in &report.checks {
            eprintln!("  [{}] {}: {}", c.mark(), c.what, c.detail);
        }
        if !report.ok {
            failed.push(report.summary.clone());
        }
    }
    assert!(
        failed.is_empty(),
        "failed scenarios (reports in {}):\n{}",
        run.join("reports").display(),
        failed.join("\n")
    );
}
