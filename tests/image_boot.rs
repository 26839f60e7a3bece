//! Boot tests of the built artifacts under QEMU (TCG): twinwall.img with SeaBIOS and with
//! OVMF, twinwall.iso with both, and GRUB's fallback from a slot B that cannot boot.
//!
//! Each boot is judged by console markers: GRUB's own echo lines from grub.cfg, the
//! kernel's banner and command line (slot chosen by GRUB), and the first output of
//! the static twinwall binary running as the initramfs's /init. Until the init area's
//! `twinwall init` is on this branch, that first output is clap's usage text for the
//! `init` argv[0]; afterwards it is init's own banner; either proves /init ran.

mod image_common;

use std::time::Duration;

use image_common::*;
use twinwall_image::disk;
use twinwall_image::layout::{self, Layout, Role, Sizes};
use twinwall_image::reproducible;
use twinwall_image::{BootState, Grubenv, Slot};

/// A failure guard only (tests judge markers, not speed): TCG on a loaded 2-core
/// machine needs minutes for what takes seconds on an idle one.
const BOOT: Duration = Duration::from_secs(480);

/// Something only our static binary prints when it runs as /init, after the kernel
/// started: init's console lines (`twinwall: ...`, e.g. its trust decision or
/// `twinwall: services up`), or clap's usage text from a binary without `init`.
fn init_ran(console: &str) -> bool {
    let Some(i) = console.find("Kernel command line:") else {
        return false;
    };
    let after = &console[i..];
    after.contains("\ntwinwall: ") || after.contains("Usage: init")
}

fn boot_disk(fw: Firmware, name: &str) {
    let out = built_image();
    let dir = scratch(name);
    let img = dir.join("twinwall.img");
    std::fs::copy(out.join("twinwall.img"), &img).unwrap();
    let mut vm = Vm::boot(fw, Some(&img), None, false, dir.join("console.log"));
    vm.expect_in_order(
        &[
            "twinwall: grub chose slot A",
            "twinwall slot A (OK=1 TRY=1)",
            "Linux version 6.1",
            "Kernel command line: ",
            "twinwall.slot=a",
        ],
        BOOT,
    );
    let start = std::time::Instant::now();
    while !init_ran(&vm.console()) && start.elapsed() < BOOT {
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(
        init_ran(&vm.console()),
        "/init never ran; log {}",
        vm.log.display()
    );
    drop(vm);
    // GRUB saved the boot attempt: A is now pending confirmation by init.
    let layout = Layout::plan(Sizes::default());
    let env = Grubenv::parse(&disk::esp(&img, &layout).read(disk::ESP_GRUBENV).unwrap()).unwrap();
    let st = BootState::from_env(&env).unwrap();
    assert!(st.a.ok, "{st:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn disk_image_boots_with_seabios() {
    boot_disk(Firmware::Bios, "bios");
}

#[test]
fn disk_image_boots_with_ovmf() {
    boot_disk(Firmware::Uefi, "uefi");
}

fn boot_iso(fw: Firmware, name: &str) {
    let out = built_image();
    let dir = scratch(name);
    let mut vm = Vm::boot(
        fw,
        None,
        Some(&out.join("twinwall.iso")),
        false,
        dir.join("console.log"),
    );
    vm.expect_in_order(
        &[
            "twinwall: booting live image",
            "Linux version 6.1",
            "twinwall.slot=a twinwall.live=1",
        ],
        BOOT,
    );
    let start = std::time::Instant::now();
    while !init_ran(&vm.console()) && start.elapsed() < BOOT {
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(
        init_ran(&vm.console()),
        "/init never ran; log {}",
        vm.log.display()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn iso_boots_live_with_seabios() {
    boot_iso(Firmware::Bios, "iso-bios");
}

#[test]
fn iso_boots_live_with_ovmf() {
    boot_iso(Firmware::Uefi, "iso-uefi");
}

/// Slot B holds a squashfs whose kernel is garbage and is set to be tried once (what the
/// update agent does after writing an update). GRUB tries B, cannot load it, reboots, and
/// boots A; the grubenv then says B was tried and A is what boots next.
#[test]
fn grub_falls_back_to_a_when_b_cannot_boot() {
    let out = built_image();
    let dir = scratch("fallback");
    let img = dir.join("twinwall.img");
    std::fs::copy(out.join("twinwall.img"), &img).unwrap();
    let layout = Layout::plan(Sizes::default());
    let head = std::fs::read(&img).unwrap();
    let parts = layout::read_gpt(&head[..34 * 512]).unwrap();
    assert_eq!(parts[3].name, "slot-b");
    drop(head);

    let root = dir.join("broken");
    std::fs::create_dir_all(root.join("boot")).unwrap();
    std::fs::write(root.join("boot/vmlinuz"), vec![0x5au8; 4096]).unwrap();
    std::fs::write(root.join("boot/initrd.img"), b"garbage").unwrap();
    let sq = dir.join("broken.squashfs");
    reproducible::squashfs(&root, &sq, 0).unwrap();
    disk::write_partition(&img, &layout, Role::SlotB, &sq).unwrap();

    let esp = disk::esp(&img, &layout);
    let mut env = Grubenv::parse(&esp.read(disk::ESP_GRUBENV).unwrap()).unwrap();
    let mut st = BootState::from_env(&env).unwrap();
    st.set_try_once(Slot::B);
    st.apply_to(&mut env).unwrap();
    esp.write(disk::ESP_GRUBENV, &env.to_block().unwrap())
        .unwrap();

    let mut vm = Vm::boot(
        Firmware::Bios,
        Some(&img),
        None,
        true,
        dir.join("console.log"),
    );
    vm.expect_in_order(
        &[
            "twinwall: grub chose slot B",
            "twinwall: slot B cannot be loaded, rebooting",
            "twinwall: grub chose slot A",
            "Linux version 6.1",
            "twinwall.slot=a",
        ],
        BOOT,
    );
    drop(vm);
    let env = Grubenv::parse(&esp.read(disk::ESP_GRUBENV).unwrap()).unwrap();
    let st = BootState::from_env(&env).unwrap();
    assert_eq!(st.order, [Slot::B, Slot::A]);
    assert!(
        st.b.tried && st.a.ok && st.a.tried,
        "both boots were recorded: {st:?}"
    );
    // Once init confirms A, B stays skipped.
    let mut confirmed = st.clone();
    confirmed.mark_good(Slot::A);
    assert_eq!(confirmed.grub_boot().1, Slot::A);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The image flashed for node office-a of examples/single-vip.toml with a signed config
/// bundle: init verifies the bundle from the config partition (the VM has no NICs, so
/// this stops short of the services being healthy).
#[test]
fn flashed_image_verifies_its_config_bundle_at_boot() {
    let out = built_image();
    let dir = scratch("flashed");
    let key = dir.join("ops");
    let st = twinwall()
        .args(["key", "generate", "--out"])
        .arg(&key)
        .status()
        .unwrap();
    assert!(st.success());
    let bundle = dir.join("office.bundle");
    let st = twinwall()
        .args([
            "bundle",
            "create",
            "--config",
            "examples/single-vip.toml",
            "--key",
        ])
        .arg(key.with_extension("key"))
        .arg("--out")
        .arg(&bundle)
        .status()
        .unwrap();
    assert!(st.success());
    let img = dir.join("office-a.img");
    let o = twinwall()
        .arg("flash")
        .arg(out.join("twinwall.img"))
        .arg(&img)
        .args(["--node", "office-a", "--bundle"])
        .arg(&bundle)
        .arg("--trust")
        .arg(key.with_extension("pub"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut vm = Vm::boot(
        Firmware::Bios,
        Some(&img),
        None,
        false,
        dir.join("console.log"),
    );
    vm.expect_in_order(
        &[
            "twinwall: grub chose slot A",
            "Kernel command line: ",
            "twinwall: config version",
            "verified",
        ],
        BOOT,
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A second full build from the same inputs, in another work directory and at another
/// time, gives the same slot squashfs (the artifact that goes into slots and bundles).
#[test]
fn full_slot_image_is_reproducible() {
    let first = built_image();
    let dir = scratch("rebuild");
    let o = twinwall()
        .args(["image", "build", "--no-iso", "--out"])
        .arg(dir.join("out"))
        .arg("--binary")
        .arg(static_binary())
        .arg("--work")
        .arg(dir.join("work"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let sha = twinwall_image::rootfs::sha256_file;
    assert_eq!(
        sha(&first.join("twinwall-slot.squashfs")).unwrap(),
        sha(&dir.join("out/twinwall-slot.squashfs")).unwrap()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
