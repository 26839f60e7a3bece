//! Running the external build tools (sgdisk, mkfs.vfat, mtools, mksquashfs, grub-mkimage,
//! grub-mkrescue, depmod, cpio, apt-get, dpkg-deb): one place that turns a failing tool
//! into an error naming the command and carrying its stderr.

use std::ffi::OsStr;
use std::io::Write;
use std::process::{Command, Stdio};

use thiserror::Error;

/// An external tool that could not be run or that failed.
#[derive(Debug, Error)]
pub enum ToolError {
    /// The program is missing or not executable.
    #[error("cannot run {program}: {source} (install it with `scripts/deps.sh image`)")]
    Spawn {
        /// Program name.
        program: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A file the tool step needs could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// File.
        path: std::path::PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
    /// The program exited unsuccessfully.
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        /// The command line.
        command: String,
        /// Exit status.
        status: std::process::ExitStatus,
        /// Its standard error, trimmed.
        stderr: String,
    },
}

/// Runs `program args...`, optionally feeding `stdin`; returns stdout.
pub fn run<I, S>(program: &str, args: I, stdin: Option<&[u8]>) -> Result<Vec<u8>, ToolError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    run_env(program, args, stdin, &[])
}

/// Like [`run`] with extra environment variables.
pub fn run_env<I, S>(
    program: &str,
    args: I,
    stdin: Option<&[u8]>,
    env: &[(&str, &str)],
) -> Result<Vec<u8>, ToolError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<_> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let command = std::iter::once(program.to_owned())
        .chain(args.iter().map(|a| a.to_string_lossy().into_owned()))
        .collect::<Vec<_>>()
        .join(" ");
    tracing::debug!(%command, "running");
    let mut cmd = Command::new(program);
    cmd.args(&args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().map_err(|source| ToolError::Spawn {
        program: program.into(),
        source,
    })?;
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin is piped");
        let input = input.to_vec();
        // Written from a thread so that a tool filling its stdout pipe cannot deadlock us.
        std::thread::spawn(move || {
            let _ = pipe.write_all(&input);
        });
    }
    let out = child
        .wait_with_output()
        .map_err(|source| ToolError::Spawn {
            program: program.into(),
            source,
        })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stderr = stderr.trim();
        // Keep the tail, where tools print the reason, cut at a character boundary.
        let cut = stderr.len().saturating_sub(2000);
        let cut = (cut..=stderr.len())
            .find(|i| stderr.is_char_boundary(*i))
            .unwrap_or(0);
        let stderr = &stderr[cut..];
        return Err(ToolError::Failed {
            command,
            status: out.status,
            stderr: stderr.into(),
        });
    }
    Ok(out.stdout)
}
