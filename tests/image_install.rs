//! `twinwall install` on the build host, from a twinwall.img, onto files and loop
//! devices: the installed disk is byte for byte the image (and, with a carried-over
//! config, byte for byte what `twinwall flash` writes); a larger device gets its backup
//! GPT at the end; the installation medium, mounted and too-small targets and bad config
//! sources are refused with a message naming them, and nothing is written. The live ISO
//! path (`twinwall.install=` from the running slot) is `tests/image_boot.rs`.

mod image_common;

use std::path::Path;
use std::process::Command;

use image_common::*;

fn sha(p: &Path) -> String {
    twinwall_image::rootfs::sha256_file(p).unwrap()
}

macro_rules! args {
    ($($a:expr),* $(,)?) => { &[$(std::ffi::OsStr::new($a)),*] };
}

fn zeros(p: &Path, bytes: u64) {
    std::fs::File::create(p).unwrap().set_len(bytes).unwrap();
}

#[test]
fn install_from_an_image_reproduces_it_and_carries_a_flashed_config() {
    let dir = scratch("install-files");
    let img = small_image(&dir);

    // No config: the installed disk is exactly the image.
    let plain = dir.join("plain.disk");
    let (code, out, err) = run_twinwall(args!["install", &plain, "--from", &img]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("config partition: the image's own"), "{out}");
    assert_eq!(sha(&plain), sha(&img));
    // Written sparse like flash: far fewer blocks than bytes.
    let meta = std::fs::metadata(&plain).unwrap();
    assert!(
        std::os::unix::fs::MetadataExt::blocks(&meta) * 512 < meta.len() / 2,
        "not sparse"
    );

    // A config carried over from a node's flashed disk: the same disk flash makes.
    let flashed = dir.join("fw-a.disk");
    let (code, out, err) = run_twinwall(args!["flash", &img, &flashed, "--node", "fw-a"]);
    assert_eq!(code, 0, "{out}{err}");
    let carried = dir.join("carried.disk");
    let (code, out, err) = run_twinwall(args![
        "install",
        &carried,
        "--from",
        &img,
        "--config-from",
        &flashed
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("config partition: carried over from"), "{out}");
    assert_eq!(sha(&carried), sha(&flashed));

    // --empty-config over a flashed image: the config partition is zeroed (the node
    // boots fail-closed), everything else is the image.
    let empty = dir.join("empty.disk");
    let (code, out, err) = run_twinwall(args![
        "install",
        &empty,
        "--from",
        &flashed,
        "--empty-config",
        "--json"
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["config"]["kind"], "empty");
    assert_eq!(sha(&empty), sha(&img));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The template `image build` puts into every slot: the image's blocks without the slots,
/// with the image's partition table.
#[test]
fn the_disk_template_is_the_image_without_its_slots() {
    use twinwall_image::install::{Template, template_of_image};
    let dir = scratch("install-template");
    let img = small_image(&dir);
    let t = Template::decode(&template_of_image(&img).unwrap().encode()).unwrap();
    let mut disk = std::fs::read(&img).unwrap();
    assert_eq!(t.total_bytes, disk.len() as u64);
    let parts = t.partitions().unwrap();
    let names: Vec<&str> = parts.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        ["bios-boot", "esp", "slot-a", "slot-b", "config", "data"]
    );
    let mut back = vec![0u8; disk.len()];
    t.overlay(0, &mut back);
    for p in parts.iter().filter(|p| p.name.starts_with("slot-")) {
        assert!(disk[p.offset() as usize..][..4] == *b"hsqs" || p.name == "slot-b");
        disk[p.offset() as usize..(p.offset() + p.size()) as usize].fill(0);
    }
    assert!(
        back == disk,
        "template differs from the image outside the slots"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn install_to_a_larger_loop_device_moves_the_backup_gpt() {
    let dir = scratch("install-loop");
    let img = small_image(&dir);
    let backing = dir.join("big.dev");
    zeros(&backing, 96 << 20);
    let lo = Loop::attach(&backing);
    let (code, out, err) = run_twinwall(args!["install", &lo.dev, "--from", &img]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("backup GPT moved"), "{out}");
    assert_gpt_verifies(&lo.dev);
    let p = Command::new("sgdisk")
        .arg("--print")
        .arg(&lo.dev)
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&p.stdout);
    for name in ["bios-boot", "esp", "slot-a", "slot-b", "config", "data"] {
        assert!(table.contains(name), "{name} missing:\n{table}");
    }
    drop(lo);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_installation_medium_is_refused_untouched() {
    let dir = scratch("install-medium");
    let img = small_image(&dir);
    let before = sha(&img);
    // The medium as a file: installing an image onto itself.
    let (code, _, err) = run_twinwall(args!["install", &img, "--from", &img]);
    assert_eq!(code, 1);
    assert!(
        err.contains("is the installation medium") && err.contains("small.img"),
        "{err}"
    );
    // The medium as a device (a live USB stick): source and target the same loop device.
    let lo = Loop::attach(&img);
    let (code, _, err) = run_twinwall(args!["install", &lo.dev, "--from", &lo.dev]);
    assert_eq!(code, 1);
    assert!(
        err.contains(&format!("{} is the installation medium", lo.dev.display())),
        "{err}"
    );
    drop(lo);
    assert_eq!(sha(&img), before);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn mounted_and_too_small_targets_and_bad_sources_are_refused_untouched() {
    let dir = scratch("install-refuse");
    let img = small_image(&dir);

    let small = dir.join("small.dev");
    zeros(&small, 16 << 20);
    let lo = Loop::attach(&small);
    let (code, _, err) = run_twinwall(args!["install", &lo.dev, "--from", &img]);
    assert_eq!(code, 1);
    assert!(err.contains("has 16777216 bytes, the image needs"), "{err}");
    drop(lo);
    assert_eq!(sha(&small), sha_of_zeros(&dir, 16 << 20));

    let mounted = dir.join("mounted.dev");
    zeros(&mounted, 64 << 20);
    let lo = Loop::attach(&mounted);
    assert!(
        Command::new("mkfs.ext4")
            .arg("-q")
            .arg(&lo.dev)
            .status()
            .unwrap()
            .success()
    );
    let m = Mounted::mount(&lo.dev, &dir.join("mnt"));
    let (code, _, err) = run_twinwall(args!["install", &lo.dev, "--from", &img]);
    assert_eq!(code, 1);
    assert!(
        err.contains("is mounted at") && err.contains(&*m.dir.to_string_lossy()),
        "{err}"
    );
    drop(m);
    drop(lo);
    let bytes = std::fs::read(&mounted).unwrap();
    assert_ne!(&bytes[512..520], b"EFI PART", "no GPT was written");
    drop(bytes);

    // Config sources that are not config filesystems, and a source that is no image.
    let target = dir.join("target.disk");
    let junk = dir.join("junk");
    std::fs::write(&junk, vec![0x5a; 8192]).unwrap();
    let (code, _, err) = run_twinwall(args![
        "install",
        &target,
        "--from",
        &img,
        "--config-from",
        &junk
    ]);
    assert_eq!(code, 1);
    assert!(
        err.contains("junk: no ext4 or vfat config filesystem found"),
        "{err}"
    );
    let big = dir.join("big-config.img");
    let o = Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4"])
        .arg(&big)
        .arg("16M")
        .output()
        .unwrap();
    assert!(o.status.success());
    let (code, _, err) = run_twinwall(args![
        "install",
        &target,
        "--from",
        &img,
        "--config-from",
        &big
    ]);
    assert_eq!(code, 1);
    assert!(
        err.contains("config filesystem is 16777216 bytes, the config partition holds 8388608"),
        "{err}"
    );
    let (code, _, err) = run_twinwall(args!["install", &target, "--from", &junk]);
    assert_eq!(code, 1);
    assert!(err.contains("junk: no GPT header"), "{err}");
    // Without --from on a host that is not a twinwall slot.
    let (code, _, err) = run_twinwall(args!["install", &target]);
    assert_eq!(code, 1);
    assert!(
        err.contains("is not a running twinwall slot") && err.contains("--from"),
        "{err}"
    );
    assert!(!target.exists(), "nothing was written");
    let _ = std::fs::remove_dir_all(&dir);
}

fn sha_of_zeros(dir: &Path, bytes: u64) -> String {
    let p = dir.join("zeros.ref");
    zeros(&p, bytes);
    let s = sha(&p);
    let _ = std::fs::remove_file(&p);
    s
}
