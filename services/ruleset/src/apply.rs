//! The IO shell: hands a compiled script to `nft -f -`, which runs it as one kernel
//! transaction. nft itself guarantees atomicity: a script that fails anywhere (syntax,
//! or a kernel error half-way) changes nothing, so the previous ruleset stays in force.
//! A separate `nft -c -f -` pass ([`Nft::check`]) is for `ruleset check` and for
//! `apply --check`: it sends the very same batch to the kernel, which builds all of it
//! and then aborts, so checking first doubles the apply time and adds no safety
//! (measured in docs/ruleset.md).

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
    /// There is no table `inet twinwall` to read (no ruleset applied yet).
    #[error("no table inet twinwall is loaded (no ruleset applied here yet)")]
    NoTable,
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

    /// The program and its leading arguments (`["nft"]`, or `ip netns exec NS nft`), for
    /// a caller that starts nft itself (mgmt starts `nft -f -` ahead of its apply).
    pub fn argv(&self) -> &[String] {
        &self.argv
    }

    /// Checks a script with `nft -c -f -` (needs CAP_NET_ADMIN, changes nothing).
    pub fn check(&self, script: &str) -> Result<(), ApplyError> {
        self.run(&["-c", "-f", "-"], script)?
            .map_err(|stderr| ApplyError::Check { stderr })
    }

    /// Applies a script with one `nft -f -`: one kernel transaction. On any failure
    /// (syntax errors are found before anything is sent; kernel errors roll the whole
    /// batch back) the previous ruleset stays exactly as it was, as the tests
    /// `failing_apply_leaves_the_ruleset_byte_identical` and `bare_nft_f_is_atomic_too`
    /// show.
    pub fn apply(&self, script: &str) -> Result<(), ApplyError> {
        self.run(&["-f", "-"], script)?
            .map_err(|stderr| ApplyError::Apply { stderr })?;
        tracing::info!(bytes = script.len(), checked = false, "ruleset applied");
        Ok(())
    }

    /// [`Nft::check`] first, then [`Nft::apply`]: a rejected script is reported as
    /// [`ApplyError::Check`]. Twice the work of `apply` for the same guarantee; kept
    /// for operators who want the separate verdict (`ruleset apply --check`).
    pub fn check_then_apply(&self, script: &str) -> Result<(), ApplyError> {
        self.check(script)?;
        self.run(&["-f", "-"], script)?
            .map_err(|stderr| ApplyError::Apply { stderr })?;
        tracing::info!(bytes = script.len(), checked = true, "ruleset applied");
        Ok(())
    }

    /// `nft list ruleset`.
    pub fn list_ruleset(&self) -> Result<String, ApplyError> {
        let out = self.output(&["list", "ruleset"])?;
        if !out.status.success() {
            return Err(ApplyError::List {
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `nft -j list table inet twinwall`: the loaded table as JSON, with every rule's
    /// and every set element's counter (parsed by [`crate::counters::parse`]).
    pub fn list_table_json(&self) -> Result<String, ApplyError> {
        let out = self.output(&["-j", "list", "table", "inet", crate::compile::TABLE])?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            if stderr.contains("No such file or directory") {
                return Err(ApplyError::NoTable);
            }
            return Err(ApplyError::List {
                stderr: stderr.trim().to_string(),
            });
        }
        String::from_utf8(out.stdout).map_err(|e| ApplyError::List {
            stderr: format!("nft -j output is not UTF-8: {e}"),
        })
    }

    /// Runs nft with `args` (no script) and returns what it printed.
    fn output(&self, args: &[&str]) -> Result<std::process::Output, ApplyError> {
        Command::new(&self.argv[0])
            .args(&self.argv[1..])
            .args(args)
            .output()
            .map_err(|source| ApplyError::Spawn {
                program: self.argv.join(" "),
                source,
            })
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

/// Applies a script in one transaction (`nft -f -`) in the current network namespace.
/// On any failure the previous ruleset stays exactly as it was.
pub fn apply(script: &str) -> Result<(), ApplyError> {
    Nft::default().apply(script)
}
