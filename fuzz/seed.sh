#!/usr/bin/env bash
# Seed the fuzz corpora from the test fixtures (pods and AdmissionReviews).
set -euo pipefail
cd "$(dirname "$0")"
fixtures=../tests/fixtures/pods
mkdir -p corpus/plan_pod corpus/admission_review
for f in "$fixtures"/*.json; do
  name=$(basename "$f" .json)
  jq -c .pod "$f" > "corpus/plan_pod/$name.json"
  jq -c '{apiVersion: "admission.k8s.io/v1", kind: "AdmissionReview",
          request: {uid: "fuzz-1", kind: {group: "", version: "v1", kind: "Pod"},
                    resource: {group: "", version: "v1", resource: "pods"},
                    operation: "CREATE", namespace: .namespace, object: .pod}}' "$f" \
    > "corpus/admission_review/$name.json"
done
cp "$fixtures"/reviews/*.json corpus/admission_review/
echo "seeded $(find corpus/plan_pod -type f | wc -l) pods, $(find corpus/admission_review -type f | wc -l) reviews"
