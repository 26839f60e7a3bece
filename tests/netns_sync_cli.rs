//! `twinwall sync` as a process (root): starts in a netns from a node view, answers on
//! `sync.sock`, exits 0 on SIGTERM; a bad key file or the wrong node is a clear error.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use twinwall_sync::kernel::wait_until;
use twinwall_testkit::Netns;

fn view_json() -> String {
    serde_json::json!({
        "cluster": "lab", "version": 1, "node": "fw1", "priority": 200,
        "interfaces": {},
        "peer": {"node": "fw2", "priority": 100, "interfaces": {}},
        "vrrp": {"advert_interval_ms": 100, "preempt": false, "preempt_delay_ms": 0,
                 "accept_mode": false, "garp_count": 1, "garp_interval_ms": 0, "groups": []},
        "sync": {"interface": "sync", "device": "lo", "local": "203.0.113.1",
                 "peer": "203.0.113.2", "port": 3780},
        "routes": [], "conntrack_ignore": ["203.0.113.1", "203.0.113.2"],
        "objects": {"networks": {}, "services": {}},
        "policy": {"default": "drop", "log_default": false, "rules": []},
        "nat": [],
        "management": {"port": 8443, "interfaces": [], "allowed_from": []}
    })
    .to_string()
}

/// A scratch directory removed on drop.
struct Files {
    dir: std::path::PathBuf,
}

impl Files {
    fn path(&self) -> &std::path::Path {
        &self.dir
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn files(key: &str) -> Files {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("tw-sync-cli-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("view.json"), view_json()).unwrap();
    std::fs::write(dir.join("sync.key"), key).unwrap();
    Files { dir }
}

fn twinwall(ns: &Netns, f: &Files, node: &str) -> Command {
    twinwall_with(
        ns,
        f,
        &f.path().join("view.json").display().to_string(),
        node,
    )
}

fn twinwall_with(ns: &Netns, f: &Files, config: &str, node: &str) -> Command {
    let mut c = Command::new("ip");
    let p = |n: &str| f.path().join(n).display().to_string();
    c.args([
        "netns",
        "exec",
        ns.name(),
        env!("CARGO_BIN_EXE_twinwall"),
        "sync",
    ])
    .args(["--config", config, "--node", node, "--run-dir", &p("run")])
    .args(["--sync-key", &p("sync.key"), "--role", "master"]);
    c
}

#[test]
fn service_answers_status_and_exits_cleanly_on_sigterm() {
    let ns = Netns::new("cli").unwrap();
    ns.ip(["addr", "add", "203.0.113.1/32", "dev", "lo"])
        .unwrap();
    let f = files(&"ab".repeat(32));
    let mut child = twinwall(&ns, &f, "fw1")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let sock = f.path().join("run/sync.sock");
    assert!(
        wait_until(Duration::from_secs(10), || sock.exists()),
        "no control socket"
    );
    let status = twinwall_control::request(
        &sock,
        &twinwall_control::Request::new("status"),
        Duration::from_secs(5),
    )
    .unwrap();
    assert_eq!(status["role"], "master");
    assert_eq!(status["local"], "203.0.113.1:3780");
    let bad = twinwall_control::request(
        &sock,
        &twinwall_control::Request::with_args("set-role", serde_json::json!({"role": "boss"})),
        Duration::from_secs(5),
    )
    .unwrap_err();
    assert!(bad.to_string().contains("master"), "{bad}");
    // `ip netns exec` execs the binary, so the child pid is the service
    let pid = child.id().to_string();
    // The event intake, the main loop and the UDP reader run under SCHED_FIFO 1 (the
    // default `--rt-priority`), and so does the connection thread that carried a
    // `set-role` (its answer is the takeover's "committed"; kept open to look at it).
    let mut conn = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    conn.write_all(b"{\"cmd\":\"set-role\",\"args\":{\"role\":\"backup\"}}\n")
        .unwrap();
    let mut answer = String::new();
    BufReader::new(&conn).read_line(&mut answer).unwrap();
    assert!(answer.contains("backup"), "{answer}");
    let policies = thread_policies(&pid);
    for name in ["twinwall", "sync-events", "sync-udp", "ctl-conn"] {
        assert!(
            policies.iter().any(|(c, p)| c == name && p == "1/1"),
            "{name} not SCHED_FIFO 1: {policies:?}"
        );
    }
    drop(conn);
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let mut done = None;
    assert!(wait_until(Duration::from_secs(10), || {
        done = child.try_wait().unwrap();
        done.is_some()
    }));
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(done.unwrap().success(), "{stderr}");
    assert!(stderr.contains("sync service stopped"), "{stderr}");
    assert!(!sock.exists(), "control socket left behind");
}

#[test]
fn a_bad_key_or_the_wrong_node_is_a_clear_error() {
    let ns = Netns::new("clibad").unwrap();
    ns.ip(["addr", "add", "203.0.113.1/32", "dev", "lo"])
        .unwrap();
    let f = files("not a key\n");
    let out = twinwall(&ns, &f, "fw1").output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("sync.key") && stderr.contains("64 hex"),
        "{stderr}"
    );
    let f = files(&"ab".repeat(32));
    let out = twinwall(&ns, &f, "fw9").output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("fw9"), "{stderr}");
}

#[test]
fn the_cluster_toml_config_is_read_for_the_node() {
    let ns = Netns::new("clitoml").unwrap();
    // examples/single-vip.toml: office-a's sync address
    ns.ip(["addr", "add", "192.0.2.5/30", "dev", "lo"]).unwrap();
    let f = files(&"cd".repeat(32));
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/single-vip.toml");
    let mut child = twinwall_with(&ns, &f, config, "office-a")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let sock = f.path().join("run/sync.sock");
    assert!(
        wait_until(Duration::from_secs(10), || sock.exists()),
        "no control socket"
    );
    let status = twinwall_control::request(
        &sock,
        &twinwall_control::Request::new("status"),
        Duration::from_secs(5),
    )
    .unwrap();
    assert_eq!(status["local"], "192.0.2.5:3780");
    assert_eq!(status["peer"], "192.0.2.6:3780");
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    assert!(child.wait().unwrap().success());
    let out = twinwall_with(&ns, &f, config, "office-z").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("office-a"));
}

/// (thread name, "rt_priority/policy") of every thread of `pid`
/// (`/proc/PID/task/TID/stat` fields 40/41; policy 1 is SCHED_FIFO).
fn thread_policies(pid: &str) -> Vec<(String, String)> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
        .filter_map(|t| {
            let comm = std::fs::read_to_string(t.path().join("comm")).ok()?;
            let stat = std::fs::read_to_string(t.path().join("stat")).ok()?;
            let f: Vec<&str> = stat.rsplit(')').next()?.split_whitespace().collect();
            Some((comm.trim().to_string(), format!("{}/{}", f[37], f[38])))
        })
        .collect()
}

#[test]
fn the_vrrp_commit_handshake_drives_the_role() {
    use std::sync::{Arc, Mutex};
    use twinwall_control::{Response, Server};
    let ns = Netns::new("clivrrp").unwrap();
    ns.ip(["addr", "add", "203.0.113.1/32", "dev", "lo"])
        .unwrap();
    let f = files(&"ef".repeat(32));
    // a stand-in for the VRRP service's socket that records what the sync service sends
    let seen: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
    let rec = seen.clone();
    let vrrp = Server::bind(
        &f.path().join("run"),
        "vrrp",
        Arc::new(move |req: &twinwall_control::Request| {
            rec.lock()
                .unwrap()
                .push(serde_json::json!({"cmd": req.cmd, "args": req.args}));
            Response::ok(serde_json::Value::Null)
        }),
    )
    .unwrap();
    let c = twinwall(&ns, &f, "fw1");
    // start as backup: the VRRP events must make it master
    let args: Vec<String> = c
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let mut c = Command::new("ip");
    c.args(
        args.iter()
            .map(|a| if a == "master" { "backup" } else { a.as_str() }),
    );
    let mut child = c.stderr(Stdio::null()).spawn().unwrap();
    assert!(wait_until(Duration::from_secs(10), || {
        vrrp.subscriber_count() >= 1
            && seen
                .lock()
                .unwrap()
                .iter()
                .any(|v| v["cmd"] == "commit-join")
    }));
    vrrp.publish(&serde_json::json!({"event": "becoming_master", "group": "g1", "seq": 7}));
    assert!(
        wait_until(Duration::from_secs(10), || {
            seen.lock()
                .unwrap()
                .iter()
                .any(|v| v["cmd"] == "commit-ack" && v["args"]["seq"] == 7)
        }),
        "{:?}",
        seen.lock().unwrap()
    );
    let sock = f.path().join("run/sync.sock");
    let status = twinwall_control::request(
        &sock,
        &twinwall_control::Request::new("status"),
        Duration::from_secs(5),
    )
    .unwrap();
    assert_eq!(status["role"], "master");
    assert_eq!(status["commits"], 1);
    // The thread that carries the ack to VRRP runs real-time, as the main loop does.
    let policies = thread_policies(&child.id().to_string());
    assert!(
        policies.iter().any(|(c, p)| c == "sync-role" && p == "1/1"),
        "sync-role not SCHED_FIFO 1: {policies:?}"
    );
    vrrp.publish(&serde_json::json!({"event": "group_role", "group": "g1", "from": "master", "to": "backup"}));
    assert!(wait_until(Duration::from_secs(10), || {
        twinwall_control::request(
            &sock,
            &twinwall_control::Request::new("status"),
            Duration::from_secs(5),
        )
        .map(|s| s["role"] == "backup")
        .unwrap_or(false)
    }));
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    assert!(child.wait().unwrap().success());
}
