//! `twinwall sync`: the conntrack sync service in the foreground.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, ValueEnum};
use twinwall_config::NodeView;
use twinwall_sync::core::Role;
use twinwall_sync::service::{self, Settings};
use twinwall_sync::wire::{DEFAULT_KEY_PATH, SyncKey};

/// Arguments of `twinwall sync`.
#[derive(Debug, Args)]
pub struct SyncArgs {
    /// The cluster config (TOML), or a node view as JSON (`twinwall config show --json`).
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// This node's name.
    #[arg(long, value_name = "NAME")]
    node: String,
    /// Where the control socket `sync.sock` lives.
    #[arg(long, value_name = "DIR", default_value = twinwall_control::DEFAULT_RUN_DIR)]
    run_dir: PathBuf,
    /// The 32-byte cluster sync key: 64 hex characters, base64, or raw bytes.
    #[arg(long, value_name = "FILE", default_value = DEFAULT_KEY_PATH)]
    sync_key: PathBuf,
    /// Role at start, until the VRRP service (or `set-role` on the control socket) says
    /// otherwise.
    #[arg(long, value_enum, default_value = "backup")]
    role: CliRole,
    /// Receive buffer of the conntrack event socket in bytes (forced).
    #[arg(long, value_name = "BYTES", default_value_t = 64 << 20)]
    event_rcvbuf: usize,
    /// SCHED_FIFO priority of the takeover commit (0: normal scheduling).
    #[arg(long, value_name = "N", default_value_t = service::DEFAULT_COMMIT_RT_PRIORITY,
          value_parser = clap::value_parser!(i32).range(0..=99))]
    commit_rt_priority: i32,
    /// SCHED_FIFO priority of the service's threads: event intake, main loop, UDP reader
    /// (0: normal scheduling).
    #[arg(long, value_name = "N", default_value_t = service::DEFAULT_RT_PRIORITY,
          value_parser = clap::value_parser!(i32).range(0..=99))]
    rt_priority: i32,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum CliRole {
    Master,
    Backup,
}

fn load_view(path: &std::path::Path, node: &str) -> anyhow::Result<NodeView> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    if text.trim_start().starts_with('{') {
        let view: NodeView = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a node view", path.display()))?;
        if view.node != node {
            return Err(crate::cli::Usage(format!(
                "{} is the view of node {:?}, not {node:?}",
                path.display(),
                view.node
            ))
            .into());
        }
        return Ok(view);
    }
    let config = match twinwall_config::load(path) {
        Ok(c) => c,
        Err(diags) => {
            eprintln!("{diags}");
            return Err(crate::cli::Reported(format!("{} has errors", path.display())).into());
        }
    };
    config
        .node_view(node)
        .map_err(|e| crate::cli::Usage(e.to_string()).into())
}

/// Runs the service until SIGTERM.
pub fn run(a: SyncArgs) -> anyhow::Result<()> {
    let view = load_view(&a.config, &a.node)?;
    let key = SyncKey::load(&a.sync_key)?;
    let role = match a.role {
        CliRole::Master => Role::Master,
        CliRole::Backup => Role::Backup,
    };
    // The VRRP service on the same run dir drives the role (commit handshake).
    let vrrp = service::VrrpRoleSource {
        socket: twinwall_control::socket_path(&a.run_dir, "vrrp"),
    };
    let mut settings = Settings::from_view(&view, key, a.run_dir, role)?;
    settings.event_rcvbuf = a.event_rcvbuf;
    settings.commit_rt_priority = a.commit_rt_priority;
    settings.rt_priority = a.rt_priority;
    service::run_until_signalled(settings, Some(Box::new(vrrp)))?;
    Ok(())
}
