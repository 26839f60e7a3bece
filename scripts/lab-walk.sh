#!/usr/bin/env bash
# The training commands of docs/lab.md, each run once against a real lab, as a trainer
# would type them: up, status, traffic, cut, heal, flap, console, scenario, down. Prints
# every command and its output (the record of a walk through the guide); exits non-zero
# at the first command that fails. The lab is taken down and its disks removed on exit.
# Usage: scripts/lab-walk.sh [IMAGE_DIR] (default out; `lab up --direct-kernel` unless
# GRUB=1). Env: TWINWALL (default target/debug/twinwall).
set -uo pipefail
cd "$(dirname "$0")/.."
image=${1:-out}
tw=${TWINWALL:-target/debug/twinwall}
dir=target/lab-walk-$$
export TWINWALL_LAB_DIR=$dir
trap '"$tw" lab down >/dev/null 2>&1; rm -rf "$dir"' EXIT
run() {
  echo "\$ twinwall $*"
  "$tw" "$@" 2>&1
  local rc=$?
  [ $rc -ne 0 ] && { echo "(exit $rc)"; exit 1; }
  echo
}
direct=--direct-kernel; [ "${GRUB:-}" = 1 ] && direct=
start=$(date +%s)
run lab up --image "$image" $direct
# The pair settles on its own: wait for one master with both VIPs and the client's flows.
for _ in $(seq 1 120); do
  "$tw" lab status 2>/dev/null | grep -q "SPLIT BRAIN" && { sleep 2; continue; }
  "$tw" lab scenario boot >/dev/null 2>&1 && break
  sleep 2
done
echo "(pair settled $(( $(date +%s) - start )) s after lab up)"
run lab status
run lab traffic --reset
run lab cut fw1:inside
sleep 3
run lab status
run lab traffic
run lab heal
sleep 5
run lab flap fw1:outside --times 3 --down-ms 300 --up-ms 300
sleep 5
run lab traffic --reset
echo "\$ twinwall lab console fw1 | tail -3"; "$tw" lab console fw1 | tail -3; echo
run lab scenario cut-master-inside
run lab down
trap 'rm -rf "$dir"' EXIT
echo "(walk done in $(( $(date +%s) - start )) s; load $(cut -d' ' -f1-3 /proc/loadavg))"
