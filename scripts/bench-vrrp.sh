#!/usr/bin/env bash
# VRRP failover benchmark: twinwall and keepalived (the yardstick) on the same netns
# topology in the same run, at 100 ms and 10 ms adverts; prints medians, p95, ratios to
# keepalived and idle RSS. Needs root. BENCH_VRRP_RUNS (default 20) runs per case; see
# tests/netns_vrrp_bench.rs for the other knobs. Called by scripts/bench.sh (`make bench`).
set -euo pipefail
cd "$(dirname "$0")/.."
export BENCH_VRRP_RUNS="${BENCH_VRRP_RUNS:-20}"
cargo build --quiet --locked --release --bin twinwall
export TWINWALL_BIN="$PWD/target/release/twinwall"
cargo test --quiet --locked --test netns_vrrp_bench -- --ignored --nocapture --test-threads 1
