//! Kernel modules: the module list (`rootfs/modules.list`), its closure over the
//! dependencies that `depmod -b DIR VERSION` computes at build time, and the load-order
//! file init reads (`/lib/modules/load.list`: one absolute `.ko` path per line,
//! dependencies before the modules that need them).
//!
//! List format: one module name per line (`-` and `_` are the same, as for modprobe), a
//! trailing `*` matches a prefix (`nft_*`), `#` starts a comment, and the word
//! `initramfs` after the name also puts the module into the initramfs (what init needs to
//! reach the root: storage, squashfs, the config and ESP filesystems).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::tool::{self, ToolError};

/// Where init finds the load order, in the initramfs and in the root.
pub const LOAD_LIST: &str = "lib/modules/load.list";

/// The modules init loads once the services are up (`late` entries and their
/// dependencies that the boot list does not already load), in load order.
pub const LATE_LIST: &str = "lib/modules/load-late.list";

/// init's default list path (`twinwall.modules=` overrides it): a symlink to
/// [`LOAD_LIST`].
pub const INIT_ALIAS: &str = "lib/modules/twinwall.modules";

/// Errors of module selection.
#[derive(Debug, Error)]
pub enum ModulesError {
    /// Reading a file failed.
    #[error("{path}: {source}")]
    Io {
        /// File.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A line of the module list is malformed.
    #[error("{path}:{line}: {message}")]
    List {
        /// The list file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// A listed module is not in the kernel (neither a module nor built in).
    #[error(
        "{path}:{line}: module {name} is not in kernel {version} (neither modular nor built in)"
    )]
    Unknown {
        /// The list file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// Module name.
        name: String,
        /// Kernel version.
        version: String,
    },
    /// A module's appended signature is malformed.
    #[error("{path}: {message}")]
    Signature {
        /// The module file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// depmod failed.
    #[error(transparent)]
    Tool(#[from] ToolError),
}

/// One entry of the module list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    /// Normalised name (`_` for `-`), possibly ending in `*`.
    pub name: String,
    /// Also needed in the initramfs.
    pub initramfs: bool,
    /// Not needed before the services are up: init loads it afterwards
    /// ([`LATE_LIST`]).
    pub late: bool,
    /// 1-based line in the list.
    pub line: usize,
}

/// `usb-storage` and `usb_storage` are the same module.
pub fn normalise(name: &str) -> String {
    name.replace('-', "_")
}

/// Parses a module list.
pub fn parse_list(path: &Path, text: &str) -> Result<Vec<Wanted>, ModulesError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let mut words = line.split_whitespace();
        let name = words.next().expect("non-empty line has a word");
        let (mut initramfs, mut late) = (false, false);
        for w in words {
            match w {
                "initramfs" => initramfs = true,
                "late" => late = true,
                other => {
                    return Err(ModulesError::List {
                        path: path.into(),
                        line: i + 1,
                        message: format!("unknown tag {other:?} (known: `initramfs`, `late`)"),
                    });
                }
            }
        }
        if initramfs && late {
            return Err(ModulesError::List {
                path: path.into(),
                line: i + 1,
                message: format!(
                    "{name}: `initramfs` and `late` exclude each other (the initramfs \
                     loads everything before the root is mounted)"
                ),
            });
        }
        if !name
            .trim_end_matches('*')
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            || name.trim_end_matches('*').is_empty()
        {
            return Err(ModulesError::List {
                path: path.into(),
                line: i + 1,
                message: format!("{name:?} is not a module name"),
            });
        }
        out.push(Wanted {
            name: normalise(name),
            initramfs,
            late,
            line: i + 1,
        });
    }
    Ok(out)
}

/// The module graph of one kernel from its `modules.dep`.
#[derive(Debug, Clone, Default)]
pub struct ModuleDb {
    /// Module name -> path relative to `lib/modules/VERSION`.
    pub paths: BTreeMap<String, String>,
    /// Module name -> every module it needs (as listed by depmod).
    pub deps: BTreeMap<String, Vec<String>>,
    /// Built-in module names (nothing to load).
    pub builtin: BTreeSet<String>,
}

fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    normalise(file.trim_end_matches(".ko"))
}

impl ModuleDb {
    /// Parses `modules.dep` and `modules.builtin` contents.
    pub fn parse(modules_dep: &str, modules_builtin: &str) -> Self {
        let mut db = ModuleDb::default();
        for line in modules_dep.lines() {
            let Some((m, deps)) = line.split_once(':') else {
                continue;
            };
            let name = module_name(m);
            db.paths.insert(name.clone(), m.to_owned());
            db.deps
                .insert(name, deps.split_whitespace().map(module_name).collect());
        }
        db.builtin = modules_builtin.lines().map(module_name).collect();
        db
    }

    /// Runs depmod on an unpacked kernel (`ROOT/lib/modules/VERSION`) and reads the result.
    /// depmod runs once per unpacked kernel (its output is kept beside the modules).
    pub fn depmod(root: &Path, version: &str) -> Result<Self, ModulesError> {
        let dir = root.join("lib/modules").join(version);
        if !dir.join("modules.dep").exists() {
            tool::run("depmod", ["-b", &root.display().to_string(), version], None)?;
        }
        let read = |n: &str| {
            let p = dir.join(n);
            std::fs::read_to_string(&p).map_err(|source| ModulesError::Io { path: p, source })
        };
        Ok(Self::parse(
            &read("modules.dep")?,
            &read("modules.builtin")?,
        ))
    }

    /// Expands the wanted entries to module names (prefix patterns included), checking
    /// each exists. `initramfs_only` keeps only the entries tagged `initramfs`.
    pub fn select(
        &self,
        list: &Path,
        version: &str,
        wanted: &[Wanted],
        initramfs_only: bool,
    ) -> Result<Vec<String>, ModulesError> {
        self.select_where(list, version, wanted, |w| !initramfs_only || w.initramfs)
    }

    /// [`Self::select`] of the entries `keep` accepts.
    pub fn select_where(
        &self,
        list: &Path,
        version: &str,
        wanted: &[Wanted],
        keep: impl Fn(&Wanted) -> bool,
    ) -> Result<Vec<String>, ModulesError> {
        let mut names = Vec::new();
        for w in wanted.iter().filter(|w| keep(w)) {
            let found: Vec<String> = if let Some(prefix) = w.name.strip_suffix('*') {
                self.paths
                    .keys()
                    .filter(|n| n.starts_with(prefix))
                    .cloned()
                    .collect()
            } else if self.paths.contains_key(&w.name) {
                vec![w.name.clone()]
            } else if self.builtin.contains(&w.name) {
                vec![]
            } else {
                return Err(ModulesError::Unknown {
                    path: list.into(),
                    line: w.line,
                    name: w.name.clone(),
                    version: version.into(),
                });
            };
            if found.is_empty() && w.name.ends_with('*') {
                return Err(ModulesError::Unknown {
                    path: list.into(),
                    line: w.line,
                    name: w.name.clone(),
                    version: version.into(),
                });
            }
            names.extend(found);
        }
        Ok(names)
    }

    /// Load order for `names` and all their dependencies: each module after everything it
    /// needs, each once. Returns paths relative to `lib/modules/VERSION`.
    pub fn load_order(&self, names: &[String]) -> Vec<String> {
        fn visit(db: &ModuleDb, m: &str, seen: &mut BTreeSet<String>, out: &mut Vec<String>) {
            if !seen.insert(m.to_owned()) {
                return;
            }
            // depmod lists the dependencies so that the last one is loaded first.
            for d in db.deps.get(m).into_iter().flatten().rev() {
                visit(db, d, seen, out);
            }
            if let Some(p) = db.paths.get(m) {
                out.push(p.clone());
            }
        }
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        for n in names {
            visit(self, n, &mut seen, &mut out);
        }
        out
    }
}

/// The trailer the kernel's `sign-file` appends after a module's PKCS#7 signature.
pub const SIGNATURE_MARKER: &[u8] = b"~Module signature appended~\n";

/// `struct module_signature` (include/linux/module_signature.h): algo, hash, id_type,
/// signer_len, key_id_len, 3 bytes padding, big-endian u32 sig_len.
const SIGNATURE_INFO_LEN: usize = 12;

/// The module without its appended signature (unchanged when it has none). Pure.
///
/// Debian signs every module, and the kernel verifies an appended signature at
/// `finit_module` even when it does not enforce signatures: a PKCS#7 parse, a SHA-256 of
/// the module and an RSA verification per module, slow under TCG. The modules ship
/// inside the slot image, whose sha256 is in the signed update bundle, and the initramfs
/// inside that slot, so the per-module check adds nothing. The layout is
/// `MODULE | SIGNATURE | struct module_signature | MARKER` (scripts/sign-file.c); no
/// crate parses it, and it is a dozen lines. A stripped module taints the kernel once
/// (`E`, "module verification failed"), and a kernel in lockdown (Secure Boot with
/// Debian's shim) would refuse it — twinwall's GRUB is not shim-signed, so such a
/// kernel never boots it anyway (docs/image.md).
pub fn strip_signature(ko: &[u8]) -> Result<&[u8], String> {
    let Some(rest) = ko.strip_suffix(SIGNATURE_MARKER) else {
        return Ok(ko);
    };
    let Some(info_at) = rest.len().checked_sub(SIGNATURE_INFO_LEN) else {
        return Err("signature marker without the signature info block".into());
    };
    let info = &rest[info_at..];
    let sig_len = u32::from_be_bytes([info[8], info[9], info[10], info[11]]) as usize;
    let Some(end) = info_at.checked_sub(sig_len) else {
        return Err(format!(
            "signature length {sig_len} exceeds the module ({} bytes)",
            ko.len()
        ));
    };
    let body = &rest[..end];
    if !body.starts_with(b"\x7fELF") {
        return Err("no ELF module before the signature".into());
    }
    Ok(body)
}

/// The content of `load.list`: absolute paths on the target, one per line.
pub fn load_list(version: &str, order: &[String]) -> String {
    order
        .iter()
        .map(|p| format!("/lib/modules/{version}/{p}\n"))
        .collect()
}

/// The late load order: `all` (the load order of every entry) without what `boot`
/// already loads, order kept. Pure.
pub fn late_order(boot: &[String], all: &[String]) -> Vec<String> {
    let at_boot: BTreeSet<&String> = boot.iter().collect();
    all.iter()
        .filter(|m| !at_boot.contains(m))
        .cloned()
        .collect()
}

/// Copies the modules of `order` and `late` from the unpacked kernel into `root` without
/// their signatures ([`strip_signature`]), runs depmod there (so `modules.dep` matches
/// what ships) and writes `root/lib/modules/load.list` (`order`) and, when `late` is not
/// empty, [`LATE_LIST`].
pub fn install(
    kernel_root: &Path,
    version: &str,
    order: &[String],
    late: &[String],
    root: &Path,
) -> Result<(), ModulesError> {
    let src = kernel_root.join("lib/modules").join(version);
    let dst = root.join("lib/modules").join(version);
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ModulesError::Io { path, source }
    };
    for rel in order.iter().chain(late) {
        let d = dst.join(rel);
        std::fs::create_dir_all(d.parent().expect("module path has a parent")).map_err(io(&d))?;
        let s = src.join(rel);
        let ko = std::fs::read(&s).map_err(io(&s))?;
        let body = strip_signature(&ko).map_err(|message| ModulesError::Signature {
            path: s.clone(),
            message,
        })?;
        std::fs::write(&d, body).map_err(io(&d))?;
    }
    for f in [
        "modules.builtin",
        "modules.builtin.modinfo",
        "modules.order",
    ] {
        let d = dst.join(f);
        std::fs::create_dir_all(&dst).map_err(io(&dst))?;
        std::fs::copy(src.join(f), &d).map_err(io(&d))?;
    }
    tool::run("depmod", ["-b", &root.display().to_string(), version], None)?;
    let list = root.join(LOAD_LIST);
    std::fs::write(&list, load_list(version, order)).map_err(io(&list))?;
    if !late.is_empty() {
        let list = root.join(LATE_LIST);
        std::fs::write(&list, load_list(version, late)).map_err(io(&list))?;
    }
    // init's default list path; the same file.
    let alias = root.join(INIT_ALIAS);
    let _ = std::fs::remove_file(&alias);
    std::os::unix::fs::symlink("load.list", &alias).map_err(io(&alias))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "\
kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/net/core/failover.ko:
kernel/drivers/usb/storage/usb-storage.ko: kernel/drivers/scsi/scsi_mod.ko
kernel/drivers/scsi/scsi_mod.ko:
kernel/net/netfilter/nft_ct.ko: kernel/net/netfilter/nf_tables.ko
kernel/net/netfilter/nft_nat.ko: kernel/net/netfilter/nf_tables.ko
kernel/net/netfilter/nf_tables.ko:
";

    fn db() -> ModuleDb {
        ModuleDb::parse(DEP, "kernel/drivers/virtio/virtio.ko\n")
    }

    #[test]
    fn load_order_puts_dependencies_first_once() {
        let db = db();
        let order = db.load_order(&["virtio_net".into(), "net_failover".into()]);
        assert_eq!(
            order,
            [
                "kernel/net/core/failover.ko",
                "kernel/drivers/net/net_failover.ko",
                "kernel/drivers/net/virtio_net.ko"
            ]
        );
        assert_eq!(
            load_list("6.1.0-57-amd64", &order[..1]),
            "/lib/modules/6.1.0-57-amd64/kernel/net/core/failover.ko\n"
        );
    }

    #[test]
    fn select_handles_dashes_prefixes_builtins_and_initramfs_tag() {
        let db = db();
        let list = "usb-storage initramfs\nnft_*   # all nft expressions\nvirtio\n\n";
        let wanted = parse_list(Path::new("modules.list"), list).unwrap();
        let all = db
            .select(Path::new("modules.list"), "v", &wanted, false)
            .unwrap();
        assert_eq!(all, ["usb_storage", "nft_ct", "nft_nat"]);
        let initrd = db
            .select(Path::new("modules.list"), "v", &wanted, true)
            .unwrap();
        assert_eq!(initrd, ["usb_storage"]);
    }

    #[test]
    fn late_entries_leave_the_boot_order_unless_a_boot_module_needs_them() {
        let db = db();
        let list = "nft_ct\nnft_nat late\nnet_failover late\nvirtio_net\n";
        let p = Path::new("modules.list");
        let wanted = parse_list(p, list).unwrap();
        let boot = db.load_order(&db.select_where(p, "v", &wanted, |w| !w.late).unwrap());
        let all = db.load_order(&db.select(p, "v", &wanted, false).unwrap());
        let late = late_order(&boot, &all);
        // net_failover is tagged late, but virtio_net needs it: it loads at boot.
        assert_eq!(
            boot,
            [
                "kernel/net/netfilter/nf_tables.ko",
                "kernel/net/netfilter/nft_ct.ko",
                "kernel/net/core/failover.ko",
                "kernel/drivers/net/net_failover.ko",
                "kernel/drivers/net/virtio_net.ko"
            ]
        );
        // nf_tables, its dependency, is already there.
        assert_eq!(late, ["kernel/net/netfilter/nft_nat.ko"]);
        let e = parse_list(p, "ahci initramfs late\n").unwrap_err();
        assert!(e.to_string().contains("exclude each other"), "{e}");
    }

    fn signed(body: &[u8], sig: &[u8]) -> Vec<u8> {
        let mut v = body.to_vec();
        v.extend_from_slice(sig);
        v.extend_from_slice(&[0, 0, 2, 0, 0, 0, 0, 0]);
        v.extend_from_slice(&(sig.len() as u32).to_be_bytes());
        v.extend_from_slice(SIGNATURE_MARKER);
        v
    }

    #[test]
    fn signatures_are_stripped_and_unsigned_modules_kept() {
        let body = b"\x7fELF module code";
        assert_eq!(strip_signature(&signed(body, &[7u8; 681])).unwrap(), body);
        assert_eq!(strip_signature(body).unwrap(), body);
        let mut bad = signed(body, &[7u8; 4]);
        let n = bad.len() - SIGNATURE_MARKER.len() - 4;
        bad[n..n + 4].copy_from_slice(&9999u32.to_be_bytes());
        assert!(
            strip_signature(&bad)
                .unwrap_err()
                .contains("signature length 9999 exceeds")
        );
        assert!(strip_signature(SIGNATURE_MARKER).is_err());
        assert!(
            strip_signature(&signed(b"not elf", &[1, 2]))
                .unwrap_err()
                .contains("no ELF")
        );
    }

    #[test]
    fn unknown_module_and_bad_lines_are_errors_with_line() {
        let db = db();
        let wanted = parse_list(Path::new("m.list"), "virtio_net\ne1000x\n").unwrap();
        let e = db
            .select(Path::new("m.list"), "6.1", &wanted, false)
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "m.list:2: module e1000x is not in kernel 6.1 (neither modular nor built in)"
        );
        let e = parse_list(Path::new("m.list"), "ok\nahci rootfs\n").unwrap_err();
        assert!(e.to_string().starts_with("m.list:2: unknown tag"), "{e}");
        let e = parse_list(Path::new("m.list"), "a/b\n").unwrap_err();
        assert!(e.to_string().contains("not a module name"));
    }
}
