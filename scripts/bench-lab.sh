#!/usr/bin/env bash
# The lab switch's per-frame cost (core decision, loopback round trip through the switch
# against plain loopback UDP in the same run, burst rate). Part of `make bench`.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo run --quiet --release --locked -p twinwall-lab --example switch_bench
