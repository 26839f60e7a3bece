//! FAT filesystems without root or loop devices: `mkfs.vfat` on an image file and mtools
//! (`mmd`, `mcopy`) addressing a filesystem inside a disk image at a byte offset
//! (`disk.img@@OFFSET`). Used for the ESP (and by tests to edit the ESP's grubenv).

use std::path::Path;

use crate::tool::{self, ToolError};

/// mtools refuses filesystems whose geometry looks odd to it unless told not to check.
const ENV: &[(&str, &str)] = &[("MTOOLS_SKIP_CHECK", "1"), ("MTOOLS_NO_VFAT", "0")];

/// A FAT filesystem: a file, and the byte offset of the filesystem inside it.
#[derive(Debug, Clone)]
pub struct Fat {
    spec: String,
    /// SOURCE_DATE_EPOCH for the entries mtools creates (mtools reads it as "now").
    epoch: Option<String>,
}

impl Fat {
    /// The filesystem at `offset` bytes into `image`.
    pub fn at(image: &Path, offset: u64) -> Self {
        Self {
            spec: format!("{}@@{offset}", image.display()),
            epoch: None,
        }
    }

    /// Directory entries created from now on carry the time `epoch` (SOURCE_DATE_EPOCH)
    /// instead of the wall clock, so the filesystem is bit-reproducible.
    pub fn with_epoch(mut self, epoch: u64) -> Self {
        self.epoch = Some(epoch.to_string());
        self
    }

    fn env(&self) -> Vec<(&str, &str)> {
        let mut e = ENV.to_vec();
        if let Some(t) = &self.epoch {
            e.push(("SOURCE_DATE_EPOCH", t.as_str()));
        }
        e
    }

    /// Makes a new FAT filesystem of `bytes` bytes in the file `path` (created), with a fixed
    /// volume id (GRUB finds the ESP by it) and no time-based values.
    pub fn mkfs(path: &Path, bytes: u64, label: &str, volume_id: u32) -> Result<Self, ToolError> {
        let f = std::fs::File::create(path).map_err(|source| ToolError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        f.set_len(bytes).map_err(|source| ToolError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        tool::run(
            "mkfs.vfat",
            [
                "--invariant",
                "-n",
                label,
                "-i",
                &format!("{volume_id:08X}"),
                &path.display().to_string(),
            ],
            None,
        )?;
        Ok(Self::at(path, 0))
    }

    /// Creates a directory (parents must exist).
    pub fn mkdir(&self, dir: &str) -> Result<(), ToolError> {
        tool::run_env(
            "mmd",
            ["-i", &self.spec, &format!("::{dir}")],
            None,
            &self.env(),
        )
        .map(|_| ())
    }

    /// Copies a host file to `dst` in the filesystem (overwriting). It keeps the host
    /// file's mtime, except with [`Fat::with_epoch`]: then the entry gets the epoch (the
    /// build's work files carry the wall clock's time).
    pub fn copy_in(&self, src: &Path, dst: &str) -> Result<(), ToolError> {
        let mut args = vec!["-o".to_string()];
        if self.epoch.is_none() {
            args.push("-m".into());
        }
        args.extend([
            "-i".into(),
            self.spec.clone(),
            src.display().to_string(),
            format!("::{dst}"),
        ]);
        tool::run_env("mcopy", args, None, &self.env()).map(|_| ())
    }

    /// Reads a file of the filesystem.
    pub fn read(&self, path: &str) -> Result<Vec<u8>, ToolError> {
        tool::run_env(
            "mcopy",
            ["-n", "-i", &self.spec, &format!("::{path}"), "-"],
            None,
            ENV,
        )
    }

    /// Writes `bytes` to `path` in the filesystem (through a temporary host file).
    pub fn write(&self, path: &str, bytes: &[u8]) -> Result<(), ToolError> {
        let dir = tempfile_dir()?;
        let tmp = dir.join("file");
        std::fs::write(&tmp, bytes).map_err(|source| ToolError::Io {
            path: tmp.to_path_buf(),
            source,
        })?;
        let r = self.copy_in(&tmp, path);
        let _ = std::fs::remove_dir_all(&dir);
        r
    }
}

fn tempfile_dir() -> Result<std::path::PathBuf, ToolError> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "twinwall-fat-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).map_err(|source| ToolError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    Ok(dir)
}
