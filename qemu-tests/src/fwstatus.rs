//! The firewalls' own state, read from each node's management API (`GET /status` of
//! `twinwall mgmt`, forwarded to a loopback port of the host): VRRP state per group and
//! router, the sync service's role, peer and cache sizes, the ruleset digest and the boot
//! slot. [`FirewallState::from_status`] is pure (the answer is read loosely: a field
//! another service adds or drops does not break the lab); [`fetch`] is the IO.
//!
//! The switch tells what the neighbours see (adverts, ARP); this tells what each node
//! believes, so a scenario can hold the two against each other.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Errors of reading a firewall's status, naming the address.
#[derive(Debug, thiserror::Error)]
pub enum FwStatusError {
    /// No runtime for the HTTP client.
    #[error("management API at {addr}: cannot start a runtime: {source}")]
    Runtime {
        /// The API's address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// The request failed before an answer.
    #[error("management API at {addr}: {source}")]
    Request {
        /// The API's address.
        addr: SocketAddr,
        /// Cause.
        source: twinwall_mgmt::client::ClientError,
    },
    /// An answer that is not a 2xx JSON status.
    #[error("management API at {addr}: GET /status answered {status}: {reason}")]
    Answer {
        /// The API's address.
        addr: SocketAddr,
        /// HTTP status.
        status: u16,
        /// Body or error text.
        reason: String,
    },
}

/// One virtual router as the node sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouterState {
    /// VRID.
    pub vrid: u8,
    /// Device.
    pub device: String,
    /// `initialize`, `backup`, `master` or `fault`.
    pub state: String,
}

/// One VRRP sync group as the node sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupState {
    /// Group name.
    pub name: String,
    /// The group's role.
    pub state: String,
    /// Tracked zones down.
    pub links_down: Vec<String>,
    /// Its routers.
    pub routers: Vec<RouterState>,
}

/// The sync service as the node sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncState {
    /// `master` or `backup` (`None`: not decided yet).
    pub role: Option<String>,
    /// A datagram from the peer arrived within the dead interval.
    pub peer_up: bool,
    /// Entries of our own table (what we replicate).
    pub internal_entries: u64,
    /// Entries of the peer's table we hold.
    pub external_entries: u64,
    /// Whether our copy matched the peer's last digest (`None`: no digest yet).
    pub consistent: Option<bool>,
    /// Raised while the caches diverge.
    pub alarm: bool,
}

impl SyncState {
    /// Synced: the peer is up, no alarm, and the last digest matched.
    pub fn synced(&self) -> bool {
        self.peer_up && !self.alarm && self.consistent == Some(true)
    }
}

/// What one firewall reports about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FirewallState {
    /// Lab VM name.
    pub vm: String,
    /// Node name.
    pub node: Option<String>,
    /// Boot slot.
    pub slot: Option<String>,
    /// VRRP groups (empty when the VRRP service did not answer).
    pub vrrp: Vec<GroupState>,
    /// The sync service (`None` when it did not answer).
    pub sync: Option<SyncState>,
    /// The ruleset digest of the health report (`sha256 ...`).
    pub ruleset_digest: Option<String>,
    /// Services that did not answer mgmt, with the reason.
    pub unreachable: BTreeMap<String, String>,
}

fn text(v: &Value, k: &str) -> Option<String> {
    v.get(k).and_then(Value::as_str).map(str::to_string)
}

impl FirewallState {
    /// Reads mgmt's `GET /status` answer (pure).
    pub fn from_status(vm: &str, v: &Value) -> FirewallState {
        let init = v.get("init").unwrap_or(&Value::Null);
        let empty = Vec::new();
        let vrrp = v
            .get("vrrp")
            .and_then(|x| x.get("groups"))
            .and_then(Value::as_array)
            .unwrap_or(&empty)
            .iter()
            .map(|g| GroupState {
                name: text(g, "name").unwrap_or_default(),
                state: text(g, "state").unwrap_or_default(),
                links_down: g
                    .get("links_down")
                    .and_then(Value::as_array)
                    .unwrap_or(&empty)
                    .iter()
                    .filter_map(|l| l.as_str().map(str::to_string))
                    .collect(),
                routers: g
                    .get("routers")
                    .and_then(Value::as_array)
                    .unwrap_or(&empty)
                    .iter()
                    .map(|r| RouterState {
                        vrid: r.get("vrid").and_then(Value::as_u64).unwrap_or(0) as u8,
                        device: text(r, "device").unwrap_or_default(),
                        state: text(r, "state").unwrap_or_default(),
                    })
                    .collect(),
            })
            .collect();
        let sync = v.get("sync").filter(|s| s.is_object()).map(|s| {
            let n = |k: &str| s.get(k).and_then(Value::as_u64).unwrap_or(0);
            let c = s.get("consistency").unwrap_or(&Value::Null);
            SyncState {
                role: text(s, "role"),
                peer_up: s.get("peer_up").and_then(Value::as_bool).unwrap_or(false),
                internal_entries: n("internal_entries"),
                external_entries: n("external_entries"),
                consistent: c.get("consistent").and_then(Value::as_bool),
                alarm: c.get("alarm").and_then(Value::as_bool).unwrap_or(false),
            }
        });
        let ruleset_digest = init
            .get("health_report")
            .and_then(Value::as_array)
            .unwrap_or(&empty)
            .iter()
            .filter_map(Value::as_str)
            .find_map(|l| {
                let i = l.find("sha256 ")?;
                let d: String = l[i + 7..]
                    .chars()
                    .take_while(char::is_ascii_hexdigit)
                    .collect();
                (!d.is_empty()).then(|| format!("sha256:{d}"))
            });
        let unreachable = v
            .get("unreachable")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .map(|(k, e)| (k.clone(), e.as_str().unwrap_or_default().to_string()))
                    .collect()
            })
            .unwrap_or_default();
        FirewallState {
            vm: vm.to_string(),
            node: text(init, "node"),
            slot: text(init, "slot"),
            vrrp,
            sync,
            ruleset_digest,
            unreachable,
        }
    }

    /// Whether every VRRP group of the node is master.
    pub fn is_master(&self) -> bool {
        !self.vrrp.is_empty() && self.vrrp.iter().all(|g| g.state == "master")
    }

    /// One line: VRRP and sync state.
    pub fn summary(&self) -> String {
        let vrrp: Vec<String> = self
            .vrrp
            .iter()
            .map(|g| {
                let r: Vec<String> = g
                    .routers
                    .iter()
                    .map(|r| format!("{} {}", r.vrid, r.state))
                    .collect();
                let down = if g.links_down.is_empty() {
                    String::new()
                } else {
                    format!(", links down {}", g.links_down.join(","))
                };
                format!("{} {} ({}{down})", g.name, g.state, r.join(", "))
            })
            .collect();
        let sync = match &self.sync {
            Some(s) => format!(
                "sync {} peer {} entries {} own / {} peer's, {}",
                s.role.as_deref().unwrap_or("-"),
                if s.peer_up { "up" } else { "DOWN" },
                s.internal_entries,
                s.external_entries,
                if s.alarm {
                    "ALARM (caches diverge)"
                } else {
                    match s.consistent {
                        Some(true) => "synced",
                        Some(false) => "NOT synced",
                        None => "no digest yet",
                    }
                }
            ),
            None => "sync: no answer".into(),
        };
        format!(
            "vrrp {}; {sync}",
            if vrrp.is_empty() {
                "no answer".into()
            } else {
                vrrp.join("; ")
            }
        )
    }
}

/// `GET /status` of the management API at `addr`, within `timeout`.
pub fn fetch(addr: SocketAddr, timeout: Duration) -> Result<Value, FwStatusError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| FwStatusError::Runtime { addr, source })?;
    let answer = rt
        .block_on(twinwall_mgmt::client::request(
            addr,
            "GET",
            "/status",
            twinwall_mgmt::client::empty_body(),
            timeout,
        ))
        .map_err(|source| FwStatusError::Request { addr, source })?;
    if !answer.ok() {
        return Err(FwStatusError::Answer {
            addr,
            status: answer.status,
            reason: answer.reason(),
        });
    }
    Ok(answer.json())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_vrrp_sync_digest_and_slot_from_a_status_answer() {
        // The shape of mgmt's GET /status (fields trimmed to those read, plus extras).
        let v = serde_json::json!({
            "init": {"node": "lj-fw-1", "slot": "a", "health_report": [
                "vrrp group edge master (vrid 51 on eth0 master, vrid 52 on eth1 master)",
                "sync peer connected",
                "ruleset in kernel: sha256 b16111bd69 (76 lines of nft -s list ruleset)"]},
            "vrrp": {"node": "lj-fw-1", "groups": [{"name": "edge", "state": "master",
                "links_down": [], "routers": [
                    {"vrid": 51, "device": "eth0", "state": "master", "adverts_in": 3},
                    {"vrid": 52, "device": "eth1", "state": "master"}]}]},
            "sync": {"role": "master", "peer_up": false, "internal_entries": 9,
                "external_entries": 0, "consistency": {"consistent": null, "alarm": false}},
            "mgmt": {},
            "unreachable": {"ruleset": "no socket"}
        });
        let s = FirewallState::from_status("fw1", &v);
        assert_eq!(s.node.as_deref(), Some("lj-fw-1"));
        assert_eq!(s.slot.as_deref(), Some("a"));
        assert_eq!(s.ruleset_digest.as_deref(), Some("sha256:b16111bd69"));
        assert!(s.is_master());
        assert_eq!(s.vrrp[0].routers[1].device, "eth1");
        let sync = s.sync.as_ref().unwrap();
        assert!(!sync.synced());
        assert_eq!(sync.internal_entries, 9);
        assert_eq!(s.unreachable["ruleset"], "no socket");
        let line = s.summary();
        assert!(
            line.contains("edge master (51 master, 52 master)") && line.contains("peer DOWN"),
            "{line}"
        );
        // A node whose services did not answer is not master and has no sync state.
        let bare = FirewallState::from_status("fw2", &serde_json::json!({"mgmt": {}}));
        assert!(!bare.is_master() && bare.sync.is_none());
    }
}
