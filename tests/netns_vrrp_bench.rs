//! The VRRP failover benchmark (ignored; `scripts/bench-vrrp.sh` runs it): twinwall and
//! keepalived on the same seed-pair topology, at 100 ms and 10 ms adverts.
//!
//! Per run: both nodes up, fw1 master; the server asks who has the outside VIP every
//! millisecond (ARP, from a thread in its namespace) and runs a 1 kHz ping of it; the
//! client pings the server through both VIPs (`ping -i 0.001 -D`). Then fw1's inside
//! carrier is cut (its switch port goes down) and we take
//! * takeover: from the cut to the first ARP packet claiming the VIP from fw2's MAC (its
//!   gratuitous ARP or its answer): the VIP answering on the backup;
//! * gap: the longest silence of the client -> server stream.
//!
//! Environment: `BENCH_VRRP_RUNS` (default 20), `TWINWALL_BIN` (the binary to measure,
//! default the test build's), `BENCH_VRRP_INTERVALS` (default `100,10`),
//! `BENCH_VRRP_ONLY` (`Keepalived`, `Twinwall` or `TwinwallAck`), `BENCH_VRRP_LOGS=1`. Prints medians, p95 and the ratio to
//! keepalived, plus idle RSS.

mod netns_vrrp_support;

use std::fs::File;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use netns_vrrp_support::*;
use twinwall_control::{Request, request, socket_path, subscribe};
use twinwall_testkit::{Netns, Spawned, wait_for};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Impl {
    Twinwall,
    /// twinwall with a commit participant on fw2 that acks at once: the handshake's cost.
    TwinwallAck,
    Keepalived,
}

fn now_s() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn start_ping(ns: &Netns, target: &str, out: &std::path::Path) -> Spawned {
    let mut c = ns.command("ping", ["-D", "-n", "-i", "0.001", "-W", "1", target]);
    c.stdin(Stdio::null())
        .stdout(File::create(out).unwrap())
        .stderr(Stdio::null());
    ns.spawn_command(c).unwrap()
}

fn stop_ping(p: Spawned) {
    Command::new("kill")
        .args(["-INT", &p.id().to_string()])
        .status()
        .unwrap();
    p.wait_timeout(Duration::from_secs(3));
}

/// Reply timestamps (seconds since the epoch) of a `ping -D` log.
fn replies(path: &std::path::Path) -> Vec<f64> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("bytes from"))
        .filter_map(|l| l.strip_prefix('[')?.split(']').next()?.parse().ok())
        .collect()
}

/// Asks "who has VIP_OUT" every millisecond from inside `ns` (on eth0) until `stop`, and
/// returns when (seconds since the epoch) each ARP packet claiming the VIP arrived and from
/// which MAC. Gratuitous ARPs count too: both mean the VIP answers on that node.
fn arp_probe(
    ns: &Netns,
    my_mac: [u8; 6],
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<Vec<(f64, [u8; 6])>> {
    use std::os::fd::AsFd;
    let path = format!("/run/netns/{}", ns.name());
    std::thread::spawn(move || {
        let f = File::open(&path).unwrap();
        nix::sched::setns(f.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let idx = nix::net::if_::if_nametoindex("eth0").unwrap();
        let proto = (0x0806u16).to_be() as i32;
        let s = socket2::Socket::new(
            socket2::Domain::PACKET,
            socket2::Type::DGRAM,
            Some(socket2::Protocol::from(proto)),
        )
        .unwrap();
        s.set_nonblocking(true).unwrap();
        let mut storage = socket2::SockAddrStorage::zeroed();
        // SAFETY: sockaddr_ll is a sockaddr type of this platform and fits the storage.
        let ll = unsafe { storage.view_as::<libc::sockaddr_ll>() };
        ll.sll_family = libc::AF_PACKET as u16;
        ll.sll_protocol = 0x0806u16.to_be();
        ll.sll_ifindex = idx as i32;
        ll.sll_halen = 6;
        ll.sll_addr[..6].copy_from_slice(&[0xff; 6]);
        let len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        // SAFETY: the first `len` bytes hold the sockaddr_ll initialised above.
        let to = unsafe { socket2::SockAddr::new(storage, len) };
        let vip: std::net::Ipv4Addr = VIP_OUT.parse().unwrap();
        let mut req = [0u8; 28];
        req[0..8].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
        req[8..14].copy_from_slice(&my_mac);
        req[14..18].copy_from_slice(&[203, 0, 113, 254]);
        req[24..28].copy_from_slice(&vip.octets());
        let mut seen = Vec::new();
        let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 128];
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let _ = s.send_to(&req, &to);
            std::thread::sleep(Duration::from_millis(1));
            while let Ok(n) = s.recv(&mut buf) {
                // SAFETY: recv initialised the first n bytes.
                let b: Vec<u8> = buf[..n]
                    .iter()
                    .map(|x| unsafe { x.assume_init() })
                    .collect();
                if n >= 28 && b[14..18] == vip.octets() {
                    let mut mac = [0u8; 6];
                    mac.copy_from_slice(&b[8..14]);
                    seen.push((now_s(), mac));
                }
            }
        }
        seen
    })
}

fn parse_mac(s: &str) -> [u8; 6] {
    let mut m = [0u8; 6];
    for (i, p) in s.split(':').enumerate().take(6) {
        m[i] = u8::from_str_radix(p, 16).unwrap();
    }
    m
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("VmRSS:")?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

struct Sample {
    takeover_ms: f64,
    gap_ms: f64,
    rss_kb: u64,
}

fn one_run(which: Impl, advert_ms: u32) -> Option<Sample> {
    let mut p = Pair::new(&format!("advert_interval_ms = {advert_ms}\npreempt = true"));
    let mut ka = Vec::new();
    match which {
        Impl::Twinwall | Impl::TwinwallAck => {
            p.start(0);
            p.start(1);
        }
        Impl::Keepalived => {
            let secs = format!("{}", f64::from(advert_ms) / 1000.0);
            ka.push(start_keepalived(&p, 0, &keepalived_conf(200, &secs, false)));
            ka.push(start_keepalived(&p, 1, &keepalived_conf(100, &secs, false)));
        }
    }
    if !p.wait_holder(0, Duration::from_secs(10)) {
        eprintln!("{which:?}: fw1 never became master");
        return None;
    }
    std::thread::sleep(Duration::from_millis(300));
    let rss = match which {
        Impl::Keepalived => ["keepalived.pid", "vrrp.pid"]
            .iter()
            .filter_map(|f| {
                std::fs::read_to_string(ka[0].dir.join(f))
                    .ok()?
                    .trim()
                    .parse()
                    .ok()
            })
            .map(rss_kb)
            .sum(),
        _ => rss_kb(p.procs[0].as_ref().unwrap().id()),
    };
    let acker = (which == Impl::TwinwallAck).then(|| {
        let sock = socket_path(&p.run_dir(1), "vrrp");
        let mut sub = subscribe(&sock, Duration::from_secs(2)).unwrap();
        request(&sock, &Request::new("commit-join"), Duration::from_secs(2)).unwrap();
        std::thread::spawn(move || {
            // Acks the first becoming_master at once (a sync service with nothing to commit).
            while let Ok(ev) = sub.next_event(Some(Duration::from_secs(5))) {
                let Some(ev) = ev else { break };
                if ev["event"] == "becoming_master" {
                    let args = serde_json::json!({"group": ev["group"], "seq": ev["seq"]});
                    let _ = request(
                        &sock,
                        &Request::with_args("commit-ack", args),
                        Duration::from_secs(2),
                    );
                    break;
                }
            }
        })
    });
    let dir = p.dir.path().to_path_buf();
    let vip_log = dir.join("ping-vip.log");
    let through_log = dir.join("ping-through.log");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let fw2_mac = parse_mac(&mac(p.ns(1), "eth0"));
    let probe = arp_probe(
        p.lab.ns("server"),
        parse_mac(&mac(p.lab.ns("server"), "eth0")),
        stop.clone(),
    );
    let vip_ping = start_ping(p.lab.ns("server"), VIP_OUT, &vip_log);
    let through_ping = start_ping(p.lab.ns("client"), "203.0.113.254", &through_log);
    std::thread::sleep(Duration::from_millis(500));
    p.lab.ns("inside").link_down("p-fw1").unwrap();
    let cut = now_s();
    // Poll gently: the bench shares two cores with the services it measures.
    let moved = wait_for(Duration::from_secs(5), Duration::from_millis(100), || {
        p.has(1, "eth0", VIP_OUT) && p.has(1, "eth1", VIP_IN)
    });
    std::thread::sleep(Duration::from_millis(700));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let arps = probe.join().unwrap_or_default();
    stop_ping(vip_ping);
    stop_ping(through_ping);
    if let Some(a) = acker {
        let _ = a.join();
    }
    drop(ka);
    if std::env::var_os("BENCH_VRRP_LOGS").is_some() {
        println!("cut at {cut:.6}\n{}", p.logs());
        let _ = std::fs::copy(&vip_log, "/tmp/bench-vrrp-vip.log");
        let _ = std::fs::copy(&through_log, "/tmp/bench-vrrp-through.log");
    }
    if !moved {
        eprintln!("{which:?}: the VIPs did not move to fw2");
        return None;
    }
    // The VIP answers on the backup: the first ARP packet claiming it from fw2's MAC.
    let first = arps.iter().find(|(t, m)| *t > cut && *m == fw2_mac)?.0;
    let through = replies(&through_log);
    let gap = through.windows(2).map(|w| w[1] - w[0]).fold(0.0, f64::max);
    Some(Sample {
        takeover_ms: (first - cut) * 1000.0,
        gap_ms: gap * 1000.0,
        rss_kb: rss,
    })
}

fn stats(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    let median = v[v.len() / 2];
    let p95 = v[((v.len() as f64 * 0.95).ceil() as usize)
        .saturating_sub(1)
        .min(v.len() - 1)];
    (median, p95)
}

#[test]
#[ignore = "benchmark: run by scripts/bench-vrrp.sh"]
fn bench_failover_twinwall_vs_keepalived() {
    let runs: usize = std::env::var("BENCH_VRRP_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    println!("VRRP failover, {runs} runs each (median / p95, ms); cut = fw1's inside carrier");
    let intervals: Vec<u32> = std::env::var("BENCH_VRRP_INTERVALS")
        .unwrap_or("100,10".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    for advert_ms in intervals {
        let mut rows = Vec::new();
        let only = std::env::var("BENCH_VRRP_ONLY").unwrap_or_default();
        let impls = [Impl::Keepalived, Impl::Twinwall, Impl::TwinwallAck];
        for which in impls
            .into_iter()
            .filter(|i| only.is_empty() || format!("{i:?}") == only)
        {
            let samples: Vec<Sample> = (0..runs)
                .filter_map(|_| one_run(which, advert_ms))
                .collect();
            if samples.is_empty() {
                println!("advert {advert_ms:>3} ms  {which:<12?} no successful run");
                continue;
            }
            let t = stats(samples.iter().map(|s| s.takeover_ms).collect());
            let g = stats(samples.iter().map(|s| s.gap_ms).collect());
            let rss = stats(samples.iter().map(|s| s.rss_kb as f64 / 1024.0).collect());
            rows.push((which, t, g, rss, samples.len()));
        }
        let base = rows
            .iter()
            .find(|r| r.0 == Impl::Keepalived)
            .map(|r| (r.1, r.2));
        for (which, t, g, rss, n) in &rows {
            let ratio = base
                .map(|(bt, bg)| {
                    format!(
                        "  ratio takeover {:.2} / gap {:.2} (p95 {:.2} / {:.2})",
                        t.0 / bt.0,
                        g.0 / bg.0,
                        t.1 / bt.1,
                        g.1 / bg.1
                    )
                })
                .unwrap_or_default();
            println!(
                "advert {advert_ms:>3} ms  {:<12} n={n:<3} takeover {:7.1} / {:7.1}  gap {:7.1} / {:7.1}  idle RSS {:5.1} MB{ratio}",
                format!("{which:?}"),
                t.0,
                t.1,
                g.0,
                g.1,
                rss.0
            );
        }
    }
}
