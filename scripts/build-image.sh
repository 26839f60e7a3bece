#!/usr/bin/env bash
# `make image`: builds the static twinwall binary and runs `twinwall image build`.
# Usage: scripts/build-image.sh [OUT_DIR] [extra `image build` flags, e.g. --trust KEY.pub]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-out}; shift || true
scripts/deps.sh image
# The appliance binary: glibc static (crt-static), its own --target dir so the host
# build's artifacts stay valid. It also runs on the build host, so it builds the image.
RUSTFLAGS="-C target-feature=+crt-static" \
  cargo build --release --locked --target x86_64-unknown-linux-gnu --bin twinwall
bin=target/x86_64-unknown-linux-gnu/release/twinwall
exec "$bin" image build --out "$out" --binary "$bin" "$@"
