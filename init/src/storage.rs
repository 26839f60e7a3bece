//! The storage phase: finds the partitions by GPT partition label (`slot-a`, `slot-b`,
//! `config`, `data`) through `/sys/class/block/*/uevent` (`PARTNAME=`), mounts the running
//! slot's squashfs and switches root to it, and mounts the config partition read-only.
//!
//! Finding and planning are pure ([`parse_uevent`], [`plan`]); [`execute`] does the mounts.
//! Mount layout after the phase (see docs/init.md):
//! `/` = slot squashfs (read-only), `/run/twinwall/config` = config partition (read-only),
//! `/run/twinwall/data` = data partition (read-write, when present).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::mount::MsFlags;

use crate::cmdline::Cmdline;
use crate::sys::Syscalls;

/// Where the config partition is mounted.
pub const CONFIG_MOUNT: &str = "/run/twinwall/config";
/// Where the EFI system partition is mounted (grubenv for the slot logic).
pub const ESP_MOUNT: &str = "/run/twinwall/esp";
/// Where the data partition is mounted.
pub const DATA_MOUNT: &str = "/run/twinwall/data";
/// Where the new root is assembled before the switch.
pub const SYSROOT: &str = "/sysroot";
/// The slot image on a live ISO.
pub const LIVE_SLOT_IMAGE: &str = "twinwall/slot.squashfs";
/// Filesystems tried, in order, for the config and data partitions.
pub const CONFIG_FSTYPES: [&str; 2] = ["ext4", "vfat"];

/// Errors of the storage phase.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// /sys/class/block could not be listed.
    #[error("cannot list block devices in {path}: {source}")]
    Sysfs {
        /// The directory.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// `twinwall.slot=` names something other than a or b.
    #[error("kernel command line: twinwall.slot={0} is not a slot (expected a or b)")]
    BadSlot(String),
    /// The running slot's partition is not there.
    #[error("no partition labelled {label} (from twinwall.slot); found: {found}")]
    NoSlot {
        /// The GPT label looked for.
        label: String,
        /// Labels that were found.
        found: String,
    },
    /// Live mode found no ISO with the slot image.
    #[error("live mode: no CD/ISO device holds /{image} (tried: {tried})")]
    NoLiveImage {
        /// The image looked for.
        image: String,
        /// Devices tried.
        tried: String,
    },
    /// A mount failed.
    #[error("cannot mount {source_dev} on {target} ({fstype}): {errno}")]
    Mount {
        /// What was mounted.
        source_dev: String,
        /// Mount point.
        target: PathBuf,
        /// Filesystem type(s) tried.
        fstype: String,
        /// Cause.
        errno: Errno,
    },
    /// A mount point could not be created.
    #[error("cannot create mount point {target}: {source}")]
    Mkdir {
        /// The directory.
        target: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// Attaching the live slot image to a loop device failed.
    #[error("cannot attach {file} to a loop device: {errno}")]
    Loop {
        /// The image.
        file: PathBuf,
        /// Cause.
        errno: Errno,
    },
    /// switch_root failed.
    #[error("cannot switch root to {new_root}: {errno}")]
    SwitchRoot {
        /// The new root.
        new_root: PathBuf,
        /// Cause.
        errno: Errno,
    },
}

/// Parses a sysfs `uevent` file (`KEY=VALUE` lines). Pure.
pub fn parse_uevent(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// One block device from sysfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockDev {
    /// Kernel name (`vda2`, `sr0`).
    pub name: String,
    /// `disk` or `partition`.
    pub devtype: String,
    /// GPT partition label, when there is one.
    pub partname: Option<String>,
}

/// Lists the block devices under `sysfs_block` (normally `/sys/class/block`).
pub fn scan(sys: &dyn Syscalls, sysfs_block: &Path) -> Result<Vec<BlockDev>, StorageError> {
    let names = sys
        .read_dir(sysfs_block)
        .map_err(|source| StorageError::Sysfs {
            path: sysfs_block.to_path_buf(),
            source,
        })?;
    let mut devs = Vec::new();
    for name in names {
        let Ok(text) = sys.read_file(&sysfs_block.join(&name).join("uevent")) else {
            continue;
        };
        let ev = parse_uevent(&String::from_utf8_lossy(&text));
        devs.push(BlockDev {
            name: ev.get("DEVNAME").cloned().unwrap_or(name),
            devtype: ev.get("DEVTYPE").cloned().unwrap_or_default(),
            partname: ev.get("PARTNAME").cloned(),
        });
    }
    Ok(devs)
}

/// Partition label -> device name, for partitions that have a label. When a label appears
/// twice (two twinwall disks), the first in sysfs order wins and the clash is logged.
pub fn by_label(devs: &[BlockDev]) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    for d in devs.iter().filter(|d| d.devtype == "partition") {
        if let Some(label) = &d.partname {
            if let Some(first) = map.get(label) {
                tracing::warn!(label = %label, used = %first, ignored = %d.name, "duplicate partition label");
            } else {
                map.insert(label.clone(), d.name.clone());
            }
        }
    }
    map
}

/// Where `/` comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Root {
    /// Stay in the initramfs.
    Initramfs,
    /// A slot partition (`/dev/NAME`).
    Slot {
        /// `a` or `b`.
        slot: String,
        /// Device name.
        device: String,
    },
    /// Live ISO: the slot image is a file on one of these CD/disk devices.
    Live {
        /// Candidate devices, in the order they are tried.
        candidates: Vec<String>,
        /// The image's path relative to the ISO root.
        image: String,
    },
}

/// What the phase will mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The root.
    pub root: Root,
    /// Config partition device, when found.
    pub config: Option<String>,
    /// Data partition device, when found.
    pub data: Option<String>,
    /// EFI system partition, when booted from a slot (its grubenv is marked good).
    pub esp: Option<String>,
}

/// Decides the mounts from the command line and the devices found. Pure.
pub fn plan(cmdline: &Cmdline, devs: &[BlockDev]) -> Result<Plan, StorageError> {
    let labels = by_label(devs);
    let root = if cmdline.live {
        let mut candidates: Vec<String> = devs
            .iter()
            .filter(|d| d.name.starts_with("sr"))
            .map(|d| d.name.clone())
            .collect();
        // A hybrid ISO written to a USB stick shows up as a plain disk.
        candidates.extend(
            devs.iter()
                .filter(|d| d.devtype == "disk" && !d.name.starts_with("sr"))
                .filter(|d| !d.name.starts_with("loop") && !d.name.starts_with("ram"))
                .map(|d| d.name.clone()),
        );
        let image = cmdline
            .live_image
            .as_deref()
            .unwrap_or(LIVE_SLOT_IMAGE)
            .trim_start_matches('/')
            .to_string();
        Root::Live { candidates, image }
    } else if cmdline.stay_in_initramfs {
        Root::Initramfs
    } else if let Some(slot) = &cmdline.slot {
        if slot != "a" && slot != "b" {
            return Err(StorageError::BadSlot(slot.clone()));
        }
        let label = format!("slot-{slot}");
        let device = labels
            .get(&label)
            .cloned()
            .ok_or_else(|| StorageError::NoSlot {
                label: label.clone(),
                found: if labels.is_empty() {
                    "no labelled partitions".into()
                } else {
                    labels.keys().cloned().collect::<Vec<_>>().join(", ")
                },
            })?;
        Root::Slot {
            slot: slot.clone(),
            device,
        }
    } else {
        Root::Initramfs
    };
    let esp = match root {
        Root::Slot { .. } => labels.get("esp").cloned(),
        _ => None,
    };
    Ok(Plan {
        root,
        config: labels.get("config").cloned(),
        data: labels.get("data").cloned(),
        esp,
    })
}

/// Scans until the plan's root device is present or `wait` has passed (block drivers probe
/// asynchronously after the modules phase; this is the kernel's `rootwait`).
pub fn scan_and_plan(
    sys: &dyn Syscalls,
    cmdline: &Cmdline,
    sysfs_block: &Path,
    wait: Duration,
) -> Result<Plan, StorageError> {
    scan_and_plan_with(sys, cmdline, sysfs_block, wait, &mut || {})
}

/// [`scan_and_plan`], calling `missing` once when the first scan finds no slot or no
/// config partition (PID 1 then loads the storage drivers it had left for later).
pub fn scan_and_plan_with(
    sys: &dyn Syscalls,
    cmdline: &Cmdline,
    sysfs_block: &Path,
    wait: Duration,
    missing: &mut dyn FnMut(),
) -> Result<Plan, StorageError> {
    let deadline = Instant::now() + wait;
    let mut first = true;
    loop {
        let devs = scan(sys, sysfs_block)?;
        let waiting = match plan(cmdline, &devs) {
            Err(StorageError::NoSlot { .. }) if Instant::now() < deadline => true,
            Ok(p)
                if p.config.is_none() && Instant::now() < deadline && p.root != Root::Initramfs =>
            {
                true
            }
            other => return other,
        };
        if waiting && std::mem::take(&mut first) {
            missing();
            continue;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn mkdir(sys: &dyn Syscalls, target: &Path) -> Result<(), StorageError> {
    sys.mkdir_all(target, 0o755)
        .map_err(|source| StorageError::Mkdir {
            target: target.to_path_buf(),
            source,
        })
}

fn mount_any(
    sys: &dyn Syscalls,
    source: &str,
    target: &Path,
    fstypes: &[&str],
    flags: MsFlags,
) -> Result<String, StorageError> {
    mkdir(sys, target)?;
    let mut last = Errno::ENODEV;
    for fstype in fstypes {
        match sys.mount(source, target, Some(fstype), flags, None) {
            Ok(()) => return Ok((*fstype).to_string()),
            Err(e) => last = e,
        }
    }
    Err(StorageError::Mount {
        source_dev: source.to_string(),
        target: target.to_path_buf(),
        fstype: fstypes.join("|"),
        errno: last,
    })
}

const RO: MsFlags = MsFlags::MS_RDONLY
    .union(MsFlags::MS_NOSUID)
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC);

/// What [`execute`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Mounted {
    /// Whether `/` was switched to a slot.
    pub switched_root: bool,
    /// Whether the config partition is mounted at [`CONFIG_MOUNT`].
    pub config: bool,
    /// Why a config partition that was found could not be mounted (an unflashed or
    /// damaged partition: the node boots fail-closed, it does not reboot-loop).
    pub config_error: Option<String>,
    /// Whether the data partition is mounted at [`DATA_MOUNT`].
    pub data: bool,
    /// Whether the ESP is mounted at [`ESP_MOUNT`].
    pub esp: bool,
}

/// Mounts the plan: config (read-only) and data under /run, the slot at [`SYSROOT`], moves
/// the kernel filesystems into it and switches root.
pub fn execute(sys: &dyn Syscalls, plan: &Plan) -> Result<Mounted, StorageError> {
    let mut done = Mounted::default();
    if let Some(dev) = &plan.config {
        match mount_any(
            sys,
            &format!("/dev/{dev}"),
            Path::new(CONFIG_MOUNT),
            &CONFIG_FSTYPES,
            RO,
        ) {
            Ok(_) => done.config = true,
            Err(StorageError::Mount { errno, .. }) => {
                let why = format!(
                    "config partition /dev/{dev} holds no ext4 or vfat filesystem (not flashed?): {errno}"
                );
                tracing::warn!(device = %dev, error = %errno, "config partition not mounted");
                done.config_error = Some(why);
            }
            Err(e) => return Err(e),
        }
    }
    if let Some(dev) = &plan.data {
        let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
        match mount_any(
            sys,
            &format!("/dev/{dev}"),
            Path::new(DATA_MOUNT),
            &CONFIG_FSTYPES,
            flags,
        ) {
            Ok(_) => done.data = true,
            // The data partition holds logs and state only; the firewall runs without it.
            Err(e) => tracing::warn!(error = %e, "data partition not mounted"),
        }
    }
    if let Some(dev) = &plan.esp {
        let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
        match mount_any(
            sys,
            &format!("/dev/{dev}"),
            Path::new(ESP_MOUNT),
            &["vfat"],
            flags,
        ) {
            Ok(_) => done.esp = true,
            // Without the ESP the slot cannot be marked good; GRUB then falls back, which
            // is the safe direction.
            Err(e) => tracing::warn!(error = %e, "EFI system partition not mounted"),
        }
    }
    let sysroot = Path::new(SYSROOT);
    let image = match &plan.root {
        Root::Initramfs => return Ok(done),
        Root::Slot { device, .. } => format!("/dev/{device}"),
        Root::Live {
            candidates,
            image: on_iso,
        } => {
            let iso = Path::new("/run/twinwall/iso");
            let mut found = None;
            for dev in candidates {
                let src = format!("/dev/{dev}");
                if mount_any(sys, &src, iso, &["iso9660"], MsFlags::MS_RDONLY).is_ok() {
                    let file = iso.join(on_iso);
                    let dir = file.parent().unwrap_or(iso).to_path_buf();
                    let name = file.file_name().map(|n| n.to_string_lossy().into_owned());
                    if sys
                        .read_dir(&dir)
                        .is_ok_and(|n| name.as_ref().is_some_and(|name| n.contains(name)))
                    {
                        found = Some(file);
                        break;
                    }
                    let _ = sys.umount(iso, nix::mount::MntFlags::empty());
                }
            }
            let file = found.ok_or_else(|| StorageError::NoLiveImage {
                image: on_iso.clone(),
                tried: candidates.join(", "),
            })?;
            let dev = sys
                .attach_loop(&file)
                .map_err(|errno| StorageError::Loop { file, errno })?;
            dev.display().to_string()
        }
    };
    mount_any(sys, &image, sysroot, &["squashfs"], MsFlags::MS_RDONLY)?;
    for dir in ["/dev", "/proc", "/sys", "/run"] {
        let target = sysroot.join(dir.trim_start_matches('/'));
        sys.mount(dir, &target, None, MsFlags::MS_MOVE, None)
            .map_err(|errno| StorageError::Mount {
                source_dev: dir.to_string(),
                target,
                fstype: "move".into(),
                errno,
            })?;
    }
    sys.switch_root(sysroot)
        .map_err(|errno| StorageError::SwitchRoot {
            new_root: sysroot.to_path_buf(),
            errno,
        })?;
    // The slot's /tmp is a read-only directory of the squashfs: put a tmpfs on it.
    let _ = sys.mount(
        "tmpfs",
        Path::new("/tmp"),
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=1777"),
    );
    done.switched_root = true;
    Ok(done)
}
