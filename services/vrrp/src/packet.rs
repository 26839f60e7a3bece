//! The VRRPv3 advertisement codec (RFC 5798 §5) and receive validation (§7.1).
//!
//! The checksum covers a pseudo-header for both families: RFC 5798 §5.2.8 uses the IPv6
//! pseudo-header of RFC 8200 §8.1 and, for IPv4, the IPv4 pseudo-header (src, dst, zero,
//! protocol 112, length) — unlike VRRPv2. Decoding never panics: every malformed packet
//! becomes a [`DecodeError`] whose [`DecodeError::reason`] is the counter it is filed under.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

/// IP protocol number of VRRP.
pub const IPPROTO_VRRP: u8 = 112;
/// IPv4 multicast group of VRRP.
pub const GROUP_V4: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 18);
/// IPv6 multicast group of VRRP.
pub const GROUP_V6: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0x12);
/// Length of the fixed VRRP header.
pub const HEADER_LEN: usize = 8;

/// One VRRPv3 advertisement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Advert {
    /// Virtual router id.
    pub vrid: u8,
    /// Sender priority (0: the master is stopping).
    pub priority: u8,
    /// Max Advertise Interval in centiseconds (12 bits).
    pub max_advert_int_cs: u16,
    /// The virtual addresses, all of one family.
    pub addresses: Vec<IpAddr>,
}

/// Why a received packet was dropped. The variants are the bad-packet counters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Shorter than its headers or its address list.
    #[error("truncated packet: {len} bytes, need {need}")]
    Truncated {
        /// Bytes received.
        len: usize,
        /// Bytes needed.
        need: usize,
    },
    /// The IPv4 header is not a valid VRRP carrier.
    #[error("bad IPv4 header: {what}")]
    BadIpHeader {
        /// What is wrong.
        what: &'static str,
    },
    /// §7.1: TTL / hop limit must be 255 (the packet may have been routed).
    #[error("TTL/hop limit {ttl}, must be 255")]
    BadTtl {
        /// The received TTL.
        ttl: u8,
    },
    /// §7.1: version must be 3.
    #[error("VRRP version {version}, only 3 is supported")]
    BadVersion {
        /// The received version.
        version: u8,
    },
    /// §7.1: type must be 1 (ADVERTISEMENT).
    #[error("VRRP type {kind}, only 1 (advertisement) exists")]
    BadType {
        /// The received type.
        kind: u8,
    },
    /// §7.1: checksum mismatch.
    #[error("checksum mismatch: got {got:#06x}, computed {want:#06x}")]
    BadChecksum {
        /// Checksum in the packet.
        got: u16,
        /// Checksum computed.
        want: u16,
    },
    /// §7.1: the VRID is not configured on this interface.
    #[error("VRID {vrid} is not configured here")]
    UnknownVrid {
        /// The received VRID.
        vrid: u8,
    },
    /// §7.1: the address count does not match the packet length.
    #[error("address count {count} does not match {len} bytes of addresses")]
    BadLength {
        /// Count field.
        count: u8,
        /// Bytes after the header.
        len: usize,
    },
    /// §7.1: the advertised addresses differ from the configured ones.
    #[error("advertised addresses {got:?} differ from configured {want:?}")]
    AddressMismatch {
        /// Received.
        got: Vec<IpAddr>,
        /// Configured.
        want: Vec<IpAddr>,
    },
    /// Max Advertise Interval of 0 (would make every timer zero).
    #[error("advert interval is 0")]
    ZeroInterval,
}

impl DecodeError {
    /// The counter name this error is filed under.
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::Truncated { .. } => "truncated",
            DecodeError::BadIpHeader { .. } => "bad_ip_header",
            DecodeError::BadTtl { .. } => "bad_ttl",
            DecodeError::BadVersion { .. } => "bad_version",
            DecodeError::BadType { .. } => "bad_type",
            DecodeError::BadChecksum { .. } => "bad_checksum",
            DecodeError::UnknownVrid { .. } => "unknown_vrid",
            DecodeError::BadLength { .. } => "bad_length",
            DecodeError::AddressMismatch { .. } => "address_mismatch",
            DecodeError::ZeroInterval => "zero_interval",
        }
    }
}

/// The internet checksum (RFC 1071) over a pseudo-header and the VRRP message. Written
/// here because it is a dozen lines and the crates that offer it bring whole packet stacks.
fn checksum(src: IpAddr, dst: IpAddr, msg: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut add = |bytes: &[u8]| {
        let mut chunks = bytes.chunks_exact(2);
        for c in &mut chunks {
            sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
        }
        if let [last] = chunks.remainder() {
            sum += u32::from(*last) << 8;
        }
    };
    let len = msg.len() as u32;
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            add(&s.octets());
            add(&d.octets());
            add(&[0, IPPROTO_VRRP]);
            add(&(len as u16).to_be_bytes());
        }
        (s, d) => {
            add(&v6(s).octets());
            add(&v6(d).octets());
            add(&len.to_be_bytes());
            add(&[0, 0, 0, IPPROTO_VRRP]);
        }
    }
    add(msg);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn v6(a: IpAddr) -> Ipv6Addr {
    match a {
        IpAddr::V6(a) => a,
        IpAddr::V4(a) => a.to_ipv6_mapped(),
    }
}

impl Advert {
    /// Encodes the VRRP message (no IP header) sent from `src` to `dst`.
    pub fn encode(&self, src: IpAddr, dst: IpAddr) -> Vec<u8> {
        let mut b = Vec::with_capacity(HEADER_LEN + 16 * self.addresses.len());
        b.push(0x31);
        b.push(self.vrid);
        b.push(self.priority);
        b.push(self.addresses.len() as u8);
        b.extend_from_slice(&(self.max_advert_int_cs & 0x0fff).to_be_bytes());
        b.extend_from_slice(&[0, 0]);
        for a in &self.addresses {
            match a {
                IpAddr::V4(a) => b.extend_from_slice(&a.octets()),
                IpAddr::V6(a) => b.extend_from_slice(&a.octets()),
            }
        }
        let c = checksum(src, dst, &b);
        b[6..8].copy_from_slice(&c.to_be_bytes());
        b
    }

    /// Decodes a VRRP message (no IP header) received from `src` for `dst`, checking
    /// version, type, length and checksum. `src` and `dst` must be of one family, which is
    /// the family of the addresses.
    pub fn decode(msg: &[u8], src: IpAddr, dst: IpAddr) -> Result<Advert, DecodeError> {
        if msg.len() < HEADER_LEN {
            return Err(DecodeError::Truncated {
                len: msg.len(),
                need: HEADER_LEN,
            });
        }
        let version = msg[0] >> 4;
        if version != 3 {
            return Err(DecodeError::BadVersion { version });
        }
        let kind = msg[0] & 0x0f;
        if kind != 1 {
            return Err(DecodeError::BadType { kind });
        }
        let count = msg[3];
        let alen = if src.is_ipv4() { 4 } else { 16 };
        let body = &msg[HEADER_LEN..];
        if body.len() != usize::from(count) * alen {
            return Err(DecodeError::BadLength {
                count,
                len: body.len(),
            });
        }
        let got = u16::from_be_bytes([msg[6], msg[7]]);
        // Summing over a message that contains its own checksum yields 0.
        let rest = checksum(src, dst, msg);
        if rest != 0 {
            let mut zeroed = msg.to_vec();
            zeroed[6] = 0;
            zeroed[7] = 0;
            return Err(DecodeError::BadChecksum {
                got,
                want: checksum(src, dst, &zeroed),
            });
        }
        let max_advert_int_cs = u16::from_be_bytes([msg[4], msg[5]]) & 0x0fff;
        if max_advert_int_cs == 0 {
            return Err(DecodeError::ZeroInterval);
        }
        let addresses = body
            .chunks_exact(alen)
            .map(|c| match <[u8; 4]>::try_from(c) {
                Ok(a) => IpAddr::from(a),
                Err(_) => {
                    let mut a = [0u8; 16];
                    a.copy_from_slice(c);
                    IpAddr::from(a)
                }
            })
            .collect();
        Ok(Advert {
            vrid: msg[1],
            priority: msg[2],
            max_advert_int_cs,
            addresses,
        })
    }
}

/// A received advertisement with what the IP layer told us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// Sender address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// TTL / hop limit.
    pub ttl: u8,
    /// The advertisement.
    pub advert: Advert,
}

/// Parses a whole IPv4 packet as delivered by a raw IPv4 socket (IP header included),
/// checking the TTL and then decoding the VRRP message.
pub fn decode_ipv4(pkt: &[u8]) -> Result<Received, DecodeError> {
    if pkt.len() < 20 {
        return Err(DecodeError::Truncated {
            len: pkt.len(),
            need: 20,
        });
    }
    if pkt[0] >> 4 != 4 {
        return Err(DecodeError::BadIpHeader { what: "not IPv4" });
    }
    let ihl = usize::from(pkt[0] & 0x0f) * 4;
    if ihl < 20 || pkt.len() < ihl {
        return Err(DecodeError::BadIpHeader {
            what: "bad header length",
        });
    }
    if pkt[9] != IPPROTO_VRRP {
        return Err(DecodeError::BadIpHeader {
            what: "not protocol 112",
        });
    }
    let total = usize::from(u16::from_be_bytes([pkt[2], pkt[3]]));
    // Linux hands raw sockets the total length as sent; tolerate link-layer padding only.
    let end = if total >= ihl && total <= pkt.len() {
        total
    } else {
        pkt.len()
    };
    let src = IpAddr::from([pkt[12], pkt[13], pkt[14], pkt[15]]);
    let dst = IpAddr::from([pkt[16], pkt[17], pkt[18], pkt[19]]);
    received(src, dst, pkt[8], &pkt[ihl..end])
}

/// Decodes a VRRP message from a raw IPv6 socket (no IP header; the addresses and hop
/// limit come from the socket's ancillary data).
pub fn decode_ipv6(
    msg: &[u8],
    src: Ipv6Addr,
    dst: Ipv6Addr,
    hop_limit: u8,
) -> Result<Received, DecodeError> {
    received(src.into(), dst.into(), hop_limit, msg)
}

fn received(src: IpAddr, dst: IpAddr, ttl: u8, msg: &[u8]) -> Result<Received, DecodeError> {
    if ttl != 255 {
        return Err(DecodeError::BadTtl { ttl });
    }
    let advert = Advert::decode(msg, src, dst)?;
    Ok(Received {
        src,
        dst,
        ttl,
        advert,
    })
}

/// §7.1 checks that need the configuration: the VRID must be configured here and the
/// address list must match (as a set; order is not significant on the wire).
pub fn check_configured(
    advert: &Advert,
    vrid: u8,
    configured: &[IpAddr],
) -> Result<(), DecodeError> {
    if advert.vrid != vrid {
        return Err(DecodeError::UnknownVrid { vrid: advert.vrid });
    }
    let mut got = advert.addresses.clone();
    let mut want = configured.to_vec();
    got.sort();
    want.sort();
    if got != want {
        return Err(DecodeError::AddressMismatch { got, want });
    }
    Ok(())
}

/// Builds the IPv4 header for a VRRP message sent with `IP_HDRINCL` (TTL 255, DSCP CS6
/// like other routing protocols; the kernel fills in the id and header checksum).
pub fn ipv4_header(src: Ipv4Addr, payload_len: usize) -> [u8; 20] {
    let total = (20 + payload_len) as u16;
    let mut h = [0u8; 20];
    h[0] = 0x45;
    h[1] = 0xc0;
    h[2..4].copy_from_slice(&total.to_be_bytes());
    h[8] = 255;
    h[9] = IPPROTO_VRRP;
    h[12..16].copy_from_slice(&src.octets());
    h[16..20].copy_from_slice(&GROUP_V4.octets());
    h
}
