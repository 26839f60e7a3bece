#!/usr/bin/env bash
# Benchmark: `twinwall config check` of a generated config with 10,000 rules and 50,000
# objects (target: under 1 s), next to a yardstick measured in the same run: Python's
# tomllib merely parsing the same file (no validation). Prints seconds, peak RSS and the
# ratio to the yardstick.
#
# usage: scripts/bench-config.sh [RULES] [OBJECTS] [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
rules=${1:-10000}
objects=${2:-50000}
runs=${3:-5}

cargo build --release --locked --quiet --bin twinwall
bin=target/release/twinwall
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cfg="$work/large.toml"
python3 scripts/gen-config.py --rules "$rules" --objects "$objects" --out "$cfg"
size=$(stat -c %s "$cfg")
echo "config: $rules rules, $objects objects, $size bytes"

# measure NAME CMD...: best wall-clock seconds and best CPU seconds (user + sys) of $runs
# runs, and the peak RSS (KiB). CPU time is printed too because on a shared, loaded
# machine wall-clock time mostly measures the other processes.
measure() {
  local name=$1; shift
  local best="" cpu="" rss=0
  for _ in $(seq "$runs"); do
    local t0 t1 el c r
    t0=$(date +%s.%N)
    /usr/bin/time -f '%U %S %M' -o "$work/time" "$@" >/dev/null 2>"$work/err" || {
      echo "$name failed:" >&2; cat "$work/err" >&2; exit 1; }
    t1=$(date +%s.%N)
    el=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.6f", b - a }')
    if [ -z "$best" ] || awk -v e="$el" -v b="$best" 'BEGIN { exit !(e < b) }'; then best=$el; fi
    read -r u s r < <(tail -n1 "$work/time")
    c=$(awk -v u="$u" -v s="$s" 'BEGIN { printf "%.2f", u + s }')
    if [ -z "$cpu" ] || awk -v e="$c" -v b="$cpu" 'BEGIN { exit !(e < b) }'; then cpu=$c; fi
    [ "$r" -gt "$rss" ] && rss=$r
  done
  printf '%s %.3f %.2f %d\n' "$name" "$best" "$cpu" "$rss"
}

read -r _ tw_s tw_cpu tw_rss < <(measure twinwall "$bin" config check "$cfg")
read -r _ py_s py_cpu py_rss < <(measure tomllib python3 -c 'import sys, tomllib; tomllib.load(open(sys.argv[1], "rb"))' "$cfg")

echo "load average: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores (best of $runs runs)"
printf 'twinwall config check : %6.3f s wall  %5.2f s CPU  peak RSS %6d KiB\n' "$tw_s" "$tw_cpu" "$tw_rss"
printf 'yardstick tomllib.load: %6.3f s wall  %5.2f s CPU  peak RSS %6d KiB\n' "$py_s" "$py_cpu" "$py_rss"
awk -v a="$tw_s" -v b="$py_s" -v c="$tw_cpu" -v d="$py_cpu" -v e="$tw_rss" -v f="$py_rss" \
  'BEGIN { printf "ratio (twinwall / yardstick): wall %.2f, CPU %.2f, RSS %.2f\n", a / b, (d > 0 ? c / d : 0), e / f }'
if awk -v a="$tw_s" 'BEGIN { exit !(a < 1) }'; then
  echo "target < 1 s: met (wall)"
elif awk -v a="$tw_cpu" 'BEGIN { exit !(a < 1) }'; then
  echo "target < 1 s: met in CPU time, missed in wall time (see the load above)"
else
  echo "target < 1 s: MISSED"
fi
