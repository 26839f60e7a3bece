//! What the switch learns by looking at frames, without taking part: VRRP advertisements
//! (only a master sends them, RFC 5798 §6.4.3), ARP announcements (who claims an
//! address) and the addresses of other IPv4 packets (whom a host talks to: the server
//! answering the outside VIP, not the client, is the firewalls' SNAT). From these the lab tells who is master on each segment, when a VIP moved,
//! and whether two masters coexist (split brain). Pure parsing of Ethernet, IPv4, VRRP
//! and ARP headers.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// A frame the observer cares about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Seen {
    /// An IPv4 VRRP advertisement.
    Advert {
        /// Virtual router id.
        vrid: u8,
        /// Advertised priority (0: the master is leaving).
        priority: u8,
        /// Source address.
        source: Ipv4Addr,
    },
    /// Any other IPv4 packet.
    Ipv4 {
        /// Source address.
        source: Ipv4Addr,
        /// Destination address.
        destination: Ipv4Addr,
    },
    /// An ARP request or reply; `sender` is the address it claims.
    Arp {
        /// Sender protocol address.
        sender: Ipv4Addr,
        /// Whether it is gratuitous (sender = target).
        gratuitous: bool,
    },
}

/// Classifies a frame (untagged Ethernet II); anything else is `None`.
pub fn classify(frame: &[u8]) -> Option<Seen> {
    let ethertype = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
    let p = frame.get(14..)?;
    match ethertype {
        0x0800 => {
            let ihl = usize::from(p.first()? & 0x0f) * 4;
            if p.first()? >> 4 != 4 || ihl < 20 || p.len() < ihl {
                return None;
            }
            let source = Ipv4Addr::new(p[12], p[13], p[14], p[15]);
            if p[9] != 112 {
                return Some(Seen::Ipv4 {
                    source,
                    destination: Ipv4Addr::new(p[16], p[17], p[18], p[19]),
                });
            }
            let v = p.get(ihl..ihl + 8)?;
            // Version 2 or 3, type 1 (advertisement).
            if v[0] & 0x0f != 1 || !matches!(v[0] >> 4, 2 | 3) {
                return None;
            }
            Some(Seen::Advert {
                vrid: v[1],
                priority: v[2],
                source,
            })
        }
        0x0806 => {
            let a = p.get(..28)?;
            // Ethernet/IPv4 ARP only.
            if a[0..2] != [0, 1] || a[2..4] != [8, 0] {
                return None;
            }
            let sender = Ipv4Addr::new(a[14], a[15], a[16], a[17]);
            let target = Ipv4Addr::new(a[24], a[25], a[26], a[27]);
            Some(Seen::Arp {
                sender,
                gratuitous: sender == target,
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eth(ethertype: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0x01, 0, 0x5e, 0, 0, 0x12, 0x52, 0x54, 0, 0, 0, 1];
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn reads_a_vrrpv3_advert() {
        // IPv4 header (proto 112, 192.0.2.1 -> 224.0.0.18) + VRRPv3 advert vrid 52 prio 200.
        let mut ip = vec![
            0x45, 0, 0, 32, 0, 0, 0, 0, 255, 112, 0, 0, 192, 0, 2, 1, 224, 0, 0, 18,
        ];
        ip.extend_from_slice(&[0x31, 52, 200, 1, 0, 10, 0, 0, 198, 51, 100, 1]);
        assert_eq!(
            classify(&eth(0x0800, &ip)),
            Some(Seen::Advert {
                vrid: 52,
                priority: 200,
                source: Ipv4Addr::new(192, 0, 2, 1)
            })
        );
        ip[9] = 6; // TCP
        assert_eq!(
            classify(&eth(0x0800, &ip)),
            Some(Seen::Ipv4 {
                source: Ipv4Addr::new(192, 0, 2, 1),
                destination: Ipv4Addr::new(224, 0, 0, 18)
            })
        );
        assert_eq!(classify(&eth(0x0800, &ip[..12])), None);
    }

    #[test]
    fn reads_a_gratuitous_arp_and_ignores_short_frames() {
        let mut arp = vec![0, 1, 8, 0, 6, 4, 0, 1];
        arp.extend_from_slice(&[0x52, 0x54, 0, 0, 0, 1, 198, 51, 100, 1]);
        arp.extend_from_slice(&[0, 0, 0, 0, 0, 0, 198, 51, 100, 1]);
        assert_eq!(
            classify(&eth(0x0806, &arp)),
            Some(Seen::Arp {
                sender: Ipv4Addr::new(198, 51, 100, 1),
                gratuitous: true
            })
        );
        assert_eq!(classify(&eth(0x0806, &arp[..20])), None);
        assert_eq!(classify(&[0u8; 13]), None);
    }
}
