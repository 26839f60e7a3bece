//! `twinwall install DEVICE [--from IMAGE]`: lays out a twinwall disk (GPT, ESP with GRUB
//! for BIOS and UEFI, slot A, empty slot B, config, data) from the running live system or
//! a twinwall.img, carrying over a config partition; refuses mounted, system, too-small
//! targets and the installation medium. The work is in `twinwall_image::install`.

use std::path::PathBuf;

use clap::Args;
use twinwall_image::install::{self, ConfigChoice, ConfigOutcome, InstallOptions, Source};

/// Arguments of `twinwall install`.
#[derive(Debug, Args)]
pub struct InstallArgs {
    /// Target disk (block device) or image file; everything on it is overwritten.
    pub device: PathBuf,
    /// A twinwall.img (file or disk) to install from. Default: the running system (the
    /// live ISO's slot, or the booted slot), with the disk template it carries.
    #[arg(long, value_name = "IMAGE")]
    pub from: Option<PathBuf>,
    /// Config partition to carry over: a partition, a filesystem image, or a twinwall
    /// disk or image (its `config` partition). Default: the config partition the running
    /// system mounted (none: empty), or the --from image's own.
    #[arg(long, value_name = "PATH", conflicts_with = "empty_config")]
    pub config_from: Option<PathBuf>,
    /// Leave the config partition empty: the node boots fail-closed until it is flashed.
    #[arg(long)]
    pub empty_config: bool,
    /// No progress bar (the serial console of an unattended install).
    #[arg(long)]
    pub no_progress: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs `twinwall install`.
pub fn run(a: InstallArgs) -> anyhow::Result<()> {
    let from = match a.from {
        Some(p) => Source::Image(p),
        None => Source::Running,
    };
    let config = match (a.config_from, a.empty_config) {
        (Some(p), _) => ConfigChoice::From(p),
        (None, true) => ConfigChoice::Empty,
        (None, false) => ConfigChoice::Default,
    };
    let mut opts = InstallOptions::new(a.device.clone(), from, config);
    opts.progress =
        !a.json && !a.no_progress && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let r = install::install(&opts)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    println!(
        "installed twinwall to {}: {} bytes written and verified (sha256 {})",
        a.device.display(),
        r.bytes,
        &r.sha256[..16]
    );
    println!(
        "  slot A: {} bytes from {}; slot B empty",
        r.slot_bytes,
        r.slot_source.display()
    );
    match &r.config {
        ConfigOutcome::CarriedOver { from, bytes } => println!(
            "  config partition: carried over from {} ({bytes} bytes)",
            from.display()
        ),
        ConfigOutcome::Empty => println!(
            "  config partition: empty; the node boots fail-closed until it is flashed with a config"
        ),
        ConfigOutcome::FromImage => println!("  config partition: the image's own"),
    }
    if r.gpt_relocated {
        println!("  backup GPT moved to the end of the larger device");
    }
    Ok(())
}
