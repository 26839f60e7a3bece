//! Where twinwall's own share of `ruleset apply` goes, phase by phase, for one config
//! file: TOML parse + validation, the node view, the lints, the nft text. Run by
//! `scripts/bench-ruleset.sh`; prints the best of N runs of each phase in milliseconds.
//!
//! Usage: `bench_compile FILE NODE [RUNS]`.

use std::time::{Duration, Instant};

use twinwall_ruleset::{Options, compile, lint};

fn best<T>(runs: usize, mut f: impl FnMut() -> T) -> (Duration, T) {
    let mut best = Duration::MAX;
    let mut last = None;
    for _ in 0..runs {
        let t = Instant::now();
        let v = f();
        best = best.min(t.elapsed());
        last = Some(v);
    }
    (best, last.expect("runs >= 1"))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, file, node, rest @ ..] = args.as_slice() else {
        eprintln!("usage: bench_compile FILE NODE [RUNS]");
        std::process::exit(2);
    };
    let runs: usize = rest
        .first()
        .and_then(|r| r.parse().ok())
        .unwrap_or(5)
        .max(1);
    let path = std::path::Path::new(file);
    let (t_load, cfg) = best(runs, || {
        twinwall_config::load(path).unwrap_or_else(|d| panic!("{d}"))
    });
    let (t_view, view) = best(runs, || cfg.node_view(node).expect("node"));
    let (t_lint, lints) = best(runs, || lint(&view));
    let no_lints = Options {
        skip_lints: true,
        ..Options::default()
    };
    let (t_emit, script) = best(runs, || compile(&view, &no_lints).expect("compile"));
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "load+validate {:.1} ms  view {:.1} ms  lints {:.1} ms ({} findings)  emit {:.1} ms ({} nft rules, {} bytes)  total {:.1} ms",
        ms(t_load),
        ms(t_view),
        ms(t_lint),
        lints.len(),
        ms(t_emit),
        script.rule_count,
        script.text.len(),
        ms(t_load + t_view + t_lint + t_emit)
    );
}
