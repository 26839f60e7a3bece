//! Network namespaces as RAII values, veth pairs, bridges, spawned-process guards and the
//! polling helper.

use std::ffi::OsStr;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::sleep;
use std::time::{Duration, Instant};

use ipnet::IpNet;

use crate::{Result, TestkitError};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Fails loudly when the test is not running as root; returns `false` (the caller should
/// return early) only when `TWINWALL_SKIP_ROOT_TESTS=1` explicitly asks to skip.
pub fn require_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid == 0 {
        return true;
    }
    if std::env::var("TWINWALL_SKIP_ROOT_TESTS").as_deref() == Ok("1") {
        eprintln!("skipping: not root and TWINWALL_SKIP_ROOT_TESTS=1");
        return false;
    }
    panic!(
        "this test needs root (network namespaces, nftables); run it as root or set \
         TWINWALL_SKIP_ROOT_TESTS=1 to skip it explicitly"
    );
}

fn cmdline(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs a command to completion and returns its output whatever its exit status.
fn output(mut cmd: Command) -> Result<Output> {
    let line = cmdline(&cmd);
    tracing::debug!(cmd = %line, "run");
    cmd.stdin(Stdio::null())
        .output()
        .map_err(|source| TestkitError::Spawn { cmd: line, source })
}

/// Runs a command and fails with its stderr when it exits non-zero.
fn checked(cmd: Command) -> Result<Output> {
    let line = cmdline(&cmd);
    let out = output(cmd)?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(TestkitError::Failed {
            cmd: line,
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// A network namespace named `tw-PREFIX-PID-N`, deleted (with every process still inside
/// it) when dropped, also while unwinding from a panic.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates a fresh namespace with loopback up and IPv6 DAD off for the interfaces
    /// created in it. `prefix` is a short role name such as `fw1`; the pid and a
    /// process-wide counter make the name unique.
    pub fn new(prefix: &str) -> Result<Netns> {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("tw-{prefix}-{}-{n}", std::process::id());
        let mut c = Command::new("ip");
        c.args(["netns", "add", &name]);
        checked(c)?;
        let ns = Netns { name };
        ns.ip(["link", "set", "lo", "up"])?;
        // Interfaces created from now on skip IPv6 duplicate address detection: with it,
        // link-local addresses stay tentative for a second or two after a link comes up
        // and the first packets of a test get lost. Tests that need DAD turn it back on.
        ns.sysctl("net.ipv6.conf.default.accept_dad", "0")?;
        ns.sysctl("net.ipv6.conf.all.accept_dad", "0")?;
        tracing::debug!(netns = %ns.name, "created");
        Ok(ns)
    }

    /// The namespace's name (as `ip netns` knows it).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A `Command` that runs `program args` inside the namespace (`ip netns exec`).
    pub fn command<S: AsRef<OsStr>>(
        &self,
        program: &str,
        args: impl IntoIterator<Item = S>,
    ) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]).args(args);
        c
    }

    /// Runs a command inside the namespace and returns its output, whatever the exit status.
    pub fn exec<S: AsRef<OsStr>>(
        &self,
        program: &str,
        args: impl IntoIterator<Item = S>,
    ) -> Result<Output> {
        output(self.command(program, args))
    }

    /// Runs a command inside the namespace; a non-zero exit is an error carrying stderr.
    /// Returns stdout.
    pub fn run<S: AsRef<OsStr>>(
        &self,
        program: &str,
        args: impl IntoIterator<Item = S>,
    ) -> Result<String> {
        let out = checked(self.command(program, args))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs `ip ARGS` in the namespace (`ip -n NAME ...`); fails on non-zero exit.
    pub fn ip<S: AsRef<OsStr>>(&self, args: impl IntoIterator<Item = S>) -> Result<String> {
        let mut c = Command::new("ip");
        c.args(["-n", &self.name]).args(args);
        let out = checked(c)?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Starts a long-running command inside the namespace. The returned guard kills it on
    /// drop; dropping the namespace kills anything left inside as well.
    pub fn spawn<S: AsRef<OsStr>>(
        &self,
        program: &str,
        args: impl IntoIterator<Item = S>,
    ) -> Result<Spawned> {
        let mut c = self.command(program, args);
        c.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        self.spawn_command(c)
    }

    /// Like [`Netns::spawn`] with a prepared command (from [`Netns::command`]), so that the
    /// caller chooses stdio and environment.
    pub fn spawn_command(&self, mut c: Command) -> Result<Spawned> {
        let line = cmdline(&c);
        tracing::debug!(netns = %self.name, cmd = %line, "spawn");
        let child = c
            .spawn()
            .map_err(|source| TestkitError::Spawn { cmd: line, source })?;
        Ok(Spawned { child: Some(child) })
    }

    /// Brings a link up.
    pub fn link_up(&self, dev: &str) -> Result<()> {
        self.ip(["link", "set", dev, "up"]).map(drop)
    }

    /// Sets a link down (a carrier cut as seen by the other side of a veth).
    pub fn link_down(&self, dev: &str) -> Result<()> {
        self.ip(["link", "set", dev, "down"]).map(drop)
    }

    /// Adds an address with prefix length to a device. IPv6 addresses are added with
    /// `nodad` so that they are usable at once.
    pub fn add_addr(&self, dev: &str, addr: IpNet) -> Result<()> {
        let a = addr.to_string();
        match addr {
            IpNet::V4(_) => self.ip(["addr", "add", &a, "dev", dev]),
            IpNet::V6(_) => self.ip(["addr", "add", &a, "dev", dev, "nodad"]),
        }
        .map(drop)
    }

    /// Removes an address from a device.
    pub fn del_addr(&self, dev: &str, addr: IpNet) -> Result<()> {
        self.ip(["addr", "del", &addr.to_string(), "dev", dev])
            .map(drop)
    }

    /// Adds a route (`ip route add DEST via GW`).
    pub fn add_route(&self, destination: IpNet, gateway: std::net::IpAddr) -> Result<()> {
        self.ip([
            "route",
            "add",
            &destination.to_string(),
            "via",
            &gateway.to_string(),
        ])
        .map(drop)
    }

    /// Sets a sysctl inside the namespace (`sysctl -w KEY=VALUE`).
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        self.run("sysctl", ["-qw", &format!("{key}={value}")])
            .map(drop)
    }

    /// Turns on IPv4 and IPv6 forwarding (a router or firewall namespace).
    pub fn enable_forwarding(&self) -> Result<()> {
        self.sysctl("net.ipv4.ip_forward", "1")?;
        self.sysctl("net.ipv6.conf.all.forwarding", "1")
    }

    /// Creates a bridge device in this namespace and brings it up.
    pub fn add_bridge(&self, name: &str) -> Result<()> {
        bridge(self, name)
    }

    /// Runs `f` on a new thread that has joined this namespace (`setns`), and returns
    /// its result. Sockets created inside `f` belong to the namespace and keep working
    /// when handed back to other threads, so tests can use `std::net` listeners and
    /// clients directly instead of spawning helper programs.
    pub fn enter<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
        let path = format!("/run/netns/{}", self.name);
        let file = std::fs::File::open(&path).map_err(|source| TestkitError::Spawn {
            cmd: format!("open {path}"),
            source,
        })?;
        let name = self.name.clone();
        std::thread::spawn(move || {
            use std::os::fd::AsRawFd;
            // SAFETY: setns on a valid namespace fd only changes this (new, private)
            // thread's network namespace; no memory is touched.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            if rc != 0 {
                return Err(TestkitError::Spawn {
                    cmd: format!("setns {name}"),
                    source: std::io::Error::last_os_error(),
                });
            }
            Ok(f())
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    }

    /// Runs `f` on a new thread inside this namespace without waiting for it (long-running
    /// work such as an in-process service or a traffic generator); the handle yields its
    /// result.
    pub fn thread<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<Result<T>> {
        let path = format!("/run/netns/{}", self.name);
        let name = self.name.clone();
        std::thread::spawn(move || {
            use std::os::fd::AsRawFd;
            let file = std::fs::File::open(&path).map_err(|source| TestkitError::Spawn {
                cmd: format!("open {path}"),
                source,
            })?;
            // SAFETY: setns on a valid namespace fd only changes this (new, private)
            // thread's network namespace; no memory is touched.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            if rc != 0 {
                return Err(TestkitError::Spawn {
                    cmd: format!("setns {name}"),
                    source: std::io::Error::last_os_error(),
                });
            }
            Ok(f())
        })
    }

    /// The MAC address of a device in this namespace.
    pub fn mac(&self, dev: &str) -> Result<String> {
        let out = self.run("cat", [format!("/sys/class/net/{dev}/address")])?;
        Ok(out.trim().to_string())
    }

    /// Loads an nft script inside the namespace (`nft -f -`); a rejected script is an
    /// error carrying nft's message.
    pub fn nft(&self, script: &str) -> Result<()> {
        use std::io::Write;
        let mut c = self.command("nft", ["-f", "-"]);
        c.stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let line = format!("nft -f - (in {})", self.name);
        let mut child = c.spawn().map_err(|source| TestkitError::Spawn {
            cmd: line.clone(),
            source,
        })?;
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(script.as_bytes());
        }
        let out = child
            .wait_with_output()
            .map_err(|source| TestkitError::Spawn {
                cmd: line.clone(),
                source,
            })?;
        if out.status.success() {
            Ok(())
        } else {
            Err(TestkitError::Failed {
                cmd: line,
                status: out.status,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            })
        }
    }

    /// Pids of the processes currently inside the namespace.
    pub fn pids(&self) -> Vec<i32> {
        let mut c = Command::new("ip");
        c.args(["netns", "pids", &self.name]);
        match output(c) {
            Ok(o) => String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect(),
            Err(_) => Vec::new(),
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Kill whatever is still running inside first: a process holding the namespace
        // would keep its interfaces (and their addresses) alive after `ip netns del`.
        for _ in 0..3 {
            let pids = self.pids();
            if pids.is_empty() {
                break;
            }
            let mut c = Command::new("kill");
            c.arg("-KILL").args(pids.iter().map(|p| p.to_string()));
            let _ = output(c);
            sleep(Duration::from_millis(20));
        }
        let mut c = Command::new("ip");
        c.args(["netns", "del", &self.name]);
        if let Err(e) = checked(c) {
            eprintln!("testkit: cannot delete netns {}: {e}", self.name);
        }
        tracing::debug!(netns = %self.name, "deleted");
    }
}

/// A process started in a namespace; killed and reaped when dropped.
#[derive(Debug)]
pub struct Spawned {
    child: Option<Child>,
}

impl Spawned {
    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Mutable access to the child (to read its pipes or poll it).
    pub fn child(&mut self) -> &mut Child {
        self.child.as_mut().expect("child present until drop")
    }

    /// Kills the process and returns everything it wrote on stdout and stderr.
    pub fn kill_and_collect(mut self) -> Output {
        let mut child = self.child.take().expect("child present until drop");
        let _ = child.kill();
        child.wait_with_output().unwrap_or_else(|_| Output {
            status: std::process::ExitStatus::default(),
            stdout: Vec::new(),
            stderr: Vec::new(),
        })
    }

    /// Waits for the process to exit by itself, up to `timeout`; kills it after that.
    /// Returns its output either way.
    pub fn wait_timeout(mut self, timeout: Duration) -> Output {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child().try_wait() {
                break;
            }
            sleep(Duration::from_millis(10));
        }
        self.kill_and_collect()
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Creates a veth pair with one end in each namespace (given with its device name) and
/// brings both ends up.
pub fn veth(a: (&Netns, &str), b: (&Netns, &str)) -> Result<()> {
    a.0.ip([
        "link",
        "add",
        a.1,
        "type",
        "veth",
        "peer",
        "name",
        b.1,
        "netns",
        b.0.name(),
    ])?;
    a.0.link_up(a.1)?;
    b.0.link_up(b.1)
}

/// Creates a bridge `name` in `ns` and brings it up. Multicast snooping is off so that
/// VRRP and neighbour discovery reach every port as on a plain switch.
pub fn bridge(ns: &Netns, name: &str) -> Result<()> {
    ns.ip([
        "link",
        "add",
        name,
        "type",
        "bridge",
        "mcast_snooping",
        "0",
        "forward_delay",
        "0",
    ])?;
    ns.link_up(name)
}

/// Polls `cond` every `poll` until it returns true or `timeout` passes; returns whether it
/// became true. The condition is checked once more at the deadline.
pub fn wait_for(timeout: Duration, poll: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        sleep(poll);
    }
}
