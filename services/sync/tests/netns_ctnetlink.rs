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

/// A burst that is queued in the event socket is read many messages per system call
/// (`recvmmsg`), and every event arrives once: 5,000 new entries, each its own netlink
/// datagram, in at most a few dozen calls (a plain `recv` takes one call per event).
#[test]
fn a_queued_burst_is_read_many_events_per_call() {
    let ns = Netns::new("ctmmsg").unwrap();
    let mut ev = ns.enter(|| Events::subscribe(16 << 20).unwrap()).unwrap();
    let burst = twinwall_sync::lab::udp_entries(
        5000,
        |k| format!("192.0.2.{}", 10 + k).parse().unwrap(),
        "198.51.100.10".parse().unwrap(),
    );
    let r = ns
        .enter(move || Conntrack::open().unwrap().commit(&burst).unwrap())
        .unwrap();
    assert_eq!(r.failed, 0, "{r:?}");
    let mut got = Vec::new();
    for _ in 0..200 {
        ev.recv(&mut got).unwrap();
        if got.len() >= 5000 {
            break;
        }
    }
    assert_eq!(got.len(), 5000, "every event once");
    assert!(got.iter().all(|e| e.kind == EventKind::New));
    let mut ports: Vec<u16> = got
        .iter()
        .filter_map(|e| e.entry.orig.l4.ports().map(|p| p.0))
        .collect();
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), 5000, "no event twice, none lost");
    let (calls, messages) = ev.intake_stats();
    assert_eq!(messages, 5000);
    assert!(
        calls <= 5000 / 64,
        "{calls} receive calls for {messages} queued events"
    );
}

/// A second commit of entries that are already in the kernel (a node that was master for
/// a moment and committed them, then backup, then master again) updates them in place:
/// nothing fails (the kernel refuses NAT attributes on an existing entry, EOPNOTSUPP), the
/// timeouts and the TCP state are the new ones, and no entry appears twice.
#[test]
fn a_second_commit_updates_the_entries_already_in_the_kernel() {
    let ns = Netns::new("ctre").unwrap();
    ns.run("modprobe", ["nf_nat"]).ok();
    let snat = Entry {
        orig: tuple_udp("192.0.2.10", 40002, "198.51.100.10", 53),
        reply: tuple_udp("198.51.100.10", 53, "203.0.113.1", 50002),
        status: 0,
        timeout: 100,
        mark: 0,
        zone: 0,
        tcp: None,
    };
    let plain = Entry {
        orig: tuple_udp("192.0.2.11", 40003, "198.51.100.10", 53),
        reply: tuple_udp("198.51.100.10", 53, "192.0.2.11", 40003),
        ..snat
    };
    let first = vec![snat, plain];
    let report = ns
        .enter(move || Conntrack::open().unwrap().commit(&first).unwrap())
        .unwrap();
    assert_eq!(report.failed, 0, "first commit: {report:?}");
    let second = vec![
        Entry {
            timeout: 3000,
            ..snat
        },
        Entry {
            timeout: 3000,
            ..plain
        },
    ];
    let report = ns
        .enter(move || Conntrack::open().unwrap().commit(&second).unwrap())
        .unwrap();
    assert_eq!(report.entries, 2, "{report:?}");
    assert_eq!(report.failed, 0, "second commit: {report:?}");
    assert_eq!(report.existing, 2, "{report:?}");
    let back = dump(&ns);
    assert_eq!(back.len(), 2, "{back:?}");
    for sport in [40002, 40003] {
        let e = find(&back, sport);
        assert!(e.timeout > 2000, "timeout not updated: {e:?}");
    }
    assert_eq!(find(&back, 40002).reply, snat.reply, "NAT binding kept");
    // A pipelined commit (above 4096 entries) of which every other entry is already
    // there, fed from an iterator as the takeover does: the errors name the right
    // entries through their sequence numbers (positions), so exactly those are updated.
    let many: Vec<Entry> = twinwall_sync::lab::udp_entries(
        10_000,
        |k| format!("192.0.2.{}", 100 + k).parse().unwrap(),
        "198.51.100.20".parse().unwrap(),
    )
    .into_iter()
    .map(|e| Entry { timeout: 3000, ..e })
    .collect();
    let every_other: Vec<Entry> = many
        .iter()
        .step_by(2)
        .map(|e| Entry { timeout: 100, ..*e })
        .collect();
    let r = ns
        .enter(move || Conntrack::open().unwrap().commit(&every_other).unwrap())
        .unwrap();
    assert_eq!((r.failed, r.existing), (0, 0), "{r:?}");
    let all = many.clone();
    let r = ns
        .enter(move || {
            Conntrack::open()
                .unwrap()
                .commit_from(all.len(), || all.iter().copied())
                .unwrap()
        })
        .unwrap();
    assert_eq!(
        (r.entries, r.failed, r.existing),
        (10_000, 0, 5_000),
        "{r:?}"
    );
    let back = dump(&ns);
    assert_eq!(back.len(), 10_002);
    let stale: Vec<&Entry> = back
        .iter()
        .filter(|e| e.orig.dst.to_string() == "198.51.100.20" && e.timeout < 2000)
        .collect();
    assert!(
        stale.is_empty(),
        "{} entries not updated, e.g. {:?}",
        stale.len(),
        stale.first()
    );
}

fn tuple_udp(src: &str, sport: u16, dst: &str, dport: u16) -> twinwall_sync::entry::Tuple {
    twinwall_sync::entry::Tuple {
        src: src.parse().unwrap(),
        dst: dst.parse().unwrap(),
        l4: L4::Udp { sport, dport },
    }
}

/// Entries committed while event delivery is paused (what a takeover does) still report
/// their later changes and their end once delivery resumes: the new master must hear
/// about the flows it took over.
#[test]
fn entries_committed_while_paused_still_report_events() {
    let ns = Netns::new("ctpause").unwrap();
    let mut ev = ns
        .enter(|| {
            twinwall_sync::kernel::ensure_event_extension().unwrap();
            Events::subscribe(1 << 20).unwrap()
        })
        .unwrap();
    let entry = Entry {
        orig: tuple_udp("192.0.2.10", 5001, "198.51.100.10", 53),
        reply: tuple_udp("198.51.100.10", 53, "192.0.2.10", 5001),
        status: 0,
        timeout: 100,
        mark: 0,
        zone: 0,
        tcp: None,
    };
    ev.pauser().pause();
    let r = ns
        .enter(move || Conntrack::open().unwrap().commit(&[entry]).unwrap())
        .unwrap();
    assert_eq!(r.failed, 0, "{r:?}");
    ev.pauser().resume().unwrap();
    let base = [
        "-p",
        "udp",
        "-s",
        "192.0.2.10",
        "-d",
        "198.51.100.10",
        "--sport",
        "5001",
        "--dport",
        "53",
    ];
    let mut cmd = vec!["conntrack", "-U"];
    cmd.extend_from_slice(&base);
    cmd.extend_from_slice(&["-m", "9"]);
    ns.run(cmd[0], &cmd[1..]).unwrap();
    let mut cmd = vec!["conntrack", "-D"];
    cmd.extend_from_slice(&base);
    ns.run(cmd[0], &cmd[1..]).unwrap();
    let mut got = Vec::new();
    for _ in 0..10 {
        ev.recv(&mut got).unwrap();
        if got.len() >= 2 {
            break;
        }
    }
    let kinds: Vec<_> = got.iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        vec![EventKind::Update, EventKind::Destroy],
        "{got:?}"
    );
}
