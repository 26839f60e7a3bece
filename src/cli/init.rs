//! `twinwall init`: PID 1 on the appliance, or `--supervise` to run the same service set
//! under a child subreaper (netns tests, by hand). Wires the init crate to the verifier,
//! the config loader and the slot control of the other areas.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use twinwall_init::health::SlotControl;
use twinwall_init::pid1;
use twinwall_init::service::{Backoff, Kind};
use twinwall_init::services::{self, ServiceContext};
use twinwall_init::status::{Mode, Shared, Status};
use twinwall_init::supervisor::{self, Supervisor, SupervisorConfig};
use twinwall_init::sys::{RealSyscalls, Syscalls};
use twinwall_init::trust::{self, Decision};
use twinwall_init::verify::BundleCrateVerifier;

use crate::cli::Usage;

/// Default first restart delay (ms): `--backoff-initial-ms` and PID 1.
const BACKOFF_INITIAL_MS: u64 = 250;
/// Default restart delay cap (ms).
const BACKOFF_MAX_MS: u64 = 30_000;
/// Default SIGTERM-to-SIGKILL grace at shutdown (ms).
const STOP_TIMEOUT_MS: u64 = 10_000;

/// `twinwall init [--supervise ...]`.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// Run the service supervisor as a child subreaper instead of as PID 1.
    #[arg(long)]
    supervise: bool,
    /// Cluster config for the services (without it: the fail-closed set).
    #[arg(long, requires = "node", conflicts_with = "config_partition")]
    config: Option<PathBuf>,
    /// A config partition directory (node, trusted/*.pub, bundles/...): run the trust
    /// phase on it, as PID 1 does, and start the verified or the fail-closed service set.
    #[arg(long, value_name = "DIR")]
    config_partition: Option<PathBuf>,
    /// This node's name in the config.
    #[arg(long)]
    node: Option<String>,
    /// Run directory for the control sockets.
    #[arg(long, default_value = twinwall_control::DEFAULT_RUN_DIR)]
    run_dir: PathBuf,
    /// Only these services (comma-separated, kept in start order: ruleset,sync,vrrp,mgmt).
    #[arg(long, value_delimiter = ',')]
    services: Option<Vec<String>>,
    /// Conntrack sync key passed to the sync service.
    #[arg(long)]
    sync_key: Option<PathBuf>,
    /// Enable IP forwarding once the ruleset one-shot has succeeded.
    #[arg(long)]
    forwarding: bool,
    /// Copy service output to stderr, prefixed with the service name.
    #[arg(long)]
    echo_logs: bool,
    /// Replace a service's command with a shell command: NAME=COMMAND (tests).
    #[arg(long = "service-cmd", value_name = "NAME=COMMAND", hide = true)]
    service_cmd: Vec<String>,
    /// First restart delay in milliseconds.
    #[arg(long, default_value_t = BACKOFF_INITIAL_MS, hide = true)]
    backoff_initial_ms: u64,
    /// Restart delay cap in milliseconds.
    #[arg(long, default_value_t = BACKOFF_MAX_MS, hide = true)]
    backoff_max_ms: u64,
    /// SIGTERM-to-SIGKILL grace at shutdown, in milliseconds.
    #[arg(long, default_value_t = STOP_TIMEOUT_MS, hide = true)]
    stop_timeout_ms: u64,
}

impl InitArgs {
    /// PID 1's arguments: none (init reads its options from /proc/cmdline), so the
    /// defaults of the flags above, without running clap (`main` takes this path for the
    /// multi-call `init`; the test below keeps it equal to what clap would give).
    pub fn pid1() -> InitArgs {
        InitArgs {
            supervise: false,
            config: None,
            config_partition: None,
            node: None,
            run_dir: PathBuf::from(twinwall_control::DEFAULT_RUN_DIR),
            services: None,
            sync_key: None,
            forwarding: false,
            echo_logs: false,
            service_cmd: Vec::new(),
            backoff_initial_ms: BACKOFF_INITIAL_MS,
            backoff_max_ms: BACKOFF_MAX_MS,
            stop_timeout_ms: STOP_TIMEOUT_MS,
        }
    }
}

/// Marks the boot slot good in the grubenv on the mounted ESP, with the image area's slot
/// logic (RAUC-style ORDER / TRY / OK variables).
#[derive(Debug)]
struct GrubenvSlots;

impl SlotControl for GrubenvSlots {
    fn mark_good(&mut self, slot: &str) -> Result<(), String> {
        let esp = std::path::Path::new(twinwall_init::storage::ESP_MOUNT);
        twinwall_image::slot::mark_good_on_esp(esp, slot)
            .map_err(|e| format!("{}: {e}", esp.display()))?;
        // The grubenv is renamed into place on vfat: flush the directory entry too, so
        // the mark survives a power cut (or a test that stops the VM) right after.
        RealSyscalls.sync();
        Ok(())
    }

    fn has_fallback(&self, slot: &str) -> bool {
        use twinwall_image::slot::{GrubenvFile, SlotControl as _};
        let esp = std::path::Path::new(twinwall_init::storage::ESP_MOUNT);
        let (Ok(st), Ok(s)) = (
            GrubenvFile::new(twinwall_image::slot::esp_grubenv(esp)).state(),
            slot.parse::<twinwall_image::Slot>(),
        ) else {
            return false;
        };
        let other = st.flags(s.other());
        other.ok && !other.tried
    }
}

/// Runs `twinwall init`.
pub fn run(args: InitArgs) -> anyhow::Result<()> {
    if !args.supervise {
        if std::process::id() != 1 {
            return Err(Usage(
                "twinwall init runs as PID 1; use `twinwall init --supervise` to run the \
                 services under a child subreaper"
                    .into(),
            )
            .into());
        }
        twinwall_init::pid1::main(
            Box::new(twinwall_init::verify::BundleCrateVerifier),
            Box::new(twinwall_init::verify::load_view),
            Box::new(GrubenvSlots),
        );
    }
    supervise(args)
}

fn supervise(args: InitArgs) -> anyhow::Result<()> {
    // Before any thread exists, so that every thread inherits the mask.
    supervisor::block_signals()?;
    let sys = RealSyscalls;
    sys.set_child_subreaper()
        .context("prctl(PR_SET_CHILD_SUBREAPER)")?;
    let exe = std::env::current_exe().context("cannot find the twinwall binary")?;
    let mut status = Status::new(Mode::Supervise);
    status.node = args.node.clone();
    let shared = Shared::new(status);
    let mut ctx = ServiceContext {
        exe,
        config: args.config.clone(),
        node: args.node.clone(),
        run_dir: args.run_dir.clone(),
        sync_key: args.sync_key.clone(),
    };
    if let Some(dir) = &args.config_partition {
        let decision = trust::run(&sys, &BundleCrateVerifier, Some(dir), &args.run_dir);
        eprintln!("twinwall: {}", decision.summary());
        pid1::record_trust(&shared, &decision);
        match decision {
            Decision::Verified {
                node,
                config_path,
                sync_key,
                ..
            } => {
                ctx.node = Some(node);
                ctx.config = Some(config_path);
                ctx.sync_key = sync_key.or(ctx.sync_key);
            }
            Decision::FailClosed { node, .. } => {
                ctx.node = node;
                ctx.config = None;
            }
        }
    } else if args.config.is_none() {
        shared
            .update(|s| s.fail_closed = Some("no --config given: fail-closed service set".into()));
    }
    let mut specs = services::service_set(&ctx, args.services.as_deref()).map_err(Usage)?;
    for o in &args.service_cmd {
        let (name, cmd) = o
            .split_once('=')
            .ok_or_else(|| Usage(format!("--service-cmd {o}: expected NAME=COMMAND")))?;
        let Some(spec) = specs.iter_mut().find(|s| s.name == name) else {
            tracing::info!(service = name, "--service-cmd for a service not in the set");
            continue;
        };
        // The shell command sees the service's real arguments as "$@" ($0 = the name).
        let mut shell_args = vec!["-c".to_string(), cmd.to_string(), name.to_string()];
        shell_args.append(&mut spec.args);
        spec.program = PathBuf::from("/bin/sh");
        spec.args = shell_args;
    }
    let _server = shared
        .serve(&args.run_dir)
        .context("cannot serve init.sock")?;
    let mut cfg = SupervisorConfig::new(args.run_dir.clone());
    cfg.echo_logs = args.echo_logs;
    cfg.backoff = Backoff {
        initial: Duration::from_millis(args.backoff_initial_ms),
        max: Duration::from_millis(args.backoff_max_ms),
        ..Backoff::default()
    };
    cfg.stop_timeout = Duration::from_millis(args.stop_timeout_ms);
    cfg.start_after = services::start_after();
    if args.forwarding {
        cfg.after_ruleset = twinwall_init::network::FORWARDING
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect();
    }
    let names: Vec<String> = specs
        .iter()
        .map(|s| match s.kind {
            Kind::Oneshot => format!("{} (one-shot)", s.name),
            Kind::Daemon => s.name.clone(),
        })
        .collect();
    tracing::info!(services = %names.join(", "), run_dir = %args.run_dir.display(), "supervising");
    let mut sup = Supervisor::new(&sys, specs, cfg, shared)?;
    let action = sup.run();
    tracing::info!(?action, "all services stopped");
    supervisor::reap_all();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Command, FromArgMatches};

    #[test]
    fn pid1_arguments_are_what_clap_gives_for_a_bare_init() {
        let m = InitArgs::augment_args(Command::new("init")).get_matches_from(["init"]);
        let parsed = InitArgs::from_arg_matches(&m).unwrap();
        assert_eq!(format!("{parsed:?}"), format!("{:?}", InitArgs::pid1()));
    }
}
