//! Shared harness of the mgmt tests: signing keys and config bundles made with the real
//! `twinwall` binary, per-node config partitions as directories, and the pair topology in
//! network namespaces:
//!
//! ```text
//!   lan (admin host 198.51.100.20, bridge br0)
//!     | p1                      | p2
//!     | eth1 .2                 | eth1 .3
//!   [ fw1 ] ===== eth2 ===== [ fw2 ]      sync link 192.0.2.0/30 (.1 / .2)
//! ```
//!
//! Each node runs the real ruleset (applied with `twinwall ruleset apply`) and a real
//! `twinwall mgmt` listening on its inside and sync addresses. Everything is removed when
//! the values are dropped, also when a test fails.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;
use twinwall_testkit::{Netns, Spawned, wait_for};

pub const FIXTURE: &str = include_str!("../../services/mgmt/tests/fixtures/pair.toml");
pub const NODES: [&str; 2] = ["fw1", "fw2"];
pub const INSIDE: [&str; 2] = ["198.51.100.2", "198.51.100.3"];
pub const SYNC: [&str; 2] = ["192.0.2.1", "192.0.2.2"];
pub const ADMIN: &str = "198.51.100.20";

/// The binary under test (`TWINWALL_BIN` overrides, e.g. a release build for benches).
pub fn bin() -> String {
    std::env::var("TWINWALL_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_twinwall").to_string())
}

pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.stdin(Stdio::null()).output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    out
}

/// The fixture at `version`, optionally with the rule that opens tcp/8080 to the
/// firewall from the LAN.
pub fn config(version: u64, open_probe: bool) -> String {
    let mut s = FIXTURE.replace("version = 1\n", &format!("version = {version}\n"));
    if open_probe {
        s.push_str(
            "\n[[policy.rule]]\nname = \"probe-to-firewall\"\nfrom = \"lan\"\nto = \"self\"\nservice = \"probe\"\naction = \"accept\"\n",
        );
    }
    s
}

/// Keys and bundles in a temporary directory.
pub struct Material {
    pub dir: tempfile::TempDir,
}

impl Material {
    pub fn new() -> Material {
        let dir = tempfile::tempdir().unwrap();
        for k in ["op", "evil"] {
            run_ok(
                Command::new(bin())
                    .args(["key", "generate", "--out"])
                    .arg(dir.path().join(k)),
            );
        }
        Material { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A config bundle of `text` signed by key `key` (`op` or `evil`).
    pub fn bundle(&self, name: &str, text: &str, key: &str) -> PathBuf {
        let toml = self.path(&format!("{name}.toml"));
        std::fs::write(&toml, text).unwrap();
        let out = self.path(&format!("{name}.bundle"));
        run_ok(
            Command::new(bin())
                .args(["bundle", "create", "--config"])
                .arg(&toml)
                .arg("--key")
                .arg(self.path(&format!("{key}.key")))
                .arg("--out")
                .arg(&out),
        );
        out
    }

    /// A config partition for `node` with `active` installed as the active bundle.
    pub fn config_dir(&self, node: &str, active: &Path) -> PathBuf {
        let d = self.path(&format!("cfg-{node}"));
        std::fs::create_dir_all(d.join("trusted")).unwrap();
        std::fs::create_dir_all(d.join("bundles")).unwrap();
        std::fs::write(d.join("node"), format!("{node}\n")).unwrap();
        std::fs::copy(self.path("op.pub"), d.join("trusted/op.pub")).unwrap();
        std::fs::copy(active, d.join("bundles/active.bundle")).unwrap();
        std::fs::write(d.join("installed-version"), "0\n").unwrap();
        d
    }
}

/// One node: its namespace, config partition, run dir and mgmt process.
pub struct Fw {
    pub name: &'static str,
    pub ns: Netns,
    pub cfg: PathBuf,
    pub run: PathBuf,
    pub mgmt: Option<Spawned>,
    pub log: PathBuf,
}

impl Fw {
    pub fn inside(&self) -> SocketAddr {
        let i = NODES.iter().position(|n| *n == self.name).unwrap();
        format!("{}:9780", INSIDE[i]).parse().unwrap()
    }

    /// Starts `twinwall mgmt` and waits until `mgmt.sock` answers.
    pub fn start_mgmt(&mut self) {
        let log = std::fs::File::create(&self.log).unwrap();
        let mut c = self.ns.command(
            &bin(),
            [
                "mgmt",
                "--config",
                self.run.join("cluster.toml").to_str().unwrap(),
                "--node",
                self.name,
                "--run-dir",
                self.run.to_str().unwrap(),
                "--config-dir",
                self.cfg.to_str().unwrap(),
                "--peer-poll-ms",
                "300",
            ],
        );
        c.stdout(Stdio::null())
            .stderr(log)
            .env("TWINWALL_LOG", "info");
        self.mgmt = Some(self.ns.spawn_command(c).unwrap());
        let sock = self.run.join("mgmt.sock");
        let up = wait_for(Duration::from_secs(20), Duration::from_millis(50), || {
            twinwall_control::request(
                &sock,
                &twinwall_control::Request::new("status"),
                Duration::from_secs(1),
            )
            .is_ok()
        });
        assert!(
            up,
            "mgmt of {} did not come up:\n{}",
            self.name,
            self.logs()
        );
    }

    /// Stops mgmt (SIGTERM, as init would).
    pub fn stop_mgmt(&mut self) {
        if let Some(mut m) = self.mgmt.take() {
            let pid = m.id() as i32;
            // `ip netns exec` execs the program, so the pid is mgmt's own.
            // SAFETY: kill with a pid we started and a valid signal number.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let _ = m.child().wait();
        }
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// mgmt's own status from its control socket.
    pub fn status(&self) -> Value {
        twinwall_control::request(
            &self.run.join("mgmt.sock"),
            &twinwall_control::Request::new("status"),
            Duration::from_secs(2),
        )
        .unwrap_or(Value::Null)
    }

    pub fn version(&self) -> Option<u64> {
        self.status()["config"]["version"].as_u64()
    }

    pub fn active_bundle(&self) -> Vec<u8> {
        std::fs::read(self.cfg.join("bundles/active.bundle")).unwrap()
    }

    pub fn ruleset(&self) -> String {
        self.ns.run("nft", ["-s", "list", "ruleset"]).unwrap()
    }
}

impl Drop for Fw {
    fn drop(&mut self) {
        self.stop_mgmt();
    }
}

/// The pair and the LAN.
pub struct Pair {
    pub fws: Vec<Fw>,
    pub lan: Netns,
    pub m: Material,
}

impl Pair {
    /// Builds the topology, installs config version 1 (tcp/8080 closed) on both nodes,
    /// applies its ruleset and starts both mgmt services.
    pub fn new() -> Pair {
        let m = Material::new();
        let v1 = m.bundle("v1", &config(1, false), "op");
        let lan = Netns::new("mglan").unwrap();
        twinwall_testkit::bridge(&lan, "br0").unwrap();
        lan.add_addr("br0", format!("{ADMIN}/24").parse().unwrap())
            .unwrap();
        let mut fws = Vec::new();
        for (i, name) in NODES.iter().enumerate() {
            let ns = Netns::new(name).unwrap();
            let port = format!("p{}", i + 1);
            twinwall_testkit::veth((&ns, "eth1"), (&lan, &port)).unwrap();
            lan.ip(["link", "set", &port, "master", "br0"]).unwrap();
            ns.add_addr("eth1", format!("{}/24", INSIDE[i]).parse().unwrap())
                .unwrap();
            let run = m.path(&format!("run-{name}"));
            std::fs::create_dir_all(&run).unwrap();
            std::fs::write(run.join("cluster.toml"), config(1, false)).unwrap();
            let cfg = m.config_dir(name, &v1);
            let log = m.path(&format!("mgmt-{name}.log"));
            fws.push(Fw {
                name,
                ns,
                cfg,
                run,
                mgmt: None,
                log,
            });
        }
        twinwall_testkit::veth((&fws[0].ns, "eth2"), (&fws[1].ns, "eth2")).unwrap();
        for (i, fw) in fws.iter().enumerate() {
            fw.ns
                .add_addr("eth2", format!("{}/30", SYNC[i]).parse().unwrap())
                .unwrap();
            run_ok(&mut fw.ns.command(
                &bin(),
                [
                    "ruleset",
                    "apply",
                    fw.run.join("cluster.toml").to_str().unwrap(),
                    "--node",
                    fw.name,
                ],
            ));
        }
        let mut p = Pair { fws, lan, m };
        for fw in &mut p.fws {
            fw.start_mgmt();
        }
        p
    }

    /// Runs `twinwall ARGS` on the admin host.
    pub fn admin(&self, args: &[&str]) -> Output {
        self.lan.exec(&bin(), args).unwrap()
    }

    /// Whether the admin host gets through to tcp/8080 on node `i`.
    pub fn probe_open(&self, i: usize) -> bool {
        let target: SocketAddr = format!("{}:8080", INSIDE[i]).parse().unwrap();
        twinwall_testkit::tcp_probe(&self.lan, target, None, Duration::from_millis(700))
            .unwrap()
            .is_some()
    }

    pub fn logs(&self) -> String {
        self.fws
            .iter()
            .map(|f| format!("--- {} ---\n{}", f.name, f.logs()))
            .collect()
    }
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// One HTTP request from inside `ns` (status code, body as text).
pub fn http(
    ns: &Netns,
    addr: SocketAddr,
    method: &'static str,
    path: &'static str,
) -> (u16, String) {
    ns.enter(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(twinwall_mgmt::client::request(
            addr,
            method,
            path,
            twinwall_mgmt::client::empty_body(),
            Duration::from_secs(10),
        ))
    })
    .unwrap()
    .map(|a| (a.status, String::from_utf8_lossy(&a.body).into_owned()))
    .unwrap_or((0, String::new()))
}

/// A signed os-update bundle carrying `image` as `slot.squashfs`.
pub fn os_bundle(m: &Material, name: &str, version: u64, image: &Path, key: &str) -> PathBuf {
    let key = twinwall_bundle::keys::read_signing_key(&m.path(&format!("{key}.key"))).unwrap();
    let out = m.path(&format!("{name}.bundle"));
    twinwall_bundle::create_file(
        twinwall_bundle::Kind::OsUpdate,
        &twinwall_bundle::BundleMeta {
            version,
            cluster: "twinwall-os".into(),
            compatible: twinwall_bundle::DEFAULT_COMPATIBLE.into(),
            created: std::time::SystemTime::UNIX_EPOCH,
            rollback: false,
        },
        &[twinwall_bundle::Payload::file("slot.squashfs", image)],
        &key,
        &out,
    )
    .unwrap();
    out
}

/// `len` bytes of deterministic pseudo-random data (a stand-in slot image).
pub fn image_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            // xorshift64: incompressible enough, no dependency
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// One node with A/B slots as files, an ESP directory with a grubenv and mgmt on
/// 127.0.0.1:9780 inside its own namespace (running slot A).
pub struct SlotNode {
    pub fw: Fw,
    pub m: Material,
    pub esp: PathBuf,
    pub slot_a: PathBuf,
    pub slot_b: PathBuf,
    pub extra: Vec<String>,
}

impl SlotNode {
    pub fn new(slot_size: u64) -> SlotNode {
        SlotNode::with_args(slot_size, &[])
    }

    /// Like `new`, with extra `twinwall mgmt` arguments.
    pub fn with_args(slot_size: u64, extra: &[&str]) -> SlotNode {
        let m = Material::new();
        let v1 = m.bundle("v1", &config(1, false), "op");
        let ns = Netns::new("mgup").unwrap();
        let run = m.path("run-fw1");
        std::fs::create_dir_all(&run).unwrap();
        std::fs::write(run.join("cluster.toml"), config(1, false)).unwrap();
        let cfg = m.config_dir("fw1", &v1);
        let esp = m.path("esp");
        std::fs::create_dir_all(esp.join("grub")).unwrap();
        twinwall_image::slot::GrubenvFile::create(
            esp.join("grub/grubenv"),
            &twinwall_image::slot::BootState::fresh(),
        )
        .unwrap();
        let slot_a = m.path("slot-a.img");
        let slot_b = m.path("slot-b.img");
        for s in [&slot_a, &slot_b] {
            std::fs::File::create(s)
                .unwrap()
                .set_len(slot_size)
                .unwrap();
        }
        let log = m.path("mgmt-fw1.log");
        let fw = Fw {
            name: "fw1",
            ns,
            cfg,
            run,
            mgmt: None,
            log,
        };
        let mut n = SlotNode {
            fw,
            m,
            esp,
            slot_a,
            slot_b,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        n.start();
        n
    }

    pub fn start(&mut self) {
        let log = std::fs::File::create(&self.fw.log).unwrap();
        let mut args: Vec<String> = vec![
            "mgmt".into(),
            "--config".into(),
            self.fw.run.join("cluster.toml").display().to_string(),
            "--node".into(),
            "fw1".into(),
            "--run-dir".into(),
            self.fw.run.display().to_string(),
            "--config-dir".into(),
            self.fw.cfg.display().to_string(),
            "--listen".into(),
            "127.0.0.1:9780".into(),
            "--esp".into(),
            self.esp.display().to_string(),
            "--slot".into(),
            "a".into(),
            "--slot-a".into(),
            self.slot_a.display().to_string(),
            "--slot-b".into(),
            self.slot_b.display().to_string(),
        ];
        args.extend(self.extra.iter().cloned());
        let mut c = self.fw.ns.command(&bin(), &args);
        c.stdout(Stdio::null()).stderr(log);
        self.fw.mgmt = Some(self.fw.ns.spawn_command(c).unwrap());
        let sock = self.fw.run.join("mgmt.sock");
        let up = wait_for(Duration::from_secs(20), Duration::from_millis(50), || {
            twinwall_control::request(
                &sock,
                &twinwall_control::Request::new("status"),
                Duration::from_secs(1),
            )
            .is_ok()
        });
        assert!(up, "mgmt did not come up:\n{}", self.fw.logs());
    }

    /// `twinwall update BUNDLE --to 127.0.0.1:9780` inside the namespace.
    pub fn update(&self, bundle: &Path) -> Output {
        self.fw
            .ns
            .exec(
                &bin(),
                ["update", bundle.to_str().unwrap(), "--to", "127.0.0.1:9780"],
            )
            .unwrap()
    }

    pub fn boot(&self) -> twinwall_image::slot::BootState {
        use twinwall_image::slot::SlotControl;
        twinwall_image::slot::GrubenvFile::new(self.esp.join("grub/grubenv"))
            .state()
            .unwrap()
    }
}
