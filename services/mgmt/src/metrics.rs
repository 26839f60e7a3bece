//! `GET /metrics`: the Prometheus text exposition format (version 0.0.4) of the
//! management service's counters and of the node's state gathered from the control
//! sockets. Written by hand: it is a dozen lines of `name{labels} value`, and a metrics
//! registry crate would add a global registry and more dependencies than it saves.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::Value;

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

/// Renders the metrics; `status` is the gathered node status (`init`, `vrrp`, `sync`).
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
}
