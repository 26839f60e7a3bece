//! QEMU acceptance of the management API on one node (issue 9), TCG: `twinwall.img`
//! flashed for lj-fw-1 of the seed-pair example, booted by GRUB from its A/B disk, its
//! sync NIC (eth2) on a QEMU user-mode network (`restrict=on`, the sync subnet, a
//! `hostfwd` from 127.0.0.1 to the node's sync address and API port), so the operator
//! commands reach the API on its real listen address through the real ruleset.
//!
//! One VM per test process, checks in sequence: status; a push is enforced (the kernel's
//! ruleset digest in `/status` becomes that of the new config); tampered, wrong-key and
//! downgraded bundles get a 4xx and the digest stays; an unconfirmed push reverts when
//! its window expires; an OS update of a 48 MiB slot with another baked-in version
//! string boots and runs that version and is marked good; an update whose slot cannot
//! become healthy (no `nft`: its ruleset never applies) rolls back by itself through
//! init's health deadline; QEMU killed (SIGKILL) at random moments during a slot write
//! boots the old slot every time (seeded: `TWINWALL_MGMT_SEED`; `TWINWALL_MGMT_KILLS`,
//! default 3 so that `make test` stays inside CI's budget — each cut costs a full TCG
//! boot; the acceptance run of issue 9 is `TWINWALL_MGMT_KILLS=10`).
//!
//! Every VM disk is a sparse flashed file, removed when the test ends (`Scratch`).

mod image_common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use image_common::*;
use serde_json::Value;
use twinwall_image::disk;
use twinwall_image::layout::{Layout, Sizes};

/// A failure guard only (tests judge markers and answers, not speed).
const BOOT: Duration = Duration::from_secs(480);
const NODE: &str = "lj-fw-1";
/// lj-fw-1's sync address, where the API listens (with the management zones').
const SYNC_ADDR: &str = "192.0.2.1";
/// Size of the update slot image the target names (48 MiB).
const SLOT_48M: u64 = 48 << 20;
/// The health deadline put on the kernel command line of the test disk: long enough for
/// a healthy TCG boot on a loaded machine, short enough to wait for.
const HEALTH_DEADLINE_S: u64 = 150;

/// The scratch directory; on drop the VM disks and slot images always go, the rest
/// (consoles) only when the test passed.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
            return;
        }
        for e in std::fs::read_dir(&self.0).into_iter().flatten().flatten() {
            let p = e.path();
            let keep = p.extension().is_some_and(|x| x == "log");
            if p.is_dir() {
                let _ = std::fs::remove_dir_all(&p);
            } else if !keep {
                let _ = std::fs::remove_file(&p);
            }
        }
    }
}

fn run(c: &mut Command) -> Output {
    c.output().expect("twinwall runs")
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

/// The seed-pair config at `version` with one more rule: tcp/`port` from the outside to
/// the web server (a service object `alt-PORT` and a policy rule).
fn config(dir: &Path, version: u64, port: u16) -> PathBuf {
    let text = std::fs::read_to_string(seed_pair()).unwrap();
    let text = text.replacen("version = 1\n", &format!("version = {version}\n"), 1);
    let ssh = "ssh = [\"tcp/22\"]\n";
    assert!(text.contains(ssh));
    let text = text.replacen(ssh, &format!("{ssh}alt-{port} = [\"tcp/{port}\"]\n"), 1);
    let rule = format!(
        "\n[[policy.rule]]\nname = \"web-alt-{port}\"\nfrom = \"outside\"\nto = \"web_server\"\nservice = \"alt-{port}\"\naction = \"accept\"\n"
    );
    let p = dir.join(format!("cluster-v{version}.toml"));
    std::fs::write(&p, format!("{text}{rule}")).unwrap();
    p
}

fn bundle(dir: &Path, cfg: &Path, key: &Path, name: &str) -> PathBuf {
    let out = dir.join(name);
    ok(&run(twinwall()
        .args(["bundle", "create", "--config"])
        .arg(cfg)
        .arg("--key")
        .arg(key)
        .arg("--out")
        .arg(&out)));
    out
}

/// The sha256 of `nft -s list ruleset` after `twinwall ruleset apply` of `cfg` for
/// [`NODE`] in a fresh namespace on the host (the image's nftables version is the
/// host's): what the node's kernel must hold once `cfg` is enforced.
fn compiled_digest(dir: &Path, cfg: &Path) -> String {
    let ns = twinwall_testkit::Netns::new("mgmtlab").unwrap();
    let o = ns
        .command(env!("CARGO_BIN_EXE_twinwall"), ["ruleset", "apply"])
        .arg(cfg)
        .args(["--node", NODE])
        .output()
        .unwrap();
    ok(&o);
    let listing = ns.run("nft", ["-s", "list", "ruleset"]).unwrap();
    assert!(listing.starts_with("table "), "{listing}");
    let file = dir.join(cfg.with_extension("nft").file_name().unwrap());
    std::fs::write(&file, listing).unwrap();
    twinwall_image::rootfs::sha256_file(&file).unwrap()
}

/// A free loopback port for the forward.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until `marker` appears after byte `from` of the console; returns the offset
/// just after it.
fn wait_console(vm: &mut Vm, from: usize, marker: &str, timeout: Duration) -> usize {
    let start = Instant::now();
    loop {
        let text = vm.console();
        if let Some(i) = text.get(from..).and_then(|t| t.find(marker)) {
            return from + i + marker.len();
        }
        if start.elapsed() > timeout {
            let tail: String = text
                .chars()
                .skip(text.chars().count().saturating_sub(3000))
                .collect();
            panic!(
                "console never showed {marker:?} (log {}):\n{tail}",
                vm.log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// `twinwall status --to API --json`, retried until the API answers.
fn status(api: SocketAddr, timeout: Duration) -> Value {
    let start = Instant::now();
    loop {
        let o = run(twinwall()
            .args(["status", "--json", "--to"])
            .arg(api.to_string()));
        if o.status.success() {
            return serde_json::from_slice(&o.stdout).unwrap();
        }
        assert!(
            start.elapsed() < timeout,
            "no status from {api}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn digest(st: &Value) -> String {
    st["ruleset_in_kernel"]["sha256"]
        .as_str()
        .unwrap_or_else(|| panic!("no ruleset digest in status: {st}"))
        .to_string()
}

/// `twinwall push` with `args`; returns (success, stdout + stderr).
fn push(api: SocketAddr, b: &Path, args: &[&str]) -> (bool, String) {
    let o = run(twinwall()
        .arg("push")
        .arg(b)
        .arg("--to")
        .arg(api.to_string())
        .arg("--no-peer")
        .args(args));
    (
        o.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

/// A slot image derived from the built one: `edit` changes the unpacked root; the
/// result is squashed reproducibly (as the image build does).
fn derived_slot(dir: &Path, name: &str, edit: impl FnOnce(&Path)) -> PathBuf {
    let root = dir.join(format!("{name}-root"));
    let st = Command::new("unsquashfs")
        .args(["-q", "-n", "-d"])
        .arg(&root)
        .arg(built_image().join("twinwall-slot.squashfs"))
        .stdout(Stdio::null())
        .status()
        .expect("unsquashfs runs (squashfs-tools)");
    assert!(st.success());
    edit(&root);
    let out = dir.join(format!("{name}.squashfs"));
    twinwall_image::reproducible::squashfs(&root, &out, 1).unwrap();
    std::fs::remove_dir_all(&root).unwrap();
    out
}

fn set_release_version(root: &Path, version: &str) {
    let p = root.join("etc/twinwall-release");
    let text = std::fs::read_to_string(&p).unwrap();
    let text: String = text
        .lines()
        .map(|l| {
            if l.starts_with("TWINWALL_VERSION=") {
                format!("TWINWALL_VERSION={version}\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    std::fs::write(&p, text).unwrap();
}

/// Signs `slot` into an os-update bundle of `version` with `key`.
fn os_bundle(dir: &Path, slot: &Path, key: &Path, version: u64) -> PathBuf {
    let k = twinwall_bundle::keys::read_signing_key(key).unwrap();
    let out = dir.join(format!("os-v{version}.bundle"));
    twinwall_image::build::update_bundle(slot, &k, version, 1, &out).unwrap();
    out
}

/// A small seeded generator (xorshift64*): the kill moments are reproducible from the
/// printed seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo)
    }
}

fn boot(img: &Path, port: u16, log: PathBuf) -> Vm {
    let spec = VmSpec {
        disk: Some(img.to_path_buf()),
        nics: 3,
        reboot: true,
        user_nic: Some((
            2,
            format!(
                "restrict=on,net=192.0.2.0/30,dhcpstart={SYNC_ADDR},\
                 hostfwd=tcp:127.0.0.1:{port}-{SYNC_ADDR}:9780"
            ),
        )),
        ..VmSpec::default()
    };
    Vm::start(Firmware::Bios, &spec, log)
}

#[test]
fn one_node_in_qemu_push_update_rollback_and_power_cuts() {
    let dir = Scratch(scratch("mgmt-lab"));
    let d: &Path = &dir.0;
    let out = built_image();

    // Keys, configs, bundles: v2 opens tcp/8080 to the web server, v3 tcp/8081.
    let ops = d.join("ops");
    let rogue = d.join("rogue");
    for k in [&ops, &rogue] {
        ok(&run(twinwall().args(["key", "generate", "--out"]).arg(k)));
    }
    let (opk, rok) = (ops.with_extension("key"), rogue.with_extension("key"));
    let c1 = seed_pair();
    let c2 = config(d, 2, 8080);
    let c3 = config(d, 3, 8081);
    let b1 = bundle(d, &c1, &opk, "v1.bundle");
    let b2 = bundle(d, &c2, &opk, "v2.bundle");
    let b3 = bundle(d, &c3, &opk, "v3.bundle");
    let b3_rogue = bundle(d, &c3, &rok, "v3-rogue.bundle");
    let b3_tampered = d.join("v3-tampered.bundle");
    let mut bytes = std::fs::read(&b3).unwrap();
    let n = bytes.len();
    bytes[n - 40] ^= 0x01; // inside the cluster.toml payload
    std::fs::write(&b3_tampered, bytes).unwrap();
    let (dg1, dg2, dg3) = (
        compiled_digest(d, &c1),
        compiled_digest(d, &c2),
        compiled_digest(d, &c3),
    );
    assert!(dg1 != dg2 && dg2 != dg3);

    // The node's disk: flashed (sparse) with v1, its trusted key and a sync key; the
    // kernel command line gets a short peer-absent tolerance and the health deadline.
    let img = d.join(format!("{NODE}.img"));
    ok(&run(twinwall()
        .arg("flash")
        .arg(out.join("twinwall.img"))
        .arg(&img)
        .args(["--node", NODE, "--bundle"])
        .arg(&b1)
        .arg("--trust")
        .arg(ops.with_extension("pub"))
        .arg("--sync-key")
        .arg(d.join("pair.sync.key"))));
    let esp = disk::esp(&img, &Layout::plan(Sizes::default()));
    let cfg = String::from_utf8(esp.read("/grub/grub.cfg").unwrap()).unwrap();
    let base = twinwall_image::grub::CMDLINE;
    assert!(cfg.contains(base));
    let cfg = cfg.replace(
        base,
        &format!(
            "{base} twinwall.peer_absent_after=5 twinwall.health_deadline={HEALTH_DEADLINE_S}"
        ),
    );
    esp.write("/grub/grub.cfg", cfg.as_bytes()).unwrap();

    // Update slots: v2 with another version string, padded with incompressible bytes to
    // 48 MiB; v3 without nft (its ruleset can never apply, so it never becomes healthy).
    let v1_release = env!("CARGO_PKG_VERSION").to_string();
    let v2_release = format!("{v1_release}-mgmt-lab2");
    let base_slot = std::fs::metadata(out.join("twinwall-slot.squashfs"))
        .unwrap()
        .len();
    let slot2 = derived_slot(d, "slot2", |root| {
        set_release_version(root, &v2_release);
        let pad = SLOT_48M.saturating_sub(base_slot + (64 << 10));
        let mut f = std::fs::File::create(root.join("var-pad.bin")).unwrap();
        std::io::copy(
            &mut std::fs::File::open("/dev/urandom").unwrap().take(pad),
            &mut f,
        )
        .unwrap();
    });
    let slot3 = derived_slot(d, "slot3", |root| {
        set_release_version(root, &format!("{v1_release}-broken"));
        for p in ["usr/sbin/nft", "sbin/nft", "usr/bin/nft"] {
            let _ = std::fs::remove_file(root.join(p));
        }
    });
    let slot2_bytes = std::fs::metadata(&slot2).unwrap().len();
    eprintln!("mgmt_lab: update slot image {slot2_bytes} bytes");
    let os2 = os_bundle(d, &slot2, &opk, 2);
    let os3 = os_bundle(d, &slot3, &opk, 3);
    let os4 = os_bundle(d, &slot2, &opk, 4);
    std::fs::remove_file(&slot2).unwrap();
    std::fs::remove_file(&slot3).unwrap();

    let port = free_port();
    let api = SocketAddr::from(([127, 0, 0, 1], port));
    let mut vm = boot(&img, port, d.join("console-1.log"));
    wait_console(
        &mut vm,
        0,
        "twinwall: health: healthy; slot a marked good",
        BOOT,
    );

    // 1. status over the forwarded API: this node, config v1, the v1 ruleset enforced.
    let st = status(api, BOOT);
    assert_eq!(st["mgmt"]["node"], NODE, "{st}");
    assert_eq!(st["mgmt"]["config"]["version"], 1);
    assert_eq!(st["mgmt"]["os"]["version"], v1_release.as_str());
    assert_eq!(st["mgmt"]["slots"]["running"], "A");
    assert_eq!(digest(&st), dg1, "the kernel holds the compiled v1 ruleset");
    let text = ok(&run(twinwall()
        .args(["status", "--to"])
        .arg(api.to_string())));
    assert!(text.contains(NODE), "{text}");

    // 2. push v2: enforced (the kernel's ruleset is v2's), upload-to-enforced measured.
    let t = Instant::now();
    let (pushed, msg) = push(api, &b2, &[]);
    assert!(pushed, "{msg}");
    let st = status(api, BOOT);
    let enforced = t.elapsed();
    assert_eq!(st["mgmt"]["config"]["version"], 2, "{st}");
    assert_eq!(digest(&st), dg2, "the kernel holds the compiled v2 ruleset");
    eprintln!(
        "mgmt_lab: push to enforced (one node, TCG): {} ms",
        enforced.as_millis()
    );

    // 3. bad bundles: 4xx with the reason, nothing changes.
    for (b, want) in [
        (&b3_tampered, "HTTP 400"),
        (&b3_rogue, "HTTP 403"),
        (&b1, "HTTP 409"),
    ] {
        let (pushed, msg) = push(api, b, &[]);
        assert!(!pushed && msg.contains(want), "{}: {msg}", b.display());
        let st = status(api, BOOT);
        assert_eq!(st["mgmt"]["config"]["version"], 2, "{msg}");
        assert_eq!(digest(&st), dg2, "{} changed the ruleset", b.display());
    }

    // 4. an unconfirmed push reverts when its window expires.
    let (pushed, msg) = push(api, &b3, &["--confirm-within", "5s"]);
    assert!(pushed, "{msg}");
    let st = status(api, BOOT);
    assert_eq!(st["mgmt"]["config"]["version"], 3);
    assert_eq!(digest(&st), dg3);
    let start = Instant::now();
    loop {
        let st = status(api, BOOT);
        if st["mgmt"]["config"]["version"] == 2 {
            assert_eq!(digest(&st), dg2, "the revert restored the v2 ruleset");
            assert_eq!(st["mgmt"]["config"]["reverts"], 1);
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no revert: {st}"
        );
        std::thread::sleep(Duration::from_secs(1));
    }

    // 5. OS update: the 48 MiB slot with the v2 version string into slot B, reboot, the
    // node runs it and marks it good.
    let mark = vm.console().len();
    let t = Instant::now();
    let o = run(twinwall()
        .arg("update")
        .arg(&os2)
        .arg("--to")
        .arg(api.to_string())
        .args(["--reboot", "--json"]));
    let write = t.elapsed();
    let v: Value = serde_json::from_str(&ok(&o)).unwrap();
    assert_eq!(v["update"]["slot"], "B", "{v}");
    assert_eq!(v["update"]["next_boot"], "B", "{v}");
    eprintln!(
        "mgmt_lab: update of a {} MiB slot (upload, write, read-back, grubenv; TCG): {:.1} s",
        v["update"]["bytes"].as_u64().unwrap() >> 20,
        write.as_secs_f64()
    );
    let at = wait_console(&mut vm, mark, "twinwall: grub chose slot B", BOOT);
    wait_console(
        &mut vm,
        at,
        "twinwall: health: healthy; slot b marked good",
        BOOT,
    );
    let st = status(api, BOOT);
    assert_eq!(st["mgmt"]["os"]["version"], v2_release.as_str(), "{st}");
    assert_eq!(st["mgmt"]["slots"]["running"], "B");
    assert_eq!(st["mgmt"]["slots"]["state"]["b"]["ok"], true, "{st}");
    assert_eq!(
        st["mgmt"]["config"]["version"], 2,
        "the config survives the update"
    );
    assert_eq!(digest(&st), dg2);

    // 6. an update whose slot never becomes healthy rolls back by itself.
    let mark = vm.console().len();
    let o = run(twinwall()
        .arg("update")
        .arg(&os3)
        .arg("--to")
        .arg(api.to_string())
        .args(["--reboot", "--json"]));
    let v: Value = serde_json::from_str(&ok(&o)).unwrap();
    assert_eq!(v["update"]["slot"], "A", "{v}");
    let at = wait_console(&mut vm, mark, "twinwall: grub chose slot A", BOOT);
    let at = wait_console(
        &mut vm,
        at,
        "twinwall: health: slot a not healthy within",
        BOOT + Duration::from_secs(HEALTH_DEADLINE_S),
    );
    let at = wait_console(&mut vm, at, "twinwall: grub chose slot B", BOOT);
    wait_console(
        &mut vm,
        at,
        "twinwall: health: healthy; slot b marked good",
        BOOT,
    );
    let st = status(api, BOOT);
    assert_eq!(st["mgmt"]["os"]["version"], v2_release.as_str(), "{st}");
    assert_eq!(st["mgmt"]["slots"]["running"], "B");
    assert_eq!(st["mgmt"]["slots"]["next_boot"], "B", "{st}");
    assert_eq!(digest(&st), dg2);

    // 7. power cuts during a slot write: QEMU SIGKILLed once the node has written a
    // random number of bytes; the node boots its old slot (B) every time.
    let seed: u64 = std::env::var("TWINWALL_MGMT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    let kills: usize = std::env::var("TWINWALL_MGMT_KILLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    eprintln!("mgmt_lab: power-cut seed {seed} (TWINWALL_MGMT_SEED), {kills} cuts");
    let mut rng = Rng(seed);
    let mut slog = std::fs::File::create(d.join("status.log")).unwrap();
    for i in 0..kills {
        let target = rng.between(1 << 20, slot2_bytes * 9 / 10);
        let mut up = Command::new(env!("CARGO_BIN_EXE_twinwall"))
            .args(["update"])
            .arg(&os4)
            .arg("--to")
            .arg(api.to_string())
            .env("TWINWALL_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let start = Instant::now();
        let written = loop {
            let st = status(api, BOOT);
            let w = st["mgmt"]["update"]["written_bytes"].as_u64().unwrap_or(0);
            if w >= target {
                break w;
            }
            assert!(
                up.try_wait().unwrap().is_none(),
                "cut {i}: the update ended before {target} bytes were written (at {w})"
            );
            assert!(
                start.elapsed() < BOOT,
                "cut {i}: the write never reached {target}"
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        drop(vm); // SIGKILL: QEMU dies mid-write.
        let mut err = String::new();
        let _ = up.stderr.take().unwrap().read_to_string(&mut err);
        assert!(
            !up.wait().unwrap().success(),
            "cut {i}: the update cannot have succeeded"
        );
        let _ = writeln!(
            slog,
            "cut {i}: killed at {written} of {slot2_bytes} bytes written (target {target})"
        );
        eprintln!("mgmt_lab: cut {i}: QEMU killed with {written} of {slot2_bytes} bytes written");
        vm = boot(&img, port, d.join(format!("console-cut{i}.log")));
        let at = wait_console(&mut vm, 0, "twinwall: grub chose slot B", BOOT);
        let at = wait_console(&mut vm, at, "Kernel command line:", BOOT);
        let line = vm.console()[at..]
            .lines()
            .next()
            .unwrap_or_default()
            .to_string();
        assert!(line.contains("twinwall.slot=b"), "cut {i}: booted {line}");
        wait_console(&mut vm, at, "twinwall: services up", BOOT);
        let st = status(api, BOOT);
        assert_eq!(st["mgmt"]["slots"]["running"], "B", "cut {i}: {st}");
        assert_eq!(st["mgmt"]["os"]["version"], v2_release.as_str(), "cut {i}");
    }
    drop(vm);
}
