#!/usr/bin/env bash
# Installs the Debian packages twinwall needs at build or test time, only when missing.
# The tests boot QEMU guests and build images too, so `test` and `image` need the same set.
# Usage: scripts/deps.sh [test|image|all]
set -euo pipefail
want=(
  nftables conntrack iproute2 iputils-ping iptables        # the firewall and its yardsticks
  conntrackd keepalived socat python3 time bc              # peers, traffic and measurement
  qemu-system-x86 ovmf                                      # the lab and boot tests (TCG)
  grub-pc-bin grub-efi-amd64-bin grub-common xorriso mtools # boot loader, ISO, ESP
  squashfs-tools kmod cpio gdisk dosfstools e2fsprogs file  # slot images, modules, disks
)
missing=()
for p in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "deps: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
