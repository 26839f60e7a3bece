//! The traffic agent that lab hosts run (`twinwall lab agent server|client`).
//!
//! * server: echoes TCP (one thread per connection) and UDP on one port;
//! * client: keeps N long-lived TCP flows and one UDP flow to the server, each sending a
//!   small numbered message, waiting for its echo and then the interval
//!   ([`FlowMode::StopAndWait`]; [`FlowMode::Stream`] sends every interval and checks
//!   that the echoes come back in order); per flow it records
//!   the longest gap between two echoes, resets (a connection that died: RST, EOF, error),
//!   stalls (an established connection whose echo has not come back for
//!   [`ClientConfig::stall_after`]: a firewall dropping it as invalid, which TCP would only
//!   give up on after ~15 min) and why the flow is down; it reconnects at once and retries
//!   every [`RETRY`] with each SYN given [`CONNECT_TIMEOUT`], so a connect attempted before
//!   the path is up never backs off (the kernel's SYN backoff would double each wait). It
//!   serves these numbers as one JSON line per request on a TCP port, which the lab
//!   forwards to the host.
//!
//! Stats protocol: the host connects, writes `stats\n` (or `reset\n`: the numbers are
//! returned and then zeroed, so the next `stats` covers only what came after), reads one
//! JSON line ([`ClientStats`]) and the connection closes. `probe\n` instead runs one new
//! connection to the server and answers with what it saw ([`crate::probe`]).

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Bytes per echo message: flow id (u32), sequence (u64), padding.
pub const MSG: usize = 16;

/// Time between two connection attempts of a flow that is down.
pub const RETRY: Duration = Duration::from_millis(200);

/// How long one connection attempt waits for the SYN-ACK: short, so the next attempt
/// sends a fresh SYN instead of waiting out the kernel's exponential SYN backoff.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(800);

/// Default of [`ClientConfig::stall_after`].
pub const STALL_AFTER: Duration = Duration::from_secs(10);

/// Errors of the agent, naming the address concerned.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// A socket could not be bound.
    #[error("agent: cannot bind {addr}: {source}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// A thread could not be started.
    #[error("agent: cannot start a thread: {0}")]
    Thread(std::io::Error),
    /// Fetching stats failed.
    #[error("agent stats at {addr}: {reason}")]
    Stats {
        /// Address.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
}

fn spawn(name: String, f: impl FnOnce() + Send + 'static) -> Result<(), AgentError> {
    std::thread::Builder::new()
        .name(name)
        .spawn(f)
        .map(|_| ())
        .map_err(AgentError::Thread)
}

/// Runs the echo server on `listen` (TCP and UDP) until the process ends.
pub fn serve(listen: SocketAddr) -> Result<(), AgentError> {
    let bind = |source| AgentError::Bind {
        addr: listen,
        source,
    };
    let tcp = TcpListener::bind(listen).map_err(bind)?;
    let udp = UdpSocket::bind(listen).map_err(bind)?;
    spawn("echo-udp".into(), move || {
        let mut buf = [0u8; 2048];
        loop {
            if let Ok((n, from)) = udp.recv_from(&mut buf) {
                let _ = udp.send_to(&buf[..n], from);
            }
        }
    })?;
    tracing::info!(listen = %listen, "echo server up");
    for conn in tcp.incoming() {
        let Ok(mut s) = conn else { continue };
        let peer = s.peer_addr().ok();
        let _ = s.set_nodelay(true);
        spawn("echo-tcp".into(), move || {
            let mut buf = [0u8; 4096];
            loop {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if s.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                }
            }
            tracing::debug!(peer = ?peer, "echo connection closed");
        })?;
    }
    Ok(())
}

/// The client's settings.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The echo server (through the VIPs in the lab).
    pub target: SocketAddr,
    /// Number of TCP flows.
    pub flows: usize,
    /// Also run one UDP flow.
    pub udp: bool,
    /// Time between two messages of a flow.
    pub interval: Duration,
    /// Where the stats are served.
    pub stats: SocketAddr,
    /// An established TCP flow whose echo is missing this long counts as stalled (broken)
    /// and is reconnected.
    pub stall_after: Duration,
    /// How the TCP flows send.
    pub mode: FlowMode,
}

/// How a TCP flow sends its messages.
///
/// The choice decides what a TCP flow's gap measures after a path outage. A
/// stop-and-wait flow (the default: an interactive session) has one segment in flight;
/// when it is lost, only TCP's timers resend it (tail loss probe ~200 ms, then the
/// retransmission timeout, doubling), so its gap is the outage rounded *up* to that
/// schedule: in netns (`scripts/lab-gap.sh`) a 330 ms outage gave 433-441 ms. A stream
/// sends a message every interval whatever is unechoed; that does not recover sooner:
/// the first retransmission timeout during the outage collapses the congestion window to
/// one segment, the new messages wait in the socket, and the next timeout (~600 ms after
/// the first loss) is what recovers: 652-680 ms for the same outage. Both are the
/// client's TCP, not the firewall; the UDP flow's gap is the path's own outage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FlowMode {
    /// A message every interval, whatever is still unechoed; echoes checked in order.
    Stream,
    /// Send, wait for the echo, wait the interval, send the next.
    #[default]
    StopAndWait,
}

/// Transport of a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

/// One flow's numbers since the last reset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlowStats {
    /// Flow number.
    pub id: usize,
    /// Transport.
    pub proto: Proto,
    /// Whether a connection (TCP) is established now.
    pub connected: bool,
    /// Echoes received.
    pub echoes: u64,
    /// Longest time between two echoes (or from the reset to the first), in ms.
    pub longest_gap_ms: u64,
    /// Time since the last echo, in ms.
    pub current_gap_ms: u64,
    /// Established connections that died (RST, EOF, error).
    pub resets: u64,
    /// Connection attempts that failed.
    pub connect_failures: u64,
    /// Established connections given up because no echo came back for the stall time.
    #[serde(default)]
    pub stalls: u64,
    /// Why the flow is down, or what ended its last connection (`None`: never failed).
    #[serde(default)]
    pub last_error: Option<String>,
    /// Messages sent.
    pub sent: u64,
}

/// Everything the client serves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientStats {
    /// The server address.
    pub target: String,
    /// Milliseconds since the client started (guest clock).
    pub uptime_ms: u64,
    /// Milliseconds covered by these numbers (since the last reset).
    pub window_ms: u64,
    /// Per flow.
    pub flows: Vec<FlowStats>,
}

impl ClientStats {
    /// The longest gap of any flow, counting a flow's still-open gap.
    pub fn longest_gap_ms(&self) -> u64 {
        self.flows
            .iter()
            .map(|f| f.longest_gap_ms.max(f.current_gap_ms))
            .max()
            .unwrap_or(0)
    }

    /// TCP flows with at least one reset or stall, and the number of TCP flows.
    pub fn tcp_broken(&self) -> (usize, usize) {
        let tcp = self.flows.iter().filter(|f| f.proto == Proto::Tcp);
        (
            tcp.clone().filter(|f| f.resets + f.stalls > 0).count(),
            tcp.count(),
        )
    }

    /// Why each flow that is not flowing (within `ms`) is not: `flow N: reason`.
    pub fn why_not_flowing(&self, ms: u64) -> Vec<String> {
        self.flows
            .iter()
            .filter(|f| !f.flowing(ms))
            .map(|f| {
                let state = if f.proto == Proto::Tcp && !f.connected {
                    format!("down ({} connect failures)", f.connect_failures)
                } else if f.echoes == 0 {
                    "no echo yet".to_string()
                } else {
                    format!("no echo for {} ms", f.current_gap_ms)
                };
                match &f.last_error {
                    Some(e) => format!("flow {} {:?}: {state}, last error: {e}", f.id, f.proto),
                    None => format!("flow {} {:?}: {state}", f.id, f.proto),
                }
            })
            .collect()
    }

    /// Whether every TCP flow is connected and every flow saw an echo within `ms`.
    pub fn all_flowing(&self, ms: u64) -> bool {
        !self.flows.is_empty() && self.flows.iter().all(|f| f.flowing(ms))
    }
}

impl FlowStats {
    /// Connected (TCP) and an echo within `ms`.
    pub fn flowing(&self, ms: u64) -> bool {
        self.echoes > 0 && self.current_gap_ms <= ms && (self.proto == Proto::Udp || self.connected)
    }
}

#[derive(Debug)]
struct Flow {
    id: usize,
    proto: Proto,
    connected: bool,
    echoes: u64,
    longest_gap: Duration,
    last_echo: Instant,
    resets: u64,
    connect_failures: u64,
    stalls: u64,
    last_error: Option<String>,
    sent: u64,
}

impl Flow {
    fn new(id: usize, proto: Proto) -> Flow {
        Flow {
            id,
            proto,
            connected: false,
            echoes: 0,
            longest_gap: Duration::ZERO,
            last_echo: Instant::now(),
            resets: 0,
            connect_failures: 0,
            stalls: 0,
            last_error: None,
            sent: 0,
        }
    }

    fn echo(&mut self, now: Instant) {
        // The first echo after start-up (or after a connect) is not a gap of the path.
        if self.echoes > 0 {
            self.longest_gap = self.longest_gap.max(now - self.last_echo);
        }
        self.echoes += 1;
        self.last_echo = now;
    }

    fn stats(&self, now: Instant) -> FlowStats {
        FlowStats {
            id: self.id,
            proto: self.proto,
            connected: self.connected,
            echoes: self.echoes,
            longest_gap_ms: self.longest_gap.as_millis() as u64,
            current_gap_ms: if self.echoes > 0 {
                (now - self.last_echo).as_millis() as u64
            } else {
                0
            },
            resets: self.resets,
            connect_failures: self.connect_failures,
            stalls: self.stalls,
            last_error: self.last_error.clone(),
            sent: self.sent,
        }
    }

    fn reset(&mut self, now: Instant) {
        // An open gap keeps running across a reset: the window starts now, so the part
        // before it is not counted, but a flow that is still stuck shows as stuck.
        if self.echoes > 0 {
            self.last_echo = self.last_echo.max(now);
            self.echoes = 1;
        }
        self.longest_gap = Duration::ZERO;
        self.resets = 0;
        self.connect_failures = 0;
        self.stalls = 0;
        self.sent = 0;
    }
}

type Flows = Arc<Mutex<Vec<Flow>>>;

fn with_flow<R>(flows: &Flows, id: usize, f: impl FnOnce(&mut Flow) -> R) -> R {
    let mut g = flows.lock().unwrap_or_else(|e| e.into_inner());
    f(&mut g[id])
}

/// Runs the client until the process ends.
pub fn run_client(cfg: ClientConfig) -> Result<(), AgentError> {
    let stats = TcpListener::bind(cfg.stats).map_err(|source| AgentError::Bind {
        addr: cfg.stats,
        source,
    })?;
    let mut list: Vec<Flow> = (0..cfg.flows).map(|i| Flow::new(i, Proto::Tcp)).collect();
    if cfg.udp {
        list.push(Flow::new(cfg.flows, Proto::Udp));
    }
    let flows: Flows = Arc::new(Mutex::new(list));
    for id in 0..cfg.flows {
        let (flows, cfg) = (flows.clone(), cfg.clone());
        spawn(format!("flow-{id}"), move || tcp_flow(id, &cfg, &flows))?;
    }
    if cfg.udp {
        let (flows, cfg) = (flows.clone(), cfg.clone());
        spawn("flow-udp".into(), move || udp_flow(cfg.flows, &cfg, &flows))?;
    }
    tracing::info!(target = %cfg.target, flows = cfg.flows, udp = cfg.udp, "traffic client up");
    let started = Instant::now();
    let mut window = Instant::now();
    for conn in stats.incoming() {
        let Ok(mut s) = conn else { continue };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let mut line = String::new();
        let _ = BufReader::new(&mut s).read_line(&mut line);
        let now = Instant::now();
        let snapshot = {
            let mut g = flows.lock().unwrap_or_else(|e| e.into_inner());
            let snap = ClientStats {
                target: cfg.target.to_string(),
                uptime_ms: (now - started).as_millis() as u64,
                window_ms: (now - window).as_millis() as u64,
                flows: g.iter().map(|f| f.stats(now)).collect(),
            };
            if line.trim() == "reset" {
                g.iter_mut().for_each(|f| f.reset(now));
                window = now;
            }
            snap
        };
        let mut out = if line.trim() == crate::probe::COMMAND {
            // a fresh connection through the firewalls (`crate::probe`)
            serde_json::to_string(&crate::probe::run(cfg.target)).unwrap_or_default()
        } else {
            serde_json::to_string(&snapshot).unwrap_or_default()
        };
        out.push('\n');
        let _ = s.write_all(out.as_bytes());
    }
    Ok(())
}

fn msg(id: usize, seq: u64) -> [u8; MSG] {
    let mut m = [0u8; MSG];
    m[0..4].copy_from_slice(&(id as u32).to_be_bytes());
    m[4..12].copy_from_slice(&seq.to_be_bytes());
    m
}

/// Why an established flow ended.
#[derive(Debug)]
enum FlowEnd {
    /// The connection died (RST, EOF, a socket error).
    Reset(std::io::Error),
    /// No echo for the stall time: given up, though the socket still looks fine.
    Stalled(Duration),
}

fn tcp_flow(id: usize, cfg: &ClientConfig, flows: &Flows) {
    loop {
        let mut s = match TcpStream::connect_timeout(&cfg.target, CONNECT_TIMEOUT) {
            Ok(s) => s,
            Err(e) => {
                with_flow(flows, id, |f| {
                    f.connect_failures += 1;
                    f.last_error = Some(format!("connect: {e}"));
                });
                std::thread::sleep(RETRY);
                continue;
            }
        };
        let _ = s.set_nodelay(true);
        let _ = s.set_read_timeout(Some(Duration::from_millis(100)));
        with_flow(flows, id, |f| {
            f.connected = true;
            // A new connection starts a fresh gap count.
            f.echoes = 0;
        });
        let end = match cfg.mode {
            FlowMode::Stream => stream_loop(id, cfg, flows, &mut s),
            FlowMode::StopAndWait => echo_loop(id, cfg, flows, &mut s),
        };
        tracing::warn!(flow = id, end = ?end, "flow broken; reconnecting");
        with_flow(flows, id, |f| {
            f.connected = false;
            match &end {
                FlowEnd::Reset(e) => {
                    f.resets += 1;
                    f.last_error = Some(format!("reset: {e}"));
                }
                FlowEnd::Stalled(d) => {
                    f.stalls += 1;
                    f.last_error = Some(format!("stalled: no echo for {} ms", d.as_millis()));
                }
            }
        });
        drop(s);
        std::thread::sleep(RETRY);
    }
}

/// One message in flight at a time: send, wait for the whole echo (TCP retransmits while
/// the path is down) up to the stall time, then wait out the interval. Returns why the
/// flow ended.
fn echo_loop(id: usize, cfg: &ClientConfig, flows: &Flows, s: &mut TcpStream) -> FlowEnd {
    let mut seq = 0u64;
    loop {
        seq += 1;
        let m = msg(id, seq);
        if let Err(e) = s.write_all(&m) {
            return FlowEnd::Reset(e);
        }
        let sent = Instant::now();
        with_flow(flows, id, |f| f.sent += 1);
        let mut got = [0u8; MSG];
        let mut have = 0;
        while have < MSG {
            match s.read(&mut got[have..]) {
                Ok(0) => return FlowEnd::Reset(ErrorKind::UnexpectedEof.into()),
                Ok(n) => have += n,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    if sent.elapsed() >= cfg.stall_after {
                        return FlowEnd::Stalled(sent.elapsed());
                    }
                }
                Err(e) => return FlowEnd::Reset(e),
            }
        }
        if got != m {
            return FlowEnd::Reset(std::io::Error::new(
                ErrorKind::InvalidData,
                "echo does not match",
            ));
        }
        with_flow(flows, id, |f| f.echo(Instant::now()));
        std::thread::sleep(cfg.interval);
    }
}

/// A message every interval, without waiting for echoes; each echo must be the next in
/// order. A flow whose oldest unechoed message is older than the stall time is stalled.
/// Returns why the flow ended.
fn stream_loop(id: usize, cfg: &ClientConfig, flows: &Flows, s: &mut TcpStream) -> FlowEnd {
    let mut sent = 0u64;
    let mut echoed = 0u64;
    // Send times of the messages not yet echoed, oldest first.
    let mut unechoed: std::collections::VecDeque<Instant> = std::collections::VecDeque::new();
    let mut next = Instant::now();
    let mut got = [0u8; MSG];
    let mut have = 0;
    loop {
        let now = Instant::now();
        if now >= next {
            sent += 1;
            if let Err(e) = s.write_all(&msg(id, sent)) {
                return FlowEnd::Reset(e);
            }
            unechoed.push_back(now);
            with_flow(flows, id, |f| f.sent += 1);
            // After a stall of this thread the next message is an interval away, not a
            // burst of catch-ups.
            next = (next + cfg.interval).max(now);
        }
        if let Some(oldest) = unechoed.front()
            && oldest.elapsed() >= cfg.stall_after
        {
            return FlowEnd::Stalled(oldest.elapsed());
        }
        let wait = next
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        if let Err(e) = s.set_read_timeout(Some(wait)) {
            return FlowEnd::Reset(e);
        }
        match s.read(&mut got[have..]) {
            Ok(0) => return FlowEnd::Reset(ErrorKind::UnexpectedEof.into()),
            Ok(n) => {
                have += n;
                if have == MSG {
                    have = 0;
                    if got != msg(id, echoed + 1) {
                        return FlowEnd::Reset(std::io::Error::new(
                            ErrorKind::InvalidData,
                            format!("echo out of order: expected message {}", echoed + 1),
                        ));
                    }
                    echoed += 1;
                    unechoed.pop_front();
                    with_flow(flows, id, |f| f.echo(Instant::now()));
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => return FlowEnd::Reset(e),
        }
    }
}

fn udp_flow(id: usize, cfg: &ClientConfig, flows: &Flows) {
    let bind: SocketAddr = if cfg.target.is_ipv4() {
        "0.0.0.0:0".parse().unwrap_or(cfg.target)
    } else {
        "[::]:0".parse().unwrap_or(cfg.target)
    };
    let Ok(sock) = UdpSocket::bind(bind) else {
        return;
    };
    let _ = sock.set_read_timeout(Some(Duration::from_millis(20)));
    let mut seq = 0u64;
    let mut next = Instant::now();
    let mut buf = [0u8; 64];
    loop {
        if Instant::now() >= next {
            seq += 1;
            // No route yet (or a cut) is just a lost datagram.
            let _ = sock.send_to(&msg(id, seq), cfg.target);
            with_flow(flows, id, |f| f.sent += 1);
            next += cfg.interval;
        }
        if let Ok((n, from)) = sock.recv_from(&mut buf)
            && n == MSG
            && from == cfg.target
        {
            with_flow(flows, id, |f| f.echo(Instant::now()));
        }
    }
}

/// Fetches a client's stats from `addr` (`reset`: and zero them).
pub fn fetch_stats(addr: SocketAddr, reset: bool) -> Result<ClientStats, AgentError> {
    request_json(
        addr,
        if reset { "reset" } else { "stats" },
        Duration::from_secs(5),
    )
}

/// Sends one command line to a client agent's stats port and parses its one-line JSON
/// answer (waiting at most `timeout` for it).
pub(crate) fn request_json<T: serde::de::DeserializeOwned>(
    addr: SocketAddr,
    command: &str,
    timeout: Duration,
) -> Result<T, AgentError> {
    let err = |reason: String| AgentError::Stats { addr, reason };
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))
        .map_err(|e| err(e.to_string()))?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| err(e.to_string()))?;
    s.write_all(format!("{command}\n").as_bytes())
        .map_err(|e| err(e.to_string()))?;
    let mut line = String::new();
    BufReader::new(s)
        .read_line(&mut line)
        .map_err(|e| err(e.to_string()))?;
    if line.is_empty() {
        return Err(err(
            "connection closed without an answer (agent not up yet?)".into(),
        ));
    }
    serde_json::from_str(&line).map_err(|e| err(format!("bad answer {line:?}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn free(kind: &str) -> SocketAddr {
        match kind {
            "tcp" => TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap(),
            _ => UdpSocket::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap(),
        }
    }

    /// Client and server over loopback: flows come up, echo, and a killed server shows as
    /// resets on every TCP flow (a real RST from the kernel, not a simulated one).
    #[test]
    fn client_counts_echoes_and_resets_against_the_real_server() {
        let listen = free("tcp");
        // socat as the server, in its own process group: killing the group kills the
        // forked per-connection children too, which closes every flow for real.
        use std::os::unix::process::CommandExt;
        let server = std::process::Command::new("socat")
            .process_group(0)
            .args([
                &format!("TCP-LISTEN:{},fork,reuseaddr,bind=127.0.0.1", listen.port()),
                "EXEC:cat",
            ])
            .spawn();
        let Ok(mut server) = server else {
            panic!("socat is installed by scripts/deps.sh");
        };
        std::thread::sleep(Duration::from_millis(300));
        let stats = free("tcp");
        let cfg = ClientConfig {
            target: listen,
            flows: 3,
            udp: false,
            interval: Duration::from_millis(10),
            stats,
            stall_after: STALL_AFTER,
            mode: FlowMode::StopAndWait,
        };
        std::thread::spawn(move || run_client(cfg));
        let wait = |pred: &dyn Fn(&ClientStats) -> bool| {
            let start = Instant::now();
            loop {
                if let Ok(s) = fetch_stats(stats, false)
                    && pred(&s)
                {
                    return s;
                }
                assert!(
                    start.elapsed() < Duration::from_secs(20),
                    "condition never met"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        };
        let s = wait(&|s| s.flows.iter().all(|f| f.echoes >= 5));
        assert_eq!(s.tcp_broken(), (0, 3));
        assert!(s.all_flowing(5_000));
        let _ = std::process::Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", server.id())])
            .status();
        let _ = server.wait();
        let s = wait(&|s| s.flows.iter().all(|f| f.resets > 0));
        assert_eq!(s.tcp_broken(), (3, 3));
        let r = fetch_stats(stats, true).unwrap();
        assert!(r.tcp_broken().0 > 0);
        let after = fetch_stats(stats, false).unwrap();
        assert_eq!(after.tcp_broken(), (0, 3), "reset zeroes the counters");
    }

    /// A server that accepts and then never answers (what a firewall that drops a flow as
    /// invalid looks like from the client: the connection stays up, no echo comes back):
    /// the flow counts a stall, is broken, reconnects, and says why. Then a refused
    /// connect is counted with its reason.
    #[test]
    fn a_flow_without_echoes_stalls_reconnects_and_says_why() {
        let silent = TcpListener::bind("127.0.0.1:0").unwrap();
        let target = silent.local_addr().unwrap();
        let held = Arc::new(Mutex::new(Vec::new()));
        {
            let held = held.clone();
            std::thread::spawn(move || {
                for c in silent.incoming().flatten() {
                    held.lock().unwrap().push(c);
                }
            });
        }
        let stats = free("tcp");
        let cfg = ClientConfig {
            target,
            flows: 2,
            udp: false,
            interval: Duration::from_millis(10),
            stats,
            stall_after: Duration::from_millis(400),
            mode: FlowMode::Stream,
        };
        std::thread::spawn(move || run_client(cfg));
        let start = Instant::now();
        let s = loop {
            if let Ok(s) = fetch_stats(stats, false)
                && s.flows.iter().all(|f| f.stalls >= 2)
            {
                break s;
            }
            assert!(start.elapsed() < Duration::from_secs(20), "no stalls seen");
            std::thread::sleep(Duration::from_millis(50));
        };
        assert_eq!(s.tcp_broken(), (2, 2));
        assert!(held.lock().unwrap().len() >= 4, "each stall reconnected");
        assert!(
            s.flows[0]
                .last_error
                .as_deref()
                .is_some_and(|e| e.starts_with("stalled: no echo for")),
            "{:?}",
            s.flows[0].last_error
        );
        assert!(!s.all_flowing(1000));
        assert_eq!(s.why_not_flowing(1000).len(), 2);

        // Nobody listens: connect failures, retried every RETRY, with the kernel's reason.
        let closed = free("tcp");
        let stats = free("tcp");
        let cfg = ClientConfig {
            target: closed,
            flows: 1,
            udp: false,
            interval: Duration::from_millis(10),
            stats,
            stall_after: STALL_AFTER,
            mode: FlowMode::Stream,
        };
        std::thread::spawn(move || run_client(cfg));
        let start = Instant::now();
        let s = loop {
            if let Ok(s) = fetch_stats(stats, false)
                && s.flows[0].connect_failures >= 3
            {
                break s;
            }
            assert!(start.elapsed() < Duration::from_secs(20), "no retries seen");
            std::thread::sleep(Duration::from_millis(50));
        };
        let why = s.why_not_flowing(1000);
        assert!(
            why[0].contains("down") && why[0].contains("connect: Connection refused"),
            "{why:?}"
        );
    }

    #[test]
    fn our_server_echoes_tcp_and_udp() {
        let listen = free("tcp");
        std::thread::spawn(move || serve(listen));
        std::thread::sleep(Duration::from_millis(200));
        let mut t = TcpStream::connect(listen).unwrap();
        t.write_all(&msg(1, 2)).unwrap();
        let mut b = [0u8; MSG];
        t.read_exact(&mut b).unwrap();
        assert_eq!(b, msg(1, 2));
        let u = UdpSocket::bind("127.0.0.1:0").unwrap();
        u.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        u.send_to(&msg(3, 4), listen).unwrap();
        let (n, from) = u.recv_from(&mut b).unwrap();
        assert_eq!((n, from, b), (MSG, listen, msg(3, 4)));
    }

    #[test]
    fn a_flow_gap_spans_the_silence_between_two_echoes() {
        let mut f = Flow::new(0, Proto::Tcp);
        let t0 = Instant::now();
        f.echo(t0);
        f.echo(t0 + Duration::from_millis(10));
        f.echo(t0 + Duration::from_millis(700));
        f.echo(t0 + Duration::from_millis(710));
        let s = f.stats(t0 + Duration::from_millis(720));
        assert_eq!(s.longest_gap_ms, 690);
        assert_eq!(s.current_gap_ms, 10);
        f.reset(t0 + Duration::from_millis(720));
        assert_eq!(f.stats(t0 + Duration::from_millis(730)).longest_gap_ms, 0);
    }
}
