//! The modules phase: loads the kernel modules listed by the image build, in order, but
//! hardware drivers only for hardware that is there.
//!
//! The list (one path per line, relative to `/lib/modules/RELEASE` or absolute, `#`
//! comments) is produced at image build time from `modules.dep`, dependencies first.
//! A generic image lists drivers for many NICs and storage controllers; loading them all
//! costs seconds under TCG. So, when the image's `modules.alias` and `modules.dep` are
//! there, a module with a `pci:` or `virtio:` alias (a hardware driver), and a module
//! needed only by such drivers, is loaded only when a device's `modalias` in
//! `/sys/bus/{pci,virtio}/devices` matches one of its aliases (the match udev/modprobe
//! would do). Loading goes in rounds: virtio devices appear only once `virtio_pci` has
//! probed, so their drivers load in the next round. Everything else (filesystems,
//! netfilter, USB storage) is always loaded. Without the alias files the whole list loads.
//!
//! [`Probe::StorageInBackground`] (the initramfs's list on a disk-slot boot): the SCSI/ATA
//! stack — every listed module that needs `scsi_mod` (`libata`, `ahci`, `ata_piix`,
//! `sd_mod`, `sr_mod`, `usb-storage`, `uas`, `virtio_scsi`) — loads last and with the
//! `async_probe` parameter, so `finit_module` returns without waiting for the bus scan
//! (`ahci` spent 0.4-0.9 s there on QEMU's q35, most of it in SATA link debounce sleeps,
//! probing an empty controller and a CD drive while the disk was virtio). The storage
//! phase waits for the partitions by label anyway. Last, because the kernel makes every
//! synchronous module load wait for all outstanding asynchronous probes.
//!
//! [`Probe::StorageLater`] (a disk-slot boot, both lists): that stack, and what only it
//! (or absent hardware) needs — `scsi_mod`, `usbcore` without a USB controller, `cdrom` —
//! is not loaded at all, unless a device of a driver that does load needs it: a disk
//! slot is usually on virtio or NVMe, and the SCSI scan's CPU time (0.15 s under TCG,
//! after the sleeps are gone) then is not on the path to services up. The storage phase
//! loads it ([`Probe::StorageInBackground`]) when the slot or the config partition is not
//! there without it (SATA, USB); otherwise the late-modules phase does, after services up.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use nix::errno::Errno;

use crate::sys::Syscalls;

/// Default module list inside the image / initramfs.
pub const DEFAULT_LIST: &str = "/lib/modules/twinwall.modules";

/// The slot's late list (the image build's `late` tag): loaded once the services are up,
/// since no service needs these modules to get ready. Absent in older images and in the
/// initramfs.
pub const LATE_LIST: &str = "/lib/modules/load-late.list";

/// Errors of the modules phase.
#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    /// The list itself is missing or unreadable.
    #[error("cannot read module list {path}: {source}")]
    List {
        /// The list file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// A listed module file does not exist.
    #[error("module {module} is missing ({path} not found; listed in {list})")]
    Missing {
        /// Module name (file stem).
        module: String,
        /// Its path.
        path: PathBuf,
        /// The list that named it.
        list: PathBuf,
    },
    /// The kernel refused a module.
    #[error("cannot load module {module} ({path}): {errno}")]
    Load {
        /// Module name.
        module: String,
        /// Its path.
        path: PathBuf,
        /// Cause.
        errno: Errno,
    },
}

/// Whether module loads wait for their devices to be probed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Probe {
    /// Every load waits for its probes (the kernel's default).
    #[default]
    Wait,
    /// The SCSI/ATA stack loads last, probing in the background (module doc).
    StorageInBackground,
    /// The storage stack is left for later (module doc); see [`Loaded::later`].
    StorageLater,
}

impl Probe {
    /// The choice for the boot's lists: the storage stack later on a disk-slot boot, where
    /// the storage phase waits for the slot and config partitions by label (and loads the
    /// stack itself when they are not there without it); everything, waiting, on a live
    /// or initramfs boot, whose storage phase looks for its devices once.
    pub fn for_boot(cmdline: &crate::cmdline::Cmdline) -> Probe {
        if cmdline.slot.is_some() && !cmdline.live && !cmdline.stay_in_initramfs {
            Probe::StorageLater
        } else {
            Probe::Wait
        }
    }
}

/// The kernel's parameter for a background probe (handled by the module loader itself,
/// for every module).
pub const ASYNC_PROBE: &str = "async_probe";

/// What the phase did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Loaded {
    /// Modules loaded now.
    pub loaded: Vec<String>,
    /// Of those, the ones loaded with [`ASYNC_PROBE`] (devices probed in the background).
    pub background: Vec<String>,
    /// Modules that were already loaded (or built in).
    pub already: Vec<String>,
    /// Modules whose hardware or CPU feature is absent (ENODEV).
    pub not_applicable: Vec<String>,
    /// Hardware drivers (and their own dependencies) skipped: no matching device.
    pub not_needed: Vec<String>,
    /// The storage stack left for later ([`Probe::StorageLater`]).
    pub later: Vec<String>,
    /// The slowest loads (name, microseconds), slowest first, at most [`SLOWEST`].
    pub slowest: Vec<(String, u64)>,
}

/// How many of the slowest loads [`Loaded::slowest`] keeps.
pub const SLOWEST: usize = 3;

impl Loaded {
    /// Adds what a second list's run did (its slowest loads compete with ours).
    pub fn merge(&mut self, other: Loaded) {
        self.loaded.extend(other.loaded);
        self.background.extend(other.background);
        self.already.extend(other.already);
        self.not_applicable.extend(other.not_applicable);
        self.not_needed.extend(other.not_needed);
        self.later.extend(other.later);
        self.slowest.extend(other.slowest);
        self.slowest.sort_by_key(|m| std::cmp::Reverse(m.1));
        self.slowest.truncate(SLOWEST);
    }

    /// One line for the phase report: counts, then the slowest loads.
    pub fn summary(&self) -> String {
        let background = if self.background.is_empty() {
            String::new()
        } else {
            format!(" ({} probing in the background)", self.background.len())
        };
        let mut s = format!(
            "{} loaded{background}, {} already present, {} not applicable, {} without a device",
            self.loaded.len(),
            self.already.len(),
            self.not_applicable.len(),
            self.not_needed.len()
        );
        if !self.later.is_empty() {
            s.push_str(&format!(", {} later (storage stack)", self.later.len()));
        }
        if !self.slowest.is_empty() {
            let v: Vec<String> = self
                .slowest
                .iter()
                .map(|(m, us)| format!("{m} {} ms", us / 1000))
                .collect();
            s.push_str(&format!("; slowest: {}", v.join(", ")));
        }
        s
    }
}

/// The names of the loaded modules in `/proc/modules` text (first word of each line). Pure.
pub fn loaded_names(proc_modules: &str) -> std::collections::BTreeSet<String> {
    proc_modules
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// The paths named by a module list, resolved against `base`. Pure.
pub fn parse_list(text: &str, base: &Path) -> Vec<PathBuf> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let p = Path::new(l);
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            }
        })
        .collect()
}

fn module_name(path: &Path) -> String {
    let file = path
        .file_name()
        .map(|f| f.to_string_lossy())
        .unwrap_or_default();
    // The kernel's name for `usb-storage.ko` is `usb_storage`.
    file.split('.').next().unwrap_or_default().replace('-', "_")
}

/// Hardware aliases of modules from `modules.alias` text: module name -> its `pci:` and
/// `virtio:` patterns. Pure.
pub fn hardware_aliases(modules_alias: &str) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for l in modules_alias.lines() {
        let mut w = l.split_whitespace();
        let (Some("alias"), Some(pattern), Some(module)) = (w.next(), w.next(), w.next()) else {
            continue;
        };
        if pattern.starts_with("pci:") || pattern.starts_with("virtio:") {
            out.entry(module.replace('-', "_"))
                .or_default()
                .push(pattern.to_string());
        }
    }
    out
}

/// Module name -> the names of the modules it needs, from `modules.dep` text. Pure.
pub fn dependencies(modules_dep: &str) -> BTreeMap<String, Vec<String>> {
    modules_dep
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(m, deps)| {
            (
                module_name(Path::new(m)),
                deps.split_whitespace()
                    .map(|d| module_name(Path::new(d)))
                    .collect(),
            )
        })
        .collect()
}

/// For each module of `order`, the modules of `order` that depend on it directly. Pure.
fn users_in<'a>(
    order: &'a [String],
    deps: &'a BTreeMap<String, Vec<String>>,
) -> BTreeMap<&'a str, Vec<&'a str>> {
    let in_list: BTreeSet<&String> = order.iter().collect();
    let mut users: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for m in order {
        for d in deps.get(m).into_iter().flatten() {
            if in_list.contains(d) {
                users.entry(d.as_str()).or_default().push(m.as_str());
            }
        }
    }
    users
}

/// Which modules of `order` (names, dependencies first) load only on demand: hardware
/// drivers, and modules that only on-demand modules of the list need. Pure.
pub fn on_demand(
    order: &[String],
    hw: &BTreeMap<String, Vec<String>>,
    deps: &BTreeMap<String, Vec<String>>,
) -> BTreeSet<String> {
    let dependents = users_in(order, deps);
    let mut out = BTreeSet::new();
    // Dependents come later in the order, so walking it backwards decides them first.
    for m in order.iter().rev() {
        let users = dependents.get(m.as_str());
        let only_for_on_demand =
            users.is_some_and(|u| !u.is_empty() && u.iter().all(|x| out.contains(*x)));
        if hw.contains_key(m) || only_for_on_demand {
            out.insert(m.clone());
        }
    }
    out
}

/// The modules of `order` that belong to the SCSI/ATA stack: those that need `scsi_mod`,
/// directly or through another module. Pure.
pub fn scsi_stack(order: &[String], deps: &BTreeMap<String, Vec<String>>) -> BTreeSet<String> {
    fn needs_scsi(
        m: &str,
        deps: &BTreeMap<String, Vec<String>>,
        seen: &mut BTreeSet<String>,
    ) -> bool {
        deps.get(m)
            .into_iter()
            .flatten()
            .any(|d| d == "scsi_mod" || (seen.insert(d.clone()) && needs_scsi(d, deps, seen)))
    }
    order
        .iter()
        .filter(|m| needs_scsi(m, deps, &mut BTreeSet::new()))
        .cloned()
        .collect()
}

/// The storage stack that [`Probe::StorageLater`] leaves out: the SCSI/ATA stack
/// (`scsi`, see [`scsi_stack`]) and every module of `order` that only it and on-demand
/// drivers (`lazy`) need. Pure.
pub fn storage_stack(
    order: &[String],
    deps: &BTreeMap<String, Vec<String>>,
    scsi: &BTreeSet<String>,
    lazy: &BTreeSet<String>,
) -> BTreeSet<String> {
    let users = users_in(order, deps);
    let mut out = scsi.clone();
    // Users come later in the order: walking it backwards decides them first.
    for m in order.iter().rev() {
        let only_for_later = users.get(m.as_str()).is_some_and(|u| {
            !u.is_empty() && u.iter().all(|x| out.contains(*x) || lazy.contains(*x))
        });
        if only_for_later {
            out.insert(m.clone());
        }
    }
    out
}

/// Whether a device's modalias matches a modules.alias pattern (fnmatch-style globs, as
/// modprobe matches them). The literal prefix is compared first: most patterns name
/// another vendor or device and are rejected without compiling a glob.
pub fn alias_matches(pattern: &str, modalias: &str) -> bool {
    let literal = pattern
        .find(['*', '?', '['])
        .map_or(pattern, |i| &pattern[..i]);
    if !modalias.starts_with(literal) {
        return false;
    }
    if literal.len() == pattern.len() {
        return modalias == pattern;
    }
    glob::Pattern::new(pattern).is_ok_and(|p| p.matches(modalias))
}

/// The on-demand modules some device needs now: those with an alias matching one of
/// `modaliases`, plus their dependencies. Pure.
pub fn wanted_for_devices(
    modaliases: &[String],
    hw: &BTreeMap<String, Vec<String>>,
    deps: &BTreeMap<String, Vec<String>>,
) -> BTreeSet<String> {
    let mut want: Vec<String> = hw
        .iter()
        .filter(|(_, pats)| {
            pats.iter()
                .any(|p| modaliases.iter().any(|a| alias_matches(p, a)))
        })
        .map(|(m, _)| m.clone())
        .collect();
    let mut out = BTreeSet::new();
    while let Some(m) = want.pop() {
        if out.insert(m.clone()) {
            want.extend(deps.get(&m).into_iter().flatten().cloned());
        }
    }
    out
}

/// The buses whose devices select hardware drivers.
const BUSES: [&str; 2] = ["/sys/bus/pci/devices", "/sys/bus/virtio/devices"];

fn modaliases(sys: &dyn Syscalls) -> Vec<String> {
    let mut out = Vec::new();
    for bus in BUSES {
        for dev in sys.read_dir(Path::new(bus)).unwrap_or_default() {
            if let Ok(a) = sys.read_file(&Path::new(bus).join(dev).join("modalias")) {
                out.push(String::from_utf8_lossy(&a).trim().to_string());
            }
        }
    }
    out
}

/// Loads the modules of the list at `list` (see the module doc), every load waiting for
/// its probes; relative entries resolve against `/lib/modules/RELEASE` (RELEASE from
/// `/proc/sys/kernel/osrelease`).
pub fn run(sys: &dyn Syscalls, list: &Path) -> Result<Loaded, ModuleError> {
    run_with(sys, list, Probe::Wait)
}

/// [`run`] with a choice of [`Probe`].
pub fn run_with(sys: &dyn Syscalls, list: &Path, probe: Probe) -> Result<Loaded, ModuleError> {
    let text = sys.read_file(list).map_err(|source| ModuleError::List {
        path: list.to_path_buf(),
        source,
    })?;
    let release = sys
        .read_file(Path::new("/proc/sys/kernel/osrelease"))
        .map(|r| String::from_utf8_lossy(&r).trim().to_string())
        .unwrap_or_default();
    let base = Path::new("/lib/modules").join(release);
    // Modules already in the kernel (the initramfs loaded them) are skipped without a
    // finit_module: the kernel would read and signature-check the whole file before
    // noticing the duplicate, which costs tens of milliseconds each under TCG.
    let present = sys
        .read_file(Path::new("/proc/modules"))
        .map(|t| loaded_names(&String::from_utf8_lossy(&t)))
        .unwrap_or_default();
    let paths = parse_list(&String::from_utf8_lossy(&text), &base);
    let names: Vec<String> = paths.iter().map(|p| module_name(p)).collect();
    let read = |f: &str| {
        sys.read_file(&base.join(f))
            .ok()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
    };
    let (hw, deps) = match (read("modules.alias"), read("modules.dep")) {
        (Some(a), Some(d)) => (hardware_aliases(&a), dependencies(&d)),
        // No alias data: every module of the list is loaded.
        _ => (BTreeMap::new(), BTreeMap::new()),
    };
    let lazy = on_demand(&names, &hw, &deps);
    let scsi = scsi_stack(&names, &deps);
    let (background, later) = match probe {
        Probe::Wait => (BTreeSet::new(), BTreeSet::new()),
        Probe::StorageInBackground => (scsi, BTreeSet::new()),
        Probe::StorageLater => {
            let later = storage_stack(&names, &deps, &scsi, &lazy);
            (BTreeSet::new(), later)
        }
    };
    // Devices select drivers, but not the ones left for later: their needs (`scsi_mod`
    // for `ahci`) must not pull the stack back in.
    let hw_now: BTreeMap<String, Vec<String>> = hw
        .iter()
        .filter(|(m, _)| !later.contains(*m))
        .map(|(m, a)| (m.clone(), a.clone()))
        .collect();
    let mut done = Loaded::default();
    let mut handled: BTreeSet<String> = BTreeSet::new();
    let mut deferred: Vec<usize> = Vec::new();
    loop {
        let wanted = if lazy.is_empty() && later.is_empty() {
            BTreeSet::new()
        } else {
            wanted_for_devices(&modaliases(sys), &hw_now, &deps)
        };
        let round: Vec<usize> = (0..names.len())
            .filter(|&i| !handled.contains(&names[i]))
            .filter(|&i| {
                let n = &names[i];
                if later.contains(n) {
                    // loaded already (the storage phase needed it): counted as present
                    wanted.contains(n) || present.contains(n)
                } else {
                    !lazy.contains(n) || wanted.contains(n)
                }
            })
            .collect();
        if round.is_empty() {
            break;
        }
        for i in round {
            let (path, module) = (&paths[i], names[i].clone());
            handled.insert(module.clone());
            if present.contains(&module) {
                done.already.push(module);
                continue;
            }
            if background.contains(&module) {
                deferred.push(i);
                continue;
            }
            load_one(sys, path, module, list, "", &mut done)?;
        }
    }
    for i in deferred {
        let module = names[i].clone();
        load_one(sys, &paths[i], module.clone(), list, ASYNC_PROBE, &mut done)?;
        if done.loaded.last() == Some(&module) {
            done.background.push(module);
        }
    }
    (done.later, done.not_needed) = names
        .iter()
        .filter(|n| !handled.contains(*n))
        .cloned()
        .partition(|n| later.contains(n));
    Ok(done)
}

fn load_one(
    sys: &dyn Syscalls,
    path: &Path,
    module: String,
    list: &Path,
    params: &str,
    done: &mut Loaded,
) -> Result<(), ModuleError> {
    let start = std::time::Instant::now();
    let r = sys.finit_module(path, params);
    let us = start.elapsed().as_micros() as u64;
    match r {
        Ok(()) => {
            tracing::debug!(module = %module, duration_us = us, "module loaded");
            done.slowest.push((module.clone(), us));
            done.slowest.sort_by_key(|e| std::cmp::Reverse(e.1));
            done.slowest.truncate(SLOWEST);
            done.loaded.push(module);
        }
        Err(Errno::EEXIST) => done.already.push(module),
        // The module's hardware or CPU feature is absent (crc32c-intel without
        // SSE4.2, a NIC driver for another board): not an error for a generic image.
        Err(Errno::ENODEV) => {
            tracing::info!(module = %module, "module not applicable here (ENODEV)");
            done.not_applicable.push(module);
        }
        Err(Errno::ENOENT) => {
            return Err(ModuleError::Missing {
                module,
                path: path.to_path_buf(),
                list: list.to_path_buf(),
            });
        }
        Err(errno) => {
            return Err(ModuleError::Load {
                module,
                path: path.to_path_buf(),
                errno,
            });
        }
    }
    Ok(())
}
