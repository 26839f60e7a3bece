//! The service's packet sockets: raw IP protocol 112 for adverts (one per device and
//! family), AF_PACKET for gratuitous ARP and raw ICMPv6 for unsolicited neighbour
//! advertisements. All bound to their device; all non-blocking under tokio.

use std::io::{self, IoSlice, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;

use nix::sys::socket::{
    ControlMessage, ControlMessageOwned, MsgFlags, SockaddrIn6, recv, recvmsg, sendmsg, setsockopt,
    sockopt,
};
use socket2::{Domain, InterfaceIndexOrAddress, Protocol, SockAddr, SockAddrStorage, Socket, Type};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use twinwall_config::Family;

use crate::packet::{self, Advert, DecodeError, GROUP_V4, GROUP_V6, IPPROTO_VRRP, Received};

/// A raw VRRP socket on one device for one family.
#[derive(Debug)]
pub struct VrrpSocket {
    fd: AsyncFd<Socket>,
    family: Family,
    ifindex: u32,
    /// Our source address on this device (IPv4 primary or IPv6 link-local).
    pub src: IpAddr,
}

/// What a receive produced: a decoded advert or the reason it was dropped.
pub type RecvResult = Result<Received, DecodeError>;

impl VrrpSocket {
    /// Opens the socket: bound to `device`, joined to the VRRP group on it, TTL / hop
    /// limit 255, multicast loopback off.
    pub fn open(device: &str, ifindex: u32, family: Family, src: IpAddr) -> io::Result<VrrpSocket> {
        let proto = Some(Protocol::from(i32::from(IPPROTO_VRRP)));
        let s = match family {
            Family::Ipv4 => {
                let s = Socket::new(Domain::IPV4, Type::RAW, proto)?;
                s.bind_device(Some(device.as_bytes()))?;
                // We write the IPv4 header ourselves so that the source address (part of the
                // checksummed pseudo-header) is exactly the one we computed with.
                s.set_header_included_v4(true)?;
                s.join_multicast_v4_n(&GROUP_V4, &InterfaceIndexOrAddress::Index(ifindex))?;
                s.set_multicast_loop_v4(false)?;
                s.set_multicast_ttl_v4(255)?;
                s
            }
            Family::Ipv6 => {
                let s = Socket::new(Domain::IPV6, Type::RAW, proto)?;
                s.bind_device(Some(device.as_bytes()))?;
                s.join_multicast_v6(&GROUP_V6, ifindex)?;
                s.set_multicast_loop_v6(false)?;
                s.set_multicast_hops_v6(255)?;
                s.set_multicast_if_v6(ifindex)?;
                setsockopt(&s, sockopt::Ipv6RecvPacketInfo, &true)?;
                setsockopt(&s, sockopt::Ipv6RecvHopLimit, &true)?;
                s
            }
        };
        s.set_nonblocking(true)?;
        // SAFETY: `s` owns an open descriptor that stays open, and refers to the same
        // socket, for as long as the AsyncFd owns it; `as_raw_fd` always returns it.
        let fd = unsafe { AsyncFd::register_with_interest(s, Interest::READABLE) }
            .map_err(|e| e.into_parts().1)?;
        Ok(VrrpSocket {
            fd,
            family,
            ifindex,
            src,
        })
    }

    /// Sends one advert to the VRRP group.
    pub fn send(&self, advert: &Advert) -> io::Result<()> {
        match (self.family, self.src) {
            (Family::Ipv4, IpAddr::V4(src)) => {
                let msg = advert.encode(src.into(), GROUP_V4.into());
                let mut pkt = packet::ipv4_header(src, msg.len()).to_vec();
                pkt.extend_from_slice(&msg);
                let to = SockAddr::from(SocketAddrV4::new(GROUP_V4, 0));
                self.fd.get_ref().send_to(&pkt, &to)?;
            }
            (_, src) => {
                let msg = advert.encode(src, GROUP_V6.into());
                // Pin the source to the address the checksum was computed with (the
                // kernel would otherwise choose, e.g. a global address).
                let src6 = match src {
                    IpAddr::V6(a) => a,
                    IpAddr::V4(a) => a.to_ipv6_mapped(),
                };
                let info = libc::in6_pktinfo {
                    ipi6_addr: libc::in6_addr {
                        s6_addr: src6.octets(),
                    },
                    ipi6_ifindex: self.ifindex,
                };
                let to = SockaddrIn6::from(SocketAddrV6::new(GROUP_V6, 0, 0, self.ifindex));
                sendmsg(
                    self.fd.get_ref().as_raw_fd(),
                    &[IoSlice::new(&msg)],
                    &[ControlMessage::Ipv6PacketInfo(&info)],
                    MsgFlags::empty(),
                    Some(&to),
                )?;
            }
        }
        Ok(())
    }

    /// Waits for the next packet and decodes it (§7.1 checks that need no configuration).
    pub async fn recv(&self) -> io::Result<RecvResult> {
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|fd| self.recv_now(fd.get_ref()).map_err(io::Error::from)) {
                Ok(r) => return r,
                Err(_would_block) => continue,
            }
        }
    }

    /// A packet already queued in the socket, decoded, without waiting (`None`: nothing
    /// queued, or a receive error, which [`VrrpSocket::recv`] reports).
    pub fn try_recv(&self) -> Option<RecvResult> {
        self.recv_now(self.fd.get_ref()).ok()
    }

    fn recv_now(&self, s: &Socket) -> Result<RecvResult, nix::Error> {
        let mut buf = [0u8; 2048];
        match self.family {
            Family::Ipv4 => {
                let n = recv(s.as_raw_fd(), &mut buf, MsgFlags::empty())?;
                Ok(packet::decode_ipv4(&buf[..n]))
            }
            Family::Ipv6 => {
                let mut cmsg = nix::cmsg_space!(libc::in6_pktinfo, libc::c_int);
                let mut iov = [IoSliceMut::new(&mut buf)];
                let (n, src, dst, hops) = {
                    let m = recvmsg::<SockaddrIn6>(
                        s.as_raw_fd(),
                        &mut iov,
                        Some(&mut cmsg),
                        MsgFlags::empty(),
                    )?;
                    let mut dst = Ipv6Addr::UNSPECIFIED;
                    let mut hops = 0u8;
                    for c in m.cmsgs()? {
                        match c {
                            ControlMessageOwned::Ipv6PacketInfo(pi) => {
                                dst = Ipv6Addr::from(pi.ipi6_addr.s6_addr)
                            }
                            ControlMessageOwned::Ipv6HopLimit(h) => hops = h.clamp(0, 255) as u8,
                            _ => {}
                        }
                    }
                    let src = m.address.map(|a| a.ip()).unwrap_or(Ipv6Addr::UNSPECIFIED);
                    (m.bytes, src, dst, hops)
                };
                Ok(packet::decode_ipv6(&buf[..n], src, dst, hops))
            }
        }
    }
}

/// Sends gratuitous ARP and unsolicited neighbour advertisements on one device.
#[derive(Debug)]
pub struct Announcer {
    arp: Option<Socket>,
    na: Option<Socket>,
    ifindex: u32,
    mac: [u8; 6],
}

const ETH_P_ARP: u16 = 0x0806;

impl Announcer {
    /// Opens the sockets needed for the families present.
    pub fn open(
        device: &str,
        ifindex: u32,
        mac: &[u8],
        v4: bool,
        v6: bool,
    ) -> io::Result<Announcer> {
        let mut m = [0u8; 6];
        if mac.len() == 6 {
            m.copy_from_slice(mac);
        }
        let arp = if v4 {
            let s = Socket::new(
                Domain::PACKET,
                Type::DGRAM,
                Some(Protocol::from(i32::from(ETH_P_ARP.to_be()))),
            )?;
            s.set_nonblocking(true)?;
            Some(s)
        } else {
            None
        };
        let na = if v6 {
            let s = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6))?;
            s.bind_device(Some(device.as_bytes()))?;
            // RFC 4861 §7.1.2: NAs must carry hop limit 255.
            s.set_multicast_hops_v6(255)?;
            s.set_unicast_hops_v6(255)?;
            s.set_multicast_if_v6(ifindex)?;
            s.set_multicast_loop_v6(false)?;
            s.set_nonblocking(true)?;
            Some(s)
        } else {
            None
        };
        Ok(Announcer {
            arp,
            na,
            ifindex,
            mac: m,
        })
    }

    /// Announces one VIP once.
    pub fn announce(&self, vip: IpAddr) -> io::Result<()> {
        match vip {
            IpAddr::V4(v) => {
                if let Some(s) = &self.arp {
                    s.send_to(&garp(self.mac, v), &self.broadcast()?)?;
                }
            }
            IpAddr::V6(v) => {
                if let Some(s) = &self.na {
                    let to = SockAddr::from(SocketAddrV6::new(
                        Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1),
                        0,
                        0,
                        self.ifindex,
                    ));
                    s.send_to(&unsolicited_na(self.mac, v), &to)?;
                }
            }
        }
        Ok(())
    }

    fn broadcast(&self) -> io::Result<SockAddr> {
        let mut storage = SockAddrStorage::zeroed();
        // SAFETY: sockaddr_ll is a sockaddr type of this platform and fits the storage.
        let ll = unsafe { storage.view_as::<libc::sockaddr_ll>() };
        ll.sll_family = libc::AF_PACKET as u16;
        ll.sll_protocol = ETH_P_ARP.to_be();
        ll.sll_ifindex = self.ifindex as i32;
        ll.sll_halen = 6;
        ll.sll_addr[..6].copy_from_slice(&[0xff; 6]);
        let len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        // SAFETY: the first `len` bytes hold the sockaddr_ll initialised above.
        Ok(unsafe { SockAddr::new(storage, len) })
    }
}

/// A gratuitous ARP request (RFC 5227 §3 "ARP Announcement"): sender and target
/// protocol address are the VIP, target hardware address zero.
pub fn garp(mac: [u8; 6], vip: Ipv4Addr) -> [u8; 28] {
    let mut p = [0u8; 28];
    p[0..2].copy_from_slice(&1u16.to_be_bytes()); // Ethernet
    p[2..4].copy_from_slice(&0x0800u16.to_be_bytes()); // IPv4
    p[4] = 6;
    p[5] = 4;
    p[6..8].copy_from_slice(&1u16.to_be_bytes()); // request
    p[8..14].copy_from_slice(&mac);
    p[14..18].copy_from_slice(&vip.octets());
    p[24..28].copy_from_slice(&vip.octets());
    p
}

/// An unsolicited neighbour advertisement (RFC 4861 §7.2.6) for `vip` with the Router and
/// Override flags and the target link-layer address option. The kernel fills the ICMPv6
/// checksum of raw ICMPv6 sockets.
pub fn unsolicited_na(mac: [u8; 6], vip: Ipv6Addr) -> [u8; 32] {
    let mut p = [0u8; 32];
    p[0] = 136;
    p[4] = 0xa0; // R | O
    p[8..24].copy_from_slice(&vip.octets());
    p[24] = 2; // target link-layer address
    p[25] = 1; // 8 bytes
    p[26..32].copy_from_slice(&mac);
    p
}
