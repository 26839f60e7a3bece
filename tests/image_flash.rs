//! `twinwall flash` on files and loop devices: the config partition carries the node's
//! identity, keys and first bundle (read back with debugfs), the pair shares one sync
//! key, a larger device gets its backup GPT moved, and mounted, system and too-small
//! targets are refused with a clear message and left untouched.

mod image_common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use image_common::*;
use twinwall_image::layout;

fn config_file(target: &Path, dir: &Path, name: &str) -> Vec<u8> {
    let bytes = std::fs::read(target).unwrap();
    let parts = layout::read_gpt(&bytes[..34 * 512]).unwrap();
    let c = parts.iter().find(|p| p.name == "config").unwrap();
    let part = dir.join("config.part");
    std::fs::write(
        &part,
        &bytes[c.offset() as usize..(c.offset() + c.size()) as usize],
    )
    .unwrap();
    let o = Command::new("debugfs")
        .arg("-R")
        .arg(format!("cat /{name}"))
        .arg(&part)
        .output()
        .unwrap();
    assert!(o.status.success());
    o.stdout
}

fn run(args: &[&std::ffi::OsStr]) -> (i32, String, String) {
    let o = twinwall().args(args).output().unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

macro_rules! args {
    ($($a:expr),* $(,)?) => { &[$(std::ffi::OsStr::new($a)),*] };
}

#[test]
fn flash_to_files_fills_the_config_partition_and_shares_the_sync_key() {
    let dir = scratch("flash-files");
    let img = small_image(&dir);
    let key = dir.join("ops.pub");
    std::fs::write(&key, b"twinwall-ed25519-pub-v1 AAAA\n").unwrap();
    let bundle = dir.join("first.bundle");
    std::fs::write(&bundle, b"a config bundle").unwrap();
    let pair_key = dir.join("pair.sync.key");
    let a = dir.join("fw-a.img");
    let (code, out, err) = run(args![
        "flash",
        &img,
        &a,
        "--node",
        "fw-a",
        "--trust",
        &key,
        "--bundle",
        &bundle,
        "--sync-key",
        &pair_key
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("written and verified"), "{out}");
    assert_eq!(
        std::fs::metadata(&pair_key).unwrap().permissions().mode() & 0o777,
        0o600
    );

    assert_eq!(config_file(&a, &dir, "node"), b"fw-a\n");
    assert_eq!(
        config_file(&a, &dir, "trusted/ops.pub"),
        std::fs::read(&key).unwrap()
    );
    assert_eq!(
        config_file(&a, &dir, "bundles/active.bundle"),
        b"a config bundle"
    );
    assert_eq!(config_file(&a, &dir, "installed-version"), b"0\n");
    let sync_a = config_file(&a, &dir, "sync.key");
    assert_eq!(sync_a, std::fs::read(&pair_key).unwrap());
    assert!(String::from_utf8_lossy(&sync_a).starts_with("twinwall-sync-key-v1 "));

    // Outside the config partition the target is the image, byte for byte.
    let (ib, ab) = (std::fs::read(&img).unwrap(), std::fs::read(&a).unwrap());
    assert_eq!(ib.len(), ab.len());
    let parts = layout::read_gpt(&ib[..34 * 512]).unwrap();
    let c = parts.iter().find(|p| p.name == "config").unwrap();
    assert_eq!(&ib[..c.offset() as usize], &ab[..c.offset() as usize]);
    let end = (c.offset() + c.size()) as usize;
    assert_eq!(&ib[end..], &ab[end..]);
    // A file target is written sparse: the image's empty space stays holes.
    let allocated = std::fs::metadata(&a).unwrap().blocks() * 512;
    assert!(
        allocated < ab.len() as u64 / 2,
        "{allocated} bytes allocated for a {}-byte image",
        ab.len()
    );

    // The peer reuses the pair's key.
    let b = dir.join("fw-b.img");
    let (code, out, err) = run(args![
        "flash",
        &img,
        &b,
        "--node",
        "fw-b",
        "--sync-key",
        &pair_key
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(config_file(&b, &dir, "node"), b"fw-b\n");
    assert_eq!(config_file(&b, &dir, "sync.key"), sync_a);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_inputs_are_named_and_nothing_is_written() {
    let dir = scratch("flash-bad");
    let img = small_image(&dir);
    let t = dir.join("t.img");
    let (code, _, err) = run(args!["flash", &img, &t, "--node", "fw a"]);
    assert_eq!(code, 1);
    assert!(err.contains("invalid node name \"fw a\""), "{err}");
    let (code, _, err) = run(args![
        "flash",
        &img,
        &t,
        "--node",
        "fw-a",
        "--bundle",
        "/nonexistent.bundle"
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("/nonexistent.bundle"), "{err}");
    let bad_key = dir.join("bad.key");
    std::fs::write(&bad_key, "not a key\n").unwrap();
    let (code, _, err) = run(args![
        "flash",
        &img,
        &t,
        "--node",
        "fw-a",
        "--sync-key",
        &bad_key
    ]);
    assert_eq!(code, 1);
    assert!(
        err.contains("bad.key") && err.contains("not a sync key"),
        "{err}"
    );
    assert!(!t.exists(), "no target written on bad input");
    let (code, _, err) = run(args!["flash", &img, &img, "--node", "fw-a"]);
    assert_eq!(code, 1);
    assert!(err.contains("is the image itself"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

fn sha(p: &Path) -> String {
    twinwall_image::rootfs::sha256_file(p).unwrap()
}

#[test]
fn loop_device_too_small_is_refused_untouched() {
    let dir = scratch("flash-small");
    let img = small_image(&dir);
    let backing = dir.join("small.dev");
    std::fs::File::create(&backing)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    let before = sha(&backing);
    let lo = Loop::attach(&backing);
    let (code, _, err) = run(args!["flash", &img, &lo.dev, "--node", "fw-a"]);
    assert_eq!(code, 1);
    assert!(err.contains("has 16777216 bytes, the image needs"), "{err}");
    drop(lo);
    assert_eq!(sha(&backing), before);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn mounted_loop_device_is_refused_untouched() {
    let dir = scratch("flash-mounted");
    let img = small_image(&dir);
    let backing = dir.join("mounted.dev");
    std::fs::File::create(&backing)
        .unwrap()
        .set_len(128 << 20)
        .unwrap();
    let lo = Loop::attach(&backing);
    assert!(
        Command::new("mkfs.ext4")
            .arg("-q")
            .arg(&lo.dev)
            .status()
            .unwrap()
            .success()
    );
    let m = Mounted::mount(&lo.dev, &dir.join("mnt"));
    std::fs::write(m.dir.join("precious"), b"still here").unwrap();
    assert!(Command::new("sync").status().unwrap().success());
    let (code, _, err) = run(args!["flash", &img, &lo.dev, "--node", "fw-a"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("is mounted at") && err.contains(&*m.dir.to_string_lossy()),
        "{err}"
    );
    drop(m);
    drop(lo);
    // ext4 rewrites its own superblock on unmount, so compare content, not a hash.
    let bytes = std::fs::read(&backing).unwrap();
    assert_ne!(&bytes[512..520], b"EFI PART", "no GPT was written");
    let o = Command::new("debugfs")
        .args(["-R", "cat /precious"])
        .arg(&backing)
        .output()
        .unwrap();
    assert_eq!(o.stdout, b"still here");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The block device that holds `/`, when `/` is on one (not in every container).
fn root_disk() -> Option<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata("/").unwrap().dev();
    let (maj, min) = (nix::sys::stat::major(dev), nix::sys::stat::minor(dev));
    let uevent = std::fs::read_to_string(format!("/sys/dev/block/{maj}:{min}/uevent")).ok()?;
    let name = uevent.lines().find_map(|l| l.strip_prefix("DEVNAME="))?;
    let p = PathBuf::from(format!("/dev/{name}"));
    p.exists().then_some(p)
}

#[test]
fn the_disk_holding_root_is_refused() {
    let Some(disk) = root_disk() else {
        eprintln!("skipped: / is not on a block device here");
        return;
    };
    let dir = scratch("flash-root");
    let img = small_image(&dir);
    // First the read-only check, so a regression can never reach the write path here.
    let e = twinwall_image::flash::check_target(&disk, &img, 1).unwrap_err();
    assert!(e.to_string().contains("root filesystem"), "{e}");
    let (code, _, err) = run(args!["flash", &img, &disk, "--node", "fw-a"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("holds the running system's root filesystem"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn larger_loop_device_is_flashed_verified_and_gpt_fixed() {
    let dir = scratch("flash-loop");
    let img = small_image(&dir);
    let backing = dir.join("big.dev");
    std::fs::File::create(&backing)
        .unwrap()
        .set_len(96 << 20)
        .unwrap();
    let lo = Loop::attach(&backing);
    let (code, out, err) = run(args!["flash", &img, &lo.dev, "--node", "fw-b"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("backup GPT moved"), "{out}");
    assert_gpt_verifies(&lo.dev);
    drop(lo);
    assert_eq!(config_file(&backing, &dir, "node"), b"fw-b\n");
    let _ = std::fs::remove_dir_all(&dir);
}
