//! The A/B OS update: an `os-update` bundle streams through the verifier straight into the
//! inactive slot (hashed as it is written, nothing buffered), is verified again by reading
//! the slot back, and only then is the slot set to be tried once in grubenv. Before the
//! first byte is written the target slot is marked bad, so a write that is cut short,
//! tampered with or interrupted by a power cut never leaves a slot GRUB would boot.
//!
//! The config bundle in force is pinned to the running slot (`bundles/slot-X.bundle`): it
//! was validated by that slot's software, so a fallback to it boots a config it knows.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;
use sha2::{Digest, Sha256};
use twinwall_bundle::{PayloadEntry, PayloadSink, Policy, VerifyError, verify_stream};
use twinwall_image::slot::{GrubenvFile, Slot, SlotControl, SlotError};

use crate::store::{ConfigStore, StoreError};

/// The one payload an OS update bundle carries (see docs/image.md).
pub const SLOT_PAYLOAD: &str = "slot.squashfs";

/// Why an update was refused or failed. In every case the target slot is not marked to be
/// tried, so the next boot boots the running slot.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    /// The bundle was rejected (signature, hashes, kind, version, cut short ...).
    #[error("update bundle rejected: {0}")]
    Rejected(#[from] VerifyError),
    /// Reading the slot back did not give the bytes that were verified.
    #[error("slot {slot} read-back mismatch: expected sha256 {expected}, read {found}")]
    ReadBack {
        /// The target slot.
        slot: Slot,
        /// The signed hash.
        expected: String,
        /// What was read.
        found: String,
    },
    /// The slot device or file could not be opened, written or read.
    #[error("slot {slot} at {path}: {op}: {source}", path = path.display())]
    Io {
        /// The target slot.
        slot: Slot,
        /// Its device or file.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// Cause.
        source: io::Error,
    },
    /// grubenv could not be read or written.
    #[error("boot selection: {0}")]
    Boot(#[from] SlotError),
    /// The config partition could not be updated (pins, versions).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The node has no running slot to update from (not booted from a slot, no ESP).
    #[error("no A/B slots on this node: {0}")]
    NoSlots(String),
}

/// Where the slots are and which one runs.
#[derive(Debug, Clone)]
pub struct Slots {
    /// The running slot.
    pub running: Slot,
    /// Device or file of slot A.
    pub a: PathBuf,
    /// Device or file of slot B.
    pub b: PathBuf,
    /// The grubenv file (on the mounted ESP: `ESP/grub/grubenv`).
    pub grubenv: PathBuf,
}

impl Slots {
    /// The device or file of `slot`.
    pub fn path(&self, slot: Slot) -> &Path {
        match slot {
            Slot::A => &self.a,
            Slot::B => &self.b,
        }
    }
}

/// Finds a partition by its GPT name (PARTNAME in `/sys/class/block/*/uevent`), as init
/// does: `/dev/DEVNAME`.
pub fn find_partition(sys_block: &Path, label: &str) -> Option<PathBuf> {
    let entries = std::fs::read_dir(sys_block).ok()?;
    for e in entries.filter_map(Result::ok) {
        let Ok(uevent) = std::fs::read_to_string(e.path().join("uevent")) else {
            continue;
        };
        let mut dev = None;
        let mut name = None;
        for line in uevent.lines() {
            if let Some(v) = line.strip_prefix("DEVNAME=") {
                dev = Some(v.to_string());
            }
            if let Some(v) = line.strip_prefix("PARTNAME=") {
                name = Some(v.to_string());
            }
        }
        if name.as_deref() == Some(label)
            && let Some(dev) = dev
        {
            return Some(PathBuf::from("/dev").join(dev));
        }
    }
    None
}

/// Writes the slot payload into a slot device or file while the verifier streams it.
#[derive(Debug)]
pub struct SlotSink {
    file: File,
    capacity: u64,
    written: Arc<AtomicU64>,
}

impl SlotSink {
    /// Opens the slot for writing (never truncating a device; a file keeps its length).
    pub fn open(path: &Path, written: Arc<AtomicU64>) -> io::Result<SlotSink> {
        let mut file = OpenOptions::new().read(true).write(true).open(path)?;
        // The end of a block device is its size; a regular file's length is the slot size
        // (tests make sparse files of the partition's size).
        let capacity = file.seek(SeekFrom::End(0))?;
        file.seek(SeekFrom::Start(0))?;
        Ok(SlotSink {
            file,
            capacity,
            written,
        })
    }

    /// Bytes the slot holds.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }
}

impl PayloadSink for SlotSink {
    fn begin(&mut self, entry: &PayloadEntry) -> io::Result<()> {
        if entry.name != SLOT_PAYLOAD {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "an os-update bundle carries only {SLOT_PAYLOAD}, not {:?}",
                    entry.name
                ),
            ));
        }
        if entry.size > self.capacity {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "the slot image is {} bytes, the slot holds {}",
                    entry.size, self.capacity
                ),
            ));
        }
        self.file.seek(SeekFrom::Start(0))?;
        Ok(())
    }

    fn write(&mut self, chunk: &[u8]) -> io::Result<()> {
        self.file.write_all(chunk)?;
        self.written
            .fetch_add(chunk.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    fn end(&mut self, _: &PayloadEntry) -> io::Result<()> {
        self.file.sync_data()
    }
}

/// Reads the first `size` bytes of the slot back, bypassing the page cache where the
/// kernel allows (the cached pages are dropped first), and returns their sha256.
pub fn read_back(path: &Path, size: u64) -> io::Result<String> {
    let file = File::open(path)?;
    // SAFETY: posix_fadvise on a valid open fd with plain integer arguments; it only
    // changes page-cache state.
    let _ = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    let mut r = file.take(size);
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        total += n as u64;
    }
    if total != size {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("read {total} of {size} bytes back"),
        ));
    }
    Ok(hex::encode(h.finalize()))
}

/// What an update did.
#[derive(Debug, Clone, Serialize)]
pub struct UpdateReport {
    /// The slot written.
    pub slot: Slot,
    /// The OS version it now holds.
    pub version: u64,
    /// Bytes of slot image written.
    pub bytes: u64,
    /// Its sha256 (signed, and read back).
    pub sha256: String,
    /// The slot GRUB boots next (the new one, once).
    pub next_boot: Slot,
}

/// Installs an OS update read from `body` into the inactive slot. `policy` must require
/// kind `os-update` (the caller sets trust and anti-rollback).
pub fn install<R: Read>(
    body: R,
    policy: &Policy,
    slots: &Slots,
    store: &ConfigStore,
    written: Arc<AtomicU64>,
) -> Result<UpdateReport, UpdateError> {
    let target = slots.running.other();
    let path = slots.path(target).to_path_buf();
    let io_err = |op: &'static str| {
        let path = path.clone();
        move |source| UpdateError::Io {
            slot: target,
            path,
            op,
            source,
        }
    };
    // Refuse a bundle of the wrong kind or an old version before the slot is touched.
    // This early look at the (not yet verified) manifest can only reject; acceptance is
    // decided by `verify_stream` below, which reads the same bytes again.
    let (prefix, body) = early_check(body, policy)?;
    let body = io::Cursor::new(prefix).chain(body);
    let mut boot = GrubenvFile::new(&slots.grubenv);
    // A torn slot must never be booted: it is bad from the first byte written until the
    // read-back matched.
    boot.mark_bad(target)?;
    let mut sink = SlotSink::open(&path, written).map_err(io_err("opening"))?;
    tracing::info!(slot = %target, path = %path.display(), capacity = sink.capacity(), "writing the inactive slot");
    let verified = verify_stream(body, policy, &mut sink)?;
    let entry = verified
        .manifest
        .payload(SLOT_PAYLOAD)
        .cloned()
        .ok_or_else(|| {
            UpdateError::Rejected(VerifyError::MissingFile {
                name: SLOT_PAYLOAD.into(),
            })
        })?;
    drop(sink);
    let found = read_back(&path, entry.size).map_err(io_err("reading back"))?;
    if found != entry.sha256 {
        return Err(UpdateError::ReadBack {
            slot: target,
            expected: entry.sha256,
            found,
        });
    }
    store.pin_active_to_slot(slots.running.cmdline())?;
    store.set_os_version(target.cmdline(), verified.manifest.version)?;
    boot.set_try_once(target)?;
    let next_boot = boot.next_slot()?;
    tracing::info!(slot = %target, version = verified.manifest.version, bytes = entry.size, "slot written, verified and set to be tried once");
    Ok(UpdateReport {
        slot: target,
        version: verified.manifest.version,
        bytes: entry.size,
        sha256: entry.sha256,
        next_boot,
    })
}

/// Reads the header and manifest from `body`; rejects a readable manifest of another
/// kind or of a version the policy refuses. Returns the bytes read, to be replayed.
fn early_check<R: Read>(mut body: R, policy: &Policy) -> Result<(Vec<u8>, R), UpdateError> {
    let mut prefix = Vec::new();
    (&mut body)
        .take(16)
        .read_to_end(&mut prefix)
        .map_err(|source| UpdateError::Rejected(VerifyError::Read { offset: 0, source }))?;
    if prefix.len() < 16 || &prefix[..8] != b"TWBUNDLE" {
        return Ok((prefix, body));
    }
    let len = u32::from_be_bytes([prefix[12], prefix[13], prefix[14], prefix[15]]) as u64;
    if len == 0 || len > (1 << 20) {
        return Ok((prefix, body));
    }
    (&mut body)
        .take(len)
        .read_to_end(&mut prefix)
        .map_err(|source| UpdateError::Rejected(VerifyError::Read { offset: 16, source }))?;
    if let Ok(m) = twinwall_bundle::Manifest::parse(&prefix[16..]) {
        if let Some(expected) = policy.kind
            && m.kind != expected
        {
            return Err(VerifyError::WrongKind {
                expected,
                found: m.kind,
            }
            .into());
        }
        if let Some(installed) = policy.installed_version {
            twinwall_bundle::verify::check_version(&m, installed, policy.allow_rollback)?;
        }
    }
    Ok((prefix, body))
}

/// Goes back to the other slot: it is set to be tried once (OS rollback by the operator).
pub fn rollback(slots: &Slots) -> Result<Slot, UpdateError> {
    let mut boot = GrubenvFile::new(&slots.grubenv);
    let other = slots.running.other();
    let st = boot.state()?;
    if !st.flags(other).ok {
        return Err(UpdateError::NoSlots(format!(
            "slot {other} is not bootable (OK=0); nothing to roll back to"
        )));
    }
    boot.set_try_once(other)?;
    Ok(other)
}
