//! The switch's IO shell: one UDP socket per port on 127.0.0.1, one receiving thread per
//! port, and one thread that releases delayed frames in due order. Every decision is the
//! core's ([`super::core::Switch::frame`]); this file only moves datagrams.
//!
//! Plain std threads rather than tokio: the work per frame is one `recv`, one short
//! mutex-held decision and one `send` per egress port, and a blocking thread per port
//! keeps the latency of a frame independent of any scheduler.

use std::collections::BinaryHeap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::core::{Forward, PortId, PortSpec, Switch};

/// Receive buffer of each switch port socket (the kernel caps it at `rmem_max`).
const RECV_BUFFER: usize = 4 << 20;

/// Largest frame accepted (jumbo-sized; virtio-net sends at most MTU + header).
const MAX_FRAME: usize = 65_536;

/// Errors of the switch's IO shell.
#[derive(Debug, thiserror::Error)]
pub enum SwitchIoError {
    /// A port socket could not be created.
    #[error("switch port {port}: cannot bind a UDP socket on 127.0.0.1: {source}")]
    Bind {
        /// Port name.
        port: String,
        /// Cause.
        source: std::io::Error,
    },
    /// A thread could not be started.
    #[error("switch: cannot start a thread: {0}")]
    Thread(std::io::Error),
}

/// The two loopback endpoints of a port: the VM's NIC talks from `vm` to `switch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Endpoint {
    /// The switch's socket.
    pub switch: SocketAddr,
    /// The VM side: the address of a socket the switch binds, connects to its port and
    /// holds for its whole life ([`RunningSwitch::vm_socket`]); QEMU gets that socket as
    /// an inherited fd (`-netdev dgram,local.type=fd`), so no other process can take the
    /// port between the lab choosing it and QEMU using it, and a VM restart reuses it.
    pub vm: SocketAddr,
}

impl Endpoint {
    /// The QEMU `-netdev` options for this port when QEMU inherits the VM-side socket as
    /// file descriptor `fd` (after `dgram,id=ID,`). QEMU then `send`s on the connected
    /// socket and needs no address of its own.
    pub fn qemu_netdev_fd(fd: i32) -> String {
        format!("local.type=fd,local.str={fd}")
    }

    /// The QEMU `-netdev` options for this port with QEMU binding the VM side itself
    /// (after `dgram,id=ID,`); only usable when nothing holds [`Endpoint::vm`].
    pub fn qemu_netdev(&self) -> String {
        format!(
            "local.type=inet,local.host={},local.port={},remote.type=inet,remote.host={},remote.port={}",
            self.vm.ip(),
            self.vm.port(),
            self.switch.ip(),
            self.switch.port()
        )
    }
}

type Delayed = (Instant, u64, PortId, Vec<u8>);

/// A running switch; stops its threads on drop.
#[derive(Debug)]
pub struct RunningSwitch {
    core: Arc<Mutex<Switch>>,
    endpoints: Vec<Endpoint>,
    vm_sockets: Vec<UdpSocket>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    epoch: Instant,
}

impl RunningSwitch {
    /// Binds one socket per port and starts forwarding.
    pub fn start(specs: Vec<PortSpec>, seed: u64) -> Result<RunningSwitch, SwitchIoError> {
        let mut sockets = Vec::new();
        let mut endpoints = Vec::new();
        // The VM sides stay bound (and are handed to QEMU as fds): a port released for
        // QEMU to bind could be taken by another process in between.
        let mut vm_sockets = Vec::new();
        for spec in &specs {
            let bind = |source| SwitchIoError::Bind {
                port: spec.name(),
                source,
            };
            let sock = UdpSocket::bind("127.0.0.1:0").map_err(bind)?;
            // Bursts (a flood to every port, TCP slow start) must queue, not drop: the
            // default 208 KiB buffer holds only ~3000 small frames.
            socket2::SockRef::from(&sock)
                .set_recv_buffer_size(RECV_BUFFER)
                .map_err(bind)?;
            sock.set_read_timeout(Some(Duration::from_millis(200)))
                .map_err(bind)?;
            let switch = sock.local_addr().map_err(bind)?;
            let vm_sock = UdpSocket::bind("127.0.0.1:0").map_err(bind)?;
            vm_sock.connect(switch).map_err(bind)?;
            let vm = vm_sock.local_addr().map_err(bind)?;
            vm_sockets.push(vm_sock);
            endpoints.push(Endpoint { switch, vm });
            sockets.push(Arc::new(sock));
        }
        let core = Arc::new(Mutex::new(Switch::new(specs, seed)));
        let stop = Arc::new(AtomicBool::new(false));
        let (delay_tx, delay_rx) = mpsc::channel::<Delayed>();
        let epoch = Instant::now();
        let mut threads = Vec::new();
        for (id, sock) in sockets.iter().enumerate() {
            let ctx = PortThread {
                id,
                core: core.clone(),
                sockets: sockets.clone(),
                endpoints: endpoints.clone(),
                stop: stop.clone(),
                delay: delay_tx.clone(),
                epoch,
            };
            let sock = sock.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("switch-port-{id}"))
                    .spawn(move || ctx.run(&sock))
                    .map_err(SwitchIoError::Thread)?,
            );
        }
        drop(delay_tx);
        {
            let sockets = sockets.clone();
            let endpoints = endpoints.clone();
            let stop = stop.clone();
            threads.push(
                std::thread::Builder::new()
                    .name("switch-delay".into())
                    .spawn(move || delayer(delay_rx, &sockets, &endpoints, &stop))
                    .map_err(SwitchIoError::Thread)?,
            );
        }
        Ok(RunningSwitch {
            core,
            endpoints,
            vm_sockets,
            stop,
            threads,
            epoch,
        })
    }

    /// The switch clock (ms since start), the time base of the core's observations.
    pub fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// The switch time of an instant.
    pub fn ms_at(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.epoch).as_millis() as u64
    }

    /// The endpoints, in port order.
    pub fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }

    /// The VM side of `port`: bound to [`Endpoint::vm`] and connected to the switch's
    /// socket; what a VM's NIC (QEMU, via its fd) sends and receives on.
    pub fn vm_socket(&self, port: PortId) -> &UdpSocket {
        &self.vm_sockets[port]
    }

    /// Locks the core, to change impairments or read counters.
    pub fn core(&self) -> MutexGuard<'_, Switch> {
        // A panicking port thread cannot leave the core half-updated in a way that
        // matters (every field is valid after each statement): keep going.
        self.core.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for RunningSwitch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

struct PortThread {
    id: PortId,
    core: Arc<Mutex<Switch>>,
    sockets: Vec<Arc<UdpSocket>>,
    endpoints: Vec<Endpoint>,
    stop: Arc<AtomicBool>,
    delay: mpsc::Sender<Delayed>,
    epoch: Instant,
}

impl PortThread {
    fn run(&self, sock: &UdpSocket) {
        let mut buf = vec![0u8; MAX_FRAME];
        let mut out: Vec<Forward> = Vec::new();
        let mut seq = 0u64;
        while !self.stop.load(Ordering::Relaxed) {
            let (n, from) = match sock.recv_from(&mut buf) {
                Ok(x) => x,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    continue;
                }
                Err(e) => {
                    tracing::warn!(port = self.id, error = %e, "switch port receive failed");
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
            };
            // Only the VM of this port may inject frames into it.
            if from != self.endpoints[self.id].vm {
                continue;
            }
            let frame = &buf[..n];
            let now_ms = self.epoch.elapsed().as_millis() as u64;
            {
                let mut core = self.core.lock().unwrap_or_else(|e| e.into_inner());
                core.frame(self.id, frame, now_ms, &mut out);
            }
            for f in &out {
                if f.delay.is_zero() {
                    // A VM that is not running yet refuses the datagram: that is a lost
                    // frame on a dead link, exactly what a real switch would see.
                    let _ = self.sockets[f.port].send_to(frame, self.endpoints[f.port].vm);
                } else {
                    seq += 1;
                    let _ = self.delay.send((
                        Instant::now() + f.delay,
                        (self.id as u64) << 48 | seq,
                        f.port,
                        frame.to_vec(),
                    ));
                }
            }
        }
    }
}

/// Releases delayed frames when due, earliest first (FIFO among equal due times).
fn delayer(
    rx: mpsc::Receiver<Delayed>,
    sockets: &[Arc<UdpSocket>],
    endpoints: &[Endpoint],
    stop: &AtomicBool,
) {
    use std::cmp::Reverse;
    let mut heap: BinaryHeap<Reverse<Delayed>> = BinaryHeap::new();
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        while heap.peek().is_some_and(|Reverse(d)| d.0 <= now) {
            if let Some(Reverse((_, _, port, frame))) = heap.pop() {
                let _ = sockets[port].send_to(&frame, endpoints[port].vm);
            }
        }
        let wait = heap
            .peek()
            .map(|Reverse(d)| d.0.saturating_duration_since(now))
            .unwrap_or(Duration::from_millis(200))
            .min(Duration::from_millis(200));
        match rx.recv_timeout(wait) {
            Ok(d) => heap.push(Reverse(d)),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                if heap.is_empty() {
                    return;
                }
                std::thread::sleep(wait);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::switch::core::{Dir, Impairment};

    fn spec(n: &str, s: &str) -> PortSpec {
        PortSpec {
            node: n.into(),
            segment: s.into(),
        }
    }

    /// A fake VM NIC: a UDP socket on the VM side of an endpoint (real sockets, real
    /// switch threads; only the guest is replaced by the test).
    fn nic(sw: &RunningSwitch, port: PortId) -> UdpSocket {
        let s = sw.vm_socket(port).try_clone().unwrap();
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        s
    }

    fn frame(dst: u8, src: u8, payload: u8) -> Vec<u8> {
        let mut f = vec![0x02, 0, 0, 0, 0, dst, 0x02, 0, 0, 0, 0, src, 0x08, 0x00];
        f.extend_from_slice(&[payload; 50]);
        f
    }

    fn recv(s: &UdpSocket) -> Option<Vec<u8>> {
        let mut b = [0u8; 2048];
        s.recv(&mut b).ok().map(|n| b[..n].to_vec())
    }

    #[test]
    fn forwards_over_loopback_udp_and_applies_cut_and_delay() {
        let sw = RunningSwitch::start(
            vec![spec("a", "seg"), spec("b", "seg"), spec("c", "other")],
            1,
        )
        .unwrap();
        let (a, b, c) = (nic(&sw, 0), nic(&sw, 1), nic(&sw, 2));
        a.send(&frame(0xff, 1, 1)).unwrap();
        assert_eq!(recv(&b), Some(frame(0xff, 1, 1)));
        assert_eq!(recv(&c), None, "other segment");
        sw.core().set_cut(1, true);
        a.send(&frame(0xff, 1, 2)).unwrap();
        assert_eq!(recv(&b), None, "cut");
        sw.core().heal_all();
        sw.core()
            .set_impairment(
                1,
                Dir::Tx,
                Impairment {
                    delay_ms: 150,
                    ..Impairment::default()
                },
            )
            .unwrap();
        let t = Instant::now();
        for i in 0..5 {
            a.send(&frame(0xff, 1, 10 + i)).unwrap();
        }
        for i in 0..5 {
            assert_eq!(recv(&b), Some(frame(0xff, 1, 10 + i)), "in order");
        }
        assert!(t.elapsed() >= Duration::from_millis(150), "delayed");
        assert_eq!(sw.core().counters(1).tx, 6);
    }
}
