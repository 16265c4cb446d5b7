#!/bin/sh
# The common entrypoint-script pattern: some setup, then the app as a child (no `exec`). As
# PID 1 this shell has no SIGTERM handler, so the kernel drops the signal, and it passes
# nothing on to the app.
echo "setup done"
/scripts/graceful.sh
