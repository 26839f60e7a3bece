//! Round trips of the ctnetlink codec against the real kernel, each in its own netns
//! (conntrack tables are per namespace): entries made with `conntrack -I` are dumped and
//! decoded; entries created by our codec are read back by `conntrack -L`; events and
//! ENOBUFS are seen on the subscription.

use std::net::IpAddr;

use twinwall_sync::ctnetlink::EventKind;
use twinwall_sync::entry::{Entry, L4};
use twinwall_sync::kernel::{Conntrack, Events, KernelError};
use twinwall_testkit::Netns;

fn dump(ns: &Netns) -> Vec<Entry> {
    ns.enter(|| Conntrack::open().unwrap().dump().unwrap())
        .unwrap()
}

fn find(v: &[Entry], sport: u16) -> Entry {
    *v.iter()
        .find(|e| e.orig.l4.ports().map(|p| p.0) == Some(sport))
        .unwrap_or_else(|| panic!("no entry with sport {sport} in {v:?}"))
}

#[test]
fn dump_decodes_entries_made_by_conntrack_tool() {
    let ns = Netns::new("ctdump").unwrap();
    ns.run(
        "conntrack",
        [
            "-I",
            "-p",
            "tcp",
            "-s",
            "192.0.2.10",
            "-d",
            "198.51.100.10",
            "--sport",
            "40000",
            "--dport",
            "80",
            "--state",
            "ESTABLISHED",
            "-t",
            "3600",
            "-u",
            "SEEN_REPLY,ASSURED",
            "-m",
            "42",
        ],
    )
    .unwrap();
    // SNATed: reply goes to 203.0.113.1:50000.
    ns.run(
        "conntrack",
        [
            "-I",
            "-p",
            "udp",
            "-s",
            "192.0.2.10",
            "-d",
            "198.51.100.10",
            "--sport",
            "40001",
            "--dport",
            "53",
            "-t",
            "100",
            "-r",
            "198.51.100.10",
            "-q",
            "203.0.113.1",
            "--reply-port-src",
            "53",
            "--reply-port-dst",
            "50000",
        ],
    )
    .unwrap();
    ns.run(
        "conntrack",
        [
            "-I",
            "-p",
            "icmpv6",
            "-s",
            "2001:db8::1",
            "-d",
            "2001:db8:1::1",
            "--icmpv6-type",
            "128",
            "--icmpv6-code",
            "0",
            "--icmpv6-id",
            "77",
            "-t",
            "30",
        ],
    )
    .unwrap();
    let v = dump(&ns);
    assert_eq!(v.len(), 3, "{v:?}");
    let t = find(&v, 40000);
    assert_eq!(t.orig.src, "192.0.2.10".parse::<IpAddr>().unwrap());
    assert_eq!(
        t.orig.l4,
        L4::Tcp {
            sport: 40000,
            dport: 80
        }
    );
    assert_eq!(
        t.reply.l4,
        L4::Tcp {
            sport: 80,
            dport: 40000
        }
    );
    assert_eq!(t.mark, 42);
    assert_eq!(t.tcp.unwrap().state, 3, "ESTABLISHED");
    assert!(t.timeout > 3500 && t.timeout <= 3600);
    assert!(!t.is_snat());
    let u = find(&v, 40001);
    assert!(u.is_snat());
    assert_eq!(u.reply.dst, "203.0.113.1".parse::<IpAddr>().unwrap());
    assert_eq!(
        u.reply.l4,
        L4::Udp {
            sport: 53,
            dport: 50000
        }
    );
    let i = v
        .iter()
        .find(|e| matches!(e.orig.l4, L4::Icmpv6 { .. }))
        .unwrap();
    assert_eq!(
        i.orig.l4,
        L4::Icmpv6 {
            id: 77,
            r#type: 128,
            code: 0
        }
    );
}

#[test]
fn committed_entries_are_in_the_kernel_with_nat_and_tcp_state() {
    let src = Netns::new("ctsrc").unwrap();
    let dst = Netns::new("ctdst").unwrap();
    src.run("modprobe", ["nf_nat"]).ok();
    src.run(
        "conntrack",
        [
            "-I",
            "-p",
            "tcp",
            "-s",
            "192.0.2.10",
            "-d",
            "198.51.100.10",
            "--sport",
            "40000",
            "--dport",
            "443",
            "--state",
            "ESTABLISHED",
            "-t",
            "3600",
            "-u",
            "SEEN_REPLY,ASSURED",
            "-r",
            "198.51.100.10",
            "-q",
            "203.0.113.1",
            "--reply-port-src",
            "443",
            "--reply-port-dst",
            "61000",
        ],
    )
    .unwrap();
    src.run(
        "conntrack",
        [
            "-I",
            "-p",
            "icmp",
            "-s",
            "192.0.2.10",
            "-d",
            "198.51.100.10",
            "--icmp-type",
            "8",
            "--icmp-code",
            "0",
            "--icmp-id",
            "9",
            "-t",
            "30",
        ],
    )
    .unwrap();
    let entries = dump(&src);
    assert_eq!(entries.len(), 2);
    let report = dst
        .enter(move || Conntrack::open().unwrap().commit(&entries).unwrap())
        .unwrap();
    assert_eq!(report.entries, 2);
    assert_eq!(report.failed, 0, "{report:?}");
    let back = dump(&dst);
    assert_eq!(back.len(), 2, "{back:?}");
    let t = find(&back, 40000);
    let orig = find(&dump(&src), 40000);
    assert_eq!(t.orig, orig.orig);
    assert_eq!(t.reply, orig.reply, "NAT binding preserved");
    assert_eq!(t.tcp.unwrap().state, 3);
    let listed = dst.run("conntrack", ["-L"]).unwrap();
    assert!(listed.contains("dport=61000"), "{listed}");
    assert!(listed.contains("ASSURED"), "{listed}");
}

#[test]
fn events_report_new_update_and_destroy() {
    let ns = Netns::new("ctev").unwrap();
    let mut ev = ns.enter(|| Events::subscribe(1 << 20).unwrap()).unwrap();
    assert!(ev.rcvbuf() >= 1 << 20);
    let args = [
        "-p",
        "udp",
        "-s",
        "192.0.2.10",
        "-d",
        "198.51.100.10",
        "--sport",
        "5000",
        "--dport",
        "53",
        "-t",
        "100",
    ];
    let mut cmd = vec!["conntrack", "-I"];
    cmd.extend_from_slice(&args);
    ns.run(cmd[0], &cmd[1..]).unwrap();
    let mut cmd = vec!["conntrack", "-U"];
    cmd.extend_from_slice(&args[..10]);
    cmd.extend_from_slice(&["-m", "7"]);
    ns.run(cmd[0], &cmd[1..]).unwrap();
    let mut cmd = vec!["conntrack", "-D"];
    cmd.extend_from_slice(&args[..10]);
    ns.run(cmd[0], &cmd[1..]).unwrap();
    let mut got = Vec::new();
    for _ in 0..20 {
        ev.recv(&mut got).unwrap();
        if got.len() >= 3 {
            break;
        }
    }
    let kinds: Vec<_> = got.iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        vec![EventKind::New, EventKind::Update, EventKind::Destroy]
    );
    assert_eq!(got[1].entry.mark, 7);
}

#[test]
fn a_burst_into_a_small_buffer_is_reported_as_overrun() {
    let ns = Netns::new("ctenobufs").unwrap();
    let mut ev = ns.enter(|| Events::subscribe(4096).unwrap()).unwrap();
    // A burst of entries created by one batched commit overflows a 4 KiB buffer.
    let base = Entry {
        orig: twinwall_sync::entry::Tuple {
            src: "192.0.2.10".parse().unwrap(),
            dst: "198.51.100.10".parse().unwrap(),
            l4: L4::Udp {
                sport: 0,
                dport: 53,
            },
        },
        reply: twinwall_sync::entry::Tuple {
            src: "198.51.100.10".parse().unwrap(),
            dst: "192.0.2.10".parse().unwrap(),
            l4: L4::Udp {
                sport: 53,
                dport: 0,
            },
        },
        status: 0,
        timeout: 60,
        mark: 0,
        zone: 0,
        tcp: None,
    };
    let burst: Vec<Entry> = (1..=2000u16)
        .map(|p| {
            let mut e = base;
            e.orig.l4 = L4::Udp {
                sport: p,
                dport: 53,
            };
            e.reply.l4 = L4::Udp {
                sport: 53,
                dport: p,
            };
            e
        })
        .collect();
    let r = ns
        .enter(move || Conntrack::open().unwrap().commit(&burst).unwrap())
        .unwrap();
    assert_eq!(r.failed, 0);
    let mut got = Vec::new();
    let mut overrun = false;
    for _ in 0..5000 {
        match ev.recv(&mut got) {
            Ok(()) => {}
            Err(KernelError::Overrun) => {
                overrun = true;
                break;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert!(overrun, "no ENOBUFS after {} events", got.len());
    assert!(got.len() < 2000);
}
