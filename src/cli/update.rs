//! `twinwall update BUNDLE --to HOST[:PORT] [--reboot] [--cluster]`: streams a signed
//! OS-update bundle into a node's inactive slot (the node verifies as it writes, reads
//! the slot back and sets it to be tried once). `--cluster` rolls the pair: the backup
//! first, then the master, driven by `twinwall_mgmt::rolling`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use serde_json::Value;
use twinwall_mgmt::client::{self, bytes_body};
use twinwall_mgmt::rolling::{Action, Event, NodeInfo, Rolling};

use super::push::{fail, runtime};

/// Arguments of `twinwall update`.
#[derive(Debug, Args)]
pub struct UpdateArgs {
    /// The signed os-update bundle.
    bundle: PathBuf,
    /// The node's management address, `HOST[:PORT]`.
    #[arg(long)]
    to: String,
    /// Reboot into the new slot once it is written.
    #[arg(long)]
    reboot: bool,
    /// Roll the pair: backup first, wait healthy and synced, then the master; on a
    /// failure stop, and roll the updated node back when its peer still serves.
    #[arg(long, requires = "config_bundle")]
    cluster: bool,
    /// With --cluster: the config bundle in force (the signed proof a rollback needs).
    #[arg(long)]
    config_bundle: Option<PathBuf>,
    /// With --cluster: how long to wait for each node to come back, in seconds.
    #[arg(long, default_value_t = 600)]
    wait: u64,
    /// With --cluster: the peer's management address as this host reaches it, when it
    /// is not the sync-link address the node reports (a NAT, a forwarded port, the lab).
    #[arg(long, requires = "cluster")]
    peer: Option<String>,
    /// Print the answer as JSON.
    #[arg(long)]
    json: bool,
}

async fn upload(
    addr: SocketAddr,
    bundle: &std::path::Path,
    reboot: bool,
    show: bool,
) -> anyhow::Result<Value> {
    let sent = Arc::new(AtomicU64::new(0));
    let (body, len) = client::file_body(bundle, sent.clone())
        .await
        .with_context(|| format!("cannot read bundle {}", bundle.display()))?;
    let progress = show.then(|| {
        let sent = sent.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let s = sent.load(Ordering::Relaxed);
                eprint!("\rtwinwall: sent {} of {} MiB", s >> 20, len >> 20);
            }
        })
    });
    let path = if reboot {
        "/update?reboot=1"
    } else {
        "/update"
    };
    let r = client::request(addr, "POST", path, body, Duration::from_secs(3600)).await;
    if let Some(p) = progress {
        p.abort();
        eprintln!();
    }
    let ans = r?;
    if !ans.ok() {
        return Err(fail(&format!("{addr} refused the update"), &ans));
    }
    Ok(ans.json())
}

/// Runs `twinwall update`.
pub fn run(a: UpdateArgs) -> anyhow::Result<()> {
    runtime()?.block_on(async move {
        let addr = client::resolve(&a.to, twinwall_mgmt::DEFAULT_PORT).await?;
        if a.cluster {
            return cluster(&a, addr).await;
        }
        let show = std::io::IsTerminal::is_terminal(&std::io::stderr());
        let v = upload(addr, &a.bundle, a.reboot, show).await?;
        if a.json {
            println!("{}", serde_json::to_string_pretty(&v)?);
        } else {
            let u = &v["update"];
            println!(
                "{}: slot {} holds OS version {} ({} bytes, sha256 {} read back); next boot: slot {}{}",
                v["node"].as_str().unwrap_or("?"),
                u["slot"].as_str().unwrap_or("?"),
                u["version"],
                u["bytes"],
                u["sha256"].as_str().unwrap_or("?"),
                u["next_boot"].as_str().unwrap_or("?"),
                v["reboot"].as_str().map(|r| format!("; {r}")).unwrap_or_default()
            );
        }
        Ok(())
    })
}

/// What the rolling driver reads from `GET /status`. "Synced" is the sync service's own
/// view: the peer is up, no divergence alarm, and on a backup the copy of the master's
/// table matches the master's last digest (what a handover needs: the backup commits
/// that copy when it becomes master).
pub fn node_info(v: &Value) -> Option<NodeInfo> {
    let m = &v["mgmt"];
    let name = m["node"].as_str()?.to_string();
    let running = m["slots"]["running"].as_str().map(str::to_lowercase);
    let os_version = running.and_then(|r| m["slots"]["os_versions"][r.as_str()].as_u64());
    let role = v["vrrp"]["groups"][0]["state"]
        .as_str()
        .unwrap_or("unknown")
        .to_string();
    Some(NodeInfo {
        name,
        role,
        os_version,
        healthy: v["init"]["slot_marked_good"] == Value::Bool(true),
        synced: synced(&v["sync"]),
    })
}

fn synced(sync: &Value) -> bool {
    let peer_up = sync["peer_up"] == Value::Bool(true);
    let alarm = sync["consistency"]["alarm"] == Value::Bool(true);
    let consistent = sync["consistency"]["consistent"] == Value::Bool(true);
    let backup = sync["role"].as_str() == Some("backup");
    peer_up && !alarm && (consistent || !backup)
}

async fn status(addr: SocketAddr) -> Option<Value> {
    let a = client::request(
        addr,
        "GET",
        "/status",
        client::empty_body(),
        Duration::from_secs(5),
    )
    .await
    .ok()?;
    a.ok().then(|| a.json())
}

/// The first look at a node before a roll: three tries 2 s apart, so a node that is
/// slow for a moment (a busy management network, a TCG-starved lab guest) does not stop
/// a roll that has not changed anything yet.
async fn status_retried(addr: SocketAddr) -> Option<Value> {
    for _ in 0..2 {
        if let Some(v) = status(addr).await {
            return Some(v);
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    status(addr).await
}

async fn cluster(a: &UpdateArgs, first: SocketAddr) -> anyhow::Result<()> {
    let proof = std::fs::read(
        a.config_bundle
            .as_ref()
            .context("--config-bundle is required")?,
    )
    .context("cannot read --config-bundle")?;
    let s1 = status_retried(first)
        .await
        .context("the node does not answer GET /status")?;
    let peer: SocketAddr = match &a.peer {
        Some(p) => client::resolve(p, twinwall_mgmt::DEFAULT_PORT).await?,
        None => s1["mgmt"]["peer"]["address"]
            .as_str()
            .and_then(|p| p.parse().ok())
            .context("the node reports no peer address (give one with --peer)")?,
    };
    let s2 = status_retried(peer)
        .await
        .with_context(|| format!("the peer {peer} does not answer"))?;
    let mut addrs = std::collections::BTreeMap::new();
    let mut nodes = Vec::new();
    for (addr, s) in [(first, &s1), (peer, &s2)] {
        let info = node_info(s).context("a node's status lacks its name")?;
        addrs.insert(info.name.clone(), addr);
        nodes.push(info);
    }
    let target = {
        let raw = std::fs::read(&a.bundle).context("cannot read the bundle")?;
        // The manifest is JSON right after the 16-byte header; its version is the target.
        let len = raw
            .get(12..16)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
            .unwrap_or(0);
        let m: Value = raw
            .get(16..16 + len)
            .and_then(|m| serde_json::from_slice(m).ok())
            .context("not a bundle")?;
        m["version"]
            .as_u64()
            .context("the manifest has no version")?
    };
    let polls = (a.wait / 2).max(1) as u32;
    let mut roll = Rolling::new(target, polls);
    let mut queue: std::collections::VecDeque<Action> = roll.step(Event::Start { nodes }).into();
    let t0 = std::time::Instant::now();
    let mut seen: std::collections::BTreeMap<String, Option<NodeInfo>> = Default::default();
    while let Some(action) = queue.pop_front() {
        if !matches!(action, Action::Poll { .. }) {
            eprintln!(
                "twinwall: +{:.1} s {}",
                t0.elapsed().as_secs_f64(),
                serde_json::to_string(&action)?
            );
        }
        let event = match &action {
            Action::Upload { node } => match upload(addrs[node], &a.bundle, true, false).await {
                Ok(v) if v["reboot"] == "rebooting" => Some(Event::Uploaded),
                // Written, but it will not reboot (not PID 1, init unreachable): it
                // still runs its old slot.
                Ok(v) => Some(Event::Failed {
                    reason: format!("slot written, but {}", v["reboot"]),
                    answers: true,
                }),
                Err(e) => {
                    let answers = status(addrs[node]).await.is_some();
                    eprintln!(
                        "twinwall: +{:.1} s {node}: upload failed ({}): {e:#}",
                        t0.elapsed().as_secs_f64(),
                        if answers {
                            "it still answers: it runs its old slot"
                        } else {
                            "it does not answer"
                        }
                    );
                    Some(Event::Failed {
                        reason: format!("{e:#}"),
                        answers,
                    })
                }
            },
            Action::Reboot { .. } => None, // requested with the upload
            Action::Poll { node } => {
                tokio::time::sleep(Duration::from_secs(2)).await;
                let info = status(addrs[node]).await.as_ref().and_then(node_info);
                if seen.get(node) != Some(&info) {
                    eprintln!(
                        "twinwall: +{:.1} s {node}: {}",
                        t0.elapsed().as_secs_f64(),
                        match &info {
                            None => "no answer".to_string(),
                            Some(i) => format!(
                                "{}, OS version {}, {}, {}",
                                i.role,
                                i.os_version.map_or("?".into(), |v| v.to_string()),
                                if i.healthy {
                                    "healthy"
                                } else {
                                    "not healthy yet"
                                },
                                if i.synced { "synced" } else { "not synced" }
                            ),
                        }
                    );
                    seen.insert(node.clone(), info.clone());
                }
                Some(Event::Polled { info })
            }
            Action::Rollback { node } => {
                let r = client::request(
                    addrs[node],
                    "POST",
                    "/rollback?what=os&reboot=1",
                    bytes_body(proof.clone()),
                    Duration::from_secs(30),
                )
                .await;
                let failed = |reason: String| Event::Failed {
                    reason,
                    answers: false,
                };
                let ev = match r {
                    Ok(x) if x.ok() => {
                        let next = x.json();
                        eprintln!(
                            "twinwall: +{:.1} s {node}: rolling back: next boot slot {}, {}",
                            t0.elapsed().as_secs_f64(),
                            next["next_boot"].as_str().unwrap_or("?"),
                            next["reboot"].as_str().unwrap_or("?")
                        );
                        if next["reboot"] == "rebooting" {
                            Event::RollbackAccepted
                        } else {
                            failed(format!("it will not reboot: {}", next["reboot"]))
                        }
                    }
                    Ok(x) => failed(format!("{:#}", fail("rollback refused", &x))),
                    Err(e) => failed(format!("{e:#}")),
                };
                if let Event::Failed { reason, .. } = &ev {
                    eprintln!("twinwall: {node}: rollback failed: {reason}");
                }
                Some(ev)
            }
            Action::Finish => {
                println!("pair updated to OS version {target}");
                return Ok(());
            }
            Action::Abort { reason } => bail!("rolling update stopped: {reason}"),
        };
        if let Some(ev) = event {
            queue.extend(roll.step(ev));
        }
    }
    bail!("rolling update ended in state {:?}", roll.state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn node_info_reads_role_version_health_and_sync_from_get_status() {
        let v = json!({
            "mgmt": {"node": "fw2", "slots": {"running": "B", "os_versions": {"a": 3, "b": 4}}},
            "vrrp": {"groups": [{"name": "edge", "state": "backup"}]},
            "init": {"slot_marked_good": true},
            "sync": {"role": "backup", "peer_up": true,
                     "consistency": {"consistent": true, "alarm": false}}
        });
        assert_eq!(
            node_info(&v),
            Some(NodeInfo {
                name: "fw2".into(),
                role: "backup".into(),
                os_version: Some(4),
                healthy: true,
                synced: true,
            })
        );
        // a node that answers without vrrp/sync/init yet (booting) is unknown, not healthy
        let v = json!({"mgmt": {"node": "fw1", "slots": null}});
        let i = node_info(&v).unwrap();
        assert_eq!(
            (i.role.as_str(), i.os_version, i.healthy, i.synced),
            ("unknown", None, false, false)
        );
        assert_eq!(node_info(&json!({})), None);
    }

    #[test]
    fn a_backup_is_synced_only_with_the_peer_up_and_its_copy_matching() {
        let sync = |role: &str, up: bool, consistent: Value, alarm: bool| {
            json!({"role": role, "peer_up": up,
                   "consistency": {"consistent": consistent, "alarm": alarm}})
        };
        assert!(synced(&sync("backup", true, json!(true), false)));
        // a backup that has not matched the master's digest yet cannot take over
        assert!(!synced(&sync("backup", true, Value::Null, false)));
        assert!(!synced(&sync("backup", true, json!(false), false)));
        assert!(!synced(&sync("backup", false, json!(true), false)));
        assert!(!synced(&sync("backup", true, json!(true), true)));
        // the master has no copy to compare; its peer must be up
        assert!(synced(&sync("master", true, Value::Null, false)));
        assert!(!synced(&sync("master", false, Value::Null, false)));
        assert!(!synced(&json!(null)));
    }
}
