//! `twinwall status`: the local node's status from the control sockets in the run dir
//! (init, ruleset, vrrp, sync), as text or JSON, optionally with the captured service logs.

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
}

const SERVICES: [&str; 4] = ["init", "ruleset", "vrrp", "sync"];

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
    for name in ["ruleset", "vrrp", "sync"] {
        if let Some(v) = all.get(name) {
            let _ = writeln!(o, "{name:<9} {}", compact(v));
        }
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
