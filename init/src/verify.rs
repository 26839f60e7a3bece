//! The real [`BundleVerifier`]: `twinwall_bundle::verify` (signature, payload hashes,
//! anti-rollback) plus the config checks init needs at boot (the config validates and
//! names this node), and the config loader for the network phase.

use std::path::{Path, PathBuf};

use twinwall_bundle::{Kind, Policy, VerifyingKey};
use twinwall_config::NodeView;

use crate::trust::{BundleVerifier, VerifiedBundle};

/// Verifies config bundles with the bundle crate.
#[derive(Debug, Default, Clone, Copy)]
pub struct BundleCrateVerifier;

fn read_keys(trusted: &[PathBuf]) -> (Vec<VerifyingKey>, Vec<String>) {
    let mut keys = Vec::new();
    let mut bad = Vec::new();
    for p in trusted {
        match twinwall_bundle::keys::read_public_key(p) {
            Ok(k) => keys.push(k),
            Err(e) => bad.push(format!("{}: {e}", p.display())),
        }
    }
    (keys, bad)
}

impl BundleVerifier for BundleCrateVerifier {
    fn verify(
        &self,
        bundle: &Path,
        trusted: &[PathBuf],
        min_version: Option<u64>,
        node: &str,
    ) -> Result<VerifiedBundle, String> {
        let bytes = std::fs::read(bundle).map_err(|e| format!("cannot read: {e}"))?;
        let (keys, bad) = read_keys(trusted);
        for b in &bad {
            tracing::warn!(key = %b, "unusable trusted key");
        }
        if keys.is_empty() {
            return Err(format!("no usable trusted key ({})", bad.join("; ")));
        }
        // The floor is inclusive at boot: the active bundle *is* the installed version.
        // The bundle crate's check is "newer than installed", hence floor - 1.
        let policy = Policy {
            trusted: keys,
            installed_version: min_version.map(|v| v.saturating_sub(1)),
            kind: Some(Kind::Config),
            compatible: None,
            allow_rollback: false,
        };
        let v = twinwall_bundle::verify(&bytes, &policy).map_err(|e| match e {
            twinwall_bundle::VerifyError::NotNewer { version, .. } => format!(
                "version {version} is older than the installed-version floor {} (downgrade)",
                min_version.unwrap_or(0)
            ),
            other => other.to_string(),
        })?;
        let text = v
            .config
            .ok_or_else(|| "config bundle carries no cluster.toml".to_string())?;
        let config = twinwall_config::parse("cluster.toml (from the bundle)", &text)
            .map_err(|d| format!("config does not validate: {d}"))?;
        let nodes = config.node_names();
        if !nodes.iter().any(|n| n == node) {
            return Err(format!(
                "the config does not name this node `{node}` (it defines: {})",
                nodes.join(", ")
            ));
        }
        Ok(VerifiedBundle {
            version: v.manifest.version,
            config_toml: text.into_bytes(),
        })
    }
}

/// Loads the node view of a verified config written by the trust phase.
pub fn load_view(config: &Path, node: &str) -> Result<NodeView, String> {
    let c = twinwall_config::load(config).map_err(|d| d.to_string())?;
    c.node_view(node).map_err(|e| e.to_string())
}
