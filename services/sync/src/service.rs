//! The IO shell of the sync service: runs [`Core`] against the kernel (ctnetlink), the
//! peer (UDP on the sync link, sealed with the sync key), the control socket
//! (`RUN_DIR/sync.sock`) and a [`RoleSource`]. One main thread owns the core and the request
//! socket; helper threads only read sockets and forward what they read over a channel.
//!
//! Control commands (newline JSON, see `twinwall-control`):
//! * `{"cmd":"status"}` -> the [`Status`] with shell fields;
//! * `{"cmd":"set-role","args":{"role":"master"}}` -> answered after the external cache is
//!   committed into the kernel, so the VRRP service announces its VIPs only after that (the
//!   answer carries the [`CommitReport`]);
//! * `{"cmd":"resync"}` -> ask the peer for a full resync.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::json;
use twinwall_control::{Request, Response, Server};

use crate::core::{Core, Input, Output, Role, Status, Tuning};
use crate::entry::Filter;
use crate::kernel::{CommitReport, Conntrack, Event, EventPause, Events, KernelError};
use crate::wire::{self, Datagram, ReplayWindow, SyncKey, WireError};

/// Errors that stop the service from starting or running.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The node has no `[sync]` section.
    #[error("node {node}: the config has no [sync] section, nothing to replicate")]
    NoSync {
        /// Node name.
        node: String,
    },
    /// The UDP socket cannot be bound.
    #[error("sync link: cannot bind UDP {addr}: {source}")]
    Bind {
        /// Local address.
        addr: SocketAddr,
        /// OS error.
        #[source]
        source: std::io::Error,
    },
    /// The kernel side failed.
    #[error(transparent)]
    Kernel(#[from] KernelError),
    /// The control socket failed.
    #[error(transparent)]
    Control(#[from] twinwall_control::ControlError),
    /// A thread could not be started.
    #[error("cannot start thread {name}: {source}")]
    Thread {
        /// Thread name.
        name: &'static str,
        /// OS error.
        #[source]
        source: std::io::Error,
    },
}

/// How to run the service.
#[derive(Debug, Clone)]
pub struct Settings {
    /// This node's address on the sync link.
    pub local: IpAddr,
    /// The peer's address on the sync link.
    pub peer: IpAddr,
    /// UDP port (both sides).
    pub port: u16,
    /// What not to replicate.
    pub filter: Filter,
    /// The cluster sync key.
    pub key: SyncKey,
    /// Where `sync.sock` lives.
    pub run_dir: PathBuf,
    /// Role at start (until the role source says otherwise).
    pub role: Role,
    /// Protocol timers.
    pub tuning: Tuning,
    /// Receive buffer of the event socket (forced).
    pub event_rcvbuf: usize,
    /// `SCHED_FIFO` priority of the takeover commit (0: no boost). See [`RtBoost`].
    pub commit_rt_priority: i32,
    /// `SCHED_FIFO` priority of the service's own threads, the kernel event intake, the
    /// main loop and the UDP reader (0: normal scheduling). See [`DEFAULT_RT_PRIORITY`].
    pub rt_priority: i32,
}

impl Settings {
    /// Settings from a node view.
    pub fn from_view(
        view: &twinwall_config::NodeView,
        key: SyncKey,
        run_dir: PathBuf,
        role: Role,
    ) -> Result<Settings, ServiceError> {
        let s = view.sync.as_ref().ok_or_else(|| ServiceError::NoSync {
            node: view.node.clone(),
        })?;
        Ok(Settings {
            local: s.local,
            peer: s.peer,
            port: s.port,
            filter: Filter::from_view(view),
            key,
            run_dir,
            role,
            tuning: Tuning::default(),
            event_rcvbuf: 64 << 20,
            commit_rt_priority: DEFAULT_COMMIT_RT_PRIORITY,
            rt_priority: DEFAULT_RT_PRIORITY,
        })
    }
}

/// Something that tells the service about role changes (the VRRP service's event stream,
/// the control socket, a test). It runs on its own thread.
pub trait RoleSource: Send + 'static {
    /// Runs until the service stops, reporting role changes through `sink`.
    fn run(self: Box<Self>, sink: RoleSink);
}

/// The handle a [`RoleSource`] reports through.
#[derive(Debug, Clone)]
pub struct RoleSink {
    tx: Sender<Msg>,
}

impl RoleSink {
    /// Reports a role and waits until the service has acted on it; for `Master` that means
    /// the external cache is in the kernel (the report says how long it took). `None` when
    /// the service has stopped.
    pub fn set_role(&self, role: Role) -> Option<Option<CommitReport>> {
        let (tx, rx) = mpsc::channel();
        self.tx.send(Msg::Role(role, tx)).ok()?;
        rx.recv().ok()
    }
}

/// What a role change did, as the control socket answers it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RoleChange {
    /// The role now.
    pub role: Role,
    /// The commit done on becoming master.
    pub commit: Option<CommitReport>,
}

#[derive(Debug)]
enum Msg {
    Events(Vec<Event>, Instant),
    Overrun(Instant),
    Datagram(Vec<u8>),
    Role(Role, Sender<Option<CommitReport>>),
    Status(Sender<serde_json::Value>),
    Resync,
    Stop,
}

/// The status served on the control socket: the core's plus the shell's view.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceStatus {
    /// Our session epoch on the wire.
    pub epoch: u64,
    /// Sync link addresses.
    pub local: SocketAddr,
    /// The peer's address.
    pub peer: SocketAddr,
    /// Receive buffer the kernel granted to the event socket.
    pub event_rcvbuf: usize,
    /// Seconds since start.
    pub uptime_s: f64,
    /// The core's counters.
    #[serde(flatten)]
    pub core: Status,
}

/// A stop handle: `stop()` makes [`Service::run`] return.
#[derive(Debug, Clone)]
pub struct Stopper(Sender<Msg>);

impl Stopper {
    /// Asks the service to stop.
    pub fn stop(&self) {
        let _ = self.0.send(Msg::Stop);
    }
}

/// The running service.
#[derive(Debug)]
pub struct Service {
    settings: Settings,
    core: Core,
    conntrack: Conntrack,
    udp: UdpSocket,
    peer: SocketAddr,
    epoch: u64,
    counter: u64,
    start: Instant,
    tx: Sender<Msg>,
    rx: Receiver<Msg>,
    stop: Arc<AtomicBool>,
    event_rcvbuf: usize,
    replay: ReplayWindow,
    control: Option<Server>,
    threads: Vec<std::thread::JoinHandle<()>>,
    last_dump: Option<Instant>,
    /// Kernel events handled since free memory was last returned (see `allocator`).
    since_trim: usize,
    pause: EventPause,
    pause_commits: bool,
}

impl Drop for Service {
    /// Stops the reader threads and waits for them, so that the sockets are closed when
    /// the service is gone (a restart can bind the same port at once).
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.control.take();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Service {
    /// Opens every socket (in the current network namespace) and starts the reader
    /// threads; the control socket is `RUN_DIR/sync.sock`.
    pub fn start(settings: Settings) -> Result<Service, ServiceError> {
        let (tx, rx) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let conntrack = Conntrack::open()?;
        // Pausing event delivery during a commit is only safe when the committed entries
        // still get the event extension; otherwise commit with delivery on.
        let pause_commits = match crate::kernel::ensure_event_extension() {
            Ok(1) => true,
            Ok(old) => {
                tracing::info!(
                    old,
                    "nf_conntrack_events set to 1: every entry reports its changes"
                );
                true
            }
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    "cannot enable conntrack events for every entry: commits run with event \
                     delivery on (slower)"
                );
                false
            }
        };
        allocator::tune();
        let events = Events::subscribe(settings.event_rcvbuf)?;
        let event_rcvbuf = events.rcvbuf();
        let pause = events.pauser();
        let local = SocketAddr::new(settings.local, settings.port);
        let peer = SocketAddr::new(settings.peer, settings.port);
        let udp = UdpSocket::bind(local).map_err(|source| ServiceError::Bind {
            addr: local,
            source,
        })?;
        let _ =
            nix::sys::socket::setsockopt(&udp, nix::sys::socket::sockopt::RcvBufForce, &(16 << 20));
        let _ =
            nix::sys::socket::setsockopt(&udp, nix::sys::socket::sockopt::SndBufForce, &(16 << 20));
        let rt = settings.rt_priority;
        let mut threads = vec![spawn("sync-events", {
            let (tx, stop) = (tx.clone(), stop.clone());
            move || event_loop(events, tx, stop, rt)
        })?];
        threads.push(spawn("sync-udp", {
            let (tx, stop) = (tx.clone(), stop.clone());
            let udp = udp.try_clone().map_err(|source| ServiceError::Bind {
                addr: local,
                source,
            })?;
            move || udp_loop(udp, peer.ip(), tx, stop, rt)
        })?);
        let epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        let core = Core::new(settings.role, settings.filter.clone(), settings.tuning);
        let mut svc = Service {
            core,
            conntrack,
            udp,
            peer,
            epoch,
            counter: 0,
            start: Instant::now(),
            tx,
            rx,
            stop,
            event_rcvbuf,
            replay: ReplayWindow::default(),
            control: None,
            threads,
            last_dump: None,
            since_trim: 0,
            pause,
            pause_commits,
            settings,
        };
        svc.control = Some(Server::bind(
            &svc.settings.run_dir,
            "sync",
            control_handler(svc.tx.clone(), svc.settings.rt_priority),
        )?);
        // Our own table first: as master it is what the peer gets.
        let now = svc.now_us();
        svc.last_dump = Some(Instant::now());
        let dump = svc.conntrack.dump()?;
        let outs = svc.core.step(now, Input::Dump(dump));
        svc.execute(outs);
        tracing::info!(
            %local, %peer, role = ?svc.settings.role, event_rcvbuf,
            entries = svc.core.status(now).internal_entries,
            "sync service started"
        );
        Ok(svc)
    }

    /// A handle for role sources.
    pub fn role_sink(&self) -> RoleSink {
        RoleSink {
            tx: self.tx.clone(),
        }
    }

    /// A handle that stops [`Service::run`].
    pub fn stopper(&self) -> Stopper {
        Stopper(self.tx.clone())
    }

    /// Starts a role source on its own thread.
    pub fn add_role_source(&self, source: Box<dyn RoleSource>) -> Result<(), ServiceError> {
        let sink = self.role_sink();
        // It carries the commit's ack to VRRP: see `control_handler` for why real-time.
        let rt = self.settings.rt_priority;
        spawn("sync-role", move || {
            let _rt = RtBoost::raise(rt);
            source.run(sink)
        })
        .map(drop)
    }

    fn now_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64 + 1
    }

    /// Runs until stopped.
    pub fn run(mut self) -> Result<(), ServiceError> {
        let _rt = RtBoost::raise(self.settings.rt_priority);
        let tick = Duration::from_millis(5);
        let mut next_tick = Instant::now() + tick;
        loop {
            let wait = next_tick.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(wait) {
                Ok(Msg::Stop) => break,
                Ok(msg) => self.handle(msg),
                // Idle after a burst: the event batches it queued are freed by now.
                Err(RecvTimeoutError::Timeout) if self.since_trim >= TRIM_AFTER_EVENTS => {
                    self.since_trim = 0;
                    allocator::trim();
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            if Instant::now() >= next_tick {
                next_tick = Instant::now() + tick;
                let outs = self.core.step(self.now_us(), Input::Tick);
                self.execute(outs);
            }
        }
        tracing::info!("sync service stopped");
        Ok(())
    }

    fn handle(&mut self, msg: Msg) {
        let now = self.now_us();
        let outs = match msg {
            Msg::Events(events, _at) => {
                self.since_trim += events.len();
                self.core.step(now, Input::Kernel(events))
            }
            // A dump started after the overrun already reflects everything that was lost.
            Msg::Overrun(at) if self.last_dump.is_some_and(|d| d > at) => {
                self.core.status_mut().enobufs += 1;
                Vec::new()
            }
            Msg::Overrun(_) => self.core.step(now, Input::Overrun),
            Msg::Datagram(bytes) => match self.open(&bytes) {
                Some(input) => self.core.step(now, input),
                None => Vec::new(),
            },
            Msg::Role(role, reply) => {
                self.set_role(role, move |report| {
                    let _ = reply.send(report);
                });
                Vec::new()
            }
            Msg::Status(reply) => {
                let v = serde_json::to_value(self.status()).unwrap_or_else(|e| {
                    tracing::error!(error = %e, "status does not serialise");
                    json!({"error": e.to_string()})
                });
                let _ = reply.send(v);
                Vec::new()
            }
            Msg::Resync => self.core.step(now, Input::RequestResync),
            Msg::Stop => Vec::new(),
        };
        self.execute(outs);
    }

    fn open(&mut self, bytes: &[u8]) -> Option<Input> {
        let d = match wire::open(&self.settings.key, bytes) {
            Ok(d) => d,
            Err(WireError::BadMac) => {
                let s = self.core.status_mut();
                s.bad_mac += 1;
                tracing::warn!(bad_mac = s.bad_mac, "sync datagram with a bad MAC dropped");
                return None;
            }
            Err(e) => {
                self.core.status_mut().undecodable += 1;
                tracing::debug!(error = %e, "sync datagram dropped");
                return None;
            }
        };
        match self.replay.check(d.epoch, d.counter) {
            Ok(fresh) => Some(Input::Peer {
                fresh,
                body: d.body,
                bytes: bytes.len(),
            }),
            Err(e) => {
                self.core.status_mut().replays += 1;
                tracing::warn!(error = %e, "sync datagram dropped");
                None
            }
        }
    }

    /// Status as served on the control socket.
    pub fn status(&self) -> ServiceStatus {
        ServiceStatus {
            epoch: self.epoch,
            local: SocketAddr::new(self.settings.local, self.settings.port),
            peer: self.peer,
            event_rcvbuf: self.event_rcvbuf,
            uptime_s: self.start.elapsed().as_secs_f64(),
            core: self.core.status(self.now_us()),
        }
    }

    /// Commits the external cache (the peer's entries) into the kernel, in batches; this is
    /// what a takeover does before the VIPs move. Returns what was committed and how long
    /// it took.
    /// Event delivery is paused meanwhile (the kernel then skips building 2 events per
    /// entry); the caller dumps afterwards.
    /// The commit runs with a real-time priority (`commit_rt_priority`, see [`RtBoost`]).
    pub fn commit_external_cache(&mut self) -> Result<CommitReport, KernelError> {
        // The report's time and CPU cover the whole takeover step, not only the sends.
        let start = Instant::now();
        let cpu0 = crate::kernel::thread_cpu_us();
        let boost = RtBoost::raise(self.settings.commit_rt_priority);
        let now = self.now_us();
        if self.pause_commits {
            self.pause.pause();
        }
        let prepare_us = start.elapsed().as_micros() as u64;
        let prepare_cpu_us = crate::kernel::thread_cpu_us().saturating_sub(cpu0);
        // Batches are built straight from the cache (no copy of it first).
        let core = &self.core;
        let report = self
            .conntrack
            .commit_from(core.external_len(), || core.external_iter(now));
        let resumed = if self.pause_commits {
            self.pause.resume()
        } else {
            Ok(())
        };
        drop(boost);
        let mut report = report?;
        resumed?;
        let kernel_us = report.duration_us;
        report.duration_us = start.elapsed().as_micros() as u64;
        report.cpu_us += prepare_cpu_us;
        tracing::info!(
            entries = report.entries,
            existing = report.existing,
            failed = report.failed,
            duration_us = report.duration_us,
            prepare_us,
            kernel_us,
            cpu_us = report.cpu_us,
            "external cache committed into the kernel"
        );
        let outs = self.core.step(self.now_us(), Input::Committed(report));
        self.execute(outs);
        Ok(report)
    }

    /// Changes the role. `committed` is called as soon as the external cache is in the
    /// kernel (or at once when there is nothing to commit): that is what the VRRP handshake
    /// waits for, so the dump of the new master's table, which takes about as long as the
    /// commit, happens after the VIPs may move.
    fn set_role(&mut self, role: Role, committed: impl FnOnce(Option<CommitReport>)) {
        if role == self.core.role() {
            committed(None);
            return;
        }
        let mut report = None;
        if role == Role::Master {
            match self.commit_external_cache() {
                Ok(r) => report = Some(r),
                Err(e) => tracing::error!(error = %e, "commit of the external cache failed"),
            }
            committed(report);
            // The dump (0.1-0.4 s at 100k) is not on the critical path; the threads
            // that carry the answer to VRRP are (and VRRP is normally scheduled).
            let _normal = RtBoost::normal();
            self.dump();
        } else {
            committed(None);
        }
        let outs = self.core.step(self.now_us(), Input::Role(role));
        self.execute(outs);
        if let Some(c) = &self.control {
            c.publish(&json!({"event": "role", "role": role, "commit": report}));
        }
    }

    /// Dumps the kernel table into the core.
    fn dump(&mut self) {
        self.last_dump = Some(Instant::now());
        match self.conntrack.dump() {
            Ok(d) => {
                let outs = self.core.step(self.now_us(), Input::Dump(d));
                self.execute(outs);
            }
            Err(e) => tracing::error!(error = %e, "conntrack dump failed"),
        }
    }

    fn execute(&mut self, outs: Vec<Output>) {
        for o in outs {
            match o {
                Output::Send(body) => {
                    self.counter += 1;
                    let bytes = wire::seal(
                        &self.settings.key,
                        &Datagram {
                            epoch: self.epoch,
                            counter: self.counter,
                            body,
                        },
                    );
                    match self.udp.send_to(&bytes, self.peer) {
                        Ok(n) => {
                            let s = self.core.status_mut();
                            s.tx_datagrams += 1;
                            s.tx_bytes += n as u64;
                        }
                        Err(e) => tracing::debug!(error = %e, "sync send failed"),
                    }
                }
                Output::Dump => self.dump(),
                Output::Released => {
                    self.since_trim = 0;
                    allocator::trim();
                }
            }
        }
    }
}

/// The default `SCHED_FIFO` priority of the takeover commit: one above the service's own
/// threads ([`DEFAULT_RT_PRIORITY`]), above every normal process and below any other
/// real-time task the system has.
pub const DEFAULT_COMMIT_RT_PRIORITY: i32 = 2;

/// The default `SCHED_FIFO` priority of the service's threads (event intake, main loop,
/// UDP reader): the lowest real-time one, as conntrackd's `Scheduler` and keepalived's
/// `vrrp_rt_priority` options offer. Measured (docs/sync.md, round 5): under normal
/// scheduling, while another task kept one of the two CPUs busy at a real-time priority
/// (the benchmark's injector, as packets in softirq would), the intake thread spent
/// 0.47-0.69 s of a 0.54-0.72 s injection runnable but not running (0.03-0.1 s on a CPU):
/// woken by the kernel's event on the busy CPU it waited there, and 61-88k of 100k events
/// were still unread when the injection ended. `nice -10` did not change that (the wait
/// is not a share of the CPU but a place on the wrong one); a real-time wake-up is moved
/// to a CPU that runs only normal tasks. The threads sleep while nothing happens and use
/// ~5 µs of CPU per replicated entry; the kernel's real-time throttling (95 %) still
/// leaves normal tasks their share if one ever spins.
pub const DEFAULT_RT_PRIORITY: i32 = 1;

/// After a hand-off that emptied the event socket, the intake naps this long before it
/// waits again, so that a burst's next events are read together (one `recvmmsg` per up
/// to 128 of them, one hand-off) instead of one wake-up per event: a real-time intake
/// that is faster than the kernel's events otherwise woke for every one (22k context
/// switches and 2.3x the CPU per 100k, measured). An event that arrives while the socket
/// is idle is read at once; the nap delays only the events that follow it, by ≤ 1 ms.
const EVENT_COALESCE: Duration = Duration::from_millis(1);

/// Runs the calling thread (and the threads it starts meanwhile: the commit's builder)
/// under `SCHED_FIFO` until dropped, then restores its policy (the service's threads
/// hold one for their lifetime, see [`DEFAULT_RT_PRIORITY`]). The takeover commit is
/// CPU work (mostly the kernel's, in our thread's context) on the failover's critical
/// path: on a busy node, normal scheduling stretches 0.2 s of CPU into a second or more
/// of wall time (measured in `bench_sync`), while the VIPs wait. The kernel's real-time
/// throttling (95 % by default) still leaves the rest of the system its share.
/// Two libc calls: no crate is worth a dependency for that.
#[derive(Debug)]
pub struct RtBoost {
    restore: Option<(libc::c_int, libc::sched_param)>,
}

impl RtBoost {
    /// Raises the calling thread to `SCHED_FIFO` `priority` (0: does nothing). Refusal
    /// (no `CAP_SYS_NICE`, no real-time budget in the cgroup) is logged and ignored.
    pub fn raise(priority: i32) -> RtBoost {
        if priority <= 0 {
            return RtBoost { restore: None };
        }
        let old = current_policy();
        let set = old.is_some() && set_policy(libc::SCHED_FIFO, priority);
        if !set {
            tracing::debug!(
                error = %std::io::Error::last_os_error(),
                priority,
                "commit runs without a real-time priority"
            );
            return RtBoost { restore: None };
        }
        RtBoost { restore: old }
    }

    /// True when the thread runs boosted.
    pub fn active(&self) -> bool {
        self.restore.is_some()
    }

    /// Runs the calling thread under normal scheduling until dropped (then restores its
    /// policy): for work right after a takeover commit that must not keep normally
    /// scheduled threads (the VRRP service reading the ack) off this CPU.
    pub fn normal() -> RtBoost {
        match current_policy() {
            Some((policy, old)) if policy != libc::SCHED_OTHER => {
                let restore = set_policy(libc::SCHED_OTHER, 0).then_some((policy, old));
                RtBoost { restore }
            }
            _ => RtBoost { restore: None },
        }
    }

    /// Leaves the thread at the raised priority for the rest of its life.
    pub fn keep(mut self) {
        self.restore = None;
    }
}

/// The calling thread's scheduling policy and parameters, `None` if they cannot be read.
fn current_policy() -> Option<(libc::c_int, libc::sched_param)> {
    // SAFETY: sched_getscheduler(0) only reads the calling thread's policy.
    let policy = unsafe { libc::sched_getscheduler(0) };
    let mut param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sched_getparam(0, p) writes one sched_param through a valid pointer.
    let got = unsafe { libc::sched_getparam(0, &mut param) };
    (policy >= 0 && got == 0).then_some((policy, param))
}

/// Sets the calling thread's scheduling policy and priority; false if refused.
fn set_policy(policy: libc::c_int, priority: i32) -> bool {
    let param = libc::sched_param {
        sched_priority: priority,
    };
    // SAFETY: sched_setscheduler(0, ..) changes only the calling thread; `param` is a
    // valid sched_param.
    unsafe { libc::sched_setscheduler(0, policy, &param) == 0 }
}

impl Drop for RtBoost {
    fn drop(&mut self) {
        if let Some((policy, param)) = self.restore.take()
            && !set_policy(policy, param.sched_priority)
        {
            tracing::warn!(
                error = %std::io::Error::last_os_error(),
                "cannot restore the scheduling policy after the commit"
            );
        }
    }
}

/// glibc's allocator, tuned for a working set that comes in bursts.
///
/// The service's big buffers come and go: a dump of 100k entries (10 MB) and its working
/// set every 10 s on the master, the send queue during a burst or a resync (~20 MB at
/// 100k), the tables growing by doubling. glibc's default raises its mmap threshold to
/// the size of the last large block freed (up to 32 MB) and its trim threshold with it,
/// so after the first growth every later large buffer came from the heap and stayed
/// resident when freed: the master's RSS at 100k entries ended 1-10 MB above the
/// backup's, depending on the run. Fixed thresholds keep large buffers in their own
/// mappings (returned on free), and a trim after each burst returns the free pages of
/// the small-block heaps. No allocator crate does this for the system allocator, hence
/// the two libc calls (`mallopt`, `malloc_trim`).
mod allocator {
    /// Blocks from this size on get their own mapping.
    const MMAP_THRESHOLD: i32 = 256 << 10;
    /// Free memory at the top of a heap beyond this goes back at once.
    const TRIM_THRESHOLD: i32 = 1 << 20;

    /// Sets fixed thresholds (this also turns glibc's dynamic adjustment off).
    pub fn tune() {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: mallopt only sets allocator parameters; it takes glibc's own locks.
        unsafe {
            let ok = libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1;
            if !ok {
                tracing::debug!("mallopt refused the allocator thresholds");
            }
        }
    }

    /// Returns free heap pages to the system.
    pub fn trim() {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: malloc_trim only releases pages glibc holds free; it takes its own locks.
        unsafe {
            libc::malloc_trim(0);
        }
    }
}

/// Kernel events after which an idle main loop returns free memory: a burst's event
/// batches (~110 bytes per event) are freed in this thread but belong to the reader's
/// heap, which only a trim gives back.
const TRIM_AFTER_EVENTS: usize = 16 * 1024;

fn spawn(
    name: &'static str,
    f: impl FnOnce() + Send + 'static,
) -> Result<std::thread::JoinHandle<()>, ServiceError> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .map_err(|source| ServiceError::Thread { name, source })
}

fn event_loop(mut events: Events, tx: Sender<Msg>, stop: Arc<AtomicBool>, rt: i32) {
    let _rt = RtBoost::raise(rt);
    let mut batch = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        match events.recv(&mut batch) {
            Ok(()) => {
                let n = batch.len();
                if n > 0
                    && tx
                        .send(Msg::Events(std::mem::take(&mut batch), Instant::now()))
                        .is_err()
                {
                    return;
                }
                if n > 0 && n < crate::kernel::EVENT_BATCH {
                    std::thread::sleep(EVENT_COALESCE);
                }
            }
            Err(KernelError::Overrun) => {
                batch.clear();
                if tx.send(Msg::Overrun(Instant::now())).is_err() {
                    return;
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "conntrack event socket failed");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

fn udp_loop(udp: UdpSocket, peer: IpAddr, tx: Sender<Msg>, stop: Arc<AtomicBool>, rt: i32) {
    let _rt = RtBoost::raise(rt);
    let _ = udp.set_read_timeout(Some(Duration::from_millis(200)));
    let mut buf = vec![0u8; 65536];
    while !stop.load(Ordering::Relaxed) {
        match udp.recv_from(&mut buf) {
            Ok((n, from)) if from.ip() == peer => {
                if tx.send(Msg::Datagram(buf[..n].to_vec())).is_err() {
                    return;
                }
            }
            Ok((_, from)) => tracing::debug!(%from, "datagram from a stranger ignored"),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => {
                tracing::debug!(error = %e, "sync receive failed");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// The control socket's requests, forwarded to the main loop. A `set-role` request's
/// connection thread is raised to the service's real-time priority for the rest of its
/// life (one thread per connection): the answer is the takeover's "committed" and right
/// after the commit the main loop (real-time) dumps the new table for 0.1-0.4 s; a
/// normally scheduled thread woken meanwhile waited for a CPU, and the answer came
/// 2-138 ms after the commit ended (bench_sync, load ~2).
fn control_handler(tx: Sender<Msg>, rt: i32) -> Arc<twinwall_control::Handler> {
    let tx = Mutex::new(tx);
    Arc::new(move |req: &Request| {
        let send = |m: Msg| tx.lock().map(|t| t.send(m).is_ok()).unwrap_or(false);
        match req.cmd.as_str() {
            "status" => {
                let (rtx, rrx) = mpsc::channel();
                if !send(Msg::Status(rtx)) {
                    return Response::err("service is stopping");
                }
                match rrx.recv_timeout(Duration::from_secs(5)) {
                    Ok(v) => Response::ok(v),
                    Err(_) => Response::err("service did not answer"),
                }
            }
            "set-role" => {
                let role = req.args.get("role").cloned().unwrap_or_default();
                let role: Role = match serde_json::from_value(role) {
                    Ok(r) => r,
                    Err(_) => {
                        return Response::err(
                            "set-role needs args.role = \"master\" or \"backup\"",
                        );
                    }
                };
                RtBoost::raise(rt).keep();
                let (rtx, rrx) = mpsc::channel();
                if !send(Msg::Role(role, rtx)) {
                    return Response::err("service is stopping");
                }
                match rrx.recv_timeout(Duration::from_secs(30)) {
                    Ok(commit) => Response::ok(
                        serde_json::to_value(RoleChange { role, commit }).unwrap_or_default(),
                    ),
                    Err(_) => Response::err("role change did not complete"),
                }
            }
            "resync" => {
                if send(Msg::Resync) {
                    Response::ok(json!({}))
                } else {
                    Response::err("service is stopping")
                }
            }
            other => Response::err(format!(
                "unknown command {other:?} (status, set-role, resync)"
            )),
        }
    })
}

/// Runs the service in the foreground until SIGTERM or SIGINT: the signals are blocked in
/// every thread and taken by one waiting thread, which stops the main loop cleanly.
pub fn run_until_signalled(
    settings: Settings,
    roles: Option<Box<dyn RoleSource>>,
) -> Result<(), ServiceError> {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    // Before any thread exists, so that all of them inherit the mask.
    set.thread_block().map_err(|e| ServiceError::Thread {
        name: "signals",
        source: e.into(),
    })?;
    let svc = Service::start(settings)?;
    if let Some(r) = roles {
        svc.add_role_source(r)?;
    }
    let stopper = svc.stopper();
    spawn("sync-signals", move || {
        if let Ok(sig) = set.wait() {
            tracing::info!(signal = %sig, "stopping");
        }
        stopper.stop();
    })?;
    svc.run()
}

/// The VRRP service as the role source: a commit participant on `RUN_DIR/vrrp.sock`
/// (`commit-join`, then the event stream). On `becoming_master` the external cache is
/// committed and `commit-ack {group, seq}` sent, so the VIPs are announced only after the
/// commit; on `group_role` to anything but master the node becomes backup. It reconnects
/// every second while the VRRP service is not there.
#[derive(Debug, Clone)]
pub struct VrrpRoleSource {
    /// `RUN_DIR/vrrp.sock`.
    pub socket: PathBuf,
}

impl RoleSource for VrrpRoleSource {
    fn run(self: Box<Self>, sink: RoleSink) {
        use twinwall_control::{Request, request, subscribe};
        let timeout = Duration::from_secs(2);
        // Best effort: a VRRP service that restarted meanwhile has no count to lower
        // (its count does not go below zero); one that is still there must not count us
        // twice after the re-join below.
        let leave = || {
            let _ = request(&self.socket, &Request::new("commit-leave"), timeout);
        };
        loop {
            let Ok(mut sub) = subscribe(&self.socket, timeout) else {
                std::thread::sleep(Duration::from_secs(1));
                continue;
            };
            if request(&self.socket, &Request::new("commit-join"), timeout).is_err() {
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
            tracing::info!(socket = %self.socket.display(), "joined the VRRP commit handshake");
            // Events only tell changes: take the state as it is now (subscribed first, so
            // nothing falls between). A group already master has its VIPs up: commit
            // without an ack; otherwise we are backup.
            if let Ok(st) = request(&self.socket, &Request::new("status"), timeout) {
                let master = st["groups"].as_array().is_some_and(|gs| {
                    gs.iter().any(|g| {
                        g["state"]
                            .as_str()
                            .is_some_and(|s| s.eq_ignore_ascii_case("master"))
                    })
                });
                let role = if master { Role::Master } else { Role::Backup };
                tracing::info!(?role, "role from the VRRP service's current state");
                if sink.set_role(role).is_none() {
                    leave();
                    return;
                }
            }
            let stopped = loop {
                let ev = match sub.next_event(Some(Duration::from_secs(1))) {
                    Ok(Some(ev)) => ev,
                    Ok(None) => continue,
                    Err(_) => break false,
                };
                // Whatever else has arrived meanwhile (a commit in progress keeps this
                // thread waiting): act on the state the backlog ends in, not on each step.
                let mut backlog = vec![ev];
                let mut broken = false;
                loop {
                    match sub.next_event(Some(Duration::from_micros(1))) {
                        Ok(Some(ev)) => backlog.push(ev),
                        Ok(None) => break,
                        Err(_) => {
                            broken = true;
                            break;
                        }
                    }
                }
                match vrrp_decision(&backlog) {
                    VrrpDecision::Commit {
                        group,
                        seq,
                        skipped,
                    } => {
                        if skipped > 0 {
                            tracing::info!(skipped, "superseded VRRP announcements not acted on");
                        }
                        let Some(report) = sink.set_role(Role::Master) else {
                            break true;
                        };
                        let args = json!({"group": group, "seq": seq});
                        if let Err(e) = request(
                            &self.socket,
                            &Request::with_args("commit-ack", args),
                            timeout,
                        ) {
                            tracing::warn!(error = %e, "commit-ack to VRRP failed");
                        }
                        tracing::info!(commit = ?report, "committed before the VIPs move");
                    }
                    VrrpDecision::Backup { skipped } => {
                        if skipped > 0 {
                            tracing::info!(
                                skipped,
                                "VRRP left master before we committed: no commit"
                            );
                        }
                        if sink.set_role(Role::Backup).is_none() {
                            break true;
                        }
                    }
                    VrrpDecision::Master => {
                        let Some(report) = sink.set_role(Role::Master) else {
                            break true;
                        };
                        if report.is_some() {
                            tracing::warn!(commit = ?report, "VRRP went master without an announcement we saw: committed late");
                        }
                    }
                    VrrpDecision::Nothing => {}
                }
                if broken {
                    break false;
                }
            };
            leave();
            if stopped {
                return;
            }
            tracing::info!("VRRP event stream lost: leaving and re-joining the commit handshake");
        }
    }
}

/// What a backlog of VRRP events asks of the sync service.
#[derive(Debug, Clone, PartialEq)]
pub enum VrrpDecision {
    /// The group is becoming master (the last `becoming_master`, no later `group_role`
    /// away from master): commit and ack `seq` of `group`.
    Commit {
        /// The group to ack.
        group: serde_json::Value,
        /// The announcement to ack.
        seq: serde_json::Value,
        /// Earlier `becoming_master` announcements of the backlog, superseded.
        skipped: usize,
    },
    /// The group left master after the last `becoming_master` (or there was none):
    /// become backup; the superseded announcements get no commit.
    Backup {
        /// `becoming_master` announcements of the backlog that get no commit.
        skipped: usize,
    },
    /// The group is master already, with no `becoming_master` of ours to ack (the
    /// announcement came before we joined): become master (commit, no ack).
    Master,
    /// Nothing that changes the role.
    Nothing,
}

/// Reduces a backlog of VRRP events (oldest first) to what the sync service must do.
/// Acting on every step instead replays a flap that is over: VRRP went master, backup,
/// master and backup again while a commit ran, and the service committed a second time
/// (and briefly played master towards the real one) for an announcement VRRP had
/// abandoned long before (`tests/netns_sync_rejoin.rs` saw it).
pub fn vrrp_decision(backlog: &[serde_json::Value]) -> VrrpDecision {
    let mut decision = VrrpDecision::Nothing;
    let mut becoming = 0;
    for ev in backlog {
        match ev.get("event").and_then(|v| v.as_str()) {
            Some("becoming_master") => {
                becoming += 1;
                decision = VrrpDecision::Commit {
                    group: ev["group"].clone(),
                    seq: ev["seq"].clone(),
                    skipped: 0,
                };
            }
            Some("group_role") => {
                let to = ev.get("to").map(|v| v.to_string()).unwrap_or_default();
                if !to.to_ascii_lowercase().contains("master") {
                    decision = VrrpDecision::Backup { skipped: 0 };
                } else if !matches!(decision, VrrpDecision::Commit { .. }) {
                    // Master without an announcement we saw: we joined after its
                    // `becoming_master` (VRRP then went master when its commit wait ran
                    // out). Become master now; if we already are, nothing happens.
                    decision = VrrpDecision::Master;
                }
            }
            _ => {}
        }
    }
    match decision {
        VrrpDecision::Commit { group, seq, .. } => VrrpDecision::Commit {
            group,
            seq,
            skipped: becoming - 1,
        },
        VrrpDecision::Backup { .. } => VrrpDecision::Backup { skipped: becoming },
        VrrpDecision::Master => VrrpDecision::Master,
        VrrpDecision::Nothing => VrrpDecision::Nothing,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn becoming(seq: u64) -> serde_json::Value {
        json!({"event": "becoming_master", "group": "edge", "seq": seq})
    }

    fn role(to: &str) -> serde_json::Value {
        json!({"event": "group_role", "group": "edge", "from": "Master", "to": to})
    }

    #[test]
    fn one_announcement_is_committed() {
        assert_eq!(
            vrrp_decision(&[becoming(1), role("Master")]),
            VrrpDecision::Commit {
                group: json!("edge"),
                seq: json!(1),
                skipped: 0
            }
        );
    }

    #[test]
    fn master_without_an_announcement_we_saw_becomes_master() {
        // Joined after `becoming_master`: VRRP goes master when its commit wait ends.
        assert_eq!(vrrp_decision(&[role("Master")]), VrrpDecision::Master);
        assert_eq!(
            vrrp_decision(&[role("Backup"), role("Master")]),
            VrrpDecision::Master
        );
        // The usual order: the announcement's commit is acked, then master is no-op news.
        assert_eq!(
            vrrp_decision(&[becoming(3), role("Master")]),
            VrrpDecision::Commit {
                group: json!("edge"),
                seq: json!(3),
                skipped: 0
            }
        );
    }

    #[test]
    fn a_flap_that_ended_in_backup_commits_nothing() {
        let backlog = [role("Backup"), becoming(2), role("Master"), role("Backup")];
        assert_eq!(vrrp_decision(&backlog), VrrpDecision::Backup { skipped: 1 });
    }

    #[test]
    fn only_the_last_announcement_is_acked() {
        let backlog = [becoming(1), role("Backup"), becoming(2), role("Master")];
        assert_eq!(
            vrrp_decision(&backlog),
            VrrpDecision::Commit {
                group: json!("edge"),
                seq: json!(2),
                skipped: 1
            }
        );
    }

    #[test]
    fn other_events_change_nothing() {
        let other = json!({"event": "role_change", "router": 0});
        assert_eq!(vrrp_decision(&[other]), VrrpDecision::Nothing);
        assert_eq!(
            vrrp_decision(&[role("Fault")]),
            VrrpDecision::Backup { skipped: 0 }
        );
    }
}
