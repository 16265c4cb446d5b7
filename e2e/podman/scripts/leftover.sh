#!/bin/sh
# A background process that outlives the main one. It records SIGTERM in /data/leftover: an
# init that drains sends it before the container ends; without one the kernel SIGKILLs it when
# PID 1 exits, and nothing is recorded.
trap 'echo "got TERM" > /data/leftover; exit 0' TERM
: > /data/leftover-ready
sleep 1000000 &
wait $!
