//! The management service of a twinwall node (`twinwall mgmt`) and the client side of
//! `twinwall push/update/status --to`.
//!
//! * [`http`]: the API (axum): `GET /status`, `GET /metrics`, `POST /config`,
//!   `POST /update` (streamed), `POST /confirm`, `POST /rollback`; size and rate limits.
//! * [`node`]: the operations: push with a confirmation window and two-phase forwarding
//!   to the peer over the sync link, revert, OS update, status and metrics.
//! * [`store`]: the config partition (atomic changes inside a remount window).
//! * [`apply`]: what a new config changes ([`apply::plan`], pure) and applying it live.
//! * [`update`]: streaming an OS update into the inactive slot, read-back, try-once.
//! * [`rolling`]: the `--cluster` rolling update as a pure state machine.
//! * [`client`]: the HTTP client used by the CLI and for the peer.
//! * [`timing`]: step timings of a push (logged and answered).
//!
//! Writes are authorised by the bundle signature alone: every write request carries a
//! signed bundle that verifies against the partition's `trusted/*.pub`.

pub mod apply;
pub mod client;
pub mod error;
pub mod http;
pub mod metrics;
pub mod node;
pub mod rolling;
pub mod store;
pub mod timing;
pub mod update;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

pub use error::MgmtError;
pub use node::{Limits, Node, PushOptions, Settings};

/// Default TCP port of the API.
pub const DEFAULT_PORT: u16 = twinwall_config::DEFAULT_MANAGEMENT_PORT;

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// An address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// No address to listen on.
    #[error("no address to listen on (the node view has no management or sync address)")]
    NoAddress,
    /// The control socket could not be created.
    #[error(transparent)]
    Control(#[from] twinwall_control::ControlError),
    /// The config in force could not be loaded.
    #[error("loading the config in force: {0}")]
    Load(#[from] MgmtError),
}

/// The addresses the API listens on: every address of the management zones and the sync
/// link's local address, on the management port.
pub fn listen_addresses(view: &twinwall_config::NodeView) -> Vec<SocketAddr> {
    let port = view.management.port;
    let mut zones: Vec<&str> = view
        .management
        .interfaces
        .iter()
        .map(String::as_str)
        .collect();
    if let Some(s) = &view.sync {
        zones.push(&s.interface);
    }
    let mut out: Vec<SocketAddr> = Vec::new();
    for z in zones {
        if let Some(i) = view.interfaces.get(z) {
            for a in &i.addresses {
                let sa = SocketAddr::new(a.addr(), port);
                if !out.contains(&sa) {
                    out.push(sa);
                }
            }
        }
    }
    out
}

/// The peer's API: its sync-link address on the management port.
pub fn peer_address(view: &twinwall_config::NodeView) -> Option<SocketAddr> {
    view.sync
        .as_ref()
        .map(|s| SocketAddr::new(s.peer, view.management.port))
}

/// A listening socket; IPv6 ones are IPv6-only so that `[::]` and `0.0.0.0` can both be
/// bound (fail-closed mode listens on both).
fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_reuse_address(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(128)?;
    tokio::net::TcpListener::from_std(s.into())
}

/// Runs the service until `shutdown` resolves: loads the config in force, serves
/// `RUN_DIR/mgmt.sock` and the API on every listen address, reverts expired windows and
/// keeps the peer in step.
pub async fn run(
    node: Node,
    running_config: Option<PathBuf>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let node = Arc::new(node);
    {
        let n = node.clone();
        let rc = running_config.clone();
        tokio::task::spawn_blocking(move || n.load(rc.as_deref()))
            .await
            .map_err(|e| MgmtError::Unavailable(e.to_string()))??;
    }
    if node.settings.listen.is_empty() {
        return Err(ServeError::NoAddress);
    }
    let mut listeners = Vec::new();
    for addr in &node.settings.listen {
        let l = bind(*addr).map_err(|source| ServeError::Bind {
            addr: *addr,
            source,
        })?;
        listeners.push(l);
    }
    let ctl = {
        let n = node.clone();
        twinwall_control::Server::bind(
            &node.settings.run_dir,
            "mgmt",
            Arc::new(
                move |req: &twinwall_control::Request| match req.cmd.as_str() {
                    "status" => twinwall_control::Response::ok(n.snapshot()),
                    other => twinwall_control::Response::err(format!(
                        "unknown command `{other}` (mgmt knows: status)"
                    )),
                },
            ),
        )?
    };
    tracing::info!(listen = ?node.settings.listen, peer = ?node.settings.peer, version = ?node.version(), "management API up");
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let app = http::router(node.clone());
    let mut servers = Vec::new();
    for l in listeners {
        let mut rx = stop_rx.clone();
        let app = app.clone();
        servers.push(tokio::spawn(async move {
            let _ = axum::serve(l, app)
                .with_graceful_shutdown(async move {
                    let _ = rx.wait_for(|s| *s).await;
                })
                .await;
        }));
    }
    // Two loops, so that a slow peer (connect timeouts) never delays a revert.
    let ticker = {
        let n = node.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                n.tick().await;
            }
        })
    };
    let poller = {
        let n = node.clone();
        tokio::spawn(async move {
            if n.settings.fail_closed {
                return;
            }
            loop {
                n.poll_peer().await;
                tokio::time::sleep(n.settings.peer_poll).await;
            }
        })
    };
    shutdown.await;
    tracing::info!("management API stopping");
    let _ = stop_tx.send(true);
    ticker.abort();
    poller.abort();
    for s in servers {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(3), s).await;
    }
    drop(ctl);
    Ok(())
}
