//! QEMU lab acceptance of a config push to the pair (issue 9), TCG: the seed-pair lab
//! (two firewalls, a client and a server lab host; `testkit/topologies/seed-pair`), each
//! firewall's management API forwarded to a loopback port by the lab
//! (`Lab::mgmt_endpoint`). A policy change is pushed to fw1 only; fw1 forwards it to fw2
//! over the sync link in two phases; both kernels must then hold the compiled ruleset of
//! the new config (the digest in each node's `GET /status`), the client's long-lived
//! flows through the master must not break (the lab agent's counters), and VRRP
//! mastership must stay where it was. Prints upload-to-enforced on both nodes.

mod lab_common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use lab_common::*;
use serde_json::Value;
use twinwall_lab::lab::Lab;

/// A failure guard only (TCG on a loaded 2-core machine).
const BOOT: Duration = Duration::from_secs(600);

fn twinwall() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_twinwall"));
    c.env("TWINWALL_LOG", "warn");
    c
}

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

/// A node's `GET /status` through `twinwall status --to`, `None` while it does not answer.
fn status(api: SocketAddr) -> Option<Value> {
    let o = twinwall()
        .args(["status", "--json", "--to"])
        .arg(api.to_string())
        .output()
        .ok()?;
    o.status
        .success()
        .then(|| serde_json::from_slice(&o.stdout).ok())
        .flatten()
}

fn digest(v: &Value) -> Option<String> {
    v["ruleset_in_kernel"]["sha256"]
        .as_str()
        .map(str::to_string)
}

#[test]
fn a_push_to_one_firewall_is_enforced_on_both_and_flows_survive() {
    let run = run_dir("mgmt-pair");
    let topo = repo().join("testkit/topologies/seed-pair");
    let lab = Mutex::new(Lab::up(&options(&topo, &run)).expect("lab up"));
    let cfg1 = topo.join("cluster.toml");
    let nodes = [("fw1", "lj-fw-1"), ("fw2", "lj-fw-2")];

    // Both APIs answer, one master, the other backup, sync up, the client's flows flow.
    let eps = wait_for(&lab, "both firewalls settled", BOOT, |l| {
        let fws = l.firewalls();
        let states: Vec<_> = fws.values().filter_map(|r| r.as_ref().ok()).collect();
        let one_master = states.iter().filter(|f| f.is_master()).count() == 1;
        let synced = states
            .iter()
            .all(|f| f.sync.as_ref().is_some_and(|s| s.peer_up));
        (states.len() == 2 && one_master && synced).then(|| l.mgmt_endpoints())
    });
    let master_before = wait_for(&lab, "client flows flowing", BOOT, |l| {
        l.traffic(false).ok().filter(|t| t.all_flowing(500))?;
        l.firewalls()
            .into_iter()
            .find(|(_, f)| f.as_ref().is_ok_and(|f| f.is_master()))
            .map(|(n, _)| n)
    });
    lab.lock().unwrap().traffic(true).expect("traffic reset");

    // v1 is what both kernels enforce now; v2 adds a rule (tcp/8080 to the web server).
    let v1: Vec<String> = nodes
        .iter()
        .map(|(_, n)| compiled_digest(&run, &cfg1, n))
        .collect();
    for ((vm, _), want) in nodes.iter().zip(&v1) {
        let st = status(eps[*vm]).expect("status");
        assert_eq!(st["mgmt"]["config"]["version"], 1, "{vm}: {st}");
        assert_eq!(digest(&st).as_ref(), Some(want), "{vm} does not enforce v1");
    }
    let text = std::fs::read_to_string(&cfg1).unwrap();
    let ssh = "ssh = [\"tcp/22\"]\n";
    assert!(text.contains(ssh) && text.contains("version = 1\n"));
    let text = text.replacen("version = 1\n", "version = 2\n", 1).replacen(
        ssh,
        &format!("{ssh}alt-8080 = [\"tcp/8080\"]\n"),
        1,
    ) + "\n[[policy.rule]]\nname = \"web-alt-8080\"\nfrom = \"outside\"\nto = \"web_server\"\nservice = \"alt-8080\"\naction = \"accept\"\n";
    let cfg2 = run.join("cluster-v2.toml");
    std::fs::write(&cfg2, text).unwrap();
    let b2 = run.join("v2.bundle");
    ok(&twinwall()
        .args(["bundle", "create", "--config"])
        .arg(&cfg2)
        .arg("--key")
        .arg(run.join("keys/lab.key"))
        .arg("--out")
        .arg(&b2)
        .output()
        .unwrap());
    let v2: Vec<String> = nodes
        .iter()
        .map(|(_, n)| compiled_digest(&run, &cfg2, n))
        .collect();
    assert!(v1 != v2);

    // Push to fw1 only; time until both kernels hold v2.
    let t0 = Instant::now();
    let out = ok(&twinwall()
        .arg("push")
        .arg(&b2)
        .arg("--to")
        .arg(eps["fw1"].to_string())
        .output()
        .unwrap());
    let pushed = t0.elapsed();
    let mut enforced = [None, None];
    while enforced.iter().any(Option::is_none) {
        for (i, (vm, _)) in nodes.iter().enumerate() {
            if enforced[i].is_none()
                && status(eps[*vm]).and_then(|s| digest(&s)).as_ref() == Some(&v2[i])
            {
                enforced[i] = Some(t0.elapsed());
            }
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "v2 not enforced on both: {enforced:?} ({out})"
        );
    }
    eprintln!(
        "mgmt_lab_pair: push returned after {} ms; v2 seen in the kernel of fw1 after {} ms, fw2 after {} ms (TCG, status polled by the CLI)",
        pushed.as_millis(),
        enforced[0].unwrap().as_millis(),
        enforced[1].unwrap().as_millis()
    );
    for (vm, _) in nodes {
        let st = status(eps[vm]).expect("status");
        assert_eq!(st["mgmt"]["config"]["version"], 2, "{vm}: {st}");
        assert!(
            st["mgmt"]["config"]["confirm_pending"].is_null(),
            "{vm}: {st}"
        );
        assert_eq!(st["mgmt"]["peer"]["skew"], false, "{vm}: {st}");
    }

    // A policy push keeps mastership and every established flow.
    std::thread::sleep(Duration::from_secs(3));
    let l = lab.lock().unwrap();
    let master_after = l
        .firewalls()
        .into_iter()
        .find(|(_, f)| f.as_ref().is_ok_and(|f| f.is_master()))
        .map(|(n, _)| n);
    assert_eq!(master_after.as_ref(), Some(&master_before));
    let t = l.traffic(false).expect("traffic");
    let (broken, total) = t.tcp_broken();
    eprintln!("mgmt_lab_pair: client TCP flows broken across the push: {broken}/{total}");
    assert!(total > 0);
    assert_eq!(broken, 0, "flows broke during the push: {t:?}");
    assert!(t.all_flowing(2000), "{t:?}");
}
