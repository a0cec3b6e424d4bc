#!/bin/sh
# Runs a command in a network namespace of its own, where only loopback is
# up. The tests listen on loopback ports a machine may already use or not
# let them have: key discovery's WKD server must be on port 443, which root
# in a container whose network belongs to the host may not bind. In a fresh
# namespace every port is free and ours, and nothing reaches the outside.
# Root makes a plain network namespace; anyone else, one inside a user
# namespace of their own.
set -e
[ $# -gt 0 ] || { echo "usage: $0 COMMAND [ARG...]" >&2; exit 2; }
if unshare -n true 2>/dev/null; then
	exec unshare -n sh -c 'ip link set lo up && exec "$@"' netns "$@"
fi
exec unshare -rn sh -c 'ip link set lo up && exec "$@"' netns "$@"
