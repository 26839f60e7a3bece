//! The management service's state and operations on this node: the config in force,
//! pushes (one node, or both in two phases over the sync link), the confirmation window
//! and its revert, the peer's version, OS updates. The HTTP layer ([`crate::http`]) only
//! translates requests into these calls.
//!
//! Blocking work (nft, fsync, slot writes, control sockets) runs on tokio's blocking pool;
//! writes are serialised by one async lock, so a push, a revert and a peer forward never
//! interleave.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::Serialize;
use serde_json::{Value, json};
use twinwall_bundle::{Kind, Policy, VerifiedBundle, verify};
use twinwall_control::{Request, socket_path};

use crate::apply::{Applied, ArmedNft, LiveApplier, Prepared, prepare};
use crate::client::{self, Conn, bytes_body};
use crate::error::MgmtError;
use crate::store::{ConfigStore, Which};
use crate::timing::Timings;
use crate::update::{self, Slots, UpdateReport};

/// Size and rate limits of the API.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest config bundle body (also `/confirm`, `/rollback`).
    pub max_config_bundle: u64,
    /// Largest OS update body.
    pub max_update_bundle: u64,
    /// Requests per second (token bucket refill, all clients together).
    pub rate_per_sec: u32,
    /// Bucket size (burst).
    pub burst: u32,
    /// Longest confirmation window a push may ask for.
    pub max_confirm_window: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            // a 16 MiB cluster.toml plus the 1 MiB manifest cap and framing
            max_config_bundle: (17 << 20) + 4096,
            max_update_bundle: 1 << 30,
            rate_per_sec: 20,
            burst: 40,
            max_confirm_window: Duration::from_secs(3600),
        }
    }
}

/// How the service was started.
#[derive(Debug)]
pub struct Settings {
    /// This node (`None`: fail-closed with no node identity).
    pub node: Option<String>,
    /// Fail-closed: no verified config runs; only uploads of a new one are possible.
    pub fail_closed: bool,
    /// Run directory (control sockets).
    pub run_dir: PathBuf,
    /// Addresses to listen on.
    pub listen: Vec<SocketAddr>,
    /// The peer's management API (over the sync link).
    pub peer: Option<SocketAddr>,
    /// The A/B slots, when this node boots from them.
    pub slots: Option<Slots>,
    /// Limits.
    pub limits: Limits,
    /// How often the peer is polled.
    pub peer_poll: Duration,
}

/// A running confirmation window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// The version that must be confirmed.
    pub version: u64,
    /// When it reverts.
    pub deadline: Instant,
}

impl Window {
    /// Whether the window has run out at `now`.
    pub fn expired(&self, now: Instant) -> bool {
        now >= self.deadline
    }
}

/// What this node knows about its peer.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PeerState {
    /// Its management address.
    pub address: Option<String>,
    /// Whether the last poll got an answer.
    pub reachable: bool,
    /// Its config version, when known.
    pub version: Option<u64>,
    /// Its version differs from ours.
    pub skew: bool,
    /// A push could not reach it: it gets the bundle when it returns.
    pub pending: bool,
    /// The last forwarding error.
    pub last_error: Option<String>,
    /// A version the peer refused (not forwarded again).
    #[serde(skip)]
    refused: Option<u64>,
}

#[derive(Debug, Default)]
struct Inner {
    current: Option<Prepared>,
    version: Option<u64>,
    window: Option<Window>,
    peer: PeerState,
    last_update: Option<UpdateReport>,
    last_apply: Option<Applied>,
    rejected: BTreeMap<String, u64>,
    requests: BTreeMap<(String, u16), u64>,
    reverts: u64,
    pushes: u64,
    rate_limited: u64,
    staged: Option<Staged>,
    /// Bumped whenever this node's config in force changes: a peer poll that was in
    /// flight across a change compared the peer with a version we no longer run.
    changes: u64,
    /// Pushes this node is driving right now (`POST /config` with the peer in it).
    pushing: u32,
}

/// Runs `f` and measures how long it took (a push's per-phase timings).
async fn timed<T>(f: impl std::future::Future<Output = T>) -> (T, Duration) {
    let t0 = Instant::now();
    let r = f.await;
    (r, t0.elapsed())
}

/// Counts a push in `Inner::pushing` while it runs, however it ends.
struct PushingGuard<'a>(&'a Node);

impl<'a> PushingGuard<'a> {
    fn new(n: &'a Node) -> Self {
        n.lock().pushing += 1;
        Self(n)
    }
}

impl Drop for PushingGuard<'_> {
    fn drop(&mut self) {
        let mut i = self.0.lock();
        i.pushing = i.pushing.saturating_sub(1);
    }
}

/// What phase 1 of a two-phase push validated on this node (the peer's side), so that
/// phase 2 of the same bundle need not verify and compile it again.
#[derive(Debug)]
struct Staged {
    /// sha256 of the bundle bytes.
    sha256: [u8; 32],
    /// The config version in force when it was validated (the anti-rollback base).
    based_on: Option<u64>,
    verified: VerifiedBundle,
    prepared: Prepared,
    /// The nft started for phase 2 (killed unused when the push is aborted).
    armed: Option<ArmedNft>,
}

fn bundle_sha256(bytes: &[u8]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes).into()
}

/// How long after start-up the first standby nft is started (boot is busy enough).
const STANDBY_AFTER_START: Duration = Duration::from_secs(5);

/// The management service of one node.
#[derive(Debug)]
pub struct Node {
    /// Settings.
    pub settings: Settings,
    store: ConfigStore,
    applier: LiveApplier,
    inner: Mutex<Inner>,
    write: tokio::sync::Mutex<()>,
    /// The kept-alive connection to the peer's API.
    peer_conn: tokio::sync::Mutex<Option<Conn>>,
    /// Bytes written into a slot so far (progress of the running update).
    pub update_written: Arc<AtomicU64>,
    started: Instant,
}

/// The release file the image build writes into every slot (`KEY=value` lines:
/// `TWINWALL_VERSION`, `KERNEL`, `SOURCE_DATE_EPOCH`): what the running slot is.
pub const RELEASE_FILE: &str = "/etc/twinwall-release";

/// The running OS release from `path` as `{"version", "kernel", "epoch"}`; `null` when the
/// file is absent (a host, not an appliance).
pub fn os_release(path: &std::path::Path) -> Value {
    match std::fs::read_to_string(path) {
        Ok(text) => parse_release(&text),
        Err(_) => Value::Null,
    }
}

/// Parses the release file's `KEY=value` lines. Pure.
pub fn parse_release(text: &str) -> Value {
    let mut version = None;
    let mut kernel = None;
    let mut epoch = None;
    for line in text.lines() {
        match line.split_once('=') {
            Some(("TWINWALL_VERSION", v)) => version = Some(v.trim().to_string()),
            Some(("KERNEL", v)) => kernel = Some(v.trim().to_string()),
            Some(("SOURCE_DATE_EPOCH", v)) => epoch = v.trim().parse::<u64>().ok(),
            _ => {}
        }
    }
    json!({"version": version, "kernel": kernel, "epoch": epoch})
}

/// What the kernel enforces: the sha256 of `nft -s list ruleset` (stateless, so counters
/// do not change it; the same digest init's health report prints) and its line count.
pub fn kernel_ruleset() -> Value {
    use sha2::{Digest, Sha256};
    match std::process::Command::new("nft")
        .args(["-s", "list", "ruleset"])
        .stdin(std::process::Stdio::null())
        .output()
    {
        Ok(o) if o.status.success() => json!({
            "sha256": hex::encode(Sha256::digest(&o.stdout)),
            "lines": o.stdout.iter().filter(|b| **b == b'\n').count(),
        }),
        Ok(o) => json!({"error": String::from_utf8_lossy(&o.stderr).trim()}),
        Err(e) => json!({"error": format!("nft: {e}")}),
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Options of a push.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PushOptions {
    /// Revert unless confirmed within this time.
    pub confirm_within: Option<Duration>,
    /// Forward to the peer in two phases.
    pub forward: bool,
}

impl Node {
    /// A node service over its config partition and live applier. Call [`Node::load`]
    /// before serving.
    pub fn new(settings: Settings, store: ConfigStore, applier: LiveApplier) -> Node {
        let peer = PeerState {
            address: settings.peer.map(|p| p.to_string()),
            ..PeerState::default()
        };
        Node {
            settings,
            store,
            applier,
            inner: Mutex::new(Inner {
                peer,
                ..Inner::default()
            }),
            write: tokio::sync::Mutex::new(()),
            peer_conn: tokio::sync::Mutex::new(None),
            update_written: Arc::default(),
            started: Instant::now(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The config partition.
    pub fn store(&self) -> &ConfigStore {
        &self.store
    }

    fn node_name(&self) -> Result<&str, MgmtError> {
        self.settings
            .node
            .as_deref()
            .ok_or_else(|| MgmtError::Unavailable("this node has no identity (fail-closed)".into()))
    }

    /// The config version in force.
    pub fn version(&self) -> Option<u64> {
        self.lock().version
    }

    /// Reads the config in force from the partition (the active bundle, verified) and,
    /// when an unconfirmed push survived a restart of this service, reverts it.
    pub fn load(&self, running_config: Option<&std::path::Path>) -> Result<(), MgmtError> {
        let node = self.settings.node.clone();
        let active = self.store.read_bundle(Which::Active)?;
        let mut loaded = None;
        if let (Some(bytes), Some(node)) = (&active, &node) {
            match self.verify(bytes, None, Kind::Config) {
                Ok(v) => {
                    let text = v.config.clone().unwrap_or_default();
                    loaded = Some((
                        v.manifest.version,
                        prepare(&text, node).map_err(MgmtError::Invalid)?,
                    ));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "active bundle does not verify; using the running config")
                }
            }
        }
        if loaded.is_none()
            && let (Some(path), Some(node)) = (running_config, &node)
            && let Ok(text) = std::fs::read_to_string(path)
        {
            let p = prepare(&text, node).map_err(MgmtError::Invalid)?;
            loaded = Some((p.view.version, p));
        }
        let mut unconfirmed = None;
        if let Some((v, p)) = loaded {
            if self.store.unconfirmed()? == Some(v) {
                unconfirmed = Some(v);
            }
            let mut i = self.lock();
            i.version = Some(v);
            i.current = Some(p);
        }
        if let Some(v) = unconfirmed {
            tracing::warn!(version = v, "config {v} was never confirmed; reverting");
            self.revert_now("unconfirmed after a restart")?;
        }
        Ok(())
    }

    /// Verifies a bundle against the trusted keys of the partition.
    pub fn verify(
        &self,
        bytes: &[u8],
        installed: Option<u64>,
        kind: Kind,
    ) -> Result<VerifiedBundle, MgmtError> {
        let policy = Policy {
            trusted: self.store.trusted_keys()?,
            installed_version: installed,
            kind: Some(kind),
            compatible: None,
            allow_rollback: false,
        };
        verify(bytes, &policy).map_err(|e| {
            let code = e.code().to_string();
            *self.lock().rejected.entry(code).or_default() += 1;
            tracing::warn!(reason = %e, code = e.code(), "bundle rejected");
            MgmtError::Rejected(e)
        })
    }

    /// The anti-rollback reference: the version in force, else the partition's floor.
    fn installed(&self) -> Result<Option<u64>, MgmtError> {
        match self.version() {
            Some(v) => Ok(Some(v)),
            None => Ok(self.store.floor()?),
        }
    }

    /// Phase 1: verify and compile for this node; with `arm`, start the `nft -f -` that
    /// phase 2 will feed ([`ArmedNft`]). Changes nothing in force and nothing on the
    /// partition: the staged push lives in memory (verified bundle, compiled script,
    /// waiting nft) until phase 2 installs it.
    ///
    /// There is no `nft -c` here: phase 2's `nft -f` is one atomic transaction, which the
    /// kernel refuses whole or applies whole, so a separate check would only run the same
    /// netlink batch twice (one more nft run per node on the path of every push). A node
    /// whose kernel refuses the script is back on its previous config at once, and the
    /// pushing node then reverts the pair ([`Node::push`]).
    pub fn stage(
        &self,
        bytes: &[u8],
        arm: bool,
        t: &mut Timings,
    ) -> Result<(VerifiedBundle, Prepared, Option<ArmedNft>), MgmtError> {
        let node = self.node_name()?.to_string();
        let t0 = Instant::now();
        let armed = if arm {
            // started first, so that its start-up overlaps the verification below
            match self.applier.arm(&node) {
                Ok(a) => Some(a),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot start nft ahead; phase 2 starts it");
                    None
                }
            }
        } else {
            None
        };
        t.since("arm", t0);
        let t0 = Instant::now();
        let v = self.verify(bytes, self.installed()?, Kind::Config)?;
        t.since("verify", t0);
        let t0 = Instant::now();
        let text = v.config.clone().unwrap_or_default();
        let p = prepare(&text, &node).map_err(MgmtError::Invalid)?;
        t.since("compile", t0);
        Ok((v, p, armed))
    }

    /// Phase 2: install as active (previous kept) and apply live, both at once (the
    /// partition's two flushes overlap the nft transaction); when either fails, the
    /// previous bundle and ruleset are restored.
    pub fn commit(
        &self,
        bytes: &[u8],
        v: &VerifiedBundle,
        p: Prepared,
        window: Option<Duration>,
        armed: Option<ArmedNft>,
        t: &mut Timings,
    ) -> Result<Applied, MgmtError> {
        let (old, old_version) = {
            let i = self.lock();
            (i.current.clone(), i.version)
        };
        let version = v.manifest.version;
        let t0 = Instant::now();
        let (installed, applied) = std::thread::scope(|s| {
            let install = s.spawn(|| {
                let t0 = Instant::now();
                let r = self.store.install(
                    bytes,
                    version,
                    old_version.or(Some(version)),
                    window.is_some(),
                );
                (r, t0.elapsed())
            });
            let applied = self.applier.apply_armed(old.as_ref(), &p, armed);
            let apply_d = t0.elapsed();
            let (installed, install_d) = install.join().unwrap_or_else(|_| {
                (
                    Err(crate::store::StoreError::Invalid {
                        path: self.store.dir().to_owned(),
                        reason: "the install thread panicked".into(),
                    }),
                    Duration::ZERO,
                )
            });
            t.set("install", install_d);
            t.set("apply", apply_d);
            (installed, applied)
        });
        t.since("install+apply", t0);
        match (installed, applied) {
            (Ok(()), Ok(applied)) => {
                if let Some(nft) = applied.nft_ms {
                    t.set("apply.nft", Duration::from_secs_f64(nft / 1000.0));
                }
                if let Some(age) = applied.nft_armed_ms {
                    t.set("apply.nft_armed_age", Duration::from_secs_f64(age / 1000.0));
                }
                let mut i = self.lock();
                i.current = Some(p);
                i.version = Some(version);
                i.changes += 1;
                i.window = window.map(|w| Window {
                    version,
                    deadline: Instant::now() + w,
                });
                i.pushes += 1;
                i.last_apply = Some(applied.clone());
                Ok(applied)
            }
            (installed, applied) => {
                let err = match (installed, applied) {
                    (Err(se), Ok(_)) => {
                        tracing::error!(error = %se, version, "install failed; restoring the previous config");
                        MgmtError::Store(se)
                    }
                    (_, Err(e)) => {
                        tracing::error!(error = %e, version, "apply failed; restoring the previous config");
                        MgmtError::ApplyFailed(e)
                    }
                    (Ok(()), Ok(_)) => unreachable!("handled above"),
                };
                if let Some(old) = &old {
                    // the partition back to the previous bundle when the new one got in
                    if self
                        .store
                        .read_bundle(Which::Active)
                        .ok()
                        .flatten()
                        .is_some_and(|a| a == bytes)
                        && let Err(e) = self.store.revert()
                    {
                        tracing::error!(error = %e, "restoring the previous bundle failed");
                    }
                    if let Err(e2) = self.applier.apply(Some(&p), old) {
                        tracing::error!(error = %e2, "re-applying the previous config failed too");
                    }
                }
                Err(err)
            }
        }
    }

    /// Reverts to the previous bundle and applies it (window expiry, rollback request).
    pub fn revert_now(&self, why: &str) -> Result<u64, MgmtError> {
        let node = self.node_name()?.to_string();
        let prev = self
            .store
            .read_bundle(Which::Previous)?
            .ok_or_else(|| MgmtError::Conflict("no previous config bundle to go back to".into()))?;
        let v = self.verify(&prev, None, Kind::Config)?;
        let p =
            prepare(&v.config.clone().unwrap_or_default(), &node).map_err(MgmtError::Invalid)?;
        self.store.revert()?;
        let old = self.lock().current.clone();
        let applied = self
            .applier
            .apply(old.as_ref(), &p)
            .map_err(MgmtError::ApplyFailed)?;
        let version = v.manifest.version;
        tracing::warn!(version, why, "reverted to the previous config");
        let mut i = self.lock();
        i.current = Some(p);
        i.version = Some(version);
        i.changes += 1;
        i.window = None;
        i.reverts += 1;
        i.last_apply = Some(applied);
        Ok(version)
    }

    /// Runs `f` on the blocking pool while holding the write lock.
    async fn write<R: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Node) -> Result<R, MgmtError> + Send + 'static,
    ) -> Result<R, MgmtError> {
        let _guard = self.write.lock().await;
        let me = self.clone();
        tokio::task::spawn_blocking(move || f(&me))
            .await
            .map_err(|e| MgmtError::Unavailable(format!("worker failed: {e}")))?
    }

    /// A POST to the peer's API over a kept-alive connection (opened on first use, or
    /// again when the peer closed it).
    async fn peer_call(&self, path: &str, bytes: &Bytes) -> Result<client::Answer, String> {
        let Some(peer) = self.settings.peer else {
            return Err("no peer".into());
        };
        // The peer is one link away: a connect that takes longer than this means it is
        // down (a dead host sends no RST), and the push goes on with it pending. A peer
        // that accepted the connection is up, only slow (an nft run under TCG on a loaded
        // host can take seconds): its answer is waited for much longer.
        let connect = Duration::from_secs(3);
        let t = Duration::from_secs(60);
        let kept = self.peer_conn.lock().await.take().filter(Conn::usable);
        let reused = kept.is_some();
        let mut conn = match kept {
            Some(c) => c,
            None => Conn::open(peer, connect).await.map_err(|e| e.to_string())?,
        };
        let mut r = conn
            .request("POST", path, bytes_body(bytes.clone()), t)
            .await;
        if reused && matches!(r, Err(client::ClientError::Closed { .. })) {
            // The peer closed the idle connection as this request went out: it was not
            // sent, so a fresh connection may carry it.
            conn = Conn::open(peer, connect).await.map_err(|e| e.to_string())?;
            r = conn
                .request("POST", path, bytes_body(bytes.clone()), t)
                .await;
        }
        let a = r.map_err(|e| e.to_string())?;
        *self.peer_conn.lock().await = Some(conn);
        Ok(a)
    }

    /// `POST /config`: the whole push. With `forward`, the peer stages and validates too
    /// before either node applies (two phases); a peer that does not answer gets the
    /// bundle when it returns.
    ///
    /// Both phases run on the two nodes at the same time: phase 1 (verify, compile, start
    /// the nft that will apply) changes nothing in force on either; phase 2 (install on
    /// the partition while the waiting nft gets its script) runs here while the peer
    /// does its own. If one side's apply fails, that side is
    /// back on its previous config by itself and the other is rolled back
    /// (`POST /rollback` to the peer, a revert here), so the pair never stays split. The
    /// answer comes once both kernels enforce the new ruleset (or the peer is marked
    /// pending), with each node's step timings (`timings_ms`).
    pub async fn push(
        self: &Arc<Self>,
        bytes: Bytes,
        opts: PushOptions,
    ) -> Result<Value, MgmtError> {
        if self.settings.fail_closed {
            return self.install_fail_closed(bytes).await;
        }
        let started = Instant::now();
        let _pushing = PushingGuard::new(self);
        let mut t = Timings::default();
        let b = bytes.clone();
        let forward = opts.forward && self.settings.peer.is_some();
        // Phase 1 on both nodes at once: neither changes anything in force or on the
        // partition; a refusal on either side drops both staged pushes.
        let (local, remote) = tokio::join!(
            timed(self.write(move |n| {
                let mut lt = Timings::default();
                n.stage(&b, true, &mut lt).map(|x| (x, lt))
            })),
            async {
                if forward {
                    Some(timed(self.peer_call("/config?phase=stage", &bytes)).await)
                } else {
                    None
                }
            }
        );
        let (local, local_d) = local;
        let ((v, p, armed), lt) = match local {
            Ok(x) => x,
            Err(e) => {
                if matches!(&remote, Some((Ok(a), _)) if a.ok()) {
                    let _ = self.peer_call("/config?phase=abort", &bytes).await;
                }
                return Err(e);
            }
        };
        t.set("phase1.local", local_d);
        for (k, v) in [
            ("verify", "verify"),
            ("compile", "compile"),
            ("stage", "stage"),
        ] {
            if let Some(ms) = lt.get(k) {
                t.set(
                    &format!("phase1.local.{v}"),
                    Duration::from_secs_f64(ms / 1000.0),
                );
            }
        }
        let version = v.manifest.version;
        let mut peer = json!(null);
        let mut peer_staged = false;
        if let Some((remote, d)) = remote {
            t.set("phase1.peer", d);
            match remote {
                Ok(a) if a.ok() => {
                    peer_staged = true;
                    t.extend("phase1.peer", &a.json()["timings_ms"]);
                }
                Ok(a) => {
                    // (this node's waiting nft is killed as `armed` goes out of scope)
                    return Err(MgmtError::Peer {
                        peer: self.lock().peer.address.clone().unwrap_or_default(),
                        status: a.status,
                        message: a.reason(),
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "peer unreachable; it gets the bundle when it returns");
                    let mut i = self.lock();
                    i.peer.pending = true;
                    i.peer.reachable = false;
                    i.peer.last_error = Some(e.clone());
                    peer = json!({"state": "pending", "error": e});
                }
            }
        }
        // Phase 2 on both nodes at once.
        let b = bytes.clone();
        let window = opts.confirm_within;
        let q = match window {
            Some(w) => format!("/config?phase=commit&confirm_within={}", w.as_secs().max(1)),
            None => "/config?phase=commit".to_string(),
        };
        let (local, remote) = tokio::join!(
            timed(self.write(move |n| {
                let mut lt = Timings::default();
                n.commit(&b, &v, p, window, armed, &mut lt).map(|a| (a, lt))
            })),
            async {
                if peer_staged {
                    Some(timed(self.peer_call(&q, &bytes)).await)
                } else {
                    None
                }
            }
        );
        let (local, local_d) = local;
        t.set("phase2.local", local_d);
        let applied = match local {
            Ok((a, lt)) => {
                for k in [
                    "install",
                    "apply",
                    "apply.nft",
                    "apply.nft_armed_age",
                    "install+apply",
                ] {
                    if let Some(ms) = lt.get(k) {
                        t.set(
                            &format!("phase2.local.{k}"),
                            Duration::from_secs_f64(ms / 1000.0),
                        );
                    }
                }
                a
            }
            Err(e) => {
                // This node is back on its previous config (commit restored it); a peer
                // that applied goes back too, one that only staged drops its copy.
                match &remote {
                    Some((Ok(a), _)) if a.ok() => {
                        tracing::warn!(version, "local apply failed; rolling the peer back");
                        let _ = self.peer_call("/rollback", &bytes).await;
                    }
                    Some(_) => {
                        let _ = self.peer_call("/config?phase=abort", &bytes).await;
                    }
                    None => {}
                }
                return Err(e);
            }
        };
        if let Some((remote, d)) = remote {
            t.set("phase2.peer", d);
            peer = match remote {
                Ok(a) if a.ok() => {
                    t.extend("phase2.peer", &a.json()["timings_ms"]);
                    let mut i = self.lock();
                    i.peer.version = Some(version);
                    i.peer.pending = false;
                    i.peer.skew = false;
                    json!({"state": "applied", "result": a.json()})
                }
                Ok(a) => {
                    // The peer refused or failed to apply and is on its previous config:
                    // this node goes back too, so the pair runs one version.
                    tracing::error!(version, status = a.status, reason = %a.reason(), "peer could not apply; reverting this node");
                    self.lock().peer.last_error = Some(a.reason());
                    let back = self
                        .write(|n| n.revert_now("the peer could not apply"))
                        .await;
                    return Err(MgmtError::Peer {
                        peer: self.lock().peer.address.clone().unwrap_or_default(),
                        status: a.status,
                        message: match back {
                            Ok(v) => format!("{} (this node went back to version {v})", a.reason()),
                            Err(e) => format!("{} (going back here failed too: {e})", a.reason()),
                        },
                    });
                }
                Err(e) => {
                    let mut i = self.lock();
                    i.peer.pending = true;
                    i.peer.last_error = Some(e.clone());
                    json!({"state": "pending", "error": e})
                }
            };
        }
        t.since("total", started);
        tracing::info!(version, forward, timings = %t.line(), "push applied");
        Ok(json!({
            "node": self.settings.node,
            "version": version,
            "applied": applied,
            "confirm_within_s": window.map(|w| w.as_secs()),
            "peer": peer,
            "timings_ms": t,
        }))
    }

    /// `POST /config?phase=stage`.
    pub async fn peer_stage(self: &Arc<Self>, bytes: Bytes) -> Result<Value, MgmtError> {
        let (version, t) = self
            .write(move |n| {
                let mut t = Timings::default();
                let (v, p, armed) = n.stage(&bytes, true, &mut t)?;
                let version = v.manifest.version;
                let based_on = n.version();
                // (a staged push replaced here kills its waiting nft)
                n.lock().staged = Some(Staged {
                    sha256: bundle_sha256(&bytes),
                    based_on,
                    verified: v,
                    prepared: p,
                    armed,
                });
                tracing::info!(version, timings = %t.line(), "push staged for the peer");
                Ok((version, t))
            })
            .await?;
        Ok(json!({"node": self.settings.node, "staged": version, "timings_ms": t}))
    }

    /// `POST /config?phase=commit`: installs the staged bundle (validating again when
    /// the staged copy is not this bundle) and applies it.
    pub async fn peer_commit(
        self: &Arc<Self>,
        bytes: Bytes,
        window: Option<Duration>,
    ) -> Result<Value, MgmtError> {
        let (applied, t) = self
            .write(move |n| {
                let mut t = Timings::default();
                // The bundle phase 1 validated, with nothing installed since: use that
                // validation; anything else is validated again.
                // (the version is read first: `n.lock()` is not re-entrant)
                let in_force = n.version();
                let staged = n.lock().staged.take();
                let staged =
                    staged.filter(|s| s.sha256 == bundle_sha256(&bytes) && s.based_on == in_force);
                let (v, p, armed) = match staged {
                    Some(s) => (s.verified, s.prepared, s.armed),
                    None => n.stage(&bytes, false, &mut t)?,
                };
                let a = n.commit(&bytes, &v, p, window, armed, &mut t)?;
                {
                    // The peer that sent phase 2 is committing the same version (it
                    // rolls this node back if its own apply fails).
                    let mut i = n.lock();
                    i.peer.version = Some(v.manifest.version);
                    i.peer.skew = false;
                    i.peer.pending = false;
                }
                tracing::info!(version = v.manifest.version, timings = %t.line(), "peer push applied");
                Ok((a, t))
            })
            .await?;
        Ok(
            json!({"node": self.settings.node, "version": self.version(), "applied": applied, "timings_ms": t}),
        )
    }

    /// `POST /config?phase=abort`.
    pub async fn peer_abort(self: &Arc<Self>) -> Result<Value, MgmtError> {
        self.write(|n| {
            n.lock().staged = None;
            Ok(n.store.unstage()?)
        })
        .await?;
        Ok(json!({"node": self.settings.node, "aborted": true}))
    }

    async fn install_fail_closed(self: &Arc<Self>, bytes: Bytes) -> Result<Value, MgmtError> {
        let version = self
            .write(move |n| {
                let v = n.verify(&bytes, n.store.floor()?, Kind::Config)?;
                let version = v.manifest.version;
                n.store.install(&bytes, version, Some(version), false)?;
                Ok(version)
            })
            .await?;
        Ok(
            json!({"node": self.settings.node, "version": version, "installed": true,
            "reboot_required": true}),
        )
    }

    /// `POST /confirm` (body: the bundle being confirmed). Here and on the peer at the
    /// same time.
    pub async fn confirm(
        self: &Arc<Self>,
        bytes: Bytes,
        forward: bool,
    ) -> Result<Value, MgmtError> {
        let b = bytes.clone();
        let forward = forward && self.settings.peer.is_some();
        let (local, remote) = tokio::join!(
            self.write(move |n| {
                let v = n.verify(&b, None, Kind::Config)?;
                let version = v.manifest.version;
                let window = n.lock().window;
                match window {
                    Some(w) if w.version == version => {
                        n.store.confirm()?;
                        n.lock().window = None;
                        tracing::info!(version, "config confirmed");
                        Ok(version)
                    }
                    None if n.version() == Some(version) => Ok(version),
                    _ => Err(MgmtError::Conflict(format!(
                        "version {version} is not waiting for confirmation here (running {:?})",
                        n.version()
                    ))),
                }
            }),
            async {
                if forward {
                    Some(self.peer_call("/confirm?forward=0", &bytes).await)
                } else {
                    None
                }
            }
        );
        let version = local?;
        let peer = match remote {
            None => json!(null),
            Some(Ok(a)) => json!({"status": a.status, "result": a.json()}),
            Some(Err(e)) => json!({"error": e}),
        };
        Ok(json!({"node": self.settings.node, "confirmed": version, "peer": peer}))
    }

    /// `POST /rollback` (body: the config bundle in force, as proof): back to the previous
    /// config; with `os`, boot the other slot next (and reboot when asked).
    pub async fn rollback(self: &Arc<Self>, bytes: Bytes, os: bool) -> Result<Value, MgmtError> {
        self.write(move |n| {
            let v = n.verify(&bytes, None, Kind::Config)?;
            if n.version() != Some(v.manifest.version) {
                return Err(MgmtError::Conflict(format!(
                    "the proof bundle is version {}, the config in force is {:?}",
                    v.manifest.version,
                    n.version()
                )));
            }
            if os {
                let slots = n.settings.slots.as_ref().ok_or_else(|| {
                    MgmtError::Unavailable("this node has no A/B slots configured".into())
                })?;
                let next = update::rollback(slots)?;
                return Ok(json!({"node": n.settings.node, "next_boot": next}));
            }
            let version = n.revert_now("rollback requested")?;
            Ok(json!({"node": n.settings.node, "version": version}))
        })
        .await
    }

    /// `POST /update`: streams an OS update into the inactive slot.
    pub async fn update(
        self: &Arc<Self>,
        body: impl std::io::Read + Send + 'static,
    ) -> Result<UpdateReport, MgmtError> {
        let report = self
            .write(move |n| {
                let slots = n.settings.slots.as_ref().ok_or_else(|| {
                    MgmtError::Unavailable("this node has no A/B slots configured".into())
                })?;
                let installed = n.store.os_versions()?.get(slots.running.cmdline()).copied();
                let policy = Policy {
                    trusted: n.store.trusted_keys()?,
                    installed_version: installed,
                    kind: Some(Kind::OsUpdate),
                    compatible: None,
                    allow_rollback: false,
                };
                n.update_written.store(0, Ordering::Relaxed);
                let mut body = body;
                let r = update::install(
                    &mut body,
                    &policy,
                    slots,
                    &n.store,
                    n.update_written.clone(),
                );
                if r.is_err() {
                    // Read the rest of the upload (bounded by the body limit) so that the
                    // client gets the answer instead of a reset connection.
                    let _ = std::io::copy(&mut body, &mut std::io::sink());
                }
                if let Err(update::UpdateError::Rejected(e)) = &r {
                    *n.lock().rejected.entry(e.code().to_string()).or_default() += 1;
                }
                Ok(r?)
            })
            .await?;
        self.lock().last_update = Some(report.clone());
        Ok(report)
    }

    /// Whether a reboot is possible: only when init is PID 1 (never the machine a test
    /// runs on).
    pub fn reboot_possible(&self) -> Result<(), MgmtError> {
        let init = twinwall_control::request(
            &socket_path(&self.settings.run_dir, "init"),
            &Request::new("status"),
            Duration::from_secs(2),
        )
        .map_err(|e| MgmtError::Unavailable(format!("cannot reach init: {e}")))?;
        if init["mode"] != "pid1" {
            return Err(MgmtError::Unavailable(
                "init is not PID 1 here (supervise mode)".into(),
            ));
        }
        Ok(())
    }

    /// Reboots the node through init (SIGTERM to PID 1 = orderly reboot: VRRP first,
    /// with its priority-0 advert), after [`Node::reboot_possible`].
    pub fn reboot(&self) -> Result<(), MgmtError> {
        self.reboot_possible()?;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(1),
            nix::sys::signal::Signal::SIGTERM,
        )
        .map_err(|e| MgmtError::Unavailable(format!("cannot signal init: {e}")))
    }

    /// One tick of the background work: revert an expired window; start the standby nft
    /// when none waits (only while no push runs or is staged, and not in the first
    /// seconds after start-up, so that it competes with neither).
    pub async fn tick(self: &Arc<Self>) {
        let idle = !self.settings.fail_closed
            && self.started.elapsed() >= STANDBY_AFTER_START
            && self.write.try_lock().is_ok()
            && {
                let i = self.lock();
                i.pushing == 0 && i.staged.is_none()
            };
        if idle {
            let n = self.clone();
            let _ = tokio::task::spawn_blocking(move || n.applier.refill()).await;
        }
        let expired = self
            .lock()
            .window
            .is_some_and(|w| w.expired(Instant::now()));
        if expired {
            let r = self
                .write(|n| {
                    // re-check under the write lock: a confirm may have won the race
                    if n.lock().window.is_some_and(|w| w.expired(Instant::now())) {
                        n.revert_now("confirmation window expired").map(Some)
                    } else {
                        Ok(None)
                    }
                })
                .await;
            if let Err(e) = r {
                tracing::error!(error = %e, "revert after the confirmation window failed");
            }
        }
    }

    /// Polls the peer's version; forwards our (confirmed) bundle when the peer is behind.
    pub async fn poll_peer(self: &Arc<Self>) {
        let Some(peer) = self.settings.peer else {
            return;
        };
        let changes = self.lock().changes;
        let answer = client::request(
            peer,
            "GET",
            "/status?local=1",
            client::empty_body(),
            Duration::from_secs(3),
        )
        .await;
        let theirs = match answer {
            Ok(a) if a.ok() => {
                let status = a.json();
                let config = &status["mgmt"]["config"];
                if config["pushing"] == Value::Bool(true) {
                    // The peer is in the middle of a push to both of us: its version and
                    // ours are moving; comparing them now would report (and "repair") a
                    // skew that the push itself is about to end.
                    self.lock().peer.reachable = true;
                    return;
                }
                config["version"].as_u64()
            }
            Ok(a) => {
                self.lock().peer.last_error = Some(a.reason());
                None
            }
            Err(e) => {
                {
                    let mut i = self.lock();
                    i.peer.reachable = false;
                    i.peer.last_error = Some(e.to_string());
                }
                // a connection kept to a peer that went away would only time out
                *self.peer_conn.lock().await = None;
                return;
            }
        };
        let (ours, window, refused) = {
            let mut i = self.lock();
            i.peer.reachable = true;
            if i.changes != changes {
                // A push or revert landed while the answer was on its way: the peer's
                // version was read against a config this node no longer runs (a
                // two-phase push moves both together). The next poll looks again.
                return;
            }
            i.peer.version = theirs;
            i.peer.skew = theirs != i.version;
            (i.version, i.window, i.peer.refused)
        };
        let behind = matches!((theirs, ours), (Some(t), Some(o)) if t < o)
            || (theirs.is_none() && ours.is_some());
        if !behind || window.is_some() || refused == ours {
            if !behind {
                self.lock().peer.pending = false;
            }
            return;
        }
        let Ok(Some(bytes)) = self.store.read_bundle(Which::Active) else {
            return;
        };
        tracing::info!(peer = %peer, ours = ?ours, theirs = ?theirs, "peer is behind; forwarding the config in force");
        let bytes = Bytes::from(bytes);
        match self.peer_call("/config?forward=0", &bytes).await {
            Ok(a) if a.ok() => {
                let mut i = self.lock();
                i.peer.version = ours;
                i.peer.skew = false;
                i.peer.pending = false;
                i.peer.last_error = None;
            }
            Ok(a) => {
                let mut i = self.lock();
                i.peer.refused = ours;
                i.peer.last_error = Some(format!("{}: {}", a.status, a.reason()));
            }
            Err(e) => self.lock().peer.last_error = Some(e),
        }
    }

    /// Counts a request (metrics).
    pub fn count_request(&self, endpoint: &str, status: u16) {
        *self
            .lock()
            .requests
            .entry((endpoint.to_string(), status))
            .or_default() += 1;
    }

    /// Counts a rate-limited request.
    pub fn count_rate_limited(&self) {
        self.lock().rate_limited += 1;
    }

    /// This service's own status (also the `status` answer of `mgmt.sock`).
    pub fn snapshot(&self) -> Value {
        let i = self.lock();
        let now = Instant::now();
        let boot = self.settings.slots.as_ref().map(|s| {
            let st = twinwall_image::slot::SlotControl::state(
                &twinwall_image::slot::GrubenvFile::new(&s.grubenv),
            );
            json!({
                "running": s.running,
                "next_boot": st.as_ref().ok().map(|st| st.grub_boot().1),
                "state": st.as_ref().ok(),
                "os_versions": self.store.os_versions().ok(),
                "error": st.as_ref().err().map(|e| e.to_string()),
            })
        });
        json!({
            "ready": true,
            "node": self.settings.node,
            "fail_closed": self.settings.fail_closed,
            "listen": self.settings.listen.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            "uptime_ms": self.started.elapsed().as_millis() as u64,
            "config": {
                "version": i.version,
                "cluster": i.current.as_ref().map(|p| p.view.cluster.clone()),
                "confirm_pending": i.window.map(|w| json!({
                    "version": w.version,
                    "remaining_ms": w.deadline.saturating_duration_since(now).as_millis() as u64,
                })),
                "last_apply": i.last_apply,
                "reverts": i.reverts,
                "pushes": i.pushes,
                "pushing": i.pushing > 0,
            },
            "peer": i.peer,
            "slots": boot,
            "os": os_release(std::path::Path::new(RELEASE_FILE)),
            "update": {
                "last": i.last_update,
                "written_bytes": self.update_written.load(Ordering::Relaxed),
            },
            "rejected": i.rejected,
            "at_unix_ms": unix_ms(),
        })
    }

    /// The whole node's status: init, ruleset, vrrp and sync from their control sockets
    /// (as `twinwall status --json` gathers it) plus this service's own.
    pub fn node_status(&self) -> Value {
        let mut all = serde_json::Map::new();
        let mut unreachable = serde_json::Map::new();
        for s in ["init", "ruleset", "vrrp", "sync"] {
            match twinwall_control::request(
                &socket_path(&self.settings.run_dir, s),
                &Request::new("status"),
                Duration::from_secs(2),
            ) {
                Ok(v) => {
                    all.insert(s.into(), v);
                }
                Err(e) => {
                    unreachable.insert(s.into(), Value::String(e.to_string()));
                }
            }
        }
        all.insert("mgmt".into(), self.snapshot());
        all.insert("ruleset_in_kernel".into(), kernel_ruleset());
        all.insert("unreachable".into(), Value::Object(unreachable));
        Value::Object(all)
    }

    /// Prometheus text exposition of the counters and gauges.
    pub fn metrics(&self, status: &Value) -> String {
        crate::metrics::render(&self.metrics_input(), status)
    }

    fn metrics_input(&self) -> crate::metrics::Input {
        let i = self.lock();
        crate::metrics::Input {
            requests: i.requests.clone(),
            rejected: i.rejected.clone(),
            version: i.version,
            confirm_pending: i.window.is_some(),
            reverts: i.reverts,
            pushes: i.pushes,
            rate_limited: i.rate_limited,
            peer_reachable: i.peer.reachable,
            peer_version: i.peer.version,
            peer_pending: i.peer.pending,
            update_written: self.update_written.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_release_file_gives_the_baked_in_version() {
        let v = parse_release(
            "TWINWALL_VERSION=0.1.0-lab2\nKERNEL=6.1.0-57-amd64\nSOURCE_DATE_EPOCH=17\n",
        );
        assert_eq!(v["version"], "0.1.0-lab2");
        assert_eq!(v["kernel"], "6.1.0-57-amd64");
        assert_eq!(v["epoch"], 17);
        assert_eq!(parse_release("junk\n")["version"], Value::Null);
        assert_eq!(
            os_release(std::path::Path::new("/nonexistent/release")),
            Value::Null
        );
    }
}
