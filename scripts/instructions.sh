#!/usr/bin/env bash
# Instructions per request of mcpsock's in-process serving path, counted by
# valgrind's callgrind: unlike requests/s, the count barely moves from run to
# run, so it shows the effect of a change that timing noise would hide.
#
#   scripts/instructions.sh [CONNECTIONS] [REQUESTS]
#
# Serves the benchmark echo tool through mcpsock (bench-rmcp-echo --mcpsock,
# sessions in memory) under callgrind, warms it up with 1,000 calls, then
# counts the server's instructions over REQUESTS calls (default 3,000) from
# `mcpsock bench` on CONNECTIONS connections (default 4). Needs valgrind and
# the release build (`cargo build --release --workspace`). Under valgrind,
# SHA-256 runs without the CPU's SHA extension, so hashing weighs more here
# than on the machine itself.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

connections="${1:-4}"
requests="${2:-3000}"
server=target/release/bench-rmcp-echo
client=target/release/mcpsock
for binary in "$server" "$client"; do
    if [ ! -x "$binary" ]; then
        echo "instructions.sh: $binary is missing; run: cargo build --release --workspace" >&2
        exit 1
    fi
done
if ! command -v valgrind >/dev/null 2>&1; then
    echo "instructions.sh: valgrind is missing; install it (Debian: apt-get install valgrind)" >&2
    exit 1
fi

work="$(mktemp -d)"
chmod 700 "$work"
valgrind --tool=callgrind --callgrind-out-file="$work/callgrind.out" \
    "$server" --unix "$work/echo.sock" --mcpsock >"$work/server.log" 2>&1 &
valgrind_pid=$!
trap 'kill "$valgrind_pid" 2>/dev/null || true; wait "$valgrind_pid" 2>/dev/null || true; rm -rf "$work"' EXIT

for _ in $(seq 600); do
    [ -S "$work/echo.sock" ] && break
    sleep 0.1
done
[ -S "$work/echo.sock" ] || { echo "instructions.sh: the server did not start; see $work/server.log" >&2; exit 1; }

calls() {
    "$client" bench --endpoint "unix://$work/echo.sock" --tool echo --arg text=hello \
        --connections "$connections" --requests "$1" --warmup 0s >/dev/null
}
calls 1000
callgrind_control --zero "$valgrind_pid" >/dev/null 2>&1
calls "$requests"
callgrind_control --dump "$valgrind_pid" >/dev/null 2>&1
for _ in $(seq 100); do
    [ -s "$work/callgrind.out.1" ] && break
    sleep 0.1
done
total="$(sed -n 's/^\(summary\|totals\): *\([0-9]*\).*/\2/p' "$work/callgrind.out.1" | head -n 1)"
[ -n "$total" ] || { echo "instructions.sh: callgrind wrote no totals" >&2; exit 1; }
echo "$((total / requests)) instructions per request ($requests requests, $connections connections)"
