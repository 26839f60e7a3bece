//! A small HTTP/1.1 client for the management API (hyper's connection API; a [`Conn`]
//! is kept alive across requests, [`request`] uses one connection per request): used by
//! `twinwall push/update/status --to` and by a node forwarding a push to its peer over
//! the sync link.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::TokioIo;
use serde_json::Value;

/// Why a request failed before an HTTP answer arrived.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The address does not parse or resolve.
    #[error("bad address {addr:?}: {reason}")]
    Address {
        /// What was given.
        addr: String,
        /// Why.
        reason: String,
    },
    /// Connecting, sending or receiving failed.
    #[error("{addr}: {reason}")]
    Io {
        /// The node.
        addr: SocketAddr,
        /// What went wrong.
        reason: String,
    },
    /// The connection was closed before the request was sent (a kept-alive connection
    /// the server has closed): the request did not reach the node and may be sent again.
    #[error("{addr}: connection closed before the request was sent")]
    Closed {
        /// The node.
        addr: SocketAddr,
    },
    /// No answer in time.
    #[error("{addr}: no answer within {secs} s")]
    Timeout {
        /// The node.
        addr: SocketAddr,
        /// The limit.
        secs: u64,
    },
}

/// A request body.
pub type Body = BoxBody<Bytes, std::io::Error>;

/// A body from bytes.
pub fn bytes_body(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

/// An empty body.
pub fn empty_body() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// A body streamed from a file in 256 KiB chunks; `sent` counts the bytes handed to the
/// connection (for progress).
pub async fn file_body(
    path: &Path,
    sent: std::sync::Arc<std::sync::atomic::AtomicU64>,
) -> std::io::Result<(Body, u64)> {
    let file = tokio::fs::File::open(path).await?;
    let len = file.metadata().await?.len();
    let stream = tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024).map_ok(move |b| {
        sent.fetch_add(b.len() as u64, std::sync::atomic::Ordering::Relaxed);
        Frame::data(b)
    });
    Ok((StreamBody::new(stream).boxed(), len))
}

/// Parses `HOST[:PORT]` (`[v6]:PORT` for IPv6 with a port) and resolves it.
pub async fn resolve(to: &str, default_port: u16) -> Result<SocketAddr, ClientError> {
    let bad = |reason: String| ClientError::Address {
        addr: to.to_string(),
        reason,
    };
    if let Ok(a) = to.parse::<SocketAddr>() {
        return Ok(a);
    }
    if let Ok(ip) = to.trim_matches(['[', ']']).parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, default_port));
    }
    let with_port = if to.contains(':') {
        to.to_string()
    } else {
        format!("{to}:{default_port}")
    };
    tokio::net::lookup_host(&with_port)
        .await
        .map_err(|e| bad(e.to_string()))?
        .next()
        .ok_or_else(|| bad("resolves to no address".into()))
}

/// An HTTP answer.
#[derive(Debug, Clone)]
pub struct Answer {
    /// Status code.
    pub status: u16,
    /// Body.
    pub body: Bytes,
}

impl Answer {
    /// The body as JSON (`null` when it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// The `error` field of a JSON error body, or the body as text.
    pub fn reason(&self) -> String {
        match self.json().get("error").and_then(Value::as_str) {
            Some(e) => e.to_string(),
            None => String::from_utf8_lossy(&self.body).trim().to_string(),
        }
    }

    /// 2xx.
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// Lower bound of the `TCP_USER_TIMEOUT` every connection gets (its connect timeout,
/// at least this).
pub const MIN_USER_TIMEOUT: Duration = Duration::from_secs(5);

/// An open HTTP/1.1 connection to one node, kept alive across requests (the CLI's push
/// and its confirm; a node's phase 1, phase 2 and confirm to its peer), which saves a
/// TCP handshake and a server-side connection task per request.
#[derive(Debug)]
pub struct Conn {
    addr: SocketAddr,
    sender: hyper::client::conn::http1::SendRequest<Body>,
    driver: tokio::task::JoinHandle<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

impl Conn {
    /// Connects to `addr` within `timeout`.
    pub async fn open(addr: SocketAddr, timeout: Duration) -> Result<Conn, ClientError> {
        let io = |reason: String| ClientError::Io { addr, reason };
        let work = async {
            let tcp = tokio::net::TcpStream::connect(addr)
                .await
                .map_err(|e| io(format!("cannot connect: {e}")))?;
            let _ = tcp.set_nodelay(true);
            // Data the node has not acknowledged for this long ends the connection: a
            // kept-alive connection to a host that died (no RST, no FIN) fails within
            // seconds instead of waiting out the answer timeout, while a node that is up
            // but slow to answer still acknowledges at once (its kernel does).
            let user_timeout = timeout.max(MIN_USER_TIMEOUT).as_millis() as u32;
            let _ = nix::sys::socket::setsockopt(
                &tcp,
                nix::sys::socket::sockopt::TcpUserTimeout,
                &user_timeout,
            );
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                .await
                .map_err(|e| io(e.to_string()))?;
            let driver = tokio::spawn(async move {
                let _ = conn.await;
            });
            Ok(Conn {
                addr,
                sender,
                driver,
            })
        };
        match tokio::time::timeout(timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(ClientError::Timeout {
                addr,
                secs: timeout.as_secs(),
            }),
        }
    }

    /// The node.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Whether the connection can carry another request (the server has not closed it).
    pub fn usable(&self) -> bool {
        !self.sender.is_closed() && !self.driver.is_finished()
    }

    /// Sends one request and reads the whole answer, within `timeout`.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        body: Body,
        timeout: Duration,
    ) -> Result<Answer, ClientError> {
        let addr = self.addr;
        let io = |reason: String| ClientError::Io { addr, reason };
        let work = async {
            self.sender
                .ready()
                .await
                .map_err(|_| ClientError::Closed { addr })?;
            let req = hyper::Request::builder()
                .method(method)
                .uri(path)
                .header(hyper::header::HOST, addr.to_string())
                .body(body)
                .map_err(|e| io(e.to_string()))?;
            let resp = self.sender.send_request(req).await.map_err(|e| {
                if e.is_canceled() {
                    ClientError::Closed { addr }
                } else {
                    io(format!("request failed: {e}"))
                }
            })?;
            let status = resp.status().as_u16();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| io(format!("reading the answer: {e}")))?
                .to_bytes();
            Ok(Answer { status, body })
        };
        match tokio::time::timeout(timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(ClientError::Timeout {
                addr,
                secs: timeout.as_secs(),
            }),
        }
    }
}

/// Sends one request to `addr` on a connection of its own and reads the whole answer,
/// within `timeout`.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Body,
    timeout: Duration,
) -> Result<Answer, ClientError> {
    let work = async {
        let mut conn = Conn::open(addr, timeout).await?;
        conn.request(method, path, body, timeout).await
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(ClientError::Timeout {
            addr,
            secs: timeout.as_secs(),
        }),
    }
}
