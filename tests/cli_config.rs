//! `twinwall config ...` driven through the binary, as the acceptance tests do.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn twinwall(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_twinwall"))
        .args(args)
        .env_remove("TWINWALL_LOG")
        .output()
        .expect("running twinwall")
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// seed-pair.toml from the shared fixtures, or the project's own single-VIP example
/// when the fixtures are not there.
/// (`TWINWALL_SHARED_EXAMPLES` overrides the fixture folder, to exercise the fallback.)
fn fixture() -> (PathBuf, bool) {
    let dir = std::env::var_os("TWINWALL_SHARED_EXAMPLES")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("../shared/examples"));
    let shared = dir.join("seed-pair.toml");
    if shared.is_file() {
        (shared, true)
    } else {
        (root().join("examples/single-vip.toml"), false)
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A scratch directory removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let dir =
            std::env::temp_dir().join(format!("twinwall-cli-config-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// 1-based line and column of the first occurrence of `needle`.
fn pos_of(text: &str, needle: &str) -> (usize, usize) {
    text.lines()
        .enumerate()
        .find_map(|(i, l)| l.find(needle).map(|c| (i + 1, c + 1)))
        .unwrap_or_else(|| panic!("no {needle:?}"))
}

#[test]
fn check_accepts_the_examples() {
    let mut files: Vec<String> = Vec::new();
    for dir in [root().join("examples"), root().join("../shared/examples")] {
        if let Ok(rd) = std::fs::read_dir(&dir) {
            for e in rd {
                let p = e.unwrap().path();
                if p.extension().is_some_and(|x| x == "toml") {
                    files.push(p.display().to_string());
                }
            }
        }
    }
    let mut args = vec!["config", "check"];
    args.extend(files.iter().map(String::as_str));
    let o = twinwall(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert_eq!(out.lines().count(), files.len(), "{out}");
    assert!(out.lines().all(|l| l.contains(": OK (cluster ")), "{out}");
}

#[test]
fn acceptance_mistyped_key_vip_outside_subnet_and_unknown_object() {
    let (src, shared) = fixture();
    let text = std::fs::read_to_string(&src).unwrap();
    let (key_from, key_to, vip_from, vip_to, obj_from, obj_to) = if shared {
        (
            "interfaces.inside = { device = \"eth1\", address = \"198.51.100.3/24\" }",
            "interfaces.inside = { device = \"eth1\", adress = \"198.51.100.3/24\" }",
            "address = \"198.51.100.1/24\"",
            "address = \"198.51.101.1/24\"",
            "to = \"web_server\"\nservice",
            "to = \"web_srver\"\nservice",
        )
    } else {
        (
            "interfaces.lan = { device = \"enp2s0\", address = \"198.51.100.3/25\" }",
            "interfaces.lan = { device = \"enp2s0\", adress = \"198.51.100.3/25\" }",
            "address = \"198.51.100.1/25\"",
            "address = \"198.51.101.1/25\"",
            "to = \"printer\"",
            "to = \"printr\"",
        )
    };
    for from in [key_from, vip_from, obj_from] {
        assert!(text.contains(from), "{} has no {from:?}", src.display());
    }
    let bad = text
        .replacen(key_from, key_to, 1)
        .replacen(vip_from, vip_to, 1)
        .replacen(obj_from, obj_to, 1);
    let dir = Scratch::new("acceptance");
    let file = dir.path("broken.toml");
    std::fs::write(&file, &bad).unwrap();
    let f = file.display().to_string();

    let o = twinwall(&["config", "check", &f]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    let (key_line, key_col) = pos_of(&bad, "adress");
    // Values are reported at their opening quote.
    let (vip_line, vip_col) = pos_of(&bad, "\"198.51.101.1/");
    let (obj_line, obj_col) = pos_of(&bad, &format!("\"{}\"", obj_to.split('"').nth(1).unwrap()));
    assert!(
        err.contains(&format!(
            "{f}:{key_line}:{key_col}: error: unknown key `adress`"
        )),
        "{err}"
    );
    assert!(err.contains("hint: did you mean `address`?"), "{err}");
    assert!(
        err.contains(&format!(
            "{f}:{vip_line}:{vip_col}: error: VIP 198.51.101.1/"
        )),
        "{err}"
    );
    assert!(err.contains("is outside the subnet of zone"), "{err}");
    assert!(
        err.contains(&format!(
            "{f}:{obj_line}:{obj_col}: error: unknown zone or network object"
        )),
        "{err}"
    );
    // Exactly these three (plus the summary line); nothing on stdout.
    assert_eq!(err.matches(": error: ").count(), 3, "{err}");
    assert!(stdout(&o).is_empty());

    // A good file and a bad one: both reported, exit 1.
    let o = twinwall(&["config", "check", &src.display().to_string(), &f]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).contains(": OK"));
    assert_eq!(stderr(&o).matches(": error: ").count(), 3);
}

#[test]
fn check_of_a_missing_file_is_a_located_error() {
    let o = twinwall(&["config", "check", "/nonexistent/cluster.toml"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("/nonexistent/cluster.toml:1:1: error: cannot read the file"));
}

#[test]
fn show_prints_the_node_view_as_json() {
    let file = root().join("examples/dual-stack.toml");
    let f = file.display().to_string();
    let o = twinwall(&["config", "show", &f, "--node", "tw-2", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["node"], "tw-2");
    assert_eq!(v["peer"]["node"], "tw-1");
    assert_eq!(v["sync"]["local"], "192.0.2.10");
    assert_eq!(
        v["vrrp"]["groups"][0]["routers"].as_array().unwrap().len(),
        6
    );
    assert_eq!(v["conntrack_ignore"].as_array().unwrap().len(), 14);

    let o = twinwall(&["config", "show", &f, "--node", "tw-2"]);
    assert!(o.status.success());
    assert!(stdout(&o).starts_with("node tw-2 of cluster twinwall-lab (version 42)"));

    let o = twinwall(&["config", "show", &f, "--node", "tw-3"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("unknown node `tw-3`"), "{}", stderr(&o));
    assert!(stderr(&o).contains("tw-1, tw-2"));
}

#[test]
fn schema_prints_the_committed_schema() {
    let o = twinwall(&["config", "schema"]);
    assert!(o.status.success());
    let committed = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/twinwall-config.schema.json"),
    )
    .unwrap();
    assert_eq!(stdout(&o), committed);
}

#[test]
fn usage_errors_exit_2() {
    let o = twinwall(&["config", "check"]);
    assert_eq!(o.status.code(), Some(2));
    let o = twinwall(&["config", "show", "x.toml"]);
    assert_eq!(o.status.code(), Some(2));
}
