//! The trust phase on a real config partition directory with real signed bundles (made
//! with `twinwall key generate` / `twinwall bundle create`), run through
//! `twinwall init --supervise --config-partition DIR`: the verified set runs `ruleset
//! apply` on the verified config; a tampered, a wrong-node, a downgraded or an
//! untrusted bundle leads to fail-closed (bootstrap ruleset, management only) with the
//! reason in `twinwall status`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_twinwall");
static COUNTER: AtomicU32 = AtomicU32::new(0);

struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Dir {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let p = std::env::temp_dir().join(format!("tw-trust-{tag}-{}-{n}", std::process::id()));
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

/// Stops the supervisor on drop, even when the test fails.
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

fn tw(args: &[&str]) {
    let out = Command::new(BIN).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "twinwall {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn example() -> String {
    std::fs::read_to_string("/work/shared/examples/seed-pair.toml")
        .or_else(|_| {
            std::fs::read_to_string(
                Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/examples/seed-pair.toml"),
            )
        })
        .expect("seed-pair.toml fixture")
}

/// Signs the example config at `version` with `key` into `out`.
fn bundle(work: &Path, key: &Path, version: u64, out: &Path) {
    let text = example().replace("version = 1\n", &format!("version = {version}\n"));
    let cfg = work.join(format!("cluster-{version}.toml"));
    std::fs::write(&cfg, text).unwrap();
    tw(&[
        "bundle",
        "create",
        "--config",
        cfg.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
}

struct Partition {
    dir: PathBuf,
    key: PathBuf,
}

/// A config partition: node name, one trusted key, floor, and the given bundles.
fn partition(work: &Path, node: &str, floor: Option<u64>) -> Partition {
    let dir = work.join("config");
    std::fs::create_dir_all(dir.join("trusted")).unwrap();
    std::fs::create_dir_all(dir.join("bundles")).unwrap();
    let prefix = work.join("operator");
    tw(&["key", "generate", "--out", prefix.to_str().unwrap()]);
    std::fs::copy(
        prefix.with_extension("pub"),
        dir.join("trusted/operator.pub"),
    )
    .unwrap();
    std::fs::write(dir.join("node"), format!("{node}\n")).unwrap();
    if let Some(f) = floor {
        std::fs::write(dir.join("installed-version"), format!("{f}\n")).unwrap();
    }
    Partition {
        dir,
        key: prefix.with_extension("key"),
    }
}

fn tamper(path: &Path) {
    let mut b = std::fs::read(path).unwrap();
    let needle = b"advert_interval_ms = 100";
    let at = b
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("payload text in bundle");
    b[at + needle.len() - 3] = b'2';
    std::fs::write(path, b).unwrap();
}

/// Runs the supervisor on the partition with fake ruleset/mgmt that log their arguments;
/// returns (status JSON, the services' log lines).
fn boot(work: &Path, p: &Partition) -> (Value, Vec<String>, String) {
    let run = work.join("run");
    let log = work.join("services.log");
    let logcmd = |n: &str| format!("{n}=echo {n} \"$@\" >>{}; exit 0", log.display());
    let fake = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/init-fake-service.sh");
    let daemon = |n: &str| {
        format!(
            "{n}=echo {n} \"$@\" >>{log}; exec {fake} {n} {run} {run}/events.log",
            log = log.display(),
            fake = fake.display(),
            run = run.display()
        )
    };
    let child = Command::new(BIN)
        .args(["init", "--supervise", "--stop-timeout-ms", "2000"])
        .arg("--config-partition")
        .arg(&p.dir)
        .arg("--run-dir")
        .arg(&run)
        // mgmt is not in the default set until `twinwall mgmt` exists: name it.
        .args(["--services", "ruleset,sync,vrrp,mgmt"])
        .args(["--service-cmd", &logcmd("ruleset")])
        .args(["--service-cmd", &daemon("sync")])
        .args(["--service-cmd", &daemon("vrrp")])
        .args(["--service-cmd", &daemon("mgmt")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _sup = Sup(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = Command::new(BIN)
            .args(["status", "--json", "--run-dir"])
            .arg(&run)
            .output()
            .unwrap();
        if out.status.success() {
            let v: Value = serde_json::from_slice(&out.stdout).unwrap();
            let lines: Vec<String> = std::fs::read_to_string(&log)
                .unwrap_or_default()
                .lines()
                .map(str::to_string)
                .collect();
            let n = v["init"]["services"].as_array().map_or(0, Vec::len);
            // Every service has logged its start line.
            if n > 0 && lines.len() >= n {
                let text = Command::new(BIN)
                    .args(["status", "--run-dir"])
                    .arg(&run)
                    .output()
                    .unwrap();
                return (v, lines, String::from_utf8_lossy(&text.stdout).into_owned());
            }
        }
        assert!(Instant::now() < deadline, "supervisor did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn names(v: &Value) -> Vec<String> {
    v["init"]["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["spec"]["name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn init_trust_verified_active_bundle_runs_the_full_service_set() {
    let w = Dir::new("ok");
    let p = partition(&w.0, "lj-fw-1", Some(1));
    bundle(&w.0, &p.key, 1, &p.dir.join("bundles/active.bundle"));
    let (v, lines, _) = boot(&w.0, &p);
    let trust = &v["init"]["trust"];
    assert_eq!(trust["running"], "active", "{v:#}");
    assert_eq!(trust["version"], 1);
    assert!(v["init"]["fail_closed"].is_null());
    assert_eq!(names(&v), ["ruleset", "sync", "vrrp", "mgmt"]);
    let cluster = w.0.join("run/cluster.toml");
    assert_eq!(std::fs::read_to_string(&cluster).unwrap(), example());
    assert_eq!(
        lines[0],
        format!("ruleset ruleset apply {} --node lj-fw-1", cluster.display())
    );
}

#[test]
fn init_trust_tampered_active_falls_back_to_previous() {
    let w = Dir::new("prev");
    let p = partition(&w.0, "lj-fw-1", Some(2));
    bundle(&w.0, &p.key, 3, &p.dir.join("bundles/active.bundle"));
    bundle(&w.0, &p.key, 2, &p.dir.join("bundles/previous.bundle"));
    tamper(&p.dir.join("bundles/active.bundle"));
    let (v, _, text) = boot(&w.0, &p);
    let trust = &v["init"]["trust"];
    assert_eq!(trust["running"], "previous", "{v:#}");
    assert_eq!(trust["version"], 2);
    let why = trust["rejected"][0].as_str().unwrap();
    assert!(why.contains("active.bundle"), "{why}");
    assert!(text.contains("rejected: "), "{text}");
}

fn assert_fail_closed(v: &Value, lines: &[String], text: &str, expect: &str) {
    let reason = v["init"]["fail_closed"]
        .as_str()
        .unwrap_or_else(|| panic!("{v:#}"));
    assert!(
        reason.contains(expect),
        "reason `{reason}` lacks `{expect}`"
    );
    assert_eq!(v["init"]["trust"]["running"], "fail-closed");
    assert_eq!(names(v), ["ruleset", "mgmt"]);
    assert_eq!(lines[0], "ruleset ruleset bootstrap");
    assert!(text.contains("FAIL-CLOSED"), "{text}");
    assert!(text.contains(expect), "{text}");
}

#[test]
fn init_trust_tampered_bundle_without_fallback_is_fail_closed() {
    let w = Dir::new("tampered");
    let p = partition(&w.0, "lj-fw-1", None);
    bundle(&w.0, &p.key, 1, &p.dir.join("bundles/active.bundle"));
    tamper(&p.dir.join("bundles/active.bundle"));
    let (v, lines, text) = boot(&w.0, &p);
    assert_fail_closed(&v, &lines, &text, "active.bundle");
    assert_fail_closed(&v, &lines, &text, "previous.bundle: not present");
}

#[test]
fn init_trust_wrong_node_is_fail_closed() {
    let w = Dir::new("node");
    let p = partition(&w.0, "lj-fw-9", None);
    bundle(&w.0, &p.key, 1, &p.dir.join("bundles/active.bundle"));
    bundle(&w.0, &p.key, 1, &p.dir.join("bundles/previous.bundle"));
    let (v, lines, text) = boot(&w.0, &p);
    assert_fail_closed(&v, &lines, &text, "does not name this node `lj-fw-9`");
}

#[test]
fn init_trust_downgraded_bundle_is_fail_closed() {
    let w = Dir::new("downgrade");
    let p = partition(&w.0, "lj-fw-1", Some(5));
    bundle(&w.0, &p.key, 3, &p.dir.join("bundles/active.bundle"));
    bundle(&w.0, &p.key, 2, &p.dir.join("bundles/previous.bundle"));
    let (v, lines, text) = boot(&w.0, &p);
    assert_fail_closed(
        &v,
        &lines,
        &text,
        "version 3 is older than the installed-version floor 5",
    );
}

#[test]
fn init_trust_untrusted_signer_is_fail_closed() {
    let w = Dir::new("untrusted");
    let p = partition(&w.0, "lj-fw-1", None);
    let other = w.0.join("intruder");
    tw(&["key", "generate", "--out", other.to_str().unwrap()]);
    bundle(
        &w.0,
        &other.with_extension("key"),
        1,
        &p.dir.join("bundles/active.bundle"),
    );
    let (v, lines, text) = boot(&w.0, &p);
    assert_fail_closed(&v, &lines, &text, "active.bundle");
    let reason = v["init"]["fail_closed"].as_str().unwrap();
    assert!(reason.to_lowercase().contains("key"), "{reason}");
}
