//! `twinwall init --supervise` and `twinwall status` driven as the real binary, with fake
//! services (a shell script serving a control socket via socat): start order and
//! readiness, restart with backoff, the crash-loop state, orderly shutdown order, reaping
//! of orphaned grandchildren, captured logs, and the CLI's refusals.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_twinwall");
static COUNTER: AtomicU32 = AtomicU32::new(0);

fn fake() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/init-fake-service.sh")
        .display()
        .to_string()
}

/// A scratch run dir, removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Dir {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let p = std::env::temp_dir().join(format!("tw-init-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Dir(p)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running supervisor; stopped (SIGTERM, then SIGKILL) on drop even when a test fails.
struct Supervised {
    child: Child,
    run: PathBuf,
}

impl Supervised {
    fn start(run: &Path, args: &[&str]) -> Supervised {
        let child = Command::new(BIN)
            .args(["init", "--supervise", "--run-dir"])
            .arg(run)
            .args(["--stop-timeout-ms", "3000"])
            .args(args)
            .env("TWINWALL_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start twinwall init --supervise");
        Supervised {
            child,
            run: run.to_path_buf(),
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn status(&self) -> Option<Value> {
        let out = Command::new(BIN)
            .args(["status", "--json", "--run-dir"])
            .arg(&self.run)
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// Polls `twinwall status --json` until `pred` holds for init's part.
    fn wait_for(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut last = Value::Null;
        while Instant::now() < deadline {
            if let Some(v) = self.status() {
                if pred(&v["init"]) {
                    return v;
                }
                last = v;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("timed out waiting for {what}; last status: {last:#}");
    }

    fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        panic!("supervisor did not exit after SIGTERM");
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = Command::new("kill")
                .args(["-TERM", &self.pid().to_string()])
                .status();
            for _ in 0..800 {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(25));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn service<'a>(init: &'a Value, name: &str) -> &'a Value {
    init["services"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["spec"]["name"] == name))
        .unwrap_or(&Value::Null)
}

fn state(init: &Value, name: &str) -> String {
    service(init, name)["state"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

fn fake_cmd(name: &str, run: &Path, log: &Path) -> String {
    format!(
        "{name}=exec {} {name} {} {}",
        fake(),
        run.display(),
        log.display()
    )
}

const CONFIG_ARGS: [&str; 4] = ["--config", "/nonexistent/cluster.toml", "--node", "fw-a"];

/// Lines of the shared events log, in order.
fn events(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

fn pos(events: &[String], line: &str) -> usize {
    events
        .iter()
        .position(|l| l == line)
        .unwrap_or_else(|| panic!("no `{line}` in {events:?}"))
}

/// Starts `init --supervise` with all four services: `ruleset` and `sync` as given
/// (`NAME=COMMAND`), vrrp and mgmt as fakes logging to `log`.
fn start_all_four(dir: &Dir, log: &Path, ruleset: &str, sync: &str) -> Supervised {
    let vrrp = fake_cmd("vrrp", &dir.0, log);
    let mgmt = fake_cmd("mgmt", &dir.0, log);
    Supervised::start(
        &dir.0,
        &[
            &CONFIG_ARGS[..],
            &["--services", "ruleset,sync,vrrp,mgmt"],
            &["--service-cmd", ruleset, "--service-cmd", sync],
            &["--service-cmd", &vrrp, "--service-cmd", &mgmt],
        ]
        .concat(),
    )
}

#[test]
fn init_supervise_starts_services_by_dependency_and_reports_ready() {
    let dir = Dir::new("order");
    let log = dir.0.join("events.log");
    // The ruleset one-shot takes 2 s: sync must start beside it, VRRP and management
    // only once it is done.
    let ruleset = format!("ruleset=sleep 2; echo ruleset applied >>{}", log.display());
    let sync = fake_cmd("sync", &dir.0, &log);
    let sup = start_all_four(&dir, &log, &ruleset, &sync);
    let v = sup.wait_for("services up", |i| i["services_up"] == true);
    let init = &v["init"];
    assert_eq!(init["mode"], "supervise");
    assert_eq!(init["node"], "fw-a");
    assert_eq!(state(init, "ruleset"), "done");
    for s in ["sync", "vrrp", "mgmt"] {
        assert_eq!(state(init, s), "ready", "{s}: {init:#}");
    }
    let ev = events(&log);
    assert_eq!(ev.len(), 4, "{ev:?}");
    let applied = pos(&ev, "ruleset applied");
    assert!(
        pos(&ev, "sync started") < applied,
        "sync waited for the ruleset: {ev:?}"
    );
    assert!(
        pos(&ev, "vrrp started") > applied,
        "VRRP before the ruleset: {ev:?}"
    );
    assert!(
        pos(&ev, "mgmt started") > applied,
        "mgmt before the ruleset: {ev:?}"
    );
    // The other services' sockets answer too, so `status` merges them.
    assert_eq!(v["vrrp"]["state"], "master");
    // Text form.
    let out = Command::new(BIN)
        .args(["status", "--run-dir"])
        .arg(&dir.0)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("services  up"), "{text}");
    assert!(text.contains("vrrp     ready"), "{text}");
}

#[test]
fn init_supervise_vrrp_waits_for_sync_and_management_does_not() {
    let dir = Dir::new("deps");
    let log = dir.0.join("events.log");
    let ruleset = format!("ruleset=echo ruleset applied >>{}", log.display());
    // sync takes 2 s before it serves its socket.
    let sync = fake_cmd("sync", &dir.0, &log).replacen("sync=", "sync=sleep 2; ", 1);
    let sup = start_all_four(&dir, &log, &ruleset, &sync);
    sup.wait_for("services up", |i| i["services_up"] == true);
    let ev = events(&log);
    assert_eq!(ev.len(), 4, "{ev:?}");
    let sync_started = pos(&ev, "sync started");
    assert!(
        pos(&ev, "mgmt started") < sync_started,
        "mgmt waited for sync: {ev:?}"
    );
    assert!(
        pos(&ev, "vrrp started") > sync_started,
        "VRRP before sync was ready: {ev:?}"
    );
}

#[test]
fn init_supervise_stops_vrrp_first_then_sync_then_the_rest() {
    let dir = Dir::new("stop");
    let log = dir.0.join("events.log");
    let cmds = ["sync", "vrrp", "mgmt"].map(|n| fake_cmd(n, &dir.0, &log));
    let mut sup = Supervised::start(
        &dir.0,
        &[
            &CONFIG_ARGS[..],
            &["--services", "sync,vrrp,mgmt"],
            &["--service-cmd", &cmds[0], "--service-cmd", &cmds[1]],
            &["--service-cmd", &cmds[2]],
        ]
        .concat(),
    );
    sup.wait_for("services up", |i| i["services_up"] == true);
    let st = sup.terminate();
    assert!(st.success(), "supervisor exit: {st:?}");
    let events = std::fs::read_to_string(&log).unwrap();
    let stops: Vec<&str> = events.lines().filter(|l| l.ends_with("stopped")).collect();
    assert_eq!(stops, ["vrrp stopped", "sync stopped", "mgmt stopped"]);
}

#[test]
fn init_supervise_restarts_with_backoff_and_shows_a_crash_loop() {
    let dir = Dir::new("crash");
    let sup = Supervised::start(
        &dir.0,
        &[
            &CONFIG_ARGS[..],
            &["--services", "vrrp"],
            &[
                "--service-cmd",
                "vrrp=echo vrrp: cannot open raw socket >&2; exit 3",
            ],
            &["--backoff-initial-ms", "20", "--backoff-max-ms", "160"],
        ]
        .concat(),
    );
    let v = sup.wait_for("crash loop", |i| state(i, "vrrp") == "crash_loop");
    let vrrp = service(&v["init"], "vrrp");
    assert!(vrrp["restarts"].as_u64().unwrap() >= 4, "{vrrp:#}");
    assert_eq!(vrrp["last_exit"]["code"], 3);
    let delays: Vec<u64> = vrrp["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["message"].as_str())
        .filter_map(|m| m.split("restarting in ").nth(1))
        .filter_map(|m| m.trim_end_matches(" ms").parse().ok())
        .collect();
    assert_eq!(&delays[..5], [20, 40, 80, 160, 160], "{vrrp:#}");
    // It keeps being restarted at the cap, and its stderr is in the log ring.
    let r = vrrp["restarts"].as_u64().unwrap();
    sup.wait_for("another restart", |i| {
        service(i, "vrrp")["restarts"].as_u64().unwrap_or(0) > r
    });
    let out = Command::new(BIN)
        .args(["status", "--logs", "--run-dir"])
        .arg(&dir.0)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("vrrp     crash_loop"), "{text}");
    assert!(text.contains("--- vrrp output ---"), "{text}");
    assert!(text.contains("vrrp: cannot open raw socket"), "{text}");
}

fn zombie_children_of(pid: u32) -> Vec<String> {
    let mut z = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid ...
        let Some(rest) = stat.rsplit_once(") ").map(|(_, r)| r) else {
            continue;
        };
        let f: Vec<&str> = rest.split(' ').collect();
        if f.len() > 1 && f[0] == "Z" && f[1] == pid.to_string() {
            z.push(stat);
        }
    }
    z
}

#[test]
fn init_supervise_reaps_orphaned_grandchildren() {
    let dir = Dir::new("reap");
    let pids = dir.0.join("grandchildren");
    // The one-shot forks grandchildren and exits at once: they are orphaned, re-parented
    // to the supervisor (a child subreaper), and must be reaped when they exit.
    let ruleset = format!(
        "ruleset=for i in 1 2 3; do (sleep 0.3; exit 7) & echo $! >>{}; done; exit 0",
        pids.display()
    );
    let sup = Supervised::start(
        &dir.0,
        &[
            &CONFIG_ARGS[..],
            &["--services", "ruleset", "--service-cmd", &ruleset],
        ]
        .concat(),
    );
    let v = sup.wait_for("orphans reaped", |i| {
        i["orphans_reaped"].as_u64() >= Some(3)
    });
    assert_eq!(state(&v["init"], "ruleset"), "done");
    let gpids = std::fs::read_to_string(&pids).unwrap();
    for p in gpids.split_whitespace() {
        assert!(
            !Path::new("/proc").join(p).exists(),
            "grandchild {p} still exists (zombie?)"
        );
    }
    assert_eq!(zombie_children_of(sup.pid()), Vec::<String>::new());
}

fn run(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

#[test]
fn init_outside_pid1_without_supervise_is_a_usage_error() {
    let out = run(&["init"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("runs as PID 1") && err.contains("--supervise"),
        "{err}"
    );
}

#[test]
fn init_multicall_as_init_runs_the_init_command() {
    let dir = Dir::new("multicall");
    let link = dir.0.join("init");
    std::os::unix::fs::symlink(BIN, &link).unwrap();
    let out = Command::new(&link).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("runs as PID 1"));
}

#[test]
fn init_supervise_rejects_an_unknown_service() {
    let dir = Dir::new("unknown");
    let run_dir = dir.0.display().to_string();
    let out = run(&[
        "init",
        "--supervise",
        "--run-dir",
        &run_dir,
        "--services",
        "bgp",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown service `bgp`"), "{err}");
}

#[test]
fn init_status_without_a_running_init_names_the_run_dir() {
    let dir = Dir::new("nostatus");
    let run_dir = dir.0.display().to_string();
    let out = run(&["status", "--run-dir", &run_dir]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&run_dir) && err.contains("is twinwall init running"),
        "{err}"
    );
}
