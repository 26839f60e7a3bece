//! Golden files of the compiled examples (`UPDATE_GOLDEN=1` regenerates them), and
//! `nft -c` accepting every one of them inside a fresh network namespace.

use std::path::PathBuf;

use twinwall_config::NodeView;
use twinwall_ruleset::{Options, compile, fixtures};
use twinwall_testkit::{Netns, require_root};

fn examples() -> Vec<(String, NodeView)> {
    vec![
        ("seed-pair.lj-fw-1".into(), fixtures::seed_pair("lj-fw-1")),
        ("seed-pair.lj-fw-2".into(), fixtures::seed_pair("lj-fw-2")),
        ("dual-stack.fw-a".into(), fixtures::dual_stack("fw-a")),
        ("dual-stack.fw-b".into(), fixtures::dual_stack("fw-b")),
    ]
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
        // The only finding on the examples is real: seed-pair defines `dns` and no rule
        // uses it. Anything else would be a false positive.
        let lints: Vec<String> = script.lints.iter().map(|l| l.to_string()).collect();
        let want: Vec<String> = if name.starts_with("seed-pair") {
            vec!["unused-object: service object `dns` is not used by any rule".into()]
        } else {
            vec![]
        };
        assert_eq!(lints, want, "{name}");
        let path = golden_dir().join(format!("{name}.nft"));
        if update {
            std::fs::write(&path, &script.text).unwrap();
            continue;
        }
        let want = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 creates it)", path.display()));
        if want != script.text {
            mismatched.push(name);
        }
    }
    assert!(
        mismatched.is_empty(),
        "compiled output differs from the golden files for {mismatched:?}; review, then UPDATE_GOLDEN=1"
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
