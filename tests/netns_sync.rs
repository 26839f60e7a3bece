//! Conntrack sync end to end (root): client — fw1/fw2 — server in network namespaces with a
//! stateful ruleset, the sync service in both firewalls, failover by moving the VIPs.
//! Each test builds its own uniquely named namespaces, removed on drop even on failure.

use std::time::{Duration, Instant};

use serde_json::Value;
use twinwall_sync::core::Role;
use twinwall_sync::entry::{Entry, L4, Tuple};
use twinwall_sync::kernel::{Conntrack, wait_until};
use twinwall_sync::lab::flows::{Flows, echo_server, survival};
use twinwall_sync::lab::pair::{Pair, SyncHandle};

fn start_echo(pair: &Pair) -> std::sync::Arc<std::sync::atomic::AtomicBool> {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let s = stop.clone();
    pair.server
        .enter(move || echo_server(&[7000, 7001], &[7002, 7003], s))
        .unwrap()
        .unwrap();
    stop
}

fn entries(h: &SyncHandle, which: &str) -> u64 {
    h.status()[which].as_u64().unwrap_or(0)
}

fn digest(h: &SyncHandle, which: &str) -> Value {
    h.status()["consistency"][which].clone()
}

/// Runs flows through fw1, fails over to fw2, and returns the survival summary.
fn failover_run(
    pair: &mut Pair,
    sync: Option<&[SyncHandle; 2]>,
    tcp: usize,
    udp: usize,
) -> twinwall_sync::lab::flows::Survival {
    let stop_echo = start_echo(pair);
    let targets = Pair::targets(tcp, udp);
    let flows = pair
        .client
        .enter(move || Flows::start(&targets, Duration::from_millis(50)))
        .unwrap()
        .unwrap();
    // all flows established through fw1 and, with sync, replicated to fw2
    if let Some(s) = sync {
        let want = (tcp + udp) as u64;
        assert!(
            wait_until(Duration::from_secs(20), || entries(
                &s[1],
                "external_entries"
            ) >= want),
            "fw2 never held the flows: {}",
            s[1].status()
        );
    } else {
        std::thread::sleep(Duration::from_secs(1));
    }
    std::thread::sleep(Duration::from_millis(500));
    // fw1 dies for the hosts; fw2 takes over: commit first, then the VIPs
    pair.cut(0).unwrap();
    if let Some(s) = sync {
        let change = s[1].set_role(Role::Master).unwrap();
        let commit = change.commit.expect("commit report");
        eprintln!("commit: {commit:?}");
        assert!(commit.entries >= (tcp + udp) as u64);
        assert_eq!(commit.failed, 0);
    }
    pair.vips_to(1).unwrap();
    pair.master = 1;
    if std::env::var("TW_DEBUG").is_ok() {
        for f in &pair.fw {
            let text = f.run("conntrack", ["-L"]).unwrap();
            for port in ["dport=7000", "dport=7001", "dport=7002", "dport=7003"] {
                let n = text.lines().filter(|l| l.contains(port)).count();
                if let Some(l) = text.lines().find(|l| l.contains(port)) {
                    eprintln!("{}: {n}x {l}", f.name());
                }
            }
        }
    }
    let after = Instant::now() + Duration::from_millis(1500);
    std::thread::sleep(Duration::from_secs(4));
    let stats = flows.stop();
    stop_echo.store(true, std::sync::atomic::Ordering::Relaxed);
    let s = survival(&stats, after);
    for port in [7000, 7001, 7002, 7003] {
        let of: Vec<_> = stats.iter().filter(|f| f.target.port() == port).collect();
        let alive = of.iter().filter(|f| f.alive_after(after)).count();
        eprintln!("port {port}: {alive}/{} alive", of.len());
    }
    eprintln!("{}", serde_json::to_string(&s).unwrap());
    s
}

#[test]
fn failover_keeps_tcp_udp_and_nated_flows() {
    let mut pair = Pair::new("fo").unwrap();
    let sync = [
        pair.start_sync(0, pair.settings(0, Role::Master)).unwrap(),
        pair.start_sync(1, pair.settings(1, Role::Backup)).unwrap(),
    ];
    let s = failover_run(&mut pair, Some(&sync), 100, 20);
    assert_eq!(s.tcp.0, 100);
    assert!(s.tcp.1 * 1000 >= s.tcp.0 * 999, "TCP survivors {:?}", s);
    assert_eq!(s.udp.1, s.udp.0, "UDP survivors {s:?}");
    // the new master's kernel holds the flows and replicates them back to fw1
    assert!(pair.kernel_entries(1) >= 120);
}

#[test]
fn failover_without_sync_loses_the_tcp_flows() {
    let mut pair = Pair::new("nosync").unwrap();
    let s = failover_run(&mut pair, None, 100, 0);
    assert_eq!(s.tcp.0, 100);
    assert!(s.tcp.1 <= 5, "flows survived without state sync: {s:?}");
}

fn udp_entry(port: u16) -> Entry {
    Entry {
        orig: Tuple {
            src: "192.0.2.10".parse().unwrap(),
            dst: "198.51.100.10".parse().unwrap(),
            l4: L4::Udp {
                sport: port,
                dport: 53,
            },
        },
        reply: Tuple {
            src: "198.51.100.10".parse().unwrap(),
            dst: "192.0.2.10".parse().unwrap(),
            l4: L4::Udp {
                sport: 53,
                dport: port,
            },
        },
        status: 0,
        timeout: 600,
        mark: 0,
        zone: 0,
        tcp: None,
    }
}

fn inject(pair: &Pair, fw: usize, ports: std::ops::Range<u16>) {
    let v: Vec<Entry> = ports.map(udp_entry).collect();
    let r = pair.fw[fw]
        .enter(move || Conntrack::open().unwrap().commit(&v).unwrap())
        .unwrap();
    assert_eq!(r.failed, 0);
}

fn converged(sync: &[SyncHandle; 2], count: u64) -> bool {
    let m = digest(&sync[0], "internal");
    m["count"].as_u64() == Some(count) && m == digest(&sync[1], "external")
}

#[test]
fn peer_restart_and_sync_link_loss_heal_and_converge() {
    let pair = Pair::new("heal").unwrap();
    let sync = [
        pair.start_sync(0, pair.settings(0, Role::Master)).unwrap(),
        pair.start_sync(1, pair.settings(1, Role::Backup)).unwrap(),
    ];
    inject(&pair, 0, 1000..3000);
    assert!(wait_until(Duration::from_secs(20), || converged(
        &sync, 2000
    )));
    // the backup restarts: a full resync fills its fresh external cache
    let [a, b] = sync;
    b.stop();
    let b = pair.start_sync(1, pair.settings(1, Role::Backup)).unwrap();
    assert_eq!(entries(&b, "external_entries"), 0);
    let sync = [a, b];
    assert!(
        wait_until(Duration::from_secs(20), || converged(&sync, 2000)),
        "after restart: {} / {}",
        sync[0].status(),
        sync[1].status()
    );
    // the sync link goes down while the table changes, then comes back
    pair.sync_link(false).unwrap();
    inject(&pair, 0, 3000..3500);
    pair.fw[0]
        .run("conntrack", ["-D", "-p", "udp", "--orig-port-src", "1000"])
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(sync[1].status()["peer_up"], Value::Bool(false));
    assert!(!converged(&sync, 2499));
    pair.sync_link(true).unwrap();
    assert!(
        wait_until(Duration::from_secs(20), || converged(&sync, 2499)),
        "after link loss: {} / {}",
        sync[0].status(),
        sync[1].status()
    );
    // the backup's periodic digest check agrees
    assert!(wait_until(Duration::from_secs(10), || {
        sync[1].status()["consistency"]["consistent"] == Value::Bool(true)
    }));
}

#[test]
fn enobufs_is_counted_and_a_dump_resync_converges() {
    let pair = Pair::new("nobufs").unwrap();
    let mut small = pair.settings(0, Role::Master);
    small.event_rcvbuf = 16 * 1024;
    let sync = [
        pair.start_sync(0, small).unwrap(),
        pair.start_sync(1, pair.settings(1, Role::Backup)).unwrap(),
    ];
    // a burst of 20k entries in one batched commit overflows a 16 KiB event buffer
    let t0 = Instant::now();
    inject(&pair, 0, 10000..30000);
    assert!(
        wait_until(Duration::from_secs(30), || converged(&sync, 20000)),
        "{} / {}",
        sync[0].status(),
        sync[1].status()
    );
    eprintln!("converged after {:?}", t0.elapsed());
    let st = sync[0].status();
    eprintln!("{st}");
    assert!(st["enobufs"].as_u64().unwrap() >= 1, "{st}");
    assert!(st["dumps"].as_u64().unwrap() >= 2, "{st}");
}
