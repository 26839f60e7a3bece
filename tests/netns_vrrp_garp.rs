//! Gratuitous ARP after a step-down (root, netns): a node that leaves Master must stop
//! announcing the VIPs at once. The repeats of an announcement (`garp_count` every
//! `garp_interval_ms`) used to run in a task that nothing cancelled, so a node that was
//! master for a moment kept pointing the neighbours' caches at itself after the real master
//! had announced — the flows then went to the backup (the CI flake of
//! `netns_sync_vrrp::vrrp_failover_keeps_every_synced_flow`, the lab's "no re-announce
//! after a freeze"). The frames are captured in fw2's namespace, in the order fw2 sent them.

mod netns_vrrp_support;

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use netns_vrrp_support::*;
use twinwall_testkit::{Netns, require_root, wait_for};

const S: fn(u64) -> Duration = Duration::from_secs;
/// Long enough that fw1 takes over while fw2's announcement is still repeating.
const GARP_COUNT: u32 = 40;
const GARP_INTERVAL: Duration = Duration::from_millis(100);

/// A frame of interest on a link, in arrival order.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Frame {
    /// A VRRP advertisement.
    Advert {
        src: [u8; 6],
        vrid: u8,
        priority: u8,
    },
    /// A gratuitous ARP (sender IP = target IP).
    Garp { src: [u8; 6], ip: [u8; 4] },
}

/// An AF_PACKET capture of one namespace's links on a thread of its own.
struct Capture {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Vec<Frame>>>,
}

impl Capture {
    fn start(ns: &Netns) -> Capture {
        let fd: OwnedFd = ns
            .enter(|| {
                socket2::Socket::new(
                    socket2::Domain::PACKET,
                    socket2::Type::RAW,
                    Some(socket2::Protocol::from(i32::from(
                        (libc::ETH_P_ALL as u16).to_be(),
                    ))),
                )
                .map(OwnedFd::from)
            })
            .unwrap()
            .expect("AF_PACKET socket");
        let sock = socket2::Socket::from(fd);
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let s2 = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut frames = Vec::new();
            let mut buf = [0u8; 2048];
            while !s2.load(Ordering::Relaxed) {
                // SAFETY: recv into a buffer we own, of the length passed.
                let n =
                    unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
                if n <= 0 {
                    continue;
                }
                if let Some(f) = parse(&buf[..n as usize]) {
                    frames.push(f);
                }
            }
            frames
        });
        Capture {
            stop,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> Vec<Frame> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn parse(f: &[u8]) -> Option<Frame> {
    if f.len() < 14 {
        return None;
    }
    let src: [u8; 6] = f[6..12].try_into().ok()?;
    let p = &f[14..];
    match u16::from_be_bytes([f[12], f[13]]) {
        0x0806 if p.len() >= 28 => {
            let sip: [u8; 4] = p[14..18].try_into().ok()?;
            let tip: [u8; 4] = p[24..28].try_into().ok()?;
            (sip == tip).then_some(Frame::Garp { src, ip: sip })
        }
        0x0800 if p.len() >= 20 && p[9] == 112 => {
            let ihl = usize::from(p[0] & 0x0f) * 4;
            let v = p.get(ihl..ihl + 3)?;
            Some(Frame::Advert {
                src,
                vrid: v[1],
                priority: v[2],
            })
        }
        _ => None,
    }
}

fn mac_bytes(s: &str) -> [u8; 6] {
    let v: Vec<u8> = s
        .split(':')
        .map(|x| u8::from_str_radix(x, 16).unwrap())
        .collect();
    v.try_into().unwrap()
}

fn ip4(s: &str) -> [u8; 4] {
    s.parse::<std::net::Ipv4Addr>().unwrap().octets()
}

/// Checks the frames fw2 put on its links, in the order it sent them (a packet socket in
/// fw2's namespace sees outgoing frames at transmit): fw2 announced the VIPs, stepped down
/// (its first priority-0 advert) before its repeats were over, and announced nothing
/// after that.
fn check_fw2(frames: &[Frame], fw2: [[u8; 6]; 2], vips: [[u8; 4]; 2]) {
    let is_garp =
        |f: &Frame| matches!(f, Frame::Garp { src, ip } if fw2.contains(src) && vips.contains(ip));
    let step_down = frames
        .iter()
        .position(|f| matches!(f, Frame::Advert { src, priority: 0, .. } if fw2.contains(src)))
        .unwrap_or_else(|| panic!("fw2 sent no priority-0 advert (it never stepped down)"));
    let before = frames[..step_down].iter().filter(|f| is_garp(f)).count();
    let after = frames[step_down..].iter().filter(|f| is_garp(f)).count();
    assert!(
        before >= 2,
        "the capture saw {before} announcements of fw2 as master (expected one per VIP or more)"
    );
    assert!(
        before < 2 * GARP_COUNT as usize,
        "fw1 took over only after fw2's {GARP_COUNT} announcements were all out: \
         the test did not exercise a step-down during the repeats"
    );
    assert_eq!(
        after, 0,
        "fw2 sent {after} gratuitous ARPs for the VIPs after it left Master \
         ({before} before its priority-0 advert)"
    );
}

#[test]
fn no_gratuitous_arp_leaves_a_node_after_it_left_master() {
    if !require_root() {
        return;
    }
    let mut p = Pair::new(&format!(
        "advert_interval_ms = 100\npreempt = true\ngarp_count = {GARP_COUNT}\ngarp_interval_ms = {}",
        GARP_INTERVAL.as_millis()
    ));
    let (mac1, mac2) = (mac(p.ns(0), "eth1"), mac(p.ns(1), "eth1"));
    let (out1, out2) = (mac(p.ns(0), "eth0"), mac(p.ns(1), "eth0"));
    let capture = Capture::start(p.ns(1));

    // fw2 alone: it becomes master and starts repeating its announcement.
    p.start(1);
    assert!(
        p.wait_holder(1, S(10)),
        "fw2 never took the VIPs\n{}",
        p.logs()
    );
    let fw2_master = Instant::now();
    // The neighbours get entries for the VIPs (an announcement only updates an entry).
    assert!(ping(p.lab.ns("client"), VIP_IN), "{}", p.logs());
    assert!(ping(p.lab.ns("server"), VIP_OUT), "{}", p.logs());

    // fw1 (priority 200, preempt) takes over while fw2's repeats still run.
    p.start(0);
    assert!(p.wait_holder(0, S(10)), "fw1 never took over\n{}", p.logs());
    assert_eq!(p.role(1), "backup", "{}", p.logs());
    // Past the end of fw2's repeats (and fw1's first series), plus a margin.
    let end = fw2_master + GARP_INTERVAL * GARP_COUNT + Duration::from_millis(500);
    std::thread::sleep(end.saturating_duration_since(Instant::now()));
    let frames = capture.finish();
    check_fw2(
        &frames,
        [mac_bytes(&mac2), mac_bytes(&out2)],
        [ip4(VIP_IN), ip4(VIP_OUT)],
    );
    // The neighbours point at the master.
    assert!(
        wait_for(S(2), Duration::from_millis(20), || neigh(
            p.lab.ns("client"),
            VIP_IN
        )
        .as_deref()
            == Some(mac1.as_str())),
        "client's entry for {VIP_IN}: {:?}, fw1 is {mac1}",
        neigh(p.lab.ns("client"), VIP_IN)
    );
    assert_eq!(
        neigh(p.lab.ns("server"), VIP_OUT).as_deref(),
        Some(out1.as_str()),
        "server's entry for {VIP_OUT}"
    );
}
