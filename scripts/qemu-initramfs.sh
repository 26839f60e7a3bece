#!/usr/bin/env bash
# Builds a minimal initramfs -- a statically linked twinwall as /init plus the kernel
# modules it needs -- and boots it with the pinned Debian cloud kernel under QEMU (TCG),
# waiting for "twinwall: services up" on the serial console and a clean poweroff.
#
# usage: scripts/qemu-initramfs.sh [build|boot|all|node|panic]      (default: all)
#   all    build + boot without a config: fail-closed, no services (services=none)
#   node   build + boot node TWINWALL_QEMU_NODE (default lj-fw-1) of TWINWALL_QEMU_CONFIG
#          (default ../shared/examples/seed-pair.toml): a config disk (GPT partition
#          `config`, ext4: node, trusted key, sync key, signed bundle) and three isolated
#          virtio NICs (eth0-eth2 by PCI slot); the services really run and health reports
#   panic  build + boot with twinwall.test_panic=1: PID 1 must log the panic and reboot
# env:   TWINWALL_BIN        use this static twinwall instead of building one
#        TWINWALL_KERNEL_CACHE  kernel cache dir (default build/cache/kernel)
#        TWINWALL_QEMU_OUT   output dir (default build/qemu-init)
#        TWINWALL_QEMU_TIMEOUT  seconds to wait for the boot (default 60)
#        TWINWALL_QEMU_ACCEL tcg (default) or kvm (opt-in; KVM does not work on the CI machines)
#        TWINWALL_QEMU_APPEND extra kernel command line words
#        TWINWALL_QEMU_MACHINE  QEMU machine type (default q35: on the older `pc` (i440FX)
#                            machine the ACPI interrupt routing of each PCI device the kernel
#                            enables (QEMU's generated _PRT method, an AML loop over 128
#                            entries) made virtio_pci's probe cost 0.3-0.5 s per device under
#                            TCG; pci=noacpi or q35 remove it, see docs/init.md)
# Kernel command line: the options of the image's GRUB entry (image/src/grub.rs CMDLINE and
# BOOT_SPEED_OPTIONS, docs/init.md "Boot speed round 6: kernel") with a serial console only.
# Prints: the console log path and, after a boot, "measure: pid1_rss_kb=N services_up_ms=N".
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
mode=${1:-all}
# The image's speed-only options (image/src/grub.rs BOOT_SPEED_OPTIONS).
speed="noreplace-smp initcall_blacklist=init_kprobe_trace,crypto_kdf108_init"
# shellcheck source=../init/qemu/kernel.lock
. "$root/init/qemu/kernel.lock"
cache=${TWINWALL_KERNEL_CACHE:-$root/build/cache/kernel}
out=${TWINWALL_QEMU_OUT:-$root/build/qemu-init}
timeout_s=${TWINWALL_QEMU_TIMEOUT:-60}
accel=${TWINWALL_QEMU_ACCEL:-tcg}
machine=${TWINWALL_QEMU_MACHINE:-q35}
mkdir -p "$cache" "$out"

log() { echo "qemu-initramfs: $*" >&2; }
die() { log "error: $*"; exit 1; }

# --- kernel: from the cache, else apt-get download of the pinned package -------------
kernel_tree() {
  local vmlinuz
  # Tests run this script in parallel: one fills a cold cache while the others wait.
  exec 9>"$cache/.lock"
  flock 9
  vmlinuz=$(find "$cache" -path "*/boot/vmlinuz-$release" -not -path "*.tmp/*" 2>/dev/null | head -n1)
  if [ -z "$vmlinuz" ]; then
    local deb="$cache/${package}_${version}_amd64.deb"
    if [ ! -f "$deb" ]; then
      log "fetching $package=$version"
      # stdout of this function is the kernel tree's path: apt's chatter goes to stderr.
      (cd "$cache" && apt-get download "$package=$version" >&2 2>/dev/null) || {
        apt-get update -qq >&2
        (cd "$cache" && apt-get download "$package=$version" >&2)
      }
    fi
    echo "$sha256  $deb" | sha256sum -c --quiet - || die "$deb does not match the sha256 in init/qemu/kernel.lock"
    local dir="$cache/${package}_${version}"
    rm -rf "$dir.tmp" && mkdir -p "$dir.tmp"
    dpkg-deb -x "$deb" "$dir.tmp" && rm -rf "$dir" && mv "$dir.tmp" "$dir"
    vmlinuz="$dir/boot/vmlinuz-$release"
  fi
  flock -u 9
  [ -f "$vmlinuz" ] || die "no vmlinuz-$release in $cache"
  dirname "$(dirname "$vmlinuz")"
}

# --- the static binary -------------------------------------------------------------------
static_binary() {
  local bin=${TWINWALL_BIN:-}
  if [ -z "$bin" ]; then
    log "building static twinwall (release, crt-static)"
    (cd "$root" && RUSTFLAGS="-C target-feature=+crt-static" \
      cargo build --release --locked --target x86_64-unknown-linux-gnu --bin twinwall >&2)
    bin="$root/target/x86_64-unknown-linux-gnu/release/twinwall"
  fi
  [ -x "$bin" ] || die "$bin is not an executable"
  if ! file -L "$bin" | grep -Eq 'statically linked|static-pie linked'; then
    die "$bin is not statically linked: $(file -L "$bin")"
  fi
  local deps
  deps=$(ldd "$bin" 2>&1 || true)
  case "$deps" in
    *"not a dynamic executable"*|*"statically linked"*) ;;
    *) die "$bin has dynamic dependencies: $deps" ;;
  esac
  echo "$bin"
}

# Copies a kernel module without its appended signature (the image build does the same,
# image/src/modules.rs strip_signature): the kernel verifies an appended PKCS#7
# signature at every finit_module even when it does not enforce signatures, which is
# slow under TCG, and the module ships inside the image it was built into anyway. Layout:
# MODULE | SIGNATURE | 12-byte info (big-endian u32 sig_len last) | marker (28 bytes).
copy_unsigned() {
  local src=$1 dst=$2 size siglen
  cp "$src" "$dst"
  [ "$(tail -c 28 "$src")" = "~Module signature appended~" ] || return 0
  size=$(stat -c %s "$src")
  siglen=$(tail -c 32 "$src" | head -c 4 | od -An -tu1 | awk '{print $1*16777216 + $2*65536 + $3*256 + $4}')
  [ $((siglen + 40)) -lt "$size" ] || die "$src: malformed module signature (length $siglen)"
  truncate -s $((size - 40 - siglen)) "$dst"
}

build() {
  command -v cpio >/dev/null || die "cpio is missing (scripts/deps.sh image)"
  command -v depmod >/dev/null || die "depmod is missing (package kmod)"
  local ktree bin stage modroot
  ktree=$(kernel_tree) || exit 1
  bin=$(static_binary) || exit 1
  stage=$(mktemp -d "$out/stage.XXXXXX")
  # (No RETURN trap: it would also fire when the helper functions below return.)
  trap "rm -rf '$stage'" EXIT
  modroot="$ktree/lib/modules/$release"
  [ -f "$modroot/modules.dep" ] || depmod -b "$ktree" "$release"
  mkdir -p "$stage/lib/modules/$release" "$stage/dev" "$stage/proc" "$stage/sys" \
    "$stage/run" "$stage/tmp"
  # The kernel opens /dev/console for PID 1's stdio before any devtmpfs exists.
  mknod -m 600 "$stage/dev/console" c 5 1 || die "mknod /dev/console failed (needs root)"
  install -m 0755 "$bin" "$stage/init"
  # nft and its libraries from the host (Debian bookworm: the same nftables the image pins
  # in rootfs/packages.lock): the ruleset service runs it by name.
  local nft lib
  nft=$(command -v nft) || die "nft is missing (package nftables)"
  mkdir -p "$stage/usr/sbin"
  install -m 0755 "$nft" "$stage/usr/sbin/nft"
  for lib in $(ldd "$nft" | grep -o '/[^ ]*'); do
    mkdir -p "$stage$(dirname "$lib")"
    cp -L "$lib" "$stage$lib"
  done
  local list="$stage/lib/modules/twinwall.modules" m rel
  : >"$list"
  while read -r m; do
    case "$m" in ''|'#'*) continue ;; esac
    modprobe -d "$ktree" -S "$release" --show-depends "$m" | while read -r cmd path _; do
      [ "$cmd" = insmod ] || continue
      rel=${path#*/lib/modules/$release/}
      grep -qxF "$rel" "$list" && continue
      mkdir -p "$stage/lib/modules/$release/$(dirname "$rel")"
      copy_unsigned "$modroot/$rel" "$stage/lib/modules/$release/$rel"
      echo "$rel" >>"$list"
    done
  done <"$root/init/qemu/modules.txt"
  log "modules: $(tr '\n' ' ' <"$list")"
  # Uncompressed: under TCG the kernel's emulated gunzip of the ~21 MB archive cost more
  # boot time than QEMU's copy of the bigger file (docs/init.md: A/B of gzip -1 against
  # none, 1.1-2.2 s per pair at load 10). The image's initramfs is uncompressed too.
  (cd "$stage" && find . -print0 | cpio --null -o -H newc --quiet) >"$out/initramfs.cpio.tmp"
  rm -f "$out/initramfs.cpio.gz"  # the compressed archive of earlier runs
  mv "$out/initramfs.cpio.tmp" "$out/initramfs.cpio"
  rm -rf "$stage"
  cp "$ktree/boot/vmlinuz-$release" "$out/vmlinuz"
  log "built $out/initramfs.cpio ($(du -k "$out/initramfs.cpio" | cut -f1) KiB) and $out/vmlinuz"
}

boot() {
  command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 is missing"
  [ -f "$out/initramfs.cpio" ] || die "run '$0 build' first"
  local console="$out/console.log" append rc=0
  append="console=ttyS0 quiet panic=-1 cryptomgr.notests no_timer_check mitigations=off $speed twinwall.root=initramfs twinwall.services=none"
  append="$append twinwall.shutdown_when_up=poweroff ${TWINWALL_QEMU_APPEND:-}"
  log "booting (accel $accel, timeout ${timeout_s}s); console: $console"
  # An isolated hub port: the guest has a NIC to bring up, and no frame leaves QEMU.
  timeout "$timeout_s" qemu-system-x86_64 -accel "$accel" -machine "$machine" -m 512 -nographic -no-reboot \
    -kernel "$out/vmlinuz" -initrd "$out/initramfs.cpio" -append "$append" \
    -netdev hubport,id=n0,hubid=0 -device virtio-net-pci,netdev=n0 \
    </dev/null >"$console" 2>&1 || rc=$?
  grep -q "twinwall: services up" "$console" || { tail -n 40 "$console" >&2; die "no 'twinwall: services up' on the console (qemu exit $rc)"; }
  [ "$rc" -eq 0 ] || { tail -n 20 "$console" >&2; die "qemu exit $rc: no clean poweroff"; }
  grep -q "reboot: Power down" "$console" || die "no clean poweroff on the console"
  local m
  m=$(grep -o 'twinwall: rss_kb=[0-9]* uptime_ms=[0-9]*' "$console" | head -n1)
  echo "measure: pid1_rss_kb=$(echo "$m" | sed 's/.*rss_kb=\([0-9]*\).*/\1/') services_up_ms=$(echo "$m" | sed 's/.*uptime_ms=\([0-9]*\).*/\1/')"
}

# A raw disk with one GPT partition named `config` (ext4), filled like `twinwall flash`
# fills the image's: node, trusted/ops.pub, sync.key, bundles/active.bundle.
config_disk() {
  local bin=$1 cfg=$2 node=$3 dir=$out/config-disk
  rm -rf "$dir" && mkdir -p "$dir/part/trusted" "$dir/part/bundles"
  "$bin" key generate --out "$dir/ops" >/dev/null 2>&1 || die "key generate failed"
  "$bin" key sync --out "$dir/part/sync.key" >/dev/null 2>&1 || die "key sync failed"
  "$bin" bundle create --config "$cfg" --key "$dir/ops.key" --out "$dir/part/bundles/active.bundle" \
    >/dev/null 2>&1 || die "bundle create of $cfg failed"
  cp "$dir/ops.pub" "$dir/part/trusted/ops.pub"
  echo "$node" >"$dir/part/node"
  echo 0 >"$dir/part/installed-version"
  mke2fs -q -t ext4 -L config -d "$dir/part" "$dir/part.ext4" 16M || die "mke2fs failed"
  truncate -s 20M "$out/config.img"
  sgdisk -o -n 1:2048:+16M -c 1:config -t 1:8300 "$out/config.img" >/dev/null || die "sgdisk failed"
  dd if="$dir/part.ext4" of="$out/config.img" bs=1M seek=1 conv=notrunc status=none
}

boot_node() {
  [ -f "$out/initramfs.cpio" ] || die "run '$0 build' first"
  local bin cfg node console="$out/console.log" append rc=0
  bin=$(static_binary) || exit 1
  cfg=${TWINWALL_QEMU_CONFIG:-$root/../shared/examples/seed-pair.toml}
  node=${TWINWALL_QEMU_NODE:-lj-fw-1}
  config_disk "$bin" "$cfg" "$node"
  append="console=ttyS0 quiet panic=-1 cryptomgr.notests no_timer_check mitigations=off $speed twinwall.root=initramfs twinwall.peer_absent_after=5"
  append="$append twinwall.shutdown_when_healthy=poweroff ${TWINWALL_QEMU_APPEND:-}"
  log "booting node $node of $cfg (accel $accel, timeout ${timeout_s}s); console: $console"
  timeout "$timeout_s" qemu-system-x86_64 -accel "$accel" -machine "$machine" -m 512 -nographic -no-reboot \
    -kernel "$out/vmlinuz" -initrd "$out/initramfs.cpio" -append "$append" \
    -drive "file=$out/config.img,format=raw,if=virtio" \
    -netdev hubport,id=n0,hubid=0 -device virtio-net-pci,netdev=n0,addr=0x10,mac=52:54:00:77:00:00,romfile= \
    -netdev hubport,id=n1,hubid=1 -device virtio-net-pci,netdev=n1,addr=0x11,mac=52:54:00:77:00:01,romfile= \
    -netdev hubport,id=n2,hubid=2 -device virtio-net-pci,netdev=n2,addr=0x12,mac=52:54:00:77:00:02,romfile= \
    </dev/null >"$console" 2>&1 || rc=$?
  grep -q "twinwall: health: healthy" "$console" || { tail -n 60 "$console" >&2; die "no 'twinwall: health: healthy' on the console (qemu exit $rc)"; }
  [ "$rc" -eq 0 ] || { tail -n 20 "$console" >&2; die "qemu exit $rc: no clean poweroff"; }
  local m
  m=$(grep -o 'twinwall: rss_kb=[0-9]* uptime_ms=[0-9]*' "$console" | head -n1)
  echo "measure: pid1_rss_kb=$(echo "$m" | sed 's/.*rss_kb=\([0-9]*\).*/\1/') services_up_ms=$(echo "$m" | sed 's/.*uptime_ms=\([0-9]*\).*/\1/')"
}

boot_panic() {
  [ -f "$out/initramfs.cpio" ] || die "run '$0 build' first"
  local console="$out/console.log" rc=0
  log "booting with twinwall.test_panic=1 (accel $accel, timeout ${timeout_s}s); console: $console"
  # -no-reboot: the guest's reboot ends QEMU (exit 0).
  timeout "$timeout_s" qemu-system-x86_64 -accel "$accel" -machine "$machine" -m 512 -nographic -no-reboot \
    -kernel "$out/vmlinuz" -initrd "$out/initramfs.cpio" \
    -append "console=ttyS0 quiet panic=-1 no_timer_check mitigations=off $speed twinwall.root=initramfs twinwall.services=none twinwall.test_panic=1" \
    -net none </dev/null >"$console" 2>&1 || rc=$?
  grep -q "twinwall: PANIC in init: " "$console" || { tail -n 40 "$console" >&2; die "no panic line on the console (qemu exit $rc)"; }
  grep -q "reboot: Restarting system" "$console" || { tail -n 20 "$console" >&2; die "the panic did not reboot (qemu exit $rc)"; }
  if grep -q "Kernel panic" "$console"; then die "the kernel panicked: PID 1 exited"; fi
}

case "$mode" in
  build) build ;;
  boot) boot ;;
  all) build && boot ;;
  node) build && boot_node ;;
  panic) build && boot_panic ;;
  *) die "usage: $0 [build|boot|all|node|panic]" ;;
esac
