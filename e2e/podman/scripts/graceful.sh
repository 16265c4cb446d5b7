#!/bin/sh
# An app that shuts down cleanly: on SIGTERM it writes a cleanup marker to the volume at /data
# and exits 0. /data/ready appears once the handler is in place (tests wait for it).
trap 'echo cleaned > /data/marker; exit 0' TERM
echo "$$" > /data/ready
# `wait` returns as soon as a trapped signal arrives (a foreground `sleep` would delay the trap).
sleep 1000000 &
wait $!
