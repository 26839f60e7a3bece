//! The config partition as the management service sees it: trusted keys, the node name,
//! the active and previous bundles, the anti-rollback floor, a peer-staged bundle, the
//! unconfirmed marker and the per-slot config pins.
//!
//! Every change is made atomically (temporary file, fsync, rename, directory fsync) inside
//! a [`Remount`] window: on the appliance the partition is mounted read-only and is
//! remounted read-write only for the few milliseconds of a change; tests use a plain
//! directory ([`NoRemount`]).
//!
//! Layout (see docs/init.md "Config partition layout"):
//! ```text
//! node, trusted/*.pub, sync.key, installed-version
//! bundles/active.bundle     in force
//! bundles/previous.bundle   the one before (what a revert goes back to)
//! bundles/staged.bundle     a staged copy (verified, not in force; a push keeps its phase 1 in memory)
//! bundles/unconfirmed       the active bundle's version while its confirm window runs
//! bundles/slot-a.bundle     the config bundle last validated with slot A (pinned)
//! bundles/slot-b.bundle     ... with slot B
//! os-version                version of the OS update bundle last written per slot (JSON)
//! ```

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use twinwall_bundle::VerifyingKey;
use twinwall_bundle::fsio::{FsError, write_bytes_atomic};

/// Why the config partition could not be read or changed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}", path = path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// A file could not be written.
    #[error(transparent)]
    Write(#[from] FsError),
    /// A file has content that makes no sense.
    #[error("{path}: {reason}", path = path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Remounting the partition failed.
    #[error("cannot remount {path} {mode}: {source}", path = path.display())]
    Remount {
        /// Mount point.
        path: PathBuf,
        /// `read-write` or `read-only`.
        mode: &'static str,
        /// Cause.
        source: nix::Error,
    },
}

/// Makes the config partition writable for the duration of a change.
pub trait Remount: Send + Sync + std::fmt::Debug {
    /// Before a change.
    fn writable(&self) -> Result<(), StoreError>;
    /// After a change (also after a failed one).
    fn readonly(&self) -> Result<(), StoreError>;
}

/// A plain directory: nothing to remount (tests, a writable config dir).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoRemount;

impl Remount for NoRemount {
    fn writable(&self) -> Result<(), StoreError> {
        Ok(())
    }
    fn readonly(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// A mounted partition: `mount -o remount,rw` / `remount,ro`.
#[derive(Debug, Clone)]
pub struct MountRemount {
    /// The mount point.
    pub path: PathBuf,
}

impl MountRemount {
    fn remount(&self, flags: nix::mount::MsFlags, mode: &'static str) -> Result<(), StoreError> {
        nix::mount::mount(
            None::<&str>,
            &self.path,
            None::<&str>,
            nix::mount::MsFlags::MS_REMOUNT | flags,
            None::<&str>,
        )
        .map_err(|source| StoreError::Remount {
            path: self.path.clone(),
            mode,
            source,
        })
    }
}

impl Remount for MountRemount {
    fn writable(&self) -> Result<(), StoreError> {
        self.remount(nix::mount::MsFlags::empty(), "read-write")
    }
    fn readonly(&self) -> Result<(), StoreError> {
        // Flush this partition first (not every filesystem, as `sync()` would); the
        // read-only remount then has nothing left to write.
        sync_fs(&self.path)?;
        self.remount(nix::mount::MsFlags::MS_RDONLY, "read-only")
    }
}

/// Whether `dir` is the root of a mount (its device differs from its parent's).
pub fn is_mount_point(dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let (Ok(me), Ok(parent)) = (fs::metadata(dir), fs::metadata(dir.join(".."))) else {
        return false;
    };
    me.dev() != parent.dev() || me.ino() == parent.ino()
}

/// A bundle file on the partition: which one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    /// `bundles/active.bundle`.
    Active,
    /// `bundles/previous.bundle`.
    Previous,
    /// `bundles/staged.bundle`.
    Staged,
}

impl Which {
    fn file(self) -> &'static str {
        match self {
            Which::Active => "active.bundle",
            Which::Previous => "previous.bundle",
            Which::Staged => "staged.bundle",
        }
    }
}

/// The config partition.
#[derive(Debug)]
pub struct ConfigStore {
    dir: PathBuf,
    remount: Box<dyn Remount>,
    /// Held for a whole writable window ([`ConfigStore::change`]): two handlers' windows
    /// must not interleave, or one's read-only remount meets the other's open file
    /// (EBUSY) and the other then writes to a read-only partition.
    window: std::sync::Mutex<()>,
}

impl ConfigStore {
    /// The partition mounted (or a directory) at `dir`.
    pub fn new(dir: impl Into<PathBuf>, remount: Box<dyn Remount>) -> ConfigStore {
        ConfigStore {
            dir: dir.into(),
            remount,
            window: std::sync::Mutex::new(()),
        }
    }

    /// `dir` with [`MountRemount`] when it is a mount point, [`NoRemount`] otherwise.
    pub fn detect(dir: impl Into<PathBuf>) -> ConfigStore {
        let dir = dir.into();
        let remount: Box<dyn Remount> = if is_mount_point(&dir) {
            Box::new(MountRemount { path: dir.clone() })
        } else {
            Box::new(NoRemount)
        };
        ConfigStore::new(dir, remount)
    }

    /// The partition's root.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Path of a bundle file.
    pub fn bundle_path(&self, which: Which) -> PathBuf {
        self.dir.join("bundles").join(which.file())
    }

    fn read_opt(&self, path: &Path) -> Result<Option<Vec<u8>>, StoreError> {
        match fs::read(path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StoreError::Read {
                path: path.to_owned(),
                source,
            }),
        }
    }

    /// The bytes of a bundle file, if it exists.
    pub fn read_bundle(&self, which: Which) -> Result<Option<Vec<u8>>, StoreError> {
        self.read_opt(&self.bundle_path(which))
    }

    /// The public keys in `trusted/*.pub`.
    pub fn trusted_keys(&self) -> Result<Vec<VerifyingKey>, StoreError> {
        let dir = self.dir.join("trusted");
        let entries = fs::read_dir(&dir).map_err(|source| StoreError::Read {
            path: dir.clone(),
            source,
        })?;
        let mut paths: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "pub"))
            .collect();
        paths.sort();
        paths
            .iter()
            .map(|p| {
                twinwall_bundle::keys::read_public_key(p).map_err(|e| StoreError::Invalid {
                    path: p.clone(),
                    reason: e.to_string(),
                })
            })
            .collect()
    }

    /// The node name in `node`.
    pub fn node(&self) -> Result<Option<String>, StoreError> {
        Ok(self
            .read_opt(&self.dir.join("node"))?
            .map(|b| String::from_utf8_lossy(&b).trim().to_string()))
    }

    /// The anti-rollback floor in `installed-version` (absent: none).
    pub fn floor(&self) -> Result<Option<u64>, StoreError> {
        let path = self.dir.join("installed-version");
        match self.read_opt(&path)? {
            None => Ok(None),
            Some(b) => {
                let text = String::from_utf8_lossy(&b);
                text.trim()
                    .parse()
                    .map(Some)
                    .map_err(|_| StoreError::Invalid {
                        path,
                        reason: format!("{:?} is not a version number", text.trim()),
                    })
            }
        }
    }

    /// The version whose confirm window was running when the marker was written.
    pub fn unconfirmed(&self) -> Result<Option<u64>, StoreError> {
        let path = self.dir.join("bundles/unconfirmed");
        Ok(self
            .read_opt(&path)?
            .and_then(|b| String::from_utf8_lossy(&b).trim().parse().ok()))
    }

    /// Runs `f` with the partition writable, and makes it read-only again whatever `f`
    /// returned.
    pub fn change<R>(
        &self,
        f: impl FnOnce(&Path) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        // A panic in another window left nothing half-mounted that matters here: the
        // remounts below are whole operations.
        let _window = self.window.lock().unwrap_or_else(|e| e.into_inner());
        self.remount.writable()?;
        let bundles = self.dir.join("bundles");
        let result = fs::create_dir_all(&bundles)
            .map_err(|source| StoreError::Read {
                path: bundles.clone(),
                source,
            })
            .and_then(|()| f(&bundles));
        let ro = self.remount.readonly();
        let r = result?;
        ro?;
        Ok(r)
    }

    /// Installs `bundle` (already verified) as active: the current active becomes
    /// previous, the floor becomes the previous version (so one step back stays possible,
    /// anything older is refused), and with `unconfirmed` the marker records the version
    /// whose confirm window runs. A staged copy of the same bytes ([`ConfigStore::stage`],
    /// already synced) is renamed into place instead of written again; any staged copy
    /// is gone afterwards.
    ///
    /// Two flushes in all (instead of one per file and directory): every new file is
    /// written under a temporary name, then one `syncfs` makes all of them durable, then
    /// the renames (the new active last), then a second `syncfs` makes the renames
    /// durable. A crash before the last rename leaves the old active with a floor that
    /// allows it (its own version); a crash after it leaves the new one.
    pub fn install(
        &self,
        bundle: &[u8],
        version: u64,
        previous_version: Option<u64>,
        unconfirmed: bool,
    ) -> Result<(), StoreError> {
        self.change(|b| {
            let active = b.join("active.bundle");
            let new = b.join("active.bundle.new");
            let staged = b.join("staged.bundle");
            // 1. the new bundle under a temporary name: the staged copy when it is this
            //    bundle (written and synced by phase 1), else written now
            let from_stage = self
                .read_opt(&staged)?
                .is_some_and(|s| s.as_slice() == bundle);
            if from_stage {
                fs::rename(&staged, &new).map_err(|source| io(&new, "renaming into", source))?;
            } else {
                write_file(&new, bundle)?;
                remove(&staged)?;
            }
            // 2. the old active kept as previous (a hard link: the old previous is
            //    replaced only by the rename below, once the link exists)
            let prev_new = b.join("previous.bundle.new");
            let keep_previous = active.exists();
            if keep_previous {
                let _ = fs::remove_file(&prev_new);
                fs::hard_link(&active, &prev_new)
                    .map_err(|source| io(&prev_new, "keeping the previous bundle as", source))?;
            }
            // 3. the floor and the marker, under temporary names
            let floor = self.dir.join("installed-version");
            let floor_new = self.dir.join("installed-version.new");
            if let Some(prev) = previous_version {
                write_file(&floor_new, format!("{prev}\n").as_bytes())?;
            }
            let marker = b.join("unconfirmed");
            let marker_new = b.join("unconfirmed.new");
            if unconfirmed {
                write_file(&marker_new, format!("{version}\n").as_bytes())?;
            }
            // 4. everything new is durable before any of it becomes visible
            sync_fs(b)?;
            if keep_previous {
                rename(&prev_new, &b.join("previous.bundle"))?;
            }
            // the floor before the new active: a crash in between leaves the old active,
            // which the floor (its own version) still allows
            if previous_version.is_some() {
                rename(&floor_new, &floor)?;
            }
            if unconfirmed {
                rename(&marker_new, &marker)?;
            } else {
                remove(&marker)?;
            }
            // 5. the switch, made durable
            rename(&new, &active)?;
            sync_fs(b)
        })
    }

    /// Makes the previous bundle active again (a revert). The unconfirmed bundle is kept
    /// as `bundles/reverted.bundle` for inspection; the floor is left alone (it already
    /// allows the previous version).
    pub fn revert(&self) -> Result<(), StoreError> {
        self.change(|b| {
            let prev = b.join("previous.bundle");
            if !prev.exists() {
                return Err(StoreError::Invalid {
                    path: prev,
                    reason: "no previous bundle to revert to".into(),
                });
            }
            let active = b.join("active.bundle");
            if active.exists() {
                let tmp = b.join("reverted.bundle.new");
                let _ = fs::remove_file(&tmp);
                fs::hard_link(&active, &tmp)
                    .and_then(|()| fs::rename(&tmp, b.join("reverted.bundle")))
                    .map_err(|source| io(&tmp, "keeping the reverted bundle as", source))?;
            }
            // previous stays as it is (a hard link becomes the active one), so a second
            // failure can still fall back to it
            let tmp = b.join("active.bundle.new");
            let _ = fs::remove_file(&tmp);
            fs::hard_link(&prev, &tmp)
                .and_then(|()| fs::rename(&tmp, &active))
                .map_err(|source| io(&active, "restoring the previous bundle as", source))?;
            remove(&b.join("unconfirmed"))?;
            sync_dir(b)
        })
    }

    /// Removes the unconfirmed marker (the window was confirmed).
    pub fn confirm(&self) -> Result<(), StoreError> {
        self.change(|b| {
            remove(&b.join("unconfirmed"))?;
            sync_dir(b)
        })
    }

    /// Keeps a verified bundle as `bundles/staged.bundle`, its data synced, so that
    /// [`ConfigStore::install`] of the same bytes only has to rename it. (A push keeps its
    /// phase 1 in memory and does not use this: its install overlaps the nft apply.)
    /// (Its name needs no directory sync: a staged copy lost in a crash is only a push
    /// that did not happen; the install's `syncfs` makes the rename durable.)
    pub fn stage(&self, bundle: &[u8]) -> Result<(), StoreError> {
        self.change(|b| {
            let tmp = b.join("staged.bundle.new");
            write_file(&tmp, bundle)?;
            fs::File::open(&tmp)
                .and_then(|f| f.sync_data())
                .map_err(|source| io(&tmp, "syncing", source))?;
            rename(&tmp, &b.join("staged.bundle"))
        })
    }

    /// Drops a staged bundle.
    pub fn unstage(&self) -> Result<(), StoreError> {
        self.change(|b| remove(&b.join("staged.bundle")))
    }

    /// Pins the active bundle to `slot` (`a`/`b`): the config this slot's software
    /// validated, so that a fallback to it boots a config it understands.
    pub fn pin_active_to_slot(&self, slot: &str) -> Result<(), StoreError> {
        self.change(|b| {
            let active = b.join("active.bundle");
            if !active.exists() {
                return Ok(());
            }
            let tmp = b.join(format!("slot-{slot}.bundle.new"));
            let _ = fs::remove_file(&tmp);
            fs::hard_link(&active, &tmp)
                .and_then(|()| fs::rename(&tmp, b.join(format!("slot-{slot}.bundle"))))
                .map_err(|source| io(&tmp, "pinning the active bundle as", source))?;
            sync_dir(b)
        })
    }

    /// OS versions written per slot (`{"a": 3, "b": 4}`).
    pub fn os_versions(&self) -> Result<BTreeMap<String, u64>, StoreError> {
        let path = self.dir.join("os-version");
        match self.read_opt(&path)? {
            None => Ok(BTreeMap::new()),
            Some(b) => serde_json::from_slice(&b).map_err(|e| StoreError::Invalid {
                path,
                reason: e.to_string(),
            }),
        }
    }

    /// Records the OS version written into `slot`.
    pub fn set_os_version(&self, slot: &str, version: u64) -> Result<(), StoreError> {
        let mut all = self.os_versions()?;
        all.insert(slot.to_string(), version);
        let bytes = serde_json::to_vec(&all).unwrap_or_default();
        self.change(|_| {
            Ok(write_bytes_atomic(
                &self.dir.join("os-version"),
                &bytes,
                0o644,
                true,
            )?)
        })
    }
}

fn io(path: &Path, op: &'static str, source: std::io::Error) -> StoreError {
    StoreError::Write(FsError::Io {
        op,
        path: path.to_owned(),
        source,
    })
}

fn remove(path: &Path) -> Result<(), StoreError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(io(path, "removing", source)),
    }
}

/// Writes `bytes` to a new file at `path` (mode 0644), without syncing: callers make a
/// batch of such files durable with one [`sync_fs`] before renaming them into place.
fn write_file(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(path)
        .and_then(|mut f| f.write_all(bytes))
        .map_err(|source| io(path, "writing", source))
}

fn rename(from: &Path, to: &Path) -> Result<(), StoreError> {
    fs::rename(from, to).map_err(|source| io(to, "renaming into", source))
}

/// Flushes the whole filesystem holding `dir` (`syncfs`: one journal commit for every
/// change made so far, where a `fsync` per file and directory would be one each).
fn sync_fs(dir: &Path) -> Result<(), StoreError> {
    let d = fs::File::open(dir).map_err(|source| io(dir, "opening", source))?;
    nix::unistd::syncfs(&d).map_err(|e| io(dir, "syncing the filesystem of", e.into()))
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| io(dir, "syncing directory", source))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts the writable windows open at once (what a read-only remount would meet).
    #[derive(Debug, Default)]
    struct Windows {
        open: std::sync::atomic::AtomicUsize,
        most: std::sync::atomic::AtomicUsize,
    }

    impl Remount for std::sync::Arc<Windows> {
        fn writable(&self) -> Result<(), StoreError> {
            use std::sync::atomic::Ordering::SeqCst;
            let n = self.open.fetch_add(1, SeqCst) + 1;
            self.most.fetch_max(n, SeqCst);
            Ok(())
        }
        fn readonly(&self) -> Result<(), StoreError> {
            self.open.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            Ok(())
        }
    }

    #[test]
    fn concurrent_changes_never_share_a_writable_window() {
        let d = tempfile::tempdir().unwrap();
        let w = std::sync::Arc::new(Windows::default());
        let s = ConfigStore::new(d.path(), Box::new(w.clone()));
        std::thread::scope(|scope| {
            for slot in ["a", "b", "c", "d"] {
                let s = &s;
                scope.spawn(move || {
                    for v in 0..20 {
                        s.change(|_| {
                            std::thread::sleep(std::time::Duration::from_millis(1));
                            Ok(())
                        })
                        .unwrap();
                        s.set_os_version(slot, v).unwrap();
                    }
                });
            }
        });
        assert_eq!(w.most.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    fn store() -> (tempfile::TempDir, ConfigStore) {
        let d = tempfile::tempdir().unwrap();
        let s = ConfigStore::new(d.path(), Box::new(NoRemount));
        (d, s)
    }

    #[test]
    fn install_keeps_previous_and_moves_the_floor() {
        let (_d, s) = store();
        s.install(b"one", 1, None, false).unwrap();
        assert_eq!(s.read_bundle(Which::Active).unwrap().unwrap(), b"one");
        assert_eq!(s.read_bundle(Which::Previous).unwrap(), None);
        s.install(b"two", 2, Some(1), true).unwrap();
        assert_eq!(s.read_bundle(Which::Active).unwrap().unwrap(), b"two");
        assert_eq!(s.read_bundle(Which::Previous).unwrap().unwrap(), b"one");
        assert_eq!(s.floor().unwrap(), Some(1));
        assert_eq!(s.unconfirmed().unwrap(), Some(2));
        s.revert().unwrap();
        assert_eq!(s.read_bundle(Which::Active).unwrap().unwrap(), b"one");
        assert_eq!(s.read_bundle(Which::Previous).unwrap().unwrap(), b"one");
        assert_eq!(s.unconfirmed().unwrap(), None);
        let left: Vec<_> = fs::read_dir(s.dir().join("bundles"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.contains(".new") || n.starts_with(".twinwall"))
            .collect();
        assert!(left.is_empty(), "temporary files left: {left:?}");
    }

    #[test]
    fn revert_without_previous_changes_nothing() {
        let (_d, s) = store();
        s.install(b"one", 1, None, true).unwrap();
        let err = s.revert().unwrap_err();
        assert!(err.to_string().contains("no previous bundle"), "{err}");
        assert_eq!(s.read_bundle(Which::Active).unwrap().unwrap(), b"one");
    }

    #[test]
    fn a_bad_floor_is_an_error_naming_the_file() {
        let (_d, s) = store();
        fs::write(s.dir().join("installed-version"), "seven\n").unwrap();
        let err = s.floor().unwrap_err().to_string();
        assert!(
            err.contains("installed-version") && err.contains("seven"),
            "{err}"
        );
    }

    #[test]
    fn stage_and_pin() {
        let (_d, s) = store();
        s.install(b"one", 1, None, false).unwrap();
        s.stage(b"two").unwrap();
        assert_eq!(s.read_bundle(Which::Staged).unwrap().unwrap(), b"two");
        s.install(b"two", 2, Some(1), false).unwrap();
        assert_eq!(s.read_bundle(Which::Staged).unwrap(), None);
        s.pin_active_to_slot("a").unwrap();
        assert_eq!(
            fs::read(s.dir().join("bundles/slot-a.bundle")).unwrap(),
            b"two"
        );
        s.set_os_version("b", 7).unwrap();
        assert_eq!(s.os_versions().unwrap()["b"], 7);
    }
}
