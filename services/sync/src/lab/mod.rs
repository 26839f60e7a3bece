//! Network-namespace plumbing for the sync tests and benchmarks (root only): uniquely named
//! namespaces removed on drop, commands run inside them, and running a closure in a thread
//! that has entered a namespace (sockets opened there stay in that namespace).

use std::fs::File;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

/// Errors of the lab helpers.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// A command could not be started or failed.
    #[error("`{cmd}` failed: {detail}")]
    Command {
        /// The command line.
        cmd: String,
        /// Exit status and stderr.
        detail: String,
    },
    /// Entering a namespace failed.
    #[error("entering netns {name}: {source}")]
    Enter {
        /// Namespace name.
        name: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Runs a command, failing with its stderr when it exits non-zero.
pub fn sh(args: &[&str]) -> Result<Output, LabError> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| LabError::Command {
            cmd: args.join(" "),
            detail: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(LabError::Command {
            cmd: args.join(" "),
            detail: format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(out)
}

/// A network namespace that is deleted (with everything in it) when dropped.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `tw-<tag>-<pid>-<n>` with loopback up.
    pub fn new(tag: &str) -> Result<Netns, LabError> {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("tw-{tag}-{}-{n}", std::process::id());
        sh(&["ip", "netns", "add", &name])?;
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs a command inside the namespace.
    pub fn exec(&self, args: &[&str]) -> Result<Output, LabError> {
        let mut v = vec!["ip", "netns", "exec", &self.name];
        v.extend_from_slice(args);
        sh(&v)
    }

    /// Runs `ip ARGS` inside the namespace.
    pub fn ip(&self, args: &[&str]) -> Result<Output, LabError> {
        let mut v = vec!["ip", "-n", &self.name];
        v.extend_from_slice(args);
        sh(&v)
    }

    /// Runs `f` in a fresh thread that has entered this namespace and returns its result.
    pub fn enter<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, LabError> {
        let name = self.name.clone();
        let path = format!("/run/netns/{name}");
        std::thread::spawn(move || {
            let fd = File::open(&path).map_err(|source| LabError::Enter {
                name: name.clone(),
                source,
            })?;
            nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| {
                LabError::Enter {
                    name: name.clone(),
                    source: e.into(),
                }
            })?;
            Ok(f())
        })
        .join()
        .expect("netns thread panicked")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Connects two namespaces with a veth pair `a_if` (in `a`) -- `b_if` (in `b`), both up.
pub fn veth(a: &Netns, a_if: &str, b: &Netns, b_if: &str) -> Result<(), LabError> {
    sh(&[
        "ip",
        "link",
        "add",
        a_if,
        "netns",
        a.name(),
        "type",
        "veth",
        "peer",
        "name",
        b_if,
        "netns",
        b.name(),
    ])?;
    a.ip(&["link", "set", a_if, "up"])?;
    b.ip(&["link", "set", b_if, "up"])?;
    Ok(())
}

impl Netns {
    /// Runs `f` on a new thread inside this namespace and returns its handle (for
    /// long-running work such as a service or a traffic generator).
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<Result<T, LabError>> {
        let name = self.name.clone();
        std::thread::spawn(move || {
            let fd =
                File::open(format!("/run/netns/{name}")).map_err(|source| LabError::Enter {
                    name: name.clone(),
                    source,
                })?;
            nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| {
                LabError::Enter {
                    name: name.clone(),
                    source: e.into(),
                }
            })?;
            Ok(f())
        })
    }

    /// The MAC address of a device in this namespace.
    pub fn mac(&self, dev: &str) -> Result<String, LabError> {
        let out = self.exec(&["cat", &format!("/sys/class/net/{dev}/address")])?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Writes a sysctl inside the namespace.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<(), LabError> {
        self.exec(&["sysctl", "-qw", &format!("{key}={value}")])
            .map(drop)
    }

    /// Loads an nft script inside the namespace.
    pub fn nft(&self, script: &str) -> Result<(), LabError> {
        let path = std::env::temp_dir().join(format!("{}.nft", self.name));
        std::fs::write(&path, script).map_err(|e| LabError::Command {
            cmd: format!("write {}", path.display()),
            detail: e.to_string(),
        })?;
        let r = self.exec(&["nft", "-f", &path.display().to_string()]);
        let _ = std::fs::remove_file(&path);
        r.map(drop)
    }
}

pub mod pair;
pub mod traffic;
