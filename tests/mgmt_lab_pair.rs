//! QEMU lab acceptance of a config push to the pair (issue 9), TCG: the seed-pair lab
//! (two firewalls, a client and a server lab host; `testkit/topologies/seed-pair`), each
//! firewall's management API forwarded to a loopback port by the lab
//! (`Lab::mgmt_endpoint`). Policy changes are pushed to fw1 only; fw1 forwards each to
//! fw2 over the sync link in two phases. After each push both kernels must hold the
//! compiled ruleset of the new config (the digest in each node's `GET /status`), and a
//! rule change must show in traffic: every other version rejects new TCP connections to
//! the client's echo port (tcp/7000 from inside to outside), the next allows them again,
//! and a fresh connection from the client through the VIPs (the lab agent's probe) is
//! refused or echoed accordingly, right after `push` returned. The client's long-lived
//! flows on that very port must not break (established traffic is accepted before the
//! rules) and mastership must stay. Then the master is killed: the other node, which got
//! the rule by forwarding, refuses new connections too, and a push to it alone (its peer
//! down: pending) allows them again. Prints upload-to-enforced per push and the median.

mod lab_common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Output;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use lab_common::*;
use serde_json::Value;
use twinwall_lab::lab::Lab;
use twinwall_lab::probe::{self, Probe};

/// A failure guard only (TCG on a loaded 2-core machine).
const BOOT: Duration = Duration::from_secs(600);

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The sha256 of `nft -s list ruleset` once `cfg`'s ruleset for `node` is applied in a
/// fresh namespace on the host: what that node's kernel must hold.
fn compiled_digest(dir: &Path, cfg: &Path, node: &str) -> String {
    let ns = twinwall_testkit::Netns::new("mgmtpair").unwrap();
    ok(&ns
        .command(env!("CARGO_BIN_EXE_twinwall"), ["ruleset", "apply"])
        .arg(cfg)
        .args(["--node", node])
        .output()
        .unwrap());
    let listing = ns.run("nft", ["-s", "list", "ruleset"]).unwrap();
    let file = dir.join(format!("{node}.nft"));
    std::fs::write(&file, listing).unwrap();
    twinwall_image::rootfs::sha256_file(&file).unwrap()
}

/// A node's `GET /metrics` (Prometheus text), read over a plain HTTP/1.1 connection.
fn metrics(api: SocketAddr) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&api, Duration::from_secs(10)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {api}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    assert!(text.starts_with("HTTP/1.1 200"), "GET /metrics: {text}");
    text
}

fn digest(v: &Value) -> Option<String> {
    v["ruleset_in_kernel"]["sha256"]
        .as_str()
        .map(str::to_string)
}

/// The seed-pair config at `version`, with or without a rule that rejects new TCP
/// connections from inside to outside port 7000 (the lab client's echo server), placed
/// before the rule that lets the inside out.
fn config(base: &str, version: u64, block: bool) -> String {
    assert!(base.contains("version = 1\n") && base.contains("[[policy.rule]]"));
    let mut text = base.replacen("version = 1\n", &format!("version = {version}\n"), 1);
    if block {
        let ssh = "ssh = [\"tcp/22\"]\n";
        assert!(text.contains(ssh));
        text = text.replacen(ssh, &format!("{ssh}echo-7000 = [\"tcp/7000\"]\n"), 1);
        let i = text.find("[[policy.rule]]").unwrap();
        text.insert_str(
            i,
            "[[policy.rule]]\nname = \"no-new-echo\"\nfrom = \"inside\"\nto = \"outside\"\nservice = \"echo-7000\"\naction = \"reject\"\n\n",
        );
    }
    text
}

/// Writes config `version` and its bundle (signed with the lab's key) into `run`.
fn bundle(
    run: &Path,
    base: &str,
    version: u64,
    block: bool,
) -> (std::path::PathBuf, std::path::PathBuf) {
    let cfg = run.join(format!("cluster-v{version}.toml"));
    std::fs::write(&cfg, config(base, version, block)).unwrap();
    let b = run.join(format!("v{version}.bundle"));
    ok(&twinwall()
        .args(["bundle", "create", "--config"])
        .arg(&cfg)
        .arg("--key")
        .arg(run.join("keys/lab.key"))
        .arg("--out")
        .arg(&b)
        .output()
        .unwrap());
    (cfg, b)
}

/// One `twinwall push --json` to `api`: its answer (with `client_ms.enforced`, the time
/// until the node answered the upload, i.e. both kernels enforce it) and the wall time of
/// the whole command (process start to confirm done).
fn push(b: &Path, api: SocketAddr) -> (Value, Duration) {
    let t0 = Instant::now();
    let out = ok(&twinwall()
        .args(["push", "--json"])
        .arg(b)
        .arg("--to")
        .arg(api.to_string())
        .output()
        .unwrap());
    let wall = t0.elapsed();
    (serde_json::from_str(&out).expect("push --json"), wall)
}

/// A fresh TCP connection from the client through the VIPs to its echo server.
fn probe(lab: &Mutex<Lab>) -> Probe {
    let addr = lab
        .lock()
        .unwrap()
        .client_stats_addr()
        .expect("client agent");
    probe::fetch(addr).expect("probe")
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn master(l: &Lab) -> Option<String> {
    l.firewalls()
        .into_iter()
        .find(|(_, f)| f.as_ref().is_ok_and(|f| f.is_master()))
        .map(|(n, _)| n)
}

#[test]
fn pushes_to_one_firewall_are_enforced_on_both_and_change_what_new_connections_do() {
    let run = run_dir("mgmt-pair");
    let topo = repo().join("testkit/topologies/seed-pair");
    let lab = Mutex::new(Lab::up(&options(&topo, &run)).expect("lab up"));
    let cfg1 = topo.join("cluster.toml");
    let base = std::fs::read_to_string(&cfg1).unwrap();
    let nodes = [("fw1", "lj-fw-1"), ("fw2", "lj-fw-2")];

    // Both APIs answer, one master, the other backup, sync up, the client's flows flow.
    let eps = wait_for(&lab, "both firewalls settled", BOOT, |l| {
        pair_settled(l).then(|| l.mgmt_endpoints())
    });
    let master_before = wait_for(&lab, "client flows flowing", BOOT, |l| {
        l.traffic(false).ok().filter(|t| t.all_flowing(500))?;
        master(l)
    });

    // v1 is what both kernels enforce now, and it lets new connections out.
    for (vm, node) in nodes {
        let st = status(eps[vm]).expect("status");
        assert_eq!(st["mgmt"]["config"]["version"], 1, "{vm}: {st}");
        let want = compiled_digest(&run, &cfg1, node);
        assert_eq!(digest(&st), Some(want), "{vm} does not enforce v1");
    }
    let p = probe(&lab);
    assert!(p.allowed(), "v1 allows new connections: {p:?}");
    // The client's echo traffic (tcp/7000) crosses a merged run (client-echo-7000..7003,
    // one nft rule over a set whose elements carry each rule's counter): the master's
    // kernel (the appliance's Debian 6.1) counts the new connections on the 7000 element
    // only, and the management API reports them by rule name.
    let m = metrics(eps[master_before.as_str()]);
    let packets = |rule: &str| -> u64 {
        let key = format!("twinwall_rule_packets_total{{rule=\"{rule}\"}} ");
        m.lines()
            .find_map(|l| l.strip_prefix(&key))
            .unwrap_or_else(|| panic!("no {key} in {master_before}'s /metrics:\n{m}"))
            .trim()
            .parse()
            .unwrap()
    };
    assert!(packets("client-echo-7000") >= 1, "{m}");
    for rule in ["client-echo-7001", "client-echo-7002", "client-echo-7003"] {
        assert_eq!(packets(rule), 0, "{rule} saw no traffic:\n{m}");
    }
    lab.lock().unwrap().traffic(true).expect("traffic reset");

    // v2 .. v6 pushed to fw1: even versions reject new tcp/7000 connections, odd ones
    // allow them again.
    let mut enforced_ms = Vec::new();
    let mut wall_ms = Vec::new();
    for version in 2..=6u64 {
        let block = version % 2 == 0;
        let (cfg, b) = bundle(&run, &base, version, block);
        let want: Vec<String> = nodes
            .iter()
            .map(|(_, n)| compiled_digest(&run, &cfg, n))
            .collect();
        let (ans, wall) = push(&b, eps["fw1"]);
        let p = probe(&lab);
        let enforced = ans["client_ms"]["enforced"].as_f64().expect("client_ms");
        eprintln!(
            "mgmt_lab_pair: v{version} ({}): enforced on both after {enforced} ms, confirmed after {} ms, push command {} ms; probe {:?} after {} ms; fw1 steps {}",
            if block {
                "rejects tcp/7000"
            } else {
                "allows tcp/7000"
            },
            ans["client_ms"]["confirmed"],
            wall.as_millis(),
            p.error.as_deref().unwrap_or("echoed"),
            p.ms,
            ans["timings_ms"]
        );
        assert_eq!(ans["peer"]["state"], "applied", "{ans}");
        if block {
            assert!(
                p.stopped() && p.error.as_deref() == Some("refused"),
                "v{version} must refuse new connections: {p:?}"
            );
        } else {
            assert!(p.allowed(), "v{version} must allow new connections: {p:?}");
        }
        for ((vm, _), want) in nodes.iter().zip(&want) {
            let st = status(eps[*vm]).expect("status");
            assert_eq!(st["mgmt"]["config"]["version"], version, "{vm}: {st}");
            assert_eq!(
                digest(&st).as_ref(),
                Some(want),
                "{vm} does not enforce v{version}"
            );
            assert!(
                st["mgmt"]["config"]["confirm_pending"].is_null(),
                "{vm}: {st}"
            );
            assert_eq!(st["mgmt"]["peer"]["skew"], false, "{vm}: {st}");
        }
        enforced_ms.push(enforced);
        wall_ms.push(wall.as_secs_f64() * 1000.0);
    }
    eprintln!(
        "mgmt_lab_pair: upload to enforced on both nodes (TCG), median of {}: {} ms (each: {enforced_ms:?}); whole push command with confirm: median {} ms",
        enforced_ms.len(),
        median(enforced_ms.clone()),
        median(wall_ms)
    );

    // Policy pushes keep mastership and every established flow, on the rejected port too.
    {
        let l = lab.lock().unwrap();
        assert_eq!(master(&l).as_ref(), Some(&master_before));
        let t = l.traffic(false).expect("traffic");
        let (broken, total) = t.tcp_broken();
        eprintln!("mgmt_lab_pair: client TCP flows broken across the pushes: {broken}/{total}");
        assert!(total > 0);
        assert_eq!(broken, 0, "flows broke during the pushes: {t:?}");
        assert!(t.all_flowing(2000), "{t:?}");
    }

    // Failover: the master goes, the other node (v6 by forwarding) refuses new connections
    // as well; a push to it alone (peer down: pending) allows them again.
    let other = if master_before == "fw1" { "fw2" } else { "fw1" };
    lab.lock()
        .unwrap()
        .kill(&master_before)
        .expect("kill the master");
    wait_for(
        &lab,
        "the other firewall master, flows flowing",
        BOOT,
        |l| {
            (master(l).as_deref() == Some(other)).then_some(())?;
            l.traffic(false)
                .ok()
                .filter(|t| t.all_flowing(500))
                .map(|_| ())
        },
    );
    let p = probe(&lab);
    assert!(
        p.stopped() && p.error.as_deref() == Some("refused"),
        "{other} must refuse new connections after the failover: {p:?}"
    );
    let (cfg, b) = bundle(&run, &base, 7, false);
    let (ans, wall) = push(&b, eps[other]);
    assert_eq!(ans["peer"]["state"], "pending", "{ans}");
    let p = probe(&lab);
    eprintln!(
        "mgmt_lab_pair: after the failover, v7 pushed to {other} alone: enforced after {} ms (push command {} ms, the dead peer's connect timeout included); probe {:?}",
        ans["client_ms"]["enforced"],
        wall.as_millis(),
        p
    );
    assert!(
        p.allowed(),
        "v7 on {other} must allow new connections: {p:?}"
    );
    let node = nodes.iter().find(|(vm, _)| *vm == other).unwrap().1;
    let st = status(eps[other]).expect("status");
    assert_eq!(digest(&st), Some(compiled_digest(&run, &cfg, node)), "{st}");
    assert_eq!(st["mgmt"]["peer"]["pending"], true, "{st}");
}
