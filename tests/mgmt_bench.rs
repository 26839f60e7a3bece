//! mgmt benchmarks (ignored; `scripts/bench-mgmt.sh` runs them), each next to its
//! yardstick in the same run:
//!
//! * push to enforced on both nodes (netns pair, `twinwall push` from the admin host
//!   until a probe sees the new policy on both nodes) vs. the bare `nft -f` of the same
//!   scripts in both namespaces;
//! * a 48 MiB slot update (`twinwall update` until the answer: stream, verify, write,
//!   fsync, read back, grubenv) vs. `dd conv=fsync` of the image plus `sha256sum` of it.

mod mgmt_common;

use std::process::Command;
use std::time::{Duration, Instant};

use mgmt_common::*;
use twinwall_testkit::{PeerEcho, require_root, wait_for};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn runs() -> usize {
    std::env::var("BENCH_MGMT_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
}

#[test]
#[ignore]
fn bench_push_to_enforced_on_both_nodes() {
    if !require_root() {
        return;
    }
    let p = Pair::new();
    let _echo: Vec<PeerEcho> = p
        .fws
        .iter()
        .map(|f| {
            PeerEcho::tcp(&f.ns, format!("{}:8080", f.inside().ip()).parse().unwrap()).unwrap()
        })
        .collect();
    let mut ours = Vec::new();
    let mut nft = Vec::new();
    for k in 0..runs() {
        let version = 2 + k as u64;
        let open = k % 2 == 0;
        let b =
            p.m.bundle(&format!("v{version}"), &config(version, open), "op");
        let t = Instant::now();
        let out = p.admin(&["push", b.to_str().unwrap(), "--to", INSIDE[0]]);
        assert!(out.status.success(), "{}", stderr(&out));
        let ok = wait_for(Duration::from_secs(10), Duration::from_millis(5), || {
            p.probe_open(0) == open && p.probe_open(1) == open
        });
        assert!(ok, "not enforced on both");
        ours.push(t.elapsed().as_secs_f64());
        // yardstick: the same two scripts applied straight with nft -f
        let scripts: Vec<(usize, String)> = (0..2)
            .map(|i| {
                let o = Command::new(bin())
                    .args(["ruleset", "compile"])
                    .arg(p.m.path(&format!("v{version}.toml")))
                    .args(["--node", NODES[i]])
                    .output()
                    .unwrap();
                (i, String::from_utf8(o.stdout).unwrap())
            })
            .collect();
        let t = Instant::now();
        for (i, s) in &scripts {
            let path = p.m.path(&format!("y{i}.nft"));
            std::fs::write(&path, s).unwrap();
            let o = p.fws[*i]
                .ns
                .exec("nft", ["-f", path.to_str().unwrap()])
                .unwrap();
            assert!(o.status.success());
        }
        nft.push(t.elapsed().as_secs_f64());
    }
    let (a, b) = (median(ours), median(nft));
    println!(
        "bench mgmt push-to-enforced (both nodes): twinwall {:.0} ms, nft -f x2 {:.0} ms, ratio {:.1}x (median of {})",
        a * 1e3,
        b * 1e3,
        a / b,
        runs()
    );
}

#[test]
#[ignore]
fn bench_slot_update_48_mib() {
    if !require_root() {
        return;
    }
    let mib = 1 << 20;
    let n = SlotNode::new(64 * mib as u64);
    let img = n.m.path("slot.squashfs");
    std::fs::write(&img, image_bytes(48 * mib, 7)).unwrap();
    let mut ours = Vec::new();
    let mut yard = Vec::new();
    for k in 0..runs() {
        let b = os_bundle(&n.m, &format!("os{k}"), 10 + k as u64, &img, "op");
        let t = Instant::now();
        let out = n.update(&b);
        assert!(out.status.success(), "{}", stderr(&out));
        ours.push(t.elapsed().as_secs_f64());
        let target = n.m.path("yard.img");
        let t = Instant::now();
        let dd = Command::new("dd")
            .arg(format!("if={}", img.display()))
            .arg(format!("of={}", target.display()))
            .args(["bs=1M", "conv=fsync", "status=none"])
            .status()
            .unwrap();
        assert!(dd.success());
        let sum = Command::new("sha256sum").arg(&target).output().unwrap();
        assert!(sum.status.success());
        yard.push(t.elapsed().as_secs_f64());
    }
    let (a, b) = (median(ours), median(yard));
    println!(
        "bench mgmt slot update 48 MiB: twinwall {:.2} s ({:.0} MiB/s), dd+sha256sum {:.2} s, ratio {:.1}x (median of {})",
        a,
        48.0 / a,
        b,
        a / b,
        runs()
    );
}
