//! Atomic file output: a temporary file in the target's directory, created with its final
//! (restrictive) mode, written, fsynced, then renamed into place and the directory synced.
//! A failure at any point leaves the target as it was and removes the temporary file.

use std::fs::{self, File, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

/// Why a file could not be written.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// The target exists and overwriting was not asked for.
    #[error("{path} already exists (use --force to replace it)", path = path.display())]
    Exists {
        /// The target.
        path: PathBuf,
    },
    /// An IO step failed.
    #[error("{op} {path}: {source}", path = path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The IO error.
        source: io::Error,
    },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> FsError + 'a {
    move |source| FsError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Writes `path` atomically with permission bits `mode`; `fill` writes the contents.
/// Without `overwrite` an existing target is an error, checked atomically at the rename
/// (`renameat2(RENAME_NOREPLACE)` or link/unlink).
pub fn write_atomic<E: From<FsError>>(
    path: &Path,
    mode: u32,
    overwrite: bool,
    fill: impl FnOnce(&mut File) -> Result<(), E>,
) -> Result<(), E> {
    let target = path.to_owned();
    if !overwrite && fs::symlink_metadata(path).is_ok() {
        return Err(FsError::Exists { path: target }.into());
    }
    let dir = parent_dir(path);
    // The temporary file is opened with `mode` already (O_CREAT|O_EXCL, mode & ~umask),
    // so a secret is never readable by others, not even for a moment.
    let mut tmp = tempfile::Builder::new()
        .prefix(".twinwall-tmp-")
        .permissions(Permissions::from_mode(mode))
        .tempfile_in(dir)
        .map_err(io_err("creating a temporary file in", dir))?;
    // umask may have cleared bits; set exactly `mode` (never more than requested).
    tmp.as_file()
        .set_permissions(Permissions::from_mode(mode))
        .map_err(io_err("setting the mode of", tmp.path()))?;
    fill(tmp.as_file_mut())?;
    tmp.as_file_mut()
        .flush()
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(io_err("syncing", path))?;
    let persisted = if overwrite {
        tmp.persist(path).map(|_| ())
    } else {
        tmp.persist_noclobber(path).map(|_| ())
    };
    persisted.map_err(|e| {
        if e.error.kind() == io::ErrorKind::AlreadyExists {
            FsError::Exists {
                path: target.clone(),
            }
        } else {
            FsError::Io {
                op: "renaming into place",
                path: target.clone(),
                source: e.error,
            }
        }
    })?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("syncing directory", dir))?;
    Ok(())
}

/// Writes bytes atomically (see [`write_atomic`]).
pub fn write_bytes_atomic(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    overwrite: bool,
) -> Result<(), FsError> {
    write_atomic(path, mode, overwrite, |f| {
        f.write_all(bytes).map_err(io_err("writing", path))
    })
}

/// Writes a secret (mode 0600) atomically.
pub fn write_secret(
    path: &Path,
    secret: &Zeroizing<String>,
    overwrite: bool,
) -> Result<(), FsError> {
    write_bytes_atomic(path, secret.as_bytes(), 0o600, overwrite)
}

/// Reads a small text file (key files), refusing anything larger than `max` bytes
/// before reading it whole.
pub fn read_small(path: &Path, max: u64) -> Result<Zeroizing<String>, FsError> {
    use std::io::Read;
    let f = File::open(path).map_err(io_err("opening", path))?;
    let mut text = Zeroizing::new(String::new());
    f.take(max + 1)
        .read_to_string(&mut text)
        .map_err(io_err("reading", path))?;
    if text.len() as u64 > max {
        return Err(FsError::Io {
            op: "reading",
            path: path.to_owned(),
            source: io::Error::new(
                io::ErrorKind::InvalidData,
                format!("larger than {max} bytes; not a key file"),
            ),
        });
    }
    Ok(text)
}
