//! The in-code fixtures are exactly what the config parser makes of the shared examples.

use std::path::PathBuf;

use twinwall_ruleset::fixtures;

fn shared_example(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/examples")
        .join(name)
}

#[test]
fn fixtures_match_the_parsed_examples() {
    for (file, node, fixture) in [
        ("seed-pair.toml", "lj-fw-1", fixtures::seed_pair("lj-fw-1")),
        ("seed-pair.toml", "lj-fw-2", fixtures::seed_pair("lj-fw-2")),
        ("dual-stack.toml", "fw-a", fixtures::dual_stack("fw-a")),
        ("dual-stack.toml", "fw-b", fixtures::dual_stack("fw-b")),
    ] {
        let cfg = twinwall_config::load(&shared_example(file)).unwrap_or_else(|d| panic!("{d}"));
        let view = cfg.node_view(node).unwrap();
        if view != fixture {
            let a = serde_json::to_string_pretty(&view).unwrap();
            let b = serde_json::to_string_pretty(&fixture).unwrap();
            for (i, (x, y)) in a.lines().zip(b.lines()).enumerate() {
                if x != y {
                    panic!("{file} {node}: line {i}: parsed `{x}` vs fixture `{y}`");
                }
            }
            panic!("{file} {node}: differ in length");
        }
    }
}
