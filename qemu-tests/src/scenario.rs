//! The failover scenarios of the lab, each a script of faults against a booted pair that
//! ends in a [`Report`]: fault time, time until the VIP answered (ARP) on the new master,
//! the client's longest gap, flows broken / total, the checks and a one-line summary.
//! Observations come from the switch (VRRP adverts and ARP claims it forwarded) and from
//! the client agent; nothing is read from inside the firewalls, so a scenario judges the
//! pair the way its neighbours see it.
//!
//! Scenarios expect the state the previous one left (a settled pair) and leave the pair
//! settled again, except `kill-master`, which leaves one node and so runs last.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::agent::ClientStats;
use crate::lab::{Lab, LabError, LabStatus};
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
    #[error("scenario {scenario}: {what} not reached within {secs} s")]
    Timeout {
        /// Scenario.
        scenario: String,
        /// The state waited for.
        what: String,
        /// The limit.
        secs: u64,
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
}

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

    fn check(&mut self, what: &str, ok: bool, detail: String) {
        tracing::info!(scenario = %self.name, check = what, ok, detail = %detail, "check");
        self.report.ok &= ok;
        self.report.checks.push(Check {
            what: what.to_string(),
            ok,
            detail,
        });
    }

    fn wait<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut f: impl FnMut(&Self) -> Option<T>,
    ) -> Result<T, ScenarioError> {
        let start = Instant::now();
        loop {
            if let Some(v) = f(self) {
                return Ok(v);
            }
            if start.elapsed() >= timeout {
                return Err(ScenarioError::Timeout {
                    scenario: self.name.clone(),
                    what: what.to_string(),
                    secs: timeout.as_secs(),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A settled pair: one master holding every VIP and every client flow echoing.
    fn settled(&self, timeout: Duration) -> Result<String, ScenarioError> {
        self.wait(
            "one master with all VIPs and all flows echoing",
            timeout,
            |r| {
                let m = sole_master(&r.status())?;
                r.traffic(false).ok().filter(|t| t.all_flowing(1000))?;
                Some(m)
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
    let _ = r.wait("flows echoing again", FAILOVER, |r| {
        r.traffic(false).ok().filter(|t| t.all_flowing(500))
    });
    r.check_no_flow_broken("no established flow was reset")?;
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
    r.traffic(true)?;
    std::thread::sleep(Duration::from_secs(3));
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
    // Master_Down_Interval = 3 adverts + skew; the margin covers TCG scheduling.
    let advert = u64::from(lock(r.lab).advert_ms);
    r.check(
        "the peer took over",
        answered.is_some(),
        format!(
            "VIPs on {peer} after {answered:?} ms (Master_Down_Interval ~{} ms)",
            3 * advert + advert / 2
        ),
    );
    let _ = r.wait("flows echoing again", FAILOVER, |r| {
        r.traffic(false).ok().filter(|t| t.all_flowing(500))
    });
    r.check_no_flow_broken("no established flow was reset")?;
    r.observe_from(t);
    r.report.master_after = sole_master(&r.status());
    Ok(())
}

fn cut_sync(r: &mut Run<'_>) -> Result<(), ScenarioError> {
    let m = r.settled(SETTLE)?;
    r.report.master_before = Some(m.clone());
    r.traffic(true)?;
    let t = lock(r.lab).cut(&format!("{m}:sync"), true)?;
    r.report.fault_at_ms = Some(t);
    // Watch for ten advert intervals' worth of seconds: the VIPs must stay put.
    let advert = u64::from(lock(r.lab).advert_ms);
    let until = Instant::now() + Duration::from_millis((advert * 30).max(3000));
    let mut moved = None;
    while Instant::now() < until {
        let st = r.status();
        if sole_master(&st).as_deref() != Some(m.as_str()) {
            moved = Some(format!(
                "holders {:?}, split brain {}",
                st.vip_holders, st.split_brain
            ));
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    r.check(
        "no failover when only the sync link is cut",
        moved.is_none(),
        moved.unwrap_or_else(|| format!("{m} kept every VIP")),
    );
    r.check_no_flow_broken("no flow was reset")?;
    r.observe_from(t);
    r.heal_and_settle()?;
    Ok(())
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
    let h = lock(r.lab).heal(None)?;
    let advert = u64::from(lock(r.lab).advert_ms);
    let one = r.wait("one master after the heal", FAILOVER, |r| {
        let winner = sole_master(&r.status())?;
        let loser = if winner == m { &peer } else { &m };
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
    });
    r.report.converged_after_heal_ms = one.as_ref().ok().copied();
    r.check(
        "one master within 3 adverts of the heal",
        one.as_ref().is_ok_and(|ms| *ms <= 3 * advert),
        format!("{:?} ms (3 adverts = {} ms)", one.ok(), 3 * advert),
    );
    let back = r.settled(SETTLE)?;
    r.finish_traffic()?;
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

fn one_way(r: &mut Run<'_>) -> Result<(), ScenarioError> {
    let m = r.settled(SETTLE)?;
    let peer = r.peer_of(&m);
    r.report.master_before = Some(m.clone());
    r.traffic(true)?;
    // The peer stops hearing anything on inside (so no adverts), while everything it
    // sends still arrives: the classic one-way failure.
    let t = lock(r.lab).cut_one_way(&format!("{peer}:inside"), Dir::Tx)?;
    r.report.fault_at_ms = Some(t);
    std::thread::sleep(Duration::from_secs(5));
    let st = r.status();
    r.check(
        "the lab reports the state (one master or a visible split brain)",
        sole_master(&st).is_some() || st.split_brain,
        format!(
            "holders {:?}, split brain {}",
            st.vip_holders, st.split_brain
        ),
    );
    r.finish_traffic()?;
    r.observe_from(t);
    r.heal_and_settle()?;
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
        s.push_str(&format!("; FAILED: {} ({})", c.what, c.detail));
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
