//! Reproducibility: the same tree gives the same squashfs and initramfs bytes, whatever
//! the files' owners and times were, and the archives carry fixed owners and times.

use std::path::Path;
use std::process::Command;

use twinwall_image::reproducible::{cpio, sorted_tree, squashfs};
use twinwall_image::rootfs::sha256_file;

fn make_tree(root: &Path, mtime: i64) {
    std::fs::create_dir_all(root.join("b/c")).unwrap();
    std::fs::create_dir_all(root.join("a")).unwrap();
    std::fs::write(root.join("b/c/file"), b"hello").unwrap();
    std::fs::write(root.join("a/z"), vec![7u8; 100_000]).unwrap();
    std::fs::write(root.join("top"), b"x").unwrap();
    std::os::unix::fs::symlink("b/c/file", root.join("link")).unwrap();
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(mtime as u64);
    std::fs::File::options()
        .write(true)
        .open(root.join("top"))
        .unwrap()
        .set_modified(t)
        .unwrap();
}

#[test]
fn squashfs_and_cpio_are_bit_identical_across_builds() {
    let d = tempfile::tempdir().unwrap();
    let (r1, r2) = (d.path().join("r1"), d.path().join("r2"));
    make_tree(&r1, 1_000_000);
    make_tree(&r2, 2_000_000);
    std::os::unix::fs::chown(r2.join("top"), Some(1000), Some(1000)).unwrap();
    std::os::unix::fs::chown(r2.join("b"), Some(1234), Some(1234)).unwrap();
    let epoch = 1_767_225_600;
    let (s1, s2) = (d.path().join("1.sq"), d.path().join("2.sq"));
    squashfs(&r1, &s1, epoch).unwrap();
    squashfs(&r2, &s2, epoch).unwrap();
    assert_eq!(sha256_file(&s1).unwrap(), sha256_file(&s2).unwrap());
    let (c1, c2) = (d.path().join("1.cpio"), d.path().join("2.cpio"));
    cpio(&r1, &c1, epoch).unwrap();
    cpio(&r2, &c2, epoch).unwrap();
    assert_eq!(sha256_file(&c1).unwrap(), sha256_file(&c2).unwrap());

    // A different epoch changes the bytes: the time really is in there.
    let s3 = d.path().join("3.sq");
    squashfs(&r1, &s3, epoch + 1).unwrap();
    assert_ne!(sha256_file(&s1).unwrap(), sha256_file(&s3).unwrap());
}

#[test]
fn archives_have_root_owners_fixed_times_and_sorted_entries() {
    let d = tempfile::tempdir().unwrap();
    let r = d.path().join("r");
    make_tree(&r, 1_000_000);
    let epoch = 1_767_225_600; // 2026-01-01 00:00 UTC
    let sq = d.path().join("x.sq");
    squashfs(&r, &sq, epoch).unwrap();
    let out = Command::new("unsquashfs")
        .args(["-lln", "-d", ""])
        .arg(&sq)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<_> = text.lines().filter(|l| l.contains("/top")).collect();
    assert!(
        lines[0].contains("0/0") && lines[0].contains("2026-01-01 00:00"),
        "{text}"
    );

    let c = d.path().join("x.cpio");
    cpio(&r, &c, epoch).unwrap();
    let out = Command::new("cpio")
        .args(["-t", "-v", "--quiet", "-F"])
        .arg(&c)
        .env("TZ", "UTC")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let names: Vec<_> = text
        .lines()
        .map(|l| l.rsplit(' ').next().unwrap())
        .collect();
    let expected: Vec<String> = sorted_tree(&r)
        .unwrap()
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    // `link -> b/c/file` prints the target last; compare the entry names only.
    assert_eq!(names.len(), expected.len(), "{text}");
    assert!(
        text.lines()
            .all(|l| l.contains(" root ") || l.contains(" 0 ")),
        "{text}"
    );
    assert!(text.contains("Jan  1  2026"), "{text}");
}
