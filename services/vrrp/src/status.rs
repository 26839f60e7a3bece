//! What the service reports on its control socket (`status`) and how it counts.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use twinwall_config::Family;

use crate::fsm::State;

/// How many transitions each router remembers.
pub const HISTORY: usize = 32;

/// The whole service.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// Node name.
    pub node: String,
    /// Priority.
    pub priority: u8,
    /// The groups.
    pub groups: Vec<GroupStatus>,
    /// Per receive socket: packets dropped, by reason.
    pub sockets: Vec<SocketStatus>,
    /// Commit participants registered on the control socket.
    pub commit_participants: usize,
}

/// One sync group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupStatus {
    /// Name.
    pub name: String,
    /// The group's role.
    pub state: State,
    /// Tracked zones currently down.
    pub links_down: Vec<String>,
    /// The routers.
    pub routers: Vec<RouterStatus>,
}

/// One virtual router.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouterStatus {
    /// VRID.
    pub vrid: u8,
    /// Family.
    pub family: Family,
    /// Device.
    pub device: String,
    /// State.
    pub state: State,
    /// Current master, when known (ourselves when master).
    pub master: Option<IpAddr>,
    /// Master_Adver_Interval in ms.
    pub master_adver_interval_ms: u32,
    /// Valid adverts received.
    pub adverts_in: u64,
    /// Adverts sent.
    pub adverts_out: u64,
    /// Adverts received with an interval different from ours (§7.1: logged).
    pub interval_mismatch: u64,
    /// The VIPs.
    pub vips: Vec<String>,
    /// Recent transitions, oldest first.
    pub transitions: Vec<Transition>,
}

/// A state change with its wall-clock time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transition {
    /// Milliseconds since the Unix epoch.
    pub at_unix_ms: u64,
    /// Previous state.
    pub from: State,
    /// New state.
    pub to: State,
}

/// One receive socket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SocketStatus {
    /// Device.
    pub device: String,
    /// Family.
    pub family: Family,
    /// Dropped packets by reason ([`crate::packet::DecodeError::reason`]).
    pub bad_packets: BTreeMap<String, u64>,
}

/// Wall-clock now in ms since the epoch (status only; the protocol uses monotonic time).
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl RouterStatus {
    /// Records a transition, keeping the last [`HISTORY`].
    pub fn record(&mut self, from: State, to: State) {
        if self.transitions.len() == HISTORY {
            self.transitions.remove(0);
        }
        self.transitions.push(Transition {
            at_unix_ms: unix_ms(),
            from,
            to,
        });
    }
}
