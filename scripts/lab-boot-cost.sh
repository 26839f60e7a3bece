#!/usr/bin/env bash
# What booting the lab firewalls through firmware + GRUB from their disks costs, next to
# the yardstick in the same run: the same two firewalls booted straight into slot A's
# kernel (`lab up --direct-kernel`). Per run and mode: from `lab up` returning (disks
# flashed, QEMU started) until both consoles show "twinwall: services up" (and, with
# GRUB, until GRUB's "twinwall: grub chose slot": the firmware's share).
# Usage: scripts/lab-boot-cost.sh [RUNS] (default 2; modes alternate). Prints one line
# per boot and the medians with their ratio. Env: TWINWALL_LAB_IMAGE (default
# target/out-lab, else out), TWINWALL (default target/debug/twinwall).
set -uo pipefail
cd "$(dirname "$0")/.."
runs=${1:-2}
image=${TWINWALL_LAB_IMAGE:-target/out-lab}; [ -e "$image/twinwall.img" ] || image=out
tw=${TWINWALL:-target/debug/twinwall}
base=target/lab-boot-cost-$$
mkdir -p "$base"
trap '"$tw" lab down --run-dir "$base/run" >/dev/null 2>&1; rm -rf "$base"' EXIT
now() { date +%s.%N; }
# seconds until FILE contains MARKER (or 600 s: prints "timeout")
until_marker() {
  local start=$1 file=$2 marker=$3
  while ! grep -qa "$marker" "$file" 2>/dev/null; do
    if (( $(echo "$(now) - $start > 600" | bc) )); then echo timeout; return; fi
    sleep 0.2
  done
  echo "$(now) - $start" | bc
}
declare -A total; grubat=
for i in $(seq 1 "$runs"); do
  for mode in grub direct; do
    flag=""; [ $mode = direct ] && flag="--direct-kernel"
    dir="$base/run"
    rm -rf "$dir"
    if ! "$tw" lab up --image "$image" --run-dir "$dir" --only fw1,fw2 $flag >"$base/up.log" 2>&1; then
      echo "lab up failed ($mode):"; tail -5 "$base/up.log"; exit 1
    fi
    start=$(now)
    k1=0; [ $mode = grub ] && k1=$(until_marker "$start" "$dir/fw1/console.log" "twinwall: grub chose slot")
    s1=$(until_marker "$start" "$dir/fw1/console.log" "twinwall: services up")
    s2=$(until_marker "$start" "$dir/fw2/console.log" "twinwall: services up")
    "$tw" lab down --run-dir "$dir" >/dev/null 2>&1
    find "$dir" \( -name '*.img' -o -name '*.qcow2' \) -delete 2>/dev/null
    printf "run %d %-6s GRUB chose its slot after %5.1f s; services up: fw1 %6.1f s, fw2 %6.1f s\n" \
      "$i" "$mode" "$k1" "$s1" "$s2"
    total[$mode]+="$s1 $s2 "; [ $mode = grub ] && grubat+="$k1 "
  done
done
median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
g=$(echo "${total[grub]}" | median); d=$(echo "${total[direct]}" | median)
gk=$(echo "$grubat" | median)
echo "median services up: GRUB ${g} s, direct ${d} s, ratio $(echo "scale=2; $g / $d" | bc); GRUB chose its slot after ${gk} s (load $(cut -d' ' -f1-3 /proc/loadavg))"
