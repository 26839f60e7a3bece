//! `twinwall vrrp`: the VRRP service in the foreground.
//!
//! `--config` takes the cluster config (TOML); a `.json` file is read as an already
//! resolved node view (the output of `twinwall config show --json`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::Args;

/// Arguments of `twinwall vrrp`.
#[derive(Debug, Args)]
pub struct VrrpArgs {
    /// The cluster config (TOML), or a resolved node view (`.json`).
    #[arg(long)]
    config: PathBuf,
    /// This node's name.
    #[arg(long)]
    node: String,
    /// Directory of the control socket `vrrp.sock`.
    #[arg(long, default_value = twinwall_control::DEFAULT_RUN_DIR)]
    run_dir: PathBuf,
    /// How long a group becoming master waits for a commit participant (the sync
    /// service) to acknowledge before the VIPs are announced, in milliseconds (an ack
    /// ends the wait at once; the bound covers a commit of 100k entries).
    #[arg(long, default_value_t = 2000)]
    commit_wait_ms: u64,
}

fn load_view(path: &Path, node: &str) -> anyhow::Result<twinwall_config::NodeView> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config {}", path.display()))?;
    if path.extension().is_some_and(|e| e == "json") {
        let view: twinwall_config::NodeView = serde_json::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{}:{}:{}: {e}", path.display(), e.line(), e.column()))?;
        if view.node != node {
            anyhow::bail!(
                "{}: this node view is for node {:?}, not {node:?}",
                path.display(),
                view.node
            );
        }
        return Ok(view);
    }
    match twinwall_config::load(path) {
        Ok(cfg) => {
            for w in cfg.warnings().all() {
                eprintln!("{w}");
            }
            Ok(cfg.node_view(node)?)
        }
        Err(diags) => {
            eprintln!("{diags}");
            Err(super::Reported(format!("{}: invalid config", path.display())).into())
        }
    }
}

/// Runs the service until SIGTERM or SIGINT.
pub fn run(a: VrrpArgs) -> anyhow::Result<()> {
    let view = load_view(&a.config, &a.node)?;
    // The plan check runs before any socket is opened, so a bad config changes nothing.
    twinwall_vrrp::plan::plan(&view).with_context(|| format!("{}", a.config.display()))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    let opts = twinwall_vrrp::Options {
        run_dir: a.run_dir,
        commit_wait: Duration::from_millis(a.commit_wait_ms),
    };
    rt.block_on(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("cannot install the SIGTERM handler")?;
        let shutdown = async move {
            tokio::select! {
                _ = term.recv() => {},
                _ = tokio::signal::ctrl_c() => {},
            }
        };
        twinwall_vrrp::run(&view, opts, shutdown)
            .await
            .context("vrrp service")
    })
}
