//! The disk image as real tools see it: sgdisk verifies the GPT and lists the partition
//! names init relies on, mtools reads the ESP (grub.cfg, grubenv, BOOTX64.EFI), the slot
//! squashfs sits at its partition offset, and GRUB's BIOS pointers are in place.

use std::path::Path;
use std::process::Command;

use twinwall_image::disk::{self, DiskSpec};
use twinwall_image::layout::{self, Layout, Role, Sizes};
use twinwall_image::reproducible;
use twinwall_image::{BootState, Grubenv};

fn small() -> Sizes {
    Sizes {
        esp_mib: 16,
        slot_mib: 4,
        config_mib: 4,
        data_mib: 4,
    }
}

fn tiny_slot(dir: &Path) -> std::path::PathBuf {
    let root = dir.join("root");
    std::fs::create_dir_all(root.join("boot")).unwrap();
    std::fs::write(root.join("boot/vmlinuz"), b"not a kernel").unwrap();
    std::fs::write(root.join("boot/initrd.img"), b"not an initrd").unwrap();
    let out = dir.join("slot.squashfs");
    reproducible::squashfs(&root, &out, 1_700_000_000).unwrap();
    out
}

#[test]
fn built_disk_is_a_valid_gpt_with_esp_grub_and_slot() {
    let dir = tempfile::tempdir().unwrap();
    let slot = tiny_slot(dir.path());
    let img = dir.path().join("disk.img");
    let layout = disk::build_disk(
        &DiskSpec {
            sizes: small(),
            slot_a: slot.clone(),
            slot_b: None,
            boot: BootState::fresh(),
            epoch: 1_700_000_000,
        },
        &dir.path().join("work"),
        &img,
    )
    .unwrap();
    assert_eq!(std::fs::metadata(&img).unwrap().len(), layout.total_bytes);

    let v = Command::new("sgdisk")
        .arg("--verify")
        .arg(&img)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&v.stdout);
    assert!(
        v.status.success() && text.contains("No problems found"),
        "{text}"
    );
    let p = Command::new("sgdisk").arg("-p").arg(&img).output().unwrap();
    let text = String::from_utf8_lossy(&p.stdout);
    for name in ["bios-boot", "esp", "slot-a", "slot-b", "config", "data"] {
        assert!(text.contains(name), "sgdisk lists {name}: {text}");
    }
    assert!(text.contains("EF02") && text.contains("EF00"), "{text}");

    // Our own GPT reader agrees with the plan.
    let head = std::fs::read(&img).unwrap();
    let parts = layout::read_gpt(&head[..34 * 512]).unwrap();
    let names: Vec<_> = parts.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        ["bios-boot", "esp", "slot-a", "slot-b", "config", "data"]
    );
    assert_eq!(parts[2].offset(), layout.get(Role::SlotA).offset());

    // ESP content through mtools.
    let esp = disk::esp(&img, &layout);
    let env = Grubenv::parse(&esp.read(disk::ESP_GRUBENV).unwrap()).unwrap();
    assert_eq!(BootState::from_env(&env).unwrap(), BootState::fresh());
    let cfg = String::from_utf8(esp.read("/grub/grub.cfg").unwrap()).unwrap();
    assert!(cfg.contains("load_env") && cfg.contains("twinwall.slot=a"));
    let efi = esp.read("/EFI/BOOT/BOOTX64.EFI").unwrap();
    assert_eq!(&efi[..2], b"MZ", "BOOTX64.EFI is a PE image");

    // Slot A holds the squashfs byte for byte; slot B is empty.
    let a = layout.get(Role::SlotA);
    let sq = std::fs::read(&slot).unwrap();
    assert_eq!(
        &head[a.offset() as usize..a.offset() as usize + sq.len()],
        &sq[..]
    );
    let b = layout.get(Role::SlotB);
    assert!(
        head[b.offset() as usize..(b.offset() + b.size()) as usize]
            .iter()
            .all(|&x| x == 0)
    );

    // BIOS: boot signature kept, boot.img points at core.img in the BIOS boot partition.
    assert_eq!(&head[510..512], &[0x55, 0xAA]);
    assert_eq!(
        u64::from_le_bytes(head[0x5c..0x64].try_into().unwrap()),
        2048
    );
    let core = &head[2048 * 512..2049 * 512];
    assert_eq!(
        u64::from_le_bytes(core[0x1f4..0x1fc].try_into().unwrap()),
        2049
    );

    // The data partition carries an ext4 filesystem labelled `data`.
    let d = layout.get(Role::Data);
    let data = dir.path().join("data.part");
    std::fs::write(
        &data,
        &head[d.offset() as usize..(d.offset() + d.size()) as usize],
    )
    .unwrap();
    let out = Command::new("dumpe2fs")
        .arg("-h")
        .arg(&data)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("Filesystem volume name:   data"));
}

#[test]
fn slot_larger_than_partition_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.squashfs");
    std::fs::write(&big, vec![1u8; 5 << 20]).unwrap();
    let err = disk::build_disk(
        &DiskSpec {
            sizes: small(),
            slot_a: big,
            slot_b: None,
            boot: BootState::fresh(),
            epoch: 0,
        },
        &dir.path().join("work"),
        &dir.path().join("disk.img"),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("big.squashfs") && err.contains("slot-a"),
        "{err}"
    );
}

#[test]
fn default_layout_fits_the_documented_sizes() {
    let l = Layout::plan(Sizes::default());
    assert_eq!(l.get(Role::SlotA).size(), 192 << 20);
    assert_eq!(l.get(Role::Esp).size(), 32 << 20);
    assert!(l.total_bytes < 512 << 20);
}
