# Reaper — developer entry points. `make test` is the README's test command; `make demo` the main job.
SHELL := /bin/bash
.DEFAULT_GOAL := build

CARGO ?= cargo
REAPER_BIN := target/reaper/reaper
# Static, non-PIE: no dynamic loader, no relocations to touch at start (smaller RSS, faster exec).
REAPER_RUSTFLAGS := -C target-feature=+crt-static -C relocation-model=static
CONTROLLER_STATIC := target/controller-static/reaper-controller
CA_BUNDLE ?= /etc/ssl/certs/ca-certificates.crt
CONTROLLER_PROFILE ?= dev
CONTROLLER_PROFILE_DIR := $(if $(filter dev,$(CONTROLLER_PROFILE)),debug,$(CONTROLLER_PROFILE))
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
IMAGE_REPO ?= ghcr.io/reaper-dev

.PHONY: deny build reaper bench-reaper bench-podman tools test unit bench-agent lint fmt crds deploy demo clean bench-webhook bench-registry fuzz fuzz-webhook \
	controller-static images shellcheck demo-kind e2e-kind bench-latency bench-engines bench-node bench-operator \
	release-dry-run

build: reaper
	$(CARGO) build --bin reaper-controller

## The static init binary (target/reaper/reaper), from crates/reaper-init.
reaper:
	$(CARGO) rustc -p reaper-init --profile reaper --bin reaper -- $(REAPER_RUSTFLAGS)
	@file $(REAPER_BIN) | grep -q 'statically linked' || { echo "$(REAPER_BIN) is not static" >&2; exit 1; }

## The init against tini, tini-static, dumb-init and catatonit (root; prints a Markdown table).
bench-reaper:
	bench/reaper.sh

## Container start time and stop latency per init through podman --init-path (root; Markdown table).
bench-podman:
	bench/podman.sh

## Static reaper-controller for the scratch image (target/controller-static/reaper-controller).
## CONTROLLER_PROFILE=dev (default) reuses the test build's dependencies (the image tests only need
## a static binary); CONTROLLER_PROFILE=release for images you ship.
controller-static:
	$(CARGO) rustc --profile $(CONTROLLER_PROFILE) --bin reaper-controller -- -C target-feature=+crt-static
	@mkdir -p $(dir $(CONTROLLER_STATIC))
	cp target/$(CONTROLLER_PROFILE_DIR)/reaper-controller $(CONTROLLER_STATIC)
	@# The controller image's CA bundle (registry TLS): the host's, as the build stage copies its own.
	@test -s $(CA_BUNDLE) || { echo "$(CA_BUNDLE) missing: apt-get install ca-certificates" >&2; exit 1; }
	cp $(CA_BUNDLE) $(dir $(CONTROLLER_STATIC))ca-certificates.crt
	@file $(CONTROLLER_STATIC) | grep -q 'static' || { echo "$(CONTROLLER_STATIC) is not static" >&2; exit 1; }

## Both images (Dockerfile targets reaper and controller) from the binaries built here, with podman.
images: reaper controller-static
	podman build --pull=never --build-arg BINARIES=prebuilt --build-arg VERSION=$(VERSION) --target reaper -t $(IMAGE_REPO)/reaper:$(VERSION) .
	podman build --pull=never --build-arg BINARIES=prebuilt --build-arg VERSION=$(VERSION) --target controller -t $(IMAGE_REPO)/reaper-controller:$(VERSION) .

## kube-apiserver, etcd, helm, promtool and the node (kubelet, kube-scheduler, kube-proxy, kubectl,
## containerd, pause) built from Go modules into bin/ (cached by version).
tools:
	e2e/control-plane/build.sh

## Every test of the project (the README's test command).
test: reaper controller-static tools lint shellcheck
	$(CARGO) build --bin reaper-controller --example demo
	$(CARGO) test --workspace --all-targets -- --test-threads=$${TEST_THREADS:-2}

## The release workflow as far as this machine goes (tests/release.rs, also part of `make test`):
## both images built from source, pushed with the chart (OCI) to a local registry, installed with
## `helm install oci://...` on the real node, a pod wrapped, `helm test`.
release-dry-run: reaper controller-static tools
	$(CARGO) test --test release -- --nocapture

## Unit tests only (no root, no control plane): the quick loop.
unit:
	$(CARGO) test --workspace --lib --bins

## Agent scan vs ps(1) with 1,000 and 10,000 processes, and agent RSS (root for realistic cgroups).
bench-agent:
	$(CARGO) build --release --bin reaper-controller --example agent_scan
	target/release/examples/agent_scan 1000 10000

lint: deny
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## cargo-deny (deny.toml): licenses, bans, sources; installed once per version into the tools cache.
TOOLS_CACHE ?= $(or $(REAPER_TOOLS_CACHE),$(HOME)/.cache/reaper-tools)
DENY_VERSION := 0.20.2
CARGO_DENY := $(TOOLS_CACHE)/cargo-deny-$(DENY_VERSION)/bin/cargo-deny
$(CARGO_DENY):
	$(CARGO) install cargo-deny --locked --version $(DENY_VERSION) --root $(TOOLS_CACHE)/cargo-deny-$(DENY_VERSION)
deny: $(CARGO_DENY)
	$(CARGO_DENY) check licenses bans sources

fmt:
	$(CARGO) fmt --all

## Regenerate crds/ (one <plural>.<group>.yaml per CRD) from the Rust types.
## The chart carries the same files (charts/reaper/files/crds/, rendered by templates/crds.yaml;
## a test fails when they differ).
crds:
	rm -f crds/*.yaml charts/reaper/files/crds/*.yaml
	$(CARGO) run -q --bin reaper-controller -- crds --dir crds
	cp crds/*.yaml charts/reaper/files/crds/

## Regenerate docs/reference/ (CLI, contracts, chart values) from the code; a test fails when stale.
.PHONY: docs
docs:
	UPDATE_DOCS=1 $(CARGO) test -q --test pure docs::reference_

## Regenerate deploy/reaper.yaml (reaper-system Namespace + `helm template` with default values;
## a test fails when it is stale).
deploy: tools
	deploy/render.sh > deploy/reaper.yaml.tmp && mv deploy/reaper.yaml.tmp deploy/reaper.yaml

## shellcheck over every tracked shell script (*.sh and extension-less files with a sh/bash shebang).
shellcheck:
	@git ls-files | while read -r f; do \
	  case $$f in *.sh) echo "$$f";; *) head -n1 "$$f" 2>/dev/null | grep -Eq '^#!.*[/ ](ba|da)?sh( |$$)' && echo "$$f";; esac; \
	done | xargs -r shellcheck
	@echo "shellcheck: clean"

## The kind end-to-end suite (needs Docker, kind, kubectl, helm): cluster, images, chart, scenarios.
e2e-kind:
	e2e/kind.sh

## What `make demo` shows, on a kind cluster (needs Docker, kind, kubectl, helm).
demo-kind:
	e2e/kind.sh demo

## Pod-create latency through the API server with the webhook vs without (local control plane).
bench-latency: tools
	$(CARGO) build --release --bin reaper-controller
	REAPER_CONTROLLER_BIN=target/release/reaper-controller $(CARGO) run --example latency

## Pod-create latency with each admission engine (chart's webhook, MutatingAdmissionPolicies, both)
## vs none, one run on a local control plane (docs/engines.md).
bench-engines: tools
	$(CARGO) build --release --bin reaper-controller
	REAPER_CONTROLLER_BIN=target/release/reaper-controller $(CARGO) run --example engines

## The whole system on a local node built here (kubelet + containerd; same harness as the node
## tests), or the API-server-only demo where no node can run (DEMO_MODE=api picks it).
## Ctrl-C stops it; DEMO_EXIT=1 exits 0 right after printing.
demo: reaper controller-static tools
	$(CARGO) build --bin reaper-controller
	$(CARGO) run --example demo

## Pod start/stop with and without Reaper on the real node, agent CPU/RSS under 50 pods (root).
bench-node: reaper controller-static tools
	$(CARGO) run --example bench_node

## The operator's time and heap per batch (10,000 pods, 100 policies, 200 nodes), before and
## after it computed once per batch.
bench-operator:
	$(CARGO) bench --bench operator_batch

## Webhook HTTPS load benchmark (wrk) against its in-process floor.
bench-webhook:
	bench/webhook.sh

## Admission latency with registry lookups: cold vs warm cache vs pod with command (one run).
bench-registry:
	bench/registry.sh

## Every fuzz target in turn, one at a time (nightly + cargo-fuzz): FUZZ_SECONDS each (default 60),
## FUZZ_TARGETS="a b" for some (default: all, `cd fuzz && cargo +nightly fuzz list`). Built with
## debug assertions and overflow checks; committed seeds in fuzz/seeds/<target>/. Not part of
## `make test`.
fuzz:
	fuzz/seed.sh
	cd fuzz && for t in $${FUZZ_TARGETS:-$$($(CARGO) +nightly fuzz list)}; do \
	  mkdir -p corpus/$$t; \
	  $(CARGO) +nightly fuzz run --debug-assertions $$t corpus/$$t $$(test -d seeds/$$t && echo seeds/$$t) \
	    -- -max_total_time=$${FUZZ_SECONDS:-60} -timeout=10 || exit 1; done

## Fuzz the webhook's decode + plan (nightly + cargo-fuzz); FUZZ_SECONDS per target (default 60).
fuzz-webhook:
	$(MAKE) fuzz FUZZ_TARGETS="admission_review plan_pod"

clean:
	$(CARGO) clean
