#!/usr/bin/env bash
# Boots the lab N times in a row and runs scenarios against each boot, to catch
# intermittent failures: `scripts/lab-soak.sh [N] [SCENARIO...]` (default 8 runs of
# `boot`). Each run has its own run directory under target/lab-soak/RUN; a passing run's
# directory is removed, a failing one keeps its consoles, daemon log, agent stats and
# reports (its VM disks are removed either way). Prints one line per run and
# "N passed, M failed" at the end; exits 1 if any run failed.
# Env: TWINWALL_LAB_IMAGE (default target/out-lab, else out), TWINWALL (the binary).
set -uo pipefail
cd "$(dirname "$0")/.."
runs=${1:-8}; shift || true
scenarios=("$@"); [ ${#scenarios[@]} -gt 0 ] || scenarios=(boot)
image=${TWINWALL_LAB_IMAGE:-target/out-lab}; [ -e "$image/twinwall.img" ] || image=out
tw=${TWINWALL:-target/debug/twinwall}
base=target/lab-soak
mkdir -p "$base"
passed=0; failed=0
for i in $(seq 1 "$runs"); do
  dir="$base/run-$$-$i"
  start=$(date +%s)
  ok=1
  if ! "$tw" lab up --image "$image" --run-dir "$dir" >"$dir.up.log" 2>&1; then
    ok=0
  else
    for s in "${scenarios[@]}"; do
      if ! "$tw" lab scenario "$s" --run-dir "$dir" >>"$dir.up.log" 2>&1; then ok=0; break; fi
    done
    [ $ok = 1 ] || "$tw" lab traffic --json --run-dir "$dir" >"$dir/traffic.json" 2>&1
    [ $ok = 1 ] || "$tw" lab status --json --run-dir "$dir" >"$dir/status.json" 2>&1
    "$tw" lab down --run-dir "$dir" >/dev/null 2>&1
  fi
  find "$dir" \( -name '*.img' -o -name '*.qcow2' \) -delete 2>/dev/null
  took=$(( $(date +%s) - start ))
  if [ $ok = 1 ]; then
    passed=$((passed + 1)); rm -rf "$dir" "$dir.up.log"
    echo "run $i: ok (${took} s)"
  else
    failed=$((failed + 1)); mv "$dir.up.log" "$dir/" 2>/dev/null
    echo "run $i: FAILED (${took} s), kept $dir: $(tail -n 3 "$dir/up.log" 2>/dev/null | tr '\n' ' ')"
  fi
done
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
