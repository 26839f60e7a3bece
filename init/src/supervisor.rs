//! The supervisor: starts the services in order (each waits for what it depends on to be
//! ready: by default every service before it), captures their output into ring buffers, reaps every child (orphaned
//! grandchildren included, since it is PID 1 or a child subreaper), restarts exits with
//! backoff and stops everything in order (VRRP, sync, the rest) when a shutdown signal
//! arrives.
//!
//! One thread owns all process state; signals arrive through a `signalfd`, so there are no
//! async signal handlers. Readiness of a daemon = its control socket answers `status`
//! (and the answer does not say `"ready": false`). A one-shot is ready when it exits 0.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, SigmaskHow, Signal, pthread_sigmask};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use serde_json::Value;
use twinwall_control::{Request, socket_path};

use crate::logbuf::{DEFAULT_CAPACITY, LogRing};
use crate::service::{AfterExit, Backoff, Exit, Kind, Service, ServiceSpec, State};
use crate::status::Shared;
use crate::sys::{PowerAction, Syscalls};

/// What "services up" prints about PID 1 itself.
#[derive(Debug, Clone, Copy)]
struct Footprint {
    rss_kb: u64,
    anon_kb: u64,
    file_kb: u64,
    // The binary's pages when it runs from the initramfs (ramfs counts as shmem).
    shmem_kb: u64,
    uptime_ms: u64,
    // Time the CPUs spent idle since boot (second field of /proc/uptime, summed over
    // CPUs): what starting more in parallel could still win on one vCPU.
    idle_ms: u64,
}

/// When PID 1 prints its footprint a second time after services up (its steady state:
/// the supervisor loop, reaping, log capture).
pub const STEADY_AFTER: Duration = Duration::from_secs(10);

/// Errors that stop the supervisor itself (service failures never do).
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    /// The signal mask or signalfd could not be set up.
    #[error("cannot set up signal handling: {0}")]
    Signals(Errno),
    /// Becoming a child subreaper failed.
    #[error("cannot become a child subreaper: {0}")]
    Subreaper(Errno),
    /// The run directory could not be created.
    #[error("cannot create run directory {path}: {source}")]
    RunDir {
        /// The directory.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// init's own control socket could not be bound.
    #[error(transparent)]
    Control(#[from] twinwall_control::ControlError),
}

/// The signals init handles: child exits and the four shutdown requests.
pub fn handled_signals() -> SigSet {
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGCHLD,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
        Signal::SIGHUP,
    ] {
        set.add(s);
    }
    set
}

/// Blocks the handled signals in the calling thread. Call it first thing, before any
/// thread is spawned, so every thread inherits the mask and the signals queue for the
/// signalfd. Children get a clean mask again before exec.
pub fn block_signals() -> Result<(), SupervisorError> {
    pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&handled_signals()), None)
        .map_err(SupervisorError::Signals)
}

/// What a shutdown signal means (busybox init's convention; SIGINT is ctrl-alt-del).
pub fn power_action_for(signal: Signal) -> Option<PowerAction> {
    match signal {
        Signal::SIGTERM | Signal::SIGINT => Some(PowerAction::Reboot),
        Signal::SIGUSR1 => Some(PowerAction::Halt),
        Signal::SIGUSR2 => Some(PowerAction::Poweroff),
        _ => None,
    }
}

/// Tunables of the supervisor.
#[derive(Debug, Clone)]
pub struct SupervisorConfig {
    /// Where the control sockets live.
    pub run_dir: PathBuf,
    /// Restart policy.
    pub backoff: Backoff,
    /// How long a service gets between SIGTERM and SIGKILL at shutdown.
    pub stop_timeout: Duration,
    /// Bytes of output kept per service.
    pub log_capacity: usize,
    /// Copy service output to init's stderr (the console), prefixed with the name.
    pub echo_logs: bool,
    /// How often a starting daemon's control socket is probed. Until the socket file
    /// exists a probe is one `stat`; the default (10 ms) keeps the wait between a daemon's
    /// readiness and the next service's start short (with 50 ms it was 20-60 ms per
    /// daemon in the QEMU boots).
    pub ready_poll: Duration,
    /// Once all services are up, shut down with this action (boot tests).
    pub shutdown_when_up: Option<PowerAction>,
    /// Called once when all services are up, after the "services up" line and PID 1's
    /// footprint are printed (PID 1 starts the late modules with it).
    pub when_up: Option<fn(&Shared)>,
    /// PID 1: when all services are up, hand back the clean pages of its own image
    /// ([`crate::memory::page_out_own_image`]) before printing its footprint, and print the
    /// footprint again [`STEADY_AFTER`] later.
    pub trim_when_up: bool,
    /// Sysctls written when the `ruleset` one-shot has completed (IP forwarding: never
    /// before a ruleset is in force).
    pub after_ruleset: Vec<(String, String)>,
    /// What each service waits for before it starts: the named services of the set must
    /// be ready (daemons) or done (one-shots); names not in the set are ignored. A
    /// service without an entry waits for every service before it in the set (the
    /// sequential default). See [`crate::services::start_after`].
    pub start_after: BTreeMap<String, Vec<String>>,
}

impl SupervisorConfig {
    /// Defaults for a run directory.
    pub fn new(run_dir: PathBuf) -> SupervisorConfig {
        SupervisorConfig {
            run_dir,
            backoff: Backoff::default(),
            stop_timeout: Duration::from_secs(10),
            log_capacity: DEFAULT_CAPACITY,
            echo_logs: false,
            ready_poll: Duration::from_millis(10),
            shutdown_when_up: None,
            when_up: None,
            trim_when_up: false,
            after_ruleset: Vec::new(),
            start_after: BTreeMap::new(),
        }
    }
}

/// Runs the service set until a shutdown signal; returns the requested power action after
/// every service has been stopped.
#[derive(Debug)]
pub struct Supervisor<'a, S: Syscalls + ?Sized> {
    sys: &'a S,
    cfg: SupervisorConfig,
    services: Vec<Service>,
    shared: Shared,
    sigfd: SignalFd,
    orphans: u64,
    services_up: bool,
    // When to print PID 1's steady-state footprint (`trim_when_up`).
    steady_at: Option<Instant>,
}

impl<'a, S: Syscalls + ?Sized> Supervisor<'a, S> {
    /// Prepares the supervisor. The handled signals must already be blocked
    /// ([`block_signals`]).
    pub fn new(
        sys: &'a S,
        specs: Vec<ServiceSpec>,
        cfg: SupervisorConfig,
        shared: Shared,
    ) -> Result<Self, SupervisorError> {
        let sigfd = SignalFd::with_flags(
            &handled_signals(),
            SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC,
        )
        .map_err(SupervisorError::Signals)?;
        std::fs::create_dir_all(&cfg.run_dir).map_err(|source| SupervisorError::RunDir {
            path: cfg.run_dir.clone(),
            source,
        })?;
        let services = specs
            .into_iter()
            .map(|s| Service::new(s, cfg.backoff))
            .collect();
        let me = Supervisor {
            sys,
            cfg,
            services,
            shared,
            sigfd,
            orphans: 0,
            services_up: false,
            steady_at: None,
        };
        me.publish();
        Ok(me)
    }

    fn publish(&self) {
        let services = self.services.clone();
        let (orphans, up) = (self.orphans, self.services_up);
        self.shared.update(|st| {
            st.services = services;
            st.orphans_reaped = orphans;
            st.services_up = up;
        });
    }

    /// The main loop. Returns when a shutdown signal has been handled and every service has
    /// stopped.
    pub fn run(&mut self) -> PowerAction {
        loop {
            let now = Instant::now();
            self.start_due(now);
            self.probe_ready();
            // A service that just became ready unblocks the next one: start it now rather
            // than after the idle wakeup (that cost 5 s per daemon at boot).
            self.start_due(Instant::now());
            if !self.services_up && self.services.iter().all(|s| s.state.unblocks_next()) {
                self.services_up = true;
                self.publish();
                tracing::info!(services = self.services.len(), "services up");
                if self.cfg.trim_when_up {
                    // Boot phases and the services' start-up are done: their code is not
                    // needed again (memory.rs). The services keep it in the page cache.
                    let bytes = crate::memory::page_out_own_image();
                    tracing::info!(bytes, "own image handed back at services up");
                    self.steady_at = Some(Instant::now() + STEADY_AFTER);
                }
                let mut err = std::io::stderr();
                let _ = writeln!(err, "twinwall: services up");
                let f = self.footprint();
                let _ = writeln!(
                    err,
                    "twinwall: rss_kb={} uptime_ms={} anon_kb={} file_kb={} shmem_kb={} idle_ms={}",
                    f.rss_kb, f.uptime_ms, f.anon_kb, f.file_kb, f.shmem_kb, f.idle_ms
                );
                if let Some(f) = self.cfg.when_up {
                    f(&self.shared);
                }
                if let Some(action) = self.cfg.shutdown_when_up {
                    return self.shutdown(action);
                }
            }
            if self.steady_at.is_some_and(|t| t <= Instant::now()) {
                self.steady_at = None;
                let f = self.footprint();
                let _ = writeln!(
                    std::io::stderr(),
                    "twinwall: PID 1 {} s after services up: VmRSS {} kB (anon {} file {} shmem {})",
                    STEADY_AFTER.as_secs(),
                    f.rss_kb,
                    f.anon_kb,
                    f.file_kb,
                    f.shmem_kb
                );
            }
            let mut timeout = self.next_wakeup(Instant::now());
            if let Some(at) = self.steady_at {
                timeout = timeout.min(at.saturating_duration_since(Instant::now()));
            }
            if let Some(action) = self.wait_signals(timeout) {
                return self.shutdown(action);
            }
        }
    }

    /// Own resident set (kB, from /proc/self/status: VmRSS and its RssAnon / RssFile
    /// parts — file pages are the binary's text (shmem when it runs from the initramfs),
    /// anon the heap and stacks) and time since
    /// the kernel started (ms, from /proc/uptime); 0 when unreadable.
    fn footprint(&self) -> Footprint {
        let read = |p: &str| {
            self.sys
                .read_file(std::path::Path::new(p))
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default()
        };
        let status = read("/proc/self/status");
        let kb = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap_or(0)
        };
        let uptime = read("/proc/uptime");
        let field = |n: usize| {
            uptime
                .split_whitespace()
                .nth(n)
                .and_then(|v| v.parse::<f64>().ok())
                .map_or(0, |s| (s * 1000.0) as u64)
        };
        let (uptime_ms, idle_ms) = (field(0), field(1));
        Footprint {
            rss_kb: kb("VmRSS:"),
            anon_kb: kb("RssAnon:"),
            file_kb: kb("RssFile:"),
            shmem_kb: kb("RssShmem:"),
            uptime_ms,
            idle_ms,
        }
    }

    /// Whether the waiting service `i` may start: what it waits for
    /// ([`SupervisorConfig::start_after`]) is ready or done.
    fn may_start(&self, i: usize) -> bool {
        match self.cfg.start_after.get(&self.services[i].spec.name) {
            Some(deps) => self
                .services
                .iter()
                .filter(|p| deps.contains(&p.spec.name))
                .all(|p| p.state.unblocks_next()),
            None => self.services[..i].iter().all(|p| p.state.unblocks_next()),
        }
    }

    /// Starts waiting services whose predecessors are ready, and restarts that are due.
    fn start_due(&mut self, now: Instant) {
        for i in 0..self.services.len() {
            let s = &self.services[i];
            let due = match s.state {
                State::Waiting => self.may_start(i),
                State::Backoff | State::CrashLoop => s.restart_due().is_some_and(|t| t <= now),
                _ => false,
            };
            if due {
                self.spawn(i, now);
            }
        }
    }

    fn spawn(&mut self, i: usize, now: Instant) {
        let spec = self.services[i].spec.clone();
        let mut cmd = std::process::Command::new(&spec.program);
        cmd.args(&spec.args)
            .env("TWINWALL_RUN_DIR", &self.cfg.run_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Own process group: a terminal's ctrl-c reaches only the supervisor, which
            // then stops the services in order.
            .process_group(0);
        // SAFETY: runs in the forked child before exec; it only calls sigprocmask and
        // signal, both async-signal-safe, and touches no memory shared with the parent.
        unsafe {
            cmd.pre_exec(reset_signals);
        }
        match self.sys.spawn(&mut cmd) {
            Ok(mut child) => {
                let pid = child.id() as i32;
                let ring = self.shared.log_ring(&spec.name, self.cfg.log_capacity);
                if let Some(out) = child.stdout.take() {
                    capture(&spec.name, out, ring.clone(), self.cfg.echo_logs);
                }
                if let Some(err) = child.stderr.take() {
                    capture(&spec.name, err, ring, self.cfg.echo_logs);
                }
                // The child is reaped by `reap` (waitpid(-1)); dropping `Child` neither
                // waits nor kills.
                drop(child);
                tracing::info!(service = %spec.name, pid, "service started");
                self.services[i].started(now, pid);
            }
            Err(e) => {
                tracing::error!(service = %spec.name, program = %spec.program.display(), error = %e, "cannot start service");
                let ring = self.shared.log_ring(&spec.name, self.cfg.log_capacity);
                ring.lock().unwrap_or_else(|p| p.into_inner()).push(
                    format!("twinwall: cannot start {}: {e}\n", spec.program.display()).as_bytes(),
                );
                self.services[i].started(now, 0);
                self.services[i].exited(now, Exit::SpawnFailed);
            }
        }
        self.publish();
    }

    fn probe_ready(&mut self) {
        let mut changed = false;
        for s in &mut self.services {
            if s.state != State::Starting || s.spec.kind != Kind::Daemon {
                continue;
            }
            let path = socket_path(&self.cfg.run_dir, &s.spec.name);
            if !path.exists() {
                continue;
            }
            match twinwall_control::request(
                &path,
                &Request::new("status"),
                Duration::from_millis(500),
            ) {
                Ok(data) if data.get("ready") != Some(&Value::Bool(false)) => {
                    tracing::info!(service = %s.spec.name, "service ready");
                    s.ready();
                    changed = true;
                }
                Ok(_) => {}
                Err(e) => tracing::debug!(service = %s.spec.name, error = %e, "not ready yet"),
            }
        }
        if changed {
            self.publish();
        }
    }

    fn next_wakeup(&self, now: Instant) -> Duration {
        let mut t = Duration::from_secs(5);
        for s in &self.services {
            if s.state == State::Starting && s.spec.kind == Kind::Daemon {
                t = t.min(self.cfg.ready_poll);
            }
            if let Some(due) = s.restart_due() {
                t = t.min(due.saturating_duration_since(now));
            }
        }
        t
    }

    /// Waits up to `timeout` for signals; reaps children; returns a requested shutdown.
    fn wait_signals(&mut self, timeout: Duration) -> Option<PowerAction> {
        let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(self.sigfd.as_fd(), PollFlags::POLLIN)];
        let _ = poll(&mut fds, PollTimeout::from(ms));
        let mut action = None;
        while let Ok(Some(info)) = self.sigfd.read_signal() {
            let Ok(sig) = Signal::try_from(info.ssi_signo as i32) else {
                continue;
            };
            if let Some(a) = power_action_for(sig) {
                tracing::info!(signal = %sig, action = ?a, "shutdown requested");
                action.get_or_insert(a);
            }
        }
        // Reap on every wake-up, not only on SIGCHLD: signals coalesce.
        self.reap(Instant::now());
        action
    }

    /// Collects every exited child. Our services are restarted per policy; anything else
    /// is an orphan that was re-parented to us.
    fn reap(&mut self, now: Instant) {
        let mut changed = false;
        loop {
            let (pid, exit) = match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid.as_raw(), Exit::Code(code)),
                Ok(WaitStatus::Signaled(pid, sig, _)) => (pid.as_raw(), Exit::Signal(sig as i32)),
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => continue,
            };
            changed = true;
            match self.services.iter_mut().find(|s| s.pid == Some(pid)) {
                Some(s) => {
                    let after = s.exited(now, exit);
                    if s.spec.name == "ruleset" && s.state == State::Done {
                        for (k, v) in &self.cfg.after_ruleset {
                            match self.sys.sysctl(k, v) {
                                Ok(()) => {
                                    tracing::info!(key = %k, value = %v, "sysctl after ruleset")
                                }
                                Err(e) => {
                                    tracing::error!(key = %k, value = %v, error = %e, "sysctl failed")
                                }
                            }
                        }
                    }
                    match after {
                        AfterExit::RestartIn(d) => {
                            tracing::warn!(service = %s.spec.name, pid, %exit, restart_in_ms = d.as_millis() as u64, state = ?s.state, "service exited")
                        }
                        AfterExit::Nothing => {
                            tracing::info!(service = %s.spec.name, pid, %exit, "service finished")
                        }
                    }
                }
                None => {
                    self.orphans += 1;
                    tracing::debug!(pid, %exit, "reaped orphan");
                }
            }
        }
        if changed {
            self.publish();
        }
    }

    /// Stops the services: VRRP first, then sync, then the rest in reverse start order.
    /// Each gets SIGTERM, then SIGKILL after `stop_timeout`.
    pub fn shutdown(&mut self, action: PowerAction) -> PowerAction {
        self.shared.update(|st| st.shutting_down = Some(action));
        let mut order: Vec<usize> = (0..self.services.len()).rev().collect();
        order.sort_by_key(|&i| self.services[i].spec.stop_rank());
        for i in order {
            let Some(pid) = self.services[i].pid else {
                self.services[i].stopping();
                continue;
            };
            let name = self.services[i].spec.name.clone();
            tracing::info!(service = %name, pid, "stopping service");
            self.services[i].stopping();
            self.publish();
            let _ = self.sys.kill(pid, Signal::SIGTERM);
            if !self.wait_gone(i, self.cfg.stop_timeout) {
                tracing::warn!(service = %name, pid, "did not stop in time, killing");
                // The whole process group (each service has its own): helpers the
                // service started must not outlive it.
                let _ = self.sys.kill(-pid, Signal::SIGKILL);
                self.wait_gone(i, Duration::from_secs(5));
            }
        }
        self.publish();
        action
    }

    fn wait_gone(&mut self, i: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.services[i].pid.is_some() {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            // Further shutdown signals are absorbed: the shutdown is already under way.
            let _ = self.wait_signals((deadline - now).min(Duration::from_millis(100)));
        }
        true
    }
}

/// In a child before exec: unblock what the supervisor blocks (std does not always reset
/// the mask) and restore default dispositions, so services see SIGTERM and SIGCHLD.
fn reset_signals() -> std::io::Result<()> {
    // SAFETY: plain libc calls on valid, stack-owned arguments; async-signal-safe.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
        for sig in [
            libc::SIGCHLD,
            libc::SIGTERM,
            libc::SIGINT,
            libc::SIGQUIT,
            libc::SIGHUP,
            libc::SIGUSR1,
            libc::SIGUSR2,
            libc::SIGPIPE,
        ] {
            libc::signal(sig, libc::SIG_DFL);
        }
    }
    Ok(())
}

/// Copies a child's output into its ring (and optionally the console) on a small thread.
fn capture(
    name: &str,
    mut pipe: impl Read + Send + 'static,
    ring: Arc<Mutex<LogRing>>,
    echo: bool,
) {
    let name = name.to_string();
    let spawned = std::thread::Builder::new()
        .name(format!("log-{name}"))
        .stack_size(64 * 1024)
        .spawn(move || {
            let mut buf = [0u8; 4096];
            // Console echo is per line: a service may write one line in several chunks.
            let mut partial: Vec<u8> = Vec::new();
            loop {
                match pipe.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        ring.lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push(&buf[..n]);
                        if echo {
                            partial.extend_from_slice(&buf[..n]);
                            echo_lines(&name, &mut partial, false);
                        }
                    }
                }
            }
            if echo {
                echo_lines(&name, &mut partial, true);
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start log capture thread");
    }
}

/// Writes the complete lines of `partial` to the console as `[name] line`; with `flush`
/// (or when a line grows past 4 KiB) the rest too.
fn echo_lines(name: &str, partial: &mut Vec<u8>, flush: bool) {
    let mut err = std::io::stderr().lock();
    while let Some(pos) = partial.iter().position(|&c| c == b'\n') {
        let line: Vec<u8> = partial.drain(..=pos).collect();
        let _ = writeln!(err, "[{name}] {}", String::from_utf8_lossy(&line[..pos]));
    }
    if (flush && !partial.is_empty()) || partial.len() > 4096 {
        let _ = writeln!(err, "[{name}] {}", String::from_utf8_lossy(partial));
        partial.clear();
    }
}

/// Reaps every exited child without blocking; returns how many were reaped and whether
/// children remain. For callers outside the supervisor loop (the final kill-all of PID 1).
pub fn reap_all() -> (usize, bool) {
    let mut n = 0;
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => return (n, true),
            Ok(_) => n += 1,
            Err(_) => return (n, false),
        }
    }
}
