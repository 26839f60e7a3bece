//! The virtual switch's pure core: which ports a frame goes out of, and what the fault
//! injection does to it on the way. No sockets and no clock: the caller passes the time
//! (milliseconds since any fixed origin) and the RNG is seeded, so every decision can be
//! replayed in a unit test.
//!
//! Model: every port belongs to one segment (`inside`, `outside`, `sync`) and one node
//! (`fw1`, `client`, ...). Each segment is a learning switch of its own (a MAC table
//! keyed by segment, entries age out). Each port has two impairments, one per
//! direction: [`Dir::Rx`] is what the VM sends into the switch, [`Dir::Tx`] what the
//! switch sends to the VM. A partition blocks every frame between two nodes, on all
//! segments, while both still talk to everyone else.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::observe::{self, Seen};

/// Index of a port in the switch (the order of [`Switch::new`]'s list).
pub type PortId = usize;

/// A MAC address.
pub type Mac = [u8; 6];

/// Direction of traffic on a port, seen from the switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dir {
    /// Frames the VM sends (into the switch).
    Rx,
    /// Frames the switch delivers to the VM.
    Tx,
}

/// What happens to frames in one direction of one port.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Impairment {
    /// Drop every frame.
    #[serde(default)]
    pub cut: bool,
    /// Drop this percentage of frames (0..=100), decided per frame by the seeded RNG.
    #[serde(default)]
    pub loss_pct: f64,
    /// Delay every frame by this many milliseconds.
    #[serde(default)]
    pub delay_ms: u32,
}

impl Impairment {
    /// Whether the direction is untouched.
    pub fn is_clear(&self) -> bool {
        *self == Impairment::default()
    }
}

/// A port's place in the topology.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortSpec {
    /// The VM (or host) behind the port, e.g. `fw1`.
    pub node: String,
    /// The segment, e.g. `inside`.
    pub segment: String,
}

impl PortSpec {
    /// `NODE:SEGMENT`, the name the CLI uses (`fw1:inside`).
    pub fn name(&self) -> String {
        format!("{}:{}", self.node, self.segment)
    }
}

/// Frame counters of one port.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortCounters {
    /// Frames received from the VM.
    pub rx: u64,
    /// Of those, dropped on the way in (cut, loss, runt).
    pub rx_dropped: u64,
    /// Frames delivered to the VM.
    pub tx: u64,
    /// Frames for this port dropped on the way out (cut, loss, partition).
    pub tx_dropped: u64,
}

/// Why the core refused an operation.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SwitchError {
    /// No port of that name.
    #[error("no port {name} (ports: {known})")]
    NoPort {
        /// The name asked for.
        name: String,
        /// The names that exist.
        known: String,
    },
    /// No node of that name.
    #[error("no node {name} (nodes: {known})")]
    NoNode {
        /// The name asked for.
        name: String,
        /// The names that exist.
        known: String,
    },
    /// A loss percentage outside 0..=100.
    #[error("loss {0}% is not within 0..=100")]
    BadLoss(f64),
}

/// One output of a forwarding decision: send the frame out of `port` after `delay`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forward {
    /// Egress port.
    pub port: PortId,
    /// How long to hold the frame first (sum of the ingress and egress delays).
    pub delay: Duration,
}

#[derive(Debug, Clone)]
struct Port {
    spec: PortSpec,
    segment: usize,
    node: usize,
    rx: Impairment,
    tx: Impairment,
    counters: PortCounters,
}

/// The last VRRP advertisement seen from one port for one virtual router.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdvertSeen {
    /// Switch time of the last one (ms).
    pub last_ms: u64,
    /// Its priority.
    pub priority: u8,
    /// How many were seen.
    pub count: u64,
    /// The longest interval between two consecutive adverts of one run (silences over
    /// 1 s end a run), since the start or [`Switch::reset_advert_gaps`]: a master whose
    /// adverts come late (a starved TCG vCPU) shows here before its peer takes over.
    #[serde(default)]
    pub max_gap_ms: u64,
}

/// Something the observer noticed, with the switch time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observed {
    /// Switch time (ms).
    pub ms: u64,
    /// The port concerned (`NODE:SEGMENT`).
    pub port: String,
    /// What happened.
    pub what: ObservedKind,
}

/// Kinds of [`Observed`] events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ObservedKind {
    /// The first advert from this port for this router (after silence).
    AdvertStart {
        /// Virtual router id.
        vrid: u8,
        /// Priority.
        priority: u8,
    },
    /// A priority-0 advert (the master resigns).
    AdvertResign {
        /// Virtual router id.
        vrid: u8,
    },
    /// An address is now claimed (ARP) from a different port than before.
    Claim {
        /// The address.
        address: std::net::Ipv4Addr,
    },
}

/// Adverts from a port after this much silence count as a new start.
const ADVERT_SILENCE_MS: u64 = 1_000;
/// Unicast IPv4 destinations remembered per port.
const MAX_DESTINATIONS: usize = 64;
/// Observer events kept (the oldest are dropped).
const MAX_OBSERVED: usize = 4096;

/// How long a learned MAC stays valid without traffic (a moved VIP's MAC is relearned on
/// its first frame anyway; aging covers a port that goes silent).
pub const DEFAULT_AGING_MS: u64 = 300_000;

/// The switch state: ports, per-segment MAC tables, impairments, partitions, RNG.
#[derive(Debug, Clone)]
pub struct Switch {
    ports: Vec<Port>,
    segments: Vec<String>,
    nodes: Vec<String>,
    fdb: HashMap<(usize, Mac), (PortId, u64)>,
    blocked: BTreeSet<(usize, usize)>,
    rng: fastrand::Rng,
    aging_ms: u64,
    adverts: HashMap<(PortId, u8), AdvertSeen>,
    claims: HashMap<std::net::Ipv4Addr, (PortId, u64)>,
    garps: HashMap<(PortId, std::net::Ipv4Addr), std::collections::VecDeque<u64>>,
    /// Per port, the unicast IPv4 destinations of the packets it sent, and how many.
    destinations: HashMap<PortId, BTreeMap<std::net::Ipv4Addr, u64>>,
    observed: std::collections::VecDeque<Observed>,
}

/// Gratuitous ARPs (sender = target address) one port sent for one address: the first
/// and last of a span, and how many.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GarpSeen {
    /// Switch time of the first one (ms).
    pub first_ms: u64,
    /// Switch time of the last one (ms).
    pub last_ms: u64,
    /// How many.
    pub count: u64,
}

/// Send times of the gratuitous ARPs kept per port and address (a takeover's series is
/// a handful; older ones are dropped).
const GARPS_KEPT: usize = 256;

fn is_multicast(mac: &[u8]) -> bool {
    mac[0] & 1 == 1
}

fn intern(list: &mut Vec<String>, name: &str) -> usize {
    match list.iter().position(|n| n == name) {
        Some(i) => i,
        None => {
            list.push(name.to_string());
            list.len() - 1
        }
    }
}

impl Switch {
    /// A switch with these ports (their order gives the [`PortId`]s) and an RNG seed.
    pub fn new(ports: Vec<PortSpec>, seed: u64) -> Switch {
        let mut segments = Vec::new();
        let mut nodes = Vec::new();
        let ports = ports
            .into_iter()
            .map(|spec| Port {
                segment: intern(&mut segments, &spec.segment),
                node: intern(&mut nodes, &spec.node),
                spec,
                rx: Impairment::default(),
                tx: Impairment::default(),
                counters: PortCounters::default(),
            })
            .collect();
        Switch {
            ports,
            segments,
            nodes,
            fdb: HashMap::new(),
            blocked: BTreeSet::new(),
            rng: fastrand::Rng::with_seed(seed),
            aging_ms: DEFAULT_AGING_MS,
            adverts: HashMap::new(),
            claims: HashMap::new(),
            garps: HashMap::new(),
            destinations: HashMap::new(),
            observed: std::collections::VecDeque::new(),
        }
    }

    fn note(&mut self, ms: u64, port: PortId, what: ObservedKind) {
        if self.observed.len() >= MAX_OBSERVED {
            self.observed.pop_front();
        }
        self.observed.push_back(Observed {
            ms,
            port: self.ports[port].spec.name(),
            what,
        });
    }

    fn observe(&mut self, port: PortId, frame: &[u8], now_ms: u64) {
        match observe::classify(frame) {
            Some(Seen::Advert { vrid, priority, .. }) => {
                let e = self.adverts.entry((port, vrid)).or_insert(AdvertSeen {
                    last_ms: 0,
                    priority,
                    count: 0,
                    max_gap_ms: 0,
                });
                let gap = now_ms.saturating_sub(e.last_ms);
                let fresh = e.count == 0 || gap > ADVERT_SILENCE_MS;
                let was_resign = e.priority == 0;
                let max_gap_ms = if fresh || was_resign || priority == 0 {
                    e.max_gap_ms
                } else {
                    e.max_gap_ms.max(gap)
                };
                *e = AdvertSeen {
                    last_ms: now_ms,
                    priority,
                    count: e.count + 1,
                    max_gap_ms,
                };
                if priority == 0 {
                    self.note(now_ms, port, ObservedKind::AdvertResign { vrid });
                } else if fresh || was_resign {
                    self.note(now_ms, port, ObservedKind::AdvertStart { vrid, priority });
                }
            }
            Some(Seen::Ipv4 { destination, .. })
                if !destination.is_multicast() && !destination.is_broadcast() =>
            {
                let d = self.destinations.entry(port).or_default();
                // Bounded: a lab host talks to a handful of addresses.
                if d.len() < MAX_DESTINATIONS || d.contains_key(&destination) {
                    *d.entry(destination).or_default() += 1;
                }
            }
            Some(Seen::Arp { sender, gratuitous }) if !sender.is_unspecified() => {
                if gratuitous {
                    let g = self.garps.entry((port, sender)).or_default();
                    if g.len() >= GARPS_KEPT {
                        g.pop_front();
                    }
                    g.push_back(now_ms);
                }
                let prev = self.claims.insert(sender, (port, now_ms));
                if prev.is_none_or(|(p, _)| p != port) {
                    self.note(now_ms, port, ObservedKind::Claim { address: sender });
                }
            }
            _ => {}
        }
    }

    /// The ports that sent a VRRP advert with a non-zero priority within `within_ms`
    /// before `now_ms`: (segment, vrid, port name, priority). Two on one segment and
    /// router are two masters.
    pub fn masters(&self, now_ms: u64, within_ms: u64) -> Vec<(String, u8, String, u8)> {
        let mut v: Vec<_> = self
            .adverts
            .iter()
            .filter(|(_, a)| a.priority > 0 && now_ms.saturating_sub(a.last_ms) <= within_ms)
            .map(|((port, vrid), a)| {
                let p = &self.ports[*port];
                (p.spec.segment.clone(), *vrid, p.spec.name(), a.priority)
            })
            .collect();
        v.sort();
        v
    }

    /// Starts the adverts' [`AdvertSeen::max_gap_ms`] over.
    pub fn reset_advert_gaps(&mut self) {
        self.adverts.values_mut().for_each(|a| a.max_gap_ms = 0);
    }

    /// The last advert seen from a port for a router.
    pub fn advert(&self, port: PortId, vrid: u8) -> Option<AdvertSeen> {
        self.adverts.get(&(port, vrid)).copied()
    }

    /// Who claimed an address last (ARP), and when.
    pub fn claim(&self, address: std::net::Ipv4Addr) -> Option<(String, u64)> {
        self.claims
            .get(&address)
            .map(|(p, ms)| (self.ports[*p].spec.name(), *ms))
    }

    /// The gratuitous ARPs a port sent for an address (announcements: a takeover's, or a
    /// master's re-announcement after a healed split brain).
    pub fn garps(&self, port: PortId, address: std::net::Ipv4Addr) -> Option<GarpSeen> {
        self.garps_since(port, address, 0)
    }

    /// The gratuitous ARPs a port sent for an address at or after `since_ms`.
    pub fn garps_since(
        &self,
        port: PortId,
        address: std::net::Ipv4Addr,
        since_ms: u64,
    ) -> Option<GarpSeen> {
        let mut t = self
            .garps
            .get(&(port, address))?
            .iter()
            .filter(|ms| **ms >= since_ms);
        let first = *t.next()?;
        let (last, count) = t.fold((first, 1), |(_, n), ms| (*ms, n + 1));
        Some(GarpSeen {
            first_ms: first,
            last_ms: last,
            count,
        })
    }

    /// The unicast IPv4 destinations of the packets `port` sent (VRRP excluded), with
    /// their packet counts.
    pub fn destinations(&self, port: PortId) -> BTreeMap<std::net::Ipv4Addr, u64> {
        self.destinations.get(&port).cloned().unwrap_or_default()
    }

    /// The observer's events at or after `since_ms`.
    pub fn observed_since(&self, since_ms: u64) -> Vec<Observed> {
        self.observed
            .iter()
            .filter(|o| o.ms >= since_ms)
            .cloned()
            .collect()
    }

    /// The name of a port.
    pub fn port_name(&self, port: PortId) -> String {
        self.ports[port].spec.name()
    }

    /// Sets the MAC aging time.
    pub fn set_aging_ms(&mut self, ms: u64) {
        self.aging_ms = ms;
    }

    /// The port specs, in [`PortId`] order.
    pub fn ports(&self) -> impl Iterator<Item = &PortSpec> {
        self.ports.iter().map(|p| &p.spec)
    }

    /// The segment names.
    pub fn segments(&self) -> &[String] {
        &self.segments
    }

    /// Finds a port by `NODE:SEGMENT`.
    pub fn port(&self, name: &str) -> Result<PortId, SwitchError> {
        self.ports
            .iter()
            .position(|p| p.spec.name() == name)
            .ok_or_else(|| SwitchError::NoPort {
                name: name.to_string(),
                known: self
                    .ports
                    .iter()
                    .map(|p| p.spec.name())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    fn node(&self, name: &str) -> Result<usize, SwitchError> {
        self.nodes
            .iter()
            .position(|n| n == name)
            .ok_or_else(|| SwitchError::NoNode {
                name: name.to_string(),
                known: self.nodes.join(", "),
            })
    }

    /// The impairment of one direction of a port.
    pub fn impairment(&self, port: PortId, dir: Dir) -> Impairment {
        let p = &self.ports[port];
        match dir {
            Dir::Rx => p.rx,
            Dir::Tx => p.tx,
        }
    }

    /// Sets the impairment of one direction of a port.
    pub fn set_impairment(
        &mut self,
        port: PortId,
        dir: Dir,
        imp: Impairment,
    ) -> Result<(), SwitchError> {
        if !(0.0..=100.0).contains(&imp.loss_pct) {
            return Err(SwitchError::BadLoss(imp.loss_pct));
        }
        let p = &mut self.ports[port];
        match dir {
            Dir::Rx => p.rx = imp,
            Dir::Tx => p.tx = imp,
        }
        Ok(())
    }

    /// Cuts (or restores) both directions of a port, keeping loss and delay.
    pub fn set_cut(&mut self, port: PortId, cut: bool) {
        let p = &mut self.ports[port];
        p.rx.cut = cut;
        p.tx.cut = cut;
    }

    /// Blocks every frame between nodes `a` and `b` (both directions, all segments).
    pub fn partition(&mut self, a: &str, b: &str) -> Result<(), SwitchError> {
        let (a, b) = (self.node(a)?, self.node(b)?);
        self.blocked.insert((a.min(b), a.max(b)));
        Ok(())
    }

    /// The blocked node pairs, by name.
    pub fn partitions(&self) -> Vec<(String, String)> {
        self.blocked
            .iter()
            .map(|&(a, b)| (self.nodes[a].clone(), self.nodes[b].clone()))
            .collect()
    }

    /// Removes every impairment and partition (the MAC tables stay).
    pub fn heal_all(&mut self) {
        for p in &mut self.ports {
            p.rx = Impairment::default();
            p.tx = Impairment::default();
        }
        self.blocked.clear();
    }

    /// Counters of a port.
    pub fn counters(&self, port: PortId) -> PortCounters {
        self.ports[port].counters
    }

    /// Where a learned MAC lives on a segment, if known and not aged out at `now_ms`.
    pub fn lookup(&self, segment: &str, mac: Mac, now_ms: u64) -> Option<PortId> {
        let seg = self.segments.iter().position(|s| s == segment)?;
        self.fdb
            .get(&(seg, mac))
            .filter(|(_, seen)| now_ms.saturating_sub(*seen) <= self.aging_ms)
            .map(|(p, _)| *p)
    }

    fn passes(rng: &mut fastrand::Rng, imp: &Impairment) -> bool {
        if imp.cut {
            return false;
        }
        // The RNG is drawn only when loss is configured, so a loss-free run consumes no
        // randomness and later decisions stay reproducible from the seed.
        imp.loss_pct <= 0.0 || rng.f64() * 100.0 >= imp.loss_pct
    }

    /// Decides where a frame that arrived on `ingress` at `now_ms` goes; appends the
    /// deliveries to `out` (cleared first). Learning, flooding and every impairment
    /// happen here; the caller only sends.
    pub fn frame(&mut self, ingress: PortId, frame: &[u8], now_ms: u64, out: &mut Vec<Forward>) {
        out.clear();
        let Some(p) = self.ports.get_mut(ingress) else {
            return;
        };
        p.counters.rx += 1;
        if frame.len() < 14 || !Self::passes(&mut self.rng, &p.rx) {
            p.counters.rx_dropped += 1;
            return;
        }
        let (seg, node, rx_delay) = (p.segment, p.node, p.rx.delay_ms);
        self.observe(ingress, frame, now_ms);
        let dst: Mac = frame[0..6].try_into().unwrap_or_default();
        let src: Mac = frame[6..12].try_into().unwrap_or_default();
        if !is_multicast(&src) {
            self.fdb.insert((seg, src), (ingress, now_ms));
        }
        let known = (!is_multicast(&dst))
            .then(|| self.fdb.get(&(seg, dst)))
            .flatten()
            .filter(|(_, seen)| now_ms.saturating_sub(*seen) <= self.aging_ms)
            .map(|(port, _)| *port);
        let mut deliver = |sw: &mut Switch, egress: PortId| {
            let blocked = {
                let en = sw.ports[egress].node;
                sw.blocked.contains(&(node.min(en), node.max(en)))
            };
            let e = &mut sw.ports[egress];
            if blocked || !Self::passes(&mut sw.rng, &e.tx) {
                e.counters.tx_dropped += 1;
                return;
            }
            e.counters.tx += 1;
            out.push(Forward {
                port: egress,
                delay: Duration::from_millis(u64::from(rx_delay) + u64::from(e.tx.delay_ms)),
            });
        };
        match known {
            // The destination sits on the port it came from: nothing to forward.
            Some(port) if port == ingress => {}
            Some(port) => deliver(self, port),
            None => {
                for egress in 0..self.ports.len() {
                    if egress != ingress && self.ports[egress].segment == seg {
                        deliver(self, egress);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Mac = [0x52, 0x54, 0, 0, 0, 0xa];
    const B: Mac = [0x52, 0x54, 0, 0, 0, 0xb];
    const BCAST: Mac = [0xff; 6];

    fn eth(dst: Mac, src: Mac) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&dst);
        f.extend_from_slice(&src);
        f.extend_from_slice(&[0x08, 0x00]);
        f.extend_from_slice(&[0u8; 46]);
        f
    }

    /// client, fw1, fw2 on inside; fw1, fw2 on sync.
    fn sw() -> Switch {
        let p = |n: &str, s: &str| PortSpec {
            node: n.into(),
            segment: s.into(),
        };
        Switch::new(
            vec![
                p("client", "inside"),
                p("fw1", "inside"),
                p("fw2", "inside"),
                p("fw1", "sync"),
                p("fw2", "sync"),
            ],
            7,
        )
    }

    fn ports(out: &[Forward]) -> Vec<PortId> {
        out.iter().map(|f| f.port).collect()
    }

    #[test]
    fn floods_unknown_within_the_segment_then_learns() {
        let mut s = sw();
        let mut out = Vec::new();
        s.frame(0, &eth(BCAST, A), 0, &mut out);
        assert_eq!(ports(&out), [1, 2], "flood stays inside the segment");
        s.frame(1, &eth(A, B), 1, &mut out);
        assert_eq!(ports(&out), [0], "A was learned on port 0");
        s.frame(0, &eth(B, A), 2, &mut out);
        assert_eq!(ports(&out), [1], "B was learned on port 1");
        assert_eq!(s.lookup("inside", B, 2), Some(1));
        assert_eq!(s.lookup("sync", B, 2), None, "tables are per segment");
    }

    #[test]
    fn a_moved_mac_is_relearned_and_entries_age_out() {
        let mut s = sw();
        s.set_aging_ms(1000);
        let mut out = Vec::new();
        s.frame(1, &eth(BCAST, B), 0, &mut out); // B (a VIP MAC) on fw1
        s.frame(2, &eth(BCAST, B), 10, &mut out); // takeover: B now on fw2
        s.frame(0, &eth(B, A), 20, &mut out);
        assert_eq!(ports(&out), [2]);
        s.frame(0, &eth(B, A), 2000, &mut out);
        assert_eq!(ports(&out), [1, 2], "aged out: flooded again");
    }

    #[test]
    fn a_frame_for_the_ingress_port_is_filtered_and_runts_are_dropped() {
        let mut s = sw();
        let mut out = Vec::new();
        s.frame(0, &eth(BCAST, A), 0, &mut out);
        s.frame(0, &eth(A, B), 1, &mut out);
        assert!(out.is_empty());
        s.frame(0, &[0u8; 10], 2, &mut out);
        assert!(out.is_empty());
        assert_eq!(s.counters(0).rx_dropped, 1);
    }

    #[test]
    fn cut_drops_both_directions_and_heal_restores() {
        let mut s = sw();
        let mut out = Vec::new();
        s.set_cut(1, true);
        s.frame(1, &eth(BCAST, B), 0, &mut out);
        assert!(out.is_empty(), "nothing gets in from a cut port");
        s.frame(0, &eth(BCAST, A), 1, &mut out);
        assert_eq!(ports(&out), [2], "nothing goes out to a cut port");
        assert_eq!(s.counters(1).rx_dropped, 1);
        assert_eq!(s.counters(1).tx_dropped, 1);
        s.heal_all();
        s.frame(0, &eth(BCAST, A), 2, &mut out);
        assert_eq!(ports(&out), [1, 2]);
    }

    #[test]
    fn one_way_cut_drops_only_that_direction() {
        let mut s = sw();
        let mut out = Vec::new();
        let cut = Impairment {
            cut: true,
            ..Impairment::default()
        };
        s.set_impairment(1, Dir::Rx, cut).unwrap();
        s.frame(1, &eth(BCAST, B), 0, &mut out);
        assert!(out.is_empty(), "fw1's adverts do not get out");
        s.frame(2, &eth(BCAST, A), 1, &mut out);
        assert_eq!(ports(&out), [0, 1], "fw1 still hears the others");
    }

    #[test]
    fn partition_blocks_two_nodes_on_every_segment_only() {
        let mut s = sw();
        let mut out = Vec::new();
        s.partition("fw2", "fw1").unwrap();
        s.frame(1, &eth(BCAST, B), 0, &mut out);
        assert_eq!(ports(&out), [0], "fw1 reaches client, not fw2");
        s.frame(3, &eth(BCAST, B), 1, &mut out);
        assert!(out.is_empty(), "sync is blocked too");
        s.frame(0, &eth(BCAST, A), 2, &mut out);
        assert_eq!(ports(&out), [1, 2], "the client still reaches both");
        assert_eq!(s.partitions(), [("fw1".to_string(), "fw2".to_string())]);
        assert!(matches!(
            s.partition("fw1", "fw9"),
            Err(SwitchError::NoNode { .. })
        ));
    }

    #[test]
    fn loss_is_seeded_and_roughly_the_configured_share() {
        let run = |seed| {
            let mut s = sw();
            s.rng = fastrand::Rng::with_seed(seed);
            s.set_impairment(
                0,
                Dir::Rx,
                Impairment {
                    loss_pct: 30.0,
                    ..Impairment::default()
                },
            )
            .unwrap();
            let mut out = Vec::new();
            let mut got = Vec::new();
            for t in 0..10_000 {
                s.frame(0, &eth(BCAST, A), t, &mut out);
                got.push(!out.is_empty());
            }
            got
        };
        let a = run(1);
        assert_eq!(a, run(1), "same seed, same decisions");
        assert_ne!(a, run(2));
        let dropped = a.iter().filter(|d| !**d).count();
        assert!(
            (2700..3300).contains(&dropped),
            "{dropped} of 10000 dropped"
        );
    }

    #[test]
    fn adverts_tell_the_masters_and_arp_tells_who_claims_a_vip() {
        let mut s = sw();
        let mut out = Vec::new();
        let advert = |src: Mac, prio: u8| {
            let mut f = eth([0x01, 0, 0x5e, 0, 0, 0x12], src);
            f.truncate(12);
            f.extend_from_slice(&[0x08, 0x00]);
            f.extend_from_slice(&[
                0x45, 0, 0, 32, 0, 0, 0, 0, 255, 112, 0, 0, 198, 51, 100, 2, 224, 0, 0, 18,
            ]);
            f.extend_from_slice(&[0x31, 52, prio, 1, 0, 10, 0, 0, 198, 51, 100, 1]);
            f
        };
        let garp = |src: Mac| {
            let mut f = eth(BCAST, src);
            f.truncate(12);
            f.extend_from_slice(&[0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1]);
            f.extend_from_slice(&src);
            f.extend_from_slice(&[198, 51, 100, 1, 0, 0, 0, 0, 0, 0, 198, 51, 100, 1]);
            f
        };
        s.frame(1, &advert(B, 200), 100, &mut out);
        s.frame(1, &garp(B), 101, &mut out);
        assert_eq!(
            s.masters(150, 300),
            [("inside".to_string(), 52, "fw1:inside".to_string(), 200)]
        );
        // Split brain: fw2 advertises too.
        s.frame(2, &advert(A, 100), 200, &mut out);
        assert_eq!(s.masters(250, 300).len(), 2);
        // fw1 falls silent; fw2 takes the VIP.
        s.frame(2, &garp(A), 600, &mut out);
        s.frame(2, &advert(A, 100), 650, &mut out);
        assert_eq!(
            s.masters(700, 300),
            [("inside".to_string(), 52, "fw2:inside".to_string(), 100)]
        );
        assert_eq!(
            s.claim("198.51.100.1".parse().unwrap()),
            Some(("fw2:inside".into(), 600))
        );
        let ev = s.observed_since(150);
        assert_eq!(ev.len(), 2, "{ev:?}"); // fw2's advert start at 200, its claim at 600
        assert_eq!(ev[1].port, "fw2:inside");
        assert!(matches!(ev[1].what, ObservedKind::Claim { .. }));
        // Gratuitous ARPs are counted per port and address; fw1 re-announces later.
        let vip = "198.51.100.1".parse().unwrap();
        let fw2 = s.garps(2, vip).unwrap();
        assert_eq!((fw2.first_ms, fw2.last_ms, fw2.count), (600, 600, 1));
        s.frame(1, &garp(B), 900, &mut out);
        s.frame(1, &garp(B), 1000, &mut out);
        let fw1 = s.garps(1, vip).unwrap();
        assert_eq!((fw1.first_ms, fw1.last_ms, fw1.count), (101, 1000, 3));
        let since = s.garps_since(1, vip, 800).unwrap();
        assert_eq!((since.first_ms, since.last_ms, since.count), (900, 1000, 2));
        assert_eq!(s.garps_since(1, vip, 1001), None);
        assert_eq!(s.claim(vip), Some(("fw1:inside".into(), 1000)));
        // An ARP reply from the VIP is a claim, not an announcement.
        let mut reply = garp(A);
        reply[21] = 2;
        reply[38..42].copy_from_slice(&[198, 51, 100, 9]);
        s.frame(2, &reply, 1100, &mut out);
        assert_eq!(s.garps(2, vip).unwrap().count, 1);
        assert_eq!(s.claim(vip), Some(("fw2:inside".into(), 1100)));
        // fw1 again: adverts 100 ms apart, then one 350 ms late: the longest gap of its run.
        s.frame(1, &advert(B, 200), 3000, &mut out);
        s.frame(1, &advert(B, 200), 3100, &mut out);
        s.frame(1, &advert(B, 200), 3450, &mut out);
        assert_eq!(s.advert(1, 52).unwrap().max_gap_ms, 350);
        s.reset_advert_gaps();
        assert_eq!(s.advert(1, 52).unwrap().max_gap_ms, 0);
        s.frame(1, &advert(B, 200), 5000, &mut out); // after 1 s of silence: a new run
        assert_eq!(s.advert(1, 52).unwrap().max_gap_ms, 0);
    }

    #[test]
    fn unicast_ipv4_destinations_are_counted_per_sending_port() {
        let mut s = sw();
        let mut out = Vec::new();
        let ip = |src: Mac, dst: [u8; 4]| {
            let mut f = eth(BCAST, src);
            f.truncate(14);
            f.extend_from_slice(&[0x45, 0, 0, 20, 0, 0, 0, 0, 64, 6, 0, 0, 192, 0, 2, 10]);
            f.extend_from_slice(&dst);
            f
        };
        s.frame(0, &ip(A, [203, 0, 113, 254]), 1, &mut out);
        s.frame(0, &ip(A, [203, 0, 113, 254]), 2, &mut out);
        s.frame(0, &ip(A, [224, 0, 0, 18]), 3, &mut out);
        s.frame(0, &ip(A, [255, 255, 255, 255]), 4, &mut out);
        s.frame(1, &ip(B, [192, 0, 2, 10]), 5, &mut out);
        let d = s.destinations(0);
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(d[&"203.0.113.254".parse().unwrap()], 2);
        assert_eq!(s.destinations(1).len(), 1);
        assert!(s.destinations(2).is_empty());
    }

    #[test]
    fn delays_add_up_and_bad_loss_is_refused() {
        let mut s = sw();
        let d = |ms| Impairment {
            delay_ms: ms,
            ..Impairment::default()
        };
        s.set_impairment(0, Dir::Rx, d(30)).unwrap();
        s.set_impairment(1, Dir::Tx, d(20)).unwrap();
        let mut out = Vec::new();
        s.frame(0, &eth(BCAST, A), 0, &mut out);
        assert_eq!(
            out,
            [
                Forward {
                    port: 1,
                    delay: Duration::from_millis(50)
                },
                Forward {
                    port: 2,
                    delay: Duration::from_millis(30)
                }
            ]
        );
        let bad = Impairment {
            loss_pct: 101.0,
            ..Impairment::default()
        };
        assert_eq!(
            s.set_impairment(0, Dir::Tx, bad),
            Err(SwitchError::BadLoss(101.0))
        );
        assert!(matches!(
            s.port("fw3:inside"),
            Err(SwitchError::NoPort { .. })
        ));
        assert_eq!(s.port("fw2:sync"), Ok(4));
    }
}
