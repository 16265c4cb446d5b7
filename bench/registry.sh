#!/usr/bin/env bash
# Admission latency of `reaper-controller webhook` for a pod whose container has no `command`
# (its image's ENTRYPOINT/CMD are looked up in a registry) against the same pod with `command`
# (no lookup), all in one run on this machine:
#   - cold: every request names a tag not seen before (HEAD manifest + GET manifest + GET config
#     from a real registry on loopback: Debian's docker-registry, plain HTTP);
#   - warm: the same image every time (answered from the webhook's cache);
#   - with command: the same pod with `command` set (the floor the warm case is held to).
# One connection, one request at a time (wrk, keep-alive HTTPS), so the figures are latencies, not
# throughput. Prints p50/p99 and the ratios warm/command and cold/command (target: warm p99
# within 10 % of the pod with command).
# Needs: docker-registry, wrk, openssl, curl, jq, python3.
#
# Usage: bench/registry.sh            (DURATION=5 per case and round, ROUNDS=5, COLD=300)
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-5}
COLD=${COLD:-300}
ROUNDS=${ROUNDS:-5}
for tool in docker-registry wrk openssl curl jq python3; do
  command -v "$tool" >/dev/null || { echo "bench/registry.sh needs $tool" >&2; exit 1; }
done

# BIN=target/debug/reaper-controller to try the script without a release build.
if [[ -z "${BIN:-}" ]]; then
  echo "building (release)..." >&2
  cargo build -q --release --bin reaper-controller
fi
BIN=${BIN:-target/release/reaper-controller}

tmp=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# The registry, on a random port with its own storage.
reg_port=$(free_port)
mkdir -p "$tmp/registry"
cat >"$tmp/registry.yml" <<EOF
version: 0.1
log: {level: error}
storage:
  filesystem: {rootdirectory: $tmp/registry}
http:
  addr: 127.0.0.1:$reg_port
  secret: bench
EOF
docker-registry serve "$tmp/registry.yml" >"$tmp/registry.log" 2>&1 &
pids+=($!)
reg=127.0.0.1:$reg_port
for _ in $(seq 100); do curl -fs "http://$reg/v2/" >/dev/null && break; sleep 0.1; done
curl -fs "http://$reg/v2/" >/dev/null || { echo "docker-registry did not start" >&2; cat "$tmp/registry.log" >&2; exit 1; }
# Tags 0..COLD for the cold requests (wrk may build one request ahead), COLD+1 for the warm ones.
echo "pushing $((COLD + 2)) images..." >&2
python3 bench/registry-push.py "$reg" "$((COLD + 2))"

# The webhook (release build), trusting nothing but plain HTTP to this registry.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
  -keyout "$tmp/tls.key" -out "$tmp/tls.crt" -subj /CN=localhost \
  -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" 2>/dev/null
port=$(free_port); admin=$(free_port)
"$BIN" --log-level warn,rustls=error webhook \
  --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$admin" \
  --tls-cert "$tmp/tls.crt" --tls-key "$tmp/tls.key" \
  --reaper-image registry.example.com/reaper:0.1.0 \
  --policies bench/webhook-policies.yaml \
  --insecure-registries "$reg" --tag-ttl 1h &
pids+=($!)
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$admin/readyz" >/dev/null && break; sleep 0.1; done
curl -fs "http://127.0.0.1:$admin/readyz" >/dev/null || { echo "webhook did not become ready" >&2; exit 1; }
url="https://127.0.0.1:$port/mutate"

review() { # $1: extra container fields (JSON, may be empty)
  cat <<EOF
{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{
 "uid":"5c1d8f0e-0000-4000-8000-000000000001",
 "kind":{"group":"","version":"v1","kind":"Pod"},"resource":{"group":"","version":"v1","resource":"pods"},
 "namespace":"apps","operation":"CREATE","userInfo":{"username":"system:serviceaccount:kube-system:replicaset-controller"},
 "object":{"apiVersion":"v1","kind":"Pod","metadata":{"generateName":"web-7d9c8b6f5-","namespace":"apps",
  "labels":{"app.kubernetes.io/name":"web"}},
  "spec":{"containers":[{"name":"web","image":"__IMAGE__"$1,
   "ports":[{"containerPort":8080}],"resources":{"requests":{"cpu":"100m","memory":"64Mi"}},
   "securityContext":{"runAsNonRoot":true,"runAsUser":1000,"allowPrivilegeEscalation":false,
    "capabilities":{"drop":["ALL"]},"seccompProfile":{"type":"RuntimeDefault"}}}]}},
 "oldObject":null,"dryRun":false}}
EOF
}
review "" >"$tmp/no-command.json"
review ',"command":["/app"],"args":["serve","--port","8080"]' >"$tmp/command.json"

# Sanity: the image's argv is wrapped.
sed "s|__IMAGE__|$reg/bench/app:$((COLD + 1))|" "$tmp/no-command.json" |
  curl -fsk -H 'content-type: application/json' --data-binary @- "$url" |
  jq -r '.response.patch' | base64 -d | grep -q "/app-$((COLD + 1))" ||
  { echo "the webhook did not wrap the image's entrypoint" >&2; exit 1; }

load() { wrk -t1 -c1 --timeout 5s -s bench/registry-post.lua "$@" "$url" | grep '^RESULT'; }
field() { sed -E "s/.* $1=([0-9.]+).*/\\1/" <<<"$2"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }

# Warm-up (TLS, allocator); tag COLD+1 is cached since the sanity check, tags 0..COLD are not.
REVIEW_FILE=$tmp/command.json IMAGE=$reg/bench/app:$((COLD + 1)) load -d 2s >/dev/null
REVIEW_FILE=$tmp/no-command.json IMAGE=$reg/bench/app:$((COLD + 1)) load -d 2s >/dev/null

cold=$(REVIEW_FILE=$tmp/no-command.json IMAGE_PREFIX="$reg/bench/app:" COUNT=$COLD load -d "$((COLD / 20 + 5))s")
lookups=$(curl -fs "http://127.0.0.1:$admin/metrics" | awk '/^reaper_registry_lookups_total\{result="success"\}/ { print $2 }')

echo "| case (1 connection, sequential) | requests | p50 | p99 | p50, p99 / with command |"
echo "|---|---|---|---|---|"
row() { echo "| $1 | $(field requests "$2") | $(field p50_ms "$2") ms | $(field p99_ms "$2") ms | $(ratio "$(field p50_ms "$2")" "$(field p50_ms "$3")"), $(ratio "$(field p99_ms "$2")" "$(field p99_ms "$3")") |"; }
# Warm and with-command alternate for ROUNDS rounds, so drift on the shared machine (other builds)
# hits both; the verdict uses the median of the per-round ratios.
p50s=(); p99s=(); first_cmd=""
for round in $(seq "$ROUNDS"); do
  cmd=$(REVIEW_FILE=$tmp/command.json IMAGE=$reg/bench/app:$((COLD + 1)) load -d "${DURATION}s")
  warm=$(REVIEW_FILE=$tmp/no-command.json IMAGE=$reg/bench/app:$((COLD + 1)) load -d "${DURATION}s")
  [[ -n "$first_cmd" ]] || first_cmd=$cmd
  row "round $round: pod with \`command\` (no lookup)" "$cmd" "$cmd"
  row "round $round: no \`command\`, warm cache" "$warm" "$cmd"
  p50s+=("$(ratio "$(field p50_ms "$warm")" "$(field p50_ms "$cmd")")")
  p99s+=("$(ratio "$(field p99_ms "$warm")" "$(field p99_ms "$cmd")")")
done
row "no \`command\`, cold (new tag each time: HEAD + manifest + config)" "$cold" "$first_cmd"
median() { printf '%s\n' "$@" | sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
echo
echo "registry round trips made by the webhook: ${lookups:-?} (cold requests: $(field requests "$cold"), +1 for the sanity check)"
echo "warm / with command, median of $ROUNDS rounds: p50 $(median "${p50s[@]}"), p99 $(median "${p99s[@]}") (target p99 <= 1.10)"
