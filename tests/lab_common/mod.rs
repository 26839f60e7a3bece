//! Shared fixtures of the lab tests: the built image (the `make image` output named by
//! `TWINWALL_LAB_IMAGE`, or one full build per test process like the image tests do),
//! unique run directories, and a lab that is shut down on drop.
#![allow(dead_code)]

#[path = "../image_common/mod.rs"]
mod image_common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use twinwall_lab::lab::{Lab, LabOptions};

pub use image_common::repo;

/// The `twinwall` binary under test, logging warnings only.
pub fn twinwall() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_twinwall"));
    c.env("TWINWALL_LOG", "warn");
    c
}

/// A node's `GET /status` through `twinwall status --to`, `None` while it does not answer.
pub fn status(api: SocketAddr) -> Option<serde_json::Value> {
    let o = twinwall()
        .args(["status", "--json", "--to"])
        .arg(api.to_string())
        .output()
        .ok()?;
    o.status
        .success()
        .then(|| serde_json::from_slice(&o.stdout).ok())
        .flatten()
}

/// The directory holding `twinwall.img` and `twinwall-slot.squashfs`.
pub fn image_dir() -> PathBuf {
    match std::env::var_os("TWINWALL_LAB_IMAGE") {
        Some(d) => PathBuf::from(d),
        None => image_common::built_image(),
    }
}

/// A unique run directory under target/lab-test. On drop (after the lab that used it),
/// the VM disks go always, everything else only if the test passed: a failed run keeps
/// its consoles, reports and logs to read, and no run keeps half a gigabyte of disks.
pub struct RunDir(PathBuf);

impl std::ops::Deref for RunDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for RunDir {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
            return;
        }
        remove_disks(&self.0);
    }
}

/// Removes every `*.img` and `*.qcow2` under `dir`.
fn remove_disks(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            remove_disks(&p);
        } else if matches!(
            p.extension().and_then(|x| x.to_str()),
            Some("img" | "qcow2")
        ) {
            let _ = std::fs::remove_file(&p);
        }
    }
}

/// Makes a fresh [`RunDir`] for the test `name`.
pub fn run_dir(name: &str) -> RunDir {
    let d = repo()
        .join("target/lab-test")
        .join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    RunDir(d)
}

/// Options for a lab of `topology` (a folder) in `run`.
pub fn options(topology: &Path, run: &Path) -> LabOptions {
    LabOptions {
        repo: repo(),
        topology: topology.to_path_buf(),
        image_dir: image_dir(),
        run_dir: run.to_path_buf(),
        exe: PathBuf::from(env!("CARGO_BIN_EXE_twinwall")),
        memory_mb: 512,
        seed: 1,
        append: String::new(),
        only: Vec::new(),
        // The tests boot the firewalls with `-kernel` from slot A (half the boot time of
        // SeaBIOS + GRUB under TCG); the rolling-update test boots them through GRUB, and
        // TWINWALL_LAB_GRUB=1 makes every lab test do so, as `lab up` does.
        direct_firewalls: std::env::var("TWINWALL_LAB_GRUB").map_or(true, |v| v != "1"),
    }
}

/// Polls `f` every 200 ms until it returns `Some`, or panics with `what` and the lab's
/// consoles after `timeout` (a failure guard, not a speed target).
pub fn wait_for<T>(
    lab: &Mutex<Lab>,
    what: &str,
    timeout: Duration,
    mut f: impl FnMut(&mut Lab) -> Option<T>,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f(&mut lab.lock().unwrap()) {
            return v;
        }
        if start.elapsed() > timeout {
            let l = lab.lock().unwrap();
            panic!(
                "{what} not reached within {timeout:?}; consoles in {}",
                l.run_dir.display()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Both firewalls answer status, exactly one of them is master and both see their sync
/// peer: the settled pair every mgmt lab test starts from.
pub fn pair_settled(lab: &Lab) -> bool {
    let fws = lab.firewalls();
    let states: Vec<_> = fws.values().filter_map(|r| r.as_ref().ok()).collect();
    let one_master = states.iter().filter(|f| f.is_master()).count() == 1;
    let synced = states
        .iter()
        .all(|f| f.sync.as_ref().is_some_and(|s| s.peer_up));
    states.len() == 2 && one_master && synced
}
