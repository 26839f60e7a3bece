//! A small QMP client (QEMU Machine Protocol) over a unix socket: the greeting, capability
//! negotiation, and the few commands the lab needs (`set_link`, `query-status`, `quit`).
//! Asynchronous events that arrive between a command and its reply are kept, not lost.
//!
//! Written by hand: QMP is newline-delimited JSON with one reply per command, and the
//! existing crates (`qapi`, `qmp-client`) pull in a generated schema and an async runtime
//! for four commands.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// Errors of a QMP exchange, naming the socket.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    /// Connecting failed (QEMU not running or not yet listening).
    #[error("QMP {path}: cannot connect: {source}")]
    Connect {
        /// Socket.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// Reading or writing failed (QEMU exited?).
    #[error("QMP {path}: {source}")]
    Io {
        /// Socket.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// QEMU sent something that is not QMP.
    #[error("QMP {path}: unexpected message: {line}")]
    Protocol {
        /// Socket.
        path: PathBuf,
        /// What came.
        line: String,
    },
    /// QEMU refused the command.
    #[error("QMP {path}: {command} failed: {class}: {desc}")]
    Command {
        /// Socket.
        path: PathBuf,
        /// The command.
        command: String,
        /// QMP error class.
        class: String,
        /// QEMU's description.
        desc: String,
    },
}

/// A negotiated QMP session.
#[derive(Debug)]
pub struct Qmp {
    path: PathBuf,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    events: Vec<Value>,
}

impl Qmp {
    /// Connects (retrying until `timeout`, QEMU creates the socket at start-up), reads the
    /// greeting and enters command mode.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Qmp, QmpError> {
        let start = Instant::now();
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(source) if start.elapsed() >= timeout => {
                    return Err(QmpError::Connect {
                        path: path.to_path_buf(),
                        source,
                    });
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        let io = |source| QmpError::Io {
            path: path.to_path_buf(),
            source,
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(io)?;
        let writer = stream.try_clone().map_err(io)?;
        let mut q = Qmp {
            path: path.to_path_buf(),
            reader: BufReader::new(stream),
            writer,
            events: Vec::new(),
        };
        let greeting = q.read()?;
        if greeting.get("QMP").is_none() {
            return Err(q.protocol(&greeting));
        }
        q.execute("qmp_capabilities", Value::Null)?;
        Ok(q)
    }

    fn protocol(&self, v: &Value) -> QmpError {
        QmpError::Protocol {
            path: self.path.clone(),
            line: v.to_string(),
        }
    }

    fn read(&mut self) -> Result<Value, QmpError> {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .map_err(|source| QmpError::Io {
                path: self.path.clone(),
                source,
            })?;
        if n == 0 {
            return Err(QmpError::Io {
                path: self.path.clone(),
                source: std::io::ErrorKind::UnexpectedEof.into(),
            });
        }
        serde_json::from_str(&line).map_err(|_| QmpError::Protocol {
            path: self.path.clone(),
            line: line.trim_end().to_string(),
        })
    }

    /// Runs one command and returns its `return` value.
    pub fn execute(&mut self, command: &str, arguments: Value) -> Result<Value, QmpError> {
        let mut req = json!({ "execute": command });
        if !arguments.is_null() {
            req["arguments"] = arguments;
        }
        let mut line = req.to_string();
        line.push('\n');
        self.writer
            .write_all(line.as_bytes())
            .map_err(|source| QmpError::Io {
                path: self.path.clone(),
                source,
            })?;
        loop {
            let v = self.read()?;
            if v.get("event").is_some() {
                self.events.push(v);
                continue;
            }
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = v.get("error") {
                return Err(QmpError::Command {
                    path: self.path.clone(),
                    command: command.to_string(),
                    class: e["class"].as_str().unwrap_or("?").to_string(),
                    desc: e["desc"].as_str().unwrap_or("?").to_string(),
                });
            }
            return Err(self.protocol(&v));
        }
    }

    /// `set_link`: carrier up or down on the guest NIC whose netdev/device id is `name`.
    pub fn set_link(&mut self, name: &str, up: bool) -> Result<(), QmpError> {
        self.execute("set_link", json!({ "name": name, "up": up }))
            .map(|_| ())
    }

    /// `query-status`: the run state (`running`, `paused`, `shutdown`, ...).
    pub fn status(&mut self) -> Result<String, QmpError> {
        let v = self.execute("query-status", Value::Null)?;
        v["status"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| self.protocol(&v))
    }

    /// `quit`: QEMU exits at once (the guest gets no shutdown: a power cut).
    pub fn quit(&mut self) -> Result<(), QmpError> {
        match self.execute("quit", Value::Null) {
            Ok(_) => Ok(()),
            // QEMU may close the socket before the reply arrives.
            Err(QmpError::Io { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The asynchronous events received so far (and forgets them).
    pub fn take_events(&mut self) -> Vec<Value> {
        std::mem::take(&mut self.events)
    }
}
