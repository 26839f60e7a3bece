//! `twinwall image build|lock`: builds the appliance images and refreshes the package
//! lock. The work is in `twinwall_image::build`; this is the command-line edge.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use twinwall_image::build::{BuildOptions, BuildReport};
use twinwall_image::layout::Sizes;
use twinwall_image::rootfs::{self, Manifest};

/// `twinwall image ...`
#[derive(Debug, Subcommand)]
pub enum ImageCmd {
    /// Build DIR/twinwall.img, DIR/twinwall.iso and DIR/SHA256SUMS.
    Build {
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// Public key trusted for OS update bundles (repeatable); baked into the image.
        #[arg(long)]
        trust: Vec<PathBuf>,
        /// The statically linked twinwall binary to put into the image.
        #[arg(
            long,
            default_value = "target/x86_64-unknown-linux-gnu/release/twinwall"
        )]
        binary: PathBuf,
        /// The rootfs directory (packages.toml, packages.lock, modules.list, overlay/).
        #[arg(long, default_value = "rootfs")]
        rootfs: PathBuf,
        /// Download cache.
        #[arg(long, default_value = "build/cache")]
        cache: PathBuf,
        /// Scratch directory (wiped).
        #[arg(long, default_value = "build/work")]
        work: PathBuf,
        /// Signing key (PREFIX.key) for DIR/twinwall-update.bundle; without it no bundle.
        #[arg(long)]
        key: Option<PathBuf>,
        /// Version of the OS update bundle (default: SOURCE_DATE_EPOCH).
        #[arg(long)]
        update_version: Option<u64>,
        /// Skip the ISO.
        #[arg(long)]
        no_iso: bool,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Refresh rootfs/packages.lock: apt's candidate versions, fetched, sha256 recorded.
    Lock {
        /// The rootfs directory.
        #[arg(long, default_value = "rootfs")]
        rootfs: PathBuf,
        /// Download cache.
        #[arg(long, default_value = "build/cache")]
        cache: PathBuf,
    },
}

/// Runs an `image` subcommand.
pub fn run(c: ImageCmd) -> anyhow::Result<()> {
    match c {
        ImageCmd::Build {
            out,
            trust,
            binary,
            rootfs,
            cache,
            work,
            no_iso,
            json,
            key,
            update_version,
        } => {
            for t in &trust {
                anyhow::ensure!(t.is_file(), "--trust {}: no such file", t.display());
            }
            let started = std::time::Instant::now();
            let epoch = twinwall_image::reproducible::source_date_epoch();
            let report = twinwall_image::build::build(&BuildOptions {
                rootfs,
                cache,
                work,
                out: out.clone(),
                binary,
                epoch,
                trust,
                iso: !no_iso,
                progress: !json && std::io::IsTerminal::is_terminal(&std::io::stderr()),
                sizes: Sizes::default(),
                update_key: key,
                update_version: update_version.unwrap_or(epoch),
            })?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print_summary(&out, &report, started.elapsed());
            }
            Ok(())
        }
        ImageCmd::Lock { rootfs, cache } => {
            let manifest_path = rootfs.join("packages.toml");
            let manifest = Manifest::load(&manifest_path)?;
            let lock = rootfs::refresh_lock(&manifest, &cache.join("debs"))?;
            let path = rootfs.join("packages.lock");
            std::fs::write(&path, lock.to_toml())
                .with_context(|| format!("writing {}", path.display()))?;
            for p in &lock.packages {
                println!("{} {} {}", p.name, p.version, &p.sha256[..16]);
            }
            println!(
                "wrote {} ({} packages)",
                path.display(),
                lock.packages.len()
            );
            Ok(())
        }
    }
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / 1048576.0)
}

fn print_summary(out: &std::path::Path, r: &BuildReport, total: std::time::Duration) {
    println!("twinwall image build: kernel {}", r.kernel);
    println!(
        "  slot squashfs {}  initramfs {} (uncompressed)  modules {} root / {} initramfs",
        mib(r.slot_bytes),
        mib(r.initramfs_bytes),
        r.modules.0,
        r.modules.1
    );
    for a in &r.artifacts {
        println!(
            "  {:<28} {:>10}  sha256 {}",
            out.join(&a.name).display(),
            mib(a.bytes),
            &a.sha256[..16]
        );
    }
    for (s, d) in &r.steps {
        println!("  {:<34} {:>7.2} s", s, d.as_secs_f64());
    }
    println!("  total {:.2} s", total.as_secs_f64());
}
