#!/usr/bin/env bash
# Boot benchmarks under QEMU TCG (numbers, not tests): kernel start to "twinwall: services
# up" for the minimal initramfs (budget 3 s) and for the full image flashed as lj-fw-1 of
# the seed pair with three NICs (budget 8 s), PID 1 RSS at that point (budget 4 MB), and
# where the time goes: the kernel's own time to reach init (the yardstick in the same
# run: what no init can save), each boot phase's duration as init logs it, and the
# slowest module loads. "span kernel" is guest uptime 0 to PID 1's first line; for the
# full image "span pre-uptime" is the host time from QEMU's start to the guest's uptime 0,
# which no uptime figure contains (docs/init.md, "Boot speed round 6: kernel").
#
# usage: scripts/bench-boot.sh        env: TWINWALL_BENCH_BOOTS (default 1 per variant)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
boots=${TWINWALL_BENCH_BOOTS:-1}
work=build/bench/boot
mkdir -p "$work"
RUSTFLAGS="-C target-feature=+crt-static" \
  cargo build --release --locked --target x86_64-unknown-linux-gnu --bin twinwall >/dev/null 2>&1
bin=$root/target/x86_64-unknown-linux-gnu/release/twinwall

# Prints the figures of one console log; PRE, when given, is the host's milliseconds from
# QEMU's start to the guest's uptime 0.
report() {
  local name=$1 log=$2 pre=${3:-} up rss anon phases idle
  up=$(grep -a -o 'twinwall: rss_kb=[0-9]* uptime_ms=[0-9]*' "$log" | head -n1 | sed 's/.*uptime_ms=//' || true)
  rss=$(grep -a -o 'twinwall: rss_kb=[0-9]*' "$log" | head -n1 | sed 's/.*rss_kb=//' || true)
  anon=$(grep -a -o 'anon_kb=[0-9]* file_kb=[0-9]* shmem_kb=[0-9]*' "$log" | head -n1 || true)
  [ -n "$up" ] || { echo "$name: no 'services up' in $log"; return 0; }
  # Init's phases up to "services up" (the services phase is the supervisor's start-up).
  # late-modules runs after services up: not part of the path to it.
  phases=$(sed 's/\x1b\[[0-9;]*m//g' "$log" | grep -a -o 'phase done phase="[a-z-]*" duration_us=[0-9]*' |
    sed 's/phase done phase="\([a-z-]*\)" duration_us=\([0-9]*\)/\1 \2/' | grep -v '^late-modules ' || true)
  local sum
  sum=$(echo "$phases" | awk '{s+=$2} END {printf "%d", s/1000}')
  local svc_start svc_up
  svc_start=$(sed 's/\x1b\[[0-9;]*m//g' "$log" | grep -a -m1 'service started' | cut -c1-27 || true)
  svc_up=$(sed 's/\x1b\[[0-9;]*m//g' "$log" | grep -a -m1 ' services up' | cut -c1-27 || true)
  local svc_ms=0
  if [ -n "$svc_start" ] && [ -n "$svc_up" ]; then
    svc_ms=$(( ($(date -d "$svc_up" +%s%N) - $(date -d "$svc_start" +%s%N)) / 1000000 ))
  fi
  idle=$(grep -a -o 'shmem_kb=[0-9]* idle_ms=[0-9]*' "$log" | head -n1 | sed 's/.*idle_ms=//' || true)
  echo "$name: services up at ${up} ms guest uptime; PID 1 VmRSS ${rss} kB ($anon); vCPU idle until then ${idle:-?} ms"
  echo "  boot phases before services: ${sum} ms; services start-up (first start to all ready): ${svc_ms} ms;"
  echo "  so kernel + firmware-less rest (the yardstick no init can save): ~$((up - sum - svc_ms)) ms"
  # The kernel's part: guest uptime 0 to PID 1's first line = uptime at services up minus
  # init's own span from its first line to services up (both on the guest's clock).
  local first
  # (grep -o: on a minimal boot the firmware's screen-clearing escapes precede that line.)
  first=$(sed 's/\x1b\[[0-9;]*m//g' "$log" | grep -a -m1 'phase start phase="early"' |
    grep -a -o '20[0-9][0-9]-[0-9-]*T[0-9:.]*Z' | head -n1 || true)
  if [ -n "$first" ] && [ -n "$svc_up" ]; then
    local f_ns u_ns
    f_ns=$(date -d "$first" +%s%N 2>/dev/null || true)
    u_ns=$(date -d "$svc_up" +%s%N 2>/dev/null || true)
    if [ -n "$f_ns" ] && [ -n "$u_ns" ]; then
      echo "  span kernel $((up - (u_ns - f_ns) / 1000000)) ms (guest uptime 0 to init's first line)"
    fi
  fi
  [ -z "$pre" ] || echo "  span pre-uptime $pre ms (QEMU start to guest uptime 0: firmware, GRUB and its 1 s menu, loading and decompressing the kernel; not in the uptime)"
  echo "$phases" | awk -v n="$name" 'NF==2 {printf "  phase %-13s %7.1f ms\n", $1, $2/1000}'
  sed 's/\x1b\[[0-9;]*m//g' "$log" | grep -a -o 'slowest: [^"]*' | sed "s/^/  modules /" | cut -c1-160 || true
}

for i in $(seq "$boots"); do
  TWINWALL_BIN=$bin TWINWALL_QEMU_OUT=$work/minimal TWINWALL_QEMU_TIMEOUT=400 \
    scripts/qemu-initramfs.sh all >/dev/null 2>&1 || echo "minimal boot $i failed"
  report "minimal (fail-closed, services=none) #$i" "$work/minimal/console.log"
  TWINWALL_BIN=$bin TWINWALL_QEMU_OUT=$work/node TWINWALL_QEMU_TIMEOUT=400 \
    scripts/qemu-initramfs.sh node >/dev/null 2>&1 || echo "minimal node boot $i failed"
  report "minimal node lj-fw-1 (services running) #$i" "$work/node/console.log"
done

# The full image, flashed for lj-fw-1.
"$bin" image build --out "$work/out" --binary "$bin" --work "$work/image-work" >/dev/null 2>&1
rm -f "$work/ops.key" "$work/ops.pub" "$work/sync.key"
"$bin" key generate --out "$work/ops" >/dev/null 2>&1
"$bin" bundle create --config ../shared/examples/seed-pair.toml --key "$work/ops.key" \
  --out "$work/seed.bundle" >/dev/null 2>&1
for i in $(seq "$boots"); do
  "$bin" flash "$work/out/twinwall.img" "$work/fw1.img" --node lj-fw-1 --bundle "$work/seed.bundle" \
    --trust "$work/ops.pub" --sync-key "$work/sync.key" >/dev/null 2>&1
  log=$work/full.console.log stamped=$work/full.console.stamped
  nics=()
  for n in 0 1 2; do
    nics+=(-netdev "hubport,id=n$n,hubid=$n"
      -device "virtio-net-pci,netdev=n$n,addr=0x1$n,mac=52:54:00:77:00:0$n,romfile=")
  done
  # Stopped once the health report is out (or after the failure guard). Every console
  # line is stamped with the host's time (bash's EPOCHREALTIME, no fork per line), which
  # shows the time before the guest's clock starts.
  rm -f "$work/qemu.pid"
  t0=$EPOCHREALTIME
  timeout 400 qemu-system-x86_64 -accel tcg -machine q35 -m 768 -nographic -display none -serial stdio \
    -monitor none -no-reboot -pidfile "$work/qemu.pid" -drive "file=$work/fw1.img,format=raw,if=virtio" \
    "${nics[@]}" </dev/null 2>&1 |
    while IFS= read -r line; do printf '%s %s\n' "$EPOCHREALTIME" "$line"; done >"$stamped" 2>/dev/null &
  q=$!
  for _ in $(seq 400); do
    grep -aq 'twinwall: health: ' "$stamped" && break
    kill -0 "$q" 2>/dev/null || break
    sleep 1
  done
  [ -f "$work/qemu.pid" ] && kill "$(cat "$work/qemu.pid")" 2>/dev/null || true
  wait "$q" 2>/dev/null || true
  cut -d' ' -f2- "$stamped" >"$log"
  pre=$(awk -v t0="$t0" '/twinwall: rss_kb=/ { match($0, /uptime_ms=[0-9]+/)
    printf "%d", ($1 - t0) * 1000 - substr($0, RSTART + 10, RLENGTH - 10); exit }' "$stamped")
  rm -f "$stamped"
  report "full image lj-fw-1 (SeaBIOS) #$i" "$log" "$pre"
done
echo "machine: $(nproc) cores shared, load $(cut -d' ' -f1-3 /proc/loadavg)"
