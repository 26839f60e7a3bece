#!/usr/bin/env bash
# `make fuzz`: runs each cargo-fuzz target for a bounded time (FUZZ_SECONDS each,
# default 60) on a corpus seeded from the example configs and a sample bundle.
# Not part of `make test`. Installs cargo-fuzz from crates.io when missing. cargo-fuzz
# needs a nightly compiler; without a nightly toolchain RUSTC_BOOTSTRAP=1 lets stable
# accept the nightly-only sanitizer flags.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${FUZZ_SECONDS:-60}"
targets=(${FUZZ_TARGETS:-bundle_parse config_load})

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz" >&2
  cargo install cargo-fuzz --version 0.13.2 --locked
fi
toolchain=()
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  toolchain=(+nightly)
else
  export RUSTC_BOOTSTRAP=1
fi

# Seeds: every example config, and config bundles signed by the fixed fuzz test key:
# the ed25519 seed of 32 bytes 0x42 that fuzz_targets/bundle_parse.rs trusts. It is a
# public test key, written here rather than committed (the repo ignores *.key files).
mkdir -p fuzz/corpus/bundle_parse fuzz/corpus/config_load fuzz/target
testkey=fuzz/target/fuzz-test.key
printf 'twinwall-ed25519-secret-v1 %s\n' "$(printf 'B%.0s' {1..32} | base64 -w0)" > "$testkey"
chmod 600 "$testkey"
for f in ../shared/examples/*.toml examples/*.toml; do
  [ -f "$f" ] && cp "$f" "fuzz/corpus/config_load/$(basename "$f")"
done
for f in ../shared/examples/*.toml; do
  [ -f "$f" ] || continue
  SOURCE_DATE_EPOCH=0 TWINWALL_LOG=warn cargo run --quiet --locked -- bundle create \
    --config "$f" --key "$testkey" \
    --out "fuzz/corpus/bundle_parse/$(basename "$f" .toml).bundle" >/dev/null
done

cd fuzz
for t in "${targets[@]}"; do
  echo "fuzz: $t for ${secs}s" >&2
  cargo "${toolchain[@]}" fuzz run "$t" "corpus/$t" -- \
    -max_total_time="$secs" -max_len=65536 -print_final_stats=1
done
