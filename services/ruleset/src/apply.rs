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
    /// `nft list ruleset` failed.
    #[error("cannot list the ruleset: {stderr}")]
    List {
        /// nft's messages.
        stderr: String,
    },
    /// `nft -f` failed; the kernel rolled the transaction back.
    #[error("nft failed to apply the ruleset (the previous ruleset stays in force): {stderr}")]
    Apply {
        /// nft's messages.
        stderr: String,
    },
}

/// How to run `nft`: the program and any leading arguments (so that tests and the lab
/// can run it inside a network namespace with `ip netns exec NS nft`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nft {
    argv: Vec<String>,
}

impl Default for Nft {
    /// `nft` from PATH.
    fn default() -> Self {
        Nft {
            argv: vec!["nft".into()],
        }
    }
}

impl Nft {
    /// `nft` inside the named network namespace.
    pub fn in_netns(name: &str) -> Nft {
        Nft {
            argv: ["ip", "netns", "exec", name, "nft"]
                .map(String::from)
                .to_vec(),
        }
    }

    /// Checks a script with `nft -c -f -` (needs CAP_NET_ADMIN, changes nothing).
    pub fn check(&self, script: &str) -> Result<(), ApplyError> {
        self.run(&["-c", "-f", "-"], script)?
            .map_err(|stderr| ApplyError::Check { stderr })
    }

    /// Checks, then applies a script in one transaction. On any failure the previous
    /// ruleset stays exactly as it was.
    pub fn apply(&self, script: &str) -> Result<(), ApplyError> {
        self.check(script)?;
        self.run(&["-f", "-"], script)?
            .map_err(|stderr| ApplyError::Apply { stderr })?;
        tracing::info!(bytes = script.len(), "ruleset applied");
        Ok(())
    }

    /// Applies a script with a single `nft -f -`, without the `nft -c` pass first. nft
    /// runs a file as one transaction, so a failure still changes nothing (the test
    /// `bare_nft_f_is_atomic_too` shows it); the check pass only repeats the same work,
    /// and for large rulesets it doubles the apply time (see docs/ruleset.md).
    pub fn apply_unchecked(&self, script: &str) -> Result<(), ApplyError> {
        self.run(&["-f", "-"], script)?
            .map_err(|stderr| ApplyError::Apply { stderr })?;
        tracing::info!(bytes = script.len(), checked = false, "ruleset applied");
        Ok(())
    }

    /// `nft list ruleset`.
    pub fn list_ruleset(&self) -> Result<String, ApplyError> {
        let out = Command::new(&self.argv[0])
            .args(&self.argv[1..])
            .args(["list", "ruleset"])
            .output()
            .map_err(|source| ApplyError::Spawn {
                program: self.argv.join(" "),
                source,
            })?;
        if !out.status.success() {
            return Err(ApplyError::List {
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn run(&self, args: &[&str], script: &str) -> Result<Result<(), String>, ApplyError> {
        run_nft(&self.argv, args, script)
    }
}

fn run_nft(argv: &[String], args: &[&str], script: &str) -> Result<Result<(), String>, ApplyError> {
    let program = argv.join(" ");
    let spawn_err = |source| ApplyError::Spawn {
        program: program.clone(),
        source,
    };
    let mut child = Command::new(&argv[0])
        .args(&argv[1..])
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

/// Checks a script with `nft -c -f -` in the current network namespace.
pub fn check(script: &str) -> Result<(), ApplyError> {
    Nft::default().check(script)
}

/// Checks, then applies a script in one transaction in the current network namespace.
/// On any failure the previous ruleset stays exactly as it was.
pub fn apply(script: &str) -> Result<(), ApplyError> {
    Nft::default().apply(script)
}
