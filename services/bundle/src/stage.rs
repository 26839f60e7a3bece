//! Staging payloads on disk while a bundle streams through the verifier, and committing
//! them only once it was accepted: what an installer (mgmt upload, config partition)
//! uses so that a rejected bundle leaves nothing behind.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::fsio::FsError;
use crate::manifest::PayloadEntry;
use crate::verify::PayloadSink;

/// A [`PayloadSink`] that writes each payload to a file in a private temporary directory
/// (mode 0700) beside the final destination. Dropped without [`StagingSink::commit`], it
/// removes the directory and everything in it.
#[derive(Debug)]
pub struct StagingSink {
    dir: tempfile::TempDir,
    current: Option<BufWriter<File>>,
}

impl StagingSink {
    /// A staging directory inside `parent` (the directory the payloads will end up in, so
    /// that the final rename stays on one filesystem).
    pub fn new_in(parent: &Path) -> Result<StagingSink, FsError> {
        let dir = tempfile::Builder::new()
            .prefix(".twinwall-staging-")
            .tempdir_in(parent)
            .map_err(|source| FsError::Io {
                op: "creating a staging directory in",
                path: parent.to_owned(),
                source,
            })?;
        Ok(StagingSink { dir, current: None })
    }

    /// Where the payloads are being staged.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Call only after [`crate::verify_stream`] returned `Ok`: syncs the staging
    /// directory and renames it to `dest`, which must not exist yet.
    pub fn commit(self, dest: &Path) -> Result<PathBuf, FsError> {
        let staged = self.dir.keep();
        let io_err = |op, path: &Path| {
            let path = path.to_owned();
            move |source| FsError::Io { op, path, source }
        };
        File::open(&staged)
            .and_then(|d| d.sync_all())
            .map_err(io_err("syncing", &staged))?;
        if fs::symlink_metadata(dest).is_ok() {
            let _ = fs::remove_dir_all(&staged);
            return Err(FsError::Exists {
                path: dest.to_owned(),
            });
        }
        if let Err(e) = fs::rename(&staged, dest) {
            let _ = fs::remove_dir_all(&staged);
            return Err(io_err("renaming the staged payloads to", dest)(e));
        }
        if let Some(parent) = dest.parent().filter(|p| !p.as_os_str().is_empty()) {
            File::open(parent)
                .and_then(|d| d.sync_all())
                .map_err(io_err("syncing directory", parent))?;
        }
        Ok(dest.to_owned())
    }
}

impl PayloadSink for StagingSink {
    fn begin(&mut self, entry: &PayloadEntry) -> io::Result<()> {
        // The name passed the manifest's rules (no `/`, no leading `.`), so it is a plain
        // file name inside the staging directory.
        let f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(self.dir.path().join(&entry.name))?;
        self.current = Some(BufWriter::new(f));
        Ok(())
    }

    fn write(&mut self, chunk: &[u8]) -> io::Result<()> {
        match &mut self.current {
            Some(w) => w.write_all(chunk),
            None => Err(io::Error::other("payload data before its section started")),
        }
    }

    fn end(&mut self, _: &PayloadEntry) -> io::Result<()> {
        if let Some(w) = self.current.take() {
            w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        }
        Ok(())
    }
}
