//! New-connection probes through the firewalls, run by the lab's client agent on request:
//! the host asks the agent (`probe\n` on its stats port) and the agent opens a *fresh*
//! TCP connection to its echo server through the VIPs, sends one message and waits for
//! the echo. The long-lived flows only show that established traffic survives; a probe
//! shows what the policy does to a connection that starts now (a rule change pushed to
//! the pair: refused by a `reject` rule, silently dropped by a `drop` rule, or allowed).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::agent::{AgentError, MSG, request_json};

/// The stats-port command that runs a probe.
pub const COMMAND: &str = "probe";

/// How long a probe waits for the connection and then for the echo.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(1500);

/// What one probe saw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Probe {
    /// The server it connected to.
    pub target: String,
    /// The TCP handshake completed.
    pub connected: bool,
    /// The echo came back whole.
    pub echoed: bool,
    /// How the connect failed: `refused` (RST or ICMP unreachable: a `reject`),
    /// `timeout` (no answer: a `drop`), or another error's text.
    pub error: Option<String>,
    /// Milliseconds the probe took.
    pub ms: u64,
}

impl Probe {
    /// Connected and echoed: the policy lets new connections through.
    pub fn allowed(&self) -> bool {
        self.connected && self.echoed
    }

    /// The connect was refused or timed out: the policy stops new connections.
    pub fn stopped(&self) -> bool {
        !self.connected && matches!(self.error.as_deref(), Some("refused" | "timeout"))
    }
}

/// Runs one probe to `target` (on the agent, in the guest).
pub fn run(target: SocketAddr) -> Probe {
    let start = Instant::now();
    let done = |connected, echoed, error: Option<String>| Probe {
        target: target.to_string(),
        connected,
        echoed,
        error,
        ms: start.elapsed().as_millis() as u64,
    };
    let mut s = match TcpStream::connect_timeout(&target, PROBE_TIMEOUT) {
        Ok(s) => s,
        Err(e) => {
            let why = match e.kind() {
                std::io::ErrorKind::ConnectionRefused => "refused".to_string(),
                std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => {
                    "timeout".to_string()
                }
                _ => e.to_string(),
            };
            return done(false, false, Some(why));
        }
    };
    let _ = s.set_nodelay(true);
    let _ = s.set_read_timeout(Some(PROBE_TIMEOUT));
    let mut m = [0u8; MSG];
    m[..5].copy_from_slice(b"probe");
    if let Err(e) = s.write_all(&m) {
        return done(true, false, Some(format!("send: {e}")));
    }
    let mut got = [0u8; MSG];
    match s.read_exact(&mut got) {
        Ok(()) if got == m => done(true, true, None),
        Ok(()) => done(true, false, Some("echo does not match".into())),
        Err(e) => done(true, false, Some(format!("echo: {e}"))),
    }
}

/// Asks the client agent whose stats port is `addr` for one probe (on the host).
pub fn fetch(addr: SocketAddr) -> Result<Probe, AgentError> {
    request_json(addr, COMMAND, PROBE_TIMEOUT * 2 + Duration::from_secs(5))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A real echo server on loopback: allowed; a closed port: refused (the kernel's RST).
    #[test]
    fn a_probe_tells_allowed_from_refused() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let target = l.local_addr().unwrap();
        std::thread::spawn(move || {
            for mut c in l.incoming().flatten() {
                let mut b = [0u8; MSG];
                if c.read_exact(&mut b).is_ok() {
                    let _ = c.write_all(&b);
                }
            }
        });
        let p = run(target);
        assert!(p.allowed() && !p.stopped(), "{p:?}");
        let closed = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let p = run(closed);
        assert!(!p.allowed() && p.stopped(), "{p:?}");
        assert_eq!(p.error.as_deref(), Some("refused"));
    }
}
