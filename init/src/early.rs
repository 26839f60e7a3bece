//! The early phase: the kernel filesystems init needs before anything else, and the
//! kernel command line.

use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::MsFlags;

use crate::cmdline::Cmdline;
use crate::sys::Syscalls;

/// Errors of the early phase.
#[derive(Debug, thiserror::Error)]
pub enum EarlyError {
    /// A mount point could not be created.
    #[error("cannot create mount point {target}: {source}")]
    Mkdir {
        /// The directory.
        target: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// A kernel filesystem could not be mounted.
    #[error("cannot mount {fstype} on {target}: {errno}")]
    Mount {
        /// Mount point.
        target: PathBuf,
        /// Filesystem type.
        fstype: String,
        /// Cause.
        errno: Errno,
    },
    /// /proc/cmdline could not be read.
    #[error("cannot read /proc/cmdline: {0}")]
    Cmdline(std::io::Error),
}

/// One early mount: (fstype, target, flags, data).
type EarlyMount = (&'static str, &'static str, MsFlags, Option<&'static str>);

const KERNEL_FS: MsFlags = MsFlags::MS_NOSUID
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC);

/// The early mounts, in order.
pub const EARLY_MOUNTS: [EarlyMount; 6] = [
    ("proc", "/proc", KERNEL_FS, None),
    ("sysfs", "/sys", KERNEL_FS, None),
    ("devtmpfs", "/dev", MsFlags::MS_NOSUID, Some("mode=0755")),
    (
        "devpts",
        "/dev/pts",
        MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC),
        Some("mode=0620,ptmxmode=0666"),
    ),
    (
        "tmpfs",
        "/run",
        MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        Some("mode=0755"),
    ),
    (
        "tmpfs",
        "/tmp",
        MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        Some("mode=1777"),
    ),
];

/// Mounts the kernel filesystems and reads the kernel command line.
///
/// EBUSY on a mount means the kernel already mounted it (`CONFIG_DEVTMPFS_MOUNT`) and is
/// fine.
pub fn run(sys: &dyn Syscalls) -> Result<Cmdline, EarlyError> {
    for (fstype, target, flags, data) in EARLY_MOUNTS {
        let target = Path::new(target);
        sys.mkdir_all(target, 0o755)
            .map_err(|source| EarlyError::Mkdir {
                target: target.to_path_buf(),
                source,
            })?;
        match sys.mount(fstype, target, Some(fstype), flags, data) {
            Ok(()) | Err(Errno::EBUSY) => {}
            Err(errno) => {
                return Err(EarlyError::Mount {
                    target: target.to_path_buf(),
                    fstype: fstype.to_string(),
                    errno,
                });
            }
        }
    }
    // Conventional /dev links; failures (already present) do not matter.
    for (target, link) in [
        ("/proc/self/fd", "/dev/fd"),
        ("/proc/self/fd/0", "/dev/stdin"),
        ("/proc/self/fd/1", "/dev/stdout"),
        ("/proc/self/fd/2", "/dev/stderr"),
    ] {
        let _ = sys.symlink(Path::new(target), Path::new(link));
    }
    let text = sys
        .read_file(Path::new("/proc/cmdline"))
        .map_err(EarlyError::Cmdline)?;
    Ok(Cmdline::parse(&String::from_utf8_lossy(&text)))
}
