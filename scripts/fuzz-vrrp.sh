#!/usr/bin/env bash
# Fuzzes the VRRPv3 decoder (services/vrrp/fuzz, target `decode`) for FUZZ_SECONDS
# (default 60). Uses cargo-fuzz when installed; otherwise builds the same libFuzzer
# target with the nightly toolchain and the flags cargo-fuzz would pass.
set -euo pipefail
cd "$(dirname "$0")/../services/vrrp/fuzz"
secs="${FUZZ_SECONDS:-60}"
mkdir -p corpus/decode artifacts/decode
if cargo +nightly fuzz --version >/dev/null 2>&1; then
  exec cargo +nightly fuzz run decode corpus/decode -- -max_total_time="$secs"
fi
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Zsanitizer=address"
cargo +nightly build --release --bin decode --target x86_64-unknown-linux-gnu
exec target/x86_64-unknown-linux-gnu/release/decode -artifact_prefix=artifacts/decode/ \
  -max_total_time="$secs" corpus/decode
