//! Interop with keepalived (Debian, `vrrp_version 3`) in network namespaces (root): its
//! adverts decode exactly, and twinwall and keepalived run as the two routers of one
//! VRID pair, each in both roles.

mod netns_vrrp_support;

use std::fs::File;
use std::os::fd::AsFd;
use std::process::{Command, Stdio};
use std::time::Duration;

use netns_vrrp_support::*;
use twinwall_testkit::{Netns, Spawned, require_root, wait_for};
use twinwall_vrrp::packet::{self, decode_ipv4, decode_ipv6};

const S: fn(u64) -> Duration = Duration::from_secs;

/// A keepalived sync group equivalent to the seed pair's group `edge`.
fn keepalived_conf(priority: u8, advert_s: &str, v6: bool) -> String {
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

struct Keepalived {
    proc: Option<Spawned>,
}

fn start_keepalived(p: &Pair, i: usize, conf: &str) -> Keepalived {
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
    }
}

impl Keepalived {
    fn stop(&mut self) {
        if let Some(p) = self.proc.take() {
            Command::new("kill")
                .args(["-TERM", &p.id().to_string()])
                .status()
                .unwrap();
            p.wait_timeout(S(10));
        }
    }
}

impl Drop for Keepalived {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Receives one VRRP packet on a raw socket inside `ns` (a thread that enters the
/// namespace); returns the IPv4 packet bytes or the IPv6 payload with its addresses.
fn capture(ns: &Netns, v6: bool) -> Result<packet::Received, String> {
    let path = format!("/run/netns/{}", ns.name());
    std::thread::spawn(move || {
        let f = File::open(&path).map_err(|e| e.to_string())?;
        nix::sched::setns(f.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| e.to_string())?;
        let (dom, group) = if v6 {
            (socket2::Domain::IPV6, "ff02::12")
        } else {
            (socket2::Domain::IPV4, "224.0.0.18")
        };
        let s = socket2::Socket::new(dom, socket2::Type::RAW, Some(socket2::Protocol::from(112)))
            .map_err(|e| e.to_string())?;
        s.bind_device(Some(b"eth0")).map_err(|e| e.to_string())?;
        let idx = nix::net::if_::if_nametoindex("eth0").map_err(|e| e.to_string())?;
        if v6 {
            s.join_multicast_v6(&group.parse().unwrap(), idx)
                .map_err(|e| e.to_string())?;
        } else {
            s.join_multicast_v4_n(
                &group.parse().unwrap(),
                &socket2::InterfaceIndexOrAddress::Index(idx),
            )
            .map_err(|e| e.to_string())?;
        }
        s.set_read_timeout(Some(S(5))).map_err(|e| e.to_string())?;
        let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 2048];
        let (n, from) = s.recv_from(&mut buf).map_err(|e| e.to_string())?;
        // SAFETY: recv_from initialised the first n bytes.
        let bytes: Vec<u8> = buf[..n]
            .iter()
            .map(|b| unsafe { b.assume_init() })
            .collect();
        if v6 {
            let src = from.as_socket_ipv6().ok_or("no v6 source")?.ip().to_owned();
            // A multicast advert for ff02::12; raw IPv6 sockets do not show the hop limit
            // without ancillary data, the service checks that.
            decode_ipv6(&bytes, src, group.parse().unwrap(), 255).map_err(|e| e.to_string())
        } else {
            decode_ipv4(&bytes).map_err(|e| e.to_string())
        }
    })
    .join()
    .map_err(|_| "capture thread panicked".to_string())?
}

#[test]
fn keepalived_v3_adverts_decode_exactly() {
    if !require_root() {
        return;
    }
    let p = Pair::new("advert_interval_ms = 100\npreempt = true");
    // IPv6 needs addresses on fw1's side for keepalived's link-local source; the kernel
    // gives eth0 one when it comes up.
    let mut ka = start_keepalived(&p, 1, &keepalived_conf(100, "0.1", true));
    let v4 = capture(p.ns(0), false).expect("IPv4 advert from keepalived");
    assert_eq!(v4.ttl, 255);
    assert_eq!(v4.src, "203.0.113.3".parse::<std::net::IpAddr>().unwrap());
    assert!(v4.advert.vrid == 51 || v4.advert.vrid == 52, "{v4:?}");
    let want = if v4.advert.vrid == 51 {
        VIP_OUT
    } else {
        VIP_IN
    };
    assert_eq!(
        v4.advert.addresses,
        vec![want.parse::<std::net::IpAddr>().unwrap()]
    );
    assert_eq!(v4.advert.max_advert_int_cs, 10);
    assert!(
        v4.advert.priority == 100 || v4.advert.priority == 0,
        "{v4:?}"
    );
    let v6 = capture(p.ns(0), true).expect("IPv6 advert from keepalived");
    assert_eq!(v6.advert.vrid, 51);
    assert_eq!(
        v6.advert.addresses,
        vec!["2001:db8:0:1::1".parse::<std::net::IpAddr>().unwrap()]
    );
    assert_eq!(v6.advert.max_advert_int_cs, 10);
    ka.stop();
}

#[test]
fn twinwall_and_keepalived_take_over_from_each_other() {
    if !require_root() {
        return;
    }
    // twinwall on fw1 (priority 200, no preempt so that it can also be the backup of a
    // running keepalived master), keepalived on fw2 (priority 100).
    let mut p = Pair::new("advert_interval_ms = 100\npreempt = false");
    let conf = keepalived_conf(100, "0.1", false);
    let mut ka = start_keepalived(&p, 1, &conf);
    assert!(
        p.wait_holder(1, S(10)),
        "keepalived alone did not become master"
    );
    // keepalived master, twinwall backup.
    p.start(0);
    assert!(
        wait_for(S(5), Duration::from_millis(20), || p.role(0) == "backup"),
        "{}",
        p.logs()
    );
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(p.holders(), vec![1], "one master at a time\n{}", p.logs());
    let st = p.status(0).unwrap();
    assert!(
        st["groups"][0]["routers"][0]["adverts_in"]
            .as_u64()
            .unwrap()
            > 5,
        "{st}"
    );
    assert_eq!(
        st["sockets"][0]["bad_packets"],
        serde_json::json!({}),
        "{st}"
    );
    // keepalived stops (priority-0 advert): twinwall takes over.
    ka.stop();
    assert!(
        p.wait_holder(0, S(5)),
        "twinwall did not take over from keepalived\n{}",
        p.logs()
    );
    // keepalived back as backup: twinwall stays master.
    let mut ka = start_keepalived(&p, 1, &conf);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(p.holders(), vec![0], "one master at a time\n{}", p.logs());
    // twinwall stops: keepalived takes over.
    assert!(p.stop(0).success());
    assert!(
        p.wait_holder(1, S(5)),
        "keepalived did not take over from twinwall\n{}",
        p.logs()
    );
    ka.stop();
}
