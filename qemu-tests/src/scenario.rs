//! The failover scenarios of the lab, each a script of faults against a booted pair that
//! ends in a [`Report`]: fault time, time until the VIP answered (ARP) on the new master,
//! the client's longest gap, flows broken / total, the checks and a one-line summary.
//! Observations come from the switch (VRRP adverts and ARP claims it forwarded), from
//! the client agent, and — where the topology forwards their management APIs — from the
//! firewalls themselves (`GET /status`: VRRP and sync state), so a scenario holds what the
//! neighbours see against what each node believes.
//!
//! Scenarios expect the state the previous one left (a settled pair) and leave the pair
//! settled again, except `kill-master`, which leaves one node and so runs last.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::agent::{self, ClientStats};
use crate::fwstatus::FirewallState;
use crate::lab::{Lab, LabError, LabStatus, read_firewalls};
use crate::switch::core::{Dir, Observed, ObservedKind};

/// The scenarios in their run order.
pub const ALL: [&str; 8] = [
    "boot",
    "cut-master-inside",
    "cut-master-outside",
    "cut-sync",
    "partition",
    "flap",
    "one-way-advert-loss",
    "kill-master",
];

/// Errors of a scenario run (a failed *check* is not an error: it is in the report).
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// Unknown name.
    #[error("no scenario {0} (scenarios: {list})", list = ALL.join(", "))]
    Unknown(String),
    /// The lab failed.
    #[error(transparent)]
    Lab(#[from] LabError),
    /// The pair never reached the state the scenario starts from.
    #[error("scenario {scenario}: {what} not reached within {secs} s; last seen: {last}")]
    Timeout {
        /// Scenario.
        scenario: String,
        /// The state waited for.
        what: String,
        /// The limit.
        secs: u64,
        /// What the last look showed (who advertised, which flows were down and why).
        last: String,
    },
    /// Writing the report failed.
    #[error("writing {path}: {source}")]
    Write {
        /// File.
        path: std::path::PathBuf,
        /// Cause.
        source: std::io::Error,
    },
}

/// One check of a scenario.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Check {
    /// What was checked.
    pub what: String,
    /// Whether it held.
    pub ok: bool,
    /// The observed value.
    pub detail: String,
    /// A timing target of issue 8 (e.g. the client's longest gap ≤ 500 ms): judged and
    /// reported ("target missed"), but it does not fail the scenario — behaviour does,
    /// a loaded TCG host's timing does not.
    #[serde(default)]
    pub target: bool,
}

impl Check {
    /// `ok`, `FAIL`, `target met` or `target missed`.
    pub fn mark(&self) -> &'static str {
        match (self.target, self.ok) {
            (false, true) => "ok",
            (false, false) => "FAIL",
            (true, true) => "target met",
            (true, false) => "target missed",
        }
    }
}

/// Issue 8's target for the client's longest gap in a failover (scenarios 2-4).
pub const GAP_TARGET_MS: u64 = 500;

/// The margin over Master_Down_Interval within which a killed master's peer must answer
/// for the VIPs (scenario 4): the commit + VIP + GARP path (~35 ms) and TCG scheduling.
/// Tight enough to catch a takeover that waits on the wrong thing (the 2 s commit wait
/// of a hung participant, a 1 s advert interval's 3.6 s).
pub const TAKEOVER_MARGIN_MS: u64 = 500;

/// A scenario's result (written as JSON to `RUN_DIR/reports/NAME.json`).
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Report {
    /// Scenario name.
    pub name: String,
    /// Every check held.
    pub ok: bool,
    /// Switch time of the fault (ms).
    pub fault_at_ms: Option<u64>,
    /// The VIP holder before the fault.
    pub master_before: Option<String>,
    /// The VIP holder at the end.
    pub master_after: Option<String>,
    /// From the fault to the first ARP for a VIP from the new master, in ms.
    pub vip_answered_after_ms: Option<u64>,
    /// From the heal to one master again, in ms (healing scenarios).
    pub converged_after_heal_ms: Option<u64>,
    /// The client's longest gap during the scenario (any flow), ms.
    pub longest_gap_ms: u64,
    /// TCP flows that were reset during the scenario.
    pub flows_broken: usize,
    /// TCP flows.
    pub flows_total: usize,
    /// Checks.
    pub checks: Vec<Check>,
    /// What the switch observed from the fault on.
    pub observed: Vec<Observed>,
    /// Observations that are not checks (e.g. flows that broke while the pair came up).
    #[serde(default)]
    pub notes: Vec<String>,
    /// Human summary.
    pub summary: String,
}

struct Run<'a> {
    lab: &'a Mutex<Lab>,
    name: String,
    report: Report,
}

fn lock(lab: &Mutex<Lab>) -> std::sync::MutexGuard<'_, Lab> {
    lab.lock().unwrap_or_else(|e| e.into_inner())
}

/// The node holding every VIP as the only master, if the pair is in that state.
pub fn sole_master(st: &LabStatus) -> Option<String> {
    if st.split_brain || st.vip_holders.len() != 1 || st.vips.iter().any(|v| v.masters.is_empty()) {
        return None;
    }
    st.vip_holders.first().cloned()
}

impl<'a> Run<'a> {
    fn new(lab: &'a Mutex<Lab>, name: &str) -> Run<'a> {
        Run {
            lab,
            name: name.to_string(),
            report: Report {
                name: name.to_string(),
                ok: true,
                fault_at_ms: None,
                master_before: None,
                master_after: None,
                vip_answered_after_ms: None,
                converged_after_heal_ms: None,
                longest_gap_ms: 0,
                flows_broken: 0,
                flows_total: 0,
                checks: Vec::new(),
                observed: Vec::new(),
                notes: Vec::new(),
                summary: String::new(),
            },
        }
    }

    fn status(&self) -> LabStatus {
        lock(self.lab).status()
    }

    fn traffic(&self, reset: bool) -> Result<ClientStats, LabError> {
        lock(self.lab).traffic(reset)
    }

    /// The firewalls' own state (empty when no management API is forwarded). The
    /// requests go out without holding the lab's lock.
    fn firewalls(&self) -> BTreeMap<String, Result<FirewallState, String>> {
        let endpoints = lock(self.lab).mgmt_endpoints();
        read_firewalls(&endpoints)
    }

    fn reads_firewalls(&self) -> bool {
        !lock(self.lab).mgmt_endpoints().is_empty()
    }

    fn check(&mut self, what: &str, ok: bool, detail: String) {
        tracing::info!(scenario = %self.name, check = what, ok, detail = %detail, "check");
        self.report.ok &= ok;
        self.report.checks.push(Check {
            what: what.to_string(),
            ok,
            detail,
            target: false,
        });
    }

    /// A timing target: recorded like a check, does not fail the scenario.
    fn target(&mut self, what: &str, ok: bool, detail: String) {
        tracing::info!(scenario = %self.name, target = what, ok, detail = %detail, "target");
        self.report.checks.push(Check {
            what: what.to_string(),
            ok,
            detail,
            target: true,
        });
    }

    /// Issue 8's gap target, on the gap [`Run::finish_traffic`] recorded.
    fn gap_target(&mut self) {
        let gap = self.report.longest_gap_ms;
        self.target(
            &format!("the client's longest gap ≤ {GAP_TARGET_MS} ms"),
            gap <= GAP_TARGET_MS,
            format!("{gap} ms"),
        );
    }

    /// After a heal `h` that ended two masters (fault at `fault`): every VIP that the
    /// loser announced during the fault is re-announced by `winner` (its gratuitous ARP
    /// seen on the wire after the heal, from its port on the VIP's segment), and the last
    /// ARP for every VIP on the wire is the winner's, so the neighbours' caches point at
    /// it. Waits up to [`FAILOVER`] for it.
    fn check_reannounced(&mut self, winner: &str, fault: u64, h: u64) {
        let loser = self.peer_of(winner);
        let seen = self.wait_why("the winner's GARPs after the heal", FAILOVER, |r| {
            let lab = lock(r.lab);
            let core = lab.switch.core();
            let mut lines = Vec::new();
            let mut all = true;
            for v in &lab.vips {
                let std::net::IpAddr::V4(a) = v.address.addr() else {
                    continue;
                };
                let port = format!("{winner}:{}", v.zone);
                let garps = |node: &str, since: u64| {
                    core.port(&format!("{node}:{}", v.zone))
                        .ok()
                        .and_then(|p| core.garps_since(p, a, since))
                };
                let taken = garps(&loser, fault);
                let again = garps(winner, h);
                let holder = core.claim(a).map(|(p, _)| p);
                let line = format!(
                    "{a}: {loser} announced it {} during the fault; {winner} {} after the heal; ARP holder {}",
                    taken.map_or(0, |g| g.count),
                    again.map_or("did not re-announce".to_string(), |g| format!(
                        "re-announced it {} ms",
                        g.first_ms.saturating_sub(h)
                    )),
                    holder.as_deref().unwrap_or("-"),
                );
                all &= holder.as_deref() == Some(port.as_str()) && (taken.is_none() || again.is_some());
                lines.push(line);
            }
            if all {
                Ok(lines.join("; "))
            } else {
                Err(lines.join("; "))
            }
        });
        self.check(
            "on heal the master re-announces the VIPs the peer took (GARP seen) and holds every VIP's ARP",
            seen.is_ok(),
            match seen {
                Ok(s) => s,
                Err(e) => e.to_string(),
            },
        );
    }

    fn wait<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut f: impl FnMut(&Self) -> Option<T>,
    ) -> Result<T, ScenarioError> {
        self.wait_why(what, timeout, |r| f(r).ok_or_else(|| "not yet".to_string()))
    }

    /// Polls `f` every 100 ms until it returns `Ok`; on timeout the error carries the
    /// last reason `f` gave.
    fn wait_why<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut f: impl FnMut(&Self) -> Result<T, String>,
    ) -> Result<T, ScenarioError> {
        let start = Instant::now();
        loop {
            let last = match f(self) {
                Ok(v) => return Ok(v),
                Err(why) => why,
            };
            if start.elapsed() >= timeout {
                return Err(ScenarioError::Timeout {
                    scenario: self.name.clone(),
                    what: what.to_string(),
                    secs: timeout.as_secs(),
                    last,
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A settled pair: one master holding every VIP — with preemption the running node of
    /// the highest priority — unchanged for [`STABLE_ADVERTS`] advert intervals (at least
    /// [`STABLE_MIN`]), and every client flow echoing. A master seen right after a heal
    /// is not final while a preempting peer is about to take over.
    fn settled(&self, timeout: Duration) -> Result<String, ScenarioError> {
        let stable_for = STABLE_MIN.max(Duration::from_millis(
            u64::from(lock(self.lab).advert_ms) * STABLE_ADVERTS,
        ));
        let mut since: Option<(String, Instant)> = None;
        self.wait_why(
            "one stable master with all VIPs and all flows echoing",
            timeout,
            |r| {
                let st = r.status();
                let expected = lock(r.lab).expected_master();
                let Some(m) = sole_master(&st) else {
                    since = None;
                    return Err(format!(
                        "no sole master (advertising: {:?}, split brain {})",
                        st.vip_holders, st.split_brain
                    ));
                };
                if let Some(e) = expected.as_ref().filter(|e| **e != m) {
                    since = None;
                    return Err(format!(
                        "{m} is master, {e} (higher priority) should preempt"
                    ));
                }
                let held = match &since {
                    Some((prev, t)) if *prev == m => t.elapsed(),
                    _ => {
                        since = Some((m.clone(), Instant::now()));
                        Duration::ZERO
                    }
                };
                if held < stable_for {
                    return Err(format!("{m} master for {} ms only", held.as_millis()));
                }
                let t = r.traffic(false).map_err(|e| e.to_string())?;
                if !t.all_flowing(1000) {
                    return Err(format!(
                        "{m} master; flows not echoing: {}",
                        t.why_not_flowing(1000).join("; ")
                    ));
                }
                // The nodes must agree with what the neighbours see: only m says master.
                for (vm, st) in r.firewalls() {
                    let st = st.map_err(|e| format!("{m} master; {vm}: {e}"))?;
                    if st.is_master() != (vm == m) {
                        return Err(format!(
                            "{m} master on the wire, but {vm} reports {}",
                            st.summary()
                        ));
                    }
                }
                Ok(m)
            },
        )
    }

    fn peer_of(&self, node: &str) -> String {
        let lab = lock(self.lab);
        lab.plan
            .vms
            .iter()
            .find(|v| v.name != node && matches!(v.role, crate::topology::VmRole::Firewall { .. }))
            .map(|v| v.name.clone())
            .unwrap_or_default()
    }

    /// The first ARP claim of a VIP by `node` at or after `since`.
    fn vip_claim_by(&self, node: &str, since: u64) -> Option<u64> {
        let lab = lock(self.lab);
        let vips: Vec<std::net::IpAddr> = lab.vips.iter().map(|v| v.address.addr()).collect();
        lab.observed_since(since)
            .into_iter()
            .find(|o| {
                o.port.starts_with(&format!("{node}:"))
                    && matches!(o.what, ObservedKind::Claim { address } if vips.contains(&std::net::IpAddr::V4(address)))
            })
            .map(|o| o.ms)
    }

    /// Waits until every flow has echoed again since the new master answered (call it
    /// then): only then is the gap the fault opened closed and counted whole. Waiting
    /// for "an echo within 500 ms" instead returned at once while the flows were still
    /// in the outage (their open gaps under 500 ms), and a snapshot then cut the gap
    /// short (a killed master's TCP flows read 0 ms in the 17:20 run).
    fn wait_recovered(&self) -> Result<(), ScenarioError> {
        let before = self.traffic(false)?;
        self.wait_why(
            "every flow echoing again after the takeover",
            FAILOVER,
            |r| {
                let now = r.traffic(false).map_err(|e| e.to_string())?;
                let behind: Vec<String> = now
                    .flows
                    .iter()
                    .filter(|f| {
                        let echoed_since = before
                            .flows
                            .iter()
                            .find(|b| b.id == f.id)
                            .is_none_or(|b| f.echoes > b.echoes);
                        !(echoed_since && f.flowing(200))
                    })
                    .map(|f| format!("flow {} ({:?})", f.id, f.proto))
                    .collect();
                if behind.is_empty() {
                    Ok(())
                } else {
                    Err(format!("not echoing again: {}", behind.join(", ")))
                }
            },
        )
    }

    /// Records the client's flows ([`Run::finish_traffic`]) and checks that none broke.
    fn check_no_flow_broken(&mut self, what: &str) -> Result<(), ScenarioError> {
        self.finish_traffic()?;
        self.check(
            what,
            self.report.flows_broken == 0,
            format!(
                "{}/{} broken",
                self.report.flows_broken, self.report.flows_total
            ),
        );
        Ok(())
    }

    /// Heals everything, waits for one master and records how long that took.
    fn heal_and_settle(&mut self) -> Result<(), ScenarioError> {
        let h = lock(self.lab).heal(None)?;
        let back = self.settled(SETTLE)?;
        self.report.converged_after_heal_ms =
            Some(lock(self.lab).switch.now_ms().saturating_sub(h));
        self.report.master_after = Some(back);
        Ok(())
    }

    fn finish_traffic(&mut self) -> Result<(), ScenarioError> {
        let t = self.traffic(true)?;
        self.report.longest_gap_ms = t.longest_gap_ms();
        let (b, n) = t.tcp_broken();
        self.report.flows_broken = b;
        self.report.flows_total = n;
        Ok(())
    }

    fn observe_from(&mut self, since: u64) {
        self.report.observed = lock(self.lab).observed_since(since);
    }
}

/// Generous limits: TCG on a shared 2-core machine is slow, and these bound a failure,
/// they are not targets.
const SETTLE: Duration = Duration::from_secs(240);
const FAILOVER: Duration = Duration::from_secs(60);

/// A master counts as settled once it held this many advert intervals without a change.
const STABLE_ADVERTS: u64 = 10;
/// ... and at least this long.
const STABLE_MIN: Duration = Duration::from_secs(1);

/// A link fault on the master's `segment`: the VIPs must move to the peer, flows survive.
fn cut_master(r: &mut Run<'_>, segment: &str) -> Result<(), ScenarioError> {
    let m = r.settled(SETTLE)?;
    let peer = r.peer_of(&m);
    r.report.master_before = Some(m.clone());
    r.traffic(true)?;
    let t = lock(r.lab).cut(&format!("{m}:{segment}"), true)?;
    r.report.fault_at_ms = Some(t);
    let took = r.wait("the peer holding the VIPs", FAILOVER, |r| {
        (sole_master(&r.status()).as_deref() == Some(peer.as_str()))
            .then(|| r.vip_claim_by(&peer, t))
            .flatten()
    });
    let answered = took.ok().map(|ms| ms.saturating_sub(t));
    r.report.vip_answered_after_ms = answered;
    r.check(
        "the peer holds every VIP",
        answered.is_some(),
        format!("VIPs on {peer} after {answered:?} ms"),
    );
    // Give the client flows time to show whether they survived.
    let _ = r.wait_recovered();
    r.check_no_flow_broken("no established flow was reset")?;
    r.gap_target();
    r.observe_from(t);
    r.heal_and_settle()?;
    Ok(())
}

fn boot(r: &mut Run<'_>) -> Result<(), ScenarioError> {
    let m = r.settled(SETTLE)?;
    r.report.master_before = Some(m.clone());
    r.report.master_after = Some(m.clone());
    let st = r.status();
    r.check(
        "exactly one master, holding both VIPs",
        sole_master(&st).is_some(),
        format!(
            "holders {:?}, split brain {}",
            st.vip_holders, st.split_brain
        ),
    );
    let claims: Vec<String> = st
        .vips
        .iter()
        .map(|v| format!("{} on {:?}", v.address, v.holder))
        .collect();
    r.check(
        "every VIP was announced by the master",
        st.vips.iter().all(|v| {
            v.holder
                .as_deref()
                .is_some_and(|h| h.starts_with(&format!("{m}:")))
        }),
        claims.join(", "),
    );
    // What happened to the flows while the pair came up (before this scenario's window):
    // a flow that connected through the first node up and then met the preempting node
    // without its state stalls (tcp_loose=0) until the agent gives up on it.
    let before = r.traffic(true)?;
    let broke: Vec<String> = before
        .flows
        .iter()
        .filter(|f| f.resets + f.stalls > 0)
        .map(|f| {
            format!(
                "flow {}: {} resets, {} stalls, longest gap {} ms ({})",
                f.id,
                f.resets,
                f.stalls,
                f.longest_gap_ms,
                f.last_error.as_deref().unwrap_or("-")
            )
        })
        .collect();
    if !broke.is_empty() {
        r.report.notes.push(format!(
            "while the pair came up {} TCP flows broke and reconnected: {}",
            broke.len(),
            broke.join("; ")
        ));
    }
    std::thread::sleep(Duration::from_secs(3));
    if let Some(snat) = server_answers_only_vips(&lock(r.lab)) {
        r.check(
            "the server answers the outside VIP only (SNAT to the VIP)",
            snat.is_ok(),
            snat.unwrap_or_else(|e| e),
        );
    }
    r.finish_traffic()?;
    r.check(
        "the client reaches the server through the VIPs",
        r.report.flows_total > 0 && r.report.flows_broken == 0,
        format!(
            "{} flows, longest gap {} ms",
            r.report.flows_total, r.report.longest_gap_ms
        ),
    );
    Ok(())
}

fn kill_master(r: &mut Run<'_>) -> Result<(), ScenarioError> {
    let m = r.settled(SETTLE)?;
    let peer = r.peer_of(&m);
    r.report.master_before = Some(m.clone());
    r.traffic(true)?;
    let t = lock(r.lab).kill(&m)?;
    r.report.fault_at_ms = Some(t);
    let took = r.wait("the peer holding the VIPs", FAILOVER, |r| {
        (sole_master(&r.status()).as_deref() == Some(peer.as_str()))
            .then(|| r.vip_claim_by(&peer, t))
            .flatten()
    });
    let answered = took.ok().map(|ms| ms.saturating_sub(t));
    r.report.vip_answered_after_ms = answered;
    // Master_Down_Interval = 3 adverts + the peer's Skew_Time (RFC 5798 §6.1), counted
    // from the last advert it heard (before the kill); the margin covers the commit +
    // VIP + GARP path and TCG scheduling.
    let mdi = master_down_interval_ms(&lock(r.lab), &peer);
    let limit = mdi + TAKEOVER_MARGIN_MS;
    r.check(
        &format!(
            "the peer answered for the VIPs within Master_Down_Interval + {TAKEOVER_MARGIN_MS} ms"
        ),
        answered.is_some_and(|a| a <= limit),
        format!(
            "VIPs on {peer} after {answered:?} ms (Master_Down_Interval {mdi} ms, limit {limit} ms)"
        ),
    );
    let _ = r.wait_recovered();
    let gaps = r.traffic(false)?;
    r.check_no_flow_broken("no established flow was reset")?;
    r.gap_target();
    r.observe_from(t);
    r.report.master_after = sole_master(&r.status());
    let timeline = takeover_timeline(&lock(r.lab), &m, &peer, t, &gaps);
    r.report.notes.push(timeline);
    Ok(())
}

/// Where the client's gap of a killed master goes (issue 8): the old master's last
/// advert before the kill, the peer's first advert as master (after Master_Down_Interval
/// counted from that last advert), its first ARP for a VIP, and the longest gap of the
/// UDP flow (the path itself) next to the TCP flows' (the path plus TCP's own
/// retransmission timer, which is at least 200 ms on Linux: a segment lost in the
/// outage is resent only when that timer fires, after the path is back).
fn takeover_timeline(lab: &Lab, old: &str, new: &str, kill_ms: u64, gaps: &ClientStats) -> String {
    let core = lab.switch.core();
    let vrids: BTreeSet<u8> = lab.vips.iter().map(|v| v.vrid).collect();
    let last_advert = lab
        .plan
        .ports
        .iter()
        .enumerate()
        .filter(|(_, p)| p.node == old)
        .flat_map(|(id, _)| vrids.iter().map(move |v| (id, *v)))
        .filter_map(|(id, v)| core.advert(id, v))
        .filter(|a| a.priority > 0 && a.last_ms <= kill_ms)
        .map(|a| a.last_ms)
        .max();
    let events = core.observed_since(kill_ms);
    drop(core);
    let first = |f: &dyn Fn(&ObservedKind) -> bool| {
        events
            .iter()
            .find(|o| o.port.starts_with(&format!("{new}:")) && f(&o.what))
            .map(|o| o.ms)
    };
    let advert = first(&|k| matches!(k, ObservedKind::AdvertStart { .. }));
    let garp = first(&|k| matches!(k, ObservedKind::Claim { .. }));
    let rel =
        |x: Option<u64>| x.map_or("-".into(), |x| format!("+{} ms", x as i64 - kill_ms as i64));
    let since_last = match (advert, last_advert) {
        (Some(a), Some(l)) => format!("{} ms", a.saturating_sub(l)),
        _ => "-".into(),
    };
    let gap = |p: agent::Proto| {
        gaps.flows
            .iter()
            .filter(|f| f.proto == p)
            .map(|f| f.longest_gap_ms)
            .max()
            .unwrap_or(0)
    };
    let skew = master_down_interval_ms(lab, new) - 3 * u64::from(lab.advert_ms);
    format!(
        "timeline from the kill of {old}: its last advert {}; {new} advertised as master {} ({since_last} after {old}'s last advert; Master_Down_Interval = 3 x {} + skew {skew} = {} ms); {new}'s first ARP for a VIP {}; client longest gap: UDP {} ms, TCP {} ms",
        last_advert.map_or("-".into(), |l| format!("-{} ms", kill_ms.saturating_sub(l))),
        rel(advert),
        lab.advert_ms,
        3 * u64::from(lab.advert_ms) + skew,
        rel(garp),
        gap(agent::Proto::Udp),
        gap(agent::Proto::Tcp),
    )
}

/// What the echo server's port sent on the wire: every unicast IPv4 packet must go to a
/// VIP of its own segment (the firewalls SNAT the client's flows to the outside VIP), none to a client's own
/// address. `None`: the topology has no server lab host.
fn server_answers_only_vips(lab: &Lab) -> Option<Result<String, String>> {
    let server = lab.plan.vms.iter().find(|v| {
        matches!(
            v.role,
            crate::topology::VmRole::LabHost {
                agent: Some(crate::topology::AgentKind::Server),
                ..
            }
        )
    })?;
    let segments: BTreeSet<&str> = lab
        .plan
        .ports
        .iter()
        .filter(|p| p.node == server.name)
        .map(|p| p.segment.as_str())
        .collect();
    let vips: BTreeSet<std::net::IpAddr> = lab
        .vips
        .iter()
        .filter(|v| segments.contains(v.zone.as_str()))
        .map(|v| v.address.addr())
        .collect();
    let core = lab.switch.core();
    let mut to: BTreeMap<std::net::Ipv4Addr, u64> = BTreeMap::new();
    for (id, p) in lab.plan.ports.iter().enumerate() {
        if p.node == server.name {
            for (a, n) in core.destinations(id) {
                *to.entry(a).or_default() += n;
            }
        }
    }
    let text = to
        .iter()
        .map(|(a, n)| format!("{a}: {n} packets"))
        .collect::<Vec<_>>()
        .join(", ");
    let others: Vec<_> = to
        .keys()
        .filter(|a| !vips.contains(&std::net::IpAddr::V4(**a)))
        .collect();
    Some(if !to.is_empty() && others.is_empty() {
        Ok(format!("{} sent to {text}", server.name))
    } else {
        Err(format!(
            "{} sent to {} (not a VIP: {others:?})",
            server.name,
            if text.is_empty() { "nothing" } else { &text }
        ))
    })
}

/// Master_Down_Interval of `vm` (3 adverts + its Skew_Time, RFC 5798 §6.1), in ms.
fn master_down_interval_ms(lab: &Lab, vm: &str) -> u64 {
    let advert = u64::from(lab.advert_ms);
    let skew = lab
        .priorities
        .get(vm)
        .map_or(0, |p| (256 - u64::from(*p)) * advert / 256);
    3 * advert + skew
}

/// Both firewalls' sync state, one line each.
fn sync_lines(fws: &BTreeMap<String, Result<FirewallState, String>>) -> String {
    fws.iter()
        .map(|(vm, s)| match s {
            Ok(s) => format!("{vm}: {}", s.summary()),
            Err(e) => format!("{vm}: {e}"),
        })
        .collect::<Vec<_>>()
        .join(" | ")
}

/// Whether a node's sync state shows the alarm of a lost sync link: peer down, or the
/// caches not (known to be) consistent.
fn sync_alarm(s: &FirewallState) -> bool {
    s.sync
        .as_ref()
        .is_some_and(|y| !y.peer_up || y.alarm || y.consistent == Some(false))
}

/// Caches converged: both peers up, no alarm, the backup's copy matched the master's
/// digest, and the master's table and the backup's copy hold the same number of entries
/// within `max(2, 10 %)` (flows open and close meanwhile).
fn caches_converged(
    fws: &BTreeMap<String, Result<FirewallState, String>>,
    master: &str,
) -> Result<(u64, u64), String> {
    let get = |vm: &str| -> Result<&FirewallState, String> {
        match fws.get(vm) {
            Some(Ok(s)) => Ok(s),
            Some(Err(e)) => Err(format!("{vm}: {e}")),
            None => Err(format!("{vm}: no status")),
        }
    };
    let m = get(master)?;
    let b = fws
        .keys()
        .find(|k| *k != master)
        .ok_or("no backup status")?;
    let b = get(b)?;
    let (Some(ms), Some(bs)) = (&m.sync, &b.sync) else {
        return Err("a sync service did not answer".into());
    };
    if !ms.peer_up || !bs.peer_up || ms.alarm || bs.alarm || bs.consistent != Some(true) {
        return Err(format!("not synced yet: {}", sync_lines(fws)));
    }
    let (a, e) = (ms.internal_entries, bs.external_entries);
    let tolerance = (a.max(e) / 10).max(2);
    if a.abs_diff(e) > tolerance {
        return Err(format!(
            "entries differ: {a} on {} vs {e} held by {} (tolerance {tolerance})",
            m.vm, b.vm
        ));
    }
    Ok((a, e))
}

fn cut_sync(r: &mut Run<'_>) -> Result<(), ScenarioError> {
    let m = r.settled(SETTLE)?;
    let peer = r.peer_of(&m);
    r.report.master_before = Some(m.clone());
    r.traffic(true)?;
    let t = lock(r.lab).cut(&format!("{m}:sync"), true)?;
    r.report.fault_at_ms = Some(t);
    let fw = r.reads_firewalls();
    // Watch for at least 30 advert intervals (3 s): the VIPs must stay put; meanwhile
    // both nodes must raise the sync alarm themselves (peer down / not synced).
    let advert = u64::from(lock(r.lab).advert_ms);
    let start = Instant::now();
    let watch = Duration::from_millis((advert * 30).max(3000));
    let mut moved = None;
    let mut alarm_after: BTreeMap<String, u64> = BTreeMap::new();
    let mut last_fw = String::new();
    loop {
        let st = r.status();
        if sole_master(&st).as_deref() != Some(m.as_str()) {
            moved = Some(format!(
                "holders {:?}, split brain {}",
                st.vip_holders, st.split_brain
            ));
            break;
        }
        if fw {
            let fws = r.firewalls();
            for (vm, s) in &fws {
                if let Ok(s) = s {
                    if vm == &peer && s.is_master() {
                        moved = Some(format!("{peer} reports itself master: {}", s.summary()));
                    }
                    if sync_alarm(s) {
                        alarm_after
                            .entry(vm.clone())
                            .or_insert(lock(r.lab).switch.now_ms().saturating_sub(t));
                    }
                }
            }
            last_fw = sync_lines(&fws);
            if moved.is_some() {
                break;
            }
        }
        let both = !fw || alarm_after.len() == 2;
        if (start.elapsed() >= watch && both) || start.elapsed() >= FAILOVER {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    r.check(
        "no failover when only the sync link is cut",
        moved.is_none(),
        moved.unwrap_or_else(|| format!("{m} kept every VIP")),
    );
    if fw {
        r.check(
            "both firewalls raise the sync alarm (peer down / not synced)",
            alarm_after.len() == 2,
            format!("alarm after (ms) {alarm_after:?}; {last_fw}"),
        );
    }
    r.check_no_flow_broken("no flow was reset")?;
    r.observe_from(t);
    r.heal_and_settle()?;
    if fw {
        let healed = lock(r.lab).switch.now_ms();
        let master = r.report.master_after.clone().unwrap_or(m);
        let conv = r.wait_why("the caches converged", FAILOVER, |r| {
            caches_converged(&r.firewalls(), &master)
        });
        let took = lock(r.lab).switch.now_ms().saturating_sub(healed);
        r.check(
            "after the heal the caches converge (synced, entry counts equal within max(2, 10 %))",
            conv.is_ok(),
            match &conv {
                Ok((a, e)) => format!(
                    "{a} entries on {master}, {e} held by the peer; {took} ms after the pair settled"
                ),
                Err(e) => e.to_string(),
            },
        );
    }
    Ok(())
}

/// After a heal that ended a split brain: how long until the loser's last master advert
/// (`Err`: never one master within [`FAILOVER`]).
fn one_master_after_heal(r: &Run<'_>, h: u64, a: &str, b: &str) -> Result<u64, ScenarioError> {
    r.wait("one master after the heal", FAILOVER, |r| {
        let winner = sole_master(&r.status())?;
        let loser = if winner == a { b } else { a };
        // The loser's last master advert after the heal ends the split brain.
        let lab = lock(r.lab);
        let core = lab.switch.core();
        let last = lab
            .vips
            .iter()
            .filter_map(|v| {
                let port = core.port(&format!("{loser}:{}", v.zone)).ok()?;
                core.advert(port, v.vrid)
                    .filter(|a| a.priority > 0)
                    .map(|a| a.last_ms)
            })
            .max()
            .unwrap_or(h);
        Some(last.saturating_sub(h))
    })
}

/// Heals the split brain between `a` and `b` (cut at lab time `t`), checks that one master
/// is left within 3 adverts of the heal (recorded in the report) and that it re-announced
/// its VIPs, and returns the settled master.
fn heal_to_one_master(
    r: &mut Run<'_>,
    t: u64,
    a: &str,
    b: &str,
    what: &str,
) -> Result<String, ScenarioError> {
    let h = lock(r.lab).heal(None)?;
    let advert = u64::from(lock(r.lab).advert_ms);
    let one = one_master_after_heal(r, h, a, b);
    r.report.converged_after_heal_ms = one.as_ref().ok().copied();
    r.check(
        what,
        one.as_ref().is_ok_and(|ms| *ms <= 3 * advert),
        format!("{:?} ms (3 adverts = {} ms)", one.ok(), 3 * advert),
    );
    let back = r.settled(SETTLE)?;
    r.check_reannounced(&back, t, h);
    Ok(back)
}

/// Both nodes say they are master (of some router), as read from their own status.
fn both_report_master(r: &Run<'_>) -> Result<String, String> {
    let fws = r.firewalls();
    let masters: Vec<String> = fws
        .iter()
        .filter_map(|(vm, s)| {
            let s = s.as_ref().ok()?;
            s.vrrp
                .iter()
                .any(|g| g.state == "master" || g.routers.iter().any(|x| x.state == "master"))
                .then(|| vm.clone())
        })
        .collect();
    if masters.len() >= 2 {
        Ok(sync_lines(&fws))
    } else {
        Err(format!(
            "masters by their own word: {masters:?}; {}",
            sync_lines(&fws)
        ))
    }
}

fn partition(r: &mut Run<'_>) -> Result<(), ScenarioError> {
    let m = r.settled(SETTLE)?;
    let peer = r.peer_of(&m);
    r.report.master_before = Some(m.clone());
    r.traffic(true)?;
    let t = lock(r.lab).partition(&m, &peer)?;
    r.report.fault_at_ms = Some(t);
    let split = r.wait("both nodes advertising (split brain)", FAILOVER, |r| {
        r.status().split_brain.then_some(())
    });
    r.check(
        "the split brain is visible (both nodes master)",
        split.is_ok(),
        format!("split brain seen: {}", split.is_ok()),
    );
    if r.reads_firewalls() {
        let own = r.wait_why("both nodes reporting master", FAILOVER, both_report_master);
        r.check(
            "the firewalls themselves report the split brain (both master)",
            own.is_ok(),
            match own {
                Ok(s) => s,
                Err(e) => e.to_string(),
            },
        );
    }
    let back = heal_to_one_master(r, t, &m, &peer, "one master within 3 adverts of the heal")?;
    r.check_no_flow_broken("the flows recover (every flow echoing, none reset)")?;
    r.observe_from(t);
    r.report.master_after = Some(back);
    Ok(())
}

fn flap(r: &mut Run<'_>) -> Result<(), ScenarioError> {
    let m = r.settled(SETTLE)?;
    r.report.master_before = Some(m.clone());
    r.traffic(true)?;
    let port = format!("{m}:outside");
    let mut t0 = None;
    for _ in 0..20 {
        let t = lock(r.lab).cut(&port, true)?;
        t0.get_or_insert(t);
        std::thread::sleep(Duration::from_millis(300));
        lock(r.lab).heal(Some(&port))?;
        std::thread::sleep(Duration::from_millis(300));
    }
    r.report.fault_at_ms = t0;
    let back = r.settled(SETTLE);
    r.check(
        "after 20 flaps exactly one node holds the VIPs",
        back.is_ok(),
        format!("{:?}", back.as_ref().ok()),
    );
    r.finish_traffic()?;
    r.observe_from(t0.unwrap_or(0));
    r.report.master_after = back.ok();
    Ok(())
}

/// The expected outcome of a one-way advert loss: the backup that stops hearing the
/// master's adverts on inside takes over after Master_Down_Interval and advertises too,
/// so the split brain is visible (on the wire and in its own status); the master, which
/// still hears everything, stays master. On heal the lower-priority node yields: one
/// master within 3 adverts.
fn one_way(r: &mut Run<'_>) -> Result<(), ScenarioError> {
    let m = r.settled(SETTLE)?;
    let peer = r.peer_of(&m);
    r.report.master_before = Some(m.clone());
    r.traffic(true)?;
    // The peer stops hearing anything on inside (so no adverts), while everything it
    // sends still arrives: the classic one-way failure.
    let t = lock(r.lab).cut_one_way(&format!("{peer}:inside"), Dir::Tx)?;
    r.report.fault_at_ms = Some(t);
    let split = r.wait(
        "the deaf backup advertising too (split brain)",
        FAILOVER,
        |r| {
            let st = r.status();
            let inside = st.vips.iter().find(|v| v.segment == "inside")?;
            (st.split_brain
                && inside
                    .masters
                    .iter()
                    .any(|p| p.starts_with(&format!("{peer}:"))))
            .then(|| lock(r.lab).switch.now_ms().saturating_sub(t))
        },
    );
    r.check(
        "the backup that hears no adverts becomes master: split brain visible",
        split.is_ok(),
        format!("split brain on inside after {:?} ms", split.as_ref().ok()),
    );
    if r.reads_firewalls() {
        let own = r.wait_why("both nodes reporting master", FAILOVER, both_report_master);
        r.check(
            "the firewalls themselves report it (both master)",
            own.is_ok(),
            match own {
                Ok(s) => s,
                Err(e) => e.to_string(),
            },
        );
    }
    let st = r.status();
    r.check(
        "the master that still hears everything stays master",
        st.vips
            .iter()
            .all(|v| v.masters.iter().any(|p| p.starts_with(&format!("{m}:")))),
        format!(
            "advertising: {:?}",
            st.vips
                .iter()
                .map(|v| (v.vrid, v.masters.clone()))
                .collect::<Vec<_>>()
        ),
    );
    r.finish_traffic()?;
    r.observe_from(t);
    let back = heal_to_one_master(r, t, &m, &peer, "on heal one master within 3 adverts")?;
    r.report.master_after = Some(back);
    Ok(())
}

fn summary(r: &Report) -> String {
    let mut s = format!("{}: {}", r.name, if r.ok { "PASS" } else { "FAIL" });
    if let (Some(a), Some(b)) = (&r.master_before, &r.master_after) {
        s.push_str(&format!("; master {a} -> {b}"));
    }
    if let Some(v) = r.vip_answered_after_ms {
        s.push_str(&format!("; VIP answered on the new master after {v} ms"));
    }
    if let Some(v) = r.converged_after_heal_ms {
        s.push_str(&format!("; converged {v} ms after the heal"));
    }
    s.push_str(&format!(
        "; longest client gap {} ms; flows broken {}/{}",
        r.longest_gap_ms, r.flows_broken, r.flows_total
    ));
    for c in r.checks.iter().filter(|c| !c.ok) {
        let kind = if c.target { "target missed" } else { "FAILED" };
        s.push_str(&format!("; {kind}: {} ({})", c.what, c.detail));
    }
    for n in &r.notes {
        s.push_str(&format!("; note: {n}"));
    }
    s
}

/// Runs one scenario and writes `RUN_DIR/reports/NAME.json`.
pub fn run_by_name(lab: &Mutex<Lab>, name: &str) -> Result<Report, ScenarioError> {
    let f: fn(&mut Run<'_>) -> Result<(), ScenarioError> = match name {
        "boot" => boot,
        "cut-master-inside" => |r| cut_master(r, "inside"),
        "cut-master-outside" => |r| cut_master(r, "outside"),
        "cut-sync" => cut_sync,
        "partition" => partition,
        "flap" => flap,
        "one-way-advert-loss" => one_way,
        "kill-master" => kill_master,
        _ => return Err(ScenarioError::Unknown(name.to_string())),
    };
    let mut r = Run::new(lab, name);
    tracing::info!(scenario = name, "scenario start");
    f(&mut r)?;
    r.report.summary = summary(&r.report);
    let dir = lock(lab).run_dir.join("reports");
    let path = dir.join(format!("{name}.json"));
    let write = |source| ScenarioError::Write {
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(&dir).map_err(write)?;
    let json = serde_json::to_string_pretty(&r.report).unwrap_or_default();
    std::fs::write(&path, json).map_err(write)?;
    tracing::info!(scenario = name, summary = %r.report.summary, "scenario done");
    Ok(r.report)
}
