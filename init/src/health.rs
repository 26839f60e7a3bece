//! The health phase: once the ruleset is applied, VRRP has seen its peer or decided to be
//! master, and sync is connected (or the peer has been absent for a configured time), the
//! boot slot is marked good through [`SlotControl`] (the image area's grubenv logic).
//!
//! The decision is pure ([`evaluate`]); [`watch`] polls the services' control sockets.
//! Fields read: vrrp `status` -> `groups[].state` (every group `master` or `backup` counts
//! as decided; a top-level `state` is accepted too); sync `status` -> `peer_up` (or
//! `connected`).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;
use twinwall_control::{Request, socket_path};

use crate::service::State;
use crate::status::Shared;

/// Marks a boot slot good (RAUC/GRUB `OK=1` for the slot). Implemented by the image area.
pub trait SlotControl: Send {
    /// Marks `slot` (`a`/`b`) good.
    fn mark_good(&mut self, slot: &str) -> Result<(), String>;
}

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
    if p.sync && !o.sync_connected && o.since_up < p.peer_absent_after {
        missing.push("sync peer not connected".to_string());
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

/// Polls until healthy, then marks `slot` good once and records it in status. Runs on its
/// own thread; returns when marked (or when marking failed, which is logged).
pub fn watch(
    shared: Shared,
    run_dir: PathBuf,
    policy: HealthPolicy,
    slot: String,
    mut control: Box<dyn SlotControl>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("health".into())
        .stack_size(128 * 1024)
        .spawn(move || {
            let mut up_at: Option<Instant> = None;
            loop {
                std::thread::sleep(Duration::from_millis(200));
                let st = shared.snapshot();
                if st.shutting_down.is_some() {
                    return;
                }
                if !st.services_up {
                    continue;
                }
                let since = up_at.get_or_insert_with(Instant::now).elapsed();
                let observed = Observed {
                    ruleset_applied: st
                        .services
                        .iter()
                        .any(|s| s.spec.name == "ruleset" && s.state == State::Done),
                    vrrp_state: match query(&run_dir, "vrrp") {
                        Ok(v) => vrrp_state(&v),
                        Err(e) => Some(format!("unreachable: {e}")),
                    },
                    sync_connected: query(&run_dir, "sync").is_ok_and(|v| sync_connected(&v)),
                    since_up: since,
                };
                let verdict = evaluate(&policy, &observed);
                let pending = verdict.clone().err().unwrap_or_default();
                shared.update(|s| s.health_pending = pending);
                if verdict.is_ok() {
                    match control.mark_good(&slot) {
                        Ok(()) => {
                            tracing::info!(slot = %slot, "boot slot marked good");
                            shared.update(|s| s.slot_marked_good = true);
                        }
                        Err(e) => {
                            tracing::error!(slot = %slot, error = %e, "cannot mark slot good")
                        }
                    }
                    return;
                }
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
            since_up: Duration::ZERO,
        };
        assert_eq!(evaluate(&policy(), &o), Ok(()));
    }

    #[test]
    fn each_missing_condition_is_named() {
        let o = Observed {
            vrrp_state: Some("init".into()),
            ..Observed::default()
        };
        let missing = evaluate(&policy(), &o).unwrap_err();
        assert_eq!(
            missing,
            [
                "ruleset not applied",
                "vrrp undecided (state init)",
                "sync peer not connected"
            ]
        );
    }

    #[test]
    fn an_absent_peer_is_tolerated_after_the_configured_time() {
        let mut o = Observed {
            ruleset_applied: true,
            vrrp_state: Some("master".into()),
            sync_connected: false,
            since_up: Duration::from_secs(59),
        };
        assert!(evaluate(&policy(), &o).is_err());
        o.since_up = Duration::from_secs(60);
        assert_eq!(evaluate(&policy(), &o), Ok(()));
    }
}
