#!/bin/sh
# Install Debian packages for the commands that are missing, with one apt-get update:
#     sh scripts/install-debs.sh COMMAND=PACKAGE...
# used by `make test` (rsync; chromium and chromedriver for the page's browser test; dnf and
# createrepo_c for the yum tests; mosquitto and nats-server for the MQTT tests; nginx for the
# snapshot tests) and `make demo` (rsync). Exits 1, saying what to install,
# when it cannot install them.
set -eu
missing=""
for pair in "$@"; do
    command -v "${pair%%=*}" >/dev/null 2>&1 || missing="$missing ${pair#*=}"
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "missing:$missing; install it first (for example: sudo apt-get install$missing)" >&2
    exit 1
fi
echo "installing with apt-get:$missing" >&2
# One update for all the calls of a run: skipped while the package lists are an hour fresh.
if [ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*Packages*' -mmin -60 2>/dev/null | head -n 1)" ]; then
    apt-get update -qq
fi
# shellcheck disable=SC2086 # one word per package
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
