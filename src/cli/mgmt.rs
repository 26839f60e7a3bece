//! `twinwall mgmt`: the management API service in the foreground (init runs it after
//! vrrp; `--fail-closed` when no verified config could be started).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use twinwall_image::slot::Slot;
use twinwall_mgmt::apply::{InitRestarter, LiveApplier};
use twinwall_mgmt::store::ConfigStore;
use twinwall_mgmt::update::{Slots, find_partition};
use twinwall_mgmt::{Limits, Node, Settings};

/// Arguments of `twinwall mgmt`.
#[derive(Debug, Args)]
pub struct MgmtArgs {
    /// The running cluster config (init writes it to `RUN_DIR/cluster.toml`); a push
    /// rewrites it for the other services.
    #[arg(long, required_unless_present = "fail_closed")]
    config: Option<PathBuf>,
    /// This node's name.
    #[arg(long, required_unless_present = "fail_closed")]
    node: Option<String>,
    /// Run directory (control sockets).
    #[arg(long, default_value = twinwall_control::DEFAULT_RUN_DIR)]
    run_dir: PathBuf,
    /// The config partition (mounted read-only; remounted read-write for each change).
    #[arg(
        long,
        default_value = "/run/twinwall/config",
        env = "TWINWALL_CONFIG_DIR"
    )]
    config_dir: PathBuf,
    /// The mounted EFI system partition (grubenv in `ESP/grub/grubenv`); enables OS
    /// updates. Default: init's mount `/run/twinwall/esp` when it holds a grubenv and the
    /// node booted from a slot.
    #[arg(long)]
    esp: Option<PathBuf>,
    /// The running slot (`a`/`b`); default: `twinwall.slot=` of /proc/cmdline.
    #[arg(long)]
    slot: Option<Slot>,
    /// Slot A device or file; default: the partition named `slot-a`.
    #[arg(long)]
    slot_a: Option<PathBuf>,
    /// Slot B device or file; default: the partition named `slot-b`.
    #[arg(long)]
    slot_b: Option<PathBuf>,
    /// No verified config: serve status and accept a new config bundle only.
    #[arg(long)]
    fail_closed: bool,
    /// Listen here instead of the node's management and sync addresses (repeatable).
    #[arg(long)]
    listen: Vec<SocketAddr>,
    /// The peer's API instead of its sync address on the management port.
    #[arg(long)]
    peer: Option<SocketAddr>,
    /// Largest config bundle accepted, in bytes.
    #[arg(long)]
    max_config_bytes: Option<u64>,
    /// Requests per second accepted (all clients together).
    #[arg(long)]
    rate: Option<u32>,
    /// How often the peer's version is polled, in milliseconds.
    #[arg(long, default_value_t = 2000)]
    peer_poll_ms: u64,
}

fn slots(a: &MgmtArgs) -> anyhow::Result<Option<Slots>> {
    // On the appliance init mounts the ESP read-write at /run/twinwall/esp and boots with
    // twinwall.slot=: both are the defaults, so init needs to pass nothing.
    let cmdline_slot =
        || Slot::from_cmdline(&std::fs::read_to_string("/proc/cmdline").unwrap_or_default());
    let esp = match &a.esp {
        Some(e) => e.clone(),
        None => {
            let d = PathBuf::from(twinwall_init::storage::ESP_MOUNT);
            let booted = a.slot.or_else(cmdline_slot).is_some();
            if !(booted && twinwall_image::slot::esp_grubenv(&d).exists()) {
                return Ok(None);
            }
            d
        }
    };
    let esp = &esp;
    let running = match a.slot {
        Some(s) => s,
        None => cmdline_slot().context(
            "--esp given but the running slot is unknown (no twinwall.slot= on the kernel command line; pass --slot)",
        )?,
    };
    let find = |given: &Option<PathBuf>, label: &str| -> anyhow::Result<PathBuf> {
        match given {
            Some(p) => Ok(p.clone()),
            None => find_partition(Path::new("/sys/class/block"), label)
                .with_context(|| format!("no partition named {label} (pass --{label})")),
        }
    };
    Ok(Some(Slots {
        running,
        a: find(&a.slot_a, "slot-a")?,
        b: find(&a.slot_b, "slot-b")?,
        grubenv: twinwall_image::slot::esp_grubenv(esp),
    }))
}

/// Runs the service until SIGTERM or SIGINT.
pub fn run(a: MgmtArgs) -> anyhow::Result<()> {
    let store = ConfigStore::detect(&a.config_dir);
    let mut listen = a.listen.clone();
    let mut peer = a.peer;
    let node_name = match &a.node {
        Some(n) => Some(n.clone()),
        None => store.node().ok().flatten(),
    };
    if !a.fail_closed {
        let config = a.config.as_ref().context("--config is required")?;
        let node = node_name.as_deref().context("--node is required")?;
        let cfg = match twinwall_config::load(config) {
            Ok(c) => c,
            Err(d) => {
                eprintln!("{d}");
                return Err(
                    super::Reported(format!("{}: invalid config", config.display())).into(),
                );
            }
        };
        let view = cfg.node_view(node)?;
        if listen.is_empty() {
            listen = twinwall_mgmt::listen_addresses(&view);
        }
        peer = peer.or_else(|| twinwall_mgmt::peer_address(&view));
    } else if listen.is_empty() {
        // The bootstrap ruleset opens the management port on every interface.
        listen = vec![
            SocketAddr::from(([0, 0, 0, 0], twinwall_mgmt::DEFAULT_PORT)),
            SocketAddr::from(([0u16; 8], twinwall_mgmt::DEFAULT_PORT)),
        ];
    }
    let mut limits = Limits::default();
    if let Some(m) = a.max_config_bytes {
        limits.max_config_bundle = m;
    }
    if let Some(r) = a.rate {
        limits.rate_per_sec = r;
        limits.burst = r.saturating_mul(2);
    }
    let settings = Settings {
        node: node_name,
        fail_closed: a.fail_closed,
        run_dir: a.run_dir.clone(),
        listen,
        peer: if a.fail_closed { None } else { peer },
        slots: slots(&a)?,
        limits,
        peer_poll: Duration::from_millis(a.peer_poll_ms.max(100)),
    };
    let running_config = a
        .config
        .clone()
        .unwrap_or_else(|| a.run_dir.join("cluster.toml"));
    let applier = LiveApplier::new(
        twinwall_ruleset::Nft::default(),
        running_config.clone(),
        Box::new(InitRestarter {
            run_dir: a.run_dir.clone(),
        }),
    );
    let node = Node::new(settings, store, applier);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    rt.block_on(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("cannot install the SIGTERM handler")?;
        let shutdown = async move {
            tokio::select! {
                _ = term.recv() => {},
                _ = tokio::signal::ctrl_c() => {},
            }
        };
        twinwall_mgmt::run(node, a.config.is_some().then_some(running_config), shutdown)
            .await
            .context("mgmt service")
    })
}
