//! The real thing in the loop: testkit's `seed-pair` topology with the cluster config of
//! `shared/examples/seed-pair.toml`, and on fw1/fw2 the real `twinwall ruleset apply`
//! (the stateful ruleset: established accepted, invalid dropped, everything not allowed
//! dropped, the LAN SNATed to the outside VIP), `twinwall sync` (optional) and
//! `twinwall vrrp`, as processes. Failover is VRRP's own: cut the master's links and
//! the backup takes over through the commit handshake.
//!
//! ```text
//!  client 198.51.100.10 ── inside ── fw1 (.2) / fw2 (.3) ── outside ── server 203.0.113.254
//!  VIPs 198.51.100.1 (client gateway), 203.0.113.1 (SNAT address); sync link eth2
//! ```

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use twinwall_control::{Request, Subscription, request, socket_path, subscribe};
use twinwall_testkit::{Lab, Spawned, Topology, wait_for};

use super::LabError;

/// The firewall namespaces of the topology.
pub const FW: [&str; 2] = ["fw1", "fw2"];
/// The nodes of the seed-pair config.
pub const NODE: [&str; 2] = ["lj-fw-1", "lj-fw-2"];
/// The server (upstream router) address.
pub const SERVER: &str = "203.0.113.254";
/// The outside VIP.
pub const VIP_OUT: &str = "203.0.113.1";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// What runs on the firewalls.
#[derive(Debug, Clone)]
pub struct Options {
    /// Run `twinwall sync` (false: the failover must lose the TCP flows).
    pub sync: bool,
    /// Extra arguments of `twinwall vrrp` (e.g. `--commit-wait-ms`).
    pub vrrp_args: Vec<String>,
    /// Log level of the services (`--log`).
    pub log: String,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            sync: true,
            vrrp_args: Vec::new(),
            log: "info".into(),
        }
    }
}

/// The running cluster; everything (processes, namespaces, files) goes away on drop.
#[derive(Debug)]
pub struct Cluster {
    /// The namespaces (hosts `client`, `server`, `fw1`, `fw2`, bridges `inside`, `outside`).
    pub lab: Lab,
    /// Config, key, run dirs and logs.
    pub dir: PathBuf,
    procs: Vec<Spawned>,
}

impl Cluster {
    /// Builds the lab, applies the ruleset on both firewalls and starts the services with
    /// `bin` (the `twinwall` binary) and the cluster config `config` (TOML text for nodes
    /// `lj-fw-1`/`lj-fw-2`); returns once fw1 is master with its VIPs.
    pub fn start(bin: &Path, config: &str, opts: &Options) -> Result<Cluster, LabError> {
        let lab = Topology::shipped("seed-pair")?.build()?;
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("tw-sync-vrrp-{}-{n}", std::process::id()));
        let io = |e: std::io::Error| LabError::Spawn {
            cmd: format!("write {}", dir.display()),
            source: e,
        };
        std::fs::create_dir_all(&dir).map_err(io)?;
        let mut c = Cluster {
            lab,
            dir: dir.clone(),
            procs: Vec::new(),
        };
        let cfg = dir.join("cluster.toml");
        std::fs::write(&cfg, config).map_err(io)?;
        let key = dir.join("sync.key");
        std::fs::write(&key, "5a".repeat(32)).map_err(io)?;
        let bin = bin.display().to_string();
        for i in 0..2 {
            let ns = c.lab.ns(FW[i]);
            ns.run(
                &bin,
                [
                    "ruleset",
                    "apply",
                    &cfg.display().to_string(),
                    "--node",
                    NODE[i],
                ],
            )?;
            // A real firewall does not pick up TCP mid-stream: without synced state the
            // packets of an existing connection are invalid (and dropped) on the new master.
            ns.sysctl("net.netfilter.nf_conntrack_tcp_loose", "0")?;
        }
        for i in 0..2 {
            let run = c.run_dir(i).display().to_string();
            let mut services: Vec<(&str, Vec<String>)> = Vec::new();
            if opts.sync {
                services.push(("sync", vec!["--sync-key".into(), key.display().to_string()]));
            }
            services.push(("vrrp", opts.vrrp_args.clone()));
            for (svc, extra) in services {
                let log = File::create(dir.join(format!("{}-{svc}.log", FW[i]))).map_err(io)?;
                let mut cmd = c.lab.ns(FW[i]).command(
                    &bin,
                    [
                        "--log",
                        &opts.log,
                        svc,
                        "--config",
                        &cfg.display().to_string(),
                        "--node",
                        NODE[i],
                        "--run-dir",
                        &run,
                    ]
                    .into_iter()
                    .map(String::from)
                    .chain(extra),
                );
                cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(log);
                c.procs.push(c.lab.ns(FW[i]).spawn_command(cmd)?);
            }
        }
        let up = wait_for(Duration::from_secs(20), Duration::from_millis(50), || {
            c.vrrp_role(0) == "master" && c.vrrp_role(1) == "backup" && c.holds_vip(0)
        });
        if !up {
            return Err(LabError::Invalid(format!(
                "fw1 never became master with its VIPs\n{}",
                c.logs()
            )));
        }
        if opts.sync {
            let joined = wait_for(Duration::from_secs(10), Duration::from_millis(50), || {
                (0..2).all(|i| {
                    c.vrrp_status(i)
                        .is_some_and(|s| s["commit_participants"] == 1)
                })
            });
            if !joined {
                return Err(LabError::Invalid(format!(
                    "the sync services never joined the commit handshake\n{}",
                    c.logs()
                )));
            }
        }
        Ok(c)
    }

    /// Run directory (control sockets) of firewall `i`.
    pub fn run_dir(&self, i: usize) -> PathBuf {
        self.dir.join(format!("run-{}", FW[i]))
    }

    /// The VRRP service's status on firewall `i`.
    pub fn vrrp_status(&self, i: usize) -> Option<Value> {
        request(
            &socket_path(&self.run_dir(i), "vrrp"),
            &Request::new("status"),
            Duration::from_secs(2),
        )
        .ok()
    }

    /// The state of group `edge` on firewall `i` ("master", "backup", "fault" or "down").
    pub fn vrrp_role(&self, i: usize) -> String {
        self.vrrp_status(i)
            .and_then(|s| s["groups"][0]["state"].as_str().map(str::to_lowercase))
            .unwrap_or_else(|| "down".into())
    }

    /// The sync service's status on firewall `i`.
    pub fn sync_status(&self, i: usize) -> Value {
        request(
            &socket_path(&self.run_dir(i), "sync"),
            &Request::new("status"),
            Duration::from_secs(10),
        )
        .unwrap_or_default()
    }

    /// Subscribes to firewall `i`'s VRRP events.
    pub fn vrrp_events(&self, i: usize) -> Result<Subscription, LabError> {
        subscribe(
            &socket_path(&self.run_dir(i), "vrrp"),
            Duration::from_secs(2),
        )
        .map_err(|e| LabError::Invalid(format!("subscribe to vrrp.sock: {e}")))
    }

    /// True when firewall `i` holds the outside VIP.
    pub fn holds_vip(&self, i: usize) -> bool {
        self.lab
            .ns(FW[i])
            .ip(["-4", "addr", "show", "dev", "eth0"])
            .is_ok_and(|out| out.contains(&format!("{VIP_OUT}/")))
    }

    /// Cuts firewall `i` off the inside and outside switches (its ports go down: the
    /// firewall loses carrier, the hosts lose it). The sync link stays.
    pub fn cut(&self, i: usize) -> Result<(), LabError> {
        for sw in ["inside", "outside"] {
            self.lab
                .ns(sw)
                .ip(["link", "set", &format!("p-{}", FW[i]), "down"])?;
        }
        Ok(())
    }

    /// Every service log, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        if let Ok(rd) = std::fs::read_dir(&self.dir) {
            let mut paths: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
            paths.sort();
            for p in paths {
                if p.extension().is_some_and(|x| x == "log") {
                    let text = std::fs::read_to_string(&p).unwrap_or_default();
                    let tail: Vec<&str> = text.lines().rev().take(40).collect();
                    out.push_str(&format!("--- {}\n", p.display()));
                    for l in tail.into_iter().rev() {
                        out.push_str(l);
                        out.push('\n');
                    }
                }
            }
        }
        out
    }
}

/// What a takeover looked like from the new master's VRRP event stream.
#[derive(Debug, Clone, Copy)]
pub struct Takeover {
    /// From `becoming_master` to `vips_announced`: the delay the commit handshake adds.
    pub handshake: Duration,
    /// Whether the announcement followed an ack (false: the commit wait ran out).
    pub acked: bool,
    /// When `vips_announced` arrived.
    pub announced_at: Instant,
}

/// Waits (up to `limit`) on a VRRP event stream for `becoming_master` followed by
/// `vips_announced`.
pub fn takeover(sub: &mut Subscription, limit: Duration) -> Option<Takeover> {
    let end = Instant::now() + limit;
    let mut becoming = None;
    while Instant::now() < end {
        let Ok(Some(ev)) = sub.next_event(Some(Duration::from_millis(100))) else {
            continue;
        };
        match ev["event"].as_str() {
            Some("becoming_master") => becoming = Some(Instant::now()),
            Some("vips_announced") => {
                let now = Instant::now();
                return Some(Takeover {
                    handshake: becoming.map(|b| now - b).unwrap_or_default(),
                    acked: ev["acked"].as_bool().unwrap_or(false),
                    announced_at: now,
                });
            }
            _ => {}
        }
    }
    None
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // SIGTERM first, so that the services remove their addresses and sockets.
        for p in &self.procs {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &p.id().to_string()])
                .status();
        }
        for p in self.procs.drain(..) {
            let _ = p.wait_timeout(Duration::from_secs(5));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
