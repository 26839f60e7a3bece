//! The modules phase: loads the kernel modules listed by the image build, in order.
//!
//! The list (one path per line, relative to `/lib/modules/RELEASE` or absolute, `#`
//! comments) is produced at image build time from `modules.dep`, dependencies first, so
//! init needs no dependency resolution of its own.

use std::path::{Path, PathBuf};

use nix::errno::Errno;

use crate::sys::Syscalls;

/// Default module list inside the image / initramfs.
pub const DEFAULT_LIST: &str = "/lib/modules/twinwall.modules";

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

/// What the phase did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Loaded {
    /// Modules loaded now.
    pub loaded: Vec<String>,
    /// Modules that were already loaded (or built in).
    pub already: Vec<String>,
    /// Modules whose hardware or CPU feature is absent (ENODEV).
    pub not_applicable: Vec<String>,
    /// The slowest loads (name, microseconds), slowest first, at most [`SLOWEST`].
    pub slowest: Vec<(String, u64)>,
}

/// How many of the slowest loads [`Loaded::slowest`] keeps.
pub const SLOWEST: usize = 3;

impl Loaded {
    /// One line for the phase report: counts, then the slowest loads.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "{} loaded, {} already present, {} not applicable",
            self.loaded.len(),
            self.already.len(),
            self.not_applicable.len()
        );
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

/// Loads every module of the list at `list`; relative entries resolve against
/// `/lib/modules/RELEASE` (RELEASE from `/proc/sys/kernel/osrelease`).
pub fn run(sys: &dyn Syscalls, list: &Path) -> Result<Loaded, ModuleError> {
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
    let mut done = Loaded::default();
    for path in parse_list(&String::from_utf8_lossy(&text), &base) {
        let module = module_name(&path);
        if present.contains(&module) {
            done.already.push(module);
            continue;
        }
        let start = std::time::Instant::now();
        let r = sys.finit_module(&path);
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
                    path,
                    list: list.to_path_buf(),
                });
            }
            Err(errno) => {
                return Err(ModuleError::Load {
                    module,
                    path,
                    errno,
                });
            }
        }
    }
    Ok(done)
}
