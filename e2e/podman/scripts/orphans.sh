#!/bin/sh
# An app that never waits for children (`sleep`, exec'd in this shell's place, so it is the
# container's command) with a helper beside it that leaves an orphan behind every 50 ms, as
# `kubectl exec` sessions and exec probes do. Orphans are re-parented to PID 1 of the PID
# namespace: if that process never calls wait(), each one stays a zombie.
( while :; do (sleep 0.1 &); sleep 0.05; done ) &
exec sleep 1000000
