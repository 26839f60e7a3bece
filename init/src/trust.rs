//! The trust phase: reads the node identity and trusted keys from the config partition,
//! verifies the active config bundle (signature, payload hashes, anti-rollback version,
//! that the config names this node), falls back to the previous bundle, and otherwise
//! decides fail-closed with the reasons.
//!
//! Config partition layout (documented in docs/init.md):
//!
//! ```text
//! node                     this node's name (one line)
//! trusted/*.pub            ed25519 public keys allowed to sign bundles
//! sync.key                 the cluster's conntrack-sync key (0600)
//! bundles/active.bundle    the config bundle in force
//! bundles/previous.bundle  the one before it (fallback)
//! installed-version        anti-rollback floor: the lowest config version allowed
//! ```

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::sys::Syscalls;

/// A bundle that passed verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedBundle {
    /// Its config version.
    pub version: u64,
    /// The cluster config (TOML) it carries.
    pub config_toml: Vec<u8>,
}

/// Checks one config bundle. The real implementation wraps `twinwall_bundle`; tests may
/// use their own.
pub trait BundleVerifier {
    /// Verifies `bundle` against the `trusted` public key files: signature, payload hashes,
    /// `version >= min_version` (when given) and that the config has a node `node`.
    /// On rejection returns the reason in words an operator understands.
    fn verify(
        &self,
        bundle: &Path,
        trusted: &[PathBuf],
        min_version: Option<u64>,
        node: &str,
    ) -> Result<VerifiedBundle, String>;
}

/// Which bundle is in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Which {
    /// `bundles/active.bundle`.
    Active,
    /// `bundles/previous.bundle` (the active one was rejected).
    Previous,
    /// `bundles/slot-X.bundle`: the config pinned to the running slot X when an OS update
    /// of the other slot was written (mgmt), used when GRUB fell back to X — the active
    /// bundle may be one only the other slot's software understands.
    Pinned,
}

impl Which {
    /// The name in status and on the console.
    pub fn name(self) -> &'static str {
        match self {
            Which::Active => "active",
            Which::Previous => "previous",
            Which::Pinned => "slot-pinned",
        }
    }
}

/// The decision of the trust phase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// A bundle verified; its config was written to `config_path`.
    Verified {
        /// This node.
        node: String,
        /// Which bundle.
        which: Which,
        /// Its version.
        version: u64,
        /// Where the verified cluster config was written for the services.
        config_path: PathBuf,
        /// The sync key, when the partition has one.
        sync_key: Option<PathBuf>,
        /// Why bundles before it were rejected.
        rejected: Vec<String>,
    },
    /// Nothing verified: bootstrap ruleset, no VIPs, management reachable.
    FailClosed {
        /// This node, when the partition names it.
        node: Option<String>,
        /// Why, one line per rejected item.
        reasons: Vec<String>,
    },
}

impl Decision {
    /// The one-line summary for the console and status.
    pub fn summary(&self) -> String {
        match self {
            Decision::Verified {
                which,
                version,
                rejected,
                ..
            } => {
                let w = which.name();
                if rejected.is_empty() {
                    format!("config version {version} ({w} bundle) verified")
                } else {
                    format!(
                        "config version {version} ({w} bundle) verified; rejected: {}",
                        rejected.join("; ")
                    )
                }
            }
            Decision::FailClosed { reasons, .. } => {
                format!("FAIL-CLOSED: {}", reasons.join("; "))
            }
        }
    }
}

fn read_trimmed(sys: &dyn Syscalls, path: &Path) -> Option<String> {
    sys.read_file(path)
        .ok()
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .filter(|s| !s.is_empty())
}

/// Runs the phase over the config partition mounted at `config_dir`; the verified config
/// goes to `run_dir/cluster.toml`.
pub fn run(
    sys: &dyn Syscalls,
    verifier: &dyn BundleVerifier,
    config_dir: Option<&Path>,
    run_dir: &Path,
) -> Decision {
    run_with_pin(sys, verifier, config_dir, run_dir, None)
}

/// [`run`] on a boot that fell back to `fallback_slot` (`a`/`b`): its pinned bundle
/// `bundles/slot-X.bundle`, when present, is tried before the active and previous ones.
pub fn run_with_pin(
    sys: &dyn Syscalls,
    verifier: &dyn BundleVerifier,
    config_dir: Option<&Path>,
    run_dir: &Path,
    fallback_slot: Option<&str>,
) -> Decision {
    let Some(dir) = config_dir else {
        return Decision::FailClosed {
            node: None,
            reasons: vec!["no config partition (GPT label `config`) found".into()],
        };
    };
    let Some(node) = read_trimmed(sys, &dir.join("node")) else {
        return Decision::FailClosed {
            node: None,
            reasons: vec![format!(
                "{}: missing or empty (the node name is written at flash time)",
                dir.join("node").display()
            )],
        };
    };
    let mut reasons = Vec::new();
    let trusted_dir = dir.join("trusted");
    let trusted: Vec<PathBuf> = sys
        .read_dir(&trusted_dir)
        .unwrap_or_default()
        .into_iter()
        .filter(|n| n.ends_with(".pub"))
        .map(|n| trusted_dir.join(n))
        .collect();
    if trusted.is_empty() {
        return Decision::FailClosed {
            node: Some(node),
            reasons: vec![format!(
                "{}: no trusted keys (*.pub)",
                trusted_dir.display()
            )],
        };
    }
    let floor_path = dir.join("installed-version");
    let min_version = match read_trimmed(sys, &floor_path) {
        None => None,
        Some(s) => match s.parse::<u64>() {
            Ok(v) => Some(v),
            Err(_) => {
                // Fail closed rather than silently dropping anti-rollback.
                return Decision::FailClosed {
                    node: Some(node),
                    reasons: vec![format!(
                        "{}: `{s}` is not a version number",
                        floor_path.display()
                    )],
                };
            }
        },
    };
    let pinned = fallback_slot.map(|s| format!("slot-{s}.bundle"));
    let mut candidates = Vec::new();
    if let Some(p) = &pinned
        && sys.read_file(&dir.join("bundles").join(p)).is_ok()
    {
        candidates.push((Which::Pinned, p.as_str()));
    }
    candidates.push((Which::Active, "active.bundle"));
    candidates.push((Which::Previous, "previous.bundle"));
    for (which, file) in candidates {
        let path = dir.join("bundles").join(file);
        if sys.read_file(&path).is_err() {
            reasons.push(format!("{}: not present", path.display()));
            continue;
        }
        match verifier.verify(&path, &trusted, min_version, &node) {
            Ok(b) => {
                let config_path = run_dir.join("cluster.toml");
                if let Err(e) = sys
                    .mkdir_all(run_dir, 0o755)
                    .and_then(|()| sys.write_file(&config_path, &b.config_toml))
                {
                    reasons.push(format!("cannot write {}: {e}", config_path.display()));
                    break;
                }
                let sync_key = sync_key_for_service(sys, &dir.join("sync.key"), run_dir);
                return Decision::Verified {
                    node,
                    which,
                    version: b.version,
                    config_path,
                    sync_key,
                    rejected: reasons,
                };
            }
            Err(why) => reasons.push(format!("{}: {why}", path.display())),
        }
    }
    Decision::FailClosed {
        node: Some(node),
        reasons,
    }
}

/// The pair's key for the sync service: the config partition's `sync.key` (the bundle
/// area's `twinwall-sync-key-v1 <base64>`, as written by `twinwall flash` and `twinwall
/// key sync`, and read by sync in that form) is checked here and its path handed to sync
/// as it is — no copy of the secret. A missing or malformed key is logged and gives
/// `None` (sync then reports its own error). `_run_dir` is kept for the callers' shape.
pub fn sync_key_for_service(sys: &dyn Syscalls, key: &Path, _run_dir: &Path) -> Option<PathBuf> {
    let text = sys.read_file(key).ok()?;
    let what = key.display().to_string();
    let parsed = std::str::from_utf8(&text)
        .map_err(|e| e.to_string())
        .and_then(|t| twinwall_bundle::SyncKey::parse(t, &what).map_err(|e| e.to_string()));
    match parsed {
        Ok(_) => Some(key.to_path_buf()),
        Err(e) => {
            tracing::error!(path = %what, error = %e, "sync key rejected");
            None
        }
    }
}
