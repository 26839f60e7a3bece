//! Shared fixtures of the image acceptance tests: the static twinwall binary, one full
//! image build per test process, a QEMU (TCG) runner that watches the serial console and
//! is killed on drop, and loop devices detached on drop.
#![allow(dead_code)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The workspace root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The host twinwall binary built by cargo for these tests.
pub fn twinwall() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_twinwall"));
    c.current_dir(repo()).env("TWINWALL_LOG", "warn");
    c
}

/// The statically linked twinwall for the image, built the way `make image` builds it
/// (a separate `--target` so the host build's artifacts stay valid).
pub fn static_binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Ok(p) = std::env::var("TWINWALL_STATIC_BIN") {
            return PathBuf::from(p);
        }
        let target_dir = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo().join("target"));
        let st = Command::new(env!("CARGO"))
            .current_dir(repo())
            .args([
                "build",
                "--release",
                "--locked",
                "--target",
                "x86_64-unknown-linux-gnu",
                "--bin",
                "twinwall",
            ])
            .env("RUSTFLAGS", "-C target-feature=+crt-static")
            .status()
            .expect("cargo runs");
        assert!(st.success(), "static twinwall build failed");
        target_dir.join("x86_64-unknown-linux-gnu/release/twinwall")
    })
    .clone()
}

/// One full `twinwall image build` per test process; returns the output directory.
pub fn built_image() -> PathBuf {
    static OUT: OnceLock<PathBuf> = OnceLock::new();
    OUT.get_or_init(|| {
        let base = repo().join("target/image-test");
        let out = base.join("out");
        let o = twinwall()
            .args(["image", "build", "--out"])
            .arg(&out)
            .arg("--binary")
            .arg(static_binary())
            .arg("--work")
            .arg(base.join("work"))
            .output()
            .expect("twinwall runs");
        assert!(
            o.status.success(),
            "image build failed: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        out
    })
    .clone()
}

/// A unique scratch path for this process and a counter.
pub fn scratch(name: &str) -> PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let d = repo().join("target/image-test/scratch").join(format!(
        "{name}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Removes the VM disks (`*.img`, `*.disk`, `*.qcow2`) of a scratch directory always, and
/// the whole directory when the test passed (its console logs stay for a failure).
pub struct DiskGuard(pub PathBuf);

impl Drop for DiskGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Ok(rd) = std::fs::read_dir(&self.0) {
                for e in rd.flatten() {
                    let p = e.path();
                    let ext = p.extension().and_then(|x| x.to_str()).unwrap_or("");
                    if matches!(ext, "img" | "disk" | "qcow2" | "squashfs") {
                        let _ = std::fs::remove_file(&p);
                    }
                }
            }
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Removes terminal escape sequences (GRUB's menu drawing) from console output.
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars().peekable();
    while let Some(c) = it.next() {
        if c == '\x1b' {
            if it.peek() == Some(&'[') {
                it.next();
                while let Some(&n) = it.peek() {
                    it.next();
                    if n.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// How the VM boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Firmware {
    /// SeaBIOS (QEMU's default).
    Bios,
    /// OVMF.
    Uefi,
}

/// The pair's config fixture (`../shared/examples/seed-pair.toml`).
pub fn seed_pair() -> PathBuf {
    repo().join("../shared/examples/seed-pair.toml")
}

/// What a VM is booted with besides its firmware.
#[derive(Debug, Clone, Default)]
pub struct VmSpec {
    /// A raw disk image on virtio-blk.
    pub disk: Option<PathBuf>,
    /// An ISO on an IDE CD-ROM; it is the first boot device when set.
    pub cdrom: Option<PathBuf>,
    /// Let the guest reboot (else `-no-reboot`: a reboot ends QEMU).
    pub reboot: bool,
    /// NICs (of `nic_model`), one isolated hub port each (no frame leaves QEMU). They sit at
    /// PCI slots 0x10, 0x11, ... in this order, which is the order the kernel names them
    /// eth0, eth1, ...; the MACs are 52:54:00:77:00:NN.
    pub nics: usize,
    /// More raw virtio-blk disks, at PCI slots 0x0c, 0x0d, ... (after `disk`, which gets
    /// the first free slot: a virtio `disk` is vda and these vdb, vdc, ...; next to an
    /// AHCI `disk` (sda) they are vda, vdb, ...).
    pub extra_disks: Vec<PathBuf>,
    /// An SMBIOS type-11 OEM string (`-smbios type=11,value=...`).
    pub oem_string: Option<String>,
    /// NIC `.0` on a QEMU user-mode network with the `-netdev user` options `.1` (e.g.
    /// `restrict=on,net=...,hostfwd=...`: the host reaches a guest port) instead of its hub.
    pub user_nic: Option<(usize, String)>,
    /// What `disk` is attached to (default virtio-blk, what a VM deployment uses).
    pub disk_bus: DiskBus,
    /// The NICs' device model (default virtio-net).
    pub nic_model: NicModel,
}

/// The controller of a [`VmSpec`]'s `disk`. virtio is what the benchmarks and most tests
/// use (what a VM deployment uses, and the cheapest under TCG: docs/init.md, "Boot speed
/// round 6: kernel"); AHCI is there so a test covers the SATA drivers the image ships for
/// hardware.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DiskBus {
    /// virtio-blk-pci: the guest's `/dev/vda`.
    #[default]
    Virtio,
    /// A SATA disk on port 0 of q35's ICH9 AHCI controller: the guest's `/dev/sda` (a CD-ROM
    /// of the same VM goes to port 1).
    Ahci,
}

/// The device model of a [`VmSpec`]'s NICs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum NicModel {
    /// virtio-net-pci (the guest's `virtio_net`).
    #[default]
    Virtio,
    /// Intel 82574L (`e1000e`, q35's own default NIC, a driver for hardware the image
    /// ships).
    E1000e,
}

impl NicModel {
    /// The QEMU `-device` name.
    fn device(self) -> &'static str {
        match self {
            NicModel::Virtio => "virtio-net-pci",
            NicModel::E1000e => "e1000e",
        }
    }
}

/// The MAC of NIC `i` of a [`VmSpec`].
pub fn nic_mac(i: usize) -> String {
    format!("52:54:00:77:00:{i:02x}")
}

/// A QEMU VM under TCG whose serial console goes to a pipe; killed on drop.
pub struct Vm {
    child: Child,
    console: std::sync::Arc<std::sync::Mutex<String>>,
    pub log: PathBuf,
}

impl Vm {
    /// Boots a disk image (`-drive`) or an ISO (`cdrom`), without NICs.
    pub fn boot(
        fw: Firmware,
        disk: Option<&Path>,
        cdrom: Option<&Path>,
        reboot: bool,
        log: PathBuf,
    ) -> Vm {
        let spec = VmSpec {
            disk: disk.map(Path::to_path_buf),
            cdrom: cdrom.map(Path::to_path_buf),
            reboot,
            ..VmSpec::default()
        };
        Vm::start(fw, &spec, log)
    }

    /// Boots a [`VmSpec`].
    pub fn start(fw: Firmware, spec: &VmSpec, log: PathBuf) -> Vm {
        let mut c = Command::new("qemu-system-x86_64");
        // q35, not the default `pc` (i440FX): there the kernel's ACPI interrupt routing
        // of each PCI device (QEMU's generated _PRT, an AML loop) made virtio_pci's probe
        // cost 0.3-0.5 s per device under TCG (docs/init.md, "Measurements").
        c.args([
            "-accel",
            "tcg",
            "-machine",
            "q35",
            "-m",
            "768",
            "-nographic",
            "-display",
            "none",
            "-serial",
            "stdio",
            "-monitor",
            "none",
        ]);
        if fw == Firmware::Uefi {
            c.args(["-bios", "/usr/share/ovmf/OVMF.fd"]);
        }
        if let Some(d) = &spec.disk {
            // Zero writes stay holes in the (sparse) disk file.
            c.arg("-drive").arg(format!(
                "file={},format=raw,if=none,id=hd,discard=unmap,detect-zeroes=unmap",
                d.display()
            ));
            c.args([
                "-device",
                match spec.disk_bus {
                    DiskBus::Virtio => "virtio-blk-pci,drive=hd,bootindex=2",
                    DiskBus::Ahci => "ide-hd,drive=hd,bus=ide.0,bootindex=2",
                },
            ]);
        }
        for (i, d) in spec.extra_disks.iter().enumerate() {
            c.arg("-drive").arg(format!(
                "file={},format=raw,if=none,id=xd{i},discard=unmap,detect-zeroes=unmap",
                d.display()
            ));
            c.arg("-device")
                .arg(format!("virtio-blk-pci,drive=xd{i},addr=0x{:x}", 0x0c + i));
        }
        if let Some(oem) = &spec.oem_string {
            c.arg("-smbios").arg(format!("type=11,value={oem}"));
        }
        if let Some(iso) = &spec.cdrom {
            c.arg("-drive").arg(format!(
                "file={},format=raw,if=none,id=cd,media=cdrom,readonly=on",
                iso.display()
            ));
            c.args(["-device", "ide-cd,drive=cd,bus=ide.1,bootindex=1"]);
        }
        if spec.nics == 0 {
            c.args(["-net", "none"]);
        }
        for i in 0..spec.nics {
            match &spec.user_nic {
                Some((n, opts)) if *n == i => c.arg("-netdev").arg(format!("user,id=n{i},{opts}")),
                _ => c.arg("-netdev").arg(format!("hubport,id=n{i},hubid={i}")),
            };
            c.arg("-device").arg(format!(
                "{},netdev=n{i},mac={},addr=0x{:x},romfile=",
                spec.nic_model.device(),
                nic_mac(i),
                0x10 + i
            ));
        }
        if !spec.reboot {
            c.arg("-no-reboot");
        }
        let mut child = c
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("qemu-system-x86_64 runs (scripts/deps.sh image)");
        let mut out = child.stdout.take().unwrap();
        let console = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let sink = console.clone();
        let logf = log.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            let mut raw = Vec::new();
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 {
                    break;
                }
                raw.extend_from_slice(&buf[..n]);
                let _ = std::fs::write(&logf, &raw);
                *sink.lock().unwrap() = strip_ansi(&String::from_utf8_lossy(&raw));
            }
        });
        Vm {
            child,
            console,
            log,
        }
    }

    /// The console so far, escape sequences removed.
    pub fn console(&self) -> String {
        self.console.lock().unwrap().clone()
    }

    /// Waits until every marker appeared in order, or fails with the console tail.
    pub fn expect_in_order(&mut self, markers: &[&str], timeout: Duration) {
        let start = Instant::now();
        loop {
            let text = self.console();
            let mut pos = 0;
            let mut missing = None;
            for m in markers {
                match text[pos..].find(m) {
                    Some(i) => pos += i + m.len(),
                    None => {
                        missing = Some(*m);
                        break;
                    }
                }
            }
            let Some(m) = missing else { return };
            let exited = self.child.try_wait().ok().flatten().is_some();
            if exited || start.elapsed() > timeout {
                let tail: String = text
                    .chars()
                    .rev()
                    .take(3000)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect();
                panic!(
                    "console never showed {m:?} ({}; log {}):\n{tail}",
                    if exited { "VM exited" } else { "timeout" },
                    self.log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Vm {
    /// Waits for QEMU to exit (the guest powered off); false on timeout.
    pub fn wait_exit(&mut self, timeout: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if self.child.try_wait().ok().flatten().is_some() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        false
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loop device over a file, detached on drop.
pub struct Loop {
    pub dev: PathBuf,
}

impl Loop {
    /// Attaches `file`.
    pub fn attach(file: &Path) -> Loop {
        let o = Command::new("losetup")
            .args(["-f", "--show"])
            .arg(file)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "losetup: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        Loop {
            dev: PathBuf::from(String::from_utf8(o.stdout).unwrap().trim()),
        }
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
    }
}

/// A mount, unmounted on drop.
pub struct Mounted {
    pub dir: PathBuf,
}

impl Mounted {
    /// Mounts `dev` on `dir`.
    pub fn mount(dev: &Path, dir: &Path) -> Mounted {
        std::fs::create_dir_all(dir).unwrap();
        let st = Command::new("mount").arg(dev).arg(dir).status().unwrap();
        assert!(st.success());
        Mounted {
            dir: dir.to_path_buf(),
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).status();
    }
}

/// A small but complete twinwall disk image (tiny slot), so flashing and installing are
/// fast.
pub fn small_image(dir: &Path) -> PathBuf {
    use twinwall_image::disk::{self, DiskSpec};
    let root = dir.join("slotroot");
    std::fs::create_dir_all(root.join("boot")).unwrap();
    std::fs::write(root.join("boot/vmlinuz"), b"k").unwrap();
    let sq = dir.join("slot.squashfs");
    twinwall_image::reproducible::squashfs(&root, &sq, 0).unwrap();
    let img = dir.join("small.img");
    disk::build_disk(
        &DiskSpec {
            sizes: twinwall_image::layout::Sizes {
                esp_mib: 16,
                slot_mib: 4,
                config_mib: 8,
                data_mib: 4,
            },
            slot_a: sq,
            slot_b: None,
            boot: twinwall_image::BootState::fresh(),
            epoch: 0,
        },
        &dir.join("work"),
        &img,
    )
    .unwrap();
    img
}

/// Runs the host twinwall binary; returns exit code, stdout and stderr.
pub fn run_twinwall(args: &[&std::ffi::OsStr]) -> (i32, String, String) {
    let o = twinwall().args(args).output().unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Asserts that `sgdisk --verify` finds no problem in the GPT of `dev`.
pub fn assert_gpt_verifies(dev: &Path) {
    let v = Command::new("sgdisk")
        .arg("--verify")
        .arg(dev)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&v.stdout);
    assert!(text.contains("No problems found"), "{text}");
}
