//! `twinwall lab` without VMs: the traffic agent as processes of the real binary (server,
//! client, stats, the control socket init probes), and the errors an operator gets when
//! no lab is up, the topology does not exist or the image was not built.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use twinwall_lab::agent;

fn tw() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_twinwall"));
    c.current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("TWINWALL_LOG", "warn")
        .env_remove("TWINWALL_LAB_DIR");
    c
}

/// A child process killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("lab-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn agent_processes_echo_and_serve_stats_and_readiness() {
    let dir = scratch("agent");
    let (echo, stats) = (free_port(), free_port());
    let _server = Proc(
        tw().args([
            "lab",
            "agent",
            "server",
            "--listen",
            &format!("127.0.0.1:{echo}"),
        ])
        .stderr(Stdio::null())
        .spawn()
        .unwrap(),
    );
    let _client = Proc(
        tw().args([
            "lab",
            "agent",
            "client",
            "--target",
            &format!("127.0.0.1:{echo}"),
            "--flows",
            "2",
            "--interval-ms",
            "10",
            "--stats",
            &format!("127.0.0.1:{stats}"),
            "--run-dir",
        ])
        .arg(&dir)
        .stderr(Stdio::null())
        .spawn()
        .unwrap(),
    );
    let addr = format!("127.0.0.1:{stats}").parse().unwrap();
    let start = Instant::now();
    let s = loop {
        if let Ok(s) = agent::fetch_stats(addr, false)
            && s.all_flowing(1000)
            && s.flows.iter().all(|f| f.echoes >= 10)
        {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "client never flowed"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(s.flows.len(), 3, "2 TCP + 1 UDP: {s:?}");
    assert_eq!(s.tcp_broken(), (0, 2));
    // init's readiness probe: the agent's control socket answers status.
    let v = twinwall_control::request(
        &dir.join("agent.sock"),
        &twinwall_control::Request::new("status"),
        Duration::from_secs(5),
    )
    .unwrap();
    assert_eq!(v["ready"], true);
    assert_eq!(v["role"], "client");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn commands_without_a_lab_say_so_and_exit_1() {
    let dir = scratch("nolab");
    let o = tw()
        .args(["lab", "status", "--run-dir"])
        .arg(&dir)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("is the lab up?") && err.contains("lab.sock"),
        "{err}"
    );
    let o = tw()
        .args(["lab", "cut", "fw1:inside", "--run-dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn unknown_topology_is_a_usage_error_and_a_missing_image_names_make_image() {
    let dir = scratch("noimage");
    let o = tw()
        .args(["lab", "up", "--topology", "no-such-topology", "--run-dir"])
        .arg(&dir)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("no topology no-such-topology"), "{err}");
    let o = tw()
        .args(["lab", "up", "--foreground", "--image"])
        .arg(dir.join("none"))
        .arg("--run-dir")
        .arg(&dir)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("twinwall.img is missing (run `make image`)"),
        "{err}"
    );
    let o = tw().args(["lab", "agent", "client"]).output().unwrap();
    assert_eq!(o.status.code(), Some(2), "--target is required");
    let _ = std::fs::remove_dir_all(&dir);
}
