#!/usr/bin/env bash
# Installs the Debian packages twinwall needs at build or test time, only when missing.
# Usage: scripts/deps.sh test|image|all
set -euo pipefail
want=(nftables conntrack iproute2 iputils-ping)
case "${1:-all}" in
  test) want+=(conntrackd keepalived socat) ;;
  image) want+=(qemu-system-x86 grub-pc-bin grub-efi-amd64-bin grub-common xorriso mtools
                squashfs-tools ovmf kmod cpio gdisk dosfstools file) ;;
  all) want+=(conntrackd keepalived socat qemu-system-x86 grub-pc-bin grub-efi-amd64-bin grub-common
              xorriso mtools squashfs-tools ovmf kmod cpio gdisk dosfstools file) ;;
esac
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
