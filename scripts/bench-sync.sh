#!/usr/bin/env bash
# Conntrack sync benchmark (root): twinwall sync vs Debian's conntrackd (FTFW/UDP) in the
# same run on the same netns topology. 100k entries injected on the master until the peer
# holds them, commit of 100k on takeover, RSS at 100k, bytes on the wire per entry, and a
# failover of 1,000 long-lived echo flows (longest / median echo gap).
# ENTRIES=N FLOWS=N override the sizes.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh test >/dev/null
cargo build --release --locked --quiet --bin twinwall
cargo build --release --locked --quiet -p twinwall-sync --example bench_sync
exec target/release/examples/bench_sync "$PWD/target/release/twinwall" "${ENTRIES:-100000}" "${FLOWS:-1000}"
