//! The network-namespace test harness shared by the services' tests.
//!
//! It owns: [`Netns`] (a uniquely named namespace, deleted on drop even when the test
//! panics, together with every process still running inside it), [`Netns::enter`] to
//! create `std::net` sockets inside one, [`PeerEcho`] listeners and [`tcp_probe`] /
//! [`udp_probe`] clients, [`veth`] pairs between
//! namespaces, bridges, address/link/route helpers, [`Spawned`] child guards,
//! [`wait_for`] polling, and [`Topology`] (hosts, bridges and links as data, loadable from
//! TOML/JSON, built into a [`Lab`]), and [`flows`] (an echo server and many long-lived
//! echo flows with per-flow gaps, for failover tests). Everything shells out to `ip` (iproute2): it is the
//! tool a network engineer reads, and its error messages land verbatim in ours.
//!
//! Tests that need root call [`require_root`] first: it panics when not root, unless
//! `TWINWALL_SKIP_ROOT_TESTS=1`, in which case it returns `false` and the test returns.

pub mod flows;
mod netns;
mod probe;
mod topology;

pub use netns::{Netns, Spawned, bridge, require_root, veth, wait_for};
pub use probe::{PeerEcho, tcp_probe, udp_probe};
pub use topology::{BridgeSpec, Endpoint, HostSpec, Lab, LinkSpec, RouteSpec, Topology};

use std::path::PathBuf;

/// Everything that can go wrong while building or using a test topology.
#[derive(Debug, thiserror::Error)]
pub enum TestkitError {
    /// A command could not be started at all.
    #[error("cannot run `{cmd}`: {source}")]
    Spawn {
        /// The command line.
        cmd: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A command ran and failed.
    #[error("`{cmd}` failed ({status}): {stderr}")]
    Failed {
        /// The command line.
        cmd: String,
        /// Exit status.
        status: std::process::ExitStatus,
        /// What it printed on stderr (trimmed).
        stderr: String,
    },
    /// A topology file could not be read.
    #[error("cannot read topology {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A topology file is not valid TOML/JSON of the expected shape.
    #[error("invalid topology {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message (with line and column).
        message: String,
    },
    /// A topology is inconsistent (unknown host in a link, bad endpoint, ...).
    #[error("invalid topology: {0}")]
    Invalid(String),
}

/// Result alias for the harness.
pub type Result<T> = std::result::Result<T, TestkitError>;

/// The directory holding the shipped topologies (`testkit/topologies`).
pub fn topologies_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("topologies")
}
