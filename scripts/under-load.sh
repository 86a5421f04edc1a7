#!/bin/sh
# Run a command while every core is kept busy, to shake out tests that pass only on an idle
# machine (a wait that is really a race):
#     sh scripts/under-load.sh make test
# One busy loop per core, each ended by `timeout` after MAX_SECONDS (default 3600) at most,
# and killed as soon as the command ends. Exits with the command's status.
set -eu
max="${MAX_SECONDS:-3600}"
pids=""
for _ in $(seq "$(nproc)"); do
    timeout "$max" sh -c 'while :; do :; done' &
    pids="$pids $!"
done
trap 'kill $pids 2>/dev/null || true' EXIT INT TERM
status=0
"$@" || status=$?
exit "$status"
