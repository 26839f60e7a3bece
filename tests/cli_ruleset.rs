//! `twinwall ruleset ...` as an operator (and init) runs it: compile to stdout with lints
//! on stderr, `--strict`, clear errors for bad input, diff by rule name (text and JSON),
//! bootstrap, and check/apply inside a fresh network namespace, where a failing apply
//! leaves the ruleset as it was.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

use twinwall_testkit::{Netns, require_root};

const BIN: &str = env!("CARGO_BIN_EXE_twinwall");

/// A scratch directory unique to this process and test, removed even when a test fails.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!(
            "twinwall-cli-ruleset-{tag}-{}-{n}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Scratch(p)
    }
    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn seed() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/examples/seed-pair.toml")
}

fn seed_text() -> String {
    std::fs::read_to_string(seed()).unwrap()
}

fn golden(name: &str) -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("services/ruleset/tests/golden")
        .join(name);
    std::fs::read_to_string(p).unwrap()
}

fn twinwall(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

fn twinwall_in(ns: &Netns, args: &[&str]) -> Output {
    ns.exec(BIN, args).unwrap()
}

fn s(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn compile_prints_the_golden_script_and_lints_on_stderr() {
    let out = twinwall(&["ruleset", "compile", path(&seed()), "--node", "lj-fw-1"]);
    assert!(out.status.success(), "{}", s(&out.stderr));
    assert_eq!(s(&out.stdout), golden("shared.seed-pair.lj-fw-1.nft"));
    assert!(
        s(&out.stderr).contains("warning: unused-object: service object `dns`"),
        "{}",
        s(&out.stderr)
    );
}

#[test]
fn strict_turns_lints_into_errors() {
    let out = twinwall(&[
        "ruleset",
        "compile",
        path(&seed()),
        "--node",
        "lj-fw-1",
        "--strict",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        out.stdout.is_empty(),
        "nothing on stdout with --strict errors"
    );
    assert!(
        s(&out.stderr).contains("error: unused-object"),
        "{}",
        s(&out.stderr)
    );
    // A config without findings passes --strict.
    let ds = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/examples/dual-stack.toml");
    let out = twinwall(&[
        "ruleset",
        "compile",
        path(&ds),
        "--node",
        "fw-a",
        "--strict",
    ]);
    assert!(out.status.success(), "{}", s(&out.stderr));
}

#[test]
fn bad_input_is_named() {
    let out = twinwall(&["ruleset", "compile", path(&seed()), "--node", "lj-fw-9"]);
    assert_eq!(out.status.code(), Some(1));
    let err = s(&out.stderr);
    assert!(
        err.contains("unknown node `lj-fw-9`") && err.contains("lj-fw-1"),
        "{err}"
    );

    let dir = Scratch::new("bad");
    let bad = dir.write(
        "bad.toml",
        &seed_text().replace("service = \"ssh\"", "service = \"sshh\""),
    );
    let out = twinwall(&["ruleset", "compile", path(&bad), "--node", "lj-fw-1"]);
    assert_eq!(out.status.code(), Some(1));
    let err = s(&out.stderr);
    assert!(err.contains("bad.toml:") && err.contains("sshh"), "{err}");
    assert!(out.stdout.is_empty());

    // `from` and `to` both `self`: an error naming the file, line and rule.
    let both = dir.write(
        "both-self.toml",
        &seed_text().replace("from = \"admin_hosts\"", "from = \"self\""),
    );
    let out = twinwall(&["ruleset", "compile", path(&both), "--node", "lj-fw-1"]);
    assert_eq!(out.status.code(), Some(1));
    let err = s(&out.stderr);
    assert!(
        err.contains("both-self.toml:")
            && err
                .contains("rule `admin-ssh-to-firewall` has `from = \"self\"` and `to = \"self\"`"),
        "{err}"
    );
    assert!(out.stdout.is_empty());

    let out = twinwall(&["ruleset", "compile", "/nonexistent/x.toml", "--node", "a"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(s(&out.stderr).contains("/nonexistent/x.toml"));

    let out = twinwall(&["ruleset", "compile", path(&seed())]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "missing --node is a usage error"
    );
}

#[test]
fn diff_reports_changes_by_rule_name() {
    let dir = Scratch::new("diff");
    let new = seed_text()
        .replace(
            "to = \"web_server\"\nservice = \"web\"",
            "to = \"web_server\"\nservice = \"dns\"",
        )
        .replace("version = 1", "version = 2")
        + "\n[[policy.rule]]\nname = \"new-rule\"\nfrom = \"inside\"\nto = \"self\"\nservice = \"ssh\"\naction = \"accept\"\n";
    let new = dir.write("new.toml", &new);
    let out = twinwall(&[
        "ruleset",
        "diff",
        path(&seed()),
        path(&new),
        "--node",
        "lj-fw-1",
    ]);
    assert!(out.status.success(), "{}", s(&out.stderr));
    let text = s(&out.stdout);
    assert!(text.contains("~ rule web-from-internet"), "{text}");
    assert!(
        text.contains("service: web [tcp/80, tcp/443] -> dns [udp/53, tcp/53]"),
        "{text}"
    );
    assert!(text.contains("+ rule new-rule"), "{text}");
    assert!(
        !text.contains("lan-to-internet"),
        "unchanged rules are not listed: {text}"
    );

    let out = twinwall(&[
        "ruleset",
        "diff",
        path(&seed()),
        path(&new),
        "--node",
        "lj-fw-1",
        "--json",
    ]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let changes = v.as_array().unwrap();
    assert!(
        changes
            .iter()
            .any(|c| c["change"] == "added" && c["name"] == "new-rule")
    );
    let changed = changes
        .iter()
        .find(|c| c["name"] == "web-from-internet")
        .unwrap();
    assert_eq!(changed["change"], "changed");
    assert_eq!(changed["fields"][0]["field"], "service");

    let out = twinwall(&[
        "ruleset",
        "diff",
        path(&seed()),
        path(&seed()),
        "--node",
        "lj-fw-1",
    ]);
    assert!(out.status.success());
    assert_eq!(s(&out.stdout).trim(), "no changes");
}

#[test]
fn bootstrap_print_is_fail_closed() {
    let out = twinwall(&["ruleset", "bootstrap", "--print"]);
    assert!(out.status.success());
    let text = s(&out.stdout);
    assert!(text.contains("hook forward priority filter; policy drop;"));
    assert!(text.contains("tcp dport 9780"));
    assert!(text.contains("udp dport 3780"));
    let out = twinwall(&[
        "ruleset",
        "bootstrap",
        "--print",
        "--management-port",
        "1234",
    ]);
    assert!(s(&out.stdout).contains("tcp dport 1234"));
}

#[test]
fn check_and_apply_in_a_netns_and_failed_apply_changes_nothing() {
    if !require_root() {
        return;
    }
    let ns = Netns::new("cli").unwrap();
    let list = || ns.run("nft", ["list", "ruleset"]).unwrap();

    let out = twinwall_in(&ns, &["ruleset", "bootstrap"]);
    assert!(out.status.success(), "{}", s(&out.stderr));
    assert!(list().contains("tcp dport 9780"));

    let out = twinwall_in(
        &ns,
        &["ruleset", "check", path(&seed()), "--node", "lj-fw-1"],
    );
    assert!(out.status.success(), "{}", s(&out.stderr));
    assert!(s(&out.stdout).contains("ruleset OK"));

    let out = twinwall_in(
        &ns,
        &["ruleset", "apply", path(&seed()), "--node", "lj-fw-1"],
    );
    assert!(out.status.success(), "{}", s(&out.stderr));
    let applied = list();
    assert!(
        applied.contains("comment \"web-from-internet\""),
        "{applied}"
    );
    // --check (nft -c first) applies the same ruleset.
    let out = twinwall_in(
        &ns,
        &[
            "ruleset",
            "apply",
            path(&seed()),
            "--node",
            "lj-fw-1",
            "--check",
        ],
    );
    assert!(out.status.success(), "{}", s(&out.stderr));
    assert_eq!(list(), applied);

    // A config that does not validate, and --strict with findings: nothing changes.
    let dir = Scratch::new("apply");
    let bad = dir.write(
        "bad.toml",
        &seed_text().replace("action = \"accept\"", "action = \"allow\""),
    );
    let out = twinwall_in(&ns, &["ruleset", "apply", path(&bad), "--node", "lj-fw-1"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(list(), applied);
    let out = twinwall_in(
        &ns,
        &[
            "ruleset",
            "apply",
            path(&seed()),
            "--node",
            "lj-fw-1",
            "--strict",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(list(), applied);
}

#[test]
fn counters_name_every_rule_or_say_why_not() {
    if !require_root() {
        return;
    }
    let ns = Netns::new("cli-counters").unwrap();
    // No twinwall table yet: exit 1 with the reason, nothing on stdout.
    let out = twinwall_in(&ns, &["ruleset", "counters"]);
    assert_eq!(out.status.code(), Some(1), "{}", s(&out.stdout));
    assert!(out.stdout.is_empty());
    let err = s(&out.stderr);
    assert!(
        err.contains("rule counters") && err.contains("no table inet twinwall"),
        "{err}"
    );

    let out = twinwall_in(
        &ns,
        &["ruleset", "apply", path(&seed()), "--node", "lj-fw-1"],
    );
    assert!(out.status.success(), "{}", s(&out.stderr));
    let out = twinwall_in(&ns, &["ruleset", "counters"]);
    assert!(out.status.success(), "{}", s(&out.stderr));
    let text = s(&out.stdout);
    assert!(text.starts_with("RULE "), "{text}");
    for rule in [
        "lan-to-internet",
        "web-from-internet",
        "admin-ssh-to-firewall",
        "default-drop",
    ] {
        let line = text
            .lines()
            .find(|l| l.split_whitespace().next() == Some(rule))
            .unwrap_or_else(|| panic!("{rule} not in\n{text}"));
        // A fresh table: nothing counted yet (no traffic in this namespace).
        let cols: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(cols[cols.len() - 2..], ["0", "0"], "{line}");
    }
    let out = twinwall_in(&ns, &["ruleset", "counters", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let web = v
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["rule"] == "web-from-internet")
        .unwrap();
    assert_eq!(web["chain"], "forward");
    assert_eq!(web["packets"], 0);
    assert_eq!(web["merged"], false);
}
