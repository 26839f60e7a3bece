#!/usr/bin/env bash
# Image benchmarks: warm rebuild time of `twinwall image build` (budget 60 s), slot squashfs
# size (budget 48 MB; Talos' squashfs is ~55 MB), ISO size (budget 64 MB). Yardstick in the
# same run: mksquashfs of the same root tree with xz, what live-build and most appliance
# builders use by default. Prints ratios. CPU time is printed too: the machine is shared.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh image >/dev/null
RUSTFLAGS="-C target-feature=+crt-static" \
  cargo build --release --locked --target x86_64-unknown-linux-gnu --bin twinwall >/dev/null 2>&1
bin=target/x86_64-unknown-linux-gnu/release/twinwall
out=build/bench/image-out
# Cold-ish first build fills the cache; the measured one is the warm rebuild.
"$bin" image build --out "$out" --binary "$bin" --work build/bench/image-work >/dev/null
t0=$(date +%s.%N); c0=$(awk '{print $14+$15+$16+$17}' /proc/$$/stat)
/usr/bin/time -f "%U %S" -o build/bench/image-time.txt \
  "$bin" image build --out "$out" --binary "$bin" --work build/bench/image-work --json > build/bench/image.json
t1=$(date +%s.%N)
read -r u s < build/bench/image-time.txt
wall=$(echo "$t1 - $t0" | bc)
slot=$(stat -c %s "$out/twinwall-slot.squashfs")
iso=$(stat -c %s "$out/twinwall.iso")
img=$(stat -c %s "$out/twinwall.img")
ys=$(mktemp -u /tmp/twinwall-bench-xz.XXXX)
t2=$(date +%s.%N)
/usr/bin/time -f "%U %S" -o build/bench/image-xz-time.txt \
  mksquashfs build/bench/image-work/root "$ys" -noappend -no-progress -quiet -all-root -no-xattrs -comp xz >/dev/null
t3=$(date +%s.%N)
read -r xu xs < build/bench/image-xz-time.txt
xz=$(stat -c %s "$ys"); rm -f "$ys"
twall=$(echo "$t3 - $t2" | bc)
# Our squashfs step alone, from the build's own step timings.
sq_step=$(python3 -c 'import json,sys; r=json.load(open("build/bench/image.json")); print([d["secs"]+d["nanos"]/1e9 for n,d in r["steps"] if "squashfs" in n][0])')
mb() { echo "scale=1; $1/1000000" | bc; }
ratio() { echo "scale=2; $1/$2" | bc; }
echo "warm rebuild:         ${wall} s wall, $(echo "$u + $s" | bc) s CPU   (budget 60 s: ratio $(ratio "$wall" 60))"
echo "slot squashfs:        $(mb "$slot") MB (budget 48 MB: ratio $(ratio "$slot" 48000000); Talos ~55 MB: ratio $(ratio "$slot" 55000000))"
echo "iso:                  $(mb "$iso") MB (budget 64 MB: ratio $(ratio "$iso" 64000000))"
echo "disk image:           $(mb "$img") MB (sparse file; partitions per docs/image.md)"
echo "squashfs step:        ${sq_step} s (gzip-6)"
echo "yardstick xz squashfs: ${twall} s wall, $(echo "$xu + $xs" | bc) s CPU, $(mb "$xz") MB"
echo "ratios vs xz:          size $(ratio "$slot" "$xz"), time $(ratio "$sq_step" "$twall")"
