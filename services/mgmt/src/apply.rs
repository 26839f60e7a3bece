//! Applying a verified config live: what must change ([`plan`], pure) and doing it
//! ([`LiveApplier`]): the ruleset in one nft transaction, the running config file the
//! services read rewritten atomically, and VRRP / sync restarted only when their own
//! sections changed, so a policy change never drops mastership.

use std::path::PathBuf;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::Serialize;
use twinwall_config::NodeView;
use twinwall_control::{Request, socket_path};
use twinwall_ruleset::{ApplyError as NftError, Nft, Options};

/// Why a config could not be validated or applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The config does not validate or lacks this node (bundles are validated before, so
    /// this means a node-specific problem).
    #[error("config for node {node}: {reason}")]
    Config {
        /// This node.
        node: String,
        /// What is wrong.
        reason: String,
    },
    /// The compiler refused the node's policy.
    #[error("ruleset for node {node}: {source}")]
    Compile {
        /// This node.
        node: String,
        /// Cause.
        source: twinwall_ruleset::CompileError,
    },
    /// nft refused the script (one transaction); the previous ruleset stays.
    #[error("ruleset for node {node}: {source}")]
    Nft {
        /// This node.
        node: String,
        /// Cause.
        source: NftError,
    },
    /// The running config file could not be written.
    #[error("cannot write the running config: {0}")]
    RunningConfig(#[from] twinwall_bundle::fsio::FsError),
}

/// What applying a new view instead of the old one involves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// The nft script changed (it is applied in one transaction).
    pub ruleset: bool,
    /// Services to restart because their sections changed (`vrrp`, `sync`).
    pub restart: Vec<&'static str>,
}

/// Pure: which parts of the node change. VRRP depends on the priority, the interfaces
/// (devices and addresses), the peer, the VRRP section and the routes that follow VIPs;
/// sync on its section and the conntrack ignore list. Anything else (policy, NAT,
/// objects, management) is the ruleset alone.
pub fn plan(
    old: Option<&NodeView>,
    new: &NodeView,
    old_script: Option<&str>,
    new_script: &str,
) -> Plan {
    let mut restart = Vec::new();
    let Some(old) = old else {
        return Plan {
            ruleset: true,
            restart: vec!["vrrp", "sync"],
        };
    };
    let vrrp_changed = old.priority != new.priority
        || old.interfaces != new.interfaces
        || old.peer != new.peer
        || old.vrrp != new.vrrp
        || old.routes != new.routes;
    if vrrp_changed {
        restart.push("vrrp");
    }
    if old.sync != new.sync || old.conntrack_ignore != new.conntrack_ignore {
        restart.push("sync");
    }
    Plan {
        ruleset: old_script != Some(new_script),
        restart,
    }
}

/// A config prepared for this node: its view and compiled ruleset.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The config text.
    pub text: String,
    /// This node's view.
    pub view: NodeView,
    /// The nft script.
    pub script: String,
}

/// Parses a (verified) config and compiles this node's ruleset.
pub fn prepare(text: &str, node: &str) -> Result<Prepared, ApplyError> {
    let bad = |reason: String| ApplyError::Config {
        node: node.to_string(),
        reason,
    };
    let cfg = twinwall_config::parse("cluster.toml", text).map_err(|d| bad(d.to_string()))?;
    let view = cfg.node_view(node).map_err(|e| bad(e.to_string()))?;
    let script = twinwall_ruleset::compile(&view, &Options::default())
        .map_err(|source| ApplyError::Compile {
            node: node.to_string(),
            source,
        })?
        .text;
    Ok(Prepared {
        text: text.to_string(),
        view,
        script,
    })
}

/// Restarts a supervised service so that it reads the new running config.
pub trait Restarter: Send + Sync + std::fmt::Debug {
    /// Restarts `service`; `Ok(false)` when there is nothing to restart (not running).
    fn restart(&self, service: &str) -> Result<bool, String>;
}

/// Restarts through init: looks the service's pid up on `init.sock` and sends it SIGTERM;
/// the supervisor restarts every daemon that exits (250 ms backoff), and the new process
/// reads the rewritten running config. VRRP sends its priority-0 advert on SIGTERM, so the
/// peer takes over at once instead of after the master-down interval.
#[derive(Debug, Clone)]
pub struct InitRestarter {
    /// Run directory holding `init.sock`.
    pub run_dir: PathBuf,
}

impl Restarter for InitRestarter {
    fn restart(&self, service: &str) -> Result<bool, String> {
        let path = socket_path(&self.run_dir, "init");
        if !path.exists() {
            return Ok(false);
        }
        let status =
            twinwall_control::request(&path, &Request::new("status"), Duration::from_secs(2))
                .map_err(|e| e.to_string())?;
        let pid = status["services"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|s| s["spec"]["name"] == service)
            .and_then(|s| s["pid"].as_i64());
        let Some(pid) = pid.filter(|&p| p > 1) else {
            return Ok(false);
        };
        kill(Pid::from_raw(pid as i32), Signal::SIGTERM)
            .map_err(|e| format!("cannot signal {service} (pid {pid}): {e}"))?;
        tracing::info!(service, pid, "service restarted for the new config");
        Ok(true)
    }
}

/// What a live apply did.
#[derive(Debug, Clone, Serialize)]
pub struct Applied {
    /// The plan.
    pub plan: Plan,
    /// Services actually restarted.
    pub restarted: Vec<String>,
    /// Restarts that could not be done, one line each.
    pub warnings: Vec<String>,
    /// How long the `nft -f` transaction took (`None`: the ruleset did not change).
    pub nft_ms: Option<f64>,
    /// How long before its use the nft that applied it had been started (`None`: none
    /// was armed): under about a second its start-up may still have been running.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nft_armed_ms: Option<f64>,
}

/// An `nft -f -` started ahead of its apply (phase 1 of a push): the exec, the dynamic
/// linking and nft's own set-up — about half of an `nft -f` run's CPU time, and under
/// TCG much of a push — happen while the push is still being validated; phase 2 only
/// writes the script to its stdin and waits. nft reads its whole input before it does
/// anything, so one dropped without [`ArmedNft::apply`] is killed before it read a byte
/// and has applied nothing.
#[derive(Debug)]
pub struct ArmedNft {
    program: String,
    child: Option<std::process::Child>,
    /// When it was started (its age when used says whether its start-up was done).
    started: std::time::Instant,
}

impl ArmedNft {
    /// Starts `nft -f -` (as `nft` runs it: in a namespace for tests) waiting for its
    /// script.
    pub fn spawn(nft: &Nft) -> Result<ArmedNft, NftError> {
        use std::process::{Command, Stdio};
        let argv = nft.argv();
        let program = argv.join(" ");
        let child = Command::new(&argv[0])
            .args(&argv[1..])
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| NftError::Spawn {
                program: program.clone(),
                source,
            })?;
        Ok(ArmedNft {
            program,
            child: Some(child),
            started: std::time::Instant::now(),
        })
    }

    /// Still waiting for its script (it did not exit, e.g. killed from outside).
    fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// How long ago it was started.
    pub fn age(&self) -> std::time::Duration {
        self.started.elapsed()
    }

    /// Hands `script` to the waiting nft and waits for its one transaction.
    pub fn apply(mut self, script: &str) -> Result<(), NftError> {
        use std::io::Write;
        let Some(mut child) = self.child.take() else {
            return Err(NftError::Apply {
                stderr: "nft was already used".into(),
            });
        };
        if let Some(mut stdin) = child.stdin.take() {
            // A write error (nft exited early) shows up as nft's own failure below.
            let _ = stdin.write_all(script.as_bytes());
        }
        let out = child.wait_with_output().map_err(|source| NftError::Spawn {
            program: self.program.clone(),
            source,
        })?;
        if out.status.success() {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        Err(NftError::Apply {
            stderr: if stderr.is_empty() {
                format!("nft exited with {}", out.status)
            } else {
                stderr
            },
        })
    }
}

impl Drop for ArmedNft {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // Killed before its stdin was closed: it has read nothing and applied nothing.
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The IO shell of a live apply.
///
/// It keeps one [`ArmedNft`] on standby: a push takes it (its start-up — exec, dynamic
/// linking, nft's context — was done long before, which under TCG is hundreds of ms a
/// phase 1 alone did not always hide) and a new one is started behind it. Waiting on
/// its stdin it costs a sleeping process and no CPU.
#[derive(Debug)]
pub struct LiveApplier {
    /// How nft is run.
    pub nft: Nft,
    /// The running config file the services read (`RUN_DIR/cluster.toml`).
    pub running_config: PathBuf,
    /// How services are restarted.
    pub restarter: Box<dyn Restarter>,
    standby: std::sync::Mutex<Option<ArmedNft>>,
    /// After a standby that could not start or died by itself: no new one before this.
    retry_at: std::sync::Mutex<Option<std::time::Instant>>,
}

/// How long [`LiveApplier::refill`] waits after a standby nft failed (no nft, an nft that
/// exits at once), instead of starting one on every tick.
const STANDBY_RETRY: std::time::Duration = std::time::Duration::from_secs(10);

impl LiveApplier {
    /// An applier running `nft` (no standby nft yet: [`LiveApplier::refill`] starts one).
    pub fn new(nft: Nft, running_config: PathBuf, restarter: Box<dyn Restarter>) -> LiveApplier {
        LiveApplier {
            nft,
            running_config,
            restarter,
            standby: std::sync::Mutex::new(None),
            retry_at: std::sync::Mutex::new(None),
        }
    }

    fn standby(&self) -> std::sync::MutexGuard<'_, Option<ArmedNft>> {
        self.standby.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts the standby nft if there is none (service start, after a push took it).
    pub fn refill(&self) {
        let mut s = self.standby();
        let mut retry = self.retry_at.lock().unwrap_or_else(|e| e.into_inner());
        let now = std::time::Instant::now();
        if let Some(a) = s.as_mut() {
            if a.alive() {
                return;
            }
            tracing::warn!("the standby nft exited by itself");
            *s = None;
            *retry = Some(now + STANDBY_RETRY);
        }
        if retry.is_some_and(|t| now < t) {
            return;
        }
        match ArmedNft::spawn(&self.nft) {
            Ok(a) => *s = Some(a),
            Err(e) => {
                tracing::warn!(error = %e, "cannot start a standby nft");
                *retry = Some(now + STANDBY_RETRY);
            }
        }
    }

    /// An nft waiting for its script, for a later [`LiveApplier::apply_armed`] (phase 1)
    /// on `node`: the standby one when it is still alive, else started now.
    pub fn arm(&self, node: &str) -> Result<ArmedNft, ApplyError> {
        let taken = self.standby().take();
        if let Some(mut a) = taken
            && a.alive()
        {
            return Ok(a);
        }
        ArmedNft::spawn(&self.nft).map_err(|source| ApplyError::Nft {
            node: node.to_string(),
            source,
        })
    }

    /// Phase 2: apply `new` over `old`.
    pub fn apply(&self, old: Option<&Prepared>, new: &Prepared) -> Result<Applied, ApplyError> {
        self.apply_armed(old, new, None)
    }

    /// Phase 2 with an nft started in phase 1 (`None`: one is started now). An armed nft
    /// the plan does not need (the ruleset did not change) is dropped: killed unused.
    pub fn apply_armed(
        &self,
        old: Option<&Prepared>,
        new: &Prepared,
        armed: Option<ArmedNft>,
    ) -> Result<Applied, ApplyError> {
        let plan = plan(
            old.map(|o| &o.view),
            &new.view,
            old.map(|o| o.script.as_str()),
            &new.script,
        );
        let mut nft_ms = None;
        let nft_armed_ms = armed.as_ref().map(|a| crate::timing::ms(a.age()));
        if plan.ruleset {
            let t0 = std::time::Instant::now();
            // One transaction: the kernel takes the whole script or nothing of it, so no
            // separate `nft -c` is needed before (a refusal leaves the old ruleset).
            let r = match armed {
                Some(a) => a.apply(&new.script),
                None => self.nft.apply(&new.script),
            };
            r.map_err(|source| ApplyError::Nft {
                node: new.view.node.clone(),
                source,
            })?;
            nft_ms = Some(crate::timing::ms(t0.elapsed()));
        }
        twinwall_bundle::fsio::write_bytes_atomic(
            &self.running_config,
            new.text.as_bytes(),
            0o644,
            true,
        )?;
        let mut restarted = Vec::new();
        let mut warnings = Vec::new();
        for s in &plan.restart {
            match self.restarter.restart(s) {
                Ok(true) => restarted.push(s.to_string()),
                Ok(false) => {}
                Err(e) => warnings.push(format!("restart {s}: {e}")),
            }
        }
        tracing::info!(version = new.view.version, ruleset = plan.ruleset, restarted = ?restarted, "config applied");
        Ok(Applied {
            plan,
            restarted,
            warnings,
            nft_ms,
            nft_armed_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: &str = include_str!("../tests/fixtures/pair.toml");

    fn view(text: &str) -> Prepared {
        prepare(text, "fw1").unwrap()
    }

    #[test]
    fn a_policy_change_touches_only_the_ruleset() {
        let old = view(SEED);
        let new = view(&SEED.replace("tcp/22", "tcp/2222"));
        let p = plan(Some(&old.view), &new.view, Some(&old.script), &new.script);
        assert_eq!(
            p,
            Plan {
                ruleset: true,
                restart: vec![]
            }
        );
    }

    #[test]
    fn vrrp_and_sync_sections_restart_their_services() {
        let old = view(SEED);
        let new = view(&SEED.replace("advert_interval_ms = 100", "advert_interval_ms = 200"));
        let p = plan(Some(&old.view), &new.view, Some(&old.script), &new.script);
        assert_eq!(p.restart, vec!["vrrp"]);
        let new = view(&SEED.replace("port = 3780", "port = 3781"));
        let p = plan(Some(&old.view), &new.view, Some(&old.script), &new.script);
        assert_eq!(p.restart, vec!["sync"]);
        assert!(p.ruleset, "the sync port is opened by the ruleset");
    }

    #[test]
    fn the_same_config_changes_nothing_and_a_first_apply_everything() {
        let old = view(SEED);
        let new = view(&SEED.replace("version = 1", "version = 2"));
        let p = plan(Some(&old.view), &new.view, Some(&old.script), &new.script);
        assert!(p.restart.is_empty());
        let p = plan(None, &new.view, None, &new.script);
        assert!(p.ruleset);
        assert_eq!(p.restart, vec!["vrrp", "sync"]);
    }

    #[derive(Debug)]
    struct NoRestart;

    impl Restarter for NoRestart {
        fn restart(&self, _: &str) -> Result<bool, String> {
            Ok(false)
        }
    }

    fn pid(a: &ArmedNft) -> u32 {
        a.child.as_ref().map(std::process::Child::id).unwrap()
    }

    /// Root: a real nft in a namespace of its own.
    #[test]
    fn the_standby_nft_is_used_once_and_a_dead_one_is_replaced() {
        let ns = twinwall_testkit::Netns::new("mgmtstb").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let applier = LiveApplier::new(
            Nft::in_netns(ns.name()),
            dir.path().join("cluster.toml"),
            Box::new(NoRestart),
        );
        applier.refill();
        let standby = pid(applier.standby().as_ref().unwrap());
        applier.refill();
        assert_eq!(pid(applier.standby().as_ref().unwrap()), standby, "kept");
        let armed = applier.arm("fw1").unwrap();
        assert_eq!(pid(&armed), standby, "a push takes the standby nft");
        assert!(applier.standby().is_none());
        // it applies for real, in one transaction
        let new = view(SEED);
        let applied = applier.apply_armed(None, &new, Some(armed)).unwrap();
        assert!(applied.nft_armed_ms.is_some() && applied.nft_ms.is_some());
        let listing = ns
            .run("nft", ["list", "table", "inet", "twinwall"])
            .unwrap();
        assert!(listing.contains("chain forward"), "{listing}");
        // a standby that died (killed from outside) is not handed out
        applier.refill();
        let dead = pid(applier.standby().as_ref().unwrap());
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(dead as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        std::thread::sleep(Duration::from_millis(200));
        // found dead: no new standby at once (no spawn loop on every tick)
        applier.refill();
        assert!(applier.standby().is_none());
        let armed = applier.arm("fw1").unwrap();
        assert_ne!(pid(&armed), dead);
        // dropped unused: killed, nothing applied (the table is still v1's)
        drop(armed);
        let after = ns
            .run("nft", ["list", "table", "inet", "twinwall"])
            .unwrap();
        assert_eq!(after, listing);
    }

    #[test]
    fn a_config_without_this_node_is_named() {
        let err = prepare(SEED, "fw-9").unwrap_err().to_string();
        assert!(err.contains("fw-9"), "{err}");
    }
}
