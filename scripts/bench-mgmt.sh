#!/usr/bin/env bash
# mgmt benchmarks: push-to-enforced on a netns pair vs. bare `nft -f` of the same scripts,
# and a 48 MiB OS update into a slot file vs. `dd conv=fsync` + `sha256sum`; medians and
# ratios. Needs root. BENCH_MGMT_RUNS (default 5) runs per case. Called by
# scripts/bench.sh (`make bench`); see tests/mgmt_bench.rs.
set -euo pipefail
cd "$(dirname "$0")/.."
export BENCH_MGMT_RUNS="${BENCH_MGMT_RUNS:-5}"
cargo build --quiet --locked --release --bin twinwall
export TWINWALL_BIN="$PWD/target/release/twinwall"
cargo test --quiet --locked --test mgmt_bench -- --ignored --nocapture --test-threads 1
