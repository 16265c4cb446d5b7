# Reaper — developer entry points. `make test` is the README's test command; `make demo` the main job.
SHELL := /bin/bash
.DEFAULT_GOAL := build

CARGO ?= cargo
REAPER_BIN := target/reaper/reaper
# Static, non-PIE: no dynamic loader, no relocations to touch at start (smaller RSS, faster exec).
REAPER_RUSTFLAGS := -C target-feature=+crt-static -C relocation-model=static

.PHONY: build reaper bench-reaper bench-podman tools test unit bench-agent lint fmt crds deploy demo clean bench-webhook bench-registry fuzz-webhook

build: reaper
	$(CARGO) build --bin reaper-controller

## The static init binary (target/reaper/reaper).
reaper:
	$(CARGO) rustc --profile reaper --bin reaper -- $(REAPER_RUSTFLAGS)
	@file $(REAPER_BIN) | grep -q 'statically linked' || { echo "$(REAPER_BIN) is not static" >&2; exit 1; }

## The init against tini, tini-static, dumb-init and catatonit (root; prints a Markdown table).
bench-reaper:
	bench/reaper.sh

## Container start time and stop latency per init through podman --init-path (root; Markdown table).
bench-podman:
	bench/podman.sh

## kube-apiserver, etcd and helm built from Go modules into bin/ (cached by version).
tools:
	e2e/control-plane/build.sh

## Every test of the project (the README's test command).
test: reaper tools lint
	$(CARGO) test --all-targets -- --test-threads=$${TEST_THREADS:-2}

## Unit tests only (no root, no control plane): the quick loop.
unit:
	$(CARGO) test --lib --bins

## Agent scan vs ps(1) with 1,000 and 10,000 processes, and agent RSS (root for realistic cgroups).
bench-agent:
	$(CARGO) build --release --bin reaper-controller --example agent_scan
	target/release/examples/agent_scan 1000 10000

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

## Regenerate crds/ (one <plural>.<group>.yaml per CRD) from the Rust types.
crds:
	rm -f crds/*.yaml
	$(CARGO) run -q --bin reaper-controller -- crds --dir crds

## The whole system on a local control plane (same harness as the tests). Ctrl-C stops it;
## DEMO_EXIT=1 exits 0 right after printing.
demo: tools
	$(CARGO) build --bin reaper-controller
	$(CARGO) run --example demo

## Webhook HTTPS load benchmark (wrk) against its in-process floor.
bench-webhook:
	bench/webhook.sh

## Admission latency with registry lookups: cold vs warm cache vs pod with command (one run).
bench-registry:
	bench/registry.sh

## Fuzz the webhook's decode + plan (nightly + cargo-fuzz); FUZZ_SECONDS per target (default 60).
fuzz-webhook:
	fuzz/seed.sh
	cd fuzz && for t in admission_review plan_pod; do \
	  $(CARGO) +nightly fuzz run $$t corpus/$$t -- -max_total_time=$${FUZZ_SECONDS:-60} || exit 1; done

clean:
	$(CARGO) clean
