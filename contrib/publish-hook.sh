#!/bin/sh
# Upstream publish hook: run at the very end of your push script, after the tree is
# complete. It rewrites the marker atomically (mirrors never see half a marker) and tells
# every mirror now. With `mirrorhook serve` running on the upstream, the watcher sees the
# rename and the notify below is a harmless extra delivery; use one or the other.
#
#   publish-hook.sh [ROOT] [CONFIG]
set -eu
root=${1:-/srv/repo/ius}
config=${2:-/etc/mirrorhook/mirrorhook.toml}

stamp=$(date -u +%Y%m%dT%H%M%SZ)
tmp=$(mktemp "$root/.CURRENT.XXXXXX")
trap 'rm -f "$tmp"' EXIT
printf '%s\n' "$stamp" > "$tmp"
chmod 644 "$tmp"
sync "$tmp" 2>/dev/null || true
mv -f "$tmp" "$root/CURRENT"
trap - EXIT

# Exit status: 0 every mirror accepted, 1 some failed (they are retried by `serve`, or by
# the mirrors' own polling), 2 config error.
exec mirrorhook notify -c "$config"
