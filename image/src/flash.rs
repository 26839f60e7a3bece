//! `twinwall flash`: writes twinwall.img to a block device or a file, fills the config
//! partition for one node (ext4 made with `mke2fs -d`, no mount needed), verifies by
//! reading everything back, and refuses targets that must not be written: a mounted
//! device (or one with a mounted partition), the disk that holds `/`, a device smaller
//! than the image, and the image itself.
//!
//! Config partition layout (the init area's contract):
//! `node`, `trusted/*.pub`, `sync.key` (0600), `bundles/active.bundle`,
//! `installed-version`.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::disk::{self, DiskError};
use crate::layout::{self, GptEntry, GptError};

/// First word of a sync key file (the bundle area's `twinwall-sync-key-v1 <base64>`).
pub const SYNC_HEADER: &str = twinwall_bundle::keys::SYNC_HEADER;

/// Errors of flashing, each naming the target or input at fault.
#[derive(Debug, Error)]
pub enum FlashError {
    /// The target (or a partition of it) is mounted.
    #[error("{target} is mounted at {mountpoint} ({device}); unmount it first")]
    Mounted {
        /// Target.
        target: PathBuf,
        /// Where.
        mountpoint: String,
        /// The mounted device number `major:minor`.
        device: String,
    },
    /// The target holds the running system's root filesystem.
    #[error("{target} holds the running system's root filesystem (/); refusing to overwrite it")]
    SystemDisk {
        /// Target.
        target: PathBuf,
    },
    /// The target is used by device-mapper, md or similar.
    #[error("{target} is in use by {holder} (device-mapper/md/LVM); refusing to overwrite it")]
    Held {
        /// Target.
        target: PathBuf,
        /// The holder device.
        holder: String,
    },
    /// The target device is smaller than the image.
    #[error("{target} has {size} bytes, the image needs {needed}")]
    TooSmall {
        /// Target.
        target: PathBuf,
        /// Its size.
        size: u64,
        /// Image size.
        needed: u64,
    },
    /// Target and image are the same file.
    #[error("{target} is the image itself")]
    SameFile {
        /// Target.
        target: PathBuf,
    },
    /// The target is neither a block device nor a regular file (or missing directory).
    #[error("{target} is not a block device or a regular file")]
    NotATarget {
        /// Target.
        target: PathBuf,
    },
    /// The node name is unusable.
    #[error("invalid node name {node:?}: use letters, digits, '-' and '_'")]
    BadNode {
        /// The name.
        node: String,
    },
    /// A sync key file is malformed.
    #[error("{path}: not a sync key (expected `{SYNC_HEADER} <base64 of 32 bytes>`)")]
    BadSyncKey {
        /// File.
        path: PathBuf,
    },
    /// The image's partition table is unusable.
    #[error("{image}: {source}")]
    Gpt {
        /// Image.
        image: PathBuf,
        /// What is wrong.
        source: GptError,
    },
    /// The image has no partition named `config`.
    #[error("{image} has no partition named `config`")]
    NoConfigPartition {
        /// Image.
        image: PathBuf,
    },
    /// Reading back found different bytes.
    #[error("verification of {target} failed: read back sha256 {actual}, wrote {expected}")]
    Verify {
        /// Target.
        target: PathBuf,
        /// Written.
        expected: String,
        /// Read.
        actual: String,
    },
    /// Building the config filesystem failed.
    #[error(transparent)]
    Disk(#[from] DiskError),
    /// Moving the backup GPT to the end of a larger device failed.
    #[error("{target}: cannot move the backup GPT to the end: {source}")]
    Relocate {
        /// Target.
        target: PathBuf,
        /// Cause.
        source: layout::RelocateError,
    },
    /// IO on a named file.
    #[error("{path}: {source}")]
    Io {
        /// File.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// No randomness for the sync key.
    #[error("cannot generate a sync key: {0}")]
    Random(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> FlashError + '_ {
    move |source| FlashError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What to flash.
#[derive(Debug, Clone)]
pub struct FlashOptions {
    /// twinwall.img.
    pub image: PathBuf,
    /// Block device or file.
    pub target: PathBuf,
    /// Node identity (a key of `[nodes]` in the cluster config).
    pub node: String,
    /// The first config bundle.
    pub bundle: Option<PathBuf>,
    /// Public keys trusted to sign config bundles.
    pub trust: Vec<PathBuf>,
    /// The pair's sync key: reused when the file exists, created there (0600) otherwise.
    /// None: a fresh key that only the flashed node holds.
    pub sync_key: Option<PathBuf>,
    /// Anti-rollback floor written to `installed-version`.
    pub installed_version: u64,
    /// Scratch directory.
    pub work: PathBuf,
    /// Show progress on stderr.
    pub progress: bool,
    /// SOURCE_DATE_EPOCH for the config filesystem.
    pub epoch: u64,
}

/// What kind of target was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TargetKind {
    /// A block device.
    BlockDevice,
    /// A regular file (created if missing).
    File,
}

/// The result of a flash.
#[derive(Debug, Clone, Serialize)]
pub struct FlashReport {
    /// Target kind.
    pub kind: TargetKind,
    /// Bytes written (and read back).
    pub bytes: u64,
    /// sha256 of what was written, equal to what was read back.
    pub sha256: String,
    /// Files in the config partition.
    pub config_files: Vec<String>,
    /// Whether the sync key was generated now.
    pub sync_key_generated: bool,
    /// Whether the backup GPT was moved to the end of a larger device.
    pub gpt_relocated: bool,
}

/// One mount from `/proc/self/mountinfo`: device number and mount point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// `major:minor`.
    pub device: String,
    /// Mount point.
    pub mountpoint: String,
    /// Filesystem type (the first field after ` - `).
    pub fstype: String,
}

/// Parses `/proc/self/mountinfo` (fields 3 and 5, and the type after the separator).
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let sep = f.iter().position(|x| *x == "-")?;
            Some(Mount {
                device: f.get(2)?.to_string(),
                mountpoint: f.get(4)?.replace("\\040", " "),
                fstype: f.get(sep + 1)?.to_string(),
            })
        })
        .collect()
}

/// `major:minor` of a device number.
pub fn devno(rdev: u64) -> String {
    format!(
        "{}:{}",
        nix::sys::stat::major(rdev),
        nix::sys::stat::minor(rdev)
    )
}

/// The device numbers (`major:minor`) of a whole block device and its partitions, and
/// the names of its holders.
pub fn device_family(devnum: &str) -> (Vec<String>, Vec<String>) {
    let base = PathBuf::from(format!("/sys/dev/block/{devnum}"));
    let mut devs = vec![devnum.to_owned()];
    let mut holders = Vec::new();
    let mut dirs = vec![base.clone()];
    if let Ok(rd) = std::fs::read_dir(&base) {
        for e in rd.flatten() {
            if e.path().join("partition").exists() {
                if let Ok(d) = std::fs::read_to_string(e.path().join("dev")) {
                    devs.push(d.trim().to_owned());
                }
                dirs.push(e.path());
            }
        }
    }
    for d in dirs {
        if let Ok(rd) = std::fs::read_dir(d.join("holders")) {
            holders.extend(
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned()),
            );
        }
    }
    (devs, holders)
}

/// The refusal checks, read-only: returns the target kind and its current size. Nothing
/// is opened for writing.
pub fn check_target(target: &Path, image: &Path, needed: u64) -> Result<TargetKind, FlashError> {
    let meta = match std::fs::metadata(target) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(TargetKind::File),
        Err(e) => return Err(io(target)(e)),
    };
    let img_meta = std::fs::metadata(image).map_err(io(image))?;
    if meta.dev() == img_meta.dev() && meta.ino() == img_meta.ino() {
        return Err(FlashError::SameFile {
            target: target.into(),
        });
    }
    if meta.file_type().is_file() {
        return Ok(TargetKind::File);
    }
    if !meta.file_type().is_block_device() {
        return Err(FlashError::NotATarget {
            target: target.into(),
        });
    }
    let (family, holders) = device_family(&devno(meta.rdev()));
    let root_dev = devno(std::fs::metadata("/").map_err(io(Path::new("/")))?.dev());
    if family.contains(&root_dev) {
        return Err(FlashError::SystemDisk {
            target: target.into(),
        });
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(io(Path::new("/proc/self/mountinfo")))?;
    if let Some(m) = parse_mountinfo(&mountinfo)
        .into_iter()
        .find(|m| family.contains(&m.device))
    {
        return Err(FlashError::Mounted {
            target: target.into(),
            mountpoint: m.mountpoint,
            device: m.device,
        });
    }
    if let Some(h) = holders.into_iter().next() {
        return Err(FlashError::Held {
            target: target.into(),
            holder: h,
        });
    }
    let size = File::open(target)
        .and_then(|mut f| f.seek(SeekFrom::End(0)))
        .map_err(io(target))?;
    if size < needed {
        return Err(FlashError::TooSmall {
            target: target.into(),
            size,
            needed,
        });
    }
    Ok(TargetKind::BlockDevice)
}

/// A new sync key file's text (the bundle area's format, `SyncKey::encode`).
pub fn new_sync_key() -> Result<String, FlashError> {
    let k = twinwall_bundle::SyncKey::generate().map_err(|e| FlashError::Random(e.to_string()))?;
    Ok(k.encode().as_str().to_owned())
}

/// Checks a sync key file's text.
pub fn check_sync_key(path: &Path, text: &str) -> Result<(), FlashError> {
    twinwall_bundle::SyncKey::parse(text, &path.display().to_string())
        .map(|_| ())
        .map_err(|_| FlashError::BadSyncKey { path: path.into() })
}

fn valid_node(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 63
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Reads the image's GPT and finds the config partition.
pub fn image_partitions(image: &Path) -> Result<Vec<GptEntry>, FlashError> {
    let mut head = vec![0u8; 34 * layout::SECTOR as usize];
    File::open(image)
        .and_then(|mut f| f.read_exact(&mut head))
        .map_err(io(image))?;
    layout::read_gpt(&head).map_err(|source| FlashError::Gpt {
        image: image.into(),
        source,
    })
}

/// Stages the config partition's files in `dir`; returns their relative names.
fn stage_config(opts: &FlashOptions, dir: &Path) -> Result<(Vec<String>, bool), FlashError> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(io(dir))?;
    }
    std::fs::create_dir_all(dir.join("trusted")).map_err(io(dir))?;
    std::fs::create_dir_all(dir.join("bundles")).map_err(io(dir))?;
    let mut files = vec!["node".to_owned()];
    let p = dir.join("node");
    std::fs::write(&p, format!("{}\n", opts.node)).map_err(io(&p))?;
    for t in &opts.trust {
        let mut name = t
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if !name.ends_with(".pub") {
            name.push_str(".pub");
        }
        let dst = dir.join("trusted").join(&name);
        std::fs::copy(t, &dst).map_err(io(t))?;
        files.push(format!("trusted/{name}"));
    }
    let (key, generated) = match &opts.sync_key {
        Some(p) if p.exists() => {
            let text = std::fs::read_to_string(p).map_err(io(p))?;
            check_sync_key(p, &text)?;
            (text, false)
        }
        Some(p) => {
            let text = new_sync_key()?;
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(p)
                .map_err(io(p))?;
            f.write_all(text.as_bytes()).map_err(io(p))?;
            (text, true)
        }
        None => (new_sync_key()?, true),
    };
    let p = dir.join("sync.key");
    std::fs::write(&p, key).map_err(io(&p))?;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).map_err(io(&p))?;
    files.push("sync.key".into());
    if let Some(b) = &opts.bundle {
        let dst = dir.join("bundles/active.bundle");
        std::fs::copy(b, &dst).map_err(io(b))?;
        files.push("bundles/active.bundle".into());
    }
    let p = dir.join("installed-version");
    std::fs::write(&p, format!("{}\n", opts.installed_version)).map_err(io(&p))?;
    files.push("installed-version".into());
    Ok((files, generated))
}

const CHUNK: usize = 4 << 20;

/// The granularity of holes in a file target.
const HOLE: usize = 64 << 10;

/// Whether a chunk is all zeros (pure; the compiler vectorises the fold).
fn is_zero(b: &[u8]) -> bool {
    b.chunks(64).all(|c| c.iter().fold(0u8, |a, x| a | x) == 0)
}

/// Flashes the image; see the module doc.
pub fn flash(opts: &FlashOptions) -> Result<FlashReport, FlashError> {
    if !valid_node(&opts.node) {
        return Err(FlashError::BadNode {
            node: opts.node.clone(),
        });
    }
    let image_len = std::fs::metadata(&opts.image)
        .map_err(io(&opts.image))?
        .len();
    let parts = image_partitions(&opts.image)?;
    let config = parts
        .iter()
        .find(|p| p.name == "config")
        .ok_or_else(|| FlashError::NoConfigPartition {
            image: opts.image.clone(),
        })?
        .clone();
    for t in &opts.trust {
        std::fs::metadata(t).map_err(io(t))?;
    }
    if let Some(b) = &opts.bundle {
        std::fs::metadata(b).map_err(io(b))?;
    }
    let kind = check_target(&opts.target, &opts.image, image_len)?;

    // Everything that can fail on the inputs happens before the target is touched.
    std::fs::create_dir_all(&opts.work).map_err(io(&opts.work))?;
    let stage = opts.work.join("config");
    let (config_files, sync_key_generated) = stage_config(opts, &stage)?;
    let cfg_img = opts.work.join("config.img");
    disk::make_ext4(&cfg_img, config.size(), "config", Some(&stage), opts.epoch)?;
    let cfg_bytes = std::fs::read(&cfg_img).map_err(io(&cfg_img))?;
    let _ = std::fs::remove_dir_all(&stage);
    let _ = std::fs::remove_file(&cfg_img);

    let (c0, c1) = (config.offset(), config.offset() + config.size());
    let mut src = File::open(&opts.image).map_err(io(&opts.image))?;
    let written = write_verified(
        &opts.target,
        kind,
        image_len,
        opts.progress,
        &mut |pos, buf| {
            src.read_exact(buf).map_err(io(&opts.image))?;
            // Splice the node's config filesystem over the image's empty config partition.
            let (s, e) = (pos.max(c0), (pos + buf.len() as u64).min(c1));
            if s < e {
                buf[(s - pos) as usize..(e - pos) as usize]
                    .copy_from_slice(&cfg_bytes[(s - c0) as usize..(e - c0) as usize]);
            }
            Ok(())
        },
    )?;
    let (expected, gpt_relocated) = (written.sha256, written.gpt_relocated);
    tracing::info!(target = %opts.target.display(), node = %opts.node, bytes = image_len, "flashed and verified");
    Ok(FlashReport {
        kind,
        bytes: image_len,
        sha256: expected,
        config_files,
        sync_key_generated,
        gpt_relocated,
    })
}

nix::ioctl_write_ptr_bad!(blkzeroout, nix::request_code_none!(0x12, 127), [u64; 2]);

/// Zeroes `[offset, offset + len)` of a block device with BLKZEROOUT; false when the
/// device or kernel does not support it (the caller then writes the zeros).
fn zero_out(dev: &File, offset: u64, len: u64) -> bool {
    use std::os::fd::AsRawFd;
    let range = [offset, len];
    // SAFETY: BLKZEROOUT reads a `u64[2]` (start, length) through the pointer, which
    // points at `range`, alive for the call; the fd is the open target device.
    unsafe { blkzeroout(dev.as_raw_fd(), &range) }.is_ok()
}

/// Produces the bytes at an offset of the disk being written (see [`write_verified`]).
pub type Fill<'a> = dyn FnMut(u64, &mut [u8]) -> Result<(), FlashError> + 'a;

/// What [`write_verified`] did.
#[derive(Debug, Clone)]
pub struct Written {
    /// sha256 of the bytes written, equal to what was read back.
    pub sha256: String,
    /// Whether the backup GPT was moved to the end of a larger device.
    pub gpt_relocated: bool,
}

/// Writes `len` bytes to `target` (already checked with [`check_target`]), each chunk
/// produced by `fill(offset, buf)`, then drops the cached pages, reads everything back and
/// compares sha256; on a device larger than `len` moves the backup GPT to its end. A file
/// target is truncated and written sparse; a block device is opened `O_EXCL` and gets
/// every byte. Shared by `twinwall flash` and `twinwall install`.
pub fn write_verified(
    target: &Path,
    kind: TargetKind,
    len: u64,
    progress: bool,
    fill: &mut Fill<'_>,
) -> Result<Written, FlashError> {
    let mut out = match kind {
        // O_EXCL on a block device fails with EBUSY if anything mounted it meanwhile.
        TargetKind::BlockDevice => OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_EXCL)
            .open(target),
        TargetKind::File => OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(target),
    }
    .map_err(io(target))?;
    let bar = if progress {
        ProgressBar::new(len)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{msg} {bar:30} {bytes}/{total_bytes} {bytes_per_sec}")
            .expect("valid template"),
    );
    bar.set_message("writing");
    let mut buf = vec![0u8; CHUNK];
    let mut written = Sha256::new();
    let mut head = Vec::new();
    let mut zeroout_ok = kind == TargetKind::BlockDevice;
    let mut pos = 0u64;
    while pos < len {
        let n = (len - pos).min(CHUNK as u64) as usize;
        fill(pos, &mut buf[..n])?;
        if pos == 0 {
            head = buf[..n.min(34 * layout::SECTOR as usize)].to_vec();
        }
        // A file target is written sparse: all-zero chunks become holes (the target was
        // truncated, so they read back as zeros). On a device, runs of zeros go to the
        // kernel as BLKZEROOUT (the device zeroes them — a virtio disk without the data
        // crossing it, a plain disk as ordinary writes), falling back to writing them.
        let mut at = pos;
        for block in buf[..n].chunks(HOLE) {
            let len = block.len() as u64;
            if is_zero(block) {
                if kind == TargetKind::File || (zeroout_ok && zero_out(&out, at, len)) {
                    out.seek(SeekFrom::Current(len as i64))
                        .map_err(io(target))?;
                    at += len;
                    continue;
                }
                zeroout_ok = false;
            }
            out.write_all(block).map_err(io(target))?;
            at += len;
        }
        written.update(&buf[..n]);
        pos += n as u64;
        bar.set_position(pos);
    }
    if kind == TargetKind::File {
        out.set_len(len).map_err(io(target))?;
    }
    out.sync_all().map_err(io(target))?;
    // Drop the cached pages so the read-back comes from the device, not from memory.
    let _ = nix::fcntl::posix_fadvise(
        &out,
        0,
        0,
        nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
    );
    let expected = hex::encode(written.finalize());

    bar.set_message("verifying");
    bar.set_position(0);
    let mut back = File::open(target).map_err(io(target))?;
    let mut h = Sha256::new();
    let mut pos = 0u64;
    while pos < len {
        let n = (len - pos).min(CHUNK as u64) as usize;
        back.read_exact(&mut buf[..n]).map_err(io(target))?;
        h.update(&buf[..n]);
        pos += n as u64;
        bar.set_position(pos);
    }
    bar.finish_and_clear();
    let actual = hex::encode(h.finalize());
    if actual != expected {
        return Err(FlashError::Verify {
            target: target.to_path_buf(),
            expected,
            actual,
        });
    }

    // On a larger disk the backup GPT belongs at the very end.
    let target_len = back.seek(SeekFrom::End(0)).map_err(io(target))?;
    let gpt_relocated = target_len > len;
    if gpt_relocated {
        layout::write_relocated(&mut out, &head, target_len).map_err(|e| FlashError::Relocate {
            target: target.to_path_buf(),
            source: e,
        })?;
    }
    Ok(Written {
        sha256: expected,
        gpt_relocated,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_fields() {
        let m = parse_mountinfo(
            "27 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n46 27 7:0 / /mnt/my\\040disk rw - ext4 /dev/loop0 rw\n",
        );
        assert_eq!(
            m[0],
            Mount {
                device: "254:0".into(),
                mountpoint: "/".into(),
                fstype: "ext4".into(),
            }
        );
        assert_eq!(m[1].mountpoint, "/mnt/my disk");
    }

    #[test]
    fn sync_keys() {
        let k = new_sync_key().unwrap();
        check_sync_key(Path::new("k"), &k).unwrap();
        assert_ne!(k, new_sync_key().unwrap());
        for bad in [
            "",
            "twinwall-sync-key-v1",
            "other AAAA",
            "twinwall-sync-key-v1 AAAA",
        ] {
            assert!(check_sync_key(Path::new("k"), bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn node_names() {
        assert!(valid_node("fw-a"));
        assert!(!valid_node(""));
        assert!(!valid_node("a/b"));
        assert!(!valid_node("a b"));
    }
}
