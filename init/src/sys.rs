//! Every system call init makes, behind one trait ([`Syscalls`]).
//!
//! The boot phases only talk to the machine through this trait, so each phase is tested
//! without being PID 1: [`RealSyscalls`] calls the kernel (via `nix`), [`RecordingSyscalls`]
//! records each call as a [`Call`] value, answers reads from an in-memory file tree and
//! returns scripted failures.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nix::errno::Errno;
use nix::kmod::{ModuleInitFlags, finit_module};
use nix::mount::{MntFlags, MsFlags};
use nix::sys::reboot::RebootMode;
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use serde::Serialize;

/// What `reboot(2)` should do at the end of an orderly shutdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PowerAction {
    /// Restart the machine (`RB_AUTOBOOT`).
    Reboot,
    /// Switch the machine off (`RB_POWER_OFF`).
    Poweroff,
    /// Stop the CPU without powering off (`RB_HALT_SYSTEM`).
    Halt,
}

impl PowerAction {
    fn mode(self) -> RebootMode {
        match self {
            PowerAction::Reboot => RebootMode::RB_AUTOBOOT,
            PowerAction::Poweroff => RebootMode::RB_POWER_OFF,
            PowerAction::Halt => RebootMode::RB_HALT_SYSTEM,
        }
    }
}

/// The system calls init makes. `&self` everywhere so one instance can be shared by the
/// boot phases and the supervisor thread.
pub trait Syscalls: Send + Sync {
    /// `mount(2)`.
    fn mount(
        &self,
        source: &str,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Result<(), Errno>;
    /// `umount2(2)`.
    fn umount(&self, target: &Path, flags: MntFlags) -> Result<(), Errno>;
    /// `mkdir -p` with the given mode for created directories.
    fn mkdir_all(&self, path: &Path, mode: u32) -> io::Result<()>;
    /// `finit_module(2)` on the file at `path` with the parameter string `params` (empty,
    /// or `async_probe`: the kernel probes the module's devices in the background).
    fn finit_module(&self, path: &Path, params: &str) -> Result<(), Errno>;
    /// Reads a whole file (used for /proc, /sys and the config partition).
    fn read_file(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// Lists the entry names of a directory, sorted.
    fn read_dir(&self, path: &Path) -> io::Result<Vec<String>>;
    /// Writes a whole file, replacing it (used for files under /run).
    fn write_file(&self, path: &Path, data: &[u8]) -> io::Result<()>;
    /// Writes a secret: like [`Syscalls::write_file`], but readable by its owner only
    /// (mode 0600 from the start, not chmod-ed afterwards).
    fn write_private(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        self.write_file(path, data)
    }
    /// Writes a sysctl, `key` in dotted form (`net.ipv4.ip_forward`).
    fn sysctl(&self, key: &str, value: &str) -> io::Result<()>;
    /// `symlink(2)`: creates `link` pointing at `target`.
    fn symlink(&self, target: &Path, link: &Path) -> io::Result<()>;
    /// Moves the mount at `new_root` onto `/` and `chroot`s into it (what `switch_root`
    /// does after the initramfs: `chdir(new_root)`, `mount --move . /`, `chroot .`).
    fn switch_root(&self, new_root: &Path) -> Result<(), Errno>;
    /// `pivot_root(2)` (for roots that are not the initramfs).
    fn pivot_root(&self, new_root: &Path, put_old: &Path) -> Result<(), Errno>;
    /// `chroot(2)` followed by `chdir("/")`.
    fn chroot(&self, path: &Path) -> Result<(), Errno>;
    /// `sethostname(2)`.
    fn sethostname(&self, name: &str) -> Result<(), Errno>;
    /// `sync(2)`.
    fn sync(&self);
    /// `reboot(2)`; returns only on failure.
    fn reboot(&self, action: PowerAction) -> Errno;
    /// Makes the kernel send SIGINT to init on ctrl-alt-del instead of rebooting at once.
    fn disable_cad(&self) -> Result<(), Errno>;
    /// `kill(2)`.
    fn kill(&self, pid: i32, signal: Signal) -> Result<(), Errno>;
    /// `prctl(PR_SET_CHILD_SUBREAPER, 1)`.
    fn set_child_subreaper(&self) -> Result<(), Errno>;
    /// `fork` + `exec` through `std::process`.
    fn spawn(&self, cmd: &mut std::process::Command) -> io::Result<std::process::Child>;
    /// Attaches `file` read-only to a free loop device and returns the device path.
    fn attach_loop(&self, file: &Path) -> Result<PathBuf, Errno>;
    /// `personality(ADDR_NO_RANDOMIZE)` on this process, other persona flags kept: its
    /// next exec and every child's get one fixed layout (see [`crate::layout`]).
    fn no_address_randomization(&self) -> Result<(), Errno>;
    /// The CPU's hypervisor identification: `None` without the CPUID hypervisor bit,
    /// else the signature of leaf 0x40000000 (`KVMKVMKVM`, `TCGTCGTCGTCG`, or empty).
    fn hypervisor(&self) -> Option<String>;
}

/// The kernel, through `nix`.
#[derive(Debug, Default, Clone, Copy)]
pub struct RealSyscalls;

impl Syscalls for RealSyscalls {
    fn mount(
        &self,
        source: &str,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Result<(), Errno> {
        nix::mount::mount(Some(source), target, fstype, flags, data)
    }

    fn umount(&self, target: &Path, flags: MntFlags) -> Result<(), Errno> {
        nix::mount::umount2(target, flags)
    }

    fn mkdir_all(&self, path: &Path, mode: u32) -> io::Result<()> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(mode)
            .create(path)
    }

    fn finit_module(&self, path: &Path, params: &str) -> Result<(), Errno> {
        let file = File::open(path).map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(0)))?;
        let params = CString::new(params).map_err(|_| Errno::EINVAL)?;
        finit_module(&file, &params, ModuleInitFlags::empty())
    }

    fn read_file(&self, path: &Path) -> io::Result<Vec<u8>> {
        std::fs::read(path)
    }

    fn read_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(path)? {
            names.push(entry?.file_name().to_string_lossy().into_owned());
        }
        names.sort();
        Ok(names)
    }

    fn write_file(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        std::fs::write(path, data)
    }

    fn write_private(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)?;
        f.write_all(data)
    }

    fn sysctl(&self, key: &str, value: &str) -> io::Result<()> {
        std::fs::write(sysctl_path(key), value)
    }

    fn symlink(&self, target: &Path, link: &Path) -> io::Result<()> {
        std::os::unix::fs::symlink(target, link)
    }

    fn switch_root(&self, new_root: &Path) -> Result<(), Errno> {
        nix::unistd::chdir(new_root)?;
        nix::mount::mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)?;
        nix::unistd::chroot(".")?;
        nix::unistd::chdir("/")
    }

    fn pivot_root(&self, new_root: &Path, put_old: &Path) -> Result<(), Errno> {
        nix::unistd::pivot_root(new_root, put_old)
    }

    fn chroot(&self, path: &Path) -> Result<(), Errno> {
        nix::unistd::chroot(path)?;
        nix::unistd::chdir("/")
    }

    fn sethostname(&self, name: &str) -> Result<(), Errno> {
        nix::unistd::sethostname(name)
    }

    fn sync(&self) {
        nix::unistd::sync();
    }

    fn reboot(&self, action: PowerAction) -> Errno {
        match nix::sys::reboot::reboot(action.mode()) {
            Ok(never) => match never {},
            Err(e) => e,
        }
    }

    fn disable_cad(&self) -> Result<(), Errno> {
        nix::sys::reboot::set_cad_enabled(false)
    }

    fn kill(&self, pid: i32, signal: Signal) -> Result<(), Errno> {
        nix::sys::signal::kill(Pid::from_raw(pid), signal)
    }

    fn set_child_subreaper(&self) -> Result<(), Errno> {
        nix::sys::prctl::set_child_subreaper(true)
    }

    fn spawn(&self, cmd: &mut std::process::Command) -> io::Result<std::process::Child> {
        cmd.spawn()
    }

    fn attach_loop(&self, file: &Path) -> Result<PathBuf, Errno> {
        attach_loop(file)
    }

    fn hypervisor(&self) -> Option<String> {
        cpuid_hypervisor()
    }

    fn no_address_randomization(&self) -> Result<(), Errno> {
        // 0xffffffff queries the current persona without changing it.
        // SAFETY: personality(2) takes a plain integer and changes only this process's
        // execution-domain flags; no memory is passed.
        let cur = unsafe { libc::personality(0xffff_ffff) };
        if cur == -1 {
            return Err(Errno::last());
        }
        let want = (cur as libc::c_ulong) | libc::ADDR_NO_RANDOMIZE as libc::c_ulong;
        // SAFETY: as above.
        if unsafe { libc::personality(want) } == -1 {
            return Err(Errno::last());
        }
        Ok(())
    }
}

/// Loop ioctls from `<linux/loop.h>`. Written by hand: the `loopdev` crate needs bindgen
/// (libclang) at build time for these three numbers.
const LOOP_SET_FD: libc::c_ulong = 0x4C00;
const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;

#[cfg(target_arch = "x86_64")]
fn cpuid_hypervisor() -> Option<String> {
    use std::arch::x86_64::__cpuid;
    if __cpuid(1).ecx & (1 << 31) == 0 {
        // Without the bit, leaf 0x40000000 is undefined (hardware returns other data).
        return None;
    }
    let l = __cpuid(0x4000_0000);
    let bytes: Vec<u8> = [l.ebx, l.ecx, l.edx]
        .iter()
        .flat_map(|r| r.to_le_bytes())
        .collect();
    Some(
        String::from_utf8_lossy(&bytes)
            .trim_matches(char::from(0))
            .trim()
            .to_string(),
    )
}

#[cfg(not(target_arch = "x86_64"))]
fn cpuid_hypervisor() -> Option<String> {
    None
}

fn attach_loop(file: &Path) -> Result<PathBuf, Errno> {
    use std::os::fd::AsRawFd;
    let errno = |e: io::Error| Errno::from_raw(e.raw_os_error().unwrap_or(0));
    let control = File::open("/dev/loop-control").map_err(errno)?;
    // SAFETY: LOOP_CTL_GET_FREE takes no argument and only returns an index.
    let n = unsafe { libc::ioctl(control.as_raw_fd(), LOOP_CTL_GET_FREE as _) };
    let n = Errno::result(n)?;
    let dev = PathBuf::from(format!("/dev/loop{n}"));
    let backing = File::open(file).map_err(errno)?;
    // Opened read-only, so the kernel marks the loop device read-only.
    let loopdev = File::open(&dev).map_err(errno)?;
    // SAFETY: LOOP_SET_FD takes a file descriptor by value; both fds are open for the
    // duration of the call.
    let r = unsafe {
        libc::ioctl(
            loopdev.as_raw_fd(),
            LOOP_SET_FD as _,
            backing.as_raw_fd() as libc::c_ulong,
        )
    };
    Errno::result(r)?;
    Ok(dev)
}

/// `/proc/sys/net/ipv4/ip_forward` for `net.ipv4.ip_forward`.
pub fn sysctl_path(key: &str) -> PathBuf {
    Path::new("/proc/sys").join(key.replace('.', "/"))
}

/// One recorded system call (with the arguments that matter for the tests).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "call", rename_all = "snake_case")]
#[allow(missing_docs)]
pub enum Call {
    Mount {
        source: String,
        target: PathBuf,
        fstype: Option<String>,
        flags: u64,
        data: Option<String>,
    },
    Umount {
        target: PathBuf,
    },
    MkdirAll {
        path: PathBuf,
        mode: u32,
    },
    FinitModule {
        path: PathBuf,
        params: String,
    },
    ReadFile {
        path: PathBuf,
    },
    ReadDir {
        path: PathBuf,
    },
    WriteFile {
        path: PathBuf,
        data: String,
    },
    Sysctl {
        key: String,
        value: String,
    },
    Symlink {
        target: PathBuf,
        link: PathBuf,
    },
    SwitchRoot {
        new_root: PathBuf,
    },
    PivotRoot {
        new_root: PathBuf,
        put_old: PathBuf,
    },
    Chroot {
        path: PathBuf,
    },
    Sethostname {
        name: String,
    },
    Sync,
    Reboot {
        action: PowerAction,
    },
    DisableCad,
    Kill {
        pid: i32,
        signal: String,
    },
    SetChildSubreaper,
    Spawn {
        program: String,
        args: Vec<String>,
    },
    AttachLoop {
        file: PathBuf,
    },
    NoAddressRandomization,
}

impl Call {
    /// The path (or key) the call acts on, used to match scripted failures.
    pub fn subject(&self) -> String {
        match self {
            Call::Mount { target, .. }
            | Call::Umount { target }
            | Call::SwitchRoot { new_root: target }
            | Call::PivotRoot {
                new_root: target, ..
            }
            | Call::Chroot { path: target } => target.display().to_string(),
            Call::MkdirAll { path, .. }
            | Call::FinitModule { path, .. }
            | Call::ReadFile { path }
            | Call::ReadDir { path }
            | Call::WriteFile { path, .. }
            | Call::AttachLoop { file: path } => path.display().to_string(),
            Call::Sysctl { key, .. } => key.clone(),
            Call::Symlink { link, .. } => link.display().to_string(),
            Call::Sethostname { name } => name.clone(),
            Call::Kill { pid, .. } => pid.to_string(),
            Call::Spawn { program, .. } => program.clone(),
            Call::Sync
            | Call::Reboot { .. }
            | Call::DisableCad
            | Call::SetChildSubreaper
            | Call::NoAddressRandomization => String::new(),
        }
    }

    /// The call's kind as a short name (`mount`, `finit_module`, ...).
    pub fn kind(&self) -> &'static str {
        match self {
            Call::Mount { .. } => "mount",
            Call::Umount { .. } => "umount",
            Call::MkdirAll { .. } => "mkdir_all",
            Call::FinitModule { .. } => "finit_module",
            Call::ReadFile { .. } => "read_file",
            Call::ReadDir { .. } => "read_dir",
            Call::WriteFile { .. } => "write_file",
            Call::Sysctl { .. } => "sysctl",
            Call::Symlink { .. } => "symlink",
            Call::SwitchRoot { .. } => "switch_root",
            Call::PivotRoot { .. } => "pivot_root",
            Call::Chroot { .. } => "chroot",
            Call::Sethostname { .. } => "sethostname",
            Call::Sync => "sync",
            Call::Reboot { .. } => "reboot",
            Call::DisableCad => "disable_cad",
            Call::Kill { .. } => "kill",
            Call::SetChildSubreaper => "set_child_subreaper",
            Call::NoAddressRandomization => "no_address_randomization",
            Call::Spawn { .. } => "spawn",
            Call::AttachLoop { .. } => "attach_loop",
        }
    }
}

#[derive(Debug, Default)]
struct Recorder {
    calls: Vec<Call>,
    /// (kind, subject) -> errno to return.
    failures: Vec<(String, String, Errno)>,
    files: BTreeMap<PathBuf, Vec<u8>>,
    hypervisor: Option<String>,
}

/// Records every call, serves reads from an in-memory tree and fails where told to.
///
/// Writes (`write_file`, `sysctl`) land in the same tree, so a test can read back what a
/// phase wrote. Directories are implied by the files below them.
#[derive(Debug, Default)]
pub struct RecordingSyscalls {
    inner: Mutex<Recorder>,
}

impl RecordingSyscalls {
    /// An empty recorder: no files, no failures.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a file to the in-memory tree.
    pub fn with_file(self, path: impl Into<PathBuf>, contents: impl Into<Vec<u8>>) -> Self {
        self.lock().files.insert(path.into(), contents.into());
        self
    }

    /// Pretends the CPU reports a hypervisor with this signature (default: none, bare
    /// metal).
    pub fn with_hypervisor(self, signature: &str) -> Self {
        self.lock().hypervisor = Some(signature.to_string());
        self
    }

    /// Makes every call of `kind` (see [`Call::kind`]) on `subject` fail with `errno`.
    pub fn fail(self, kind: &str, subject: impl Into<String>, errno: Errno) -> Self {
        self.lock()
            .failures
            .push((kind.to_string(), subject.into(), errno));
        self
    }

    /// The calls made so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    /// The calls of one kind, in order.
    pub fn calls_of(&self, kind: &str) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|c| c.kind() == kind)
            .collect()
    }

    /// A file of the in-memory tree (including what was written).
    pub fn file(&self, path: impl AsRef<Path>) -> Option<Vec<u8>> {
        self.lock().files.get(path.as_ref()).cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Recorder> {
        // A test that panicked while holding the lock already failed; keep the data.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn record(&self, call: Call) -> Result<(), Errno> {
        let mut r = self.lock();
        let failure = r
            .failures
            .iter()
            .find(|(k, s, _)| k == call.kind() && *s == call.subject())
            .map(|(_, _, e)| *e);
        r.calls.push(call);
        match failure {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

fn io_err(e: Errno) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

impl Syscalls for RecordingSyscalls {
    fn mount(
        &self,
        source: &str,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Result<(), Errno> {
        self.record(Call::Mount {
            source: source.to_string(),
            target: target.to_path_buf(),
            fstype: fstype.map(str::to_string),
            flags: flags.bits(),
            data: data.map(str::to_string),
        })
    }

    fn umount(&self, target: &Path, _flags: MntFlags) -> Result<(), Errno> {
        self.record(Call::Umount {
            target: target.to_path_buf(),
        })
    }

    fn mkdir_all(&self, path: &Path, mode: u32) -> io::Result<()> {
        self.record(Call::MkdirAll {
            path: path.to_path_buf(),
            mode,
        })
        .map_err(io_err)
    }

    fn finit_module(&self, path: &Path, params: &str) -> Result<(), Errno> {
        self.record(Call::FinitModule {
            path: path.to_path_buf(),
            params: params.to_string(),
        })?;
        if self.lock().files.contains_key(path) {
            Ok(())
        } else {
            Err(Errno::ENOENT)
        }
    }

    fn read_file(&self, path: &Path) -> io::Result<Vec<u8>> {
        self.record(Call::ReadFile {
            path: path.to_path_buf(),
        })
        .map_err(io_err)?;
        self.lock()
            .files
            .get(path)
            .cloned()
            .ok_or_else(|| io_err(Errno::ENOENT))
    }

    fn read_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        self.record(Call::ReadDir {
            path: path.to_path_buf(),
        })
        .map_err(io_err)?;
        let r = self.lock();
        let mut names: Vec<String> = r
            .files
            .keys()
            .filter_map(|p| p.strip_prefix(path).ok())
            .filter_map(|rest| rest.components().next())
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        names.dedup();
        if names.is_empty() {
            return Err(io_err(Errno::ENOENT));
        }
        Ok(names)
    }

    fn write_file(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        self.record(Call::WriteFile {
            path: path.to_path_buf(),
            data: String::from_utf8_lossy(data).into_owned(),
        })
        .map_err(io_err)?;
        self.lock().files.insert(path.to_path_buf(), data.to_vec());
        Ok(())
    }

    fn sysctl(&self, key: &str, value: &str) -> io::Result<()> {
        self.record(Call::Sysctl {
            key: key.to_string(),
            value: value.to_string(),
        })
        .map_err(io_err)?;
        self.lock()
            .files
            .insert(sysctl_path(key), value.as_bytes().to_vec());
        Ok(())
    }

    fn symlink(&self, target: &Path, link: &Path) -> io::Result<()> {
        self.record(Call::Symlink {
            target: target.to_path_buf(),
            link: link.to_path_buf(),
        })
        .map_err(io_err)
    }

    fn switch_root(&self, new_root: &Path) -> Result<(), Errno> {
        self.record(Call::SwitchRoot {
            new_root: new_root.to_path_buf(),
        })
    }

    fn pivot_root(&self, new_root: &Path, put_old: &Path) -> Result<(), Errno> {
        self.record(Call::PivotRoot {
            new_root: new_root.to_path_buf(),
            put_old: put_old.to_path_buf(),
        })
    }

    fn chroot(&self, path: &Path) -> Result<(), Errno> {
        self.record(Call::Chroot {
            path: path.to_path_buf(),
        })
    }

    fn sethostname(&self, name: &str) -> Result<(), Errno> {
        self.record(Call::Sethostname {
            name: name.to_string(),
        })
    }

    fn sync(&self) {
        let _ = self.record(Call::Sync);
    }

    fn reboot(&self, action: PowerAction) -> Errno {
        match self.record(Call::Reboot { action }) {
            Err(e) => e,
            // The real call does not return on success; the recorder reports success as
            // "no error" so callers can see it in the log and carry on in tests.
            Ok(()) => Errno::UnknownErrno,
        }
    }

    fn disable_cad(&self) -> Result<(), Errno> {
        self.record(Call::DisableCad)
    }

    fn kill(&self, pid: i32, signal: Signal) -> Result<(), Errno> {
        self.record(Call::Kill {
            pid,
            signal: signal.as_str().to_string(),
        })
    }

    fn set_child_subreaper(&self) -> Result<(), Errno> {
        self.record(Call::SetChildSubreaper)
    }

    fn spawn(&self, cmd: &mut std::process::Command) -> io::Result<std::process::Child> {
        self.record(Call::Spawn {
            program: cmd.get_program().to_string_lossy().into_owned(),
            args: cmd
                .get_args()
                .map(|a| a.to_string_lossy().into_owned())
                .collect(),
        })
        .map_err(io_err)?;
        cmd.spawn()
    }

    fn attach_loop(&self, file: &Path) -> Result<PathBuf, Errno> {
        self.record(Call::AttachLoop {
            file: file.to_path_buf(),
        })?;
        Ok(PathBuf::from("/dev/loop0"))
    }

    fn no_address_randomization(&self) -> Result<(), Errno> {
        self.record(Call::NoAddressRandomization)
    }

    fn hypervisor(&self) -> Option<String> {
        self.lock().hypervisor.clone()
    }
}
