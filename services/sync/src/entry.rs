//! The conntrack entry model that is replicated: tuples, status, timeout, mark, zone and the
//! TCP window-tracking state; the ignore filter derived from the config; the per-entry
//! hash that the consistency digest sums.

use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// Layer-4 part of a tuple.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum L4 {
    /// TCP ports.
    Tcp {
        /// Source port.
        sport: u16,
        /// Destination port.
        dport: u16,
    },
    /// UDP ports.
    Udp {
        /// Source port.
        sport: u16,
        /// Destination port.
        dport: u16,
    },
    /// ICMP (IPv4) identifier, type and code.
    Icmp {
        /// Echo identifier.
        id: u16,
        /// ICMP type.
        r#type: u8,
        /// ICMP code.
        code: u8,
    },
    /// ICMPv6 identifier, type and code.
    Icmpv6 {
        /// Echo identifier.
        id: u16,
        /// ICMPv6 type.
        r#type: u8,
        /// ICMPv6 code.
        code: u8,
    },
}

impl L4 {
    /// IP protocol number.
    pub fn proto(&self) -> u8 {
        match self {
            L4::Tcp { .. } => 6,
            L4::Udp { .. } => 17,
            L4::Icmp { .. } => 1,
            L4::Icmpv6 { .. } => 58,
        }
    }

    /// (source, destination) ports for TCP/UDP.
    pub fn ports(&self) -> Option<(u16, u16)> {
        match *self {
            L4::Tcp { sport, dport } | L4::Udp { sport, dport } => Some((sport, dport)),
            _ => None,
        }
    }
}

/// One direction of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Tuple {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// Protocol and ports / ICMP fields.
    pub l4: L4,
}

/// TCP window-tracking state (CTA_PROTOINFO_TCP), enough for the kernel to keep tracking a
/// flow mid-stream after the entry is injected on the other node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TcpInfo {
    /// `enum tcp_conntrack` (3 = ESTABLISHED).
    pub state: u8,
    /// Window scale of the original direction.
    pub wscale_orig: u8,
    /// Window scale of the reply direction.
    pub wscale_reply: u8,
    /// `IP_CT_TCP_FLAG_*` of the original direction.
    pub flags_orig: u8,
    /// `IP_CT_TCP_FLAG_*` of the reply direction.
    pub flags_reply: u8,
}

/// The key of an entry: its original tuple plus the conntrack zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Key {
    /// Original-direction tuple.
    pub orig: Tuple,
    /// Conntrack zone (0 by default).
    pub zone: u16,
}

/// A replicated conntrack entry. NAT bindings are carried by the reply tuple (a reply tuple
/// that is not the inverse of the original one means SNAT and/or DNAT).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Entry {
    /// Original-direction tuple.
    pub orig: Tuple,
    /// Reply-direction tuple.
    pub reply: Tuple,
    /// `IPS_*` status bits.
    pub status: u32,
    /// Seconds until the kernel expires the entry.
    pub timeout: u32,
    /// Connection mark.
    pub mark: u32,
    /// Conntrack zone.
    pub zone: u16,
    /// TCP state, for TCP entries.
    pub tcp: Option<TcpInfo>,
}

/// `IPS_SEEN_REPLY`.
pub const IPS_SEEN_REPLY: u32 = 1 << 1;
/// `IPS_ASSURED`.
pub const IPS_ASSURED: u32 = 1 << 2;
/// `IPS_CONFIRMED`.
pub const IPS_CONFIRMED: u32 = 1 << 3;
/// `IPS_FIXED_TIMEOUT`.
pub const IPS_FIXED_TIMEOUT: u32 = 1 << 10;

impl Entry {
    /// The cache key.
    pub fn key(&self) -> Key {
        Key {
            orig: self.orig,
            zone: self.zone,
        }
    }

    /// True when the original source was rewritten (reply destination differs).
    pub fn is_snat(&self) -> bool {
        self.orig.src != self.reply.dst
            || matches!((self.orig.l4.ports(), self.reply.l4.ports()), (Some((s, _)), Some((_, rd))) if s != rd)
    }

    /// True when the original destination was rewritten (reply source differs).
    pub fn is_dnat(&self) -> bool {
        self.orig.dst != self.reply.src
            || matches!((self.orig.l4.ports(), self.reply.l4.ports()), (Some((_, d)), Some((rs, _))) if d != rs)
    }

    /// The hash of the replicated identity of the entry (both tuples, zone and mark) that
    /// the consistency digest sums. Timeouts and TCP state move on their own and are left
    /// out. Both nodes run the same binary, so std's derived `Hash` feeding a fixed FNV-1a
    /// hasher gives the same value on both sides (std's `DefaultHasher` is randomly keyed
    /// per `RandomState`, hence the few lines of FNV here).
    pub fn digest_hash(&self) -> u64 {
        let mut h = Fnv1a::default();
        self.orig.hash(&mut h);
        self.reply.hash(&mut h);
        self.zone.hash(&mut h);
        self.mark.hash(&mut h);
        h.finish()
    }
}

/// FNV-1a 64: deterministic, keyless and fast for the small inputs hashed here.
#[derive(Debug)]
struct Fnv1a(u64);

impl Default for Fnv1a {
    fn default() -> Self {
        Fnv1a(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv1a {
    fn finish(&self) -> u64 {
        // Final avalanche (splitmix64) so that the sum of many hashes mixes all bits.
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// An order-independent digest of a set of entries: count and wrapping sum of hashes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Digest {
    /// Number of entries.
    pub count: u64,
    /// Wrapping sum of [`Entry::digest_hash`].
    pub sum: u64,
}

impl Digest {
    /// Adds one entry.
    pub fn add(&mut self, e: &Entry) {
        self.count += 1;
        self.sum = self.sum.wrapping_add(e.digest_hash());
    }
    /// Removes one entry (previously added).
    pub fn remove(&mut self, e: &Entry) {
        self.count -= 1;
        self.sum = self.sum.wrapping_sub(e.digest_hash());
    }
    /// The digest of a collection.
    pub fn of<'a>(entries: impl IntoIterator<Item = &'a Entry>) -> Digest {
        let mut d = Digest::default();
        for e in entries {
            d.add(e);
        }
        d
    }
}

/// Which entries are not replicated: anything from or to one of the nodes' own addresses
/// (`conntrack_ignore`, which includes the sync link).
#[derive(Debug, Clone, Default)]
pub struct Filter {
    ignore: HashSet<IpAddr>,
}

impl Filter {
    /// A filter ignoring these addresses.
    pub fn new(ignore: impl IntoIterator<Item = IpAddr>) -> Filter {
        Filter {
            ignore: ignore.into_iter().collect(),
        }
    }

    /// The filter for a node view: `conntrack_ignore` plus both ends of the sync link.
    pub fn from_view(view: &twinwall_config::NodeView) -> Filter {
        let mut f = Filter::new(view.conntrack_ignore.iter().copied());
        if let Some(s) = &view.sync {
            f.ignore.insert(s.local);
            f.ignore.insert(s.peer);
        }
        f
    }

    /// True when the entry is replicated.
    pub fn accepts(&self, e: &Entry) -> bool {
        !self.ignore.contains(&e.orig.src) && !self.ignore.contains(&e.orig.dst)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A TCP entry 192.0.2.10:sport -> 198.51.100.10:80, optionally SNATed to 203.0.113.1.
    pub(crate) fn tcp(sport: u16, snat: bool) -> Entry {
        let c: IpAddr = "192.0.2.10".parse().unwrap();
        let s: IpAddr = "198.51.100.10".parse().unwrap();
        let nat: IpAddr = "203.0.113.1".parse().unwrap();
        Entry {
            orig: Tuple {
                src: c,
                dst: s,
                l4: L4::Tcp { sport, dport: 80 },
            },
            reply: Tuple {
                src: s,
                dst: if snat { nat } else { c },
                l4: L4::Tcp {
                    sport: 80,
                    dport: sport,
                },
            },
            status: IPS_SEEN_REPLY | IPS_ASSURED | 8,
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
        }
    }

    #[test]
    fn nat_is_seen_from_the_tuples() {
        assert!(!tcp(1000, false).is_snat());
        assert!(!tcp(1000, false).is_dnat());
        assert!(tcp(1000, true).is_snat());
        assert!(!tcp(1000, true).is_dnat());
    }

    #[test]
    fn digest_is_order_independent_and_ignores_timeouts() {
        let a = tcp(1, false);
        let b = tcp(2, false);
        let c = tcp(3, true);
        let d1 = Digest::of([&a, &b, &c]);
        let d2 = Digest::of([&c, &a, &b]);
        assert_eq!(d1, d2);
        let mut a2 = a;
        a2.timeout = 5;
        assert_eq!(Digest::of([&a2, &b, &c]), d1);
        assert_ne!(Digest::of([&a, &b]), d1);
        let mut d = d1;
        d.remove(&c);
        assert_eq!(d, Digest::of([&a, &b]));
        let mut marked = a;
        marked.mark = 1;
        assert_ne!(Digest::of([&marked, &b, &c]), d1);
    }

    #[test]
    fn filter_ignores_own_addresses_on_either_side() {
        let f = Filter::new(["198.51.100.10".parse().unwrap()]);
        assert!(!f.accepts(&tcp(1, false)));
        let f = Filter::new(["192.0.2.99".parse().unwrap()]);
        assert!(f.accepts(&tcp(1, false)));
    }
}
