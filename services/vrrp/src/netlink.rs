//! rtnetlink IO: interface lookup, VIPs, VIP-following routes and carrier events.
//!
//! Everything here is a thin async wrapper over the `rtnetlink` crate; idempotence is the
//! point (adding a VIP that is there, or removing one that is gone, is not an error),
//! because a crashed run, a flapping link or the peer may have changed things meanwhile.

use std::net::{IpAddr, Ipv6Addr};

use futures::stream::{StreamExt, TryStreamExt};
use ipnet::IpNet;
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage,
};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use rtnetlink::{Handle, RouteMessageBuilder};

/// A netlink failure, with what was being done.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// Opening the netlink socket failed.
    #[error("cannot open rtnetlink socket: {0}")]
    Open(#[source] std::io::Error),
    /// The device does not exist.
    #[error("network device {device} does not exist")]
    NoDevice {
        /// Device name.
        device: String,
    },
    /// A request failed.
    #[error("{what}: {source}")]
    Request {
        /// What was being done, e.g. `add 203.0.113.1/24 to eth0`.
        what: String,
        /// The netlink error.
        source: rtnetlink::Error,
    },
}

/// A device as the service needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// ifindex.
    pub index: u32,
    /// Device name.
    pub name: String,
    /// MAC address (empty for devices without one).
    pub mac: Vec<u8>,
    /// Administratively up and carrier present.
    pub up: bool,
}

/// Decodes a link message into a [`Link`].
pub fn link_of(msg: &LinkMessage) -> Link {
    let mut name = String::new();
    let mut mac = Vec::new();
    for a in &msg.attributes {
        match a {
            LinkAttribute::IfName(n) => name = n.clone(),
            LinkAttribute::Address(m) => mac = m.clone(),
            _ => {}
        }
    }
    let f = msg.header.flags;
    Link {
        index: msg.header.index,
        name,
        mac,
        up: f.contains(LinkFlags::Up) && f.contains(LinkFlags::LowerUp),
    }
}

fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

/// An rtnetlink connection (its driver runs as a tokio task).
#[derive(Debug, Clone)]
pub struct Netlink {
    handle: Handle,
}

impl Netlink {
    /// Opens a connection; must be called inside a tokio runtime.
    pub fn open() -> Result<Netlink, NetlinkError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(NetlinkError::Open)?;
        tokio::spawn(conn);
        Ok(Netlink { handle })
    }

    /// Looks a device up by name.
    pub async fn link(&self, device: &str) -> Result<Link, NetlinkError> {
        let mut s = self
            .handle
            .link()
            .get()
            .match_name(device.to_string())
            .execute();
        match s.try_next().await {
            Ok(Some(m)) => Ok(link_of(&m)),
            Ok(None) => Err(NetlinkError::NoDevice {
                device: device.into(),
            }),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Err(NetlinkError::NoDevice {
                device: device.into(),
            }),
            Err(source) => Err(NetlinkError::Request {
                what: format!("look up {device}"),
                source,
            }),
        }
    }

    /// The addresses on a device.
    pub async fn addresses(
        &self,
        index: u32,
    ) -> Result<Vec<(IpNet, AddressMessage)>, NetlinkError> {
        let msgs: Vec<AddressMessage> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .map_err(|source| NetlinkError::Request {
                what: format!("list addresses of ifindex {index}"),
                source,
            })?;
        Ok(msgs
            .into_iter()
            .filter_map(|m| {
                let addr = m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Local(a) => Some(*a),
                    _ => None,
                });
                let addr = addr.or_else(|| {
                    m.attributes.iter().find_map(|a| match a {
                        AddressAttribute::Address(a) => Some(*a),
                        _ => None,
                    })
                })?;
                let net = IpNet::new(addr, m.header.prefix_len).ok()?;
                Some((net, m))
            })
            .collect())
    }

    /// The device's usable IPv6 link-local address, if it has one. A tentative address
    /// (duplicate address detection still running) does not count: the kernel refuses to
    /// send from it.
    pub async fn link_local(&self, index: u32) -> Result<Option<Ipv6Addr>, NetlinkError> {
        Ok(self.addresses(index).await?.into_iter().find_map(|(n, m)| {
            let bad = AddressFlags::Tentative | AddressFlags::Dadfailed;
            let tentative = m
                .attributes
                .iter()
                .any(|a| matches!(a, AddressAttribute::Flags(f) if f.intersects(bad)))
                || m.header
                    .flags
                    .intersects(AddressHeaderFlags::Tentative | AddressHeaderFlags::Dadfailed);
            match n.addr() {
                IpAddr::V6(a) if a.is_unicast_link_local() && !tentative => Some(a),
                _ => None,
            }
        }))
    }

    /// Adds a VIP (IPv6 without duplicate address detection: the VIP moves between nodes
    /// and DAD would delay it by a second). Already present is fine.
    pub async fn add_vip(&self, index: u32, device: &str, vip: IpNet) -> Result<(), NetlinkError> {
        let mut req = self
            .handle
            .address()
            .add(index, vip.addr(), vip.prefix_len());
        if vip.addr().is_ipv6() {
            req.message_mut()
                .attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        match req.execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(libc::EEXIST) => Ok(()),
            Err(source) => Err(NetlinkError::Request {
                what: format!("add {vip} to {device}"),
                source,
            }),
        }
    }

    /// Removes a VIP; absent is fine.
    pub async fn del_vip(&self, index: u32, device: &str, vip: IpNet) -> Result<(), NetlinkError> {
        for (net, msg) in self.addresses(index).await? {
            if net.addr() == vip.addr() {
                match self.handle.address().del(msg).execute().await {
                    Ok(()) => {}
                    Err(e) if errno(&e) == Some(libc::EADDRNOTAVAIL) => {}
                    Err(source) => {
                        return Err(NetlinkError::Request {
                            what: format!("remove {vip} from {device}"),
                            source,
                        });
                    }
                }
            }
        }
        Ok(())
    }

    fn route_msg(
        dest: IpNet,
        gateway: IpAddr,
        index: u32,
    ) -> Result<netlink_packet_route::route::RouteMessage, String> {
        RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(dest.addr(), dest.prefix_len())
            .and_then(|b| b.gateway(gateway))
            .map(|b| b.output_interface(index).build())
            .map_err(|e| format!("route {dest} via {gateway}: {e:?}"))
    }

    /// Installs (or replaces) a route.
    pub async fn add_route(
        &self,
        dest: IpNet,
        gateway: IpAddr,
        index: u32,
        device: &str,
    ) -> Result<(), NetlinkError> {
        let what = format!("add route {dest} via {gateway} dev {device}");
        let msg = Self::route_msg(dest, gateway, index).map_err(|e| NetlinkError::Request {
            what: e,
            source: rtnetlink::Error::RequestFailed,
        })?;
        self.handle
            .route()
            .add(msg)
            .replace()
            .execute()
            .await
            .map_err(|source| NetlinkError::Request { what, source })
    }

    /// Withdraws a route; absent is fine.
    pub async fn del_route(
        &self,
        dest: IpNet,
        gateway: IpAddr,
        index: u32,
        device: &str,
    ) -> Result<(), NetlinkError> {
        let what = format!("remove route {dest} via {gateway} dev {device}");
        let mut msg = Self::route_msg(dest, gateway, index).map_err(|e| NetlinkError::Request {
            what: e,
            source: rtnetlink::Error::RequestFailed,
        })?;
        // Match the route whoever installed it (as `ip route del` does): any protocol,
        // any scope.
        msg.header.protocol = netlink_packet_route::route::RouteProtocol::Unspec;
        msg.header.scope = netlink_packet_route::route::RouteScope::NoWhere;
        match self.handle.route().del(msg).execute().await {
            Ok(()) => Ok(()),
            Err(e) if matches!(errno(&e), Some(libc::ESRCH) | Some(libc::ENOENT)) => Ok(()),
            Err(source) => Err(NetlinkError::Request { what, source }),
        }
    }
}

/// Subscribes to link events (RTMGRP_LINK) and sends each link's state on `tx`.
pub fn watch_links(tx: tokio::sync::mpsc::UnboundedSender<Link>) -> Result<(), NetlinkError> {
    use netlink_sys::{AsyncSocket, SocketAddr};
    let (mut conn, _handle, mut messages) =
        rtnetlink::new_connection().map_err(NetlinkError::Open)?;
    conn.socket_mut()
        .socket_mut()
        .bind(&SocketAddr::new(0, rtnetlink::constants::RTMGRP_LINK))
        .map_err(NetlinkError::Open)?;
    tokio::spawn(conn);
    tokio::spawn(async move {
        // Keep the handle alive with the connection.
        let _keep = _handle;
        while let Some((msg, _)) = messages.next().await {
            if let netlink_packet_core::NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(
                m,
            )) = msg.payload
                && tx.send(link_of(&m)).is_err()
            {
                break;
            }
        }
    });
    Ok(())
}
