//! Reproducible filesystem images: the slot squashfs (`mksquashfs` with fixed owners and
//! times, no xattrs) and the initramfs (newc cpio of a sorted file list, fixed owners,
//! inode numbers and mtimes). Two builds from the same tree give the same bytes.

use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::tool::{self, ToolError};

/// Errors while making an image.
#[derive(Debug, Error)]
pub enum ReproError {
    /// A tool failed.
    #[error(transparent)]
    Tool(#[from] ToolError),
    /// Walking or stamping the tree failed.
    #[error("{path}: {source}")]
    Io {
        /// File.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ReproError + '_ {
    move |source| ReproError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Every path under `root` (relative, without `root` itself), sorted bytewise, parents
/// before children. Symlinks are listed, not followed.
pub fn sorted_tree(root: &Path) -> Result<Vec<PathBuf>, ReproError> {
    fn walk(root: &Path, rel: &Path, out: &mut Vec<PathBuf>) -> Result<(), ReproError> {
        let dir = root.join(rel);
        let mut names: Vec<_> = std::fs::read_dir(&dir)
            .map_err(io(&dir))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()
            .map_err(io(&dir))?;
        names.sort();
        for n in names {
            let r = rel.join(&n);
            let meta = std::fs::symlink_metadata(root.join(&r)).map_err(io(&r))?;
            out.push(r.clone());
            if meta.is_dir() {
                walk(root, &r, out)?;
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(root, Path::new(""), &mut out)?;
    Ok(out)
}

/// Sets the mtime and atime of every entry under `root` (and `root`) to `epoch`,
/// without following symlinks.
pub fn stamp_tree(root: &Path, epoch: u64) -> Result<(), ReproError> {
    use nix::sys::stat::{UtimensatFlags, utimensat};
    use nix::sys::time::TimeSpec;
    let t = TimeSpec::new(epoch as i64, 0);
    let mut all = sorted_tree(root)?;
    all.push(PathBuf::new());
    for rel in all {
        let p = root.join(&rel);
        utimensat(
            nix::fcntl::AT_FDCWD,
            &p,
            &t,
            &t,
            UtimensatFlags::NoFollowSymlink,
        )
        .map_err(|e| ReproError::Io {
            path: p.clone(),
            source: e.into(),
        })?;
    }
    Ok(())
}

/// Packs `root` into an uncompressed newc cpio archive at `out` (the slot squashfs
/// compresses it). Entries sorted, owner root, mtimes `epoch`, inode numbers fixed by GNU
/// cpio's `--reproducible`.
pub fn cpio(root: &Path, out: &Path, epoch: u64) -> Result<(), ReproError> {
    stamp_tree(root, epoch)?;
    let mut list = Vec::new();
    for p in sorted_tree(root)? {
        list.extend_from_slice(p.as_os_str().as_encoded_bytes());
        list.push(0);
    }
    let archive = tool::run_env(
        "sh",
        [
            "-c",
            "cd \"$1\" && exec cpio --quiet -o -0 -H newc -R 0:0 --reproducible",
            "sh",
            &root.display().to_string(),
        ],
        Some(&list),
        &[],
    )?;
    std::fs::write(out, archive).map_err(io(out))?;
    Ok(())
}

/// Makes a squashfs of `root` at `out`: lzo (lzo1x_999 level 4), owners root, all times
/// `epoch`, no xattrs. GRUB's squash4 reads only gzip, xz and lzo. lzo because under
/// QEMU's TCG the guest decompresses everything it reads from the slot — every module,
/// nft and its libraries, every page of the binary the services fault in — and lzo
/// decompresses several times faster than gzip: in interleaved boots of the same image
/// (docs/init.md, round 5) the ruleset one-shot, root-modules and the way to the first
/// service were all faster with lzo. Level 4 because on the slot tree it costs about the
/// CPU of gzip-6 (3.0 s against 3.5 s user) for 33.2 MB against 29.1 MB, while lzo's
/// default level 8 took 2 min and gave 31.7 MB (measured 2026-12-02, loaded machine).
pub fn squashfs(root: &Path, out: &Path, epoch: u64) -> Result<(), ReproError> {
    let _ = std::fs::remove_file(out);
    let e = epoch.to_string();
    tool::run(
        "mksquashfs",
        [
            root.as_os_str(),
            out.as_os_str(),
            "-noappend".as_ref(),
            "-no-progress".as_ref(),
            "-quiet".as_ref(),
            "-comp".as_ref(),
            "lzo".as_ref(),
            "-Xalgorithm".as_ref(),
            "lzo1x_999".as_ref(),
            "-Xcompression-level".as_ref(),
            "4".as_ref(),
            "-all-root".as_ref(),
            "-no-xattrs".as_ref(),
            "-mkfs-time".as_ref(),
            e.as_ref(),
            "-all-time".as_ref(),
            e.as_ref(),
        ],
        None,
    )?;
    Ok(())
}

/// `epoch` (seconds since 1970, UTC) as xorriso's 16-digit `YYYYMMDDhhmmsscc` (used for
/// the ISO's volume UUID). Pure; civil-from-days after Howard Hinnant's algorithm, since
/// one date conversion does not warrant a date crate.
pub fn iso_date(epoch: u64) -> String {
    let days = (epoch / 86_400) as i64;
    let rem = epoch % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}{:02}{:02}{:02}00",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// SOURCE_DATE_EPOCH from the environment, else a fixed default (the project's epoch), so
/// builds are reproducible even when nobody sets it.
pub fn source_date_epoch() -> u64 {
    std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_EPOCH)
}

/// 2026-01-01T00:00:00Z.
pub const DEFAULT_EPOCH: u64 = 1_767_225_600;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_dates_are_utc_calendar_dates() {
        assert_eq!(iso_date(0), "1970010100000000");
        // The project's default epoch, 2026-01-01 00:00:00 UTC.
        assert_eq!(iso_date(1_767_225_600), "2026010100000000");
        // A leap day, with a time of day.
        assert_eq!(iso_date(951_827_696), "2000022912345600");
    }
}
