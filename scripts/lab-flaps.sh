#!/usr/bin/env bash
# How often a TCG-starved master lets its backup take over, per QEMU variant, the
# variants alternating in one run so they share the machine's load. Each boot runs
# tests/lab_flaps.rs (ignored test): fw1 + fw2 of the seed pair, one master, then the wire
# watched for WATCH seconds: the backup's takeovers, the master's longest interval
# between two adverts (100 ms when nothing is starved), boot to one master.
# Usage: scripts/lab-flaps.sh [RUNS] [VARIANT...]; a variant is a comma list of
# machine=pc|q35 and nice=N (default variants: "machine=pc" "machine=q35").
# Env: WATCH (seconds, default 120), TWINWALL_LAB_IMAGE (default target/image-test/out
# when built, else each test process builds the image once).
set -uo pipefail
cd "$(dirname "$0")/.."
runs=${1:-2}; shift || true
variants=("$@"); [ ${#variants[@]} -eq 0 ] && variants=("machine=pc" "machine=q35")
[ -z "${TWINWALL_LAB_IMAGE:-}" ] && [ -e target/image-test/out/twinwall.img ] &&
  export TWINWALL_LAB_IMAGE=$PWD/target/image-test/out
export TWINWALL_LAB_WATCH_SECS=${WATCH:-120}
cargo test --locked --test lab_flaps --no-run >/dev/null 2>&1 || { echo "build failed"; exit 1; }
declare -A lines
for i in $(seq 1 "$runs"); do
  for v in "${variants[@]}"; do
    machine=""; nice=""
    IFS=, read -ra kv <<<"$v"
    for p in "${kv[@]}"; do
      case $p in machine=*) machine=${p#machine=} ;; nice=*) nice=${p#nice=} ;; esac
    done
    out=$(TWINWALL_LAB_MACHINE=$machine TWINWALL_LAB_NICE=$nice \
      cargo test --locked --test lab_flaps -- --ignored --nocapture 2>&1)
    line=$(grep '^flaps:' <<<"$out")
    [ -z "$line" ] && { echo "run $i $v: failed"; tail -5 <<<"$out"; continue; }
    echo "run $i $v: ${line#flaps: }"
    lines[$v]+="$line"$'\n'
  done
done
for v in "${variants[@]}"; do
  t=$(grep -o 'takeovers [0-9]*' <<<"${lines[$v]:-}" | awk '{s+=$2} END {print s+0}')
  g=$(grep -o 'interval [0-9]*' <<<"${lines[$v]:-}" | awk '{print $2}' | sort -n | tr '\n' ' ')
  b=$(grep -o 'master [0-9.]* s' <<<"${lines[$v]:-}" | awk '{print $2}' | sort -n | tr '\n' ' ')
  echo "$v: backup takeovers $t in all; master's longest advert interval per run (ms): $g; boot to one master (s): $b"
done
