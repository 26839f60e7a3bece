//! PID 1 itself: runs the boot phases in order, then the supervisor, and never exits. A
//! fatal boot error or a panic is printed on the console and reboots the machine (GRUB's
//! boot counting then falls back to the other slot); a shutdown signal stops the services
//! in order, kills what is left, syncs and calls reboot(2).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::mount::MntFlags;
use nix::sys::signal::Signal;
use twinwall_config::NodeView;

use crate::cmdline::Cmdline;
use crate::early::EarlyError;
use crate::health::{self, HealthPolicy, SlotControl};
use crate::labhost::{self, LabHost};
use crate::modules::{self, ModuleError};
use crate::network;
use crate::phase::{self, Outcome, Phase};
use crate::service::ServiceSpec;
use crate::services::{self, ServiceContext};
use crate::status::{Mode, Shared, Status, TrustReport};
use crate::storage::{self, StorageError};
use crate::supervisor::{self, Supervisor, SupervisorConfig};
use crate::sys::{PowerAction, RealSyscalls, Syscalls};
use crate::trust::{self, BundleVerifier, Decision};

/// A boot error that stops the boot (the machine reboots).
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// early phase.
    #[error("early: {0}")]
    Early(#[from] EarlyError),
    /// modules phase.
    #[error("modules: {0}")]
    Modules(#[from] ModuleError),
    /// storage phase.
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    /// services phase (the supervisor could not start).
    #[error("services: {0}")]
    Services(String),
}

/// Loads the per-node view of a verified config (the config crate's job).
pub type ViewLoader = dyn Fn(&Path, &str) -> Result<NodeView, String>;

/// Paths and knobs of the boot.
#[derive(Debug, Clone)]
pub struct BootOptions {
    /// Run directory (control sockets, the verified config).
    pub run_dir: PathBuf,
    /// Where block devices are listed.
    pub sysfs_block: PathBuf,
    /// How long storage waits for the slot partition to appear.
    pub root_wait: Duration,
    /// Whether to bring links up and write sysctls over netlink.
    pub network: bool,
    /// After the switch into a slot, re-exec the slot's own binary ([`RESUME_ENV`]).
    pub reexec_after_switch: bool,
    /// Set in the re-executed PID 1: the phases already done and what was mounted.
    pub resume: Option<Resume>,
}

/// The environment variable that carries [`Resume`] (JSON) across PID 1's re-exec.
pub const RESUME_ENV: &str = "TWINWALL_INIT_RESUME";

/// PID 1's state handed to the slot's binary: after `switch_root` PID 1 execs the slot's
/// `/bin/twinwall`, so its code pages come from the squashfs page cache (reclaimable,
/// counted only when touched) instead of the initramfs copy (ramfs, pinned as shmem).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Resume {
    /// The phases done before the re-exec.
    pub phases: Vec<crate::status::PhaseReport>,
    /// What the storage phase mounted.
    pub mounted: storage::Mounted,
}

impl Default for BootOptions {
    fn default() -> Self {
        BootOptions {
            run_dir: PathBuf::from(twinwall_control::DEFAULT_RUN_DIR),
            sysfs_block: PathBuf::from("/sys/class/block"),
            root_wait: Duration::from_secs(10),
            network: true,
            reexec_after_switch: false,
            resume: None,
        }
    }
}

/// The result of the phases before services.
#[derive(Debug, Clone)]
pub struct Booted {
    /// The kernel command line.
    pub cmdline: Cmdline,
    /// The trust decision.
    pub decision: Decision,
    /// The services to run.
    pub specs: Vec<ServiceSpec>,
    /// Whether root was switched to a slot.
    pub switched_root: bool,
    /// `twinwall.install=` succeeded: no services; PID 1 powers off (or reboots).
    pub installed: Option<PowerAction>,
}

fn console(line: &str) {
    let mut err = std::io::stderr();
    let _ = writeln!(err, "twinwall: {line}");
}

/// Runs early, modules, storage, trust and network, recording each in `shared`.
pub fn boot(
    sys: &dyn Syscalls,
    verifier: &dyn BundleVerifier,
    load_view: &ViewLoader,
    shared: &Shared,
    opts: &BootOptions,
) -> Result<Booted, BootError> {
    let record = |r| shared.update(|s| s.phases.push(r));

    let (cmdline, mounted) = match &opts.resume {
        Some(r) => {
            // Re-executed after the switch: early, modules and storage are done.
            shared.update(|s| s.phases.extend(r.phases.iter().cloned()));
            let text = sys
                .read_file(Path::new("/proc/cmdline"))
                .map_err(|e| BootError::Early(EarlyError::Cmdline(e)))?;
            (
                Cmdline::parse(&String::from_utf8_lossy(&text)),
                r.mounted.clone(),
            )
        }
        None => {
            let (cmdline, mounted) = boot_to_root(sys, shared, opts)?;
            if mounted.switched_root && opts.reexec_after_switch {
                reexec(shared, &mounted);
            }
            (cmdline, mounted)
        }
    };
    shared.update(|s| s.slot = cmdline.slot.clone().filter(|s| s == "a" || s == "b"));
    // The lab-host role (a plain host of the QEMU lab) owns its own kernel options.
    let lab_host = match LabHost::from_options(&cmdline.unknown) {
        Some(Ok(h)) => Some(h),
        Some(Err(e)) => {
            console(&format!("lab host: {e}; booting as a firewall"));
            None
        }
        None => None,
    };
    for u in cmdline.unknown.iter().filter(|u| !labhost::owns(u)) {
        tracing::warn!(option = %u, "unknown kernel command line option");
    }

    // The initramfs carries only what reaches the root; the slot's list has everything
    // (NICs, netfilter). Already loaded modules count as present.
    if mounted.switched_root {
        let root_list = PathBuf::from(modules::DEFAULT_LIST);
        let late = Path::new(modules::LATE_LIST);
        // The storage stack stays for later (after services up) unless the storage phase
        // loaded it or `late_modules=boot` wants everything now.
        let probe = match modules::Probe::for_boot(&cmdline) {
            modules::Probe::StorageLater if cmdline.late_modules_at_boot => {
                modules::Probe::StorageInBackground
            }
            p => p,
        };
        let (r, m) = phase::run(Phase::RootModules, || {
            let mut l = modules::run_with(sys, &root_list, probe)?;
            // `twinwall.late_modules=boot`: everything before the services, as before
            // the late list existed (the A/B reference, and a way out should a late
            // module turn out to be needed early).
            if cmdline.late_modules_at_boot && late.exists() {
                let more = modules::run(sys, late)?;
                l.merge(more);
            }
            Ok::<_, ModuleError>(((), Outcome::Ok(l.summary())))
        });
        record(r);
        m?;
    }

    if let Some(disk) = cmdline.install.clone() {
        console(&format!(
            "installing to {disk} (everything on it is overwritten)"
        ));
        let (r, res) = phase::run(Phase::Install, || {
            install_disk(&disk, mounted.switched_root).map(|d| ((), Outcome::Ok(d)))
        });
        record(r);
        match res {
            Ok(()) => {
                let action = cmdline.after_install.unwrap_or(PowerAction::Poweroff);
                console(&format!(
                    "installed to {disk}; {} (remove the installation medium, boot from {disk})",
                    match action {
                        PowerAction::Reboot => "rebooting",
                        _ => "powering off",
                    }
                ));
                return Ok(Booted {
                    cmdline,
                    decision: Decision::FailClosed {
                        reasons: vec![format!("installed to {disk}")],
                        node: None,
                    },
                    specs: Vec::new(),
                    switched_root: mounted.switched_root,
                    installed: Some(action),
                });
            }
            Err(e) => console(&format!("INSTALL FAILED: {e}; continuing the live boot")),
        }
    }

    let config_dir = mounted.config.then(|| PathBuf::from(storage::CONFIG_MOUNT));
    let fallback = fallback_slot(sys, &cmdline, &mounted);
    if let Some(s) = &fallback {
        console(&format!(
            "slot {s} booted as the fallback (grubenv ORDER prefers the other slot): its pinned config comes first"
        ));
    }
    let (r, decision) = phase::run(Phase::Trust, || {
        let d = trust::run_with_pin(
            sys,
            verifier,
            config_dir.as_deref(),
            &opts.run_dir,
            fallback.as_deref(),
        );
        let o = match &d {
            Decision::Verified { .. } => Outcome::Ok(d.summary()),
            Decision::FailClosed { .. } => Outcome::Degraded(d.summary()),
        };
        Ok::<_, std::convert::Infallible>((d, o))
    });
    record(r);
    let Ok(mut decision) = decision;
    if let (Decision::FailClosed { reasons, .. }, Some(why)) =
        (&mut decision, &mounted.config_error)
    {
        *reasons = vec![why.clone()];
    }
    console(&decision.summary());
    record_trust(shared, &decision);

    let view = match &decision {
        Decision::Verified {
            config_path, node, ..
        } => match load_view(config_path, node) {
            Ok(v) => Some(v),
            Err(e) => {
                tracing::error!(error = %e, "cannot load the node view of the verified config");
                None
            }
        },
        Decision::FailClosed { .. } => None,
    };
    let (r, _) = phase::run(Phase::Network, || {
        if !opts.network {
            return Ok::<_, network::NetworkError>(((), Outcome::Skipped("disabled".into())));
        }
        if let Some(h) = &lab_host {
            let errors = labhost::configure(h)?;
            console(&format!(
                "lab host: {} addresses, gateway {:?}, {} errors",
                h.addresses.len(),
                h.gateway,
                errors.len()
            ));
            let o = if errors.is_empty() {
                Outcome::Ok(format!("lab host, {} addresses", h.addresses.len()))
            } else {
                let e: Vec<String> = errors.iter().map(ToString::to_string).collect();
                Outcome::Degraded(e.join("; "))
            };
            return Ok(((), o));
        }
        let mut errors = network::write_sysctls(sys, &network::ROUTER_SYSCTLS);
        let plan = network::plan(view.as_ref());
        errors.extend(network::apply(&plan, view.is_none())?);
        let o = if errors.is_empty() {
            Outcome::Ok(format!(
                "{} links up, {} addresses",
                plan.links.len(),
                plan.addresses.len()
            ))
        } else {
            let e: Vec<String> = errors.iter().map(ToString::to_string).collect();
            Outcome::Degraded(e.join("; "))
        };
        Ok(((), o))
    });
    record(r);

    let node = match &decision {
        Decision::Verified { node, .. } => Some(node.clone()),
        Decision::FailClosed { node, .. } => node.clone(),
    };
    if let Some(n) = &node {
        let _ = sys.sethostname(n);
    }
    let exe = service_binary(mounted.switched_root);
    let ctx = ServiceContext {
        exe,
        config: match &decision {
            Decision::Verified { config_path, .. } => Some(config_path.clone()),
            Decision::FailClosed { .. } => None,
        },
        node,
        run_dir: opts.run_dir.clone(),
        sync_key: match &decision {
            Decision::Verified { sync_key, .. } => sync_key.clone(),
            Decision::FailClosed { .. } => None,
        },
    };
    let mut specs =
        services::service_set(&ctx, cmdline.services.as_deref()).map_err(BootError::Services)?;
    if view.as_ref().is_some_and(|v| v.sync.is_none()) {
        specs.retain(|s| s.name != "sync");
    }
    if let Some(h) = &lab_host {
        // A lab host runs no firewall service at all, only its traffic agent.
        specs = h
            .service(service_binary(mounted.switched_root), &opts.run_dir)
            .into_iter()
            .collect();
    }
    Ok(Booted {
        cmdline,
        decision,
        specs,
        switched_root: mounted.switched_root,
        installed: None,
    })
}

/// Runs `twinwall install DISK` (the running slot's binary, output on the console) and
/// waits for it. It needs the slot's root: the install template is a file of the slot.
fn install_disk(disk: &str, switched_root: bool) -> Result<String, String> {
    if !switched_root {
        return Err("not running from a slot (twinwall.root=initramfs?)".into());
    }
    let st = std::process::Command::new(service_binary(switched_root))
        .args(["install", disk, "--no-progress"])
        .env("TWINWALL_LOG", "info")
        .status()
        .map_err(|e| format!("cannot run twinwall install: {e}"))?;
    if st.success() {
        Ok(format!("{disk} written and verified"))
    } else {
        Err(format!("twinwall install {disk} failed ({st})"))
    }
}

/// early, modules and storage: everything up to the switch into the slot.
fn boot_to_root(
    sys: &dyn Syscalls,
    shared: &Shared,
    opts: &BootOptions,
) -> Result<(Cmdline, storage::Mounted), BootError> {
    let record = |r| shared.update(|s| s.phases.push(r));
    let (r, cmdline) = phase::run(Phase::Early, || {
        early_phase(sys).map(|c| {
            let d = format!(
                "kernel filesystems mounted; {} unknown options",
                c.unknown.len()
            );
            (c, Outcome::Ok(d))
        })
    });
    record(r);
    let cmdline = cmdline?;
    // Before the re-exec and the first service: both inherit the personality.
    let layout = crate::layout::apply(sys, cmdline.aslr);
    if layout.shared {
        console(&layout.reason);
    }
    let list = PathBuf::from(cmdline.modules.as_deref().unwrap_or(modules::DEFAULT_LIST));
    // On a disk-slot boot the storage stack (SCSI/ATA, USB storage) waits until the
    // storage phase finds it is needed, or until after services up (modules.rs).
    let probe = modules::Probe::for_boot(&cmdline);
    let (r, m) = phase::run(Phase::Modules, || {
        modules::run_with(sys, &list, probe).map(|l| ((), Outcome::Ok(l.summary())))
    });
    record(r);
    m?;

    let (r, mounted) = phase::run(Phase::Storage, || {
        let mut load_storage_stack = || {
            if probe != modules::Probe::StorageLater {
                return;
            }
            match modules::run_with(sys, &list, modules::Probe::StorageInBackground) {
                Ok(l) => {
                    tracing::info!(detail = %l.summary(), "partitions not found: storage stack loaded")
                }
                Err(e) => console(&format!(
                    "partitions not found; loading the storage stack: {e}"
                )),
            }
        };
        let plan = storage::scan_and_plan_with(
            sys,
            &cmdline,
            &opts.sysfs_block,
            opts.root_wait,
            &mut load_storage_stack,
        )?;
        let m = storage::execute(sys, &plan)?;
        let d = format!(
            "root {:?}; config {}; data {}",
            plan.root,
            if m.config { "mounted" } else { "absent" },
            if m.data { "mounted" } else { "absent" }
        );
        Ok::<_, StorageError>((m, Outcome::Ok(d)))
    });
    record(r);
    let mounted = mounted?;

    Ok((cmdline, mounted))
}

/// Execs the slot's twinwall as PID 1 with [`Resume`]; returns only if that failed (PID 1
/// then simply goes on in the initramfs copy).
fn reexec(shared: &Shared, mounted: &storage::Mounted) {
    use std::os::unix::process::CommandExt;
    let Some(exe) = SLOT_BINARIES.iter().map(Path::new).find(|p| p.exists()) else {
        return;
    };
    let resume = Resume {
        phases: shared.snapshot().phases,
        mounted: mounted.clone(),
    };
    let Ok(state) = serde_json::to_string(&resume) else {
        return;
    };
    let err = std::process::Command::new(exe)
        .arg0("init")
        .env(RESUME_ENV, state)
        .exec();
    console(&format!(
        "re-exec of {} failed: {err}; going on in the initramfs copy",
        exe.display()
    ));
}

/// The running slot when GRUB booted it as the fallback: booted from a disk slot whose
/// ESP is mounted, and the grubenv's ORDER names the other slot first (an update of the
/// other slot was tried and did not come up). None on every normal boot.
fn fallback_slot(
    sys: &dyn Syscalls,
    cmdline: &Cmdline,
    mounted: &storage::Mounted,
) -> Option<String> {
    use twinwall_image::{BootState, Grubenv, Slot};
    if !mounted.esp || cmdline.live {
        return None;
    }
    let slot: Slot = cmdline.slot.as_deref()?.parse().ok()?;
    let env = sys
        .read_file(&Path::new(storage::ESP_MOUNT).join("grub/grubenv"))
        .ok()?;
    let state = BootState::from_env(&Grubenv::parse(&env).ok()?).ok()?;
    (state.order.first() != Some(&slot)).then(|| slot.cmdline().to_string())
}

/// Where a slot keeps the twinwall binary.
const SLOT_BINARIES: [&str; 3] = ["/bin/twinwall", "/usr/bin/twinwall", "/sbin/twinwall"];

fn early_phase(sys: &dyn Syscalls) -> Result<Cmdline, EarlyError> {
    crate::early::run(sys)
}

/// Loads the slot's late module list ([`modules::LATE_LIST`]) on a thread of its own,
/// started by the supervisor once the services are up, and records it as the
/// `late-modules` phase. No service needs these modules to get ready, so they stay off the
/// path to services up. (A thread waiting from the start instead cost PID 1 about 0.8 MB
/// of resident code pages by services up: its start-up and polling touched them.)
fn load_late_modules(shared: &Shared) {
    let late = Path::new(modules::LATE_LIST);
    let shared = shared.clone();
    let spawned = std::thread::Builder::new()
        .name("late-modules".into())
        .stack_size(256 * 1024)
        .spawn(move || {
            let (r, _) = phase::run(Phase::LateModules, || {
                // First the storage stack root-modules left for later (the rest of the
                // root list is loaded: counted as present), then the late list.
                let root_list = Path::new(modules::DEFAULT_LIST);
                let mut l = modules::run_with(
                    &RealSyscalls,
                    root_list,
                    modules::Probe::StorageInBackground,
                )?;
                if late.exists() {
                    l.merge(modules::run(&RealSyscalls, late)?);
                }
                Ok::<_, ModuleError>(((), Outcome::Ok(l.summary())))
            });
            if r.result == "failed" {
                console(&format!("late modules: {}", r.detail));
            }
            shared.update(|s| s.phases.push(r));
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the late-modules thread");
    }
}

/// Records the trust decision in status (node, trust report, fail-closed reason).
pub fn record_trust(shared: &Shared, d: &Decision) {
    let report = match d {
        Decision::Verified {
            which,
            version,
            rejected,
            node,
            ..
        } => {
            let running = which.name();
            shared.update(|s| s.node = Some(node.clone()));
            TrustReport {
                running: running.into(),
                version: Some(*version),
                rejected: rejected.clone(),
            }
        }
        Decision::FailClosed { reasons, node } => {
            let why = reasons.join("; ");
            shared.update(|s| {
                s.node = node.clone();
                s.fail_closed = Some(why);
            });
            TrustReport {
                running: "fail-closed".into(),
                version: None,
                rejected: reasons.clone(),
            }
        }
    };
    shared.update(|s| s.trust = Some(report));
}

/// After a switch into a slot, the services run the slot's own binary; in the initramfs
/// (or when the slot has none) the running one.
fn service_binary(switched: bool) -> PathBuf {
    if switched {
        for p in SLOT_BINARIES {
            if Path::new(p).exists() {
                return PathBuf::from(p);
            }
        }
    }
    PathBuf::from("/proc/self/exe")
}

/// Reboots (or powers off) after killing everything left and syncing. Never returns.
pub fn finish(sys: &dyn Syscalls, action: PowerAction) -> ! {
    console(&format!("stopping remaining processes, then {action:?}"));
    let _ = sys.kill(-1, Signal::SIGTERM);
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(100));
        // Every process is our child by now (orphans re-parent to PID 1).
        if !supervisor::reap_all().1 {
            break;
        }
    }
    let _ = sys.kill(-1, Signal::SIGKILL);
    supervisor::reap_all();
    sys.sync();
    for m in [
        storage::DATA_MOUNT,
        storage::CONFIG_MOUNT,
        storage::ESP_MOUNT,
    ] {
        let _ = sys.umount(Path::new(m), MntFlags::MNT_DETACH);
    }
    sys.sync();
    let e = sys.reboot(action);
    console(&format!("reboot({action:?}) failed: {e}; halting here"));
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// What PID 1 does when it panics (any thread): says so on the console, syncs and
/// reboots at once — no service shutdown, since the state that panicked cannot be
/// trusted to do it. Returns only if reboot(2) failed (then the panic unwinds and the
/// kernel panics, which with `panic=10` reboots as well).
pub fn on_panic(sys: &dyn Syscalls, what: &str) {
    console(&format!("PANIC in init: {what}; rebooting"));
    sys.sync();
    let e = sys.reboot(PowerAction::Reboot);
    console(&format!("reboot after panic failed: {e}"));
}

/// The machine's PID 1. Never returns.
pub fn main(
    verifier: Box<dyn BundleVerifier>,
    load_view: Box<ViewLoader>,
    slot_control: Box<dyn SlotControl>,
) -> ! {
    let sys = RealSyscalls;
    // One malloc arena: PID 1's few threads (health, status socket) need no per-thread
    // arenas, and each would keep its own resident pages.
    // SAFETY: mallopt only tunes glibc's allocator; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
    // The kernel starts init without PATH; the services run `nft` and friends by name.
    if std::env::var_os("PATH").is_none() {
        // SAFETY: PID 1 is still single-threaded here (no thread has been spawned yet),
        // so nothing can read the environment concurrently.
        unsafe { std::env::set_var("PATH", "/usr/sbin:/usr/bin:/sbin:/bin") };
    }
    // A panic anywhere in PID 1 would make the kernel panic when we exit: log it, sync,
    // and reboot cleanly instead.
    std::panic::set_hook(Box::new(|info| on_panic(&RealSyscalls, &info.to_string())));
    if let Err(e) = supervisor::block_signals() {
        console(&format!("{e}"));
    }
    let _ = sys.disable_cad();
    let mut opts = BootOptions {
        reexec_after_switch: true,
        ..BootOptions::default()
    };
    if let Some(state) = std::env::var_os(RESUME_ENV) {
        match serde_json::from_str::<Resume>(&state.to_string_lossy()) {
            Ok(r) => opts.resume = Some(r),
            Err(e) => console(&format!(
                "{RESUME_ENV} unreadable ({e}); booting from the start"
            )),
        }
        // SAFETY: still single-threaded (no thread spawned yet); the services must not
        // inherit PID 1's hand-over state.
        unsafe { std::env::remove_var(RESUME_ENV) };
    }
    let shared = Shared::new(Status::new(Mode::Pid1));
    let booted = match boot(&sys, verifier.as_ref(), load_view.as_ref(), &shared, &opts) {
        Ok(b) => b,
        Err(e) => {
            console(&format!("boot failed: {e}"));
            console("rebooting in 5 s (the boot counter falls back to the other slot)");
            std::thread::sleep(Duration::from_secs(5));
            finish(&sys, PowerAction::Reboot);
        }
    };
    if let Some(action) = booted.installed {
        finish(&sys, action);
    }
    if booted.cmdline.test_panic {
        // Test-only (`twinwall.test_panic=1`): proves the panic path reboots the machine.
        panic!("twinwall.test_panic=1 on the kernel command line");
    }
    let _server = match shared.serve(&opts.run_dir) {
        Ok(s) => Some(s),
        Err(e) => {
            console(&format!("status socket unavailable: {e}"));
            None
        }
    };
    let mut cfg = SupervisorConfig::new(opts.run_dir.clone());
    cfg.echo_logs = true;
    cfg.shutdown_when_up = booted.cmdline.shutdown_when_up;
    // On the one vCPU of the QEMU boots the dependency start was slower than one service
    // after another in 4 of 5 interleaved pairs (docs/init.md, round 5): opt-in for now.
    if booted.cmdline.parallel_start {
        cfg.start_after = crate::services::start_after();
    }
    if matches!(booted.decision, Decision::Verified { .. }) {
        cfg.after_ruleset = network::FORWARDING
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect();
    }
    // Health runs on every verified boot (its report shows on the console); it marks a
    // slot good only when booted from a disk slot (not live, not the initramfs).
    if matches!(booted.decision, Decision::Verified { .. }) {
        let slot = booted
            .cmdline
            .slot
            .clone()
            .filter(|s| (s == "a" || s == "b") && !booted.cmdline.live && booted.switched_root);
        let policy = HealthPolicy {
            vrrp: booted.specs.iter().any(|s| s.name == "vrrp"),
            sync: booted.specs.iter().any(|s| s.name == "sync"),
            peer_absent_after: booted
                .cmdline
                .peer_absent_after
                .map_or(health::DEFAULT_PEER_ABSENT_AFTER, Duration::from_secs),
        };
        let nft = ["/usr/sbin/nft", "/sbin/nft", "/usr/bin/nft"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists());
        let w = health::Watch {
            slot,
            control: slot_control,
            nft,
            console: true,
            shutdown: booted.cmdline.shutdown_when_healthy,
            deadline: Some(
                booted
                    .cmdline
                    .health_deadline
                    .map_or(health::DEFAULT_HEALTH_DEADLINE, Duration::from_secs),
            ),
        };
        if let Err(e) = health::watch(shared.clone(), opts.run_dir.clone(), policy, w) {
            console(&format!("health watcher not started: {e}"));
        }
    }
    if booted.switched_root && !booted.cmdline.late_modules_at_boot {
        cfg.when_up = Some(load_late_modules);
    }
    // The boot phases' and the services' start-up code is not needed again: the
    // supervisor hands its pages back once the services are up (see memory.rs). Not
    // before the services start: they are the same binary and fault in much of what
    // PID 1 would drop.
    cfg.trim_when_up = true;
    let start = std::time::Instant::now();
    let action = match Supervisor::new(&sys, booted.specs, cfg, shared.clone()) {
        Ok(mut sup) => sup.run(),
        Err(e) => {
            console(&format!("supervisor failed: {e}"));
            PowerAction::Reboot
        }
    };
    shared.update(|s| {
        s.phases.push(crate::status::PhaseReport {
            name: "services".into(),
            duration_us: start.elapsed().as_micros() as u64,
            result: "ok".into(),
            detail: "stopped".into(),
        })
    });
    finish(&sys, action)
}
