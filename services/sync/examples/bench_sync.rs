//! `make bench` part for conntrack sync (run by scripts/bench-sync.sh, root, release build):
//! twinwall sync and Debian's conntrackd (FTFW over UDP) side by side on the same netns
//! topology: N entries injected on the master until the peer holds them, commit of the
//! peer's cache on takeover, RSS at N entries, bytes on the wire per entry; then a failover
//! of long-lived echo flows through each, with the longest and median echo gap per flow.
//!
//! Usage: bench_sync TWINWALL_BINARY [ENTRIES] [FLOWS]
//!
//! Environment: `RAW_ONLY=1` the commit floor only; `VRRP_ONLY=1` the failovers with VRRP
//! in the loop only; `INJECT_RT=1` the injector under SCHED_FIFO; `PERF=FILE` /
//! `PERF_REPL=FILE` record the takeover commit / the master while replicating with perf;
//! `TW_ONLY=1` the replication table for twinwall only (no conntrackd, no failovers);
//! `TW_RT=N` twinwall's `--rt-priority` (default 1; 0 = normal scheduling); `CTD_RT=N`
//! conntrackd with its `Scheduler { Type FIFO }` option at priority N.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use twinwall_sync::core::Role;
use twinwall_sync::entry::Entry;
use twinwall_sync::kernel::{Conntrack, wait_until};
use twinwall_sync::lab::flows::{Flows, Survival, echo_server, survival};
use twinwall_sync::lab::pair::{Pair, SYNC, SYNC_PORT};
use twinwall_sync::lab::udp_entries;

fn entries(n: usize) -> Vec<Entry> {
    udp_entries(
        n,
        |k| format!("192.0.2.{}", 10 + k).parse().unwrap(),
        "198.51.100.10".parse().unwrap(),
    )
}

fn rss_mb(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

/// Where a process's resident memory is (MB): total, peak, the main heap (`[heap]`),
/// anonymous mappings (thread arenas, large allocations, stacks), file-backed (binary,
/// libraries).
fn mem_breakdown(pid: u32) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |k: &str| {
        status
            .lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let (mut heap, mut anon, mut file) = (0.0, 0.0, 0.0);
    let mut kind = 0;
    for l in smaps.lines() {
        let mut w = l.split_whitespace();
        let first = w.next().unwrap_or("");
        if first.contains('-') && first.chars().next().is_some_and(|c| c.is_ascii_hexdigit()) {
            let name = l.split_whitespace().nth(5).unwrap_or("");
            kind = if name == "[heap]" {
                0
            } else if name.is_empty() || name.starts_with('[') {
                1
            } else {
                2
            };
        } else if first == "Rss:" {
            let kb = w.next().and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0) / 1024.0;
            match kind {
                0 => heap += kb,
                1 => anon += kb,
                _ => file += kb,
            }
        }
    }
    format!(
        "RSS {:.1} MB (peak {:.1}): heap {heap:.1}, anon {anon:.1}, file {file:.1}",
        field("VmRSS:"),
        field("VmHWM:")
    )
}

/// One sample of the replication tail: ms after the injection, master pending, unacked,
/// retransmits, backup entries held, backup NACKs.
type Sample = (f64, u64, u64, u64, u64, u64);

/// UDP counters of a namespace (`/proc/net/snmp`): (RcvbufErrors, SndbufErrors, InErrors).
fn udp_errors(ns: &twinwall_testkit::Netns) -> (u64, u64, u64) {
    let text = ns.run("cat", ["/proc/net/snmp"]).unwrap_or_default();
    let rows: Vec<Vec<&str>> = text
        .lines()
        .filter(|l| l.starts_with("Udp:"))
        .map(|l| l.split_whitespace().collect())
        .collect();
    let get = |k: &str| {
        rows.first()
            .and_then(|h| h.iter().position(|x| *x == k))
            .and_then(|i| rows.get(1)?.get(i)?.parse().ok())
            .unwrap_or(0)
    };
    (get("RcvbufErrors"), get("SndbufErrors"), get("InErrors"))
}

/// Bytes waiting unread in the conntrack event sockets of a namespace (`/proc/net/netlink`:
/// the `Rmem` of the NETLINK_NETFILTER sockets that joined groups), i.e. events the
/// daemon's intake has not read yet (each costs the socket its skb truesize).
fn netlink_unread_bytes(ns: &twinwall_testkit::Netns) -> u64 {
    let text = ns.run("cat", ["/proc/net/netlink"]).unwrap_or_default();
    text.lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|f| f.get(1) == Some(&"12") && f.get(3).is_some_and(|g| *g != "00000000"))
        .filter_map(|f| f.get(4)?.parse::<u64>().ok())
        .sum()
}

/// Per thread of a process: (name, CPU s, context switches, s spent runnable but waiting
/// for a CPU), from `/proc/PID/task/*/{comm,stat,status,schedstat}`.
fn thread_stats(pid: u32) -> Vec<(String, f64, u64, f64)> {
    let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut v: Vec<_> = rd
        .flatten()
        .map(|t| {
            let p = t.path();
            let comm = std::fs::read_to_string(p.join("comm")).unwrap_or_default();
            let sched = std::fs::read_to_string(p.join("schedstat")).unwrap_or_default();
            let mut sw = sched
                .split_whitespace()
                .map(|x| x.parse::<f64>().unwrap_or(0.0));
            let cpu = sw.next().unwrap_or(0.0) / 1e9;
            let wait = sw.next().unwrap_or(0.0) / 1e9;
            let switches = std::fs::read_to_string(p.join("status"))
                .unwrap_or_default()
                .lines()
                .filter(|l| l.contains("ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum::<u64>();
            (comm.trim().to_string(), cpu, switches, wait)
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// The difference of two [`thread_stats`] samples, printed one thread per item.
fn thread_delta(a: &[(String, f64, u64, f64)], b: &[(String, f64, u64, f64)]) -> String {
    b.iter()
        .map(|(name, cpu, sw, wait)| {
            let (c0, s0, w0) = a
                .iter()
                .find(|x| &x.0 == name)
                .map(|x| (x.1, x.2, x.3))
                .unwrap_or((0.0, 0, 0.0));
            format!(
                "{name}: cpu {:.3} s, switches {}, runnable-waiting {:.3} s",
                cpu - c0,
                sw - s0,
                wait - w0
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// CPU seconds (user + system) a process has used so far.
fn proc_cpu(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let f: Vec<&str> = s
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let t = |k: usize| f.get(k).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (t(11) + t(12)) / 100.0
}

/// Context switches (voluntary + involuntary) of a process and its threads so far.
fn proc_switches(pid: u32) -> u64 {
    let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    rd.flatten()
        .map(|t| {
            std::fs::read_to_string(t.path().join("status"))
                .unwrap_or_default()
                .lines()
                .filter(|l| l.contains("ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum::<u64>()
        })
        .sum()
}

/// Injects `batch` into the current namespace's kernel (batched netlink create). With
/// `INJECT_RT=1` the injector runs under SCHED_FIFO, as packets create entries in softirq
/// context ahead of every process: the daemons then have to keep up with the kernel
/// rather than with an injector that shares the loaded machine with them.
fn inject(batch: &[Entry]) -> twinwall_sync::kernel::CommitReport {
    let _boost = std::env::var("INJECT_RT")
        .is_ok()
        .then(|| twinwall_sync::service::RtBoost::raise(1));
    Conntrack::open().unwrap().commit(batch).unwrap()
}

fn kernel_count(pair: &Pair, i: usize) -> usize {
    pair.kernel_entries(i)
}

/// The conntrack hash of this machine (shared by every namespace):
/// (`nf_conntrack_buckets`, `nf_conntrack_max`).
fn hash_state() -> (u64, u64) {
    let read = |k: &str| {
        std::fs::read_to_string(format!("/proc/sys/net/netfilter/{k}"))
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    (read("nf_conntrack_buckets"), read("nf_conntrack_max"))
}

/// Conntrack entries allocated in the whole kernel (active objects of the
/// `nf_conntrack` slab): more than the namespaces in use hold means namespaces of an
/// earlier part are still being torn down (their entries still sit in the shared hash).
fn slab_entries() -> u64 {
    std::fs::read_to_string("/proc/slabinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("nf_conntrack "))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// Entries in a namespace's table (`nf_conntrack_count` is per namespace).
fn ns_count(ns: &twinwall_testkit::Netns) -> u64 {
    ns.run("cat", ["/proc/sys/net/netfilter/nf_conntrack_count"])
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Before a takeover: the old master's daemon has stopped; its table is flushed too,
/// because the lab's "nodes" share one kernel and one conntrack hash (namespaces only
/// mix into the hash value), so its N entries would lengthen every hash chain the new
/// master's commit walks (the floor's row "another namespace holds the same N"), which
/// two machines do not do. `KEEP_OLD_TABLE=1` keeps them (the lab artefact, for A/B).
fn retire_old_master(pair: &Pair) {
    if std::env::var("KEEP_OLD_TABLE").is_err() {
        pair.fw[0].run("conntrack", ["-F"]).unwrap();
    }
    // freed slabs and the flush's RCU callbacks are done before the clock starts
    std::thread::sleep(Duration::from_millis(300));
    let (buckets, max) = hash_state();
    eprintln!(
        "takeover: conntrack hash {buckets} buckets, max {max}; entries old master {}, new \
         master {}, in the whole kernel {} (old master's table {})",
        ns_count(&pair.fw[0]),
        ns_count(&pair.fw[1]),
        slab_entries(),
        if std::env::var("KEEP_OLD_TABLE").is_err() {
            "flushed"
        } else {
            "kept"
        }
    );
}

#[derive(Debug, Default)]
struct Result {
    sync_s: f64,
    inject_s: f64,
    /// The takeover: `set-role master` until its answer (twinwall), `conntrackd -c`.
    commit_s: f64,
    /// twinwall only: the commit as the service reports it, and its CPU.
    commit_report_s: f64,
    commit_cpu_s: f64,
    rss_backup_mb: f64,
    rss_master_mb: f64,
    wire_bytes_per_entry: f64,
    resync_s: f64,
    /// CPU seconds of the master and the backup daemon while replicating the injection.
    repl_cpu: (f64, f64),
}

struct Proc(Child);
impl Drop for Proc {
    /// SIGTERM, then SIGKILL if it has not exited within 5 s.
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        if !wait_until(Duration::from_secs(5), || {
            matches!(self.0.try_wait(), Ok(Some(_)))
        }) {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// The scratch directory, removed even when a measurement panics.
struct Scratch(PathBuf);
impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn view_json(i: usize) -> String {
    serde_json::json!({
        "cluster": "bench", "version": 1, "node": format!("fw{}", i + 1), "priority": 100,
        "interfaces": {},
        "peer": {"node": format!("fw{}", 2 - i), "priority": 100, "interfaces": {}},
        "vrrp": {"advert_interval_ms": 100, "preempt": false, "preempt_delay_ms": 0,
                 "accept_mode": false, "garp_count": 1, "garp_interval_ms": 0, "groups": []},
        "sync": {"interface": "sync", "device": "sync", "local": SYNC[i],
                 "peer": SYNC[1 - i], "port": SYNC_PORT},
        "routes": [], "conntrack_ignore": Pair::own_addresses(),
        "objects": {"networks": {}, "services": {}},
        "policy": {"default": "drop", "log_default": false, "rules": []},
        "nat": [],
        "management": {"port": 8443, "interfaces": [], "allowed_from": []}
    })
    .to_string()
}

fn status(sock: &Path) -> serde_json::Value {
    twinwall_control::request(
        sock,
        &twinwall_control::Request::new("status"),
        Duration::from_secs(10),
    )
    .unwrap_or_default()
}

fn bench_twinwall(bin: &str, n: usize, dir: &Path) -> Result {
    let pair = Pair::new("bt").unwrap();
    std::fs::write(dir.join("sync.key"), "ab".repeat(32)).unwrap();
    let spawn = |i: usize| {
        let view = dir.join(format!("view{i}.json"));
        std::fs::write(&view, view_json(i)).unwrap();
        let run = dir.join(format!("run{i}"));
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                pair.fw[i].name(),
                bin,
                "--log",
                // TW_LOG=LEVEL: the daemons' log level (default warn)
                &std::env::var("TW_LOG").unwrap_or_else(|_| "warn".into()),
                "sync",
            ])
            .arg("--config")
            .arg(&view)
            .args(["--node", &format!("fw{}", i + 1)])
            .arg("--run-dir")
            .arg(&run)
            .arg("--sync-key")
            .arg(dir.join("sync.key"))
            .args(["--role", if i == 0 { "master" } else { "backup" }])
            // TW_RT=N: the service threads' SCHED_FIFO priority (0: normal scheduling)
            .args(
                std::env::var("TW_RT")
                    .map(|p| vec!["--rt-priority".to_string(), p])
                    .unwrap_or_default(),
            )
            .stdout(Stdio::null())
            .stderr(
                std::fs::File::options()
                    .create(true)
                    .append(true)
                    .open(dir.join(format!("tw{i}.log")))
                    .unwrap(),
            )
            .spawn()
            .unwrap();
        (Proc(child), run.join("sync.sock"))
    };
    let mut procs = Vec::new();
    let mut socks = Vec::new();
    for i in 0..2 {
        let (p, s) = spawn(i);
        procs.push(p);
        socks.push(s);
    }
    assert!(wait_until(Duration::from_secs(10), || socks
        .iter()
        .all(|s| s.exists())));
    std::thread::sleep(Duration::from_millis(300));
    let tx0 = status(&socks[0])["tx_bytes"].as_u64().unwrap_or(0);
    let batch = entries(n);
    // PERF_REPL=FILE: the master profiled by perf during the replication
    let perf_repl = std::env::var("PERF_REPL").ok().map(|out| {
        let p = Command::new("perf")
            .args(["record", "-q", "-g", "-o", &out, "-p"])
            .arg(procs[0].0.id().to_string())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(2000));
        p
    });
    let daemons0 = [0, 1].map(|i| (proc_cpu(procs[i].0.id()), proc_switches(procs[i].0.id())));
    let threads0 = thread_stats(procs[0].0.id());
    let events0 = status(&socks[0])["events"].as_u64().unwrap_or(0);
    let t0 = Instant::now();
    let cpu0 = cpu_times();
    let r = pair.fw[0].enter(move || inject(&batch)).unwrap();
    let inject_s = t0.elapsed().as_secs_f64();
    let cpu1 = cpu_times();
    let unread_bytes = netlink_unread_bytes(&pair.fw[0]);
    let threads1 = thread_stats(procs[0].0.id());
    let read = status(&socks[0])["events"].as_u64().unwrap_or(0) - events0;
    eprintln!(
        "at the injection's end: master read {read} events, unread {} ({unread_bytes} bytes \
         in its event socket); master threads during the injection: {}",
        (n as u64).saturating_sub(read),
        thread_delta(&threads0, &threads1)
    );
    eprintln!(
        "injection with twinwall listening: {inject_s:.3} s wall, injector CPU user {:.3} s, \
         sys {:.3} s",
        cpu1.0 - cpu0.0,
        cpu1.1 - cpu0.1
    );
    assert_eq!(r.failed, 0, "{r:?}");
    // The tail: from the end of the injection until the peer holds all, where the entries
    // are (master: queued / in flight; backup: held), sampled every 5 ms.
    let t_end = Instant::now();
    let mut trace = Vec::new();
    let ok = wait_until(Duration::from_secs(120), || {
        let (m, b) = (status(&socks[0]), status(&socks[1]));
        let held = b["external_entries"].as_u64().unwrap_or(0);
        trace.push((
            t_end.elapsed().as_secs_f64() * 1e3,
            m["pending"].as_u64().unwrap_or(0),
            m["unacked"].as_u64().unwrap_or(0),
            m["retransmits"].as_u64().unwrap_or(0),
            held,
            b["nacks_sent"].as_u64().unwrap_or(0),
        ));
        held >= n as u64
    });
    let sync_s = t0.elapsed().as_secs_f64();
    let tail_ms = t_end.elapsed().as_secs_f64() * 1e3;
    let first = |f: &dyn Fn(&Sample) -> bool| {
        trace
            .iter()
            .find(|x| f(x))
            .map(|x| format!("{:.0} ms", x.0))
            .unwrap_or_else(|| "never".into())
    };
    if let (Some(a), Some(z)) = (trace.first(), trace.last()) {
        eprintln!(
            "tail {tail_ms:.0} ms after the injection: at its end master pending {} unacked {}, \
             backup missing {}; master queue empty after {}, nothing in flight after {}; \
             retransmits {} -> {}, backup NACKs {} -> {}; UDP (rcvbuf, sndbuf, in) errors \
             master {:?} backup {:?}; {} samples",
            a.1,
            a.2,
            n as u64 - a.4.min(n as u64),
            first(&|x| x.1 == 0),
            first(&|x| x.1 == 0 && x.2 == 0),
            a.3,
            z.3,
            a.5,
            z.5,
            udp_errors(&pair.fw[0]),
            udp_errors(&pair.fw[1]),
            trace.len()
        );
    }
    assert!(ok, "backup never held {n} entries: {}", status(&socks[1]));
    let daemons1 = [0, 1].map(|i| (proc_cpu(procs[i].0.id()), proc_switches(procs[i].0.id())));
    let repl_cpu = (daemons1[0].0 - daemons0[0].0, daemons1[1].0 - daemons0[1].0);
    eprintln!(
        "master threads, injection start -> peer holds all: {}",
        thread_delta(&threads0, &thread_stats(procs[0].0.id()))
    );
    if let Some(p) = perf_repl {
        let _ = Command::new("kill")
            .args(["-INT", &p.id().to_string()])
            .status();
        let _ = Proc(p);
    }
    eprintln!(
        "replication of {n}: CPU master {:.3} s, backup {:.3} s; context switches master {}, \
         backup {}",
        daemons1[0].0 - daemons0[0].0,
        daemons1[1].0 - daemons0[1].0,
        daemons1[0].1 - daemons0[0].1,
        daemons1[1].1 - daemons0[1].1
    );
    std::thread::sleep(Duration::from_millis(500));
    let st = status(&socks[0]);
    if st.is_null() {
        for i in 0..2 {
            let log = std::fs::read_to_string(dir.join(format!("tw{i}.log"))).unwrap_or_default();
            eprintln!("fw{} log:\n{log}", i + 1);
        }
        let raw = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "echo '{{\"cmd\":\"status\"}}' | socat -t5 - UNIX-CONNECT:{}",
                socks[0].display()
            ))
            .output()
            .unwrap();
        eprintln!("raw: {}", String::from_utf8_lossy(&raw.stdout));
        panic!("master status unavailable");
    }
    let tx = st["tx_bytes"].as_u64().unwrap_or(0).saturating_sub(tx0);
    let rss_backup_mb = rss_mb(procs[1].0.id());
    let rss_master_mb = rss_mb(procs[0].0.id());
    eprintln!(
        "memory at {n}: master {}; backup {}",
        mem_breakdown(procs[0].0.id()),
        mem_breakdown(procs[1].0.id())
    );
    // Our own pipeline without the injection bound: the backup restarts and the master
    // streams its whole table (a full resync) until the new backup holds it.
    let cpu = proc_cpu;
    drop(procs.pop());
    let master_cpu0 = cpu(procs[0].0.id());
    let t2 = Instant::now();
    let (p, _) = spawn(1);
    procs.push(p);
    let ok = wait_until(Duration::from_secs(120), || {
        status(&socks[1])["external_entries"].as_u64().unwrap_or(0) >= n as u64
    });
    let resync_s = t2.elapsed().as_secs_f64();
    assert!(
        ok,
        "restarted backup never held {n} entries: {}",
        status(&socks[1])
    );
    let resync_cpu = (cpu(procs[0].0.id()) - master_cpu0, cpu(procs[1].0.id()));
    eprintln!(
        "full resync of {n} to a restarted backup: {resync_s:.3} s ({:.0} entries/s, including \
         the backup's start); CPU master {:.2} s, backup {:.2} s",
        n as f64 / resync_s,
        resync_cpu.0,
        resync_cpu.1
    );
    // takeover: the backup commits its external cache (PERF=FILE: profiled by perf). The
    // old master's daemon is stopped first: both "nodes" share this machine's kernel, and
    // a conntrack listener in any namespace makes the kernel build an event for every
    // entry created in every namespace (the floor's row "a listener in another
    // namespace": twice the kernel's work), which two real nodes do not do.
    drop(procs.remove(0));
    retire_old_master(&pair);
    let perf = std::env::var("PERF").ok().map(|out| {
        let p = Command::new("perf")
            .args(["record", "-q", "-g", "-o", &out])
            // PERF_ALL=1: every CPU (what else runs during the commit), else the service
            .args(if std::env::var("PERF_ALL").is_ok() {
                vec!["-a".to_string()]
            } else {
                vec!["-p".to_string(), procs[0].0.id().to_string()]
            })
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(2000));
        p
    });
    let t1 = Instant::now();
    let v = twinwall_control::request(
        &socks[1],
        &twinwall_control::Request::with_args("set-role", serde_json::json!({"role": "master"})),
        Duration::from_secs(60),
    )
    .unwrap();
    // What VRRP would wait for: the request until its answer (as `conntrackd -c`).
    let commit_s = t1.elapsed().as_secs_f64();
    let commit_report_s = v["commit"]["duration_us"].as_f64().unwrap_or(0.0) / 1e6;
    let commit_cpu_s = v["commit"]["cpu_us"].as_f64().unwrap_or(0.0) / 1e6;
    eprintln!("twinwall commit: {v} (request wall {commit_s:.3} s)");
    if std::env::var("TW_LOG").is_ok() {
        std::thread::sleep(Duration::from_millis(500));
        let log = std::fs::read_to_string(dir.join("tw1.log")).unwrap_or_default();
        for l in log
            .lines()
            .filter(|l| l.contains("commit") || l.contains("role") || l.contains("dump"))
        {
            eprintln!("fw2: {l}");
        }
    }
    if let Some(p) = perf {
        let _ = Command::new("kill")
            .args(["-INT", &p.id().to_string()])
            .status();
        let _ = Proc(p);
    }
    let in_kernel = kernel_count(&pair, 1);
    assert!(
        in_kernel >= n,
        "only {in_kernel} entries in fw2's kernel after commit"
    );
    Result {
        sync_s,
        inject_s,
        commit_s,
        commit_report_s,
        commit_cpu_s,
        rss_backup_mb,
        rss_master_mb,
        wire_bytes_per_entry: tx as f64 / n as f64,
        resync_s,
        repl_cpu,
    }
}

fn conntrackd_conf(dir: &Path, i: usize) -> PathBuf {
    let ignore: String = Pair::own_addresses()
        .iter()
        .map(|a| format!("            IPv4_address {a}\n"))
        .collect();
    // CTD_RT=N: conntrackd's own real-time option, as twinwall's threads run by default
    let sched = std::env::var("CTD_RT")
        .map(|p| format!("    Scheduler {{\n        Type FIFO\n        Priority {p}\n    }}\n"))
        .unwrap_or_default();
    let conf = format!(
        r#"Sync {{
    Mode FTFW {{
        DisableExternalCache off
    }}
    UDP {{
        IPv4_address {local}
        IPv4_Destination_Address {peer}
        Port {port}
        Interface sync
        SndSocketBuffer 16777216
        RcvSocketBuffer 16777216
        Checksum on
    }}
}}
General {{
    HashSize 65536
    HashLimit 1048576
    LogFile {dir}/ctd{i}.log
    Syslog off
    LockFile {dir}/ctd{i}.lock
    UNIX {{
        Path {dir}/ctd{i}.sock
    }}
    NetlinkBufferSize 2097152
    NetlinkBufferSizeMaxGrowth 67108864
    NetlinkOverrunResync on
{sched}    Filter From Userspace {{
        Address Ignore {{
{ignore}        }}
    }}
}}
"#,
        local = SYNC[i],
        peer = SYNC[1 - i],
        port = SYNC_PORT + 1,
        dir = dir.display(),
    );
    let p = dir.join(format!("conntrackd{i}.conf"));
    std::fs::write(&p, conf).unwrap();
    p
}

fn ctd_external(pair: &Pair, conf: &Path) -> u64 {
    let out = pair.fw[1]
        .run(
            "conntrackd",
            ["-C", &conf.display().to_string(), "-s", "cache"],
        )
        .unwrap_or_default();
    // "cache:external  active objects: N"
    let mut external = false;
    for l in out.lines() {
        if l.contains("external") {
            external = true;
        }
        if external && let Some(v) = l.split("active objects:").nth(1) {
            return v
                .split_whitespace()
                .next()
                .and_then(|x| x.parse().ok())
                .unwrap_or(0);
        }
    }
    0
}

fn bench_conntrackd(n: usize, dir: &Path) -> Result {
    let pair = Pair::new("bc").unwrap();
    let confs = [conntrackd_conf(dir, 0), conntrackd_conf(dir, 1)];
    let mut procs = Vec::new();
    for (i, conf) in confs.iter().enumerate() {
        let _ = std::fs::remove_file(dir.join(format!("ctd{i}.lock")));
        let child = Command::new("ip")
            .args(["netns", "exec", pair.fw[i].name(), "conntrackd", "-C"])
            .arg(conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        procs.push(Proc(child));
    }
    std::thread::sleep(Duration::from_secs(1));
    let batch = entries(n);
    // `ip netns exec` execs conntrackd: the child's pid is conntrackd's
    let daemons0 = [0, 1].map(|i| (proc_cpu(procs[i].0.id()), proc_switches(procs[i].0.id())));
    let t0 = Instant::now();
    let cpu0 = cpu_times();
    let threads0 = thread_stats(procs[0].0.id());
    pair.fw[0].enter(move || inject(&batch)).unwrap();
    let inject_s = t0.elapsed().as_secs_f64();
    let cpu1 = cpu_times();
    eprintln!(
        "at the injection's end: conntrackd master has {} bytes unread in its event socket; \
         its threads during the injection: {}",
        netlink_unread_bytes(&pair.fw[0]),
        thread_delta(&threads0, &thread_stats(procs[0].0.id()))
    );
    eprintln!(
        "injection with conntrackd listening: {inject_s:.3} s wall, injector CPU user {:.3} s, \
         sys {:.3} s",
        cpu1.0 - cpu0.0,
        cpu1.1 - cpu0.1
    );
    let ok = wait_until(Duration::from_secs(120), || {
        ctd_external(&pair, &confs[1]) >= n as u64
    });
    let sync_s = t0.elapsed().as_secs_f64();
    let daemons1 = [0, 1].map(|i| (proc_cpu(procs[i].0.id()), proc_switches(procs[i].0.id())));
    eprintln!(
        "conntrackd replication of {n}: CPU master {:.3} s, backup {:.3} s; context switches \
         master {}, backup {}",
        daemons1[0].0 - daemons0[0].0,
        daemons1[1].0 - daemons0[1].0,
        daemons1[0].1 - daemons0[0].1,
        daemons1[1].1 - daemons0[1].1
    );
    if !ok {
        eprintln!(
            "conntrackd backup holds only {} entries",
            ctd_external(&pair, &confs[1])
        );
    }
    std::thread::sleep(Duration::from_millis(500));
    let rss_backup_mb = rss_mb(procs[1].0.id());
    let rss_master_mb = rss_mb(procs[0].0.id());
    // the old master stopped (and its table flushed) first, as for twinwall
    drop(procs.remove(0));
    retire_old_master(&pair);
    let t1 = Instant::now();
    pair.fw[1]
        .run("conntrackd", ["-C", &confs[1].display().to_string(), "-c"])
        .unwrap();
    let commit_s = t1.elapsed().as_secs_f64();
    let in_kernel = kernel_count(&pair, 1);
    eprintln!("conntrackd commit: {in_kernel} entries in fw2's kernel");
    Result {
        sync_s,
        inject_s,
        commit_s,
        commit_report_s: f64::NAN,
        commit_cpu_s: f64::NAN,
        rss_backup_mb,
        rss_master_mb,
        wire_bytes_per_entry: f64::NAN,
        resync_s: f64::NAN,
        repl_cpu: (daemons1[0].0 - daemons0[0].0, daemons1[1].0 - daemons0[1].0),
    }
}

/// Long-lived flows through fw1, fail over to fw2 with the twinwall service in-process.
fn flows_twinwall(flows: usize) -> Survival {
    let mut pair = Pair::new("bf").unwrap();
    let sync = [
        pair.start_sync(0, pair.settings(0, Role::Master)).unwrap(),
        pair.start_sync(1, pair.settings(1, Role::Backup)).unwrap(),
    ];
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let s2 = stop.clone();
    pair.server
        .enter(move || echo_server(&[7000, 7001], &[7002, 7003], s2))
        .unwrap()
        .unwrap();
    let targets = Pair::targets(flows, flows / 10);
    let running = pair
        .client
        .enter(move || Flows::start(&targets, Duration::from_millis(100)))
        .unwrap()
        .unwrap();
    let want = (flows + flows / 10) as u64;
    wait_until(Duration::from_secs(30), || {
        sync[1].status()["external_entries"].as_u64().unwrap_or(0) >= want
    });
    std::thread::sleep(Duration::from_secs(1));
    pair.cut(0).unwrap();
    let t = Instant::now();
    let change = sync[1].set_role(Role::Master).unwrap();
    let commit = t.elapsed();
    pair.vips_to(1).unwrap();
    pair.master = 1;
    eprintln!(
        "flow failover: commit {:?} ({:?} in the kernel)",
        commit, change.commit
    );
    let after = Instant::now() + Duration::from_millis(2000);
    std::thread::sleep(Duration::from_secs(5));
    let stats = running.stop();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    survival(&stats, after)
}

/// The same failover with conntrackd (FTFW/UDP) in both firewalls: commit on fw2 with
/// `conntrackd -c`, then the VIPs move.
fn flows_conntrackd(flows: usize, dir: &Path) -> Survival {
    let mut pair = Pair::new("bg").unwrap();
    let confs = [conntrackd_conf(dir, 0), conntrackd_conf(dir, 1)];
    let mut procs = Vec::new();
    for (i, conf) in confs.iter().enumerate() {
        let _ = std::fs::remove_file(dir.join(format!("ctd{i}.lock")));
        let child = Command::new("ip")
            .args(["netns", "exec", pair.fw[i].name(), "conntrackd", "-C"])
            .arg(conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        procs.push(Proc(child));
    }
    std::thread::sleep(Duration::from_secs(1));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let s2 = stop.clone();
    pair.server
        .enter(move || echo_server(&[7000, 7001], &[7002, 7003], s2))
        .unwrap()
        .unwrap();
    let targets = Pair::targets(flows, flows / 10);
    let running = pair
        .client
        .enter(move || Flows::start(&targets, Duration::from_millis(100)))
        .unwrap()
        .unwrap();
    let want = (flows + flows / 10) as u64;
    wait_until(Duration::from_secs(30), || {
        ctd_external(&pair, &confs[1]) >= want
    });
    std::thread::sleep(Duration::from_secs(1));
    pair.cut(0).unwrap();
    let t = Instant::now();
    pair.fw[1]
        .run("conntrackd", ["-C", &confs[1].display().to_string(), "-c"])
        .unwrap();
    eprintln!("conntrackd flow failover: commit {:?}", t.elapsed());
    pair.vips_to(1).unwrap();
    pair.master = 1;
    let after = Instant::now() + Duration::from_millis(2000);
    std::thread::sleep(Duration::from_secs(5));
    let stats = running.stop();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    drop(procs);
    survival(&stats, after)
}

/// CPU time of this process so far: (user, system) seconds.
fn cpu_times() -> (f64, f64) {
    // SAFETY: getrusage only writes the struct we pass; zeroed is a valid rusage.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF with a valid pointer to a rusage.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    (t(ru.ru_utime), t(ru.ru_stime))
}

/// Wall, user CPU and system CPU seconds of `f` (the whole process: nothing else runs).
fn timed(f: impl FnOnce()) -> (f64, f64, f64) {
    let (u0, s0) = cpu_times();
    let t = Instant::now();
    f();
    let wall = t.elapsed().as_secs_f64();
    let (u1, s1) = cpu_times();
    (wall, u1 - u0, s1 - s0)
}

/// The floor: committing N entries into an empty namespace, as the service does and as
/// variants (nobody listening, a listener that does not read, the listener paused,
/// pre-built batches so that only the kernel's part is timed, two sockets in parallel).
/// Wall time moves with the machine's load; the CPU seconds are what the work costs.
fn raw_commit(n: usize) {
    let ns = twinwall_testkit::Netns::new("rc").unwrap();
    // as the service sets it: every entry carries the event extension
    ns.enter(|| twinwall_sync::kernel::ensure_event_extension().unwrap())
        .unwrap();
    let flush = || {
        ns.run("conntrack", ["-F"]).unwrap();
    };
    let mut rows = Vec::new();
    let batch = entries(n);
    let b = batch.clone();
    rows.push((
        "service commit (pipelined), nobody listening",
        ns.enter(move || {
            timed(|| {
                let _ = Conntrack::open().unwrap().commit(&b).unwrap();
            })
        })
        .unwrap(),
    ));
    flush();
    let b = batch.clone();
    rows.push((
        "service commit, a listener that does not read",
        ns.enter(move || {
            let _ev = twinwall_sync::kernel::Events::subscribe(256 << 20).unwrap();
            timed(|| {
                let _ = Conntrack::open().unwrap().commit(&b).unwrap();
            })
        })
        .unwrap(),
    ));
    flush();
    let b = batch.clone();
    rows.push((
        "service commit, listener paused",
        ns.enter(move || {
            let ev = twinwall_sync::kernel::Events::subscribe(256 << 20).unwrap();
            ev.pauser().pause();
            let r = timed(|| {
                let _ = Conntrack::open().unwrap().commit(&b).unwrap();
            });
            ev.pauser().resume().unwrap();
            r
        })
        .unwrap(),
    ));
    flush();
    // The order the external cache yields (hash order), as the service commits it.
    let mut shuffled = batch.clone();
    let order = std::collections::hash_map::RandomState::new();
    shuffled.sort_by_cached_key(|e| std::hash::BuildHasher::hash_one(&order, e));
    let b = shuffled.clone();
    rows.push((
        "service commit, listener paused, hash order",
        ns.enter(move || {
            let ev = twinwall_sync::kernel::Events::subscribe(256 << 20).unwrap();
            ev.pauser().pause();
            let r = timed(|| {
                let _ = Conntrack::open().unwrap().commit(&b).unwrap();
            });
            ev.pauser().resume().unwrap();
            r
        })
        .unwrap(),
    ));
    flush();
    // What the service does: the commit thread under SCHED_FIFO (RtBoost).
    let b = shuffled.clone();
    rows.push((
        "same, SCHED_FIFO (what the service does)",
        ns.enter(move || {
            let ev = twinwall_sync::kernel::Events::subscribe(256 << 20).unwrap();
            ev.pauser().pause();
            let boost = twinwall_sync::service::RtBoost::raise(
                twinwall_sync::service::DEFAULT_COMMIT_RT_PRIORITY,
            );
            assert!(boost.active(), "SCHED_FIFO refused");
            let r = timed(|| {
                let _ = Conntrack::open().unwrap().commit(&b).unwrap();
            });
            drop(boost);
            ev.pauser().resume().unwrap();
            r
        })
        .unwrap(),
    ));
    flush();
    // The old master listens for events in its own namespace.
    let other = twinwall_testkit::Netns::new("rl").unwrap();
    let (ltx, lrx) = std::sync::mpsc::channel::<()>();
    let (rtx, rrx) = std::sync::mpsc::channel::<()>();
    let _listener = other.thread(move || {
        let _ev = twinwall_sync::kernel::Events::subscribe(1 << 20).unwrap();
        let _ = rtx.send(());
        let _ = lrx.recv();
    });
    let _ = rrx.recv();
    let b = shuffled.clone();
    rows.push((
        "same, SCHED_FIFO, a listener in another namespace",
        ns.enter(move || {
            let ev = twinwall_sync::kernel::Events::subscribe(256 << 20).unwrap();
            ev.pauser().pause();
            let boost = twinwall_sync::service::RtBoost::raise(
                twinwall_sync::service::DEFAULT_COMMIT_RT_PRIORITY,
            );
            let r = timed(|| {
                let _ = Conntrack::open().unwrap().commit(&b).unwrap();
            });
            drop(boost);
            ev.pauser().resume().unwrap();
            r
        })
        .unwrap(),
    ));
    let _ = ltx.send(());
    flush();
    drop(other);
    // The takeover of the benchmark: the old master's namespace holds the same entries.
    let other = twinwall_testkit::Netns::new("ro").unwrap();
    let b = batch.clone();
    other
        .enter(move || Conntrack::open().unwrap().commit(&b).unwrap())
        .unwrap();
    let b = shuffled.clone();
    rows.push((
        "same, another namespace holds the same N",
        ns.enter(move || {
            let ev = twinwall_sync::kernel::Events::subscribe(256 << 20).unwrap();
            ev.pauser().pause();
            let r = timed(|| {
                let _ = Conntrack::open().unwrap().commit(&b).unwrap();
            });
            ev.pauser().resume().unwrap();
            r
        })
        .unwrap(),
    ));
    flush();
    drop(other);
    // Message sizes (a UDP entry is 148 bytes): 24 fit the one-page skb netlink
    // allocates for small sends; larger sends get a kvmalloc'ed one.
    for (label, per) in [
        ("kernel only: pre-built batches of 24 (3.5 KiB)", 24),
        ("kernel only: pre-built batches of 128 (19 KiB)", 128),
        ("kernel only: pre-built batches of 256 (37 KiB)", 256),
        ("kernel only: pre-built batches of 1024 (148 KiB)", 1024),
    ] {
        let b = batch.clone();
        rows.push((label, ns.enter(move || prebuilt_commit(&b, per)).unwrap()));
        flush();
    }
    let b = batch.clone();
    rows.push((
        "kernel only: pre-built batches of 2048 (296 KiB)",
        ns.enter(move || prebuilt_commit(&b, 2048)).unwrap(),
    ));
    flush();
    // threads inherit the namespace of the thread that creates them
    rows.push((
        "two sockets in parallel",
        ns.enter(move || {
            timed(|| {
                std::thread::scope(|sc| {
                    for h in batch.chunks(n.div_ceil(2)) {
                        sc.spawn(move || Conntrack::open().unwrap().commit(h).unwrap());
                    }
                })
            })
        })
        .unwrap(),
    ));
    flush();
    let (buckets, max) = hash_state();
    let mut one = twinwall_sync::ctnetlink::Builder::new();
    one.create(&entries(1)[0], 1, false);
    println!(
        "commit of {n} entries into an empty namespace (the floor; conntrack hash {buckets} \
         buckets, max {max}; {} bytes per UDP entry)",
        one.bytes().len()
    );
    println!("{:<52} {:>8} {:>8} {:>8}", "", "wall s", "user s", "sys s");
    for (name, (w, u, s)) in rows {
        println!("{name:<52} {w:>8.3} {u:>8.3} {s:>8.3}");
    }
}

/// The kernel's own cost: every batch built before the clock starts, then only `send`.
fn prebuilt_commit(batch: &[Entry], per: usize) -> (f64, f64, f64) {
    use twinwall_sync::ctnetlink::{Builder, NETLINK_NETFILTER};
    let mut s = netlink_sys::Socket::new(NETLINK_NETFILTER).unwrap();
    s.bind_auto().unwrap();
    s.connect(&netlink_sys::SocketAddr::new(0, 0)).unwrap();
    s.set_rx_buf_sz(8 << 20).unwrap();
    let _ = nix::sys::socket::setsockopt(&s, nix::sys::socket::sockopt::SndBufForce, &(8 << 20));
    let bufs: Vec<Vec<u8>> = batch
        .chunks(per)
        .enumerate()
        .map(|(i, c)| {
            let mut b = Builder::new();
            for (j, e) in c.iter().enumerate() {
                b.create(e, (i * per + j) as u32, false);
            }
            b.bytes().to_vec()
        })
        .collect();
    timed(|| {
        for b in &bufs {
            s.send(b, 0).unwrap();
        }
    })
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let bin = args
        .get(1)
        .expect("usage: bench_sync TWINWALL [ENTRIES] [FLOWS]")
        .clone();
    let n: usize = args.get(2).and_then(|v| v.parse().ok()).unwrap_or(100_000);
    let flows: usize = args.get(3).and_then(|v| v.parse().ok()).unwrap_or(1000);
    let scratch =
        Scratch(std::env::temp_dir().join(format!("tw-bench-sync-{}", std::process::id())));
    let dir = scratch.0.clone();
    std::fs::create_dir_all(&dir).unwrap();
    if std::env::var("VRRP_ONLY").is_ok() {
        vrrp_failovers(&bin, flows);
        return;
    }
    if std::env::var("RAW_ONLY").is_ok() {
        raw_commit(n);
        return;
    }
    let tw = bench_twinwall(&bin, n, &dir);
    if std::env::var("TW_ONLY").is_ok() {
        println!(
            "twinwall only, {n} entries: injection {:.3} s, peer holds all {:.3} s ({:.0}/s), \
             RSS backup {:.1} MB, master {:.1} MB, takeover (set-role -> answer) {:.3} s, \
             commit {:.3} s, its CPU {:.3} s",
            tw.inject_s,
            tw.sync_s,
            n as f64 / tw.sync_s,
            tw.rss_backup_mb,
            tw.rss_master_mb,
            tw.commit_s,
            tw.commit_report_s,
            tw.commit_cpu_s
        );
        return;
    }
    let cd = bench_conntrackd(n, &dir);
    println!("conntrack sync, {n} entries (netns, same run)");
    println!(
        "{:<44} {:>12} {:>12} {:>8}",
        "", "twinwall", "conntrackd", "ratio"
    );
    let row = |name: &str, a: f64, b: f64| {
        println!("{name:<44} {a:>12.3} {b:>12.3} {:>7.2}x", b / a);
    };
    println!(
        "{:<44} {:>12.3} {:>12.3}",
        "injection into the master kernel, s", tw.inject_s, cd.inject_s
    );
    row("injection start -> peer holds all, s", tw.sync_s, cd.sync_s);
    println!(
        "{:<44} {:>12.0} {:>12.0}",
        "replication rate, entries/s",
        n as f64 / tw.sync_s,
        n as f64 / cd.sync_s
    );
    println!(
        "{:<44} {:>12.0}",
        "full resync to a restarted backup, entries/s",
        n as f64 / tw.resync_s
    );
    // CPU per entry does not move with the machine's load: capacity = entries per CPU
    // second of the busier daemon (each daemon is one node's; the nodes do not share CPUs)
    row(
        "replication CPU, master daemon, s",
        tw.repl_cpu.0,
        cd.repl_cpu.0,
    );
    row(
        "replication CPU, backup daemon, s",
        tw.repl_cpu.1,
        cd.repl_cpu.1,
    );
    let cap = |c: (f64, f64)| n as f64 / c.0.max(c.1).max(1e-3);
    println!(
        "{:<44} {:>12.0} {:>12.0} {:>7.2}x",
        "capacity (entries per CPU s of the busier), /s",
        cap(tw.repl_cpu),
        cap(cd.repl_cpu),
        cap(tw.repl_cpu) / cap(cd.repl_cpu)
    );
    row(
        "takeover commit (set-role -> answer / -c), s",
        tw.commit_s,
        cd.commit_s,
    );
    println!(
        "{:<44} {:>12.3}",
        "  the service's own report of it, s", tw.commit_report_s
    );
    println!(
        "{:<44} {:>12.3}",
        "  its CPU (kernel's work included), s", tw.commit_cpu_s
    );
    row(
        "RSS backup at N entries, MB",
        tw.rss_backup_mb,
        cd.rss_backup_mb,
    );
    row(
        "RSS master at N entries, MB",
        tw.rss_master_mb,
        cd.rss_master_mb,
    );
    println!(
        "{:<44} {:>12.1}",
        "bytes on the wire per entry (twinwall)", tw.wire_bytes_per_entry
    );
    if flows > 0 {
        let tw = flows_twinwall(flows);
        let cd = flows_conntrackd(flows, &dir);
        for (name, s) in [("twinwall", tw), ("conntrackd", cd)] {
            print_survival(name, &s);
        }
    }
    drop(scratch);
}

/// Failover with VRRP in the loop on the seed-pair lab: twinwall (ruleset, sync, vrrp)
/// and keepalived + conntrackd (same ruleset), at 100 ms and 10 ms adverts, same run.
fn vrrp_failovers(bin: &str, flows: usize) {
    use twinwall_sync::lab::cluster::{Cluster, Options, Stack};
    let config = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/examples/seed-pair.toml"),
    )
    .expect("seed-pair.toml");
    println!(
        "VRRP failover of {flows} TCP + {} UDP echo flows (SNATed to the outside VIP), fw1's \
         links cut",
        flows / 10
    );
    println!(
        "{:<34} {:>7} {:>9} {:>9} {:>9} {:>9} {:>10}",
        "", "advert", "survived", "longest", "median", "cut->VIPs", "handshake"
    );
    for (advert_ms, preload) in [(100, 0), (10, 0), (100, 100_000)] {
        for (name, stack) in [
            ("twinwall sync + vrrp", Stack::Twinwall),
            ("keepalived + conntrackd", Stack::KeepalivedConntrackd),
        ] {
            let opts = Options {
                stack,
                advert_ms,
                preload,
                log: "warn".into(),
                ..Options::default()
            };
            let name = if preload > 0 {
                format!("{name}, +{}k idle", preload / 1000)
            } else {
                name.to_string()
            };
            let r = Cluster::start(Path::new(bin), &config, &opts)
                .and_then(|c| c.failover(&opts, flows, flows / 10));
            match r {
                Ok(f) => println!(
                    "{name:<34} {:>5}ms {:>4}/{:<4} {:>7.0}ms {:>7.0}ms {:>7.0}ms {:>10}",
                    advert_ms,
                    f.survival.survived,
                    f.survival.flows,
                    f.survival.longest_gap_ms,
                    f.survival.median_gap_ms,
                    f.cut_to_vips.as_secs_f64() * 1e3,
                    f.takeover
                        .map(|t| format!(
                            "{:.0}ms{}",
                            t.handshake.as_secs_f64() * 1e3,
                            if t.acked { "" } else { " (no ack)" }
                        ))
                        .unwrap_or_else(|| "-".into()),
                ),
                Err(e) => println!("{name:<34} {advert_ms:>5}ms failed: {e}"),
            }
        }
    }
}

fn print_survival(name: &str, s: &Survival) {
    {
        println!(
            "failover of {} flows ({} TCP, {} UDP), {name}: {} survived; TCP {}/{}, UDP {}/{}; \
             echo gap longest {:.0} ms, median {:.0} ms",
            s.flows,
            s.tcp.0,
            s.udp.0,
            s.survived,
            s.tcp.1,
            s.tcp.0,
            s.udp.1,
            s.udp.0,
            s.longest_gap_ms,
            s.median_gap_ms
        );
    }
}
