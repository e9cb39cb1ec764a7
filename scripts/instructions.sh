#!/usr/bin/env bash
# Instructions per request of a serving path, counted by valgrind's
# callgrind: unlike requests/s, the count barely moves from run to run, so it
# shows the effect of a change that timing noise would hide.
#
#   scripts/instructions.sh [PATH] [CONNECTIONS] [REQUESTS]
#
# PATH is one of
#   in-process  the benchmark echo tool served through mcpsock
#               (bench-rmcp-echo --mcpsock, sessions in memory); the default
#   rmcp        the same tool served by plain rmcp (bench-rmcp-echo), the
#               baseline of the line above
#   gateway     `mcpsock serve --memory` fronting bench-stdio-echo; counts
#               the daemon only, not the stdio server
#   sqlite      in-process with sessions and events in SQLite
#               (bench-rmcp-echo --mcpsock --db); also counts the store's
#               writer thread on its own
# The server runs under callgrind, is warmed up with 1,000 calls, then its
# instructions are counted over REQUESTS calls (default 3,000) from
# `mcpsock bench` on CONNECTIONS connections (default 4). Needs valgrind and
# the release build (`cargo build --release --workspace`). Under valgrind,
# SHA-256 runs without the CPU's SHA extension, so hashing weighs more here
# than on the machine itself.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

path="${1:-in-process}"
connections="${2:-4}"
requests="${3:-3000}"
client=target/release/mcpsock
work="$(mktemp -d)"
chmod 700 "$work"
tool=echo
case "$path" in
    in-process | rmcp | sqlite)
        server=target/release/bench-rmcp-echo
        argv=("$server" --unix "$work/echo.sock")
        [ "$path" != rmcp ] && argv+=(--mcpsock)
        [ "$path" = sqlite ] && argv+=(--db "$work/state.db")
        endpoint=(--endpoint "unix://$work/echo.sock")
        ready() { [ -S "$work/echo.sock" ]; }
        ;;
    gateway)
        server=target/release/bench-stdio-echo
        printf '{"mcpServers":{"echo":{"command":"%s"}}}' "$PWD/$server" >"$work/config.json"
        argv=("$client" serve --config "$work/config.json" --socket "$work/run/mcpsock.sock" --memory)
        endpoint=(--socket "$work/run/mcpsock.sock")
        tool=echo__echo
        ready() { "$client" tools --socket "$work/run/mcpsock.sock" >/dev/null 2>&1; }
        ;;
    *)
        echo "instructions.sh: unknown path '$path'; use in-process, rmcp, gateway or sqlite" >&2
        rm -rf "$work"
        exit 2
        ;;
esac
for binary in "$server" "$client"; do
    if [ ! -x "$binary" ]; then
        echo "instructions.sh: $binary is missing; run: cargo build --release --workspace" >&2
        rm -rf "$work"
        exit 1
    fi
done
if ! command -v valgrind >/dev/null 2>&1; then
    echo "instructions.sh: valgrind is missing; install it (Debian: apt-get install valgrind)" >&2
    rm -rf "$work"
    exit 1
fi

# SQLite's writer runs on a thread of its own: count each thread apart.
threads=()
dump="$work/callgrind.out.1"
if [ "$path" = sqlite ]; then
    threads=(--separate-threads=yes)
    dump="$work/callgrind.out.1-01"
fi
valgrind --tool=callgrind "${threads[@]}" --callgrind-out-file="$work/callgrind.out" "${argv[@]}" >"$work/server.log" 2>&1 &
valgrind_pid=$!
trap 'kill "$valgrind_pid" 2>/dev/null || true; wait "$valgrind_pid" 2>/dev/null || true; rm -rf "$work"' EXIT

for _ in $(seq 600); do
    ready && break
    sleep 0.1
done
ready || { echo "instructions.sh: the server did not start; see $work/server.log" >&2; exit 1; }

calls() {
    "$client" bench "${endpoint[@]}" --tool "$tool" --arg text=hello \
        --connections "$connections" --requests "$1" --warmup 0s >/dev/null
}
calls 1000
callgrind_control --zero "$valgrind_pid" >/dev/null 2>&1
calls "$requests"
callgrind_control --dump "$valgrind_pid" >/dev/null 2>&1
for _ in $(seq 100); do
    [ -s "$dump" ] && break
    sleep 0.1
done
total=0
writer=0
for file in "$work"/callgrind.out.1*; do
    count="$(sed -n 's/^\(summary\|totals\): *\([0-9]*\).*/\2/p' "$file" | head -n 1)"
    [ -n "$count" ] || continue
    total=$((total + count))
    if grep -q 'mcpsock_store::sqlite::Writer' "$file"; then
        writer=$((writer + count))
    fi
done
[ "$total" -gt 0 ] || { echo "instructions.sh: callgrind wrote no totals" >&2; exit 1; }
summary="$path: $((total / requests)) instructions per request"
[ "$path" = sqlite ] && summary+=", of which $((writer / requests)) on the store's writer thread"
echo "$summary ($requests requests, $connections connections)"
