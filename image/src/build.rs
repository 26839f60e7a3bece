//! `twinwall image build`: the whole pipeline from `rootfs/` and a static `twinwall`
//! binary to DIR/twinwall.img, DIR/twinwall.iso and DIR/SHA256SUMS, with progress and a
//! summary of sizes and times. Intermediate trees live under the work directory and are
//! rebuilt from scratch each time; downloads and unpacked packages are cached.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use thiserror::Error;

use crate::disk::{self, DiskError};
use crate::layout::Sizes;
use crate::modules::{self, ModuleDb, ModulesError};
use crate::reproducible::{self, ReproError};
use crate::rootfs::{self, Lock, Manifest, RootfsError};
use crate::slot::BootState;
use crate::tool::{self, ToolError};

/// Errors of the build, each naming the step's input.
#[derive(Debug, Error)]
pub enum BuildError {
    /// Packages: manifest, lock, fetch, unpack.
    #[error(transparent)]
    Rootfs(#[from] RootfsError),
    /// Kernel modules.
    #[error(transparent)]
    Modules(#[from] ModulesError),
    /// squashfs / cpio.
    #[error(transparent)]
    Repro(#[from] ReproError),
    /// Disk assembly.
    #[error(transparent)]
    Disk(#[from] DiskError),
    /// A tool (grub-mkrescue, ...).
    #[error(transparent)]
    Tool(#[from] ToolError),
    /// File IO.
    #[error("{path}: {source}")]
    Io {
        /// File.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The twinwall binary to embed is not statically linked.
    #[error(
        "{path} is dynamically linked; the image needs a static binary (RUSTFLAGS=\"-C target-feature=+crt-static\", see `make image`)"
    )]
    NotStatic {
        /// The binary.
        path: PathBuf,
    },
    /// The install template could not be made from the disk.
    #[error("install template: {0}")]
    Template(String),
    /// The OS update bundle could not be signed or written.
    #[error("twinwall-update.bundle: {0}")]
    Bundle(String),
    /// The binary is not a 64-bit ELF executable.
    #[error("{path} is not an x86-64 ELF executable")]
    NotElf {
        /// The binary.
        path: PathBuf,
    },
    /// The unpacked kernel package has no (or several) module trees.
    #[error(
        "kernel package {package} must contain exactly one lib/modules/VERSION, found {found:?}"
    )]
    KernelTree {
        /// Package.
        package: String,
        /// Versions found.
        found: Vec<String>,
    },
    /// The slot image is larger than a slot partition.
    #[error("slot squashfs is {size} bytes, the slot partitions hold {room}")]
    SlotTooLarge {
        /// Size.
        size: u64,
        /// Partition size.
        room: u64,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BuildError + '_ {
    move |source| BuildError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Inputs of a build.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// The `rootfs/` directory (packages.toml, packages.lock, modules.list, overlay/).
    pub rootfs: PathBuf,
    /// Download and unpack cache (`build/cache`).
    pub cache: PathBuf,
    /// Scratch space (`build/work`), wiped per build.
    pub work: PathBuf,
    /// Output directory.
    pub out: PathBuf,
    /// The statically linked twinwall binary.
    pub binary: PathBuf,
    /// SOURCE_DATE_EPOCH.
    pub epoch: u64,
    /// Public keys trusted for OS update bundles, baked into `/etc/twinwall/trusted/`.
    pub trust: Vec<PathBuf>,
    /// Also build the hybrid ISO.
    pub iso: bool,
    /// Show a progress bar on stderr.
    pub progress: bool,
    /// Partition sizes.
    pub sizes: Sizes,
    /// Signing key for `twinwall-update.bundle` (none: no bundle is made).
    pub update_key: Option<PathBuf>,
    /// Version of the OS update bundle (monotonic; default SOURCE_DATE_EPOCH).
    pub update_version: u64,
}

/// One output file.
#[derive(Debug, Clone, Serialize)]
pub struct Artifact {
    /// File name in the output directory.
    pub name: String,
    /// Size in bytes.
    pub bytes: u64,
    /// sha256, hex.
    pub sha256: String,
}

/// What a build produced and how long each step took.
#[derive(Debug, Clone, Serialize)]
pub struct BuildReport {
    /// Kernel release (`6.1.0-57-amd64`).
    pub kernel: String,
    /// Artifacts in the output directory (SHA256SUMS lists them).
    pub artifacts: Vec<Artifact>,
    /// Size of the slot squashfs in bytes.
    pub slot_bytes: u64,
    /// Size of the initramfs in bytes (uncompressed cpio; the squashfs compresses it).
    pub initramfs_bytes: u64,
    /// Number of kernel modules in the root / in the initramfs.
    pub modules: (usize, usize),
    /// Step name and duration.
    pub steps: Vec<(String, Duration)>,
    /// Path of the slot squashfs (also the payload of an OS update bundle).
    pub slot_path: PathBuf,
}

/// Checks that `path` is an x86-64 ELF without a program interpreter (statically linked).
pub fn check_static(path: &Path) -> Result<(), BuildError> {
    let b = std::fs::read(path).map_err(io(path))?;
    let not_elf = || BuildError::NotElf {
        path: path.to_path_buf(),
    };
    if b.len() < 64 || &b[..4] != b"\x7fELF" || b[4] != 2 || b[5] != 1 {
        return Err(not_elf());
    }
    let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(b[0x20..0x28].try_into().expect("8 bytes")) as usize;
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    for i in 0..phnum {
        let o = phoff + i * phentsize;
        let ty = b.get(o..o + 4).ok_or_else(not_elf)?;
        if u32::from_le_bytes(ty.try_into().expect("4 bytes")) == 3 {
            return Err(BuildError::NotStatic {
                path: path.to_path_buf(),
            });
        }
    }
    Ok(())
}

struct Steps {
    bar: ProgressBar,
    started: Instant,
    name: String,
    done: Vec<(String, Duration)>,
}

impl Steps {
    fn new(total: u64, show: bool) -> Self {
        let bar = if show {
            ProgressBar::new(total)
        } else {
            ProgressBar::hidden()
        };
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}",
            )
            .expect("valid template"),
        );
        bar.enable_steady_tick(Duration::from_millis(200));
        Self {
            bar,
            started: Instant::now(),
            name: String::new(),
            done: Vec::new(),
        }
    }

    fn step(&mut self, name: &str) {
        self.finish_step();
        self.name = name.to_owned();
        self.started = Instant::now();
        self.bar.set_message(name.to_owned());
        tracing::debug!(step = name, "build step");
    }

    fn finish_step(&mut self) {
        if !self.name.is_empty() {
            self.done
                .push((std::mem::take(&mut self.name), self.started.elapsed()));
            self.bar.inc(1);
        }
    }

    fn finish(mut self) -> Vec<(String, Duration)> {
        self.finish_step();
        self.bar.finish_and_clear();
        self.done
    }
}

fn mkdirs(root: &Path, dirs: &[&str]) -> Result<(), BuildError> {
    for d in dirs {
        let p = root.join(d);
        std::fs::create_dir_all(&p).map_err(io(&p))?;
    }
    Ok(())
}

fn symlink(target: &str, link: &Path) -> Result<(), BuildError> {
    let _ = std::fs::remove_file(link);
    std::os::unix::fs::symlink(target, link).map_err(io(link))
}

fn fresh_dir(p: &Path) -> Result<(), BuildError> {
    if p.exists() {
        std::fs::remove_dir_all(p).map_err(io(p))?;
    }
    std::fs::create_dir_all(p).map_err(io(p))
}

/// The root tree's fixed directories (mount points for init).
pub const ROOT_DIRS: &[&str] = &[
    "bin",
    "sbin",
    "boot",
    "dev",
    "proc",
    "sys",
    "run",
    "tmp",
    "var",
    "mnt/esp",
    "mnt/config",
    "mnt/data",
    "etc/twinwall/trusted",
    "root",
];

/// Runs the whole build.
pub fn build(opts: &BuildOptions) -> Result<BuildReport, BuildError> {
    let total = 8 + u64::from(opts.iso) + u64::from(opts.update_key.is_some());
    let mut steps = Steps::new(total, opts.progress);
    steps.step("checking the twinwall binary");
    check_static(&opts.binary)?;
    // Read the signing key first: a bad key must fail before minutes of work.
    let signing_key = opts
        .update_key
        .as_deref()
        .map(twinwall_bundle::keys::read_signing_key)
        .transpose()
        .map_err(|e| BuildError::Bundle(e.to_string()))?;

    steps.step("fetching pinned packages");
    let manifest_path = opts.rootfs.join("packages.toml");
    let manifest = Manifest::load(&manifest_path)?;
    let lock = Lock::load(&opts.rootfs.join("packages.lock"))?;
    let locked = lock.resolve(&manifest, &manifest_path)?;
    let debs = opts.cache.join("debs");
    let mut unpacked = rootfs::Unpacked::new();
    for l in &locked {
        let (deb, _) = rootfs::fetch(&debs, l, true)?;
        unpacked.insert(l.name.clone(), rootfs::unpack(&opts.cache, &deb, l)?);
    }

    steps.step("resolving kernel modules");
    let kernel_root = unpacked[&manifest.kernel].clone();
    let mods_dir = kernel_root.join("lib/modules");
    let versions: Vec<String> = std::fs::read_dir(&mods_dir)
        .map_err(io(&mods_dir))?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    let [version] = versions.as_slice() else {
        return Err(BuildError::KernelTree {
            package: manifest.kernel.clone(),
            found: versions,
        });
    };
    let version = version.clone();
    let db = ModuleDb::depmod(&kernel_root, &version)?;
    let list_path = opts.rootfs.join("modules.list");
    let list_text = std::fs::read_to_string(&list_path).map_err(io(&list_path))?;
    let wanted = modules::parse_list(&list_path, &list_text)?;
    let root_order = db.load_order(&db.select_where(&list_path, &version, &wanted, |w| !w.late)?);
    let late_order = modules::late_order(
        &root_order,
        &db.load_order(&db.select(&list_path, &version, &wanted, false)?),
    );
    let initrd_order = db.load_order(&db.select(&list_path, &version, &wanted, true)?);

    steps.step("assembling the initramfs");
    let initrd_dir = opts.work.join("initramfs");
    fresh_dir(&initrd_dir)?;
    mkdirs(
        &initrd_dir,
        &["bin", "dev", "proc", "sys", "run", "mnt", "newroot"],
    )?;
    let bin = |root: &Path| -> Result<(), BuildError> {
        let dst = root.join("bin/twinwall");
        std::fs::copy(&opts.binary, &dst).map_err(io(&dst))?;
        Ok(())
    };
    bin(&initrd_dir)?;
    symlink("bin/twinwall", &initrd_dir.join("init"))?;
    modules::install(&kernel_root, &version, &initrd_order, &[], &initrd_dir)?;
    let initrd = opts.work.join("initrd.img");
    reproducible::cpio(&initrd_dir, &initrd, opts.epoch)?;

    steps.step("assembling the root tree");
    let root = opts.work.join("root");
    fresh_dir(&root)?;
    mkdirs(&root, ROOT_DIRS)?;
    bin(&root)?;
    symlink("../bin/twinwall", &root.join("sbin/init"))?;
    for spec in &manifest.packages {
        rootfs::install_files(&unpacked[&spec.name], spec, &root)?;
    }
    modules::install(&kernel_root, &version, &root_order, &late_order, &root)?;
    let overlay = opts.rootfs.join("overlay");
    if overlay.exists() {
        rootfs::copy_tree(&overlay, &root)?;
    }
    for key in &opts.trust {
        let name = key.file_name().map(PathBuf::from).unwrap_or_default();
        let dst = root.join("etc/twinwall/trusted").join(name);
        std::fs::copy(key, &dst).map_err(io(key))?;
    }
    let vmlinuz = kernel_root.join(format!("boot/vmlinuz-{version}"));
    let dst = root.join("boot/vmlinuz");
    std::fs::copy(&vmlinuz, &dst).map_err(io(&vmlinuz))?;
    let dst = root.join("boot/initrd.img");
    std::fs::copy(&initrd, &dst).map_err(io(&dst))?;
    let release = root.join("etc/twinwall-release");
    std::fs::write(
        &release,
        format!(
            "TWINWALL_VERSION={}\nKERNEL={version}\nSOURCE_DATE_EPOCH={}\n",
            env!("CARGO_PKG_VERSION"),
            opts.epoch
        ),
    )
    .map_err(io(&release))?;

    // The disk without slot contents comes first: its blocks are `twinwall install`'s
    // template, carried in the slot itself (so any running slot can install a disk).
    steps.step("assembling twinwall.img");
    let img = opts.out.join("twinwall.img");
    std::fs::create_dir_all(&opts.out).map_err(io(&opts.out))?;
    let layout = disk::build_base(
        opts.sizes,
        &BootState::fresh(),
        opts.epoch,
        &opts.work.join("disk"),
        &img,
    )?;
    let template =
        crate::install::template_of_image(&img).map_err(|e| BuildError::Template(e.to_string()))?;
    let tmpl = root.join(crate::install::TEMPLATE_FILE);
    if let Some(dir) = tmpl.parent() {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
    }
    std::fs::write(&tmpl, template.encode()).map_err(io(&tmpl))?;

    steps.step("making the slot squashfs");
    let slot = opts.work.join("slot.squashfs");
    reproducible::squashfs(&root, &slot, opts.epoch)?;
    let slot_bytes = std::fs::metadata(&slot).map_err(io(&slot))?.len();
    let room = opts.sizes.slot_mib * crate::layout::MIB;
    if slot_bytes > room {
        return Err(BuildError::SlotTooLarge {
            size: slot_bytes,
            room,
        });
    }
    disk::write_partition(&img, &layout, crate::layout::Role::SlotA, &slot)?;
    let mut names = vec!["twinwall.img".to_owned()];

    if opts.iso {
        steps.step("making twinwall.iso");
        build_iso(
            &slot,
            &opts.work.join("iso"),
            &opts.out.join("twinwall.iso"),
            opts.epoch,
        )?;
        names.push("twinwall.iso".into());
    }

    let slot_out = opts.out.join("twinwall-slot.squashfs");
    std::fs::copy(&slot, &slot_out).map_err(io(&slot_out))?;
    names.push("twinwall-slot.squashfs".into());

    if let Some(key) = &signing_key {
        steps.step("signing twinwall-update.bundle");
        let out = opts.out.join(UPDATE_BUNDLE);
        update_bundle(&slot, key, opts.update_version, opts.epoch, &out)?;
        names.push(UPDATE_BUNDLE.into());
    }

    steps.step("writing SHA256SUMS");
    let artifacts = write_sums(&opts.out, &names)?;
    let initramfs_bytes = std::fs::metadata(&initrd).map_err(io(&initrd))?.len();
    let steps = steps.finish();
    Ok(BuildReport {
        kernel: version,
        artifacts,
        slot_bytes,
        initramfs_bytes,
        modules: (root_order.len(), initrd_order.len()),
        steps,
        slot_path: slot_out,
    })
}

/// File name of the OS update bundle in the output directory.
pub const UPDATE_BUNDLE: &str = "twinwall-update.bundle";
/// The manifest's `cluster` field of OS update bundles: an OS image serves every cluster.
pub const OS_UPDATE_CLUSTER: &str = "twinwall-os";
/// Name of the slot image inside an OS update bundle.
pub const UPDATE_PAYLOAD: &str = "slot.squashfs";

/// Signs the slot image into an OS update bundle (the bundle area's format: kind
/// `os-update`, payload [`UPDATE_PAYLOAD`]); `created` is SOURCE_DATE_EPOCH so the same
/// inputs and key give the same bundle.
pub fn update_bundle(
    slot: &Path,
    key: &twinwall_bundle::SigningKey,
    version: u64,
    epoch: u64,
    out: &Path,
) -> Result<twinwall_bundle::Manifest, BuildError> {
    let meta = twinwall_bundle::BundleMeta {
        version,
        cluster: OS_UPDATE_CLUSTER.to_owned(),
        compatible: twinwall_bundle::DEFAULT_COMPATIBLE.to_owned(),
        created: std::time::UNIX_EPOCH + Duration::from_secs(epoch),
        rollback: false,
    };
    twinwall_bundle::create_file(
        twinwall_bundle::Kind::OsUpdate,
        &meta,
        &[twinwall_bundle::Payload {
            name: UPDATE_PAYLOAD.into(),
            source: twinwall_bundle::PayloadSource::File(slot.to_path_buf()),
        }],
        key,
        out,
    )
    .map_err(|e| BuildError::Bundle(e.to_string()))
}

/// Writes `DIR/SHA256SUMS` (sha256sum format) for the named files; returns them.
pub fn write_sums(dir: &Path, names: &[String]) -> Result<Vec<Artifact>, BuildError> {
    let mut artifacts = Vec::new();
    let mut sums = String::new();
    for n in names {
        let p = dir.join(n);
        let sha256 = rootfs::sha256_file(&p)?;
        let bytes = std::fs::metadata(&p).map_err(io(&p))?.len();
        sums.push_str(&format!("{sha256}  {n}\n"));
        artifacts.push(Artifact {
            name: n.clone(),
            bytes,
            sha256,
        });
    }
    let p = dir.join("SHA256SUMS");
    std::fs::write(&p, sums).map_err(io(&p))?;
    Ok(artifacts)
}

/// The `--xorriso` wrapper of [`build_iso`]: fixes the FAT volume serial of
/// grub-mkrescue's efi.img (in the ISO root it passes as an argument), then runs xorriso.
const XORRISO_WRAPPER: &str = r#"#!/bin/sh
# Generated by twinwall image build: pin the volume serial of grub-mkrescue's efi.img.
for a in "$@"; do
  if [ -f "$a/efi.img" ]; then
    printf '\167\027\012\013' | dd of="$a/efi.img" bs=1 seek=39 count=4 conv=notrunc status=none || exit 1
  fi
done
exec xorriso "$@"
"#;

/// The path of the slot image on the ISO.
pub const ISO_SLOT: &str = "/twinwall/slot.squashfs";

/// Builds the hybrid BIOS+UEFI ISO with grub-mkrescue: the slot squashfs as a file, and a
/// grub.cfg that loop-mounts it and boots its kernel live.
pub fn build_iso(slot: &Path, work: &Path, out: &Path, epoch: u64) -> Result<(), BuildError> {
    fresh_dir(work)?;
    mkdirs(work, &["boot/grub", "twinwall"])?;
    let cfg = work.join("boot/grub/grub.cfg");
    std::fs::write(&cfg, crate::grub::iso_config(ISO_SLOT)).map_err(io(&cfg))?;
    let dst = work.join(ISO_SLOT.trim_start_matches('/'));
    std::fs::copy(slot, &dst).map_err(io(&dst))?;
    reproducible::stamp_tree(work, epoch)?;
    let mods = [
        "linux",
        "normal",
        "iso9660",
        "squash4",
        "loopback",
        "echo",
        "test",
        "serial",
        "terminal",
        "search",
        "search_fs_uuid",
        "search_label",
        "part_gpt",
        "part_msdos",
        "fat",
        "configfile",
        "sleep",
        "reboot",
        "halt",
        "regexp",
        "smbios",
    ]
    .join(" ");
    let _ = std::fs::remove_file(out);
    // grub-mkrescue makes its EFI boot image with `mformat`, whose volume serial comes
    // from the clock; it has no option for it, but it runs xorriso through `--xorriso`:
    // this wrapper pins the serial (FAT12 BPB offset 39) of that efi.img, then execs the
    // real xorriso. A shell script on the build host, not in the image.
    let wrapper = work.with_extension("xorriso.sh");
    std::fs::write(&wrapper, XORRISO_WRAPPER).map_err(io(&wrapper))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755))
            .map_err(io(&wrapper))?;
    }
    let date = reproducible::iso_date(epoch);
    let epoch = epoch.to_string();
    let at = format!("={epoch}");
    tool::run_env(
        "grub-mkrescue",
        [
            format!("--xorriso={}", wrapper.display()),
            "-o".to_owned(),
            out.display().to_string(),
            format!("--install-modules={mods}"),
            format!("--modules={mods}"),
            "--fonts=".into(),
            "--locales=".into(),
            "--themes=".into(),
            work.display().to_string(),
            "--".into(),
            "-volid".into(),
            "TWINWALL".into(),
            // Native xorriso from here: every date from SOURCE_DATE_EPOCH (files, volume
            // creation/modification), and the volume and GPT disk UUIDs derived from it.
            "--".into(),
            "-volume_date".into(),
            "all_file_dates".into(),
            at.clone(),
            "-volume_date".into(),
            "c".into(),
            at.clone(),
            "-volume_date".into(),
            "m".into(),
            at,
            "-volume_date".into(),
            "uuid".into(),
            date,
            "-boot_image".into(),
            "any".into(),
            "gpt_disk_guid=volume_date_uuid".into(),
        ],
        None,
        &[("SOURCE_DATE_EPOCH", &epoch)],
    )?;
    Ok(())
}
