//! Boot tests of the built artifacts under QEMU (TCG): twinwall.img flashed for node
//! lj-fw-1 of the seed-pair example (signed bundle, trusted key, sync key), with its three
//! NICs, booted with SeaBIOS and with OVMF, and twinwall.iso live with both; GRUB's
//! fallback from a slot B that cannot boot; slot reproducibility.
//!
//! Each boot is judged by console markers: GRUB's echo lines from grub.cfg, the kernel's
//! command line (slot chosen by GRUB), and init's own lines — trust verified, links up
//! with their MACs, `twinwall: services up`, then the health report (VRRP master, sync
//! peer absent, the digest of the kernel's ruleset) and the slot marked good. After the
//! VM is stopped, the grubenv on the ESP must say the booted slot is good.

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
/// started.
fn init_ran(console: &str) -> bool {
    let Some(i) = console.find("Kernel command line:") else {
        return false;
    };
    console[i..].contains("\ntwinwall: ")
}

/// Prints the boot's figures (PID 1 memory and uptime at services up, the phase
/// durations) for the record; `--nocapture` shows them. Not an assertion: speed and size
/// are benchmarks.
fn report_figures(name: &str, console: &str) {
    for l in console.lines() {
        if l.contains("twinwall: rss_kb=") || l.contains("phase done") {
            eprintln!("{name}: {}", l.trim());
        }
    }
}

/// The node the boot tests flash and the seed-pair's interface devices in zone order
/// (outside, inside, sync): eth0, eth1, eth2 = NICs 0, 1, 2.
const NODE: &str = "lj-fw-1";

/// Flashes the built image for [`NODE`] of the seed-pair example with a freshly signed
/// config bundle, its trusted key and a generated sync key; returns the image.
fn flashed_node(dir: &std::path::Path) -> std::path::PathBuf {
    let key = dir.join("ops");
    let st = twinwall()
        .args(["key", "generate", "--out"])
        .arg(&key)
        .status()
        .unwrap();
    assert!(st.success());
    let bundle = dir.join("seed.bundle");
    let o = twinwall()
        .args(["bundle", "create", "--config"])
        .arg(seed_pair())
        .arg("--key")
        .arg(key.with_extension("key"))
        .arg("--out")
        .arg(&bundle)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let img = dir.join(format!("{NODE}.img"));
    let o = twinwall()
        .arg("flash")
        .arg(built_image().join("twinwall.img"))
        .arg(&img)
        .args(["--node", NODE, "--bundle"])
        .arg(&bundle)
        .arg("--trust")
        .arg(key.with_extension("pub"))
        .arg("--sync-key")
        .arg(dir.join("pair.sync.key"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    img
}

/// The sha256 of `nft -s list ruleset` after `twinwall ruleset apply` of [`NODE`]'s
/// compiled ruleset in a fresh network namespace on the host (same nftables version as
/// the image's, rootfs/packages.lock): what the appliance's kernel must hold.
fn compiled_ruleset_digest(dir: &std::path::Path) -> String {
    let ns = twinwall_testkit::Netns::new("imgnft").unwrap();
    let o = ns
        .command(env!("CARGO_BIN_EXE_twinwall"), ["ruleset", "apply"])
        .arg(seed_pair())
        .args(["--node", NODE])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let listing = ns.run("nft", ["-s", "list", "ruleset"]).unwrap();
    assert!(listing.starts_with("table "), "{listing}");
    let file = dir.join("ruleset.nft");
    std::fs::write(&file, listing).unwrap();
    twinwall_image::rootfs::sha256_file(&file).unwrap()
}

/// The console markers of a full boot of [`NODE`] up to the health report.
fn full_boot_markers(dir: &std::path::Path, slot_line: &str) -> Vec<String> {
    let mut m: Vec<String> = vec![
        "Kernel command line: ".into(),
        slot_line.into(),
        "twinwall: config version 1 (active bundle) verified".into(),
    ];
    for (zone, dev, nic) in [
        ("inside", "eth1", 1),
        ("outside", "eth0", 0),
        ("sync", "eth2", 2),
    ] {
        m.push(format!(
            "link up zone={zone} device={dev} mac={}",
            nic_mac(nic)
        ));
    }
    m.extend([
        "twinwall: services up".into(),
        "twinwall: vrrp group edge master (vrid 51 on eth0 master, vrid 52 on eth1 master)".into(),
        "twinwall: sync peer absent".into(),
        format!(
            "twinwall: ruleset in kernel: sha256 {}",
            compiled_ruleset_digest(dir)
        ),
    ]);
    m
}

fn boot_node(fw: Firmware, name: &str) {
    let dir = scratch(name);
    let _guard = DiskGuard(dir.clone());
    let img = flashed_node(&dir);
    let spec = VmSpec {
        disk: Some(img.clone()),
        nics: 3,
        ..VmSpec::default()
    };
    let mut markers = vec![
        "twinwall: grub chose slot A".to_string(),
        "twinwall slot A (OK=1 TRY=1)".into(),
    ];
    markers.extend(full_boot_markers(&dir, "twinwall.slot=a"));
    markers.push("twinwall: health: healthy; slot a marked good".into());
    let markers: Vec<&str> = markers.iter().map(String::as_str).collect();
    let mut vm = Vm::start(fw, &spec, dir.join("console.log"));
    vm.expect_in_order(&markers, BOOT);
    let console = vm.console();
    drop(vm);
    assert!(!console.contains("phase failed"), "{console}");
    report_figures(name, &console);
    // init confirmed the slot GRUB tried: A is good again (OK=1, TRY=0).
    let layout = Layout::plan(Sizes::default());
    let env = Grubenv::parse(&disk::esp(&img, &layout).read(disk::ESP_GRUBENV).unwrap()).unwrap();
    let st = BootState::from_env(&env).unwrap();
    assert!(st.a.ok && !st.a.tried, "slot A not confirmed: {st:?}");
    assert_eq!(st.grub_boot().1, Slot::A);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn flashed_node_boots_to_services_up_with_seabios() {
    boot_node(Firmware::Bios, "bios");
}

#[test]
fn flashed_node_boots_to_services_up_with_ovmf() {
    boot_node(Firmware::Uefi, "uefi");
}

/// The ISO boots live from the CD; its config comes from the config partition of the
/// node's flashed disk (the same layout `twinwall install` lays out). A live boot has no
/// slot to confirm, so the grubenv is left alone.
fn boot_iso(fw: Firmware, name: &str) {
    let out = built_image();
    let dir = scratch(name);
    let _guard = DiskGuard(dir.clone());
    let img = flashed_node(&dir);
    let layout = Layout::plan(Sizes::default());
    let before = disk::esp(&img, &layout).read(disk::ESP_GRUBENV).unwrap();
    let spec = VmSpec {
        disk: Some(img.clone()),
        cdrom: Some(out.join("twinwall.iso")),
        nics: 3,
        ..VmSpec::default()
    };
    let mut markers = vec!["twinwall: booting live image".to_string()];
    markers.extend(full_boot_markers(&dir, "twinwall.slot=a twinwall.live=1"));
    markers.push("twinwall: health: healthy".into());
    let markers: Vec<&str> = markers.iter().map(String::as_str).collect();
    let mut vm = Vm::start(fw, &spec, dir.join("console.log"));
    vm.expect_in_order(&markers, BOOT);
    let console = vm.console();
    drop(vm);
    assert!(init_ran(&console));
    report_figures(name, &console);
    assert!(!console.contains("marked good"), "{console}");
    let after = disk::esp(&img, &layout).read(disk::ESP_GRUBENV).unwrap();
    assert_eq!(
        before, after,
        "a live boot must not touch the disk's grubenv"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn iso_boots_live_to_services_up_with_seabios() {
    boot_iso(Firmware::Bios, "iso-bios");
}

#[test]
fn iso_boots_live_to_services_up_with_ovmf() {
    boot_iso(Firmware::Uefi, "iso-uefi");
}

/// The live ISO installs itself, unattended, on a UEFI machine (OVMF) with a SATA disk:
/// the VM's SMBIOS OEM string `twinwall.install=/dev/sda` makes the EFI GRUB's install entry
/// the default (no kernel argument typed, no key pressed), init runs `twinwall install
/// /dev/sda` from the running slot — template and slot A from the ISO, the config
/// partition carried over from the node's flashed disk attached as vda — and powers off.
/// Then the installed disk boots alone, again under OVMF (the removable-media path
/// `/EFI/BOOT/BOOTX64.EFI` of the template's ESP, no NVRAM boot entry), with three e1000e
/// NICs, to services up with the carried-over config and slot A marked good.
///
/// UEFI is the firmware new machines install with; the SeaBIOS disk and ISO boots have
/// their own tests above, so this covers UEFI install without an extra boot. The other
/// boots use virtio disks and NICs (what a VM deployment uses, and the cheapest under
/// TCG); this one covers the hardware drivers the image ships for a SATA disk (ahci,
/// libata, sd_mod) and an Intel NIC (e1000e) on the appliance's whole path: GRUB EFI
/// reading the slot from the SATA disk, init finding the partitions on sda, the network
/// phase and the services on e1000e links.
#[test]
fn iso_installs_to_an_empty_disk_which_then_boots_to_services_up() {
    let out = built_image();
    let dir = scratch("install");
    let _guard = DiskGuard(dir.clone());
    let config_disk = flashed_node(&dir);
    // A sparse 1 GiB disk, larger than the image: the backup GPT must move to its end.
    let target = dir.join("target.disk");
    std::fs::File::create(&target)
        .unwrap()
        .set_len(1 << 30)
        .unwrap();
    let spec = VmSpec {
        disk: Some(target.clone()),
        disk_bus: DiskBus::Ahci,
        extra_disks: vec![config_disk.clone()],
        cdrom: Some(out.join("twinwall.iso")),
        oem_string: Some("twinwall.install=/dev/sda".into()),
        ..VmSpec::default()
    };
    let mut vm = Vm::start(Firmware::Uefi, &spec, dir.join("install.log"));
    vm.expect_in_order(
        &[
            "twinwall: SMBIOS OEM string asks to install to /dev/sda",
            "twinwall: booting install-oem",
            "twinwall.live=1 twinwall.install=/dev/sda",
            "twinwall: installing to /dev/sda (everything on it is overwritten)",
            "installed twinwall to /dev/sda: 506462208 bytes written and verified",
            "slot A: ",
            "from /dev/loop0; slot B empty",
            "config partition: carried over from /dev/vda5",
            "backup GPT moved to the end of the larger device",
            "twinwall: installed to /dev/sda; powering off",
        ],
        BOOT,
    );
    assert!(
        vm.wait_exit(Duration::from_secs(120)),
        "VM did not power off"
    );
    report_figures("install", &vm.console());
    drop(vm);
    let v = std::process::Command::new("sgdisk")
        .arg("--verify")
        .arg(&target)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&v.stdout);
    assert!(text.contains("No problems found"), "{text}");

    let spec = VmSpec {
        disk: Some(target.clone()),
        disk_bus: DiskBus::Ahci,
        nics: 3,
        nic_model: NicModel::E1000e,
        ..VmSpec::default()
    };
    let mut markers = vec![
        "twinwall: grub chose slot A".to_string(),
        "twinwall slot A (OK=1 TRY=1)".into(),
    ];
    markers.extend(full_boot_markers(&dir, "twinwall.slot=a"));
    markers.push("twinwall: health: healthy; slot a marked good".into());
    let markers: Vec<&str> = markers.iter().map(String::as_str).collect();
    let mut vm = Vm::start(Firmware::Uefi, &spec, dir.join("installed.log"));
    vm.expect_in_order(&markers, BOOT);
    let console = vm.console();
    drop(vm);
    report_figures("installed", &console);
    // The hardware drivers really ran: the slot came from the SATA disk (the kernel's sd
    // line, then init's storage phase), and the links with the markers' MACs are the
    // VM's only NICs, e1000e ones.
    assert!(
        console.contains("[sda] 2097152 512-byte logical blocks"),
        "{console}"
    );
    assert!(
        console.contains("device: \"sda3\""),
        "root not on sda3:\n{console}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Slot B holds a squashfs whose kernel is garbage and is set to be tried once (what the
/// update agent does after writing an update). GRUB tries B, cannot load it, reboots, and
/// boots A; the grubenv then says B was tried and A is what boots next.
#[test]
fn grub_falls_back_to_a_when_b_cannot_boot() {
    let out = built_image();
    let dir = scratch("fallback");
    let _guard = DiskGuard(dir.clone());
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

/// A second full build from the same inputs, in another work directory and at another
/// time, gives bit-identical artifacts: the slot squashfs (what goes into slots and
/// bundles), twinwall.img and twinwall.iso.
#[test]
fn full_build_is_bit_reproducible() {
    let first = built_image();
    let dir = scratch("rebuild");
    let o = twinwall()
        .args(["image", "build", "--out"])
        .arg(dir.join("out"))
        .arg("--binary")
        .arg(static_binary())
        .arg("--work")
        .arg(dir.join("work"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let sha = twinwall_image::rootfs::sha256_file;
    for f in ["twinwall-slot.squashfs", "twinwall.img", "twinwall.iso"] {
        assert_eq!(
            sha(&first.join(f)).unwrap(),
            sha(&dir.join("out").join(f)).unwrap(),
            "{f} differs between two builds"
        );
    }
    assert_eq!(
        std::fs::read(first.join("SHA256SUMS")).unwrap(),
        std::fs::read(dir.join("out/SHA256SUMS")).unwrap()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
