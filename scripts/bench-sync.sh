#!/usr/bin/env bash
# Conntrack sync benchmark (root): twinwall sync vs Debian's conntrackd (FTFW/UDP) in the
# same run on the same netns topology. 100k entries injected on the master until the peer
# holds them, commit of 100k on takeover, RSS at 100k, bytes on the wire per entry, and a
# failover of 1,000 long-lived echo flows (longest / median echo gap), by hand and with
# VRRP in the loop (twinwall sync + vrrp vs keepalived + conntrackd, same ruleset).
# ENTRIES=N FLOWS=N override the sizes.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh test >/dev/null
cargo build --release --locked --quiet --bin twinwall
cargo build --release --locked --quiet -p twinwall-sync --example bench_sync --example bench_codec
# the codec decision (docs/sync.md): our ctnetlink decoder vs netlink-packet-netfilter 0.4
target/release/examples/bench_codec "${ENTRIES:-100000}"
# the floor: a batched commit into an empty namespace, with and without an event listener
RAW_ONLY=1 target/release/examples/bench_sync - "${ENTRIES:-100000}"
# VRRP in the loop on the seed-pair lab: both stacks, 100 ms and 10 ms adverts, +100k idle
VRRP_ONLY=1 target/release/examples/bench_sync "$PWD/target/release/twinwall" "${ENTRIES:-100000}" "${FLOWS:-1000}"
# replication with the injector ahead of every process (as packets are): can the daemons
# keep up with the kernel rather than with an injector starved by the machine's load?
INJECT_RT=1 target/release/examples/bench_sync "$PWD/target/release/twinwall" "${ENTRIES:-100000}" 0
exec target/release/examples/bench_sync "$PWD/target/release/twinwall" "${ENTRIES:-100000}" "${FLOWS:-1000}"
