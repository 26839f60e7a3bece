#!/usr/bin/env bash
# `make bench`: runs every scripts/bench-*.sh (each compares twinwall with its yardstick in
# the same run and prints ratios) and keeps their output under build/bench/.
# BENCH=name1,name2 limits the run to some of them (e.g. BENCH=config,ruleset).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p build/bench
cargo build --release --locked --bin twinwall
status=0
for b in scripts/bench-*.sh; do
  name=$(basename "$b" .sh); name=${name#bench-}
  if [ -n "${BENCH:-}" ] && [[ ",$BENCH," != *",$name,"* ]]; then continue; fi
  echo "=== bench: $name"
  if ! bash "$b" 2>&1 | tee "build/bench/$name.txt"; then
    echo "bench $name FAILED" >&2; status=1
  fi
done
exit $status
