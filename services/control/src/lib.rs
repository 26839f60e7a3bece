//! The control-socket protocol shared by the services, init and `twinwall status`.
//!
//! Every long-running service keeps one unix stream socket, `RUN_DIR/NAME.sock`. The
//! protocol is newline-delimited JSON: a client writes one [`Request`] line and reads one
//! [`Response`] line. The request `{"cmd":"subscribe"}` turns the connection into an event
//! stream: after the response the server writes one JSON line per published event until
//! either side closes.
//!
//! The server is deliberately thread-based and blocking (std only): it must work the same
//! inside tokio services and inside PID 1, and its traffic is a few requests a second.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Default run directory on the appliance.
pub const DEFAULT_RUN_DIR: &str = "/run/twinwall";

/// Largest request or response line accepted, in bytes.
pub const MAX_LINE: usize = 1 << 20;

/// Errors of the control protocol, with the socket they concern.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The socket could not be created.
    #[error("cannot listen on control socket {path}: {source}")]
    Bind {
        /// Socket path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The service is not running (or the socket is stale).
    #[error("cannot connect to {path}: {source} (is the service running?)")]
    Connect {
        /// Socket path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// Reading or writing failed.
    #[error("control socket {path}: {source}")]
    Io {
        /// Socket path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The peer sent something that is not protocol JSON.
    #[error("control socket {path}: bad message: {reason}")]
    Protocol {
        /// Socket path.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// The service answered with an error.
    #[error("{service}: {message}")]
    Remote {
        /// Service (socket file stem).
        service: String,
        /// Its error message.
        message: String,
    },
}

/// One request: a command name plus free-form arguments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// Command, e.g. `status`, `subscribe`, `ready`.
    pub cmd: String,
    /// Arguments of the command (an object, or null).
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub args: Value,
}

impl Request {
    /// A request without arguments.
    pub fn new(cmd: &str) -> Request {
        Request {
            cmd: cmd.to_string(),
            args: Value::Null,
        }
    }

    /// A request with arguments.
    pub fn with_args(cmd: &str, args: Value) -> Request {
        Request {
            cmd: cmd.to_string(),
            args,
        }
    }
}

/// One response line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    /// Whether the command succeeded.
    pub ok: bool,
    /// The result (on success).
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub data: Value,
    /// The reason (on failure).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Response {
    /// A successful response.
    pub fn ok(data: Value) -> Response {
        Response {
            ok: true,
            data,
            error: None,
        }
    }

    /// A failed response with a reason.
    pub fn err(message: impl Into<String>) -> Response {
        Response {
            ok: false,
            data: Value::Null,
            error: Some(message.into()),
        }
    }
}

/// What the server calls for every request other than `subscribe`.
pub type Handler = dyn Fn(&Request) -> Response + Send + Sync;

/// The path of a service's control socket.
pub fn socket_path(run_dir: &Path, service: &str) -> PathBuf {
    run_dir.join(format!("{service}.sock"))
}

/// A listening control socket. Dropping it stops accepting and removes the socket file.
pub struct Server {
    path: PathBuf,
    subscribers: Arc<Mutex<Vec<UnixStream>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Listens on `RUN_DIR/SERVICE.sock` (creating the run dir, replacing a stale socket)
    /// and answers requests with `handler` on a background thread.
    pub fn bind(
        run_dir: &Path,
        service: &str,
        handler: Arc<Handler>,
    ) -> Result<Server, ControlError> {
        let path = socket_path(run_dir, service);
        let bind_err = |source| ControlError::Bind {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(run_dir).map_err(bind_err)?;
        if UnixStream::connect(&path).is_ok() {
            return Err(bind_err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                "another instance is running",
            )));
        }
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).map_err(bind_err)?;
        // Only root (the services' user) may talk to a control socket.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .map_err(bind_err)?;
        let subscribers = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let subscribers = subscribers.clone();
            let stop = stop.clone();
            std::thread::Builder::new()
                .name(format!("ctl-{service}"))
                .spawn(move || accept_loop(listener, handler, subscribers, stop))
                .map_err(bind_err)?
        };
        Ok(Server {
            path,
            subscribers,
            stop,
            thread: Some(thread),
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sends one event to every subscriber; subscribers that went away are dropped.
    pub fn publish<T: Serialize>(&self, event: &T) {
        let Ok(mut line) = serde_json::to_vec(event) else {
            return;
        };
        line.push(b'\n');
        let mut subs = self.subscribers.lock().unwrap_or_else(|e| e.into_inner());
        subs.retain_mut(|s| s.write_all(&line).is_ok());
    }

    /// Number of connected subscribers.
    pub fn subscriber_count(&self) -> usize {
        self.subscribers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so that it sees the stop flag. If the socket file is gone
        // (its run dir was removed first) nothing can wake it: leave the thread detached
        // rather than block the caller forever; it dies with the process.
        let woke = UnixStream::connect(&self.path).is_ok();
        if let Some(t) = self.thread.take()
            && woke
        {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn accept_loop(
    listener: UnixListener,
    handler: Arc<Handler>,
    subscribers: Arc<Mutex<Vec<UnixStream>>>,
    stop: Arc<AtomicBool>,
) {
    for conn in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let Ok(conn) = conn else { continue };
        let handler = handler.clone();
        let subscribers = subscribers.clone();
        let _ = std::thread::Builder::new()
            .name("ctl-conn".into())
            .spawn(move || serve_connection(conn, &*handler, &subscribers));
    }
}

fn serve_connection(conn: UnixStream, handler: &Handler, subscribers: &Mutex<Vec<UnixStream>>) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let Ok(read_half) = conn.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let mut writer = conn;
    let mut line = String::new();
    loop {
        line.clear();
        match (&mut reader).take(MAX_LINE as u64).read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) if !line.ends_with('\n') && line.len() >= MAX_LINE => {
                let _ = write_line(&mut writer, &Response::err("request line too long"));
                return;
            }
            Ok(_) => {}
        }
        let response = match serde_json::from_str::<Request>(line.trim_end()) {
            Err(e) => Response::err(format!("bad request: {e}")),
            Ok(req) if req.cmd == "subscribe" => {
                if write_line(&mut writer, &Response::ok(Value::Null)).is_ok() {
                    let _ = writer.set_write_timeout(Some(Duration::from_secs(2)));
                    subscribers
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(writer);
                }
                return;
            }
            Ok(req) => handler(&req),
        };
        if write_line(&mut writer, &response).is_err() {
            return;
        }
    }
}

fn write_line<T: Serialize>(w: &mut UnixStream, value: &T) -> std::io::Result<()> {
    let mut buf = serde_json::to_vec(value).map_err(std::io::Error::other)?;
    buf.push(b'\n');
    w.write_all(&buf)
}

fn service_name(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn connect(path: &Path, timeout: Duration) -> Result<UnixStream, ControlError> {
    let stream = UnixStream::connect(path).map_err(|source| ControlError::Connect {
        path: path.to_path_buf(),
        source,
    })?;
    let io = |source| ControlError::Io {
        path: path.to_path_buf(),
        source,
    };
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    Ok(stream)
}

fn read_response(path: &Path, reader: &mut impl BufRead) -> Result<Response, ControlError> {
    let mut line = String::new();
    let n = reader
        .read_line(&mut line)
        .map_err(|source| ControlError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    if n == 0 {
        return Err(ControlError::Protocol {
            path: path.to_path_buf(),
            reason: "connection closed".into(),
        });
    }
    serde_json::from_str(line.trim_end()).map_err(|e| ControlError::Protocol {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Sends one request and returns the service's data, or its error as [`ControlError::Remote`].
pub fn request(path: &Path, req: &Request, timeout: Duration) -> Result<Value, ControlError> {
    let mut stream = connect(path, timeout)?;
    write_line(&mut stream, req).map_err(|source| ControlError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut reader = BufReader::new(stream);
    let resp = read_response(path, &mut reader)?;
    if resp.ok {
        Ok(resp.data)
    } else {
        Err(ControlError::Remote {
            service: service_name(path),
            message: resp.error.unwrap_or_else(|| "unknown error".into()),
        })
    }
}

/// An event stream from a service.
#[derive(Debug)]
pub struct Subscription {
    path: PathBuf,
    reader: BufReader<UnixStream>,
}

/// Subscribes to a service's events. `timeout` bounds the handshake; [`Subscription::next_event`]
/// then blocks for at most the read timeout given to it.
pub fn subscribe(path: &Path, timeout: Duration) -> Result<Subscription, ControlError> {
    let mut stream = connect(path, timeout)?;
    write_line(&mut stream, &Request::new("subscribe")).map_err(|source| ControlError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut reader = BufReader::new(stream);
    let resp = read_response(path, &mut reader)?;
    if !resp.ok {
        return Err(ControlError::Remote {
            service: service_name(path),
            message: resp.error.unwrap_or_default(),
        });
    }
    Ok(Subscription {
        path: path.to_path_buf(),
        reader,
    })
}

impl Subscription {
    /// The next event, waiting at most `timeout` (`None`: forever). `Ok(None)` on timeout.
    pub fn next_event(&mut self, timeout: Option<Duration>) -> Result<Option<Value>, ControlError> {
        let io = |source| ControlError::Io {
            path: self.path.clone(),
            source,
        };
        self.reader
            .get_ref()
            .set_read_timeout(timeout)
            .map_err(io)?;
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => Err(ControlError::Protocol {
                path: self.path.clone(),
                reason: "service closed the event stream".into(),
            }),
            Ok(_) => serde_json::from_str(line.trim_end())
                .map(Some)
                .map_err(|e| ControlError::Protocol {
                    path: self.path.clone(),
                    reason: e.to_string(),
                }),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                Ok(None)
            }
            Err(source) => Err(ControlError::Io {
                path: self.path.clone(),
                source,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn echo_server(dir: &Path) -> Server {
        Server::bind(
            dir,
            "echo",
            Arc::new(|req: &Request| match req.cmd.as_str() {
                "status" => Response::ok(json!({"state": "master"})),
                "echo" => Response::ok(req.args.clone()),
                other => Response::err(format!("unknown command {other:?}")),
            }),
        )
        .unwrap()
    }

    #[test]
    fn request_response_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let server = echo_server(dir.path());
        let t = Duration::from_secs(2);
        let v = request(server.path(), &Request::new("status"), t).unwrap();
        assert_eq!(v, json!({"state": "master"}));
        let v = request(
            server.path(),
            &Request::with_args("echo", json!({"a": 1})),
            t,
        )
        .unwrap();
        assert_eq!(v, json!({"a": 1}));
        let err = request(server.path(), &Request::new("nope"), t).unwrap_err();
        assert!(err.to_string().contains("unknown command"), "{err}");
    }

    #[test]
    fn subscribers_receive_published_events() {
        let dir = tempfile::tempdir().unwrap();
        let server = echo_server(dir.path());
        let mut sub = subscribe(server.path(), Duration::from_secs(2)).unwrap();
        // The subscription is registered by the connection thread; wait for it.
        for _ in 0..200 {
            if server.subscriber_count() == 1 {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        server.publish(&json!({"event": "role", "role": "master"}));
        let ev = sub
            .next_event(Some(Duration::from_secs(2)))
            .unwrap()
            .unwrap();
        assert_eq!(ev["role"], "master");
        assert_eq!(
            sub.next_event(Some(Duration::from_millis(20))).unwrap(),
            None
        );
    }

    #[test]
    fn second_instance_is_refused_and_socket_removed_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let server = echo_server(dir.path());
        let path = server.path().to_path_buf();
        let err = Server::bind(
            dir.path(),
            "echo",
            Arc::new(|_: &Request| Response::ok(Value::Null)),
        )
        .unwrap_err();
        assert!(err.to_string().contains("another instance"), "{err}");
        drop(server);
        assert!(!path.exists());
        let err = request(&path, &Request::new("status"), Duration::from_secs(1)).unwrap_err();
        assert!(matches!(err, ControlError::Connect { .. }));
    }

    #[test]
    fn drop_does_not_hang_when_the_socket_file_was_removed() {
        let dir = tempfile::tempdir().unwrap();
        let server = echo_server(dir.path());
        std::fs::remove_file(server.path()).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            drop(server);
            let _ = tx.send(());
        });
        assert!(
            rx.recv_timeout(Duration::from_secs(5)).is_ok(),
            "Server::drop hung"
        );
    }

    #[test]
    fn garbage_gets_an_error_not_a_hang() {
        let dir = tempfile::tempdir().unwrap();
        let server = echo_server(dir.path());
        let mut s = UnixStream::connect(server.path()).unwrap();
        s.write_all(b"not json\n").unwrap();
        let mut r = BufReader::new(s);
        let resp = read_response(server.path(), &mut r).unwrap();
        assert!(!resp.ok);
        assert!(resp.error.unwrap().contains("bad request"));
    }
}
