//! The one `twinwall` binary: operator CLI and, on the appliance, init and the services.
//!
//! Each command family lives in its own module under `cli/`; this file only parses the
//! command line, sets up logging and maps errors to exit codes (1 user error, 2 usage).

mod cli;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// The log filter's environment variable (`--log` and the PID 1 path).
const LOG_ENV: &str = "TWINWALL_LOG";
/// The log filter when neither `--log` nor [`LOG_ENV`] says.
const DEFAULT_LOG: &str = "info";

/// twinwall: one signed cluster config for an HA firewall pair.
#[derive(Debug, Parser)]
#[command(name = "twinwall", version, about, propagate_version = true)]
struct Cli {
    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `twinwall_vrrp=debug`.
    #[arg(long, global = true, env = LOG_ENV, default_value = DEFAULT_LOG)]
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
    /// Compile, check, apply and diff the nftables ruleset.
    #[command(subcommand)]
    Ruleset(cli::ruleset::RulesetCmd),
    /// PID 1 of the appliance (also when invoked as `init`), or `--supervise` to run the
    /// service set under a child subreaper.
    Init(cli::init::InitArgs),
    /// Local status from the services' control sockets.
    Status(cli::status::StatusArgs),
    /// Conntrack state replication with the peer (foreground service).
    Sync(cli::sync::SyncArgs),
    /// Run the VRRP service in the foreground.
    Vrrp(cli::vrrp::VrrpArgs),
    /// Build the appliance images (disk, ISO) and refresh the package lock.
    #[command(subcommand)]
    Image(cli::image::ImageCmd),
    /// Write twinwall.img and a node's config partition to a disk or file.
    Flash(cli::flash::FlashArgs),
    /// Lay out a disk from the running live system (or a twinwall.img) and install it.
    Install(cli::install::InstallArgs),
    /// The management API service in the foreground.
    Mgmt(cli::mgmt::MgmtArgs),
    /// Upload a signed config bundle to a node (and its peer).
    Push(cli::push::PushArgs),
    /// A/B OS update of a node (`--cluster`: the pair, rolling).
    Update(cli::update::UpdateArgs),
    /// The QEMU lab: a firewall pair with fault injection, scenarios, training.
    #[command(subcommand)]
    Lab(cli::lab::LabCmd),
}

fn main() -> ExitCode {
    // Multi-call: the kernel runs us as /init (initramfs) or /sbin/init. It also passes
    // unknown bare kernel parameters as arguments; PID 1 must not die of a usage error, so
    // they are dropped (init reads its options from /proc/cmdline).
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args
        .first()
        .and_then(|a| std::path::Path::new(a).file_name())
        .is_some_and(|n| n == "init")
    {
        // PID 1 takes no arguments: no clap here. Building the whole CLI's parser cost
        // PID 1 65-95 ms under QEMU TCG on each of its two execs (docs/init.md).
        let log = std::env::var(LOG_ENV).unwrap_or_else(|_| DEFAULT_LOG.into());
        cli::init_logging(&log);
        return cli::exit_code(cli::init::run(cli::init::InitArgs::pid1()));
    }
    let cli = Cli::parse_from(args);
    cli::init_logging(&cli.log);
    let result = match cli.cmd {
        Cmd::Config(c) => cli::config::run(c),
        Cmd::Key(c) => cli::key::run(c),
        Cmd::Bundle(c) => cli::bundle::run(c),
        Cmd::Ruleset(c) => cli::ruleset::run(c),
        Cmd::Init(a) => cli::init::run(a),
        Cmd::Status(a) => cli::status::run(a),
        Cmd::Sync(a) => cli::sync::run(a),
        Cmd::Vrrp(a) => cli::vrrp::run(a),
        Cmd::Image(c) => cli::image::run(c),
        Cmd::Flash(a) => cli::flash::run(a),
        Cmd::Install(a) => cli::install::run(a),
        Cmd::Mgmt(a) => cli::mgmt::run(a),
        Cmd::Push(a) => cli::push::run(a),
        Cmd::Update(a) => cli::update::run(a),
        Cmd::Lab(c) => cli::lab::run(c),
    };
    cli::exit_code(result)
}
