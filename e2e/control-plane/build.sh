#!/usr/bin/env bash
# Placeholder until the control-plane harness lands: nothing to build yet.
set -euo pipefail
echo "control-plane tools: not yet defined"
