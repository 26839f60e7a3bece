//! The IO shell: hands a compiled script to `nft`, checked first (`nft -c -f -`), then
//! applied (`nft -f -`) as one kernel transaction. nft itself guarantees atomicity: a
//! script that fails anywhere changes nothing, so the previous ruleset stays in force.

use std::io::Write as _;
use std::process::{Command, Stdio};

/// Why a script could not be checked or applied. The previous ruleset is untouched in
/// every case.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// `nft` could not be started (not installed, not in PATH).
    #[error("cannot run `{program}`: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// `nft -c` rejected the script; nothing was applied.
    #[error("nft rejected the ruleset (check, nothing applied): {stderr}")]
    Check {
        /// nft's messages (with the offending line).
        stderr: String,
    },
    /// `nft -f` failed; the kernel rolled the transaction back.
    #[error("nft failed to apply the ruleset (the previous ruleset stays in force): {stderr}")]
    Apply {
        /// nft's messages.
        stderr: String,
    },
}

/// The `nft` binary to run: `TWINWALL_NFT` or `nft` from PATH.
fn nft_program() -> String {
    std::env::var("TWINWALL_NFT").unwrap_or_else(|_| "nft".to_string())
}

fn run_nft(args: &[&str], script: &str) -> Result<Result<(), String>, ApplyError> {
    let program = nft_program();
    let spawn_err = |source| ApplyError::Spawn {
        program: program.clone(),
        source,
    };
    let mut child = Command::new(&program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_err)?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    // A write error (nft exited early) shows up as nft's own failure below.
    let _ = stdin.write_all(script.as_bytes());
    drop(stdin);
    let out = child.wait_with_output().map_err(spawn_err)?;
    if out.status.success() {
        Ok(Ok(()))
    } else {
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        Ok(Err(if stderr.is_empty() {
            format!("nft exited with {}", out.status)
        } else {
            stderr
        }))
    }
}

/// Checks a script with `nft -c -f -` (needs CAP_NET_ADMIN, changes nothing).
pub fn check(script: &str) -> Result<(), ApplyError> {
    run_nft(&["-c", "-f", "-"], script)?.map_err(|stderr| ApplyError::Check { stderr })
}

/// Checks, then applies a script in one transaction. On any failure the previous
/// ruleset stays exactly as it was.
pub fn apply(script: &str) -> Result<(), ApplyError> {
    check(script)?;
    run_nft(&["-f", "-"], script)?.map_err(|stderr| ApplyError::Apply { stderr })?;
    tracing::info!(bytes = script.len(), "ruleset applied");
    Ok(())
}
