#!/usr/bin/env bash
# Bundle benchmark: stream-verify a 50 MiB OS-update bundle, side by side with sha256sum
# (the yardstick) over the same file in the same run; prints ratios. Called by
# scripts/bench.sh (`make bench`); BUNDLE_BENCH_MIB changes the size.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo run --quiet --locked --release -p twinwall-bundle --example bench_verify -- "${BUNDLE_BENCH_MIB:-50}"
