#!/usr/bin/env bash
# The kind end-to-end suite: creates a kind cluster, builds both images from the top-level
# Dockerfile and loads them, installs charts/reaper with them, runs the scenarios of
# crates/reaper-test-support/src/scenarios.rs (tests/kind.rs) and, when something fails, collects logs into
# $ARTIFACTS. Needs docker, kind, kubectl, cargo; helm from bin/helm (make tools) or PATH.
#
#   e2e/kind.sh           cluster, images, chart, scenarios (make e2e-kind)
#   e2e/kind.sh demo      cluster, images, chart, then what `make demo` shows (make demo-kind)
#
# Environment: CLUSTER (default reaper-e2e), KEEP=1 keeps the cluster afterwards,
# BUILD=prebuilt (default: `make reaper controller-static` here, images COPY the binaries) or
# BUILD=source (the Dockerfile's Rust build stage compiles them), ARTIFACTS (default e2e/artifacts).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
mode=${1:-test}
cluster=${CLUSTER:-reaper-e2e}
build=${BUILD:-prebuilt}
artifacts=${ARTIFACTS:-$root/e2e/artifacts}
ns=reaper-system
tag=e2e
repo=ghcr.io/reaper-dev
export KUBECONFIG=${KUBECONFIG_E2E:-$root/e2e/.kubeconfig-$cluster}

log() { printf '\n== %s\n' "$*"; }
die() { echo "e2e/kind.sh: $*" >&2; exit 1; }

case $mode in test | demo) ;; *) die "unknown mode '$mode' (test or demo)" ;; esac
for tool in docker kind kubectl cargo; do
  command -v "$tool" >/dev/null || die "$tool not found in PATH"
done
if [[ -x $root/bin/helm ]]; then helm=$root/bin/helm; else helm=$(command -v helm) || die "helm not found: make tools, or install helm"; fi

collect() {
  local code=$?
  if [[ $code -ne 0 ]]; then
    log "failed ($code): collecting logs into $artifacts"
    mkdir -p "$artifacts"
    kubectl get all,zombiereports,reaperpolicies,mutatingwebhookconfigurations -A -o wide >"$artifacts/objects.txt" 2>&1 || true
    kubectl get events -A --sort-by=.lastTimestamp >"$artifacts/events.txt" 2>&1 || true
    kubectl -n "$ns" describe pods >"$artifacts/reaper-pods.txt" 2>&1 || true
    for component in webhook operator agent; do
      kubectl -n "$ns" logs -l "app.kubernetes.io/component=$component" --all-containers --prefix --tail=-1 \
        >"$artifacts/$component.log" 2>&1 || true
    done
    kind export logs "$artifacts/kind" --name "$cluster" >/dev/null 2>&1 || true
  fi
  if [[ ${KEEP:-0} != 1 && $mode == test ]]; then
    kind delete cluster --name "$cluster" >/dev/null 2>&1 || true
  fi
  exit "$code"
}
trap collect EXIT

log "kind cluster $cluster"
if ! kind get clusters 2>/dev/null | grep -qx "$cluster"; then
  kind create cluster --name "$cluster" --kubeconfig "$KUBECONFIG" --wait 120s
fi

log "images ($build)"
build_args=()
if [[ $build == prebuilt ]]; then
  make reaper controller-static
  build_args=(--build-arg BINARIES=prebuilt)
fi
for target in reaper controller; do
  image=$repo/reaper-$target:$tag
  [[ $target == reaper ]] && image=$repo/reaper:$tag
  docker build "${build_args[@]}" --target "$target" -t "$image" .
  kind load docker-image "$image" --name "$cluster"
done

log "chart into $ns (with its CRDs: templates, upgraded by helm upgrade)"
kubectl create namespace "$ns" --dry-run=client -o yaml | kubectl apply -f -
# The agent's hostPID needs the privileged Pod Security level (see NOTES.txt).
kubectl label namespace "$ns" pod-security.kubernetes.io/enforce=privileged --overwrite
"$helm" upgrade --install reaper charts/reaper --namespace "$ns" \
  --set image.controller.tag="$tag" --set image.reaper.tag="$tag" \
  --set image.pullPolicy=Never --set agent.interval=5s --wait --timeout 5m
kubectl -n "$ns" rollout status deployment/reaper-webhook --timeout=180s
kubectl -n "$ns" rollout status daemonset/reaper-agent --timeout=180s

if [[ $mode == test ]]; then
  log "scenarios"
  REAPER_E2E_NAMESPACE=$ns REAPER_E2E_FULLNAME=reaper \
    cargo test --test kind -- --ignored --test-threads=1
  log "all scenarios passed"
  exit 0
fi

log "demo: the sample policy and pods in an opted-in namespace"
kubectl apply -f examples/demo-policy.yaml
kubectl create namespace demo --dry-run=client -o yaml | kubectl apply -f -
kubectl label namespace demo reaper.dev/inject=enabled --overwrite
kubectl -n demo delete pod --all --wait=false >/dev/null 2>&1 || true
# PID 1 a shell that leaves orphans: protected, and opted out for comparison.
orphans="i=0; while [ \$i -lt 5 ]; do sh -c 'sleep 1 &'; i=\$((i+1)); done; exec sleep 3600"
kubectl -n demo run protected --image=busybox:1.36 --restart=Never -- sh -c "$orphans"
kubectl -n demo run unprotected --image=busybox:1.36 --restart=Never --labels=reaper.dev/inject=disabled -- sh -c "$orphans"
kubectl -n demo wait --for=condition=Ready pod/protected pod/unprotected --timeout=180s
echo "protected pod: reaper.dev/injected=$(kubectl -n demo get pod protected -o jsonpath='{.metadata.annotations.reaper\.dev/injected}')"
echo "its init containers and command:"
kubectl -n demo get pod protected -o jsonpath='{range .spec.initContainers[*]}  init {.name}: {.image} {.command}{"\n"}{end}{range .spec.containers[*]}  {.name}: {.command}{"\n"}{end}'
echo "waiting 20 s for the agent to report..."
sleep 20
kubectl get zombiereports -o wide
kubectl get reaperpolicies
echo
echo "The cluster stays up: KUBECONFIG=$KUBECONFIG kubectl get pods -n demo"
echo "Delete it with: kind delete cluster --name $cluster"
