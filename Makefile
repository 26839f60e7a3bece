# twinwall — thin wrappers around cargo and the project's scripts.
# `make test` is the test command (CI runs it); `make image` builds the appliance.
SHELL := /bin/bash
CARGO ?= cargo
EXAMPLES := $(wildcard ../shared/examples/*.toml) $(wildcard examples/*.toml)

.PHONY: all deps test check-examples bench fuzz image lab clean

all: check-examples

deps:
	@scripts/deps.sh test

## The test command: installs what it needs, then formatting, lints and every test.
## Without incremental artifacts: a one-shot (CI) run needs gigabytes less disk and builds faster.
test: export CARGO_INCREMENTAL = 0
test: deps
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings
	$(CARGO) test --workspace --locked

## Checks every example config (the fixtures in ../shared/examples and examples/).
check-examples:
	$(CARGO) run --quiet --locked -- config check $(EXAMPLES)

bench: deps
	scripts/bench.sh

fuzz:
	scripts/fuzz.sh
	scripts/fuzz-vrrp.sh

clean:
	$(CARGO) clean

## The appliance: OUT/twinwall.img, twinwall.iso, SHA256SUMS (OUT=out; IMAGE_FLAGS e.g. --trust K.pub).
OUT ?= out
image:
	scripts/build-image.sh $(OUT) $(IMAGE_FLAGS)

## The main job end to end: the image, then the two-node QEMU lab booted from it
## (`twinwall lab status / cut / heal / scenario ...` drive it; `twinwall lab down` stops it).
lab: image
	$(CARGO) run --quiet --locked -- lab up --image $(OUT)
