//! A QEMU (TCG) boot of the minimal initramfs: the pinned Debian cloud kernel plus a
//! static twinwall as /init and the modules it needs (scripts/qemu-initramfs.sh). Passes
//! when the serial console shows "twinwall: services up" and the guest powers off cleanly
//! (orderly shutdown requested by `twinwall.shutdown_when_up=poweroff`).
//!
//! Skips, with a printed reason, only when qemu-system-x86_64 is not installed.

use std::path::Path;
use std::process::Command;

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd} >/dev/null")])
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn init_qemu_minimal_initramfs_reaches_services_up_and_powers_off() {
    if !have("qemu-system-x86_64") {
        eprintln!("SKIPPED: qemu-system-x86_64 is not installed (scripts/deps.sh image)");
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out_dir = std::env::temp_dir().join(format!("tw-init-qemu-{}", std::process::id()));
    let out = Command::new(root.join("scripts/qemu-initramfs.sh"))
        .arg("all")
        .env("TWINWALL_QEMU_OUT", &out_dir)
        .output()
        .expect("run scripts/qemu-initramfs.sh");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let console = std::fs::read_to_string(out_dir.join("console.log")).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&out_dir);
    assert!(
        out.status.success(),
        "boot failed\nstdout:\n{stdout}\nstderr:\n{stderr}\nconsole:\n{console}"
    );
    // The boot went through the real phases on the way.
    for line in [
        "twinwall: FAIL-CLOSED: no config partition",
        "twinwall: services up",
        "reboot: Power down",
    ] {
        assert!(console.contains(line), "console lacks `{line}`:\n{console}");
    }
    assert!(
        !console.contains("phase failed"),
        "a phase failed:\n{console}"
    );
    println!("{}", stdout.trim());
}
