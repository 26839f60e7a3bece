//! QEMU lab acceptance of the rolling OS update of the pair (issue 9, `twinwall update
//! BUNDLE --cluster`), TCG: the seed-pair lab (fw1, fw2 booted by SeaBIOS + GRUB from
//! their own flashed disks; a client and a server lab host), each firewall's management
//! API forwarded to a loopback port (`Lab::mgmt_endpoint`).
//!
//! Once the pair has settled with the client's TCP flows running through the VIPs, an
//! OS-update bundle whose slot carries another version string (`/etc/twinwall-release`,
//! derived from the built slot the way `tests/mgmt_lab.rs` does, signed with the lab's
//! key) is rolled over the pair with `twinwall update --cluster`: the backup is updated
//! first and reboots into slot B through GRUB, comes back healthy and synced; then the
//! master, whose reboot hands mastership over (priority-0 advert) to the updated backup.
//! At the end both nodes run the new version from slot B, marked good, and not one
//! established client flow broke (the lab agent's resets and stalls).
//!
//! Then the failure case: a second roll (to v3) whose second node's upload is cut
//! mid-stream (the test reaches fw1 through a proxy that cuts the connection carrying the
//! upload). fw1 still answers and serves on its old slot, so the roll must stop with exit
//! code 1 naming the node and the step (`lj-fw-1: upload of OS version 3 failed: ...`),
//! and roll the already updated fw2 back to v2 (its reboot hands nothing over: fw1 is the
//! master); at the end both run v2 from slot B, fw1's half-written slot is still marked
//! bad, fw1 was master throughout and no client flow broke. (A node power-cut during
//! its slot write is `tests/mgmt_lab.rs`'s case; a node that does not answer after a
//! failure keeps the updated one, see `rolling`'s tests.)

mod lab_common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use lab_common::*;
use twinwall_lab::lab::Lab;
use twinwall_lab::scenario;

/// A failure guard only (TCG on a loaded 2-core machine).
const BOOT: Duration = Duration::from_secs(600);

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A slot image derived from the built one with another `TWINWALL_VERSION` in
/// `/etc/twinwall-release`, squashed reproducibly as the image build does.
fn slot_with_version(dir: &Path, name: &str, version: &str) -> PathBuf {
    let root = dir.join(format!("{name}-root"));
    let st = Command::new("unsquashfs")
        .args(["-q", "-n", "-d"])
        .arg(&root)
        .arg(image_dir().join("twinwall-slot.squashfs"))
        .stdout(Stdio::null())
        .status()
        .expect("unsquashfs runs (squashfs-tools)");
    assert!(st.success());
    let rel = root.join("etc/twinwall-release");
    let old = std::fs::read_to_string(&rel).unwrap();
    assert!(old.contains("TWINWALL_VERSION="), "{old}");
    let new: String = old
        .lines()
        .map(|l| match l.starts_with("TWINWALL_VERSION=") {
            true => format!("TWINWALL_VERSION={version}\n"),
            false => format!("{l}\n"),
        })
        .collect();
    std::fs::write(&rel, new).unwrap();
    let out = dir.join(format!("{name}.squashfs"));
    twinwall_image::reproducible::squashfs(&root, &out, 1).unwrap();
    std::fs::remove_dir_all(&root).unwrap();
    out
}

/// An os-update bundle of OS version `version` whose slot says `release`, signed with
/// the lab's key (the one the firewalls trust).
fn os_bundle(run: &Path, version: u64, release: &str) -> PathBuf {
    let slot = slot_with_version(run, &format!("slot-v{version}"), release);
    let key = twinwall_bundle::keys::read_signing_key(&run.join("keys/lab.key")).unwrap();
    let out = run.join(format!("os-v{version}.bundle"));
    twinwall_image::build::update_bundle(&slot, &key, version, 1, &out).unwrap();
    std::fs::remove_file(&slot).unwrap();
    out
}

/// Asserts that the node at `api` (`vm`) runs OS `release` from slot B, marked good by
/// init; returns its status for further checks.
fn assert_runs_good_on_b(api: SocketAddr, vm: &str, release: &str) -> serde_json::Value {
    let st = status(api).expect("status");
    assert_eq!(
        st["mgmt"]["os"]["version"], release,
        "{vm} ends on {release}: {st}"
    );
    assert_eq!(st["mgmt"]["slots"]["running"], "B", "{vm}: {st}");
    assert_eq!(st["init"]["slot_marked_good"], true, "{vm}: {st}");
    st
}

/// The master, asked until one answers as master (a failure guard: under TCG on a loaded
/// machine one status read can time out or catch a moment's flap).
fn master(lab: &Mutex<Lab>) -> String {
    wait_for(lab, "a master", Duration::from_secs(120), |l| {
        l.firewalls()
            .into_iter()
            .find(|(_, f)| f.as_ref().is_ok_and(|f| f.is_master()))
            .map(|(n, _)| n)
    })
}

/// `twinwall update BUNDLE --cluster` against fw1, the peer given by its forwarded port.
fn cluster_update(
    run: &Path,
    bundle: &Path,
    eps: &std::collections::BTreeMap<String, SocketAddr>,
    wait_s: u64,
) -> std::process::Child {
    twinwall()
        .arg("update")
        .arg(bundle)
        .arg("--to")
        .arg(eps["fw1"].to_string())
        .arg("--peer")
        .arg(eps["fw2"].to_string())
        .arg("--cluster")
        .arg("--config-bundle")
        .arg(run.join("keys/config.bundle"))
        .args(["--wait", &wait_s.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn a_cluster_update_rolls_the_pair_and_client_flows_survive() {
    let run = run_dir("mgmt-update");
    let topo = repo().join("testkit/topologies/seed-pair");
    let t_up = Instant::now();
    // Through GRUB: the updated slot B must be what the reboot runs.
    let mut opts = options(&topo, &run);
    opts.direct_firewalls = false;
    let lab = Mutex::new(Lab::up(&opts).expect("lab up"));

    // The update bundles are made while the VMs boot.
    let v1_release = env!("CARGO_PKG_VERSION").to_string();
    let v2_release = format!("{v1_release}-roll2");
    let v3_release = format!("{v1_release}-roll3");
    let os2 = os_bundle(&run, 2, &v2_release);
    let os3 = os_bundle(&run, 3, &v3_release);

    let boot = scenario::run_by_name(&lab, "boot").expect("boot scenario");
    eprintln!("{}", boot.summary);
    assert!(boot.ok, "the pair did not come up: {:?}", boot.checks);
    eprintln!(
        "mgmt_lab_update: lab up to settled pair (GRUB boot of both firewalls): {:.1} s",
        t_up.elapsed().as_secs_f64()
    );
    let eps = lab.lock().unwrap().mgmt_endpoints();
    for vm in ["fw1", "fw2"] {
        let st = status(eps[vm]).expect("status");
        assert_eq!(st["mgmt"]["slots"]["running"], "A", "{vm}: {st}");
        assert_eq!(st["mgmt"]["os"]["version"], v1_release.as_str(), "{vm}");
    }
    let master_before = master(&lab);
    lab.lock().unwrap().traffic(true).expect("traffic reset");

    // 1. The roll to v2: backup first, then the master; both on v2 from slot B.
    let t0 = Instant::now();
    let child = cluster_update(&run, &os2, &eps, 480);
    let out = child.wait_with_output().unwrap();
    let took = t0.elapsed();
    let log = text(&out);
    eprintln!("mgmt_lab_update: roll to v2:\n{log}");
    assert!(out.status.success(), "the rolling update failed:\n{log}");
    assert!(log.contains("pair updated to OS version 2"), "{log}");
    let backup_first = log.find("\"upload\",\"node\":\"lj-fw-2\"");
    let master_last = log.find("\"upload\",\"node\":\"lj-fw-1\"");
    assert!(
        backup_first.is_some() && master_last.is_some() && backup_first < master_last,
        "the backup (lj-fw-2) must be updated before the master:\n{log}"
    );
    assert_eq!(master_before, "fw1", "preemption makes fw1 the master");
    for vm in ["fw1", "fw2"] {
        let st = assert_runs_good_on_b(eps[vm], vm, &v2_release);
        assert_eq!(st["mgmt"]["slots"]["state"]["b"]["ok"], true, "{vm}: {st}");
    }
    let t = lab.lock().unwrap().traffic(false).expect("traffic");
    let (broken, total) = t.tcp_broken();
    let gap = t.flows.iter().map(|f| f.longest_gap_ms).max().unwrap_or(0);
    eprintln!(
        "mgmt_lab_update: roll to v2 took {:.1} s; client TCP flows broken {broken}/{total}, longest gap {gap} ms",
        took.as_secs_f64()
    );
    assert!(total > 0);
    assert_eq!(broken, 0, "flows broke during the rolling update: {t:?}");

    // 2. The failure case: a roll to v3 whose second node's upload is cut mid-stream
    // (fw1, the master, reached through a proxy that cuts the connection carrying the
    // upload once 4 MiB went through). fw1 answers and serves on its old slot (the slot
    // it was writing is marked bad, never tried), so the roll stops, says which step
    // failed, and rolls the already updated fw2 back to v2: the pair ends on one version,
    // fw1 master throughout, 0 client flows broken.
    // (Not the boot scenario: its check "every VIP was announced by the master" fails
    // when a TCG stall let the backup answer ARP for a moment and the master did not
    // re-announce — the VRRP area's open item in docs/lab.md, not the roll's.)
    wait_for(&lab, "one master, sync up, flows flowing", BOOT, |l| {
        let settled = pair_settled(l);
        let flowing = l.traffic(false).is_ok_and(|t| t.all_flowing(500));
        // the roll starts only on a pair whose slots are both marked good
        let good = ["fw1", "fw2"]
            .iter()
            .all(|vm| status(eps[*vm]).is_some_and(|s| s["init"]["slot_marked_good"] == true));
        (settled && flowing && good).then_some(())
    });
    assert_eq!(master(&lab), "fw1");
    lab.lock().unwrap().traffic(true).expect("traffic reset");
    let proxy = CutProxy::start(eps["fw1"], 4 << 20);
    let mut via_proxy = eps.clone();
    via_proxy.insert("fw1".into(), proxy.addr);
    let t0 = Instant::now();
    let out = cluster_update(&run, &os3, &via_proxy, 480)
        .wait_with_output()
        .unwrap();
    let took = t0.elapsed();
    let log = text(&out);
    eprintln!("mgmt_lab_update: roll to v3 with fw1's upload cut:\n{log}");
    assert!(proxy.cut(), "the proxy never cut fw1's upload:\n{log}");
    assert_eq!(
        out.status.code(),
        Some(1),
        "exit code of a failed roll:\n{log}"
    );
    assert!(
        log.contains("rolling update stopped: lj-fw-1: upload of OS version 3 failed: ")
            && log.contains("lj-fw-2 rolled back to OS version 2"),
        "{log}"
    );
    assert!(
        !log.contains("\"rollback\",\"node\":\"lj-fw-1\""),
        "fw1 serves on its old slot: it must not be rolled back:\n{log}"
    );
    for vm in ["fw1", "fw2"] {
        assert_runs_good_on_b(eps[vm], vm, &v2_release);
    }
    // fw1 was never switched: the slot it was writing stays bad, B boots next.
    let st = status(eps["fw1"]).expect("status");
    assert_eq!(st["mgmt"]["slots"]["state"]["a"]["ok"], false, "{st}");
    assert_eq!(st["mgmt"]["slots"]["next_boot"], "B", "{st}");
    assert_eq!(master(&lab), "fw1", "fw1 served throughout");
    let t = lab.lock().unwrap().traffic(false).expect("traffic");
    let (broken, total) = t.tcp_broken();
    eprintln!(
        "mgmt_lab_update: failed roll to v3 (fw1's upload cut, fw2 rolled back) took {:.1} s; client TCP flows broken {broken}/{total}",
        took.as_secs_f64()
    );
    assert!(total > 0);
    assert_eq!(broken, 0, "{t:?}");
    assert!(t.all_flowing(2000), "the pair stopped serving: {t:?}");
}

/// A TCP forwarder on 127.0.0.1 to `target` that cuts (shuts down both ways) every
/// connection whose client has sent more than `cut_after` bytes: small requests (status
/// polls) pass, an upload is cut mid-stream, as a broken management link would.
struct CutProxy {
    addr: SocketAddr,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl CutProxy {
    fn start(target: SocketAddr, cut_after: u64) -> CutProxy {
        use std::net::{Shutdown, TcpListener, TcpStream};
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, Ordering};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let (cut2, stop2) = (cut.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                let Ok((client, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                };
                client.set_nonblocking(false).unwrap();
                let Ok(server) = TcpStream::connect(target) else {
                    continue;
                };
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let cut = cut2.clone();
                // client -> server, counted; the cut closes both sockets both ways
                std::thread::spawn(move || {
                    use std::io::{Read, Write};
                    let (mut from, mut to) = (client, server);
                    let mut buf = vec![0u8; 64 << 10];
                    let mut sent = 0u64;
                    loop {
                        let n = match from.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        if to.write_all(&buf[..n]).is_err() {
                            break;
                        }
                        sent += n as u64;
                        if sent > cut_after {
                            cut.store(true, Ordering::Relaxed);
                            let _ = from.shutdown(Shutdown::Both);
                            let _ = to.shutdown(Shutdown::Both);
                            return;
                        }
                    }
                    let _ = to.shutdown(Shutdown::Write);
                });
                std::thread::spawn(move || {
                    let (mut from, mut to) = (s2, c2);
                    let _ = std::io::copy(&mut from, &mut to);
                    let _ = to.shutdown(Shutdown::Write);
                });
            }
        });
        CutProxy { addr, cut, stop }
    }

    /// Whether a connection was cut.
    fn cut(&self) -> bool {
        self.cut.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}
