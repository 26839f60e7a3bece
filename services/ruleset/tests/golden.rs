//! Golden files of every compiled example (`shared/examples/*.toml`, the repository's
//! `examples/*.toml` and the ruleset fixtures `tests/fixtures/ruleset-*.toml`, every
//! node), loaded through the config parser; `UPDATE_GOLDEN=1`
//! regenerates them. `nft -c` accepts every one inside a fresh network namespace, and
//! the lints find nothing on them except what is really there.

use std::path::{Path, PathBuf};

use twinwall_config::NodeView;
use twinwall_ruleset::{Options, compile};
use twinwall_testkit::{Netns, require_root};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn toml_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    v.sort();
    v
}

/// (golden name, view) for every node of every example.
fn examples() -> Vec<(String, NodeView)> {
    let mut out = Vec::new();
    for (tag, dir) in [
        ("shared", root().join("../shared/examples")),
        ("examples", root().join("examples")),
        ("fixtures", root().join("tests/fixtures")),
    ] {
        for f in toml_files(&dir) {
            // tests/fixtures is shared with other areas: only the ruleset's own.
            if tag == "fixtures"
                && !f
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("ruleset-"))
            {
                continue;
            }
            let cfg = twinwall_config::load(&f).unwrap_or_else(|d| panic!("{d}"));
            let stem = f.file_stem().unwrap().to_string_lossy().into_owned();
            for node in cfg.node_names() {
                out.push((
                    format!("{tag}.{stem}.{node}"),
                    cfg.node_view(&node).unwrap(),
                ));
            }
        }
    }
    assert!(out.len() >= 4, "examples not found");
    out
}

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

#[test]
fn compiled_examples_match_golden_files() {
    let update = std::env::var("UPDATE_GOLDEN").as_deref() == Ok("1");
    let mut mismatched = Vec::new();
    for (name, view) in examples() {
        let script = compile(&view, &Options::default()).unwrap();
        // The lint findings are golden too (`NAME.lints`, one per line): each was
        // reviewed to be real (objects the example defines and no rule uses), so a new
        // line there is a false positive until shown otherwise.
        let mut lints: String = script.lints.iter().map(|l| format!("{l}\n")).collect();
        if lints.is_empty() {
            lints = "(none)\n".into();
        }
        for (ext, text) in [("nft", &script.text), ("lints", &lints)] {
            let path = golden_dir().join(format!("{name}.{ext}"));
            if update {
                std::fs::write(&path, text).unwrap();
                continue;
            }
            let want = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 creates it)", path.display()));
            if want != *text {
                mismatched.push(format!("{name}.{ext}"));
            }
        }
    }
    assert!(
        mismatched.is_empty(),
        "compiled output differs from the golden files for {mismatched:?}; review the change, then UPDATE_GOLDEN=1"
    );
}

#[test]
fn nft_check_accepts_every_compiled_example() {
    if !require_root() {
        return;
    }
    let ns = Netns::new("nftc").unwrap();
    for (name, view) in examples() {
        let script = compile(&view, &Options::default()).unwrap();
        let path = std::env::temp_dir().join(format!("tw-{}-{name}.nft", std::process::id()));
        std::fs::write(&path, &script.text).unwrap();
        let out = ns
            .exec("nft", ["-c", "-f", path.to_str().unwrap()])
            .unwrap();
        std::fs::remove_file(&path).ok();
        assert!(
            out.status.success(),
            "{name}: nft -c rejected:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
