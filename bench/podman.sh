#!/usr/bin/env bash
# Container start time and stop latency with podman + runc, for no init and for tini-static,
# dumb-init, catatonit and the reaper, each run through `podman run --init --init-path INIT`
# (podman bind-mounts it as /run/podman-init and runs `/run/podman-init -- CMD`). Prints a
# Markdown table with ratios to the no-init start time (README: "Container scenarios").
#
#   bench/podman.sh              # RUNS=20 rounds (about four minutes; no init's stops take 5 s each)
#   RUNS=10 bench/podman.sh      # fewer rounds (the issue asks for at least 10)
#
# start: wall time of `podman run IMAGE /bin/true` (create, start, the init execs the command,
#        exit, podman returns), the container removed afterwards, untimed.
# stop:  wall time of `podman stop -t 5` of `podman run -d IMAGE sleep 1000000` (sleep ignores
#        SIGTERM only as PID 1: no init means podman's SIGKILL after 5 s).
# Each round runs every init once, in an order rotated per round. Needs root and podman; the
# image is built FROM scratch from local files (busybox-static, the host's glibc for dumb-init).
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${RUNS:-20}
STOP_TIMEOUT=5
if [[ $(id -u) -ne 0 ]]; then
  echo "bench/podman.sh: needs root (rootful podman)" >&2
  exit 1
fi
for tool in podman runc; do
  command -v "$tool" >/dev/null || { echo "bench/podman.sh: $tool not found (apt-get install podman runc)" >&2; exit 1; }
done
missing=()
for pkg in tini dumb-init catatonit busybox-static; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "installing ${missing[*]}..." >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi
make -s reaper >&2

export CONTAINERS_CONF=$PWD/e2e/podman/containers.conf
prefix="reaper-bench-$$"
image="localhost/$prefix:bench"
work=$(mktemp -d)
cleanup() {
  podman ps -a --format '{{.Names}}' | grep "^$prefix-" | xargs -r podman rm -f -t 0 >/dev/null 2>&1 || true
  podman rmi -f -i "$image" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

# Build context: busybox with the two applets used, and the loader + libraries dumb-init needs.
root=$work/ctx/rootfs
mkdir -p "$root/bin"
cp /bin/busybox "$root/bin/busybox"
ln -s busybox "$root/bin/true"
ln -s busybox "$root/bin/sleep"
while read -r lib; do
  mkdir -p "$root$(dirname "$lib")"
  cp -L "$lib" "$root$lib"
done < <(ldd /usr/bin/dumb-init | grep -o '/[^ ]*' | sort -u)
podman build -q --pull=never --layers=false -f e2e/podman/bench.Containerfile -t "$image" "$work/ctx" >/dev/null

names=(none tini-static dumb-init catatonit reaper)
declare -A path=(
  [none]=""
  [tini-static]=/usr/bin/tini-static
  [dumb-init]=/usr/bin/dumb-init
  [catatonit]=/usr/bin/catatonit
  [reaper]=$PWD/target/reaper/reaper
)
init_opts() {
  [[ -n ${path[$1]} ]] && printf '%s\n' --init --init-path "${path[$1]}"
  return 0
}
now_ns() { date +%s%N; }
n=0

# Sanity: every init runs a command in this image and passes its exit code on.
for name in "${names[@]}"; do
  mapfile -t opts < <(init_opts "$name")
  code=0
  podman run --rm --network none "${opts[@]}" "$image" /bin/busybox sh -c 'exit 3' >/dev/null 2>&1 || code=$?
  [[ $code -eq 3 ]] || { echo "bench/podman.sh: $name: exit code $code, expected 3" >&2; exit 1; }
done

echo "kernel $(uname -r), $(nproc) CPUs, podman $(podman version --format '{{.Client.Version}}'), $(runc --version | head -1), load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
for ((round = 0; round < RUNS; round++)); do
  for ((i = 0; i < ${#names[@]}; i++)); do
    name=${names[$(((i + round) % ${#names[@]}))]}
    mapfile -t opts < <(init_opts "$name")
    n=$((n + 1))
    c="$prefix-$n"
    t0=$(now_ns)
    podman run --name "$c" --network none "${opts[@]}" "$image" /bin/true >/dev/null
    t1=$(now_ns)
    echo "$name start $(((t1 - t0) / 1000))" >>"$work/samples"
    podman rm "$c" >/dev/null

    n=$((n + 1))
    c="$prefix-$n"
    podman run -d --name "$c" --network none "${opts[@]}" "$image" sleep 1000000 >/dev/null
    sleep 0.3 # let the init exec its child before the stop
    t0=$(now_ns)
    podman stop -t "$STOP_TIMEOUT" "$c" >/dev/null 2>&1
    t1=$(now_ns)
    code=$(podman inspect --format '{{.State.ExitCode}}' "$c")
    echo "$name stop $(((t1 - t0) / 1000)) $code" >>"$work/samples"
    podman rm "$c" >/dev/null
  done
  echo "round $((round + 1))/$RUNS done" >&2
done

# Median and p90 (nearest rank) of one init's samples of one kind, in microseconds.
summary() {
  awk -v n="$1" -v k="$2" '$1 == n && $2 == k { print $3 }' "$work/samples" | sort -n | awk '
    { v[NR] = $1 }
    END { m = int((NR + 1) / 2); p = int(NR * 0.9 + 0.999999); if (p < 1) p = 1; print v[m], v[p], NR }'
}
codes() {
  awk -v n="$1" '$1 == n && $2 == "stop" { print $4 }' "$work/samples" | sort -u | paste -sd, -
}
ms() { awk -v us="$1" 'BEGIN { printf "%.0f ms", us / 1000 }'; }

echo "load at the end: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
read -r base_med _ _ < <(summary none start)
echo
echo "| init (\`--init-path\`) | start, median (p90) | start vs no init | stop latency, median (p90) | exit code after stop | runs |"
echo "|---|---:|---:|---:|---:|---:|"
for name in "${names[@]}"; do
  read -r s_med s_p90 s_n < <(summary "$name" start)
  read -r t_med t_p90 _ < <(summary "$name" stop)
  ratio=$(awk -v a="$s_med" -v b="$base_med" 'BEGIN { printf "%.2f", a / b }')
  label=$name
  [[ $name == none ]] && label="no init"
  echo "| $label | $(ms "$s_med") ($(ms "$s_p90")) | $ratio | $(ms "$t_med") ($(ms "$t_p90")) | $(codes "$name") | $s_n |"
done
