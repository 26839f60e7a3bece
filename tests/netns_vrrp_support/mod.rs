//! Shared fixtures of the VRRP netns tests: the seed-pair topology with `twinwall vrrp`
//! (or keepalived) running in fw1 and fw2, and probes of who holds the VIPs.
#![allow(dead_code)]

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use twinwall_control::{Request, request, socket_path};
use twinwall_testkit::{Lab, Netns, Spawned, Topology, wait_for};

/// The example's VIPs.
pub const VIP_OUT: &str = "203.0.113.1";
/// The inside VIP.
pub const VIP_IN: &str = "198.51.100.1";

/// The lab plus a temp dir with configs, run dirs and logs.
pub struct Pair {
    pub lab: Lab,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub procs: [Option<Spawned>; 2],
    pub nodes: [&'static str; 2],
}

/// The firewall namespaces' names in the topology, and the nodes of the example.
pub const FW: [&str; 2] = ["fw1", "fw2"];
pub const NODE: [&str; 2] = ["lj-fw-1", "lj-fw-2"];

/// The seed-pair example with its `[vrrp]` settings replaced by `vrrp` (TOML lines).
pub fn config_text(vrrp: &str) -> String {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/examples/seed-pair.toml"),
    )
    .expect("seed-pair.toml");
    let text = text.replace(
        "advert_interval_ms = 100\npreempt = true\n",
        &format!("{vrrp}\n"),
    );
    assert!(
        text.contains(vrrp),
        "the [vrrp] section of seed-pair.toml changed"
    );
    text
}

impl Pair {
    /// Builds the seed-pair lab and writes the config; starts nothing.
    pub fn new(vrrp: &str) -> Pair {
        Pair::with_config(&config_text(vrrp), NODE)
    }

    /// Builds the seed-pair lab for any cluster config whose nodes are `nodes`.
    pub fn with_config(text: &str, nodes: [&'static str; 2]) -> Pair {
        let lab = Topology::shipped("seed-pair").unwrap().build().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("cluster.toml");
        std::fs::write(&config, text).unwrap();
        Pair {
            lab,
            dir,
            config,
            procs: [None, None],
            nodes,
        }
    }

    pub fn ns(&self, i: usize) -> &Netns {
        self.lab.ns(FW[i])
    }

    pub fn run_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("run-{}", FW[i]))
    }

    pub fn log(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("{}.log", FW[i]))
    }

    /// Starts `twinwall vrrp` on node i, logging to a file (read on failure).
    pub fn start(&mut self, i: usize) {
        self.start_with(i, &[]);
    }

    /// Starts `twinwall vrrp` on node i with extra arguments.
    pub fn start_with(&mut self, i: usize, extra: &[&str]) {
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log(i))
            .unwrap();
        let bin = std::env::var("TWINWALL_BIN").unwrap_or(env!("CARGO_BIN_EXE_twinwall").into());
        let mut c = self.ns(i).command(
            &bin,
            [
                "--log",
                "debug",
                "vrrp",
                "--config",
                self.config.to_str().unwrap(),
                "--node",
                self.nodes[i],
                "--run-dir",
                self.run_dir(i).to_str().unwrap(),
            ]
            .into_iter()
            .chain(extra.iter().copied()),
        );
        c.stdin(Stdio::null()).stdout(Stdio::null()).stderr(log);
        self.procs[i] = Some(self.ns(i).spawn_command(c).unwrap());
        let sock = socket_path(&self.run_dir(i), "vrrp");
        assert!(
            wait_for(Duration::from_secs(10), Duration::from_millis(20), || self
                .status(i)
                .is_some()),
            "vrrp on {} did not open {}:\n{}",
            FW[i],
            sock.display(),
            self.logs()
        );
    }

    /// SIGTERM to node i; waits for a clean exit and returns its exit status.
    pub fn stop(&mut self, i: usize) -> std::process::ExitStatus {
        let p = self.procs[i].take().expect("running");
        let pid = p.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let out = p.wait_timeout(Duration::from_secs(10));
        out.status
    }

    /// The service's status, if it answers.
    pub fn status(&self, i: usize) -> Option<Value> {
        request(
            &socket_path(&self.run_dir(i), "vrrp"),
            &Request::new("status"),
            Duration::from_secs(2),
        )
        .ok()
    }

    /// The role of group `edge` on node i.
    pub fn role(&self, i: usize) -> String {
        self.status(i)
            .and_then(|s| s["groups"][0]["state"].as_str().map(str::to_string))
            .unwrap_or_else(|| "down".into())
    }

    /// Whether node i has `ip` on `dev`.
    pub fn has(&self, i: usize, dev: &str, ip: &str) -> bool {
        has_addr(self.ns(i), dev, ip)
    }

    /// Which nodes hold both VIPs; panics if one node holds only one (a split group).
    pub fn holders(&self) -> Vec<usize> {
        (0..2)
            .filter(|&i| {
                let o = self.has(i, "eth0", VIP_OUT);
                let n = self.has(i, "eth1", VIP_IN);
                assert_eq!(
                    o,
                    n,
                    "{} holds one VIP without the other\n{}",
                    FW[i],
                    self.logs()
                );
                o
            })
            .collect()
    }

    /// Waits until exactly node `i` holds both VIPs and the other none.
    pub fn wait_holder(&self, i: usize, timeout: Duration) -> bool {
        wait_for(timeout, Duration::from_millis(10), || {
            self.has(i, "eth0", VIP_OUT)
                && self.has(i, "eth1", VIP_IN)
                && !self.has(1 - i, "eth0", VIP_OUT)
                && !self.has(1 - i, "eth1", VIP_IN)
        })
    }

    /// Both nodes' logs, for failure messages.
    pub fn logs(&self) -> String {
        (0..2)
            .map(|i| {
                let t = std::fs::read_to_string(self.log(i)).unwrap_or_default();
                let tail: Vec<&str> = t.lines().rev().take(60).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                format!("--- {} ---\n{}\n", FW[i], tail.join("\n"))
            })
            .collect()
    }
}

/// Whether `ip` is configured on `dev` in `ns`.
pub fn has_addr(ns: &Netns, dev: &str, ip: &str) -> bool {
    ns.ip(["-o", "addr", "show", "dev", dev])
        .map(|o| {
            o.split_whitespace()
                .any(|w| w.split('/').next() == Some(ip))
        })
        .unwrap_or(false)
}

/// The MAC address of `dev` in `ns`.
pub fn mac(ns: &Netns, dev: &str) -> String {
    let out = ns.ip(["-o", "link", "show", "dev", dev]).unwrap();
    let mut words = out.split_whitespace();
    words.find(|w| *w == "link/ether").expect("ethernet device");
    words.next().unwrap().to_string()
}

/// The link-layer address `ns` has cached for `ip`, if any.
pub fn neigh(ns: &Netns, ip: &str) -> Option<String> {
    let out = ns.ip(["neigh", "show", ip]).ok()?;
    let mut words = out.split_whitespace();
    words.find(|w| *w == "lladdr")?;
    words.next().map(str::to_string)
}

/// Whether `from` gets an answer to one ping of `ip` within a second.
pub fn ping(from: &Netns, ip: &str) -> bool {
    from.exec("ping", ["-c", "1", "-W", "1", "-q", ip])
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// A keepalived sync group equivalent to the seed pair's group `edge`.
pub fn keepalived_conf(priority: u8, advert_s: &str, v6: bool) -> String {
    let inst = |name: &str, dev: &str, vrid: u8, vip: &str| {
        format!(
            "vrrp_instance {name} {{\n  state BACKUP\n  interface {dev}\n  virtual_router_id {vrid}\n  \
             priority {priority}\n  advert_int {advert_s}\n  virtual_ipaddress {{\n    {vip}\n  }}\n  \
             track_interface {{\n    eth0\n    eth1\n  }}\n}}\n"
        )
    };
    let mut s = String::from(
        "global_defs {\n  vrrp_version 3\n  script_user root\n  enable_script_security\n}\n",
    );
    s += "vrrp_sync_group EDGE {\n  group {\n    VI_51\n    VI_52\n";
    if v6 {
        s += "    VI6_51\n";
    }
    s += "  }\n}\n";
    s += &inst("VI_51", "eth0", 51, "203.0.113.1/24");
    s += &inst("VI_52", "eth1", 52, "198.51.100.1/24");
    if v6 {
        s += &inst("VI6_51", "eth0", 51, "2001:db8:0:1::1/64");
    }
    s
}

/// A keepalived process (stopped with SIGTERM on drop).
pub struct Keepalived {
    pub proc: Option<Spawned>,
    pub dir: PathBuf,
}

pub fn start_keepalived(p: &Pair, i: usize, conf: &str) -> Keepalived {
    let dir = p.dir.path().join(format!("ka-{}", FW[i]));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("keepalived.conf");
    std::fs::write(&cfg, conf).unwrap();
    let log = File::create(dir.join("keepalived.log")).unwrap();
    let mut c = p.ns(i).command(
        "keepalived",
        [
            "-n".to_string(),
            "-l".into(),
            "-D".into(),
            "-P".into(),
            "-f".into(),
            cfg.display().to_string(),
            "-p".into(),
            dir.join("keepalived.pid").display().to_string(),
            "-r".into(),
            dir.join("vrrp.pid").display().to_string(),
        ],
    );
    c.stdin(Stdio::null()).stdout(Stdio::null()).stderr(log);
    Keepalived {
        proc: Some(p.ns(i).spawn_command(c).unwrap()),
        dir,
    }
}

impl Keepalived {
    pub fn stop(&mut self) {
        if let Some(p) = self.proc.take() {
            Command::new("kill")
                .args(["-TERM", &p.id().to_string()])
                .status()
                .unwrap();
            p.wait_timeout(Duration::from_secs(10));
        }
    }
}

impl Drop for Keepalived {
    fn drop(&mut self) {
        self.stop();
    }
}
