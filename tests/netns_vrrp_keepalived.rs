//! Interop with keepalived (Debian, `vrrp_version 3`) in network namespaces (root): its
//! adverts decode exactly, and twinwall and keepalived run as the two routers of one
//! VRID pair, each in both roles.

mod netns_vrrp_support;

use std::fs::File;
use std::os::fd::AsFd;
use std::time::Duration;

use netns_vrrp_support::*;
use twinwall_testkit::{Netns, require_root, wait_for};
use twinwall_vrrp::packet::{self, decode_ipv4, decode_ipv6};

const S: fn(u64) -> Duration = Duration::from_secs;

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
        // The bytes as captured, for the codec's fixtures (services/vrrp/tests/codec.rs).
        println!(
            "captured from keepalived ({}): {}",
            if v6 { "IPv6 payload" } else { "IPv4 packet" },
            bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
        );
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
