//! QEMU (TCG) boots of the minimal initramfs: the pinned Debian cloud kernel plus a
//! static twinwall as /init, nft and the modules it needs (scripts/qemu-initramfs.sh):
//! without a config (fail-closed, no services, clean poweroff), as node lj-fw-1 of the
//! seed pair with a config disk and three NICs (the services really run and health
//! reports VRRP master and the kernel's ruleset), and with a forced PID 1 panic (logged,
//! then a reboot, never a kernel panic).
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

/// Runs scripts/qemu-initramfs.sh MODE; returns (stdout, console) after asserting success.
/// `None` when QEMU is not installed.
fn script(mode: &str) -> Option<(String, String)> {
    if !have("qemu-system-x86_64") {
        eprintln!("SKIPPED: qemu-system-x86_64 is not installed (scripts/deps.sh image)");
        return None;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out_dir = std::env::temp_dir().join(format!("tw-init-qemu-{mode}-{}", std::process::id()));
    let out = Command::new(root.join("scripts/qemu-initramfs.sh"))
        .arg(mode)
        .env("TWINWALL_QEMU_OUT", &out_dir)
        // Generous: a failure guard on a loaded machine, never a speed assertion.
        .env("TWINWALL_QEMU_TIMEOUT", "400")
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
    Some((stdout, console))
}

#[test]
fn init_qemu_minimal_initramfs_reaches_services_up_and_powers_off() {
    let Some((stdout, console)) = script("all") else {
        return;
    };
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

#[test]
fn init_qemu_node_runs_its_services_and_reports_health() {
    let Some((stdout, console)) = script("node") else {
        return;
    };
    for line in [
        "twinwall: config version 1 (active bundle) verified",
        "link up zone=outside device=eth0 mac=52:54:00:77:00:00",
        "ruleset applied (",
        "twinwall: services up",
        "twinwall: vrrp group edge master (vrid 51 on eth0 master, vrid 52 on eth1 master)",
        "twinwall: sync peer absent",
        "twinwall: ruleset in kernel: sha256 ",
        "twinwall: health: healthy",
        "reboot: Power down",
    ] {
        assert!(console.contains(line), "console lacks `{line}`:\n{console}");
    }
    assert!(!console.contains("phase failed"), "{console}");
    // No slot in the initramfs: nothing is marked.
    assert!(!console.contains("marked good"), "{console}");
    println!("{}", stdout.trim());
}

#[test]
fn init_qemu_pid1_panic_is_logged_and_reboots() {
    let Some((_, console)) = script("panic") else {
        return;
    };
    assert!(
        console.contains("twinwall: PANIC in init: ")
            && console.contains("twinwall.test_panic=1 on the kernel command line"),
        "{console}"
    );
    assert!(console.contains("reboot: Restarting system"), "{console}");
    assert!(!console.contains("Kernel panic"), "{console}");
}
