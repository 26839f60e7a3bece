//! `twinwall install DEVICE`: lays a twinwall disk out on a device from the live ISO (or
//! any running twinwall system), or from a twinwall.img on a build host.
//!
//! The appliance has none of the build tools (sgdisk, mkfs.vfat, mtools, grub-mkimage),
//! so the disk is not rebuilt there: `twinwall image build` assembles the disk once
//! without slot contents ([`crate::disk::build_disk`], the one copy of the layout logic)
//! and stores its non-zero blocks as a [`Template`] in every slot
//! (`/usr/share/twinwall/disk.tmpl`): protective MBR with GRUB's boot code, GPT, core.img,
//! the ESP (GRUB for BIOS and UEFI, grub.cfg, a fresh grubenv), an empty config and an
//! empty data filesystem. Installing writes that template, slot A from the running slot's
//! squashfs (the loop device over the ISO's `slot.squashfs`, or the slot partition), an
//! empty slot B, and the config partition — carried over byte for byte from the config
//! partition the running system mounted (or `--config-from`), else the template's empty
//! one, so the node boots fail-closed. Writing, read-back verification and the move of the
//! backup GPT to the end of a larger disk are [`crate::flash::write_verified`]; the
//! refusals are flash's [`check_target`] plus the live medium itself. Everything is
//! resolved and checked before the target is opened for writing.

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::flash::{self, FlashError, TargetKind, check_target, device_family, devno};
use crate::layout::{self, GptEntry, GptError, SECTOR};

/// Where the template lives in a slot's root tree.
pub const TEMPLATE_FILE: &str = "usr/share/twinwall/disk.tmpl";
/// Where the running system mounted its config partition (init's contract).
pub const CONFIG_MOUNT: &str = "/run/twinwall/config";

const MAGIC: &[u8; 8] = b"TWDISK1\n";
/// Template granularity: a block that is all zeros is left out.
const BLOCK: usize = 4096;

/// Errors of install, each naming the file or device at fault.
#[derive(Debug, Error)]
pub enum InstallError {
    /// IO on a named file or device.
    #[error("{path}: {source}")]
    Io {
        /// File or device.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The disk template is damaged or not one.
    #[error("{path}: not a twinwall disk template ({reason})")]
    BadTemplate {
        /// The template file.
        path: PathBuf,
        /// What is wrong.
        reason: &'static str,
    },
    /// A partition table could not be read.
    #[error("{path}: {source}")]
    Gpt {
        /// Image, device or template.
        path: PathBuf,
        /// Cause.
        source: GptError,
    },
    /// A partition the layout needs is missing.
    #[error("{path} has no partition named `{name}`")]
    NoPartition {
        /// Image or template.
        path: PathBuf,
        /// PARTNAME.
        name: &'static str,
    },
    /// The slot source holds no squashfs.
    #[error("{path}: no squashfs slot image at offset {offset}")]
    NotSquashfs {
        /// Device or image.
        path: PathBuf,
        /// Where it was looked for.
        offset: u64,
    },
    /// The slot image does not fit into a slot partition.
    #[error("{path}: slot image is {size} bytes, the slot partition holds {room}")]
    SlotTooLarge {
        /// Source.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// Partition size.
        room: u64,
    },
    /// The config source is neither ext4 nor vfat.
    #[error("{path}: no ext4 or vfat config filesystem found")]
    NotAFilesystem {
        /// Source.
        path: PathBuf,
    },
    /// The config filesystem does not fit into the config partition.
    #[error("{path}: config filesystem is {size} bytes, the config partition holds {room}")]
    ConfigTooLarge {
        /// Source.
        path: PathBuf,
        /// Filesystem size.
        size: u64,
        /// Partition size.
        room: u64,
    },
    /// The target is (or holds) the medium the install reads from.
    #[error("{target} is the installation medium ({medium}); choose another disk")]
    LiveMedium {
        /// Target.
        target: PathBuf,
        /// The device or file the slot is read from.
        medium: String,
    },
    /// No `--from` and the running system is not a twinwall slot.
    #[error("/ is not a running twinwall slot ({reason}); give --from twinwall.img")]
    NotRunningSlot {
        /// Why.
        reason: String,
    },
    /// A target refusal or a write/verify failure (shared with flash).
    #[error(transparent)]
    Flash(#[from] FlashError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> InstallError + '_ {
    move |source| InstallError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One run of non-zero bytes of the disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extent {
    /// Byte offset on the disk.
    pub offset: u64,
    /// The bytes.
    pub data: Vec<u8>,
}

/// A twinwall disk without slot contents, as its non-zero blocks. Encoded as
/// `TWDISK1\n`, total size (u64 LE), extent count (u64), per extent offset, length and
/// bytes, then the sha256 of everything before it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    /// Size of the whole disk in bytes.
    pub total_bytes: u64,
    /// Non-zero runs, in order, not overlapping.
    pub extents: Vec<Extent>,
}

fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 < b.1 && b.0 < a.1
}

impl Template {
    /// Reads a disk (image file or device) of `total` bytes, leaving out zero blocks and
    /// the byte ranges `skip` (`[start, end)`, e.g. the slot partitions).
    pub fn from_disk(disk: &File, total: u64, skip: &[(u64, u64)]) -> std::io::Result<Self> {
        let mut extents: Vec<Extent> = Vec::new();
        let mut buf = vec![0u8; 4 << 20];
        let mut pos = 0u64;
        while pos < total {
            let n = (total - pos).min(buf.len() as u64) as usize;
            disk.read_exact_at(&mut buf[..n], pos)?;
            for (i, block) in buf[..n].chunks(BLOCK).enumerate() {
                let at = pos + (i * BLOCK) as u64;
                let range = (at, at + block.len() as u64);
                if block.iter().all(|&b| b == 0) || skip.iter().any(|s| overlaps(range, *s)) {
                    continue;
                }
                match extents.last_mut() {
                    Some(e) if e.offset + e.data.len() as u64 == at => {
                        e.data.extend_from_slice(block)
                    }
                    _ => extents.push(Extent {
                        offset: at,
                        data: block.to_vec(),
                    }),
                }
            }
            pos += n as u64;
        }
        Ok(Template {
            total_bytes: total,
            extents,
        })
    }

    /// The encoded template.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&self.total_bytes.to_le_bytes());
        out.extend_from_slice(&(self.extents.len() as u64).to_le_bytes());
        for e in &self.extents {
            out.extend_from_slice(&e.offset.to_le_bytes());
            out.extend_from_slice(&(e.data.len() as u64).to_le_bytes());
            out.extend_from_slice(&e.data);
        }
        let sum = Sha256::digest(&out);
        out.extend_from_slice(&sum);
        out
    }

    /// Decodes [`Template::encode`]'s output, checking its digest and bounds.
    pub fn decode(b: &[u8]) -> Result<Self, &'static str> {
        if b.len() < 24 + 32 || &b[..8] != MAGIC {
            return Err("bad magic");
        }
        let (body, sum) = b.split_at(b.len() - 32);
        if Sha256::digest(body).as_slice() != sum {
            return Err("checksum mismatch");
        }
        let u64_at = |o: usize| -> Result<u64, &'static str> {
            body.get(o..o + 8)
                .map(|s| u64::from_le_bytes(s.try_into().expect("8 bytes")))
                .ok_or("truncated")
        };
        let total_bytes = u64_at(8)?;
        let count = u64_at(16)?;
        let mut extents = Vec::new();
        let mut o = 24usize;
        let mut end = 0u64;
        for _ in 0..count {
            let offset = u64_at(o)?;
            let len = u64_at(o + 8)? as usize;
            let data = body.get(o + 16..o + 16 + len).ok_or("truncated")?;
            if offset < end || offset + len as u64 > total_bytes {
                return Err("extent out of order or beyond the disk");
            }
            end = offset + len as u64;
            extents.push(Extent {
                offset,
                data: data.to_vec(),
            });
            o += 16 + len;
        }
        if o != body.len() {
            return Err("trailing bytes");
        }
        Ok(Template {
            total_bytes,
            extents,
        })
    }

    /// Copies the template's bytes that fall into `[pos, pos + buf.len())` into `buf`
    /// (which the caller zeroed).
    pub fn overlay(&self, pos: u64, buf: &mut [u8]) {
        let end = pos + buf.len() as u64;
        for e in &self.extents {
            let (s, t) = (e.offset.max(pos), (e.offset + e.data.len() as u64).min(end));
            if s < t {
                buf[(s - pos) as usize..(t - pos) as usize]
                    .copy_from_slice(&e.data[(s - e.offset) as usize..(t - e.offset) as usize]);
            }
        }
    }

    /// The partitions of the template's GPT.
    pub fn partitions(&self) -> Result<Vec<GptEntry>, GptError> {
        let mut head = vec![0u8; 34 * SECTOR as usize];
        self.overlay(0, &mut head);
        layout::read_gpt(&head)
    }
}

/// Bytes of a source file or device copied into one partition of the target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Region {
    /// The partition's offset on the target.
    pub offset: u64,
    /// The partition's size; the part after `len` is zeroed.
    pub room: u64,
    /// Where the bytes come from.
    pub source: PathBuf,
    /// Their offset in the source.
    pub source_offset: u64,
    /// How many bytes.
    pub len: u64,
}

/// Where the disk contents come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The running system: the template in its root, slot A from the device mounted at
    /// `/` (the live ISO's loop device or a slot partition).
    Running,
    /// A twinwall.img (file or device): its non-slot blocks are the template, its slot A
    /// is slot A.
    Image(PathBuf),
}

/// What goes into the config partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigChoice {
    /// The running system's config partition if it mounted one; from an image, the
    /// image's own config partition.
    Default,
    /// The template's empty config filesystem (the node boots fail-closed).
    Empty,
    /// A config partition (device or filesystem image), or a twinwall disk/image whose
    /// `config` partition is taken.
    From(PathBuf),
}

/// What to install where.
#[derive(Debug, Clone)]
pub struct InstallOptions {
    /// Target block device or file.
    pub target: PathBuf,
    /// Disk contents.
    pub from: Source,
    /// Config partition contents.
    pub config: ConfigChoice,
    /// Show a progress bar on stderr.
    pub progress: bool,
    /// `/proc/self/mountinfo` (tests may point elsewhere).
    pub mountinfo: PathBuf,
    /// The running system's root (for [`Source::Running`]'s template).
    pub root: PathBuf,
}

impl InstallOptions {
    /// Options with the running system's paths.
    pub fn new(target: PathBuf, from: Source, config: ConfigChoice) -> Self {
        InstallOptions {
            target,
            from,
            config,
            progress: false,
            mountinfo: PathBuf::from("/proc/self/mountinfo"),
            root: PathBuf::from("/"),
        }
    }
}

/// What the config partition gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigPlan {
    /// The template's bytes (an image's own config partition).
    Keep,
    /// Zeros: no filesystem, so the node boots fail-closed ("config partition not
    /// flashed") until it is flashed or installed with a config.
    Empty {
        /// The partition's offset.
        offset: u64,
        /// Its size.
        room: u64,
    },
    /// A config filesystem carried over.
    Copy(Region),
}

/// Everything resolved and checked before a byte is written.
#[derive(Debug, Clone)]
pub struct InstallPlan {
    /// The disk without slots.
    pub template: Template,
    /// Slot A.
    pub slot: Region,
    /// The config partition.
    pub config: ConfigPlan,
    /// Device numbers (`major:minor`) the install reads from: the target must not be one.
    pub medium: Vec<String>,
    /// Human description of the medium, for the refusal.
    pub medium_name: String,
}

/// What the config partition got, for the report.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum ConfigOutcome {
    /// Copied from a config partition.
    CarriedOver {
        /// Source device or file.
        from: PathBuf,
        /// Filesystem bytes copied.
        bytes: u64,
    },
    /// Left empty: the node boots fail-closed.
    Empty,
    /// The source image's own config partition.
    FromImage,
}

/// The result of an install.
#[derive(Debug, Clone, Serialize)]
pub struct InstallReport {
    /// Target.
    pub target: PathBuf,
    /// Target kind.
    pub kind: TargetKind,
    /// Bytes written and read back.
    pub bytes: u64,
    /// Their sha256.
    pub sha256: String,
    /// Where slot A came from.
    pub slot_source: PathBuf,
    /// Size of the slot image.
    pub slot_bytes: u64,
    /// What the config partition got.
    pub config: ConfigOutcome,
    /// Whether the backup GPT was moved to the end of a larger device.
    pub gpt_relocated: bool,
}

fn part<'a>(
    parts: &'a [GptEntry],
    path: &Path,
    name: &'static str,
) -> Result<&'a GptEntry, InstallError> {
    parts
        .iter()
        .find(|p| p.name == name)
        .ok_or_else(|| InstallError::NoPartition {
            path: path.to_path_buf(),
            name,
        })
}

fn open_len(path: &Path) -> Result<(File, u64), InstallError> {
    let mut f = File::open(path).map_err(io(path))?;
    let len = f.seek(SeekFrom::End(0)).map_err(io(path))?;
    Ok((f, len))
}

fn read_at(f: &File, path: &Path, offset: u64, n: usize) -> Result<Vec<u8>, InstallError> {
    let mut b = vec![0u8; n];
    f.read_exact_at(&mut b, offset).map_err(io(path))?;
    Ok(b)
}

/// The size of the squashfs at `offset` (its `bytes_used`, rounded up to mksquashfs's
/// 4 KiB padding), or None when there is none.
pub fn squashfs_len(superblock: &[u8]) -> Option<u64> {
    if superblock.len() < 48 || &superblock[..4] != b"hsqs" {
        return None;
    }
    let used = u64::from_le_bytes(superblock[40..48].try_into().expect("8 bytes"));
    Some(used.div_ceil(4096) * 4096)
}

/// The size of the ext4 or FAT filesystem whose first 2 KiB are `head`, or None.
pub fn filesystem_len(head: &[u8]) -> Option<u64> {
    if head.len() < 2048 {
        return None;
    }
    let sb = &head[1024..2048];
    if u16::from_le_bytes([sb[56], sb[57]]) == 0xEF53 {
        let lo = u32::from_le_bytes(sb[4..8].try_into().expect("4 bytes")) as u64;
        let log = u32::from_le_bytes(sb[24..28].try_into().expect("4 bytes"));
        let incompat = u32::from_le_bytes(sb[96..100].try_into().expect("4 bytes"));
        // INCOMPAT_64BIT: the block count's high half is at 0x150.
        let hi = if incompat & 0x80 != 0 {
            u32::from_le_bytes(sb[0x150..0x154].try_into().expect("4 bytes")) as u64
        } else {
            0
        };
        return Some(((hi << 32) | lo) << (10 + log.min(6)));
    }
    let fat = head[510] == 0x55
        && head[511] == 0xAA
        && (&head[54..57] == b"FAT" || &head[82..85] == b"FAT");
    if fat {
        let bps = u16::from_le_bytes([head[11], head[12]]) as u64;
        let small = u16::from_le_bytes([head[19], head[20]]) as u64;
        let large = u32::from_le_bytes(head[32..36].try_into().expect("4 bytes")) as u64;
        return Some(bps * if small != 0 { small } else { large });
    }
    None
}

/// The config partition of a source: the `config` partition of a GPT disk, else the
/// whole file or device; the copied length is its filesystem's size.
fn config_region(path: &Path, target_part: &GptEntry) -> Result<Region, InstallError> {
    let (f, len) = open_len(path)?;
    let head = read_at(&f, path, 0, (34 * SECTOR).min(len) as usize)?;
    let (offset, size) = match layout::read_gpt(&head) {
        Ok(parts) => {
            let p = part(&parts, path, "config")?;
            (p.offset(), p.size())
        }
        Err(_) => (0, len),
    };
    let fs_head = read_at(&f, path, offset, 2048.min(size) as usize)?;
    let fs_len = filesystem_len(&fs_head).ok_or_else(|| InstallError::NotAFilesystem {
        path: path.to_path_buf(),
    })?;
    if fs_len > target_part.size() || fs_len > size {
        return Err(InstallError::ConfigTooLarge {
            path: path.to_path_buf(),
            size: fs_len,
            room: target_part.size(),
        });
    }
    Ok(Region {
        offset: target_part.offset(),
        room: target_part.size(),
        source: path.to_path_buf(),
        source_offset: offset,
        len: fs_len,
    })
}

fn slot_region(
    path: &Path,
    f: &File,
    source_offset: u64,
    source_room: u64,
    target_part: &GptEntry,
) -> Result<Region, InstallError> {
    let sb = read_at(f, path, source_offset, 48)?;
    let len = squashfs_len(&sb).ok_or_else(|| InstallError::NotSquashfs {
        path: path.to_path_buf(),
        offset: source_offset,
    })?;
    let len = len.min(source_room);
    if len > target_part.size() {
        return Err(InstallError::SlotTooLarge {
            path: path.to_path_buf(),
            size: len,
            room: target_part.size(),
        });
    }
    Ok(Region {
        offset: target_part.offset(),
        room: target_part.size(),
        source: path.to_path_buf(),
        source_offset,
        len,
    })
}

/// `/dev/NAME` of a device number, from sysfs (the appliance has no udev links).
fn dev_path(devnum: &str) -> Option<PathBuf> {
    let ev = std::fs::read_to_string(format!("/sys/dev/block/{devnum}/uevent")).ok()?;
    ev.lines()
        .find_map(|l| l.strip_prefix("DEVNAME="))
        .map(|n| PathBuf::from(format!("/dev/{n}")))
}

/// The device numbers an install from `path` reads: the device itself, for a loop device
/// the filesystem holding its backing file (the ISO's CD or USB stick), for a file the
/// filesystem holding it.
fn medium_of(path: &Path, mounts: &[flash::Mount]) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(meta) = std::fs::metadata(path) else {
        return out;
    };
    if meta.file_type().is_block_device() {
        let d = devno(meta.rdev());
        let backing = std::fs::read_to_string(format!("/sys/dev/block/{d}/loop/backing_file"));
        if let Ok(b) = backing {
            if let Ok(m) = std::fs::metadata(b.trim()) {
                out.push(devno(m.dev()));
            }
            // A live ISO: whatever iso9660 is mounted is the medium too.
            out.extend(
                mounts
                    .iter()
                    .filter(|m| m.fstype == "iso9660")
                    .map(|m| m.device.clone()),
            );
        }
        out.push(d);
    } else {
        out.push(devno(meta.dev()));
    }
    out.dedup();
    out
}

/// Resolves sources and checks them; reads, never writes.
pub fn plan(opts: &InstallOptions) -> Result<InstallPlan, InstallError> {
    let mountinfo = std::fs::read_to_string(&opts.mountinfo).map_err(io(&opts.mountinfo))?;
    let mounts = flash::parse_mountinfo(&mountinfo);
    let (template, slot_src, slot_off, slot_room, tmpl_path) = match &opts.from {
        Source::Image(img) => {
            let (f, len) = open_len(img)?;
            let head = read_at(&f, img, 0, (34 * SECTOR).min(len) as usize)?;
            let parts = layout::read_gpt(&head).map_err(|source| InstallError::Gpt {
                path: img.clone(),
                source,
            })?;
            let (a, b) = (part(&parts, img, "slot-a")?, part(&parts, img, "slot-b")?);
            let skip = [
                (a.offset(), a.offset() + a.size()),
                (b.offset(), b.offset() + b.size()),
            ];
            let t = Template::from_disk(&f, len, &skip).map_err(io(img))?;
            (t, img.clone(), a.offset(), a.size(), img.clone())
        }
        Source::Running => {
            let root = mounts
                .iter()
                .rev()
                .find(|m| m.mountpoint == "/")
                .ok_or_else(|| InstallError::NotRunningSlot {
                    reason: "no mount at / in mountinfo".into(),
                })?;
            if root.fstype != "squashfs" {
                return Err(InstallError::NotRunningSlot {
                    reason: format!("/ is {} on {}", root.fstype, root.device),
                });
            }
            let dev = dev_path(&root.device).ok_or_else(|| InstallError::NotRunningSlot {
                reason: format!("no device node for {}", root.device),
            })?;
            let tp = opts.root.join(TEMPLATE_FILE);
            let bytes = std::fs::read(&tp).map_err(io(&tp))?;
            let t = Template::decode(&bytes).map_err(|reason| InstallError::BadTemplate {
                path: tp.clone(),
                reason,
            })?;
            let (_, len) = open_len(&dev)?;
            (t, dev, 0, len, tp)
        }
    };
    let parts = template.partitions().map_err(|source| InstallError::Gpt {
        path: tmpl_path.clone(),
        source,
    })?;
    let slot_part = part(&parts, &tmpl_path, "slot-a")?;
    let config_part = part(&parts, &tmpl_path, "config")?;
    let f = File::open(&slot_src).map_err(io(&slot_src))?;
    let slot = slot_region(&slot_src, &f, slot_off, slot_room, slot_part)?;
    let empty = || ConfigPlan::Empty {
        offset: config_part.offset(),
        room: config_part.size(),
    };
    let config = match (&opts.config, &opts.from) {
        (ConfigChoice::Empty, _) => empty(),
        (ConfigChoice::Default, Source::Image(_)) => ConfigPlan::Keep,
        (ConfigChoice::From(p), _) => ConfigPlan::Copy(config_region(p, config_part)?),
        (ConfigChoice::Default, Source::Running) => match mounts
            .iter()
            .rev()
            .find(|m| m.mountpoint == CONFIG_MOUNT)
            .and_then(|m| dev_path(&m.device))
        {
            Some(d) => ConfigPlan::Copy(config_region(&d, config_part)?),
            None => empty(),
        },
    };
    let medium = medium_of(&slot_src, &mounts);
    Ok(InstallPlan {
        template,
        slot,
        config,
        medium,
        medium_name: slot_src.display().to_string(),
    })
}

fn fill_region(r: &Region, src: &File, pos: u64, buf: &mut [u8]) -> Result<(), FlashError> {
    let end = pos + buf.len() as u64;
    let (s, t) = (r.offset.max(pos), (r.offset + r.room).min(end));
    if s >= t {
        return Ok(());
    }
    buf[(s - pos) as usize..(t - pos) as usize].fill(0);
    let (s, t) = (r.offset.max(pos), (r.offset + r.len).min(end));
    if s < t {
        src.read_exact_at(
            &mut buf[(s - pos) as usize..(t - pos) as usize],
            r.source_offset + (s - r.offset),
        )
        .map_err(|source| FlashError::Io {
            path: r.source.clone(),
            source,
        })?;
    }
    Ok(())
}

/// Checks the target against the plan: not the medium, then flash's refusals (mounted,
/// system disk, held, too small, the source itself).
pub fn check(opts: &InstallOptions, p: &InstallPlan) -> Result<TargetKind, InstallError> {
    if let Ok(meta) = std::fs::metadata(&opts.target) {
        let family = if meta.file_type().is_block_device() {
            device_family(&devno(meta.rdev())).0
        } else {
            Vec::new()
        };
        let same_file = !meta.file_type().is_block_device()
            && std::fs::metadata(&p.slot.source)
                .is_ok_and(|s| s.dev() == meta.dev() && s.ino() == meta.ino());
        if same_file || family.iter().any(|d| p.medium.contains(d)) {
            return Err(InstallError::LiveMedium {
                target: opts.target.clone(),
                medium: p.medium_name.clone(),
            });
        }
    }
    Ok(check_target(
        &opts.target,
        &p.slot.source,
        p.template.total_bytes,
    )?)
}

/// Installs; see the module doc. Nothing is written when a check fails.
pub fn install(opts: &InstallOptions) -> Result<InstallReport, InstallError> {
    let p = plan(opts)?;
    let kind = check(opts, &p)?;
    let slot_file = File::open(&p.slot.source).map_err(io(&p.slot.source))?;
    let config_file = match &p.config {
        ConfigPlan::Copy(c) => Some(File::open(&c.source).map_err(io(&c.source))?),
        _ => None,
    };
    let tracing_target = opts.target.display().to_string();
    tracing::info!(target = %tracing_target, slot = %p.slot.source.display(), slot_bytes = p.slot.len, "installing");
    let written = flash::write_verified(
        &opts.target,
        kind,
        p.template.total_bytes,
        opts.progress,
        &mut |pos, buf| {
            buf.fill(0);
            p.template.overlay(pos, buf);
            fill_region(&p.slot, &slot_file, pos, buf)?;
            match (&p.config, &config_file) {
                (ConfigPlan::Copy(c), Some(f)) => fill_region(c, f, pos, buf)?,
                (&ConfigPlan::Empty { offset, room }, _) => {
                    let (s, t) = (offset.max(pos), (offset + room).min(pos + buf.len() as u64));
                    if s < t {
                        buf[(s - pos) as usize..(t - pos) as usize].fill(0);
                    }
                }
                _ => {}
            }
            Ok(())
        },
    )?;
    if kind == TargetKind::BlockDevice {
        reread_partitions(&opts.target);
    }
    tracing::info!(target = %tracing_target, bytes = p.template.total_bytes, "installed and verified");
    Ok(InstallReport {
        target: opts.target.clone(),
        kind,
        bytes: p.template.total_bytes,
        sha256: written.sha256,
        slot_source: p.slot.source.clone(),
        slot_bytes: p.slot.len,
        config: match &p.config {
            ConfigPlan::Copy(c) => ConfigOutcome::CarriedOver {
                from: c.source.clone(),
                bytes: c.len,
            },
            ConfigPlan::Empty { .. } => ConfigOutcome::Empty,
            ConfigPlan::Keep => ConfigOutcome::FromImage,
        },
        gpt_relocated: written.gpt_relocated,
    })
}

nix::ioctl_none!(blkrrpart, 0x12, 95);

/// Asks the kernel to re-read the partition table, so the new partitions appear without a
/// reboot. Failure only means they appear after the next boot.
fn reread_partitions(dev: &Path) {
    use std::os::fd::AsRawFd;
    let Ok(f) = File::open(dev) else { return };
    // SAFETY: BLKRRPART takes no argument; the fd is a block device open for the call.
    if let Err(e) = unsafe { blkrrpart(f.as_raw_fd()) } {
        tracing::warn!(device = %dev.display(), error = %e, "partition table not re-read");
    }
}

/// Builds the template of a disk image without slot contents (the build's step).
pub fn template_of_image(image: &Path) -> Result<Template, InstallError> {
    let (f, len) = open_len(image)?;
    let head = read_at(&f, image, 0, (34 * SECTOR).min(len) as usize)?;
    let parts = layout::read_gpt(&head).map_err(|source| InstallError::Gpt {
        path: image.to_path_buf(),
        source,
    })?;
    let (a, b) = (
        part(&parts, image, "slot-a")?,
        part(&parts, image, "slot-b")?,
    );
    let skip = [
        (a.offset(), a.offset() + a.size()),
        (b.offset(), b.offset() + b.size()),
    ];
    Template::from_disk(&f, len, &skip).map_err(io(image))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Template {
        Template {
            total_bytes: 1 << 20,
            extents: vec![
                Extent {
                    offset: 0,
                    data: vec![1; 4096],
                },
                Extent {
                    offset: 8192,
                    data: vec![2; 100],
                },
            ],
        }
    }

    #[test]
    fn template_round_trips_and_rejects_damage() {
        let t = sample();
        let b = t.encode();
        assert_eq!(Template::decode(&b).unwrap(), t);
        let mut bad = b.clone();
        bad[30] ^= 1;
        assert_eq!(Template::decode(&bad), Err("checksum mismatch"));
        assert_eq!(Template::decode(b"nope"), Err("bad magic"));
        assert_eq!(
            Template::decode(&b[..b.len() - 1]),
            Err("checksum mismatch")
        );
    }

    #[test]
    fn overlay_copies_only_the_window() {
        let t = sample();
        let mut buf = vec![0u8; 8];
        t.overlay(4092, &mut buf);
        assert_eq!(buf, [1, 1, 1, 1, 0, 0, 0, 0]);
        let mut buf = vec![0u8; 4];
        t.overlay(8190, &mut buf);
        assert_eq!(buf, [0, 0, 2, 2]);
    }

    #[test]
    fn from_disk_skips_zeros_and_ranges() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d");
        let mut d = vec![0u8; 64 * 1024];
        d[10] = 7;
        d[4096 + 5] = 8; // adjacent block: merged
        d[5 * 4096] = 9; // skipped range
        d[9 * 4096] = 10;
        std::fs::write(&p, &d).unwrap();
        let f = File::open(&p).unwrap();
        let t = Template::from_disk(&f, d.len() as u64, &[(5 * 4096, 6 * 4096)]).unwrap();
        assert_eq!(t.extents.len(), 2);
        assert_eq!(t.extents[0].offset, 0);
        assert_eq!(t.extents[0].data.len(), 8192);
        assert_eq!(t.extents[1].offset, 9 * 4096);
        let mut back = vec![0u8; d.len()];
        t.overlay(0, &mut back);
        d[5 * 4096] = 0;
        assert_eq!(back, d);
    }

    #[test]
    fn filesystem_sizes() {
        let mut ext4 = vec![0u8; 2048];
        ext4[1024 + 56..1024 + 58].copy_from_slice(&0xEF53u16.to_le_bytes());
        ext4[1024 + 4..1024 + 8].copy_from_slice(&8192u32.to_le_bytes());
        ext4[1024 + 24..1024 + 28].copy_from_slice(&2u32.to_le_bytes());
        assert_eq!(filesystem_len(&ext4), Some(8192 * 4096));
        let mut fat = vec![0u8; 2048];
        fat[510] = 0x55;
        fat[511] = 0xAA;
        fat[82..85].copy_from_slice(b"FAT");
        fat[11..13].copy_from_slice(&512u16.to_le_bytes());
        fat[32..36].copy_from_slice(&65536u32.to_le_bytes());
        assert_eq!(filesystem_len(&fat), Some(32 << 20));
        assert_eq!(filesystem_len(&[0u8; 2048]), None);
        let mut sq = vec![0u8; 48];
        sq[..4].copy_from_slice(b"hsqs");
        sq[40..48].copy_from_slice(&5000u64.to_le_bytes());
        assert_eq!(squashfs_len(&sq), Some(8192));
        assert_eq!(squashfs_len(&[0u8; 48]), None);
    }
}
