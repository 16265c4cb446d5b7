#!/usr/bin/env bash
# Benchmark the `reaper` init against tini, tini-static, dumb-init and catatonit in one
# interleaved run and print a Markdown table with the target ratios (README: "The reaper init").
#
#   bench/reaper.sh                  # full run (about two minutes)
#   QUICK=1 bench/reaper.sh          # fewer samples, for a smoke test
#   BENCH_CPU=none BENCH_RT=0 ...    # unpinned, normal priority (noisier on a busy machine)
#
# By default the whole run is pinned to one CPU (BENCH_CPU=1) at SCHED_FIFO priority 10
# (BENCH_RT=1): on a shared, loaded machine that keeps other work from landing in the middle of a
# measurement, and every init is measured under the same conditions. The kernel's RT throttling
# still leaves 5% of that CPU to everything else.
#
# Needs root (PID namespaces). Installs the peer inits from Debian's packages when missing,
# builds the static reaper (`make reaper`) and the C helper (bench/initbench.c) with gcc.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ $(id -u) -ne 0 ]]; then
  echo "bench/reaper.sh: needs root (it starts the inits as PID 1 of new PID namespaces)" >&2
  exit 1
fi

missing=()
for pkg in tini dumb-init catatonit gcc; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "installing ${missing[*]}..." >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi

make -s reaper >&2
mkdir -p target/bench
gcc -O2 -Wall -Wextra -o target/bench/initbench bench/initbench.c

if [[ -n ${QUICK:-} ]]; then
  opts=(--startup-runs 50 --orphans 2000 --orphan-rounds 1 --signals 50 --rss-rounds 3)
else
  opts=(--startup-runs 300 --orphans 20000 --orphan-rounds 3 --signals 1000 --rss-rounds 9)
fi

# tini gets -s: outside PID 1 (the startup runs) it would otherwise print a warning, and the
# others register as subreaper (or do not need to) without one. As PID 1 it changes nothing.
echo "kernel $(uname -r), $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')" >&2
runner=()
if [[ ${BENCH_CPU-1} != none ]]; then runner+=(taskset -c "${BENCH_CPU-1}"); fi
if [[ ${BENCH_RT-1} != 0 ]]; then runner+=(chrt -f 10); fi
echo "runner: ${runner[*]:-none}" >&2
"${runner[@]}" target/bench/initbench table "${opts[@]}" \
  reaper="$PWD/target/reaper/reaper" \
  tini=/usr/bin/tini,-s \
  tini-static=/usr/bin/tini-static,-s \
  dumb-init=/usr/bin/dumb-init \
  catatonit=/usr/bin/catatonit
