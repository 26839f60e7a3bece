//! Traffic probes built on `std::net` sockets created inside a namespace: listeners that
//! answer every TCP connection or UDP datagram with the peer address they saw (so a test
//! learns what NAT did), and clients that report that answer or `None` when the traffic
//! was dropped. No helper programs, so no fork/exec latency on a loaded machine.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::{Netns, Result, TestkitError};

/// A listener answering with the peer address; stopped and joined on drop.
#[derive(Debug)]
pub struct PeerEcho {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    local: SocketAddr,
}

fn io_err(what: String) -> impl FnOnce(std::io::Error) -> TestkitError {
    move |source| TestkitError::Spawn { cmd: what, source }
}

impl PeerEcho {
    /// Listens on TCP `addr` inside `ns`; each connection gets `PEER_IP\n`, then closes.
    pub fn tcp(ns: &Netns, addr: SocketAddr) -> Result<PeerEcho> {
        let l = ns
            .enter(move || TcpListener::bind(addr))?
            .map_err(io_err(format!("bind tcp {addr}")))?;
        l.set_nonblocking(true)
            .map_err(io_err("nonblocking".into()))?;
        let local = l.local_addr().map_err(io_err("local_addr".into()))?;
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((mut c, peer)) => {
                        let _ = c.set_nonblocking(false);
                        let _ = writeln!(c, "{}", peer.ip());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Ok(PeerEcho {
            stop,
            thread: Some(thread),
            local,
        })
    }

    /// Listens on UDP `addr` inside `ns`; each datagram is answered with `PEER_IP\n`.
    pub fn udp(ns: &Netns, addr: SocketAddr) -> Result<PeerEcho> {
        let sock = ns
            .enter(move || UdpSocket::bind(addr))?
            .map_err(io_err(format!("bind udp {addr}")))?;
        sock.set_read_timeout(Some(Duration::from_millis(20)))
            .map_err(io_err("timeout".into()))?;
        let local = sock.local_addr().map_err(io_err("local_addr".into()))?;
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !s.load(Ordering::Relaxed) {
                if let Ok((_, peer)) = sock.recv_from(&mut buf) {
                    let _ = sock.send_to(format!("{}\n", peer.ip()).as_bytes(), peer);
                }
            }
        });
        Ok(PeerEcho {
            stop,
            thread: Some(thread),
            local,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }
}

impl Drop for PeerEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn parse_answer(text: &str) -> Option<IpAddr> {
    text.trim().parse().ok()
}

/// Connects from inside `ns` to `target` (optionally from the local address `bind`)
/// and returns the peer address the [`PeerEcho`] reported, or `None` when the
/// connection failed or nothing came back within `timeout`.
pub fn tcp_probe(
    ns: &Netns,
    target: SocketAddr,
    bind: Option<IpAddr>,
    timeout: Duration,
) -> Result<Option<IpAddr>> {
    ns.enter(move || -> Option<IpAddr> {
        let s = Socket::new(
            Domain::for_address(target),
            Type::STREAM,
            Some(Protocol::TCP),
        )
        .ok()?;
        if let Some(b) = bind {
            s.bind(&SockAddr::from(SocketAddr::new(b, 0))).ok()?;
        }
        s.connect_timeout(&SockAddr::from(target), timeout).ok()?;
        s.set_read_timeout(Some(timeout)).ok()?;
        let mut stream: std::net::TcpStream = s.into();
        let mut text = String::new();
        stream.read_to_string(&mut text).ok()?;
        parse_answer(&text)
    })
}

/// Sends one datagram from inside `ns` to `target` and returns the peer address the
/// [`PeerEcho`] reported, or `None` when no answer came within `timeout`.
pub fn udp_probe(
    ns: &Netns,
    target: SocketAddr,
    bind: Option<IpAddr>,
    timeout: Duration,
) -> Result<Option<IpAddr>> {
    ns.enter(move || -> Option<IpAddr> {
        let local = bind.unwrap_or(match target {
            SocketAddr::V4(_) => IpAddr::from([0u8; 4]),
            SocketAddr::V6(_) => IpAddr::from([0u16; 8]),
        });
        let s = UdpSocket::bind(SocketAddr::new(local, 0)).ok()?;
        s.connect(target).ok()?;
        s.set_read_timeout(Some(timeout)).ok()?;
        s.send(b"probe\n").ok()?;
        let mut buf = [0u8; 256];
        let n = s.recv(&mut buf).ok()?;
        parse_answer(&String::from_utf8_lossy(&buf[..n]))
    })
}
