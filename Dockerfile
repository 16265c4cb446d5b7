# syntax=docker/dockerfile:1
# Reaper's images. Two final stages, both FROM scratch, both running as UID/GID 65532:
#   reaper      only /reaper (the static init); the webhook's injected init container copies it
#               into pods (`/reaper --install <mount-path>/reaper`).
#   controller  /reaper-controller with /reaper as its own PID 1, and the CA bundle the webhook's
#               registry client verifies registries with (/etc/ssl/certs/ca-certificates.crt).
#
# From source, multi-arch (the builder cross-compiles; no emulation):
#   docker buildx build --platform linux/amd64,linux/arm64 --target reaper     -t REPO/reaper:TAG .
#   docker buildx build --platform linux/amd64,linux/arm64 --target controller -t REPO/reaper-controller:TAG .
# From binaries built on this machine (nothing is pulled; `make reaper controller-static` first):
#   podman build --pull=never --build-arg BINARIES=prebuilt --target controller -t ... .
#
# Both binaries are linked statically against glibc (-C target-feature=+crt-static): a scratch
# image has no loader and no libc. Static glibc >= 2.34 resolves names from /etc/hosts and DNS
# without NSS modules (tests/image_controller.rs checks both inside the image).

# The Rust toolchain image of the `build` stage (Debian based: apt provides the arm64 cross gcc).
ARG RUST_IMAGE=docker.io/library/rust:1.95-bookworm
# `build` compiles from source; `prebuilt` copies target/reaper/reaper and
# target/controller-static/reaper-controller from the build context.
ARG BINARIES=build

FROM --platform=$BUILDPLATFORM ${RUST_IMAGE} AS build
ARG TARGETARCH
ARG BUILDARCH
WORKDIR /src
# Rust target triple and C cross toolchain (ring and mimalloc compile C) per architecture.
RUN set -eux; \
    case "$TARGETARCH" in \
      amd64) triple=x86_64-unknown-linux-gnu;  gnu=x86_64-linux-gnu;  pkgs="gcc-x86-64-linux-gnu libc6-dev-amd64-cross" ;; \
      arm64) triple=aarch64-unknown-linux-gnu; gnu=aarch64-linux-gnu; pkgs="gcc-aarch64-linux-gnu libc6-dev-arm64-cross" ;; \
      *) echo "unsupported TARGETARCH '$TARGETARCH' (amd64 or arm64)" >&2; exit 1 ;; \
    esac; \
    if [ "$TARGETARCH" != "$BUILDARCH" ]; then \
      apt-get update; apt-get install -y --no-install-recommends $pkgs; rm -rf /var/lib/apt/lists/*; \
      rustup target add "$triple"; \
      printf 'export CC_%s=%s-gcc\nexport CARGO_TARGET_%s_LINKER=%s-gcc\n' \
        "$(echo "$triple" | tr - _)" "$gnu" "$(echo "$triple" | tr a-z- A-Z_)" "$gnu" > /env.sh; \
    else \
      : > /env.sh; \
    fi; \
    echo "$triple" > /triple
COPY Cargo.toml Cargo.lock ./
COPY src/ src/
COPY crates/ crates/
# Cargo.toml names an example and a bench under bench/: the manifest does not load without them.
COPY bench/ bench/
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target,id=reaper-target-${TARGETARCH} \
    set -eux; . /env.sh; triple=$(cat /triple); \
    cargo rustc --locked -p reaper-init --profile reaper --bin reaper --target "$triple" -- \
      -C target-feature=+crt-static -C relocation-model=static; \
    cargo rustc --locked --release --bin reaper-controller --target "$triple" -- \
      -C target-feature=+crt-static; \
    mkdir -p /out; \
    cp "target/$triple/reaper/reaper" "target/$triple/release/reaper-controller" /out/; \
    cp /etc/ssl/certs/ca-certificates.crt /out/

FROM scratch AS prebuilt
# The wildcards let the reaper image be built without a controller binary (`make controller-static`
# puts the host's CA bundle beside it).
COPY target/reaper/reaper target/controller-static/reaper-controlle[r] target/controller-static/ca-certificates.cr[t] /out/

FROM ${BINARIES} AS binaries
# One instruction: buildah (podman build --layers=false) cannot use a stage that is a bare FROM.
WORKDIR /out

FROM scratch AS reaper
ARG VERSION=dev
LABEL org.opencontainers.image.title="reaper" \
      org.opencontainers.image.description="Reaper's static init: reaps zombies, forwards signals, passes exit codes" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}"
COPY --from=binaries /out/reaper /reaper
USER 65532:65532
ENTRYPOINT ["/reaper"]

FROM scratch AS controller
ARG VERSION=dev
LABEL org.opencontainers.image.title="reaper-controller" \
      org.opencontainers.image.description="Reaper's webhook, operator and node agent (reaper-controller), with reaper as PID 1" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}"
COPY --from=binaries /out/reaper /reaper
COPY --from=binaries /out/reaper-controller /reaper-controller
# Registry lookups verify TLS against the system's roots; scratch has none of its own.
COPY --from=binaries /out/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
USER 65532:65532
ENTRYPOINT ["/reaper", "--", "/reaper-controller"]
