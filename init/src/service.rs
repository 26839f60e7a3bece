//! One supervised service as data: its spec, its state machine and its bounded event
//! history (Talos-style), and the restart backoff policy. Pure: times are passed in, no
//! process is touched here, so every transition is tested directly.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// How many events each service keeps.
pub const EVENT_HISTORY: usize = 32;

/// Whether a service runs once or forever.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Runs to completion; exit 0 is success and readiness (the ruleset apply).
    Oneshot,
    /// Runs until stopped; ready when its control socket says so.
    Daemon,
}

/// What to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServiceSpec {
    /// Service name; also the control socket's name (`RUN_DIR/NAME.sock`).
    pub name: String,
    /// Program to execute (on the appliance `/proc/self/exe`).
    pub program: PathBuf,
    /// Arguments after the program.
    pub args: Vec<String>,
    /// One-shot or daemon.
    pub kind: Kind,
}

impl ServiceSpec {
    /// Stop rank at shutdown: VRRP first (its priority-0 advert hands the VIPs to the
    /// peer), then sync (so the peer has the latest state), then everything else.
    pub fn stop_rank(&self) -> u8 {
        match self.name.as_str() {
            "vrrp" => 0,
            "sync" => 1,
            _ => 2,
        }
    }
}

/// Restart policy: exponential backoff with a cap, and the crash-loop threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Backoff {
    /// Delay before the first restart.
    pub initial: Duration,
    /// Upper bound of the delay.
    pub max: Duration,
    /// A run at least this long resets the backoff.
    pub reset_after: Duration,
    /// This many failures in a row (without a stable run) is a crash loop.
    pub crash_loop_after: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(250),
            max: Duration::from_secs(30),
            reset_after: Duration::from_secs(10),
            crash_loop_after: 5,
        }
    }
}

impl Backoff {
    /// The delay before restart number `failures` (1-based): initial * 2^(failures-1),
    /// capped at `max`.
    pub fn delay(&self, failures: u32) -> Duration {
        let shift = failures.saturating_sub(1).min(31);
        self.initial
            .checked_mul(1u32 << shift)
            .map_or(self.max, |d| d.min(self.max))
    }
}

/// The state of a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Not started yet (waiting for the services before it).
    Waiting,
    /// Running, not ready yet.
    Starting,
    /// Running and ready (daemons).
    Ready,
    /// A one-shot that exited 0.
    Done,
    /// Exited; will be restarted after a delay.
    Backoff,
    /// Failed `crash_loop_after` times in a row; still restarted at the capped delay.
    CrashLoop,
    /// Asked to stop, not gone yet.
    Stopping,
    /// Stopped by the supervisor.
    Stopped,
}

impl State {
    /// Whether a process is (supposed to be) alive in this state.
    pub fn is_running(self) -> bool {
        matches!(self, State::Starting | State::Ready | State::Stopping)
    }

    /// Whether the services after this one may start.
    pub fn unblocks_next(self) -> bool {
        matches!(self, State::Ready | State::Done)
    }
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Exit {
    /// Exited with this code.
    Code(i32),
    /// Killed by this signal number.
    Signal(i32),
    /// Could not be started at all (exec failure).
    SpawnFailed,
}

impl Exit {
    /// Exit 0.
    pub fn success(self) -> bool {
        self == Exit::Code(0)
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::Code(c) => write!(f, "exit code {c}"),
            Exit::Signal(s) => write!(f, "killed by signal {s}"),
            Exit::SpawnFailed => write!(f, "could not be started"),
        }
    }
}

/// One entry of a service's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Event {
    /// Wall-clock time, milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// The state entered.
    pub state: State,
    /// Why.
    pub message: String,
}

/// What the supervisor must do after a process exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterExit {
    /// Nothing: a one-shot finished, or the service was being stopped.
    Nothing,
    /// Start it again after this delay.
    RestartIn(Duration),
}

/// A service's runtime record: the pure state machine.
#[derive(Debug, Clone, Serialize)]
pub struct Service {
    /// What runs.
    pub spec: ServiceSpec,
    /// Current state.
    pub state: State,
    /// The running process, if any.
    pub pid: Option<i32>,
    /// Restarts so far.
    pub restarts: u32,
    /// Failures in a row without a stable run.
    pub failures: u32,
    /// How the last process ended.
    pub last_exit: Option<Exit>,
    /// Bounded history, oldest first.
    pub events: VecDeque<Event>,
    #[serde(skip)]
    started_at: Option<Instant>,
    #[serde(skip)]
    restart_at: Option<Instant>,
    #[serde(skip)]
    backoff: Backoff,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Service {
    /// A service that has not started.
    pub fn new(spec: ServiceSpec, backoff: Backoff) -> Service {
        let mut s = Service {
            spec,
            state: State::Waiting,
            pid: None,
            restarts: 0,
            failures: 0,
            last_exit: None,
            events: VecDeque::with_capacity(EVENT_HISTORY),
            started_at: None,
            restart_at: None,
            backoff,
        };
        s.push(State::Waiting, "waiting for the services before it".into());
        s
    }

    fn push(&mut self, state: State, message: String) {
        self.state = state;
        if self.events.len() == EVENT_HISTORY {
            self.events.pop_front();
        }
        self.events.push_back(Event {
            at_ms: now_ms(),
            state,
            message,
        });
    }

    /// The process was started.
    pub fn started(&mut self, now: Instant, pid: i32) {
        if self.started_at.is_some() || self.restart_at.is_some() {
            self.restarts += 1;
        }
        self.pid = Some(pid);
        self.started_at = Some(now);
        self.restart_at = None;
        self.push(State::Starting, format!("started, pid {pid}"));
    }

    /// The process reported readiness (daemons only).
    pub fn ready(&mut self) {
        if self.state == State::Starting {
            self.push(State::Ready, "ready".into());
        }
    }

    /// The process ended (or could not be started). Returns what to do next.
    pub fn exited(&mut self, now: Instant, exit: Exit) -> AfterExit {
        self.pid = None;
        self.last_exit = Some(exit);
        if matches!(self.state, State::Stopping | State::Stopped) {
            self.push(State::Stopped, format!("stopped ({exit})"));
            return AfterExit::Nothing;
        }
        if self.spec.kind == Kind::Oneshot && exit.success() {
            self.failures = 0;
            self.push(State::Done, "completed".into());
            return AfterExit::Nothing;
        }
        let stable = self
            .started_at
            .is_some_and(|t| now.saturating_duration_since(t) >= self.backoff.reset_after);
        if stable {
            self.failures = 0;
        }
        self.failures += 1;
        let delay = self.backoff.delay(self.failures);
        self.restart_at = Some(now + delay);
        if self.failures >= self.backoff.crash_loop_after {
            self.push(
                State::CrashLoop,
                format!(
                    "{exit}; {} failures in a row, restarting in {} ms",
                    self.failures,
                    delay.as_millis()
                ),
            );
        } else {
            self.push(
                State::Backoff,
                format!("{exit}; restarting in {} ms", delay.as_millis()),
            );
        }
        AfterExit::RestartIn(delay)
    }

    /// When the pending restart is due, if one is.
    pub fn restart_due(&self) -> Option<Instant> {
        match self.state {
            State::Backoff | State::CrashLoop => self.restart_at,
            _ => None,
        }
    }

    /// The supervisor sent the stop signal.
    pub fn stopping(&mut self) {
        if self.pid.is_some() {
            self.push(State::Stopping, "stopping".into());
        } else {
            self.restart_at = None;
            self.push(State::Stopped, "stopped".into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, kind: Kind) -> ServiceSpec {
        ServiceSpec {
            name: name.into(),
            program: "/bin/false".into(),
            args: vec![],
            kind,
        }
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_millis(1000),
            ..Backoff::default()
        };
        let d: Vec<u128> = (1..=6).map(|n| b.delay(n).as_millis()).collect();
        assert_eq!(d, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(b.delay(200), Duration::from_millis(1000));
    }

    #[test]
    fn repeated_failures_become_a_crash_loop() {
        let b = Backoff::default();
        let mut s = Service::new(spec("vrrp", Kind::Daemon), b);
        let t0 = Instant::now();
        let mut delays = vec![];
        for i in 0..5 {
            s.started(t0, 100 + i);
            match s.exited(t0 + Duration::from_millis(10), Exit::Code(1)) {
                AfterExit::RestartIn(d) => delays.push(d.as_millis()),
                AfterExit::Nothing => panic!("must restart"),
            }
            if i < 4 {
                assert_eq!(s.state, State::Backoff);
            }
        }
        assert_eq!(delays, [250, 500, 1000, 2000, 4000]);
        assert_eq!(s.state, State::CrashLoop);
        assert_eq!(s.restarts, 4);
        assert!(s.events.back().unwrap().message.contains("5 failures"));
    }

    #[test]
    fn a_stable_run_resets_the_backoff() {
        let mut s = Service::new(spec("sync", Kind::Daemon), Backoff::default());
        let t0 = Instant::now();
        s.started(t0, 1);
        s.exited(t0, Exit::Code(1));
        s.started(t0, 2);
        s.exited(t0, Exit::Code(1));
        assert_eq!(s.failures, 2);
        s.started(t0, 3);
        let r = s.exited(t0 + Duration::from_secs(11), Exit::Signal(9));
        assert_eq!(r, AfterExit::RestartIn(Duration::from_millis(250)));
        assert_eq!(s.failures, 1);
    }

    #[test]
    fn oneshot_success_is_done_and_failure_restarts() {
        let mut s = Service::new(spec("ruleset", Kind::Oneshot), Backoff::default());
        let t0 = Instant::now();
        s.started(t0, 1);
        assert!(matches!(
            s.exited(t0, Exit::Code(2)),
            AfterExit::RestartIn(_)
        ));
        s.started(t0, 2);
        assert_eq!(s.exited(t0, Exit::Code(0)), AfterExit::Nothing);
        assert_eq!(s.state, State::Done);
        assert!(s.state.unblocks_next());
    }

    #[test]
    fn history_is_bounded() {
        let mut s = Service::new(spec("mgmt", Kind::Daemon), Backoff::default());
        let t0 = Instant::now();
        for i in 0..100 {
            s.started(t0, i);
            s.exited(t0, Exit::Code(1));
        }
        assert_eq!(s.events.len(), EVENT_HISTORY);
        assert_eq!(s.restarts, 99);
    }

    #[test]
    fn exit_while_stopping_is_not_restarted() {
        let mut s = Service::new(spec("vrrp", Kind::Daemon), Backoff::default());
        let t0 = Instant::now();
        s.started(t0, 7);
        s.stopping();
        assert_eq!(s.state, State::Stopping);
        assert_eq!(s.exited(t0, Exit::Code(0)), AfterExit::Nothing);
        assert_eq!(s.state, State::Stopped);
    }

    #[test]
    fn stop_order_is_vrrp_then_sync_then_the_rest() {
        let mut names = ["mgmt", "sync", "ruleset", "vrrp"]
            .map(|n| spec(n, Kind::Daemon))
            .to_vec();
        names.sort_by_key(ServiceSpec::stop_rank);
        assert_eq!(names[0].name, "vrrp");
        assert_eq!(names[1].name, "sync");
    }
}
