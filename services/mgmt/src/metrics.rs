//! `GET /metrics`: the Prometheus text exposition format (version 0.0.4) of the
//! management service's counters and of the node's state gathered from the control
//! sockets. Written by hand: it is a dozen lines of `name{labels} value`, and a metrics
//! registry crate would add a global registry and more dependencies than it saves.
//! The firewall's rule counters by config rule name (`twinwall_rule_packets_total`,
//! `twinwall_rule_bytes_total`) come from one `nft -j list table` per scrape, kept for
//! a second ([`RuleCounterCache`]).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;
use twinwall_ruleset::{Nft, RuleCounter};

/// The service's own numbers.
#[derive(Debug, Clone, Default)]
pub struct Input {
    /// Requests by (endpoint, status).
    pub requests: BTreeMap<(String, u16), u64>,
    /// Rejected bundles by reason code.
    pub rejected: BTreeMap<String, u64>,
    /// Config version in force.
    pub version: Option<u64>,
    /// A confirmation window runs.
    pub confirm_pending: bool,
    /// Reverts so far.
    pub reverts: u64,
    /// Pushes applied so far.
    pub pushes: u64,
    /// Requests refused by the rate limit.
    pub rate_limited: u64,
    /// The peer answered its last poll.
    pub peer_reachable: bool,
    /// The peer's config version.
    pub peer_version: Option<u64>,
    /// The peer still has to get a pushed bundle.
    pub peer_pending: bool,
    /// Slot bytes written by the running or last update.
    pub update_written: u64,
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn head(o: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(o, "# HELP {name} {help}");
    let _ = writeln!(o, "# TYPE {name} {kind}");
}

/// What one read of the rule counters gave: the counters, or why nft could not list them.
pub type RuleCounters = Arc<Result<Vec<RuleCounter>, String>>;

/// How long one read of the rule counters serves scrapes.
pub const RULE_COUNTERS_TTL: Duration = Duration::from_secs(1);

/// The rule counters of the loaded ruleset, read with one `nft -j list table inet
/// twinwall` and kept for a while, so that many scrapes cost one nft call. Concurrent
/// scrapes wait for the one read in progress instead of starting their own.
#[derive(Debug)]
pub struct RuleCounterCache {
    nft: Nft,
    ttl: Duration,
    last: Mutex<Option<(Instant, RuleCounters)>>,
}

impl RuleCounterCache {
    /// A cache that reads with `nft` and keeps a read for `ttl`.
    pub fn new(nft: Nft, ttl: Duration) -> RuleCounterCache {
        RuleCounterCache {
            nft,
            ttl,
            last: Mutex::new(None),
        }
    }

    /// The counters, read now or at most `ttl` ago.
    pub fn get(&self) -> RuleCounters {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, c)) = last.as_ref()
            && at.elapsed() < self.ttl
        {
            return c.clone();
        }
        let read = twinwall_ruleset::counters::read(&self.nft).map_err(|e| {
            tracing::warn!(error = %e, "cannot read the rule counters");
            e.to_string()
        });
        let c = Arc::new(read);
        *last = Some((Instant::now(), c.clone()));
        c
    }
}

/// The process-wide cache `render` uses: `nft` of this network namespace, one read a
/// second at most.
fn rule_counters() -> RuleCounters {
    static CACHE: OnceLock<RuleCounterCache> = OnceLock::new();
    CACHE
        .get_or_init(|| RuleCounterCache::new(Nft::default(), RULE_COUNTERS_TTL))
        .get()
}

/// Appends the rule counter families: `twinwall_rule_packets_total{rule="NAME"}`,
/// `twinwall_rule_bytes_total{rule="NAME"}` (one sample per config rule, including each
/// rule merged into a set; generated rules by their comment, e.g. `cluster:sync`), and
/// `twinwall_rule_counters_up` (0 when nft could not list the table: no samples then).
pub fn render_rule_counters(o: &mut String, counters: &Result<Vec<RuleCounter>, String>) {
    let rules = counters.as_ref().map(Vec::as_slice).unwrap_or_default();
    type Value = fn(&RuleCounter) -> u64;
    let families: [(&str, &str, Value); 2] = [
        (
            "twinwall_rule_packets_total",
            "Packets matched by each firewall rule (by config rule name).",
            |c| c.packets,
        ),
        (
            "twinwall_rule_bytes_total",
            "Bytes matched by each firewall rule (by config rule name).",
            |c| c.bytes,
        ),
    ];
    for (name, help, value) in families {
        head(o, name, "counter", help);
        for c in rules {
            let _ = writeln!(o, "{name}{{rule=\"{}\"}} {}", escape(&c.rule), value(c));
        }
    }
    head(
        o,
        "twinwall_rule_counters_up",
        "gauge",
        "1 when the rule counters could be read from the kernel.",
    );
    let _ = writeln!(o, "twinwall_rule_counters_up {}", counters.is_ok() as u8);
}

/// Renders the metrics; `status` is the gathered node status (`init`, `vrrp`, `sync`).
/// The rule counters are read from the kernel (see [`RuleCounterCache`]).
pub fn render(m: &Input, status: &Value) -> String {
    let mut o = String::new();
    head(
        &mut o,
        "twinwall_mgmt_requests_total",
        "counter",
        "Management API requests by endpoint and status.",
    );
    for ((ep, code), n) in &m.requests {
        let _ = writeln!(
            o,
            "twinwall_mgmt_requests_total{{endpoint=\"{}\",code=\"{code}\"}} {n}",
            escape(ep)
        );
    }
    head(
        &mut o,
        "twinwall_mgmt_bundles_rejected_total",
        "counter",
        "Bundles rejected, by reason.",
    );
    for (reason, n) in &m.rejected {
        let _ = writeln!(
            o,
            "twinwall_mgmt_bundles_rejected_total{{reason=\"{}\"}} {n}",
            escape(reason)
        );
    }
    let gauges: [(&str, &str, &str, u64); 8] = [
        (
            "twinwall_config_version",
            "gauge",
            "Config version in force (0: none).",
            m.version.unwrap_or(0),
        ),
        (
            "twinwall_config_confirm_pending",
            "gauge",
            "1 while a pushed config waits for confirmation.",
            m.confirm_pending as u64,
        ),
        (
            "twinwall_config_reverts_total",
            "counter",
            "Configs reverted (window expired or rollback).",
            m.reverts,
        ),
        (
            "twinwall_config_pushes_total",
            "counter",
            "Configs applied by push.",
            m.pushes,
        ),
        (
            "twinwall_mgmt_rate_limited_total",
            "counter",
            "Requests refused by the rate limit.",
            m.rate_limited,
        ),
        (
            "twinwall_peer_reachable",
            "gauge",
            "1 when the peer's management API answered its last poll.",
            m.peer_reachable as u64,
        ),
        (
            "twinwall_peer_config_version",
            "gauge",
            "The peer's config version (0: unknown).",
            m.peer_version.unwrap_or(0),
        ),
        (
            "twinwall_update_written_bytes",
            "gauge",
            "Slot bytes written by the running or last OS update.",
            m.update_written,
        ),
    ];
    for (name, kind, help, v) in gauges {
        head(&mut o, name, kind, help);
        let _ = writeln!(o, "{name} {v}");
    }
    head(
        &mut o,
        "twinwall_peer_pending",
        "gauge",
        "1 while the peer still has to get a pushed bundle.",
    );
    let _ = writeln!(o, "twinwall_peer_pending {}", m.peer_pending as u64);
    head(
        &mut o,
        "twinwall_vrrp_group_master",
        "gauge",
        "1 when this node is master of the VRRP group.",
    );
    for g in status["vrrp"]["groups"].as_array().into_iter().flatten() {
        let name = g["name"].as_str().unwrap_or_default();
        let master = (g["state"] == "master") as u8;
        let _ = writeln!(
            o,
            "twinwall_vrrp_group_master{{group=\"{}\"}} {master}",
            escape(name)
        );
    }
    head(
        &mut o,
        "twinwall_sync_connected",
        "gauge",
        "1 when conntrack sync is connected to the peer.",
    );
    let connected = (status["sync"]["connected"] == Value::Bool(true)) as u8;
    let _ = writeln!(o, "twinwall_sync_connected {connected}");
    head(
        &mut o,
        "twinwall_service_restarts_total",
        "counter",
        "Restarts of each supervised service.",
    );
    for s in status["init"]["services"].as_array().into_iter().flatten() {
        let name = s["spec"]["name"].as_str().unwrap_or_default();
        let n = s["restarts"].as_u64().unwrap_or(0);
        let _ = writeln!(
            o,
            "twinwall_service_restarts_total{{service=\"{}\"}} {n}",
            escape(name)
        );
    }
    render_rule_counters(&mut o, &rule_counters());
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_sample_line_is_name_labels_value() {
        let mut m = Input {
            version: Some(3),
            ..Input::default()
        };
        m.requests.insert(("/config".into(), 200), 2);
        m.rejected.insert("hash_mismatch".into(), 1);
        let status = json!({"vrrp": {"groups": [{"name": "edge", "state": "master"}]},
            "sync": {"connected": true},
            "init": {"services": [{"spec": {"name": "vrrp"}, "restarts": 4}]}});
        let text = render(&m, &status);
        assert!(text.contains("twinwall_mgmt_requests_total{endpoint=\"/config\",code=\"200\"} 2"));
        assert!(text.contains("twinwall_mgmt_bundles_rejected_total{reason=\"hash_mismatch\"} 1"));
        assert!(text.contains("twinwall_config_version 3\n"));
        assert!(text.contains("twinwall_vrrp_group_master{group=\"edge\"} 1"));
        assert!(text.contains("twinwall_sync_connected 1"));
        assert!(text.contains("twinwall_service_restarts_total{service=\"vrrp\"} 4"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (name, value) = line.rsplit_once(' ').unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
            assert!(name.starts_with("twinwall_"), "{line}");
        }
    }

    #[test]
    fn rule_counters_are_one_sample_per_rule_name() {
        let rules = vec![
            RuleCounter {
                rule: "web-in".into(),
                chain: "forward".into(),
                packets: 7,
                bytes: 420,
                merged: false,
            },
            RuleCounter {
                rule: "say \"hi\"".into(),
                chain: "forward".into(),
                packets: 1,
                bytes: 60,
                merged: true,
            },
        ];
        let mut o = String::new();
        render_rule_counters(&mut o, &Ok(rules));
        assert!(
            o.contains("twinwall_rule_packets_total{rule=\"web-in\"} 7\n"),
            "{o}"
        );
        assert!(
            o.contains("twinwall_rule_bytes_total{rule=\"web-in\"} 420\n"),
            "{o}"
        );
        assert!(
            o.contains("twinwall_rule_packets_total{rule=\"say \\\"hi\\\"\"} 1\n"),
            "{o}"
        );
        assert!(
            o.contains("# TYPE twinwall_rule_packets_total counter"),
            "{o}"
        );
        assert!(o.contains("twinwall_rule_counters_up 1\n"), "{o}");
        let mut o = String::new();
        render_rule_counters(&mut o, &Err("no table".into()));
        assert!(o.contains("twinwall_rule_counters_up 0\n"), "{o}");
        assert!(!o.contains("twinwall_rule_packets_total{"), "{o}");
    }
}
