//! A backup that was not scheduled for longer than Master_Down_Interval (root, netns).
//! That is what a loaded TCG host does to a lab firewall: its vCPU does not run for a
//! few hundred milliseconds while the master's adverts keep arriving and queue in the
//! socket. When the backup runs again, its Master_Down_Timer has expired *and* fresh
//! adverts are waiting; those adverts arrived before the backup looked at its timer, so
//! they must win: the master never stopped. Here the backup's process is frozen with
//! SIGSTOP for 1 s (MDI at 100 ms adverts: 360 ms) while the master advertises, then
//! resumed. Before the service read pending adverts first, the resumed backup took over
//! (an advert, a GARP series) and stepped down again a moment later: the "flaps" of the
//! QEMU lab under load.

mod netns_vrrp_support;

use std::process::Command;
use std::time::Duration;

use netns_vrrp_support::*;
use twinwall_testkit::require_root;

const S: fn(u64) -> Duration = Duration::from_secs;

/// How often router 0 of group 0 on node `i` became master, by its own history.
fn times_master(p: &Pair, i: usize) -> usize {
    p.status(i)
        .and_then(|s| {
            s["groups"][0]["routers"][0]["transitions"]
                .as_array()
                .map(|t| t.iter().filter(|x| x["to"] == "master").count())
        })
        .unwrap_or(0)
}

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill {sig} {pid}");
}

#[test]
fn a_backup_that_was_not_scheduled_reads_the_queued_adverts_before_its_timer() {
    if !require_root() {
        return;
    }
    let mut p = Pair::new("advert_interval_ms = 100\npreempt = true");
    p.start(0);
    assert!(
        p.wait_holder(0, S(10)),
        "fw1 never took the VIPs\n{}",
        p.logs()
    );
    p.start(1);
    std::thread::sleep(S(2));
    assert_eq!(p.role(1), "backup", "{}", p.logs());
    let pid = p.procs[1].as_ref().expect("fw2 runs").id();
    for round in 0..3 {
        let before = times_master(&p, 1);
        signal(pid, "-STOP");
        std::thread::sleep(S(1));
        signal(pid, "-CONT");
        // Well past the point where a wrong take-over would have shown.
        std::thread::sleep(Duration::from_millis(800));
        assert_eq!(
            times_master(&p, 1),
            before,
            "round {round}: fw2 became master after it resumed, though fw1's adverts were \
             waiting in its socket\n{}",
            p.logs()
        );
        assert_eq!(p.role(1), "backup", "{}", p.logs());
        assert_eq!(p.holders(), [0], "{}", p.logs());
    }
}
