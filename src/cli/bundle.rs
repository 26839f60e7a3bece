//! `twinwall bundle ...`: create signed config bundles and verify bundles of any kind.
//!
//! `create` validates the config first and writes the bundle atomically; `verify` streams
//! the bundle through the verifier, writes nothing, and prints the first reason it was
//! rejected on one line.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::{Subcommand, ValueEnum};
use twinwall_bundle::keys::{read_public_key, read_signing_key};
use twinwall_bundle::{
    CONFIG_PAYLOAD, CreateError, DEFAULT_COMPATIBLE, DiscardSink, Kind, Payload, Policy,
    config_meta, create_file, verify_stream,
};

use super::Reported;

/// Bundle commands.
#[derive(Debug, Subcommand)]
pub enum BundleCmd {
    /// Validate a cluster config and sign it into a config bundle.
    Create {
        /// The cluster config (TOML); version and cluster name come from its `[cluster]`.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// The secret signing key (PREFIX.key from `twinwall key generate`).
        #[arg(long, value_name = "PREFIX.key")]
        key: PathBuf,
        /// The bundle file to write (atomically; replaced if it exists).
        #[arg(long, value_name = "BUNDLE")]
        out: PathBuf,
        /// Which appliances may install it.
        #[arg(long, default_value = DEFAULT_COMPATIBLE)]
        compatible: String,
        /// Print the signed manifest as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Verify a bundle: container, manifest, signature, payloads, kind, compatibility,
    /// anti-rollback and the config inside. Prints the first reason it fails.
    Verify {
        /// The bundle file.
        bundle: PathBuf,
        /// A trusted public key (PREFIX.pub); repeat for several.
        #[arg(long = "trust", value_name = "PUB", required = true)]
        trust: Vec<PathBuf>,
        /// The installed version; the bundle must be newer (anti-rollback).
        #[arg(long, value_name = "N")]
        installed_version: Option<u64>,
        /// Require this kind of bundle.
        #[arg(long, value_enum)]
        kind: Option<KindArg>,
        /// Require this compatible string (e.g. twinwall-1).
        #[arg(long, value_name = "S")]
        compatible: Option<String>,
        /// Accept a signed rollback bundle older than --installed-version.
        #[arg(long)]
        allow_rollback: bool,
        /// Print the verdict as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
}

/// `--kind` values.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum KindArg {
    /// A config bundle.
    Config,
    /// An OS-update bundle.
    OsUpdate,
}

impl From<KindArg> for Kind {
    fn from(k: KindArg) -> Kind {
        match k {
            KindArg::Config => Kind::Config,
            KindArg::OsUpdate => Kind::OsUpdate,
        }
    }
}

/// Runs a bundle command.
pub fn run(c: BundleCmd) -> anyhow::Result<()> {
    match c {
        BundleCmd::Create {
            config,
            key,
            out,
            compatible,
            json,
        } => create(&config, &key, &out, compatible, json),
        BundleCmd::Verify {
            bundle,
            trust,
            installed_version,
            kind,
            compatible,
            allow_rollback,
            json,
        } => {
            let mut trusted = Vec::with_capacity(trust.len());
            for t in &trust {
                trusted.push(read_public_key(t)?);
            }
            let policy = Policy {
                trusted,
                installed_version,
                kind: kind.map(Kind::from),
                compatible,
                allow_rollback,
            };
            verify(&bundle, &policy, json)
        }
    }
}

fn create(
    config: &Path,
    key: &Path,
    out: &Path,
    compatible: String,
    json: bool,
) -> anyhow::Result<()> {
    for (what, input) in [("config", config), ("signing key", key)] {
        if same_file(out, input) {
            anyhow::bail!(
                "--out {} is the {what} file; refusing to overwrite it with the bundle",
                out.display()
            );
        }
    }
    let text = std::fs::read_to_string(config)
        .with_context(|| format!("reading config {}", config.display()))?;
    let mut meta = match config_meta(&config.display().to_string(), &text) {
        Ok(m) => m,
        Err(CreateError::InvalidConfig(rejected)) => {
            for d in &rejected.diagnostics {
                eprintln!("{d}");
            }
            let line = format!(
                "{}: config does not validate; no bundle written",
                config.display()
            );
            eprintln!("twinwall: error: {line}");
            return Err(Reported(line).into());
        }
        Err(e) => return Err(e.into()),
    };
    meta.compatible = compatible;
    let key = read_signing_key(key)?;
    let manifest = create_file(
        Kind::Config,
        &meta,
        &[Payload::bytes(CONFIG_PAYLOAD, text)],
        &key,
        out,
    )?;
    if json {
        println!("{}", serde_json::to_string_pretty(&manifest)?);
    } else {
        println!(
            "wrote {}: config bundle `{}` version {}, signed by key {}",
            out.display(),
            manifest.cluster,
            manifest.version,
            twinwall_bundle::KeyId::of(&key.verifying_key())
        );
    }
    Ok(())
}

/// Whether two paths name the same existing file (same device and inode).
fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

fn verify(bundle: &Path, policy: &Policy, json: bool) -> anyhow::Result<()> {
    let f = File::open(bundle).with_context(|| format!("opening bundle {}", bundle.display()))?;
    match verify_stream(BufReader::new(f), policy, &mut DiscardSink) {
        Ok(v) => {
            let m = &v.manifest;
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "ok": true,
                        "key_id": v.key_id.to_string(),
                        "manifest": m,
                    })
                );
            } else {
                println!(
                    "ok: {} bundle `{}` version {} for {}, created {}, signed by key {}",
                    m.kind, m.cluster, m.version, m.compatible, m.created, v.key_id
                );
            }
            Ok(())
        }
        Err(e) => {
            let line = format!("{}: bundle rejected: {e}", bundle.display());
            if json {
                println!(
                    "{}",
                    serde_json::json!({"ok": false, "code": e.code(), "reason": e.to_string()})
                );
                eprintln!("twinwall: error: {line}");
                return Err(Reported(line).into());
            }
            Err(anyhow::anyhow!(line))
        }
    }
}
