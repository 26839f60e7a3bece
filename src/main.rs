//! The one `twinwall` binary: operator CLI and, on the appliance, init and the services.
//!
//! Each command family lives in its own module under `cli/`; this file only parses the
//! command line, sets up logging and maps errors to exit codes (1 user error, 2 usage).

mod cli;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// twinwall: one signed cluster config for an HA firewall pair.
#[derive(Debug, Parser)]
#[command(name = "twinwall", version, about, propagate_version = true)]
struct Cli {
    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `twinwall_vrrp=debug`.
    #[arg(long, global = true, env = "TWINWALL_LOG", default_value = "info")]
    log: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Validate and inspect cluster configs.
    #[command(subcommand)]
    Config(cli::config::ConfigCmd),
    /// Generate signing keys and cluster sync keys.
    #[command(subcommand)]
    Key(cli::key::KeyCmd),
    /// Create and verify signed bundles.
    #[command(subcommand)]
    Bundle(cli::bundle::BundleCmd),
    /// Build the appliance images (disk, ISO) and refresh the package lock.
    #[command(subcommand)]
    Image(cli::image::ImageCmd),
    /// Write twinwall.img and a node's config partition to a disk or file.
    Flash(cli::flash::FlashArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    cli::init_logging(&cli.log);
    let result = match cli.cmd {
        Cmd::Config(c) => cli::config::run(c),
        Cmd::Key(c) => cli::key::run(c),
        Cmd::Bundle(c) => cli::bundle::run(c),
        Cmd::Image(c) => cli::image::run(c),
        Cmd::Flash(a) => cli::flash::run(a),
    };
    cli::exit_code(result)
}
