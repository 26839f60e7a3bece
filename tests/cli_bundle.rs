//! The `twinwall key` and `twinwall bundle` commands as an operator runs them: key
//! generation, signing the seed fixture, verification, and rejections that change nothing.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

/// A scratch directory unique to this process and test, removed even when a test fails.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!(
            "twinwall-cli-bundle-{tag}-{}-{n}",
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).unwrap();
        Scratch(p)
    }
    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
    /// Every file in the directory with its contents and mode.
    fn snapshot(&self) -> BTreeMap<String, (Vec<u8>, u32)> {
        fs::read_dir(&self.0)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let mode = e.metadata().unwrap().permissions().mode();
                (
                    e.file_name().into_string().unwrap(),
                    (fs::read(e.path()).unwrap(), mode),
                )
            })
            .collect()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn seed_pair() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/examples/seed-pair.toml")
}

fn twinwall(dir: &Scratch, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_twinwall"))
        .args(args)
        .current_dir(&dir.0)
        .env_remove("TWINWALL_LOG")
        .env_remove("SOURCE_DATE_EPOCH")
        .output()
        .expect("run twinwall")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn mode(p: &Path) -> u32 {
    fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn generate_create_verify_and_reject_a_wrong_key() {
    let d = Scratch::new("flow");
    let seed = seed_pair();
    let seed = seed.to_str().unwrap();

    let o = twinwall(&d, &["key", "generate", "--out", "op"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(mode(&d.path("op.key")), 0o600);
    assert_eq!(mode(&d.path("op.pub")), 0o644);
    let secret = fs::read_to_string(d.path("op.key")).unwrap();
    let secret_b64 = secret.split(' ').nth(1).unwrap().trim();
    assert!(!String::from_utf8_lossy(&o.stdout).contains(secret_b64));
    assert!(!stderr(&o).contains(secret_b64));

    let o = twinwall(
        &d,
        &[
            "bundle",
            "create",
            "--config",
            seed,
            "--key",
            "op.key",
            "--out",
            "seed.bundle",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stderr(&o).contains(secret_b64));

    let o = twinwall(
        &d,
        &["bundle", "verify", "seed.bundle", "--trust", "op.pub"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("config bundle `lj-fw` version 1"), "{out}");

    let o = twinwall(
        &d,
        &[
            "bundle",
            "verify",
            "seed.bundle",
            "--trust",
            "op.pub",
            "--kind",
            "config",
            "--json",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(v["manifest"]["cluster"], "lj-fw");
    assert_eq!(v["manifest"]["payloads"][0]["name"], "cluster.toml");

    let o = twinwall(&d, &["key", "generate", "--out", "other"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let before = d.snapshot();
    let o = twinwall(
        &d,
        &["bundle", "verify", "seed.bundle", "--trust", "other.pub"],
    );
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1, "one line: {err:?}");
    assert!(err.contains("not a trusted key"), "{err}");
    assert!(o.stdout.is_empty());
    // The anti-rollback refusal is one line too, and verify changes nothing.
    let o = twinwall(
        &d,
        &[
            "bundle",
            "verify",
            "seed.bundle",
            "--trust",
            "op.pub",
            "--installed-version",
            "1",
        ],
    );
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stderr(&o).lines().count(), 1, "{}", stderr(&o));
    assert!(stderr(&o).contains("not newer than installed version 1"));
    assert_eq!(d.snapshot(), before, "verify must not write anything");
}

#[test]
fn tampered_bundle_is_rejected_with_a_json_reason() {
    let d = Scratch::new("tamper");
    let seed = seed_pair();
    assert!(
        twinwall(&d, &["key", "generate", "--out", "op"])
            .status
            .success()
    );
    let o = twinwall(
        &d,
        &[
            "bundle",
            "create",
            "--config",
            seed.to_str().unwrap(),
            "--key",
            "op.key",
            "--out",
            "b",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let mut bytes = fs::read(d.path("b")).unwrap();
    let n = bytes.len();
    bytes[n - 10] ^= 0x20; // inside cluster.toml
    fs::write(d.path("b"), &bytes).unwrap();
    let o = twinwall(
        &d,
        &["bundle", "verify", "b", "--trust", "op.pub", "--json"],
    );
    assert_eq!(o.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["ok"], false);
    assert_eq!(v["code"], "hash_mismatch");
}

#[test]
fn invalid_config_creates_no_bundle() {
    let d = Scratch::new("badcfg");
    assert!(
        twinwall(&d, &["key", "generate", "--out", "op"])
            .status
            .success()
    );
    fs::write(
        d.path("bad.toml"),
        "[cluster]\nname = \"x\"\nversion = \"one\"\n",
    )
    .unwrap();
    let before = d.snapshot();
    let o = twinwall(
        &d,
        &[
            "bundle", "create", "--config", "bad.toml", "--key", "op.key", "--out", "x.bundle",
        ],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("bad.toml"), "{}", stderr(&o));
    assert_eq!(
        d.snapshot(),
        before,
        "a failed create leaves the directory as it was"
    );
    // A bad key file is refused too, naming the file, and writes nothing.
    fs::write(d.path("op.key"), "twinwall-ed25519-secret-v1 nope\n").unwrap();
    let before = d.snapshot();
    let seed = seed_pair();
    let o = twinwall(
        &d,
        &[
            "bundle",
            "create",
            "--config",
            seed.to_str().unwrap(),
            "--key",
            "op.key",
            "--out",
            "x.bundle",
        ],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("op.key"), "{}", stderr(&o));
    assert_eq!(d.snapshot(), before);
}

#[test]
fn create_refuses_to_overwrite_its_own_inputs() {
    let d = Scratch::new("inputs");
    assert!(
        twinwall(&d, &["key", "generate", "--out", "op"])
            .status
            .success()
    );
    fs::copy(seed_pair(), d.path("c.toml")).unwrap();
    let before = d.snapshot();
    for out in ["c.toml", "op.key", "./op.key"] {
        let o = twinwall(
            &d,
            &[
                "bundle", "create", "--config", "c.toml", "--key", "op.key", "--out", out,
            ],
        );
        assert_eq!(o.status.code(), Some(1), "--out {out}");
        assert!(
            stderr(&o).contains("refusing to overwrite"),
            "{}",
            stderr(&o)
        );
    }
    assert_eq!(d.snapshot(), before);
}

#[test]
fn key_generate_refuses_to_overwrite_without_force() {
    let d = Scratch::new("force");
    assert!(
        twinwall(&d, &["key", "generate", "--out", "op"])
            .status
            .success()
    );
    let before = d.snapshot();
    let o = twinwall(&d, &["key", "generate", "--out", "op"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("--force"), "{}", stderr(&o));
    assert_eq!(d.snapshot(), before, "a refused generate changes nothing");
    // Only the .pub existing is refused as well, and no .key appears.
    fs::remove_file(d.path("op.key")).unwrap();
    let o = twinwall(&d, &["key", "generate", "--out", "op"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(!d.path("op.key").exists());
    let o = twinwall(&d, &["key", "generate", "--out", "op", "--force"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(mode(&d.path("op.key")), 0o600);
    assert_ne!(d.snapshot()["op.pub"], before["op.pub"]);
}

#[test]
fn sync_key_is_0600_and_32_bytes() {
    let d = Scratch::new("sync");
    let o = twinwall(&d, &["key", "sync", "--out", "cluster.sync"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(mode(&d.path("cluster.sync")), 0o600);
    let key = twinwall_bundle::keys::read_sync_key(&d.path("cluster.sync")).unwrap();
    assert_eq!(key.expose().len(), 32);
    let o = twinwall(&d, &["key", "sync", "--out", "cluster.sync"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        twinwall_bundle::keys::read_sync_key(&d.path("cluster.sync"))
            .unwrap()
            .expose(),
        key.expose()
    );
}

#[test]
fn verify_requires_a_trusted_key_flag() {
    let d = Scratch::new("usage");
    let o = twinwall(&d, &["bundle", "verify", "x.bundle"]);
    assert_eq!(o.status.code(), Some(2));
}
