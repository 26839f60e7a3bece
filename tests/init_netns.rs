//! The supervisor with the real ruleset service inside a network namespace: `twinwall init
//! --supervise --services ruleset --forwarding` applies the real nftables ruleset (the
//! ruleset area's `twinwall ruleset apply`) and only then enables IP forwarding; when the
//! apply fails, forwarding stays off and the one-shot is retried with backoff.
//! Needs root (CI runs as root); each test makes and removes its own namespace.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_twinwall");
static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A namespace and a run dir, both removed on drop.
struct Env {
    ns: String,
    run: PathBuf,
}

impl Env {
    fn new() -> Env {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let ns = format!("twin-{}-{n}", std::process::id());
        let st = Command::new("ip")
            .args(["netns", "add", &ns])
            .status()
            .unwrap();
        assert!(st.success(), "ip netns add {ns}");
        let run = std::env::temp_dir().join(format!("tw-netns-{}-{n}", std::process::id()));
        Env { ns, run }
    }

    fn exec(&self, args: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn supervise(&self, config: &Path) -> Sup {
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns, BIN, "init", "--supervise"])
            .arg("--config")
            .arg(config)
            .args(["--node", "lj-fw-1", "--services", "ruleset", "--forwarding"])
            .args(["--backoff-initial-ms", "50", "--backoff-max-ms", "200"])
            .arg("--run-dir")
            .arg(&self.run)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Sup(child)
    }

    fn status(&self) -> Option<Value> {
        let out = Command::new(BIN)
            .args(["status", "--json", "--run-dir"])
            .arg(&self.run)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).ok())
            .flatten()
    }

    fn wait_for(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(v) = self.status().filter(|v| pred(&v["init"])) {
                return v;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("timed out waiting for {what}: {:#?}", self.status());
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
        let _ = std::fs::remove_dir_all(&self.run);
    }
}

/// `ip netns exec` execs the supervisor, so its pid is the supervisor's.
struct Sup(Child);

impl Drop for Sup {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        for _ in 0..400 {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn example() -> PathBuf {
    let shared = Path::new("/work/shared/examples/seed-pair.toml");
    if shared.exists() {
        return shared.to_path_buf();
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/examples/seed-pair.toml")
}

fn ruleset_state(init: &Value) -> String {
    init["services"][0]["state"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

#[test]
fn init_netns_ruleset_is_applied_before_forwarding_is_enabled() {
    let env = Env::new();
    assert_eq!(env.exec(&["cat", "/proc/sys/net/ipv4/ip_forward"]), "0");
    let _sup = env.supervise(&example());
    let v = env.wait_for("ruleset done", |i| ruleset_state(i) == "done");
    assert_eq!(v["init"]["services_up"], true);
    let rules = env.exec(&["nft", "list", "table", "inet", "twinwall"]);
    assert!(rules.contains("table inet twinwall"), "{rules}");
    assert_eq!(env.exec(&["cat", "/proc/sys/net/ipv4/ip_forward"]), "1");
    assert_eq!(
        env.exec(&["cat", "/proc/sys/net/ipv6/conf/all/forwarding"]),
        "1"
    );
}

#[test]
fn init_netns_failed_ruleset_keeps_forwarding_off_and_retries() {
    let env = Env::new();
    let bad = env.run.with_extension("bad.toml");
    std::fs::write(&bad, "[cluster]\nname = \"x\"\nversion = 1\nbogus = true\n").unwrap();
    let _sup = env.supervise(&bad);
    let v = env.wait_for("ruleset retried", |i| {
        i["services"][0]["restarts"].as_u64() >= Some(2)
    });
    let state = ruleset_state(&v["init"]);
    assert!(
        state == "backoff" || state == "crash_loop" || state == "starting",
        "{state}"
    );
    assert_eq!(v["init"]["services_up"], false);
    assert_eq!(env.exec(&["cat", "/proc/sys/net/ipv4/ip_forward"]), "0");
    assert_eq!(env.exec(&["nft", "list", "tables"]), "");
    let _ = std::fs::remove_file(&bad);
}
