//! The measurement behind the ctnetlink codec decision (docs/sync.md): decode the same
//! 100k conntrack messages (TCP with window-tracking state, half SNATed, like a dump reply)
//! with our codec and with `netlink-packet-netfilter` 0.4, and report what each extracts.

use std::time::Instant;

use netlink_packet_core::NetlinkMessage;
use netlink_packet_netfilter::NetfilterMessage;
use twinwall_sync::ctnetlink::{Builder, Message, parse_messages};
use twinwall_sync::entry::{Entry, IPS_ASSURED, IPS_SEEN_REPLY, L4, TcpInfo, Tuple};

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let mut b = Builder::new();
    for i in 0..n {
        let port = 1024 + (i % 60000) as u16;
        let c = format!("192.0.2.{}", 1 + i / 60000).parse().unwrap();
        let s = "198.51.100.10".parse().unwrap();
        let e = Entry {
            orig: Tuple {
                src: c,
                dst: s,
                l4: L4::Tcp {
                    sport: port,
                    dport: 443,
                },
            },
            reply: Tuple {
                src: s,
                dst: c,
                l4: L4::Tcp {
                    sport: 443,
                    dport: port,
                },
            },
            status: IPS_SEEN_REPLY | IPS_ASSURED,
            timeout: 432000,
            mark: 0,
            zone: 0,
            tcp: Some(TcpInfo {
                state: 3,
                wscale_orig: 7,
                wscale_reply: 7,
                flags_orig: 0x23,
                flags_reply: 0x23,
            }),
        };
        b.create(&e, i as u32, false);
    }
    let buf = b.bytes().to_vec();
    let mut best = [f64::MAX; 2];
    let mut counts = [0usize; 2];
    for _ in 0..5 {
        let t = Instant::now();
        let ours = parse_messages(&buf)
            .filter(|m| matches!(m, Ok(Message::Conntrack { entry: Some(_), .. })))
            .count();
        best[0] = best[0].min(t.elapsed().as_secs_f64());
        counts[0] = ours;
        let t = Instant::now();
        let mut off = 0;
        let mut theirs = 0;
        while off < buf.len() {
            let len = u32::from_ne_bytes(buf[off..off + 4].try_into().unwrap()) as usize;
            if NetlinkMessage::<NetfilterMessage>::deserialize(&buf[off..off + len]).is_ok() {
                theirs += 1;
            }
            off += len;
        }
        best[1] = best[1].min(t.elapsed().as_secs_f64());
        counts[1] = theirs;
    }
    println!(
        "ctnetlink decode of {n} TCP messages ({} bytes), best of 5",
        buf.len()
    );
    println!(
        "  twinwall codec (flat Entry)        {:>8.1} ms  {} entries",
        best[0] * 1e3,
        counts[0]
    );
    println!(
        "  netlink-packet-netfilter 0.4 (tree) {:>8.1} ms  {} messages",
        best[1] * 1e3,
        counts[1]
    );
    println!("  ratio {:.2}x", best[1] / best[0]);
}
