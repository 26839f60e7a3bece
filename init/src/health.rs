//! The health phase: once the ruleset is applied, VRRP has seen its peer or decided to be
//! master, and sync is connected (or the peer has been absent for a configured time), the
//! boot slot is marked good through [`SlotControl`] (the image area's grubenv logic).
//!
//! The decision is pure ([`evaluate`]); [`watch`] polls the services' control sockets.
//! Fields read: vrrp `status` -> `groups[].state` (every group `master` or `backup` counts
//! as decided; a top-level `state` is accepted too); sync `status` -> `peer_up` (or
//! `connected`).
//!
//! A lone node (its peer is down or not installed yet) still becomes healthy: VRRP turns
//! master after Master_Down_Interval, and sync, reachable but without a peer, is tolerated
//! once `peer_absent_after` has passed since services came up (`twinwall.peer_absent_after=`
//! on the kernel command line, default [`DEFAULT_PEER_ABSENT_AFTER`]).
//!
//! Once healthy, a report goes to the console ([`report_lines`]): the VRRP groups and
//! their routers, the sync peer, and the sha256 of `nft -s list ruleset` (so a test can
//! compare the kernel's ruleset with the compiled one applied elsewhere).
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use sha2::{Digest, Sha256};
use twinwall_control::{Request, socket_path};

use crate::service::State;
use crate::status::Shared;

/// Marks a boot slot good (RAUC/GRUB `OK=1` for the slot). Implemented by the image area.
pub trait SlotControl: Send {
    /// Marks `slot` (`a`/`b`) good.
    fn mark_good(&mut self, slot: &str) -> Result<(), String>;
    /// Whether the slot other than `slot` is a known-good fallback (good and not on
    /// trial), so that rebooting an unhealthy `slot` boots it.
    fn has_fallback(&self, _slot: &str) -> bool {
        false
    }
}

/// How long a booted slot may take to become healthy before init reboots so that GRUB's
/// boot counting falls back (only when a good fallback slot exists).
pub const DEFAULT_HEALTH_DEADLINE: Duration = Duration::from_secs(300);

/// How long a reachable sync service may go without its peer before health accepts it.
pub const DEFAULT_PEER_ABSENT_AFTER: Duration = Duration::from_secs(20);

/// What health waits for.
#[derive(Debug, Clone)]
pub struct HealthPolicy {
    /// Whether a VRRP service runs (and must have decided).
    pub vrrp: bool,
    /// Whether a sync service runs (and must be connected).
    pub sync: bool,
    /// How long an absent sync peer is tolerated before the slot is marked good anyway.
    pub peer_absent_after: Duration,
}

/// What was observed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// The ruleset one-shot completed.
    pub ruleset_applied: bool,
    /// VRRP state as reported (`master`, `backup`, `init`, ...).
    pub vrrp_state: Option<String>,
    /// Sync peer connected.
    pub sync_connected: bool,
    /// The sync service answered `status` (a sync that is down is never tolerated).
    pub sync_reachable: bool,
    /// Time since the services came up.
    pub since_up: Duration,
}

/// `Ok` when the slot may be marked good, else what is still missing. Pure.
pub fn evaluate(p: &HealthPolicy, o: &Observed) -> Result<(), Vec<String>> {
    let mut missing = Vec::new();
    if !o.ruleset_applied {
        missing.push("ruleset not applied".to_string());
    }
    if p.vrrp && !matches!(o.vrrp_state.as_deref(), Some("master" | "backup")) {
        missing.push(format!(
            "vrrp undecided (state {})",
            o.vrrp_state.as_deref().unwrap_or("unknown")
        ));
    }
    if p.sync && !o.sync_reachable {
        missing.push("sync unreachable".to_string());
    } else if p.sync && !o.sync_connected && o.since_up < p.peer_absent_after {
        missing.push(format!(
            "sync peer not connected (tolerated as absent after {} s)",
            p.peer_absent_after.as_secs()
        ));
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(missing)
    }
}

fn query(run_dir: &std::path::Path, service: &str) -> Result<Value, String> {
    twinwall_control::request(
        &socket_path(run_dir, service),
        &Request::new("status"),
        Duration::from_millis(500),
    )
    .map_err(|e| e.to_string())
}

/// The VRRP state from its status: the top-level `state`, or the groups' common verdict
/// (`master`/`backup` only when every group has decided; otherwise the first undecided).
pub fn vrrp_state(v: &Value) -> Option<String> {
    if let Some(s) = v.get("state").and_then(Value::as_str) {
        return Some(s.to_string());
    }
    let groups = v.get("groups")?.as_array()?;
    let states: Vec<&str> = groups
        .iter()
        .filter_map(|g| g.get("state").and_then(Value::as_str))
        .collect();
    if states.is_empty() {
        return None;
    }
    let undecided = states.iter().find(|s| !matches!(**s, "master" | "backup"));
    Some(undecided.unwrap_or(&states[0]).to_string())
}

/// Whether the sync service reports its peer (`peer_up`, or `connected`).
pub fn sync_connected(v: &Value) -> bool {
    ["peer_up", "connected"]
        .iter()
        .any(|k| v.get(k).and_then(Value::as_bool) == Some(true))
}

/// What the health watcher does once healthy.
pub struct Watch {
    /// Slot to mark good (`a`/`b`), when booted from a disk slot; `None` on a live or
    /// initramfs boot (nothing to confirm).
    pub slot: Option<String>,
    /// Marks the slot.
    pub control: Box<dyn SlotControl>,
    /// The `nft` binary for the ruleset digest in the report; `None`: no digest.
    pub nft: Option<PathBuf>,
    /// Print the report on stderr (the console, as PID 1).
    pub console: bool,
    /// Ask this process for an orderly shutdown once the report is out (boot tests:
    /// `twinwall.shutdown_when_healthy=`), through the same signals an operator sends.
    pub shutdown: Option<crate::sys::PowerAction>,
    /// Not healthy this long after the watcher started, with a good fallback slot: reboot
    /// (the slot on trial is not marked good, so GRUB boots the fallback).
    pub deadline: Option<Duration>,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch")
            .field("slot", &self.slot)
            .field("nft", &self.nft)
            .field("console", &self.console)
            .field("shutdown", &self.shutdown)
            .finish_non_exhaustive()
    }
}

/// The sha256 of `nft -s list ruleset` and its line count. The child may be reaped by
/// PID 1's `waitpid(-1)` before `wait` sees it, so its exit status is not used: the
/// output is judged instead (it must start with a table).
pub fn ruleset_digest(nft: &Path) -> Result<(String, usize), String> {
    let mut child = Command::new(nft)
        .args(["-s", "list", "ruleset"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("{}: {e}", nft.display()))?;
    let mut text = String::new();
    let read = child.stdout.take().map(|mut o| o.read_to_string(&mut text));
    let _ = child.wait();
    match read {
        Some(Ok(_)) if text.starts_with("table ") => Ok((
            hex::encode(Sha256::digest(text.as_bytes())),
            text.lines().count(),
        )),
        Some(Err(e)) => Err(format!("reading nft output: {e}")),
        _ => Err("nft listed no tables".into()),
    }
}

/// The console report once healthy: one line per VRRP group (with its routers), the
/// sync peer, and the ruleset digest. Pure.
pub fn report_lines(
    vrrp: Option<&Value>,
    sync: Option<&Value>,
    ruleset: Option<&Result<(String, usize), String>>,
) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(v) = vrrp {
        for g in v
            .get("groups")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let st = |x: &Value| {
                x.get("state")
                    .and_then(Value::as_str)
                    .unwrap_or("unknown")
                    .to_string()
            };
            let routers: Vec<String> = g
                .get("routers")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|r| {
                    format!(
                        "vrid {} on {} {}",
                        r.get("vrid").and_then(Value::as_u64).unwrap_or(0),
                        r.get("device").and_then(Value::as_str).unwrap_or("?"),
                        st(r)
                    )
                })
                .collect();
            out.push(format!(
                "vrrp group {} {} ({})",
                g.get("name").and_then(Value::as_str).unwrap_or("?"),
                st(g),
                routers.join(", ")
            ));
        }
    }
    if let Some(v) = sync {
        out.push(if sync_connected(v) {
            "sync peer connected".to_string()
        } else {
            "sync peer absent".to_string()
        });
    }
    match ruleset {
        Some(Ok((sha, lines))) => out.push(format!(
            "ruleset in kernel: sha256 {sha} ({lines} lines of nft -s list ruleset)"
        )),
        Some(Err(e)) => out.push(format!("ruleset in kernel: unknown ({e})")),
        None => {}
    }
    out
}

/// Polls until healthy, then prints the report, marks the slot good once (when there is
/// one) and records both in status. Runs on its own thread; returns when done.
pub fn watch(
    shared: Shared,
    run_dir: PathBuf,
    policy: HealthPolicy,
    mut w: Watch,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("health".into())
        .stack_size(128 * 1024)
        .spawn(move || {
            let mut up_at: Option<Instant> = None;
            let mut logged: Vec<String> = Vec::new();
            let started = Instant::now();
            loop {
                std::thread::sleep(Duration::from_millis(200));
                let st = shared.snapshot();
                if st.shutting_down.is_some() {
                    return;
                }
                if let (Some(d), Some(slot)) = (w.deadline, &w.slot)
                    && started.elapsed() >= d
                    && w.control.has_fallback(slot)
                {
                    let why = if logged.is_empty() { "services not up".to_string() } else { logged.join("; ") };
                    tracing::error!(slot = %slot, pending = %why, "not healthy by the deadline; rebooting to the fallback slot");
                    eprintln!("twinwall: health: slot {slot} not healthy within {} s ({why}); rebooting to the fallback slot", d.as_secs());
                    let _ = nix::sys::signal::kill(nix::unistd::Pid::this(), nix::sys::signal::Signal::SIGTERM);
                    return;
                }
                if !st.services_up {
                    continue;
                }
                let since = up_at.get_or_insert_with(Instant::now).elapsed();
                let vrrp = policy.vrrp.then(|| query(&run_dir, "vrrp"));
                let sync = policy.sync.then(|| query(&run_dir, "sync"));
                let observed = Observed {
                    ruleset_applied: st
                        .services
                        .iter()
                        .any(|s| s.spec.name == "ruleset" && s.state == State::Done),
                    vrrp_state: match &vrrp {
                        Some(Ok(v)) => vrrp_state(v),
                        Some(Err(e)) => Some(format!("unreachable: {e}")),
                        None => None,
                    },
                    sync_connected: matches!(&sync, Some(Ok(v)) if sync_connected(v)),
                    sync_reachable: matches!(&sync, Some(Ok(_))),
                    since_up: since,
                };
                let verdict = evaluate(&policy, &observed);
                let pending = verdict.clone().err().unwrap_or_default();
                if pending != logged {
                    if !pending.is_empty() {
                        tracing::info!(pending = %pending.join("; "), "health: waiting");
                    }
                    logged = pending.clone();
                }
                shared.update(|s| s.health_pending = pending);
                if verdict.is_err() {
                    continue;
                }
                let digest = w.nft.as_deref().map(ruleset_digest);
                let lines = report_lines(
                    vrrp.as_ref().and_then(|r| r.as_ref().ok()),
                    sync.as_ref().and_then(|r| r.as_ref().ok()),
                    digest.as_ref(),
                );
                let mut result = "healthy".to_string();
                if let Some(slot) = &w.slot {
                    match w.control.mark_good(slot) {
                        Ok(()) => {
                            tracing::info!(slot = %slot, "boot slot marked good");
                            shared.update(|s| s.slot_marked_good = true);
                            result = format!("healthy; slot {slot} marked good");
                        }
                        Err(e) => {
                            tracing::error!(slot = %slot, error = %e, "cannot mark slot good");
                            result = format!("healthy; slot {slot} NOT marked good: {e}");
                        }
                    }
                }
                if w.console {
                    for l in &lines {
                        eprintln!("twinwall: {l}");
                    }
                    eprintln!("twinwall: health: {result}");
                }
                let detail = lines.join("; ");
                shared.update(|s| {
                    s.phases.push(crate::status::PhaseReport {
                        name: "health".into(),
                        duration_us: since.as_micros() as u64,
                        result: "ok".into(),
                        detail: format!("{result}; {detail}"),
                    });
                    s.health_report = lines;
                });
                if let Some(action) = w.shutdown {
                    use crate::sys::PowerAction;
                    use nix::sys::signal::Signal;
                    // init's conventions: SIGTERM reboot, SIGUSR2 poweroff, SIGUSR1 halt.
                    let sig = match action {
                        PowerAction::Reboot => Signal::SIGTERM,
                        PowerAction::Poweroff => Signal::SIGUSR2,
                        PowerAction::Halt => Signal::SIGUSR1,
                    };
                    let _ = nix::sys::signal::kill(nix::unistd::Pid::this(), sig);
                }
                return;
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> HealthPolicy {
        HealthPolicy {
            vrrp: true,
            sync: true,
            peer_absent_after: Duration::from_secs(60),
        }
    }

    #[test]
    fn reads_the_vrrp_and_sync_status_shapes() {
        let v = serde_json::json!({"groups": [{"state": "backup"}, {"state": "backup"}]});
        assert_eq!(vrrp_state(&v).as_deref(), Some("backup"));
        let v = serde_json::json!({"groups": [{"state": "master"}, {"state": "initialize"}]});
        assert_eq!(vrrp_state(&v).as_deref(), Some("initialize"));
        assert_eq!(vrrp_state(&serde_json::json!({"groups": []})), None);
        assert!(sync_connected(&serde_json::json!({"peer_up": true})));
        assert!(!sync_connected(&serde_json::json!({"peer_up": false})));
    }

    #[test]
    fn all_conditions_met_is_healthy() {
        let o = Observed {
            ruleset_applied: true,
            vrrp_state: Some("backup".into()),
            sync_connected: true,
            sync_reachable: true,
            since_up: Duration::ZERO,
        };
        assert_eq!(evaluate(&policy(), &o), Ok(()));
    }

    #[test]
    fn each_missing_condition_is_named() {
        let o = Observed {
            vrrp_state: Some("init".into()),
            sync_reachable: true,
            ..Observed::default()
        };
        let missing = evaluate(&policy(), &o).unwrap_err();
        assert_eq!(
            missing,
            [
                "ruleset not applied",
                "vrrp undecided (state init)",
                "sync peer not connected (tolerated as absent after 60 s)"
            ]
        );
    }

    #[test]
    fn an_absent_peer_is_tolerated_after_the_configured_time() {
        let mut o = Observed {
            ruleset_applied: true,
            vrrp_state: Some("master".into()),
            sync_connected: false,
            sync_reachable: true,
            since_up: Duration::from_secs(59),
        };
        assert!(evaluate(&policy(), &o).is_err());
        o.since_up = Duration::from_secs(60);
        assert_eq!(evaluate(&policy(), &o), Ok(()));
        // A sync service that does not answer is never "absent peer": it is broken.
        o.sync_reachable = false;
        assert_eq!(evaluate(&policy(), &o).unwrap_err(), ["sync unreachable"]);
    }

    #[test]
    fn the_report_names_groups_routers_peer_and_ruleset_digest() {
        let vrrp = serde_json::json!({"groups": [{"name": "edge", "state": "master",
            "routers": [{"vrid": 51, "device": "eth0", "state": "master"},
                        {"vrid": 52, "device": "eth1", "state": "master"}]}]});
        let sync = serde_json::json!({"peer_up": false});
        let digest = Ok(("ab".repeat(32), 42));
        let lines = report_lines(Some(&vrrp), Some(&sync), Some(&digest));
        assert_eq!(
            lines,
            [
                "vrrp group edge master (vrid 51 on eth0 master, vrid 52 on eth1 master)",
                "sync peer absent",
                &format!(
                    "ruleset in kernel: sha256 {} (42 lines of nft -s list ruleset)",
                    "ab".repeat(32)
                ),
            ]
        );
        let err = Err("nft listed no tables".to_string());
        assert_eq!(
            report_lines(None, None, Some(&err)),
            ["ruleset in kernel: unknown (nft listed no tables)"]
        );
    }

    #[test]
    fn the_digest_is_refused_when_nft_lists_nothing() {
        // `true` prints nothing: no table, so no digest (never a hash of empty output).
        assert_eq!(
            ruleset_digest(Path::new("true")).unwrap_err(),
            "nft listed no tables"
        );
        assert!(ruleset_digest(Path::new("/nonexistent/nft")).is_err());
    }
}
