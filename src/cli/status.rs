//! `twinwall status`: the local node's status from the control sockets in the run dir
//! (init, ruleset, vrrp, sync), as text or JSON, optionally with the captured service logs;
//! with `--to HOST` the same from a node's management API.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use serde_json::{Map, Value, json};
use twinwall_control::{Request, socket_path};

use crate::cli::Reported;

/// `twinwall status [--run-dir DIR] [--json] [--logs]`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Run directory holding the services' control sockets.
    #[arg(long, default_value = twinwall_control::DEFAULT_RUN_DIR)]
    run_dir: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    /// Include each service's captured output (from init's ring buffers).
    #[arg(long)]
    logs: bool,
    /// Ask a node's management API (`HOST[:PORT]`) instead of the local sockets.
    #[arg(long)]
    to: Option<String>,
}

const SERVICES: [&str; 5] = ["init", "ruleset", "vrrp", "sync", "mgmt"];

fn ask(args: &StatusArgs, service: &str, cmd: &str) -> Result<Value, String> {
    twinwall_control::request(
        &socket_path(&args.run_dir, service),
        &Request::new(cmd),
        Duration::from_secs(2),
    )
    .map_err(|e| e.to_string())
}

/// Runs `twinwall status`.
pub fn run(args: StatusArgs) -> anyhow::Result<()> {
    if let Some(to) = &args.to {
        return remote(&args, to);
    }
    let mut all = Map::new();
    let mut errors = Map::new();
    for s in SERVICES {
        match ask(&args, s, "status") {
            Ok(v) => {
                all.insert(s.to_string(), v);
            }
            Err(e) => {
                errors.insert(s.to_string(), Value::String(e));
            }
        }
    }
    if all.is_empty() {
        let msg = format!(
            "nothing answers in {} (is twinwall init running?)",
            args.run_dir.display()
        );
        eprintln!("twinwall: error: {msg}");
        for (name, e) in &errors {
            eprintln!("  {name}: {}", str_of(e));
        }
        return Err(Reported(msg).into());
    }
    // A one-shot (the ruleset apply) has no socket; only daemons init runs, or every
    // service when init itself is unreachable, count as unreachable.
    if let Some(init) = all.get("init") {
        let daemons: Vec<&str> = init["services"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|s| s["spec"]["kind"] == "daemon")
            .filter_map(|s| s["spec"]["name"].as_str())
            .collect();
        errors.retain(|name, _| daemons.contains(&name.as_str()));
    }
    if args.logs {
        match ask(&args, "init", "logs") {
            Ok(v) => {
                all.insert("logs".into(), v);
            }
            Err(e) => {
                errors.insert("logs".into(), Value::String(e));
            }
        }
    }
    if args.json {
        let mut out = Value::Object(all);
        out["unreachable"] = Value::Object(errors);
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    print!("{}", render(&all, &errors));
    Ok(())
}

/// `twinwall status --to HOST`: the same record from the node's `GET /status`, plus the
/// management service's own part (config version, confirmation window, peer and skew).
fn remote(args: &StatusArgs, to: &str) -> anyhow::Result<()> {
    let v = super::push::runtime()?.block_on(async {
        let addr = twinwall_mgmt::client::resolve(to, twinwall_mgmt::DEFAULT_PORT).await?;
        let a = twinwall_mgmt::client::request(
            addr,
            "GET",
            "/status",
            twinwall_mgmt::client::empty_body(),
            Duration::from_secs(10),
        )
        .await?;
        if !a.ok() {
            return Err(super::push::fail(&format!("{to}: status"), &a));
        }
        anyhow::Ok(a.json())
    })?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let mut all = v.as_object().cloned().unwrap_or_default();
    let errors = match all.remove("unreachable") {
        Some(Value::Object(m)) => m,
        _ => Map::new(),
    };
    print!("{}", render(&all, &errors));
    Ok(())
}

/// The management service's part: config version, pending confirmation, peer, slots.
fn render_mgmt(o: &mut String, m: &Value) {
    let c = &m["config"];
    let pending = match c["confirm_pending"].as_object() {
        Some(p) => format!(
            "  unconfirmed: version {} reverts in {} ms",
            str_of(&p["version"]),
            str_of(&p["remaining_ms"])
        ),
        None => String::new(),
    };
    let _ = writeln!(
        o,
        "mgmt      {}  config version {}  reverts {}{pending}",
        str_of(&m["node"]),
        str_of(&c["version"]),
        str_of(&c["reverts"])
    );
    let p = &m["peer"];
    if !p["address"].is_null() {
        let skew = if p["skew"] == Value::Bool(true) {
            "  VERSION SKEW"
        } else {
            ""
        };
        let _ = writeln!(
            o,
            "  peer    {} reachable {} version {}{skew}{}",
            str_of(&p["address"]),
            str_of(&p["reachable"]),
            str_of(&p["version"]),
            if p["pending"] == Value::Bool(true) {
                "  (a push is pending for it)"
            } else {
                ""
            }
        );
    }
    if let Some(s) = m["slots"].as_object() {
        let _ = writeln!(
            o,
            "  slots   running {} next boot {} os versions {}",
            str_of(&s["running"]),
            str_of(&s["next_boot"]),
            s.get("os_versions")
                .map(|v| v.to_string())
                .unwrap_or_default()
        );
    }
    if m["os"]["version"].is_string() {
        let _ = writeln!(
            o,
            "  os      twinwall {} kernel {}",
            str_of(&m["os"]["version"]),
            str_of(&m["os"]["kernel"])
        );
    }
}

fn str_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// Text form of the collected status. Pure (used by tests through the binary).
fn render(all: &Map<String, Value>, errors: &Map<String, Value>) -> String {
    let mut o = String::new();
    if let Some(init) = all.get("init") {
        let node = str_of(&init["node"]);
        let _ = writeln!(o, "node      {node} ({})", str_of(&init["mode"]));
        if let Some(reason) = init["fail_closed"].as_str() {
            let _ = writeln!(o, "config    FAIL-CLOSED: {reason}");
        } else if let Some(t) = init.get("trust").filter(|t| !t.is_null()) {
            let _ = writeln!(
                o,
                "config    version {} ({} bundle)",
                str_of(&t["version"]),
                str_of(&t["running"])
            );
            for r in t["rejected"].as_array().into_iter().flatten() {
                let _ = writeln!(o, "          rejected: {}", str_of(r));
            }
        }
        if !init["slot"].is_null() {
            let good = if init["slot_marked_good"].as_bool() == Some(true) {
                "marked good"
            } else {
                "not marked good yet"
            };
            let _ = writeln!(o, "slot      {} ({good})", str_of(&init["slot"]));
        }
        for p in init["phases"].as_array().into_iter().flatten() {
            let us = p["duration_us"].as_u64().unwrap_or(0);
            let _ = writeln!(
                o,
                "phase     {:<9} {:>9.1} ms  {:<8} {}",
                str_of(&p["name"]),
                us as f64 / 1000.0,
                str_of(&p["result"]),
                str_of(&p["detail"])
            );
        }
        let up = if init["services_up"].as_bool() == Some(true) {
            "up"
        } else {
            "starting"
        };
        let _ = writeln!(o, "services  {up}");
        for s in init["services"].as_array().into_iter().flatten() {
            let last = s["events"]
                .as_array()
                .and_then(|e| e.last())
                .map(|e| str_of(&e["message"]))
                .unwrap_or_default();
            let _ = writeln!(
                o,
                "  {:<8} {:<10} pid {:<7} restarts {:<3} {last}",
                str_of(&s["spec"]["name"]),
                str_of(&s["state"]),
                str_of(&s["pid"]),
                str_of(&s["restarts"]),
            );
        }
    }
    if let Some(v) = all.get("ruleset") {
        let _ = writeln!(o, "ruleset   {}", compact(v));
    }
    if let Some(v) = all.get("vrrp") {
        render_vrrp(&mut o, v);
    }
    if let Some(v) = all.get("sync") {
        let _ = writeln!(o, "sync      {}", compact(v));
    }
    if let Some(m) = all.get("mgmt") {
        render_mgmt(&mut o, m);
    }
    for (name, e) in errors {
        let _ = writeln!(o, "{name:<9} unreachable: {}", str_of(e));
    }
    if let Some(Value::Object(logs)) = all.get("logs") {
        for (name, text) in logs {
            let _ = writeln!(o, "--- {name} output ---");
            o.push_str(text.as_str().unwrap_or_default());
            if !o.ends_with('\n') {
                o.push('\n');
            }
        }
    }
    o
}

/// Each VRRP group and virtual router: state, master, adverts, the last transition, and
/// dropped packets by reason.
fn render_vrrp(o: &mut String, v: &Value) {
    let _ = writeln!(
        o,
        "vrrp      priority {}  commit participants {}",
        str_of(&v["priority"]),
        str_of(&v["commit_participants"])
    );
    for g in v["groups"].as_array().into_iter().flatten() {
        let down: Vec<String> = g["links_down"]
            .as_array()
            .into_iter()
            .flatten()
            .map(str_of)
            .collect();
        let down = if down.is_empty() {
            String::new()
        } else {
            format!("  links down: {}", down.join(", "))
        };
        let _ = writeln!(
            o,
            "  group {} {}{down}",
            str_of(&g["name"]),
            str_of(&g["state"])
        );
        for r in g["routers"].as_array().into_iter().flatten() {
            let vips: Vec<String> = r["vips"]
                .as_array()
                .into_iter()
                .flatten()
                .map(str_of)
                .collect();
            let last = r["transitions"]
                .as_array()
                .and_then(|t| t.last())
                .map(|t| {
                    format!(
                        "  last {}->{} at {} ms",
                        str_of(&t["from"]),
                        str_of(&t["to"]),
                        str_of(&t["at_unix_ms"])
                    )
                })
                .unwrap_or_default();
            let _ = writeln!(
                o,
                "    vrid {:<3} {:<4} {:<8} {:<7} master {}  adverts in {} out {}  interval mismatch {}  vips {}{last}",
                str_of(&r["vrid"]),
                str_of(&r["family"]),
                str_of(&r["device"]),
                str_of(&r["state"]),
                str_of(&r["master"]),
                str_of(&r["adverts_in"]),
                str_of(&r["adverts_out"]),
                str_of(&r["interval_mismatch"]),
                vips.join(" ")
            );
        }
    }
    for sock in v["sockets"].as_array().into_iter().flatten() {
        if let Some(Value::Object(bad)) = sock.get("bad_packets")
            && !bad.is_empty()
        {
            let reasons: Vec<String> = bad
                .iter()
                .map(|(k, n)| format!("{k}={}", str_of(n)))
                .collect();
            let _ = writeln!(
                o,
                "  dropped on {} {}: {}",
                str_of(&sock["device"]),
                str_of(&sock["family"]),
                reasons.join(" ")
            );
        }
    }
}

fn compact(v: &Value) -> String {
    match v {
        Value::Object(m) => m
            .iter()
            .filter(|(_, v)| !v.is_object() && !v.is_array())
            .map(|(k, v)| format!("{k}={}", str_of(v)))
            .collect::<Vec<_>>()
            .join(" "),
        other => json!(other).to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vrrp_groups_routers_and_drops_are_rendered() {
        let vrrp = json!({
            "node": "lj-fw-1", "priority": 200, "commit_participants": 1,
            "groups": [{"name": "edge", "state": "master", "links_down": [],
                "routers": [{"vrid": 51, "family": "ipv4", "device": "eth0", "state": "master",
                    "master": "203.0.113.2", "master_adver_interval_ms": 100,
                    "adverts_in": 3, "adverts_out": 120, "interval_mismatch": 0,
                    "vips": ["203.0.113.1/24"],
                    "transitions": [{"at_unix_ms": 1000, "from": "backup", "to": "master"}]}]}],
            "sockets": [{"device": "eth0", "family": "ipv4", "bad_packets": {"ttl": 2}}]
        });
        let mut all = Map::new();
        all.insert("vrrp".into(), vrrp);
        let text = render(&all, &Map::new());
        assert!(text.contains("group edge master"), "{text}");
        assert!(text.contains("vrid 51"), "{text}");
        assert!(text.contains("master 203.0.113.2"), "{text}");
        assert!(text.contains("adverts in 3 out 120"), "{text}");
        assert!(text.contains("last backup->master at 1000 ms"), "{text}");
        assert!(text.contains("dropped on eth0 ipv4: ttl=2"), "{text}");
    }
}
