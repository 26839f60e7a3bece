//! Command families of the `twinwall` binary and the shared edge helpers: logging set-up
//! and the mapping from errors to exit codes.

pub mod bundle;
pub mod config;
pub mod flash;
pub mod image;
pub mod init;
pub mod install;
pub mod key;
pub mod lab;
pub mod mgmt;
pub mod push;
pub mod ruleset;
pub mod status;
pub mod sync;
pub mod update;
pub mod vrrp;

use std::process::ExitCode;

/// An error already reported to the user (for example every config error was printed);
/// the binary exits 1 without printing anything more.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Reported(pub String);

/// A usage error detected after clap parsing (exit 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Usage(pub String);

/// Logs go to stderr so that stdout stays machine-readable (`--json`, nft scripts).
pub fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Service logs end up in files and init's ring buffers: colour only on a terminal.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}

/// Maps a command's result to the CLI contract: 0 ok, 1 user error, 2 usage error.
pub fn exit_code(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.downcast_ref::<Reported>().is_some() => ExitCode::from(1),
        Err(e) if e.downcast_ref::<Usage>().is_some() => {
            eprintln!("twinwall: usage error: {e:#}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("twinwall: error: {e:#}");
            ExitCode::from(1)
        }
    }
}
