//! Echo traffic for the failover tests: an echo server (TCP and UDP) and many long-lived
//! client flows that echo continuously and record when each echo came back, so that a test
//! can count survivors and measure the longest gap per flow.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;

/// Runs an echo server on these TCP and UDP ports (all addresses) on the current thread's
/// namespace; returns once the sockets are bound. The server threads stop with `stop`.
pub fn echo_server(
    tcp_ports: &[u16],
    udp_ports: &[u16],
    stop: Arc<AtomicBool>,
) -> std::io::Result<()> {
    for &p in tcp_ports {
        let l = TcpListener::bind(("0.0.0.0", p))?;
        l.set_nonblocking(true)?;
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((s, _)) => {
                        let stop = stop.clone();
                        std::thread::spawn(move || echo_tcp(s, stop));
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5))
                    }
                    Err(_) => return,
                }
            }
        });
    }
    for &p in udp_ports {
        let u = UdpSocket::bind(("0.0.0.0", p))?;
        u.set_read_timeout(Some(Duration::from_millis(200)))?;
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            while !stop.load(Ordering::Relaxed) {
                if let Ok((n, from)) = u.recv_from(&mut buf) {
                    let _ = u.send_to(&buf[..n], from);
                }
            }
        });
    }
    Ok(())
}

fn echo_tcp(mut s: TcpStream, stop: Arc<AtomicBool>) {
    let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
    let _ = s.set_nodelay(true);
    let mut buf = [0u8; 64];
    while !stop.load(Ordering::Relaxed) {
        match s.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if s.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
    }
}

/// TCP or UDP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    /// A TCP connection.
    Tcp,
    /// A connected UDP socket.
    Udp,
}

/// What one flow saw.
#[derive(Debug, Clone)]
pub struct FlowStats {
    /// Protocol.
    pub proto: Proto,
    /// Server address.
    pub target: SocketAddr,
    /// Echoes that came back.
    pub ok: u64,
    /// When the last echo came back.
    pub last_ok: Option<Instant>,
    /// Longest time between two echoes coming back.
    pub max_gap: Duration,
    /// The connection failed for good (reset, error).
    pub error: Option<String>,
}

impl FlowStats {
    /// True when the flow was still working after `t`.
    pub fn alive_after(&self, t: Instant) -> bool {
        self.error.is_none() && self.last_ok.is_some_and(|l| l > t)
    }
}

/// Running flows.
#[derive(Debug)]
pub struct Flows {
    stop: Arc<AtomicBool>,
    handles: Vec<JoinHandle<FlowStats>>,
}

impl Flows {
    /// Opens the flows from the current thread's namespace (every socket is created here,
    /// so the flows stay in it) and starts echoing every `interval`. TCP connections that
    /// cannot be set up are an error.
    pub fn start(targets: &[(Proto, SocketAddr)], interval: Duration) -> std::io::Result<Flows> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut handles = Vec::new();
        for (k, &(proto, target)) in targets.iter().enumerate() {
            let flow_stop = stop.clone();
            let started = match proto {
                Proto::Tcp => {
                    TcpStream::connect_timeout(&target, Duration::from_secs(5)).and_then(|s| {
                        s.set_nodelay(true)?;
                        s.set_read_timeout(Some(Duration::from_millis(100)))?;
                        std::thread::Builder::new()
                            .stack_size(64 * 1024)
                            .spawn(move || tcp_flow(s, target, interval, flow_stop))
                    })
                }
                Proto::Udp => UdpSocket::bind("0.0.0.0:0").and_then(|s| {
                    s.connect(target)?;
                    s.set_read_timeout(Some(Duration::from_millis(100)))?;
                    std::thread::Builder::new()
                        .stack_size(64 * 1024)
                        .spawn(move || udp_flow(s, target, interval, flow_stop))
                }),
            };
            match started {
                Ok(h) => handles.push(h),
                Err(e) => {
                    // The flows already running stop; the error names the one that failed.
                    let _ = Flows { stop, handles }.stop();
                    return Err(std::io::Error::new(
                        e.kind(),
                        format!(
                            "{proto:?} flow {} of {} to {target} (the first {k} had started): {e}",
                            k + 1,
                            targets.len()
                        ),
                    ));
                }
            }
        }
        Ok(Flows { stop, handles })
    }

    /// Stops every flow and returns what each saw.
    pub fn stop(self) -> Vec<FlowStats> {
        self.stop.store(true, Ordering::Relaxed);
        self.handles
            .into_iter()
            .map(|h| h.join().expect("flow thread panicked"))
            .collect()
    }
}

fn record(st: &mut FlowStats) {
    let now = Instant::now();
    if let Some(l) = st.last_ok {
        st.max_gap = st.max_gap.max(now - l);
    }
    st.last_ok = Some(now);
    st.ok += 1;
}

fn tcp_flow(
    mut s: TcpStream,
    target: SocketAddr,
    interval: Duration,
    stop: Arc<AtomicBool>,
) -> FlowStats {
    let mut st = FlowStats {
        proto: Proto::Tcp,
        target,
        ok: 0,
        last_ok: None,
        max_gap: Duration::ZERO,
        error: None,
    };
    let mut n: u64 = 0;
    'outer: while !stop.load(Ordering::Relaxed) {
        n += 1;
        if let Err(e) = s.write_all(&n.to_be_bytes()) {
            st.error = Some(e.to_string());
            break;
        }
        let mut got = [0u8; 8];
        let mut have = 0;
        // TCP retransmits on its own: keep waiting for this echo.
        while have < 8 {
            if stop.load(Ordering::Relaxed) {
                break 'outer;
            }
            match s.read(&mut got[have..]) {
                Ok(0) => {
                    st.error = Some("closed by peer".into());
                    break 'outer;
                }
                Ok(k) => have += k,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) => {
                    st.error = Some(e.to_string());
                    break 'outer;
                }
            }
        }
        if got != n.to_be_bytes() {
            st.error = Some("echo mismatch".into());
            break;
        }
        record(&mut st);
        std::thread::sleep(interval);
    }
    st
}

fn udp_flow(
    s: UdpSocket,
    target: SocketAddr,
    interval: Duration,
    stop: Arc<AtomicBool>,
) -> FlowStats {
    let mut st = FlowStats {
        proto: Proto::Udp,
        target,
        ok: 0,
        last_ok: None,
        max_gap: Duration::ZERO,
        error: None,
    };
    let mut n: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let _ = s.send(&n.to_be_bytes());
        let deadline = Instant::now() + interval.max(Duration::from_millis(100));
        let mut buf = [0u8; 8];
        while Instant::now() < deadline {
            match s.recv(&mut buf) {
                Ok(8) if buf == n.to_be_bytes() => {
                    record(&mut st);
                    break;
                }
                _ => {}
            }
        }
        std::thread::sleep(interval);
    }
    st
}

/// Summary of a failover run.
#[derive(Debug, Clone, Serialize)]
pub struct Survival {
    /// Flows started.
    pub flows: usize,
    /// Flows still working after the failover.
    pub survived: usize,
    /// TCP flows / survivors.
    pub tcp: (usize, usize),
    /// UDP flows / survivors.
    pub udp: (usize, usize),
    /// Longest echo gap of any surviving flow, ms.
    pub longest_gap_ms: f64,
    /// Median over surviving flows of their longest gap, ms.
    pub median_gap_ms: f64,
}

/// Counts survivors (a flow survives when it echoed after `after`) and summarises gaps.
pub fn survival(stats: &[FlowStats], after: Instant) -> Survival {
    let alive: Vec<&FlowStats> = stats.iter().filter(|s| s.alive_after(after)).collect();
    let count = |p| {
        (
            stats.iter().filter(|s| s.proto == p).count(),
            alive.iter().filter(|s| s.proto == p).count(),
        )
    };
    let mut gaps: Vec<f64> = alive
        .iter()
        .map(|s| s.max_gap.as_secs_f64() * 1e3)
        .collect();
    gaps.sort_by(f64::total_cmp);
    Survival {
        flows: stats.len(),
        survived: alive.len(),
        tcp: count(Proto::Tcp),
        udp: count(Proto::Udp),
        longest_gap_ms: gaps.last().copied().unwrap_or(0.0),
        median_gap_ms: gaps.get(gaps.len() / 2).copied().unwrap_or(0.0),
    }
}
