//! A commit that VRRP abandons (root, netns, the real services): fw2 becomes master, its
//! sync service is frozen (SIGSTOP) in the middle of its commit, fw1 comes back and takes
//! mastership again (priority 200, preempt), so fw2's VRRP is back to backup (it may flap
//! more than once) before the commit has finished; then the sync service runs on
//! (SIGCONT), finishes the commit, acks a seq that VRRP no longer waits for, and leaves
//! commit state on the backlog that follows. Afterwards:
//! * nothing is applied twice: one commit on fw2, one commit participant per VRRP service
//!   (no second `commit-join` without a `commit-leave`), fw2 backup without the VIPs;
//! * nothing is lost: fw2's external cache converges to fw1's table (digests equal);
//! * a real failover after that keeps every flow, and its commit meets the entries the
//!   abandoned commit left in fw2's kernel: they are updated in place (`existing`), none
//!   fails (the kernel refuses NAT on an existing entry: this failed before).

use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use twinwall_sync::lab::cluster::{Cluster, Options, takeover};
use twinwall_sync::lab::flows::survival;
use twinwall_testkit::{require_root, wait_for};

const PRELOAD: usize = 20_000;
const TCP: usize = 200;
const UDP: usize = 20;

fn config() -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/examples/seed-pair.toml"),
    )
    .expect("seed-pair.toml")
}

fn num(v: &serde_json::Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

#[test]
fn an_abandoned_commit_neither_double_applies_nor_loses_entries() {
    if !require_root() {
        return;
    }
    let opts = Options {
        preload: PRELOAD,
        // not what this test is about: a loaded machine must not make the VIPs go up
        // without the ack
        vrrp_args: vec!["--commit-wait-ms".into(), "10000".into()],
        ..Options::default()
    };
    let c = Cluster::start(Path::new(env!("CARGO_BIN_EXE_twinwall")), &config(), &opts)
        .unwrap_or_else(|e| panic!("{e}"));
    let flows = c
        .start_flows(&opts, TCP, UDP)
        .unwrap_or_else(|e| panic!("{e}"));
    let want = (PRELOAD + TCP + UDP) as u64;

    // fw1 cut: fw2's VRRP becomes master and its sync service starts committing the 20k
    // entries (tens of ms or more); it is frozen in the middle of that commit, which runs
    // at its own SCHED_FIFO priority (RtBoost, 2, above the service threads' 1): the
    // real-time priority of its threads tells when.
    let pid = c.service_pid(1, "sync").unwrap();
    c.cut(0).unwrap();
    // The watcher runs above the commit's priority: on a loaded machine a normally
    // scheduled poller missed the whole commit (tens of ms) in 2 of 3 runs at load 30-60.
    let boost = twinwall_sync::service::RtBoost::raise(3);
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end && !committing(pid) {
        std::thread::sleep(Duration::from_micros(200));
    }
    let caught = committing(pid);
    if caught {
        c.signal(1, "sync", Signal::SIGSTOP).unwrap();
    }
    drop(boost);
    assert!(
        caught,
        "fw2's sync service never started its commit (VRRP fw2 {})\n{}",
        c.vrrp_role(1),
        c.logs()
    );
    let frozen = scopeguard(&c);

    // fw1 back: it preempts, fw2's VRRP goes back to backup (its VIPs still wait for the
    // ack that has not come).
    c.restore(0).unwrap();
    assert!(
        wait_for(Duration::from_secs(10), Duration::from_millis(50), || {
            c.vrrp_role(0) == "master" && c.vrrp_role(1) == "backup" && c.holds_vip(0)
        }),
        "fw1 never took mastership back (fw1 {}, fw2 {})\n{}",
        c.vrrp_role(0),
        c.vrrp_role(1),
        c.logs()
    );
    drop(frozen); // SIGCONT: the sync service acts on what it missed

    // The commit finishes, then backup again: one commit, whatever VRRP did meanwhile
    // (it may have flapped master/backup more than once: superseded, no commit).
    let converged = wait_for(Duration::from_secs(30), Duration::from_millis(200), || {
        let (s1, s2) = (c.sync_status(0), c.sync_status(1));
        s2["role"] == "backup"
            && s1["role"] == "master"
            && num(&s2["external_entries"]) >= want
            && num(&s2["external_entries"]) == num(&s1["internal_entries"])
            && s2["consistency"]["consistent"] == true
    });
    let (s1, s2) = (c.sync_status(0), c.sync_status(1));
    assert!(
        converged,
        "fw2 never converged to fw1's table\nfw1 {s1}\nfw2 {s2}\n{}",
        c.logs()
    );
    assert_eq!(
        num(&s2["commits"]),
        1,
        "fw2 committed twice: {s2}\n{}",
        c.logs()
    );
    let abandoned = &s2["last_commit"];
    assert!(
        num(&abandoned["entries"]) >= want && num(&abandoned["failed"]) == 0,
        "the abandoned commit: {abandoned}"
    );
    for i in 0..2 {
        let v = c.vrrp_status(i).unwrap_or_default();
        assert_eq!(
            v["commit_participants"],
            1,
            "fw{}: the sync service joined twice: {v}",
            i + 1
        );
    }
    assert!(!c.holds_vip(1), "fw2 holds the VIPs as backup");

    // A real failover now: every flow survives, and the commit updates what the abandoned
    // one left in fw2's kernel instead of failing on it.
    std::thread::sleep(Duration::from_secs(1));
    let mut ev = c.vrrp_events(1).unwrap();
    c.cut(0).unwrap();
    let t = takeover(&mut ev, Duration::from_secs(10))
        .unwrap_or_else(|| panic!("fw2 never announced the VIPs\n{}", c.logs()));
    assert!(t.acked, "VIPs moved without the ack\n{}", c.logs());
    std::thread::sleep(Duration::from_secs(4));
    let stats = flows.stop();
    let s = survival(&stats, t.announced_at);
    let s2 = c.sync_status(1);
    let commit = &s2["last_commit"];
    eprintln!(
        "after the abandoned commit: {}/{} flows survived the failover (TCP {}/{}, UDP {}/{}), \
         longest gap {:.0} ms; fw2 commit {commit}",
        s.survived, s.flows, s.tcp.1, s.tcp.0, s.udp.1, s.udp.0, s.longest_gap_ms
    );
    assert_eq!(num(&s2["commits"]), 2, "{s2}");
    assert_eq!(
        num(&commit["failed"]),
        0,
        "the second commit failed: {commit}"
    );
    assert!(
        num(&commit["existing"]) >= PRELOAD as u64,
        "the second commit did not meet the first one's entries: {commit}"
    );
    assert_eq!(
        s.survived,
        s.flows,
        "flows lost (TCP {}/{}, UDP {}/{})\n{}",
        s.tcp.1,
        s.tcp.0,
        s.udp.1,
        s.udp.0,
        c.logs()
    );
}

/// True while a thread of process `pid` runs at the commit's real-time priority (2 by
/// default; the service's other threads run at 1).
fn committing(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().any(|t| {
        let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
        // field 40 (rt_priority); fields 3.. follow the ")" that ends the command name
        let rest: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .collect();
        rest.get(37)
            .and_then(|p| p.parse::<i32>().ok())
            .is_some_and(|p| p >= twinwall_sync::service::DEFAULT_COMMIT_RT_PRIORITY)
    })
}

/// SIGCONTs fw2's sync service when dropped, also when an assertion fails first (a
/// stopped process would not take the SIGTERM of the cluster's teardown).
struct Frozen<'a>(&'a Cluster);

impl Drop for Frozen<'_> {
    fn drop(&mut self) {
        let _ = self.0.signal(1, "sync", Signal::SIGCONT);
    }
}

fn scopeguard(c: &Cluster) -> Frozen<'_> {
    Frozen(c)
}
