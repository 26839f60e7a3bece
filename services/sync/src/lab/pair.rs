//! The failover topology, built from network namespaces:
//!
//! ```text
//!  client 192.0.2.10 ──┐ br-in ┌── in  fw1 (.1)  out ──┐ br-out ┌── server 198.51.100.10
//!                      └───────┼── in  fw2 (.2)  out ──┼────────┘
//!                              │   fw1 sync ══ fw2 sync (203.0.113.1/.2, direct veth)
//!  VIPs: 192.0.2.254 (client gateway), 198.51.100.254 (server route back, SNAT address)
//! ```
//!
//! Both firewalls run the same minimal stateful ruleset: established/related accepted, new
//! connections only from inside (TCP only with a bare SYN, so a mid-stream packet without
//! synced state is dropped), everything else dropped; TCP to port 7001 and UDP to 7003 are
//! SNATed to the outside VIP. Failover is done by hand the way VRRP does it: the new
//! master's sync service commits its external cache, then the VIPs move and the
//! neighbours learn the new MACs.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Duration;

use twinwall_control::Request;

use super::{LabError, Netns};
use crate::core::{Role, Tuning};
use crate::entry::Filter;
use crate::service::{RoleChange, Service, ServiceError, Settings, Stopper};
use crate::wire::SyncKey;
use twinwall_testkit::veth;

/// The client's address.
pub const CLIENT: &str = "192.0.2.10";
/// The server's address.
pub const SERVER: &str = "198.51.100.10";
/// The inside VIP (client gateway).
pub const VIP_IN: &str = "192.0.2.254";
/// The outside VIP (server route back, SNAT address).
pub const VIP_OUT: &str = "198.51.100.254";
/// Echo ports: plain TCP, SNATed TCP, plain UDP, SNATed UDP.
pub const PORTS: [u16; 4] = [7000, 7001, 7002, 7003];
/// Sync link addresses of fw1, fw2.
pub const SYNC: [&str; 2] = ["203.0.113.1", "203.0.113.2"];
/// UDP port of the sync protocol.
pub const SYNC_PORT: u16 = 3780;

const RULESET: &str = r#"
table inet twfilter {
    chain forward {
        type filter hook forward priority 0; policy drop;
        ct state established,related accept
        iifname "in" oifname "out" tcp flags & (fin|syn|rst|ack) == syn ct state new accept
        iifname "in" oifname "out" meta l4proto { udp, icmp } ct state new accept
    }
}
table ip twnat {
    chain post {
        type nat hook postrouting priority 100; policy accept;
        oifname "out" tcp dport 7001 snat to 198.51.100.254
        oifname "out" udp dport 7003 snat to 198.51.100.254
    }
}
"#;

/// The namespaces of the topology; all are deleted on drop.
#[derive(Debug)]
pub struct Pair {
    /// The client host.
    pub client: Netns,
    /// The server host.
    pub server: Netns,
    /// fw1 and fw2.
    pub fw: [Netns; 2],
    /// Holds the two bridges.
    pub switch: Netns,
    /// Run directories of the sync services (control sockets).
    pub run_dirs: [PathBuf; 2],
    /// Which firewall holds the VIPs.
    pub master: usize,
    key: SyncKey,
}

/// A sync service running in a firewall namespace.
#[derive(Debug)]
pub struct SyncHandle {
    stopper: Stopper,
    thread: Option<std::thread::JoinHandle<Result<Result<(), ServiceError>, LabError>>>,
    /// Its control socket.
    pub socket: PathBuf,
}

impl SyncHandle {
    /// Stops the service and waits for it.
    pub fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        self.stopper.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// Sends a control request and returns the data.
    pub fn request(
        &self,
        req: &Request,
    ) -> Result<serde_json::Value, twinwall_control::ControlError> {
        twinwall_control::request(&self.socket, req, Duration::from_secs(30))
    }

    /// The service status as JSON.
    pub fn status(&self) -> serde_json::Value {
        self.request(&Request::new("status")).unwrap_or_default()
    }

    /// Changes the role; for master this returns after the commit.
    pub fn set_role(&self, role: Role) -> Result<RoleChange, twinwall_control::ControlError> {
        let v = self.request(&Request::with_args(
            "set-role",
            serde_json::json!({ "role": role }),
        ))?;
        Ok(serde_json::from_value(v).expect("role change JSON"))
    }
}

impl Drop for SyncHandle {
    fn drop(&mut self) {
        self.stop_inner();
    }
}

impl Pair {
    /// Builds the topology with the VIPs on fw1.
    pub fn new(tag: &str) -> Result<Pair, LabError> {
        let client = Netns::new(&format!("{tag}c"))?;
        let server = Netns::new(&format!("{tag}s"))?;
        let fw = [
            Netns::new(&format!("{tag}f1"))?,
            Netns::new(&format!("{tag}f2"))?,
        ];
        let switch = Netns::new(&format!("{tag}w"))?;
        for br in ["brin", "brout"] {
            switch.ip(["link", "add", br, "type", "bridge"])?;
            switch.ip(["link", "set", br, "up"])?;
        }
        let plug = |ns: &Netns, dev: &str, port: &str, br: &str| -> Result<(), LabError> {
            veth((ns, dev), (&switch, port))?;
            switch.ip(["link", "set", port, "master", br]).map(drop)
        };
        plug(&client, "eth0", "cl", "brin")?;
        plug(&server, "eth0", "sv", "brout")?;
        for (i, f) in fw.iter().enumerate() {
            plug(f, "in", &format!("f{i}in"), "brin")?;
            plug(f, "out", &format!("f{i}out"), "brout")?;
        }
        veth((&fw[0], "sync"), (&fw[1], "sync"))?;
        client.ip(["addr", "add", "192.0.2.10/24", "dev", "eth0"])?;
        client.ip(["route", "add", "default", "via", VIP_IN])?;
        server.ip(["addr", "add", "198.51.100.10/24", "dev", "eth0"])?;
        server.ip(["route", "add", "192.0.2.0/24", "via", VIP_OUT])?;
        for (i, f) in fw.iter().enumerate() {
            f.ip(["addr", "add", &format!("192.0.2.{}/24", i + 1), "dev", "in"])?;
            f.ip([
                "addr",
                "add",
                &format!("198.51.100.{}/24", i + 1),
                "dev",
                "out",
            ])?;
            f.ip(["addr", "add", &format!("{}/30", SYNC[i]), "dev", "sync"])?;
            f.sysctl("net.ipv4.ip_forward", "1")?;
            f.nft(RULESET)?;
        }
        let dir = std::env::temp_dir();
        let run_dirs = [
            dir.join(format!("{}-run", fw[0].name())),
            dir.join(format!("{}-run", fw[1].name())),
        ];
        let mut key = [0u8; 32];
        for (i, b) in key.iter_mut().enumerate() {
            *b = (std::process::id() as u8)
                .wrapping_mul(31)
                .wrapping_add(i as u8);
        }
        let pair = Pair {
            client,
            server,
            fw,
            switch,
            run_dirs,
            master: 0,
            key: SyncKey::from_bytes(key),
        };
        pair.vips_to(0)?;
        Ok(pair)
    }

    /// The nodes' own addresses (what `conntrack_ignore` holds for this topology).
    pub fn own_addresses() -> Vec<IpAddr> {
        [
            "192.0.2.1",
            "192.0.2.2",
            "198.51.100.1",
            "198.51.100.2",
            SYNC[0],
            SYNC[1],
        ]
        .iter()
        .map(|a| a.parse().expect("address"))
        .collect()
    }

    /// Settings of the sync service of firewall `i`.
    pub fn settings(&self, i: usize, role: Role) -> Settings {
        Settings {
            local: SYNC[i].parse().expect("address"),
            peer: SYNC[1 - i].parse().expect("address"),
            port: SYNC_PORT,
            filter: Filter::new(Pair::own_addresses()),
            key: self.key.clone(),
            run_dir: self.run_dirs[i].clone(),
            role,
            tuning: Tuning::default(),
            event_rcvbuf: 64 << 20,
            commit_rt_priority: crate::service::DEFAULT_COMMIT_RT_PRIORITY,
            rt_priority: crate::service::DEFAULT_RT_PRIORITY,
        }
    }

    /// Starts a sync service in firewall `i` (in-process, on threads inside its namespace).
    pub fn start_sync(&self, i: usize, settings: Settings) -> Result<SyncHandle, ServiceError> {
        let (tx, rx) = mpsc::channel();
        let thread = self.fw[i].thread(move || match Service::start(settings) {
            Ok(svc) => {
                let _ = tx.send(Ok(svc.stopper()));
                svc.run()
            }
            Err(e) => {
                let msg = e.to_string();
                let _ = tx.send(Err(e));
                Err(ServiceError::NoSync { node: msg })
            }
        });
        let stopper = rx.recv().expect("service thread answered")?;
        Ok(SyncHandle {
            stopper,
            thread: Some(thread),
            socket: twinwall_control::socket_path(&self.run_dirs[i], "sync"),
        })
    }

    /// Moves both VIPs to firewall `to` (removing them from the other one if it is
    /// reachable) and points the client's and server's neighbour entries at it, as the
    /// gratuitous ARPs of a VRRP takeover do.
    pub fn vips_to(&self, to: usize) -> Result<(), LabError> {
        let from = 1 - to;
        let _ = self.fw[from].ip(["addr", "del", "192.0.2.254/24", "dev", "in"]);
        let _ = self.fw[from].ip(["addr", "del", "198.51.100.254/24", "dev", "out"]);
        self.fw[to].ip(["addr", "add", "192.0.2.254/24", "dev", "in"])?;
        self.fw[to].ip(["addr", "add", "198.51.100.254/24", "dev", "out"])?;
        let mac_in = self.fw[to].mac("in")?;
        let mac_out = self.fw[to].mac("out")?;
        self.client.ip([
            "neigh",
            "replace",
            VIP_IN,
            "lladdr",
            &mac_in,
            "dev",
            "eth0",
            "nud",
            "permanent",
        ])?;
        self.server.ip([
            "neigh",
            "replace",
            VIP_OUT,
            "lladdr",
            &mac_out,
            "dev",
            "eth0",
            "nud",
            "permanent",
        ])?;
        Ok(())
    }

    /// Cuts firewall `i`'s inside and outside links (the master dies for the hosts).
    pub fn cut(&self, i: usize) -> Result<(), LabError> {
        self.switch
            .ip(["link", "set", &format!("f{i}in"), "down"])?;
        self.switch
            .ip(["link", "set", &format!("f{i}out"), "down"])?;
        Ok(())
    }

    /// Takes the sync link down or up (in both firewalls).
    pub fn sync_link(&self, up: bool) -> Result<(), LabError> {
        let state = if up { "up" } else { "down" };
        for f in &self.fw {
            f.ip(["link", "set", "sync", state])?;
        }
        Ok(())
    }

    /// Echo targets on the server: `tcp` TCP flows (every other one SNATed) and `udp` UDP
    /// flows (every other one SNATed).
    pub fn targets(tcp: usize, udp: usize) -> Vec<(super::flows::Proto, SocketAddr)> {
        use super::flows::Proto;
        let server: IpAddr = SERVER.parse().expect("address");
        let mut v = Vec::new();
        for i in 0..tcp {
            v.push((Proto::Tcp, SocketAddr::new(server, PORTS[i % 2])));
        }
        for i in 0..udp {
            v.push((Proto::Udp, SocketAddr::new(server, PORTS[2 + i % 2])));
        }
        v
    }

    /// Entries in firewall `i`'s kernel table.
    pub fn kernel_entries(&self, i: usize) -> usize {
        self.fw[i]
            .enter(|| {
                crate::kernel::Conntrack::open()
                    .and_then(|mut c| c.dump())
                    .map(|d| d.len())
                    .unwrap_or(0)
            })
            .unwrap_or(0)
    }
}

/// Removes the run directories.
impl Drop for Pair {
    fn drop(&mut self) {
        // The veths and bridges die with their namespaces (each `Netns` removes itself).
        for d in &self.run_dirs {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}
