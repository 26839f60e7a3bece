//! What init knows about the node, as one serialisable record: boot phases, the trust
//! decision, every service with its history, and the captured service logs. init serves it
//! on its control socket (`RUN_DIR/init.sock`, commands `status` and `logs`), and
//! `twinwall status` prints it.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use serde::Serialize;
use serde_json::{Value, json};
use twinwall_control::{Request, Response, Server};

use crate::logbuf::LogRing;
use crate::service::Service;
use crate::sys::PowerAction;

/// How init runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// As the machine's PID 1.
    Pid1,
    /// As a child subreaper (`twinwall init --supervise`), e.g. in a netns test.
    Supervise,
}

/// One finished boot phase.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct PhaseReport {
    /// Phase name (`early`, `modules`, ...).
    pub name: String,
    /// How long it took, in microseconds.
    pub duration_us: u64,
    /// `ok`, `skipped`, `degraded` or `failed`.
    pub result: String,
    /// Details (what was done, or what went wrong).
    pub detail: String,
}

/// The outcome of the trust phase.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TrustReport {
    /// `active`, `previous` or `fail-closed`.
    pub running: String,
    /// Config version in force (none when fail-closed).
    pub version: Option<u64>,
    /// Why bundles were rejected, one line each (empty when the active one verified).
    pub rejected: Vec<String>,
}

/// The whole status record.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// PID 1 or supervise.
    pub mode: Mode,
    /// This node's name, when known.
    pub node: Option<String>,
    /// Boot slot from the kernel command line (`a`/`b`), when booted from a slot.
    pub slot: Option<String>,
    /// Whether the slot has been marked good.
    pub slot_marked_good: bool,
    /// What the health phase still waits for before marking the slot good.
    pub health_pending: Vec<String>,
    /// The health report once healthy (VRRP groups, sync peer, ruleset digest).
    pub health_report: Vec<String>,
    /// Finished boot phases in order.
    pub phases: Vec<PhaseReport>,
    /// The trust decision (PID 1 only).
    pub trust: Option<TrustReport>,
    /// Set when the node runs fail-closed: why.
    pub fail_closed: Option<String>,
    /// Every supervised service.
    pub services: Vec<Service>,
    /// All services reached readiness at least once.
    pub services_up: bool,
    /// Orphaned processes (not our services) reaped so far.
    pub orphans_reaped: u64,
    /// Set once an orderly shutdown has begun.
    pub shutting_down: Option<PowerAction>,
}

impl Status {
    /// An empty record for a mode.
    pub fn new(mode: Mode) -> Status {
        Status {
            mode,
            node: None,
            slot: None,
            slot_marked_good: false,
            health_pending: vec![],
            health_report: vec![],
            phases: vec![],
            trust: None,
            fail_closed: None,
            services: vec![],
            services_up: false,
            orphans_reaped: 0,
            shutting_down: None,
        }
    }
}

/// Status and logs shared between the supervisor, the health watcher and the socket.
#[derive(Debug, Clone)]
pub struct Shared {
    status: Arc<Mutex<Status>>,
    logs: Arc<Mutex<BTreeMap<String, Arc<Mutex<LogRing>>>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking holder already reported itself; the data stays usable for status.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    /// Shared state starting from `status`.
    pub fn new(status: Status) -> Shared {
        Shared {
            status: Arc::new(Mutex::new(status)),
            logs: Arc::default(),
        }
    }

    /// Changes the status record.
    pub fn update<R>(&self, f: impl FnOnce(&mut Status) -> R) -> R {
        f(&mut lock(&self.status))
    }

    /// A copy of the status record.
    pub fn snapshot(&self) -> Status {
        lock(&self.status).clone()
    }

    /// The log ring of a service, created on first use.
    pub fn log_ring(&self, service: &str, capacity: usize) -> Arc<Mutex<LogRing>> {
        lock(&self.logs)
            .entry(service.to_string())
            .or_insert_with(|| Arc::new(Mutex::new(LogRing::new(capacity))))
            .clone()
    }

    /// Captured output of every service (or one), as text.
    pub fn logs(&self, only: Option<&str>) -> BTreeMap<String, String> {
        lock(&self.logs)
            .iter()
            .filter(|(name, _)| only.is_none_or(|o| o == name.as_str()))
            .map(|(name, ring)| (name.clone(), lock(ring).text()))
            .collect()
    }

    /// Answers one control request: `status`, `logs` (`{"service": NAME}` optional).
    pub fn handle(&self, req: &Request) -> Response {
        match req.cmd.as_str() {
            "status" => match serde_json::to_value(self.snapshot()) {
                Ok(v) => Response::ok(v),
                Err(e) => Response::err(format!("cannot encode status: {e}")),
            },
            "logs" => {
                let only = req.args.get("service").and_then(Value::as_str);
                Response::ok(json!(self.logs(only)))
            }
            other => Response::err(format!(
                "unknown command `{other}` (init knows: status, logs, subscribe)"
            )),
        }
    }

    /// Serves `RUN_DIR/init.sock`.
    pub fn serve(&self, run_dir: &Path) -> Result<Server, twinwall_control::ControlError> {
        let me = self.clone();
        Server::bind(run_dir, "init", Arc::new(move |req| me.handle(req)))
    }
}
