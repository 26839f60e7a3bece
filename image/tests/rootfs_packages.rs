//! The pinned Debian userland: the lock in rootfs/ matches what apt fetches, the files
//! the manifest selects make a working `nft` and `conntrack` (run in a chroot of just
//! those files), and fetch failures and checksum mismatches name the package.

use std::path::{Path, PathBuf};
use std::process::Command;

use twinwall_image::rootfs::{self, Lock, Locked, Manifest};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

#[test]
fn manifest_files_make_a_working_nft_and_conntrack() {
    let rootfs_dir = repo().join("rootfs");
    let manifest_path = rootfs_dir.join("packages.toml");
    let manifest = Manifest::load(&manifest_path).unwrap();
    let lock = Lock::load(&rootfs_dir.join("packages.lock")).unwrap();
    let cache = repo().join("build/cache");
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    for spec in &manifest.packages {
        let locked = lock.get(&spec.name).unwrap();
        let (deb, _) = rootfs::fetch(&cache.join("debs"), locked, true).unwrap();
        let dir = rootfs::unpack(&cache, &deb, locked).unwrap();
        rootfs::install_files(&dir, spec, &root).unwrap();
    }
    for (bin, arg) in [
        ("/usr/sbin/nft", "--version"),
        ("/usr/sbin/conntrack", "--version"),
    ] {
        let out = Command::new("chroot")
            .arg(&root)
            .args([bin, arg])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{bin} runs from the manifest's files alone: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // A ruleset using service names checks in a private network namespace: the chroot
    // has the libraries, /etc/services (netbase) and talks to the real kernel.
    std::fs::write(
        root.join("r.nft"),
        "table inet t {\n chain c {\n  type filter hook input priority 0; policy accept;\n  tcp dport ssh accept\n  ct state established accept\n }\n}\n",
    )
    .unwrap();
    let out = Command::new("unshare")
        .arg("--net")
        .arg("chroot")
        .arg(&root)
        .args(["/usr/sbin/nft", "-c", "-f", "/r.nft"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "nft -c in the chroot: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!root.join("bin/sh").exists() && !root.join("usr/bin/apt").exists());
}

#[test]
fn unfetchable_pin_fails_naming_the_package() {
    let tmp = tempfile::tempdir().unwrap();
    let l = Locked {
        name: "nftables".into(),
        version: "0.0.0-twinwall-does-not-exist".into(),
        arch: "amd64".into(),
        sha256: "00".repeat(32),
    };
    let e = rootfs::fetch(tmp.path(), &l, true).unwrap_err().to_string();
    assert!(
        e.contains("cannot fetch package nftables 0.0.0-twinwall-does-not-exist"),
        "{e}"
    );
}

#[test]
fn tampered_deb_is_rejected() {
    let rootfs_dir = repo().join("rootfs");
    let lock = Lock::load(&rootfs_dir.join("packages.lock")).unwrap();
    let locked = lock.get("libmnl0").unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let (good, _) = rootfs::fetch(&repo().join("build/cache/debs"), locked, true).unwrap();
    let mut bytes = std::fs::read(good).unwrap();
    let n = bytes.len();
    bytes[n - 1] ^= 1;
    std::fs::write(tmp.path().join(locked.deb_name()), bytes).unwrap();
    let e = rootfs::fetch(tmp.path(), locked, true)
        .unwrap_err()
        .to_string();
    assert!(e.contains("libmnl0") && e.contains(&locked.sha256), "{e}");
}
