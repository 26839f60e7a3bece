//! `twinwall key ...`: generate signing key pairs and cluster sync keys.
//!
//! Secret files are created with mode 0600 from the start and never replaced without
//! `--force`; their contents are never printed or logged.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::Subcommand;
use twinwall_bundle::fsio::{self, FsError};
use twinwall_bundle::keys::{self, KeyId, SyncKey};

/// Key commands.
#[derive(Debug, Subcommand)]
pub enum KeyCmd {
    /// Generate an ed25519 signing key pair: PREFIX.key (secret, mode 0600) and PREFIX.pub.
    Generate {
        /// Path prefix; `.key` and `.pub` are appended.
        #[arg(long, value_name = "PREFIX")]
        out: PathBuf,
        /// Replace existing key files.
        #[arg(long)]
        force: bool,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Generate a new 32-byte cluster sync key (mode 0600), shared by both nodes of a pair.
    Sync {
        /// The key file to write.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// Replace an existing key file.
        #[arg(long)]
        force: bool,
    },
}

/// Runs a key command.
pub fn run(c: KeyCmd) -> anyhow::Result<()> {
    match c {
        KeyCmd::Generate { out, force, json } => generate(&out, force, json),
        KeyCmd::Sync { out, force } => sync(&out, force),
    }
}

fn with_suffix(prefix: &Path, suffix: &str) -> PathBuf {
    let mut s = OsString::from(prefix.as_os_str());
    s.push(suffix);
    PathBuf::from(s)
}

fn generate(prefix: &Path, force: bool, json: bool) -> anyhow::Result<()> {
    let secret_path = with_suffix(prefix, ".key");
    let public_path = with_suffix(prefix, ".pub");
    if !force {
        // Refuse before writing either file, so a refusal changes nothing.
        for p in [&secret_path, &public_path] {
            if std::fs::symlink_metadata(p).is_ok() {
                return Err(FsError::Exists { path: p.clone() }.into());
            }
        }
    }
    let key = keys::generate_signing_key()?;
    let public = key.verifying_key();
    let key_id = KeyId::of(&public);
    fsio::write_secret(&secret_path, &keys::encode_secret_key(&key), force)?;
    if let Err(e) = fsio::write_bytes_atomic(
        &public_path,
        keys::encode_public_key(&public).as_bytes(),
        0o644,
        force,
    ) {
        if !force {
            // A secret without its public half is useless; leave nothing behind.
            let _ = std::fs::remove_file(&secret_path);
        }
        return Err(e.into());
    }
    tracing::info!(key_id = %key_id, public = %public_path.display(), "signing key pair generated");
    if json {
        println!(
            "{}",
            serde_json::json!({
                "secret_key": secret_path,
                "public_key": public_path,
                "key_id": key_id.to_string(),
            })
        );
    } else {
        println!(
            "wrote {} (secret, 0600) and {}; key id {key_id}",
            secret_path.display(),
            public_path.display()
        );
    }
    Ok(())
}

fn sync(out: &Path, force: bool) -> anyhow::Result<()> {
    let key = SyncKey::generate()?;
    fsio::write_secret(out, &key.encode(), force)
        .with_context(|| "writing the cluster sync key".to_string())?;
    tracing::info!(path = %out.display(), "cluster sync key generated");
    println!("wrote {} (cluster sync key, 0600)", out.display());
    Ok(())
}
