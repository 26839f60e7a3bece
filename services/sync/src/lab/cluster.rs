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
/// The inside VIP (the client's gateway).
pub const VIP_IN: &str = "198.51.100.1";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Which stack runs on the firewalls (the ruleset is always `twinwall ruleset apply`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stack {
    /// `twinwall sync` (unless `Options::sync` is false) and `twinwall vrrp`.
    Twinwall,
    /// The seed's stack for comparison: keepalived (VRRPv3, a sync group like `edge`)
    /// and conntrackd (FTFW over UDP on the sync link); keepalived's `notify_master`
    /// runs `conntrackd -c` (keepalived does not wait for it).
    KeepalivedConntrackd,
}

/// What runs on the firewalls.
#[derive(Debug, Clone)]
pub struct Options {
    /// The services.
    pub stack: Stack,
    /// Run the state sync (false: the failover must lose the TCP flows).
    pub sync: bool,
    /// Extra arguments of `twinwall vrrp` (e.g. `--commit-wait-ms`).
    pub vrrp_args: Vec<String>,
    /// VRRP advertisement interval in ms (replaces the config's 100).
    pub advert_ms: u32,
    /// Idle UDP entries put into fw1's kernel before the flows start (they replicate like
    /// the flows and make the takeover commit large).
    pub preload: usize,
    /// Log level of the services (`--log`).
    pub log: String,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            stack: Stack::Twinwall,
            sync: true,
            vrrp_args: Vec::new(),
            advert_ms: 100,
            preload: 0,
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
    /// (firewall, service) of each of `procs` (twinwall stack only).
    names: Vec<(usize, &'static str)>,
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
            names: Vec::new(),
        };
        let cfg = dir.join("cluster.toml");
        let config = config.replace(
            "advert_interval_ms = 100\n",
            &format!("advert_interval_ms = {}\n", opts.advert_ms),
        );
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
        if opts.stack == Stack::KeepalivedConntrackd {
            c.start_seed_stack(opts)?;
            return Ok(c);
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
                c.names.push((i, svc));
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
                }) && c.sync_status(0)["role"] == "master"
                    && c.sync_status(1)["role"] == "backup"
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

    /// conntrackd's config file for firewall `i`.
    pub fn conntrackd_conf(&self, i: usize) -> PathBuf {
        self.dir.join(format!("conntrackd-{}.conf", FW[i]))
    }

    fn start_seed_stack(&mut self, opts: &Options) -> Result<(), LabError> {
        let io = |e: std::io::Error| LabError::Spawn {
            cmd: "write the seed stack's files".into(),
            source: e,
        };
        const SYNC: [&str; 2] = ["192.0.2.1", "192.0.2.2"];
        const OWN: [&str; 6] = [
            "203.0.113.2",
            "203.0.113.3",
            "198.51.100.2",
            "198.51.100.3",
            "192.0.2.1",
            "192.0.2.2",
        ];
        for i in 0..2 {
            let d = self.dir.display();
            let f = FW[i];
            let ignore: String = OWN
                .iter()
                .map(|a| format!("            IPv4_address {a}\n"))
                .collect();
            let conf = format!(
                "Sync {{\n    Mode FTFW {{\n        DisableExternalCache off\n    }}\n    UDP {{\n        \
                 IPv4_address {l}\n        IPv4_Destination_Address {p}\n        Port 3780\n        \
                 Interface eth2\n        SndSocketBuffer 16777216\n        RcvSocketBuffer 16777216\n        \
                 Checksum on\n    }}\n}}\nGeneral {{\n    HashSize 65536\n    HashLimit 1048576\n    \
                 LogFile {d}/{f}-conntrackd.log\n    Syslog off\n    LockFile {d}/{f}-conntrackd.lock\n    \
                 UNIX {{\n        Path {d}/{f}-conntrackd.sock\n    }}\n    NetlinkBufferSize 2097152\n    \
                 NetlinkBufferSizeMaxGrowth 67108864\n    NetlinkOverrunResync on\n    \
                 Filter From Userspace {{\n        Address Ignore {{\n{ignore}        }}\n    }}\n}}\n",
                l = SYNC[i],
                p = SYNC[1 - i],
            );
            std::fs::write(self.conntrackd_conf(i), conf).map_err(io)?;
            // What primary-backup.sh does on becoming master, the commit first.
            let script = self.dir.join(format!("{f}-notify.sh"));
            let c = self.conntrackd_conf(i).display().to_string();
            std::fs::write(
                &script,
                format!(
                    "#!/bin/sh\nif [ \"$1\" = master ]; then\n  conntrackd -C {c} -c\n  \
                     conntrackd -C {c} -f\n  conntrackd -C {c} -R\n  conntrackd -C {c} -B\n\
                     else\n  conntrackd -C {c} -n\nfi\n"
                ),
            )
            .map_err(io)?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))
                .map_err(io)?;
            let mut cmd = self.lab.ns(f).command(
                "conntrackd",
                ["-C", &self.conntrackd_conf(i).display().to_string()],
            );
            cmd.stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            self.procs.push(self.lab.ns(f).spawn_command(cmd)?);
            let prio = if i == 0 { 200 } else { 100 };
            let advert = f64::from(opts.advert_ms) / 1000.0;
            let s = script.display();
            let inst = |name: &str, dev: &str, vrid: u8, vip: &str| {
                format!(
                    "vrrp_instance {name} {{\n  state BACKUP\n  interface {dev}\n  virtual_router_id {vrid}\n  \
                     priority {prio}\n  advert_int {advert}\n  virtual_ipaddress {{\n    {vip}\n  }}\n  \
                     track_interface {{\n    eth0\n    eth1\n  }}\n}}\n"
                )
            };
            let mut ka = format!(
                "global_defs {{\n  vrrp_version 3\n  script_user root\n}}\n\
                 vrrp_sync_group EDGE {{\n  group {{\n    VI_51\n    VI_52\n  }}\n  \
                 notify_master \"{s} master\"\n  notify_backup \"{s} backup\"\n}}\n"
            );
            ka += &inst("VI_51", "eth0", 51, "203.0.113.1/24");
            ka += &inst("VI_52", "eth1", 52, "198.51.100.1/24");
            let kconf = self.dir.join(format!("{f}-keepalived.conf"));
            std::fs::write(&kconf, ka).map_err(io)?;
            let log = File::create(self.dir.join(format!("{f}-keepalived.log"))).map_err(io)?;
            let mut cmd = self.lab.ns(f).command(
                "keepalived",
                [
                    "-n".to_string(),
                    "-l".into(),
                    "-D".into(),
                    "-P".into(),
                    "-f".into(),
                    kconf.display().to_string(),
                    "-p".into(),
                    self.dir
                        .join(format!("{f}-keepalived.pid"))
                        .display()
                        .to_string(),
                    "-r".into(),
                    self.dir.join(format!("{f}-vrrp.pid")).display().to_string(),
                ],
            );
            cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(log);
            self.procs.push(self.lab.ns(f).spawn_command(cmd)?);
        }
        let up = wait_for(Duration::from_secs(20), Duration::from_millis(50), || {
            self.holds_vip(0) && !self.holds_vip(1)
        });
        if !up {
            return Err(LabError::Invalid(format!(
                "keepalived on fw1 never took the VIPs\n{}",
                self.logs()
            )));
        }
        Ok(())
    }

    /// Entries in conntrackd's external cache on firewall `i`.
    pub fn conntrackd_external(&self, i: usize) -> u64 {
        let out = self
            .lab
            .ns(FW[i])
            .run(
                "conntrackd",
                [
                    "-C",
                    &self.conntrackd_conf(i).display().to_string(),
                    "-s",
                    "cache",
                ],
            )
            .unwrap_or_default();
        // "cache:external  active objects: N"
        let mut external = false;
        for l in out.lines() {
            if l.contains("external") {
                external = true;
            }
            if external && let Some(v) = l.split("active objects:").nth(1) {
                return v
                    .split_whitespace()
                    .next()
                    .and_then(|x| x.parse().ok())
                    .unwrap_or(0);
            }
        }
        0
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

    /// Puts firewall `i` back on the inside and outside switches (undoes [`Cluster::cut`]).
    pub fn restore(&self, i: usize) -> Result<(), LabError> {
        for sw in ["inside", "outside"] {
            self.lab
                .ns(sw)
                .ip(["link", "set", &format!("p-{}", FW[i]), "up"])?;
        }
        Ok(())
    }

    /// The process id of service `svc` ("sync" or "vrrp") on firewall `i`.
    pub fn service_pid(&self, i: usize, svc: &str) -> Option<u32> {
        self.names
            .iter()
            .position(|&(f, s)| f == i && s == svc)
            .map(|k| self.procs[k].id())
    }

    /// Sends `signal` (e.g. `SIGSTOP`, `SIGCONT`) to service `svc` on firewall `i`.
    pub fn signal(
        &self,
        i: usize,
        svc: &str,
        signal: nix::sys::signal::Signal,
    ) -> Result<(), LabError> {
        let pid = self
            .service_pid(i, svc)
            .ok_or_else(|| LabError::Invalid(format!("no {svc} service on {}", FW[i])))?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal)
            .map_err(|e| LabError::Invalid(format!("kill -{signal} {pid}: {e}")))
    }

    /// Who the traffic goes to, for failure messages: the client's and the server's
    /// neighbour caches (which MAC the VIPs resolve to), each firewall's MACs, VIPs,
    /// VRRP role, conntrack count and sync role.
    pub fn diagnosis(&self) -> String {
        let mut out = String::new();
        for h in ["client", "server"] {
            let neigh = self
                .lab
                .ns(h)
                .ip(["neigh", "show"])
                .unwrap_or_else(|e| format!("({e})"));
            out.push_str(&format!("{h} ip neigh:\n{}", neigh));
        }
        for (i, fw) in FW.iter().enumerate() {
            let ns = self.lab.ns(fw);
            let mac = |d: &str| ns.mac(d).unwrap_or_else(|e| format!("({e})"));
            let vip = |d: &str, a: &str| {
                ns.ip(["-4", "-o", "addr", "show", "dev", d])
                    .is_ok_and(|o| o.contains(&format!("{a}/")))
            };
            let count = ns
                .run("conntrack", ["-C"])
                .map(|o| o.trim().to_string())
                .unwrap_or_else(|e| format!("({e})"));
            let sync = self.sync_status(i);
            out.push_str(&format!(
                "{fw}: eth0 {} (VIP {VIP_OUT}: {}), eth1 {} (VIP {VIP_IN}: {}), vrrp {}, \
                 conntrack entries {count}, sync role {} internal {} external {}\n",
                mac("eth0"),
                vip("eth0", VIP_OUT),
                mac("eth1"),
                vip("eth1", VIP_IN),
                self.vrrp_role(i),
                sync["role"],
                sync["internal_entries"],
                sync["external_entries"],
            ));
        }
        out
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

/// `n` idle UDP entries from the inside (10.x addresses are nobody's own) to the server.
fn preload_entries(n: usize) -> Vec<crate::entry::Entry> {
    use std::net::{IpAddr, Ipv4Addr};
    let server: IpAddr = SERVER.parse().expect("address");
    super::udp_entries(n, |k| IpAddr::V4(Ipv4Addr::new(10, 9, k as u8, 1)), server)
}

/// The result of [`Cluster::failover`].
#[derive(Debug, Clone)]
pub struct Failover {
    /// Survivors and echo gaps.
    pub survival: super::flows::Survival,
    /// The commit handshake as VRRP saw it (twinwall only).
    pub takeover: Option<Takeover>,
    /// From the cut to the VIPs on fw2.
    pub cut_to_vips: Duration,
}

impl Cluster {
    /// Runs `tcp` TCP and `udp` UDP echo flows (every 100 ms) from the client to the
    /// server through fw1, waits until fw2 holds their state (when syncing), cuts fw1 and
    /// lets VRRP fail over; a flow survived when it echoed again after the VIPs moved.
    pub fn failover(&self, opts: &Options, tcp: usize, udp: usize) -> Result<Failover, LabError> {
        use super::flows::survival;
        let fail = |what: String| LabError::Invalid(format!("{what}\n{}", self.logs()));
        let running = self.start_flows(opts, tcp, udp)?;
        std::thread::sleep(Duration::from_secs(1));
        let mut events = match opts.stack {
            Stack::Twinwall => Some(self.vrrp_events(1)?),
            Stack::KeepalivedConntrackd => None,
        };
        let cut = Instant::now();
        self.cut(0)?;
        let (takeover, announced_at) = match &mut events {
            Some(ev) => {
                let t = takeover(ev, Duration::from_secs(10))
                    .ok_or_else(|| fail("fw2 never announced the VIPs".into()))?;
                (Some(t), t.announced_at)
            }
            None => {
                if !wait_for(Duration::from_secs(10), Duration::from_millis(2), || {
                    self.holds_vip(1)
                }) {
                    return Err(fail("keepalived on fw2 never took the VIPs".into()));
                }
                (None, Instant::now())
            }
        };
        std::thread::sleep(Duration::from_secs(4));
        let stats = running.stop();
        Ok(Failover {
            survival: survival(&stats, announced_at),
            takeover,
            cut_to_vips: announced_at - cut,
        })
    }

    /// Preloads `opts.preload` idle entries into fw1, starts the echo server and `tcp` TCP
    /// and `udp` UDP echo flows (every 100 ms) from the client through the master, and
    /// (when syncing) waits until fw2 holds all of them.
    pub fn start_flows(
        &self,
        opts: &Options,
        tcp: usize,
        udp: usize,
    ) -> Result<RunningFlows, LabError> {
        use super::flows::{Flows, Proto, echo_server};
        use std::net::SocketAddr;
        use std::sync::Arc;
        use std::sync::atomic::AtomicBool;
        let fail = |what: String| LabError::Invalid(format!("{what}\n{}", self.logs()));
        if opts.preload > 0 {
            let batch = preload_entries(opts.preload);
            let r = self
                .lab
                .ns(FW[0])
                .enter(move || crate::kernel::Conntrack::open()?.commit(&batch))?
                .map_err(|e| fail(format!("preload: {e}")))?;
            if r.failed > 0 {
                return Err(fail(format!("preload: {r:?}")));
            }
        }
        let stop = Arc::new(AtomicBool::new(false));
        let s2 = stop.clone();
        self.lab
            .ns("server")
            .enter(move || echo_server(&[7000], &[7002], s2))?
            .map_err(|e| fail(format!("echo server: {e}")))?;
        let server = SERVER.parse().expect("address");
        let mut targets = vec![(Proto::Tcp, SocketAddr::new(server, 7000)); tcp];
        targets.extend(vec![(Proto::Udp, SocketAddr::new(server, 7002)); udp]);
        let flows = self
            .lab
            .ns("client")
            .enter(move || Flows::start(&targets, Duration::from_millis(100)))?
            .map_err(|e| {
                fail(format!(
                    "flows through fw1 did not start: {e}\n{}",
                    self.diagnosis()
                ))
            })?;
        if opts.sync {
            let want = (tcp + udp + opts.preload) as u64;
            let synced = wait_for(
                Duration::from_secs(60),
                Duration::from_millis(100),
                || match opts.stack {
                    Stack::Twinwall => {
                        self.sync_status(1)["external_entries"]
                            .as_u64()
                            .unwrap_or(0)
                            >= want
                    }
                    Stack::KeepalivedConntrackd => self.conntrackd_external(1) >= want,
                },
            );
            if !synced {
                return Err(fail(format!(
                    "fw2 never held the {want} flows (roles fw1 {}, fw2 {}; fw2 sync {})\n{}",
                    self.vrrp_role(0),
                    self.vrrp_role(1),
                    self.sync_status(1),
                    self.diagnosis()
                )));
            }
        }
        Ok(RunningFlows { flows, stop })
    }
}

/// Echo flows started by [`Cluster::start_flows`]; [`RunningFlows::stop`] ends them and
/// the echo server.
#[derive(Debug)]
pub struct RunningFlows {
    flows: super::flows::Flows,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl RunningFlows {
    /// Stops the flows and the echo server; the statistics of every flow.
    pub fn stop(self) -> Vec<super::flows::FlowStats> {
        let stats = self.flows.stop();
        self.stop.store(true, Ordering::Relaxed);
        stats
    }
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
