#!/bin/sh
# Install rsync with apt when it is missing; used by `make test` and `make demo`.
set -eu
command -v rsync >/dev/null 2>&1 && exit 0
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "rsync is missing: install it first (for example: sudo apt-get install rsync)" >&2
    exit 1
fi
echo "rsync is missing: installing it with apt-get" >&2
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rsync >/dev/null
