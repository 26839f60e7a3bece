//! The ctnetlink codec: conntrack messages of nfnetlink (subsystem `NFNL_SUBSYS_CTNETLINK`)
//! to and from [`Entry`]. Pure: bytes in, bytes out; the socket lives in [`crate::kernel`].
//!
//! Written by hand on top of `netlink-packet-core`'s attribute iterator because
//! `netlink-packet-netfilter` 0.4 covers only part of what replication needs (no ICMP
//! id/type/code, no zone, no NAT setup attributes, a tree of `Vec`s per message); see
//! `docs/sync.md` for the decision. Attribute numbers are those of
//! `linux/netfilter/nfnetlink_conntrack.h`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netlink_packet_core::{NlaBuffer, NlasIterator};

use crate::entry::{
    Entry, IPS_ASSURED, IPS_CONFIRMED, IPS_FIXED_TIMEOUT, IPS_SEEN_REPLY, L4, TcpInfo, Tuple,
};

/// `NETLINK_NETFILTER`.
pub const NETLINK_NETFILTER: isize = 12;
/// Multicast group of new-conntrack events.
pub const NFNLGRP_CONNTRACK_NEW: u32 = 1;
/// Multicast group of update events.
pub const NFNLGRP_CONNTRACK_UPDATE: u32 = 2;
/// Multicast group of destroy events.
pub const NFNLGRP_CONNTRACK_DESTROY: u32 = 3;

const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_NEW: u16 = 0;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;

const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLMSG_OVERRUN: u16 = 4;

/// `NLM_F_REQUEST`.
pub const NLM_F_REQUEST: u16 = 0x1;
/// `NLM_F_MULTI`.
pub const NLM_F_MULTI: u16 = 0x2;
/// `NLM_F_ACK`.
pub const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_EXCL: u16 = 0x200;

const NLA_F_NESTED: u16 = 0x8000;
const HDR_LEN: usize = 16;
const NFGEN_LEN: usize = 4;

const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_STATUS: u16 = 3;
const CTA_PROTOINFO: u16 = 4;
const CTA_NAT_SRC: u16 = 6;
const CTA_TIMEOUT: u16 = 7;
const CTA_MARK: u16 = 8;
const CTA_NAT_DST: u16 = 13;
const CTA_ZONE: u16 = 18;

const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;

const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;
const CTA_PROTO_ICMP_ID: u16 = 4;
const CTA_PROTO_ICMP_TYPE: u16 = 5;
const CTA_PROTO_ICMP_CODE: u16 = 6;
const CTA_PROTO_ICMPV6_ID: u16 = 7;
const CTA_PROTO_ICMPV6_TYPE: u16 = 8;
const CTA_PROTO_ICMPV6_CODE: u16 = 9;

const CTA_PROTOINFO_TCP: u16 = 1;
const CTA_PROTOINFO_TCP_STATE: u16 = 1;
const CTA_PROTOINFO_TCP_WSCALE_ORIGINAL: u16 = 2;
const CTA_PROTOINFO_TCP_WSCALE_REPLY: u16 = 3;
const CTA_PROTOINFO_TCP_FLAGS_ORIGINAL: u16 = 4;
const CTA_PROTOINFO_TCP_FLAGS_REPLY: u16 = 5;

const CTA_NAT_V4_MINIP: u16 = 1;
const CTA_NAT_V4_MAXIP: u16 = 2;
const CTA_NAT_PROTO: u16 = 3;
const CTA_NAT_V6_MINIP: u16 = 4;
const CTA_NAT_V6_MAXIP: u16 = 5;
const CTA_PROTONAT_PORT_MIN: u16 = 1;
const CTA_PROTONAT_PORT_MAX: u16 = 2;

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// A decoding error: what is malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The netlink header is cut short or its length is wrong.
    #[error("truncated netlink message at byte {offset} ({len} bytes left)")]
    Truncated {
        /// Offset of the message in the buffer.
        offset: usize,
        /// Bytes left from there.
        len: usize,
    },
    /// An attribute is malformed.
    #[error("malformed attribute {attr}: {reason}")]
    Attribute {
        /// Attribute path, e.g. `CTA_TUPLE_ORIG/CTA_TUPLE_IP`.
        attr: &'static str,
        /// What is wrong.
        reason: String,
    },
}

/// What a conntrack message says happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// A new entry (event with `NLM_F_CREATE`) or a dump reply.
    New,
    /// An update of an existing entry.
    Update,
    /// The entry is gone.
    Destroy,
}

/// One decoded netlink message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A conntrack entry; `entry` is `None` for protocols that are not replicated (GRE,
    /// SCTP, ...).
    Conntrack {
        /// New, update or destroy.
        kind: EventKind,
        /// The decoded entry.
        entry: Option<Entry>,
        /// The message carried `NLM_F_MULTI` (part of a dump).
        multi: bool,
    },
    /// End of a dump.
    Done,
    /// An error or ack (`errno` 0) for the request with this sequence number.
    Error {
        /// Negative errno as the kernel sends it, 0 for an ack.
        errno: i32,
        /// Sequence number of the request it answers.
        seq: u32,
    },
    /// The kernel dropped messages (`NLMSG_OVERRUN`).
    Overrun,
    /// Some other message type.
    Other(u16),
}

/// Iterates over the netlink messages in a receive buffer.
pub fn parse_messages(buf: &[u8]) -> impl Iterator<Item = Result<Message, CodecError>> + '_ {
    let mut off = 0usize;
    std::iter::from_fn(move || {
        if off + HDR_LEN > buf.len() {
            return None;
        }
        let len = u32::from_ne_bytes(buf[off..off + 4].try_into().ok()?) as usize;
        if len < HDR_LEN || off + len > buf.len() {
            let e = CodecError::Truncated {
                offset: off,
                len: buf.len() - off,
            };
            off = buf.len();
            return Some(Err(e));
        }
        let msg = &buf[off..off + len];
        off += (len + 3) & !3;
        Some(parse_one(msg))
    })
}

fn parse_one(msg: &[u8]) -> Result<Message, CodecError> {
    let ty = u16::from_ne_bytes([msg[4], msg[5]]);
    let flags = u16::from_ne_bytes([msg[6], msg[7]]);
    match ty {
        NLMSG_DONE => return Ok(Message::Done),
        NLMSG_OVERRUN => return Ok(Message::Overrun),
        NLMSG_ERROR => {
            if msg.len() < HDR_LEN + 4 + HDR_LEN {
                return Err(CodecError::Truncated {
                    offset: 0,
                    len: msg.len(),
                });
            }
            let errno = i32::from_ne_bytes(msg[16..20].try_into().expect("4 bytes"));
            let seq = u32::from_ne_bytes(msg[28..32].try_into().expect("4 bytes"));
            return Ok(Message::Error { errno, seq });
        }
        _ => {}
    }
    if ty >> 8 != NFNL_SUBSYS_CTNETLINK {
        return Ok(Message::Other(ty));
    }
    let kind = match ty & 0xff {
        IPCTNL_MSG_CT_NEW if flags & NLM_F_CREATE != 0 => EventKind::New,
        IPCTNL_MSG_CT_NEW if flags & NLM_F_MULTI != 0 => EventKind::New,
        IPCTNL_MSG_CT_NEW => EventKind::Update,
        IPCTNL_MSG_CT_DELETE => EventKind::Destroy,
        _ => return Ok(Message::Other(ty)),
    };
    if msg.len() < HDR_LEN + NFGEN_LEN {
        return Err(CodecError::Truncated {
            offset: 0,
            len: msg.len(),
        });
    }
    let entry = decode_entry(&msg[HDR_LEN + NFGEN_LEN..])?;
    Ok(Message::Conntrack {
        kind,
        entry,
        multi: flags & NLM_F_MULTI != 0,
    })
}

fn attr_err(attr: &'static str, reason: impl ToString) -> CodecError {
    CodecError::Attribute {
        attr,
        reason: reason.to_string(),
    }
}

fn attrs<'a>(
    buf: &'a [u8],
    path: &'static str,
) -> impl Iterator<Item = Result<(u16, &'a [u8]), CodecError>> + 'a {
    NlasIterator::new(buf).map(move |r| {
        r.map(|nla: NlaBuffer<&[u8]>| {
            let (kind, len) = (nla.kind(), nla.length() as usize);
            let inner: &'a [u8] = nla.into_inner();
            (kind, &inner[4..len.max(4)])
        })
        .map_err(|e| attr_err(path, e))
    })
}

fn be16(v: &[u8], path: &'static str) -> Result<u16, CodecError> {
    Ok(u16::from_be_bytes(
        v.get(..2)
            .ok_or_else(|| attr_err(path, "shorter than 2 bytes"))?
            .try_into()
            .expect("2 bytes"),
    ))
}

fn be32(v: &[u8], path: &'static str) -> Result<u32, CodecError> {
    Ok(u32::from_be_bytes(
        v.get(..4)
            .ok_or_else(|| attr_err(path, "shorter than 4 bytes"))?
            .try_into()
            .expect("4 bytes"),
    ))
}

fn u8_(v: &[u8], path: &'static str) -> Result<u8, CodecError> {
    v.first()
        .copied()
        .ok_or_else(|| attr_err(path, "empty attribute"))
}

fn ip(v: &[u8], path: &'static str) -> Result<IpAddr, CodecError> {
    match v.len() {
        4 => Ok(IpAddr::V4(Ipv4Addr::from(
            <[u8; 4]>::try_from(v).expect("4"),
        ))),
        16 => Ok(IpAddr::V6(Ipv6Addr::from(
            <[u8; 16]>::try_from(v).expect("16"),
        ))),
        n => Err(attr_err(path, format!("address of {n} bytes"))),
    }
}

/// Decodes the attributes of one conntrack message. `Ok(None)` for protocols that are not
/// replicated.
pub fn decode_entry(buf: &[u8]) -> Result<Option<Entry>, CodecError> {
    let (mut orig, mut reply) = (None, None);
    let (mut status, mut timeout, mut mark, mut zone, mut tcp) = (0, 0, 0, 0, None);
    for a in attrs(buf, "conntrack message") {
        let (kind, v) = a?;
        match kind {
            CTA_TUPLE_ORIG => orig = Some(decode_tuple(v, "CTA_TUPLE_ORIG")?),
            CTA_TUPLE_REPLY => reply = Some(decode_tuple(v, "CTA_TUPLE_REPLY")?),
            CTA_STATUS => status = be32(v, "CTA_STATUS")?,
            CTA_TIMEOUT => timeout = be32(v, "CTA_TIMEOUT")?,
            CTA_MARK => mark = be32(v, "CTA_MARK")?,
            CTA_ZONE => zone = be16(v, "CTA_ZONE")?,
            CTA_PROTOINFO => tcp = decode_protoinfo(v)?,
            _ => {}
        }
    }
    let orig = orig.ok_or_else(|| attr_err("CTA_TUPLE_ORIG", "missing"))?;
    let reply = reply.ok_or_else(|| attr_err("CTA_TUPLE_REPLY", "missing"))?;
    let (Some(orig), Some(reply)) = (orig, reply) else {
        return Ok(None);
    };
    Ok(Some(Entry {
        orig,
        reply,
        status,
        timeout,
        mark,
        zone,
        tcp,
    }))
}

fn decode_tuple(buf: &[u8], path: &'static str) -> Result<Option<Tuple>, CodecError> {
    let (mut src, mut dst) = (None, None);
    let mut proto = None;
    let (mut sport, mut dport, mut id, mut ty, mut code) = (0, 0, 0, 0, 0);
    for a in attrs(buf, path) {
        let (kind, v) = a?;
        match kind {
            CTA_TUPLE_IP => {
                for a in attrs(v, "CTA_TUPLE_IP") {
                    let (k, v) = a?;
                    match k {
                        CTA_IP_V4_SRC | CTA_IP_V6_SRC => src = Some(ip(v, "CTA_IP_SRC")?),
                        CTA_IP_V4_DST | CTA_IP_V6_DST => dst = Some(ip(v, "CTA_IP_DST")?),
                        _ => {}
                    }
                }
            }
            CTA_TUPLE_PROTO => {
                for a in attrs(v, "CTA_TUPLE_PROTO") {
                    let (k, v) = a?;
                    match k {
                        CTA_PROTO_NUM => proto = Some(u8_(v, "CTA_PROTO_NUM")?),
                        CTA_PROTO_SRC_PORT => sport = be16(v, "CTA_PROTO_SRC_PORT")?,
                        CTA_PROTO_DST_PORT => dport = be16(v, "CTA_PROTO_DST_PORT")?,
                        CTA_PROTO_ICMP_ID | CTA_PROTO_ICMPV6_ID => {
                            id = be16(v, "CTA_PROTO_ICMP_ID")?
                        }
                        CTA_PROTO_ICMP_TYPE | CTA_PROTO_ICMPV6_TYPE => {
                            ty = u8_(v, "CTA_PROTO_ICMP_TYPE")?
                        }
                        CTA_PROTO_ICMP_CODE | CTA_PROTO_ICMPV6_CODE => {
                            code = u8_(v, "CTA_PROTO_ICMP_CODE")?
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    let src = src.ok_or_else(|| attr_err(path, "no source address"))?;
    let dst = dst.ok_or_else(|| attr_err(path, "no destination address"))?;
    if src.is_ipv4() != dst.is_ipv4() {
        return Err(attr_err(path, "mixed address families"));
    }
    let l4 = match proto.ok_or_else(|| attr_err(path, "no CTA_PROTO_NUM"))? {
        6 => L4::Tcp { sport, dport },
        17 => L4::Udp { sport, dport },
        1 => L4::Icmp {
            id,
            r#type: ty,
            code,
        },
        58 => L4::Icmpv6 {
            id,
            r#type: ty,
            code,
        },
        _ => return Ok(None),
    };
    Ok(Some(Tuple { src, dst, l4 }))
}

fn decode_protoinfo(buf: &[u8]) -> Result<Option<TcpInfo>, CodecError> {
    for a in attrs(buf, "CTA_PROTOINFO") {
        let (kind, v) = a?;
        if kind != CTA_PROTOINFO_TCP {
            continue;
        }
        let mut t = TcpInfo {
            state: 0,
            wscale_orig: 0,
            wscale_reply: 0,
            flags_orig: 0,
            flags_reply: 0,
        };
        for a in attrs(v, "CTA_PROTOINFO_TCP") {
            let (k, v) = a?;
            match k {
                CTA_PROTOINFO_TCP_STATE => t.state = u8_(v, "CTA_PROTOINFO_TCP_STATE")?,
                CTA_PROTOINFO_TCP_WSCALE_ORIGINAL => t.wscale_orig = u8_(v, "TCP_WSCALE")?,
                CTA_PROTOINFO_TCP_WSCALE_REPLY => t.wscale_reply = u8_(v, "TCP_WSCALE")?,
                CTA_PROTOINFO_TCP_FLAGS_ORIGINAL => t.flags_orig = u8_(v, "TCP_FLAGS")?,
                CTA_PROTOINFO_TCP_FLAGS_REPLY => t.flags_reply = u8_(v, "TCP_FLAGS")?,
                _ => {}
            }
        }
        return Ok(Some(t));
    }
    Ok(None)
}

/// The reply tuple of a connection without NAT: the original one reversed (ICMP keeps the
/// reply's own type/code/id, which are not a pure reversal).
fn inverse(orig: &Tuple, reply: &Tuple) -> Tuple {
    let l4 = match orig.l4 {
        L4::Tcp { sport, dport } => L4::Tcp {
            sport: dport,
            dport: sport,
        },
        L4::Udp { sport, dport } => L4::Udp {
            sport: dport,
            dport: sport,
        },
        icmp => match reply.l4 {
            r @ (L4::Icmp { .. } | L4::Icmpv6 { .. }) => r,
            _ => icmp,
        },
    };
    Tuple {
        src: orig.dst,
        dst: orig.src,
        l4,
    }
}

/// Appends netlink messages to a buffer. Attribute emission is the mirror of the decoder.
#[derive(Debug, Default)]
pub struct Builder {
    buf: Vec<u8>,
    stack: Vec<usize>,
    msg_start: usize,
}

impl Builder {
    /// An empty builder.
    pub fn new() -> Builder {
        Builder::default()
    }

    /// Bytes built so far.
    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }

    /// Number of bytes built so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// True when nothing was built.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Forgets everything built.
    pub fn clear(&mut self) {
        self.buf.clear();
    }

    fn begin_msg(&mut self, ty: u16, flags: u16, seq: u32, family: u8) {
        self.msg_start = self.buf.len();
        self.buf.extend_from_slice(&0u32.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(&flags.to_ne_bytes());
        self.buf.extend_from_slice(&seq.to_ne_bytes());
        self.buf.extend_from_slice(&0u32.to_ne_bytes());
        self.buf.extend_from_slice(&[family, 0, 0, 0]);
    }

    fn end_msg(&mut self) {
        let len = (self.buf.len() - self.msg_start) as u32;
        self.buf[self.msg_start..self.msg_start + 4].copy_from_slice(&len.to_ne_bytes());
    }

    fn attr(&mut self, kind: u16, value: &[u8]) {
        let len = (4 + value.len()) as u16;
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(value);
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    fn nest(&mut self, kind: u16) {
        self.stack.push(self.buf.len());
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf
            .extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
    }

    fn end_nest(&mut self) {
        let start = self.stack.pop().expect("balanced nests");
        let len = (self.buf.len() - start) as u16;
        self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
    }

    /// A dump request for every entry of both address families.
    pub fn dump_request(&mut self, seq: u32) {
        self.begin_msg(
            NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_GET,
            NLM_F_REQUEST | NLM_F_DUMP,
            seq,
            0,
        );
        self.end_msg();
    }

    /// A create request for an entry (`IPCTNL_MSG_CT_NEW` with `NLM_F_CREATE | NLM_F_EXCL`),
    /// with NAT setup derived from the tuples so that the kernel mangles packets the way
    /// the other node did. An entry that is already in the kernel is refused with
    /// `EEXIST` (the kernel would refuse the NAT setup on an existing entry with
    /// `EOPNOTSUPP` anyway): refresh it with [`Builder::update`]. With `ack`, the kernel
    /// answers even on success.
    pub fn create(&mut self, e: &Entry, seq: u32, ack: bool) {
        let family = if e.orig.src.is_ipv4() {
            AF_INET
        } else {
            AF_INET6
        };
        let flags = NLM_F_REQUEST | NLM_F_CREATE | NLM_F_EXCL | if ack { NLM_F_ACK } else { 0 };
        self.begin_msg(
            NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_NEW,
            flags,
            seq,
            family,
        );
        self.tuple(CTA_TUPLE_ORIG, &e.orig);
        // With NAT, the kernel must derive the reply tuple itself from the NAT setup below:
        // nf_nat_setup_info only sets IPS_SRC_NAT/IPS_DST_NAT (and so mangles packets) when
        // the binding changes the tuple, so we give it the un-NATed reply (the inverse of
        // the original tuple), as conntrackd does with NFCT_SOPT_SETUP_REPLY.
        let nat = e.is_snat() || e.is_dnat();
        let reply = if nat {
            inverse(&e.orig, &e.reply)
        } else {
            e.reply
        };
        self.tuple(CTA_TUPLE_REPLY, &reply);
        self.state(e);
        if e.is_snat() {
            // SNAT: the original source became the reply destination.
            let port = match (e.orig.l4.ports(), e.reply.l4.ports()) {
                (Some((s, _)), Some((_, rd))) if s != rd => Some(rd),
                _ => None,
            };
            self.nat(CTA_NAT_SRC, e.reply.dst, port);
        }
        if e.is_dnat() {
            let port = match (e.orig.l4.ports(), e.reply.l4.ports()) {
                (Some((_, d)), Some((rs, _))) if d != rs => Some(rs),
                _ => None,
            };
            self.nat(CTA_NAT_DST, e.reply.src, port);
        }
        self.protoinfo(e);
        self.end_msg();
    }

    /// An update of an entry that is already in the kernel (`IPCTNL_MSG_CT_NEW` without
    /// `NLM_F_CREATE`), found by its original tuple: status, timeout, mark and TCP state.
    /// The NAT binding is not sent (the kernel takes it only on creation; the existing
    /// entry keeps its own, which the same original tuple implies).
    pub fn update(&mut self, e: &Entry, seq: u32) {
        let family = if e.orig.src.is_ipv4() {
            AF_INET
        } else {
            AF_INET6
        };
        self.begin_msg(
            NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_NEW,
            NLM_F_REQUEST,
            seq,
            family,
        );
        self.tuple(CTA_TUPLE_ORIG, &e.orig);
        self.state(e);
        self.protoinfo(e);
        self.end_msg();
    }

    /// Status, timeout, mark and zone of a create or update.
    fn state(&mut self, e: &Entry) {
        // The kernel manages the NAT bits itself and refuses (EBUSY) a status that differs
        // from the new entry's in EXPECTED/CONFIRMED/DYING; a created entry is CONFIRMED.
        let status = e.status & (IPS_SEEN_REPLY | IPS_ASSURED | IPS_FIXED_TIMEOUT) | IPS_CONFIRMED;
        self.attr(CTA_STATUS, &status.to_be_bytes());
        self.attr(CTA_TIMEOUT, &e.timeout.max(1).to_be_bytes());
        self.attr(CTA_MARK, &e.mark.to_be_bytes());
        if e.zone != 0 {
            self.attr(CTA_ZONE, &e.zone.to_be_bytes());
        }
    }

    /// The TCP window-tracking state, if any.
    fn protoinfo(&mut self, e: &Entry) {
        if let Some(t) = &e.tcp {
            self.nest(CTA_PROTOINFO);
            self.nest(CTA_PROTOINFO_TCP);
            self.attr(CTA_PROTOINFO_TCP_STATE, &[t.state]);
            self.attr(CTA_PROTOINFO_TCP_WSCALE_ORIGINAL, &[t.wscale_orig]);
            self.attr(CTA_PROTOINFO_TCP_WSCALE_REPLY, &[t.wscale_reply]);
            // struct nf_ct_tcp_flags { flags, mask }: set every flag bit as given.
            self.attr(CTA_PROTOINFO_TCP_FLAGS_ORIGINAL, &[t.flags_orig, 0xff]);
            self.attr(CTA_PROTOINFO_TCP_FLAGS_REPLY, &[t.flags_reply, 0xff]);
            self.end_nest();
            self.end_nest();
        }
    }

    /// A delete request for an entry, by its original tuple.
    pub fn delete(&mut self, e: &Entry, seq: u32) {
        let family = if e.orig.src.is_ipv4() {
            AF_INET
        } else {
            AF_INET6
        };
        self.begin_msg(
            NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_DELETE,
            NLM_F_REQUEST,
            seq,
            family,
        );
        self.tuple(CTA_TUPLE_ORIG, &e.orig);
        if e.zone != 0 {
            self.attr(CTA_ZONE, &e.zone.to_be_bytes());
        }
        self.end_msg();
    }

    fn ip_attr(&mut self, v4: u16, v6: u16, a: IpAddr) {
        match a {
            IpAddr::V4(a) => self.attr(v4, &a.octets()),
            IpAddr::V6(a) => self.attr(v6, &a.octets()),
        }
    }

    fn tuple(&mut self, kind: u16, t: &Tuple) {
        self.nest(kind);
        self.nest(CTA_TUPLE_IP);
        self.ip_attr(CTA_IP_V4_SRC, CTA_IP_V6_SRC, t.src);
        self.ip_attr(CTA_IP_V4_DST, CTA_IP_V6_DST, t.dst);
        self.end_nest();
        self.nest(CTA_TUPLE_PROTO);
        self.attr(CTA_PROTO_NUM, &[t.l4.proto()]);
        match t.l4 {
            L4::Tcp { sport, dport } | L4::Udp { sport, dport } => {
                self.attr(CTA_PROTO_SRC_PORT, &sport.to_be_bytes());
                self.attr(CTA_PROTO_DST_PORT, &dport.to_be_bytes());
            }
            L4::Icmp { id, r#type, code } => {
                self.attr(CTA_PROTO_ICMP_ID, &id.to_be_bytes());
                self.attr(CTA_PROTO_ICMP_TYPE, &[r#type]);
                self.attr(CTA_PROTO_ICMP_CODE, &[code]);
            }
            L4::Icmpv6 { id, r#type, code } => {
                self.attr(CTA_PROTO_ICMPV6_ID, &id.to_be_bytes());
                self.attr(CTA_PROTO_ICMPV6_TYPE, &[r#type]);
                self.attr(CTA_PROTO_ICMPV6_CODE, &[code]);
            }
        }
        self.end_nest();
        self.end_nest();
    }

    fn nat(&mut self, kind: u16, addr: IpAddr, port: Option<u16>) {
        self.nest(kind);
        self.ip_attr(CTA_NAT_V4_MINIP, CTA_NAT_V6_MINIP, addr);
        self.ip_attr(CTA_NAT_V4_MAXIP, CTA_NAT_V6_MAXIP, addr);
        if let Some(p) = port {
            self.nest(CTA_NAT_PROTO);
            self.attr(CTA_PROTONAT_PORT_MIN, &p.to_be_bytes());
            self.attr(CTA_PROTONAT_PORT_MAX, &p.to_be_bytes());
            self.end_nest();
        }
        self.end_nest();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::tests::tcp;

    /// A create message decodes back to the entry it was built from (the attributes the
    /// decoder reads are the ones the kernel sends in dumps and events).
    #[test]
    fn create_message_round_trips() {
        for e in [tcp(1234, false), tcp(4321, true), icmp6()] {
            let mut b = Builder::new();
            b.create(&e, 7, true);
            let msgs: Vec<_> = parse_messages(b.bytes()).collect();
            assert_eq!(msgs.len(), 1);
            let Ok(Message::Conntrack { entry, .. }) = &msgs[0] else {
                panic!("{msgs:?}")
            };
            let mut want = e;
            want.status = want.status & (IPS_SEEN_REPLY | IPS_ASSURED) | IPS_CONFIRMED;
            if e.is_snat() {
                // the NATed reply is sent as the NAT setup, the reply tuple un-NATed
                want.reply = inverse(&e.orig, &e.reply);
            }
            assert_eq!(entry.as_ref(), Some(&want));
        }
    }

    fn icmp6() -> Entry {
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1::1".parse().unwrap();
        Entry {
            orig: Tuple {
                src: a,
                dst: b,
                l4: L4::Icmpv6 {
                    id: 77,
                    r#type: 128,
                    code: 0,
                },
            },
            reply: Tuple {
                src: b,
                dst: a,
                l4: L4::Icmpv6 {
                    id: 77,
                    r#type: 129,
                    code: 0,
                },
            },
            status: IPS_SEEN_REPLY,
            timeout: 30,
            mark: 5,
            zone: 3,
            tcp: None,
        }
    }

    #[test]
    fn truncated_and_malformed_input_is_an_error_not_a_panic() {
        let mut b = Builder::new();
        b.create(&tcp(1, true), 1, false);
        let bytes = b.bytes().to_vec();
        for cut in 0..bytes.len() {
            let mut m = bytes[..cut].to_vec();
            if cut >= 4 {
                // Keep the header length consistent so that the attribute parser sees it.
                m[..4].copy_from_slice(&(cut as u32).to_ne_bytes());
            }
            for r in parse_messages(&m) {
                let _ = r;
            }
        }
        let mut bad = bytes.clone();
        bad[..4].copy_from_slice(&(bytes.len() as u32 + 8).to_ne_bytes());
        let r: Vec<_> = parse_messages(&bad).collect();
        assert!(matches!(r[0], Err(CodecError::Truncated { .. })));
    }

    #[test]
    fn error_done_and_other_messages_decode() {
        let mut m = vec![0u8; 36];
        m[..4].copy_from_slice(&36u32.to_ne_bytes());
        m[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        m[16..20].copy_from_slice(&(-17i32).to_ne_bytes());
        m[28..32].copy_from_slice(&99u32.to_ne_bytes());
        let mut d = vec![0u8; 20];
        d[..4].copy_from_slice(&20u32.to_ne_bytes());
        d[4..6].copy_from_slice(&NLMSG_DONE.to_ne_bytes());
        m.extend_from_slice(&d);
        let r: Vec<_> = parse_messages(&m).collect();
        assert_eq!(
            r,
            vec![
                Ok(Message::Error {
                    errno: -17,
                    seq: 99
                }),
                Ok(Message::Done)
            ]
        );
    }
}
