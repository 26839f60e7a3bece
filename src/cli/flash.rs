//! `twinwall flash IMAGE DEVICE --node N`: writes the disk image and the node's config
//! partition, verifies, and refuses mounted, system and too-small targets. The work is in
//! `twinwall_image::flash`.

use std::path::PathBuf;

use clap::Args;
use twinwall_image::flash::{self, FlashOptions};

/// Arguments of `twinwall flash`.
#[derive(Debug, Args)]
pub struct FlashArgs {
    /// The disk image (twinwall.img).
    pub image: PathBuf,
    /// Target block device or file.
    pub device: PathBuf,
    /// Node identity: a key of `[nodes]` in the cluster config.
    #[arg(long)]
    pub node: String,
    /// The first config bundle (becomes bundles/active.bundle).
    #[arg(long)]
    pub bundle: Option<PathBuf>,
    /// Public key trusted to sign config bundles (repeatable).
    #[arg(long)]
    pub trust: Vec<PathBuf>,
    /// The pair's sync key: reused if FILE exists, generated into FILE (0600) if not.
    /// Flash both nodes with the same FILE. Without it the node gets a key of its own.
    #[arg(long, value_name = "FILE")]
    pub sync_key: Option<PathBuf>,
    /// Anti-rollback floor for config bundles (installed-version).
    #[arg(long, default_value_t = 0)]
    pub installed_version: u64,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs `twinwall flash`.
pub fn run(a: FlashArgs) -> anyhow::Result<()> {
    let work = std::env::temp_dir().join(format!("twinwall-flash-{}", std::process::id()));
    let result = flash::flash(&FlashOptions {
        image: a.image,
        target: a.device.clone(),
        node: a.node.clone(),
        bundle: a.bundle,
        trust: a.trust,
        sync_key: a.sync_key.clone(),
        installed_version: a.installed_version,
        work: work.clone(),
        progress: !a.json && std::io::IsTerminal::is_terminal(&std::io::stderr()),
        epoch: twinwall_image::reproducible::source_date_epoch(),
    });
    let _ = std::fs::remove_dir_all(&work);
    let r = result?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    println!(
        "flashed {} for node {}: {} bytes written and verified (sha256 {})",
        a.device.display(),
        a.node,
        r.bytes,
        &r.sha256[..16]
    );
    println!("  config partition: {}", r.config_files.join(", "));
    if r.sync_key_generated {
        match &a.sync_key {
            Some(p) => println!(
                "  new sync key written to {}: flash the peer with --sync-key {}",
                p.display(),
                p.display()
            ),
            None => println!(
                "  note: this node got a sync key of its own; use --sync-key FILE for both nodes of a pair"
            ),
        }
    }
    if r.gpt_relocated {
        println!("  backup GPT moved to the end of the larger device");
    }
    Ok(())
}
