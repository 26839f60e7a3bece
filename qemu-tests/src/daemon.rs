//! The lab daemon behind `twinwall lab up`: owns the [`Lab`] and answers the other `lab`
//! commands on the control socket `RUN_DIR/lab.sock` (the services' JSON-lines protocol,
//! `twinwall_control`). `down` (or SIGTERM/SIGINT, handled by the caller) ends it; the
//! VMs and the switch are stopped when the lab is dropped.
//!
//! Requests (`cmd`, `args`): `status`, `cut {port, carrier}`, `cut-one-way {port, dir}`,
//! `impair {port, dir, loss_pct, delay_ms}`, `partition {a, b}`, `heal {port?}`,
//! `flap {port, times, down_ms, up_ms}`, `kill {vm}`, `traffic {reset}`,
//! `firewalls` (each firewall's own state through its management API), `scenario {name}`,
//! `down`.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use twinwall_control::{ControlError, Request, Response, Server};

use crate::lab::{Lab, LabError};
use crate::scenario;
use crate::switch::core::Dir;

/// Control socket name (`RUN_DIR/lab.sock`).
pub const SOCKET: &str = "lab";

fn s(args: &Value, key: &str) -> Result<String, String> {
    args.get(key)
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| format!("missing argument {key}"))
}

fn dir(args: &Value) -> Result<Dir, String> {
    match args.get("dir").and_then(Value::as_str) {
        Some("rx") => Ok(Dir::Rx),
        Some("tx") => Ok(Dir::Tx),
        other => Err(format!("dir must be rx or tx, not {other:?}")),
    }
}

fn lock(lab: &Mutex<Lab>) -> std::sync::MutexGuard<'_, Lab> {
    lab.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs one request against the lab. Long requests (flap, scenario) take the lock per
/// step, so `status` keeps answering meanwhile.
pub fn handle(lab: &Mutex<Lab>, req: &Request, stop: &AtomicBool) -> Result<Value, String> {
    let a = &req.args;
    let e = |e: LabError| e.to_string();
    match req.cmd.as_str() {
        "status" => serde_json::to_value(lock(lab).status()).map_err(|e| e.to_string()),
        "firewalls" => {
            // The requests go out without the lock: a slow guest must not stall the lab.
            let endpoints = lock(lab).mgmt_endpoints();
            let states: std::collections::BTreeMap<String, Value> =
                crate::lab::read_firewalls(&endpoints)
                    .into_iter()
                    .map(|(vm, r)| {
                        let v = match r {
                            Ok(s) => serde_json::to_value(s).unwrap_or(Value::Null),
                            Err(e) => json!({ "error": e }),
                        };
                        (vm, v)
                    })
                    .collect();
            serde_json::to_value(states).map_err(|e| e.to_string())
        }
        "cut" => {
            let carrier = a.get("carrier").and_then(Value::as_bool).unwrap_or(true);
            let t = lock(lab).cut(&s(a, "port")?, carrier).map_err(e)?;
            Ok(json!({ "at_ms": t }))
        }
        "cut-one-way" => {
            let t = lock(lab).cut_one_way(&s(a, "port")?, dir(a)?).map_err(e)?;
            Ok(json!({ "at_ms": t }))
        }
        "impair" => {
            let loss = a.get("loss_pct").and_then(Value::as_f64).unwrap_or(0.0);
            let delay = a.get("delay_ms").and_then(Value::as_u64).unwrap_or(0);
            lock(lab)
                .impair(&s(a, "port")?, dir(a)?, loss, delay as u32)
                .map_err(e)?;
            Ok(Value::Null)
        }
        "partition" => {
            let t = lock(lab).partition(&s(a, "a")?, &s(a, "b")?).map_err(e)?;
            Ok(json!({ "at_ms": t }))
        }
        "heal" => {
            let port = a.get("port").and_then(Value::as_str);
            let t = lock(lab).heal(port).map_err(e)?;
            Ok(json!({ "at_ms": t }))
        }
        "flap" => {
            let port = s(a, "port")?;
            let times = a.get("times").and_then(Value::as_u64).unwrap_or(1);
            let down =
                Duration::from_millis(a.get("down_ms").and_then(Value::as_u64).unwrap_or(500));
            let up = Duration::from_millis(a.get("up_ms").and_then(Value::as_u64).unwrap_or(500));
            for _ in 0..times {
                lock(lab).cut(&port, true).map_err(e)?;
                std::thread::sleep(down);
                lock(lab).heal(Some(&port)).map_err(e)?;
                std::thread::sleep(up);
            }
            Ok(json!({ "flaps": times }))
        }
        "kill" => {
            let t = lock(lab).kill(&s(a, "vm")?).map_err(e)?;
            Ok(json!({ "at_ms": t }))
        }
        "traffic" => {
            let reset = a.get("reset").and_then(Value::as_bool).unwrap_or(false);
            serde_json::to_value(lock(lab).traffic(reset).map_err(e)?).map_err(|e| e.to_string())
        }
        "scenario" => {
            let name = s(a, "name")?;
            let report = scenario::run_by_name(lab, &name).map_err(|e| e.to_string())?;
            serde_json::to_value(report).map_err(|e| e.to_string())
        }
        "down" => {
            stop.store(true, Ordering::Relaxed);
            Ok(Value::Null)
        }
        other => Err(format!("unknown lab command {other}")),
    }
}

/// Serves the lab on `RUN_DIR/lab.sock` until `down` or until `stop` is set (by a
/// signal handler of the caller). The lab is dropped (VMs killed) on return.
pub fn serve(lab: Lab, run_dir: &Path, stop: Arc<AtomicBool>) -> Result<(), ControlError> {
    let lab = Arc::new(Mutex::new(lab));
    let handler = {
        let (lab, stop) = (lab.clone(), stop.clone());
        Arc::new(move |req: &Request| match handle(&lab, req, &stop) {
            Ok(v) => Response::ok(v),
            Err(e) => Response::err(e),
        })
    };
    let server = Server::bind(run_dir, SOCKET, handler)?;
    tracing::info!(socket = %server.path().display(), "lab daemon ready");
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(server);
    tracing::info!("lab daemon stopping");
    Ok(())
}
