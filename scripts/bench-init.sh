#!/usr/bin/env bash
# Boot time and PID 1 memory, several boots per variant, medians (numbers, not tests).
# Runs scripts/bench-boot.sh (minimal initramfs, minimal with a node's services, the full
# image flashed as lj-fw-1 under SeaBIOS) TWINWALL_BENCH_BOOTS times (default 3) and
# prints, per variant, the median guest uptime at "twinwall: services up" (budgets: 3 s
# minimal, 8 s full), the median PID 1 VmRSS (budget 4 MB) and the median of each boot
# phase (and of the kernel's spans, see bench-boot.sh), with the machine's load average
# before and after (the machine is shared: TCG
# times scale with it). The images it built and flashed are removed at the end.
#
# usage: scripts/bench-init.sh        env: TWINWALL_BENCH_BOOTS (default 3)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
boots=${TWINWALL_BENCH_BOOTS:-3}
log=$(mktemp)
# The images bench-boot.sh built and flashed are rebuilt on every run: do not keep them.
trap 'rm -f "$log" build/bench/boot/*.img; rm -rf build/bench/boot/out build/bench/boot/image-work' EXIT
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
TWINWALL_BENCH_BOOTS=$boots scripts/bench-boot.sh | tee "$log"
echo "load after:  $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "medians over $boots boots:"
awk '
  function median(key,   n, i, j, t, a) {
    n = split(vals[key], a, " ")
    for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
    return n ? a[int((n + 1) / 2)] : "-"
  }
  /services up at/ {
    v = $0; sub(/ #[0-9]+:.*/, "", v); cur = v
    if (!(v in seen)) { seen[v] = 1; order[++nv] = v }
    up = $0; sub(/.*services up at /, "", up); sub(/ ms.*/, "", up)
    rss = $0; sub(/.*VmRSS /, "", rss); sub(/ kB.*/, "", rss)
    vals[v "|up"] = vals[v "|up"] " " up; vals[v "|rss"] = vals[v "|rss"] " " rss
  }
  /^  (phase|span) / && cur != "" {
    k = cur "|phase " $2
    if (!(k in pseen)) { pseen[k] = 1; phases[cur] = phases[cur] " " $2 }
    vals[k] = vals[k] " " $3
  }
  END {
    for (i = 1; i <= nv; i++) {
      v = order[i]
      printf "%s: services up %s ms, PID 1 VmRSS %s kB\n", v, median(v "|up"), median(v "|rss")
      n = split(phases[v], p, " ")
      for (j = 1; j <= n; j++) printf "    %-13s %8s ms\n", p[j], median(v "|phase " p[j])
    }
  }' "$log"
