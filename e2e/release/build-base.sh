#!/usr/bin/env bash
# The base image of the Dockerfile's `build` stage for a release dry run on a machine that cannot
# pull images: Debian (mmdebstrap, minbase + gcc, libc6-dev, ca-certificates: what the Rust
# image's stage uses) plus this machine's Rust toolchain (the version rust-toolchain/CI pins),
# laid out as the official image does (/usr/local/cargo, cargo and rustc on PATH), trusting the
# machine's extra CAs.
# Prints the image name; cached by Debian suite and rustc version (`podman image exists`).
#
# Environment: REAPER_BASE_SUITE (default bookworm, the official Rust image's).
set -euo pipefail

suite=${REAPER_BASE_SUITE:-bookworm}
rustc_version=$(rustc --version | awk '{print $2}')
image=localhost/reaper-build-base:rust-$rustc_version-$suite
log() { printf 'build-base: %s\n' "$*" >&2; }
die() { printf 'build-base: error: %s\n' "$*" >&2; exit 1; }

if podman image exists "$image"; then
  log "$image: cached"
  echo "$image"
  exit 0
fi
command -v mmdebstrap >/dev/null || die "mmdebstrap not found (apt-get install mmdebstrap; .ci/run does)"

work=$(mktemp -d "${TMPDIR:-/tmp}/reaper-build-base.XXXXXX")
trap 'rm -rf "$work"' EXIT
start=$SECONDS
log "bootstrapping Debian $suite (minbase + gcc, libc6-dev, ca-certificates)"
mmdebstrap --quiet --variant=minbase --include=gcc,libc6-dev,ca-certificates \
  "$suite" "$work/rootfs.tar" >&2
debian=localhost/reaper-debian:$suite
podman import --quiet "$work/rootfs.tar" "$debian" >/dev/null
rm -f "$work/rootfs.tar"

# The toolchain without its docs (share/ is man pages and HTML): rustc finds its sysroot
# relative to its own binary, so a copy under /usr/local/rust works as is.
sysroot=$(rustc --print sysroot)
mkdir -p "$work/ctx/rust"
for d in bin lib libexec; do
  [[ -d $sysroot/$d ]] && cp -a "$sysroot/$d" "$work/ctx/rust/"
done
[[ -x $work/ctx/rust/bin/cargo ]] || die "no cargo in $sysroot/bin (install the toolchain's cargo component)"
# CAs this machine adds to Debian's (a TLS-inspecting egress proxy, a private crates mirror):
# cargo inside the build must trust what cargo outside does. None on an ordinary machine.
mkdir -p "$work/ctx/extra-ca"
for c in /usr/local/share/ca-certificates/*.crt; do
  [[ -f $c ]] && cp "$c" "$work/ctx/extra-ca/"
done
cat >"$work/ctx/Containerfile" <<CONTAINERFILE
FROM $debian
COPY rust /usr/local/rust
COPY extra-ca/ /usr/local/share/ca-certificates/
ENV CARGO_HOME=/usr/local/cargo \\
    PATH=/usr/local/cargo/bin:/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
RUN update-ca-certificates >/dev/null && mkdir -p /usr/local/cargo/bin && cargo --version && rustc --version && gcc --version | head -1
CONTAINERFILE
podman build --quiet --pull=never --runtime /usr/sbin/runc \
  --ulimit nofile=1024:1024 --ulimit nproc=1000:1000 \
  -t "$image" "$work/ctx" >/dev/null
log "built $image in $((SECONDS - start)) s"
echo "$image"
