#!/usr/bin/env bash
# Create (or reuse) the virtualenv for the Python integration tests in
# tests/python, with the pinned third-party MCP client and server packages
# from tests/python/requirements.txt.
#
#   bash scripts/test-deps.sh            # prints the venv's python last
#   "$(bash scripts/test-deps.sh | tail -n1)" -m pytest tests/python
#
# The venv lives at ${MCPSOCK_TEST_VENV:-<repo>/target/test-venv}. Only
# python3 (3.11+) with the venv module and access to PyPI are needed.
#
# It also installs the pinned npm MCP servers of tests/python/npm-upstreams.txt
# into <repo>/target/npm-upstreams (npm and node are needed for that).
#
# Idempotent: a stamp file in the venv holds a hash of the requirements file
# and of the interpreter version. When it matches, nothing is installed. When
# the interpreter changed, the venv is rebuilt from scratch.
#
# Progress goes to stderr; the only stdout line is the venv's python.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MCPSOCK_TEST_VENV:-$REPO/target/test-venv}"
REQS="$REPO/tests/python/requirements.txt"
STAMP="$VENV/.mcpsock-test-deps.stamp"
PY="$VENV/bin/python"

log() { printf 'test-deps: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

[[ -f "$REQS" ]] || die "missing $REQS"

sha256() {
    if command -v sha256sum >/dev/null 2>&1; then
        sha256sum | cut -d' ' -f1
    else
        shasum -a 256 | cut -d' ' -f1
    fi
}

# `python3` may be a pyenv shim; ask it for the real interpreter's version.
VERSION_PROBE='import sys; print(sys.implementation.name, sys.version.split()[0])'
BASE_VERSION="$(/usr/bin/env python3 -c "$VERSION_PROBE")" || die "python3 not found"
/usr/bin/env python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || die "python3 is $BASE_VERSION; 3.11 or newer is needed"
WANT="$({ cat "$REQS"; printf '%s\n' "$BASE_VERSION"; } | sha256)"

venv_version() { "$PY" -c "$VERSION_PROBE" 2>/dev/null || true; }

# Serialise concurrent runs (two test jobs on one checkout) where flock exists.
mkdir -p "$(dirname "$VENV")"
if command -v flock >/dev/null 2>&1; then
    exec 9>"$VENV.lock"
    flock 9
fi

# The npm upstreams: installed when their pinned list changed.
NPM_LIST="$REPO/tests/python/npm-upstreams.txt"
NPM_DIR="${MCPSOCK_TEST_NPM:-$REPO/target/npm-upstreams}"
NPM_STAMP="$NPM_DIR/.mcpsock-test-deps.stamp"
NPM_WANT="$(sha256 <"$NPM_LIST")"
if [[ ! -f "$NPM_STAMP" || "$(cat "$NPM_STAMP")" != "$NPM_WANT" ]]; then
    command -v npm >/dev/null 2>&1 || die "npm is needed for the npm MCP servers in $NPM_LIST"
    log "installing npm upstreams from $NPM_LIST into $NPM_DIR"
    mkdir -p "$NPM_DIR"
    mapfile -t packages < <(grep -Ev '^\s*(#|$)' "$NPM_LIST")
    npm install --prefix "$NPM_DIR" --no-save --no-audit --no-fund --no-update-notifier --loglevel=error \
        "${packages[@]}" >&2 || die "npm install failed"
    printf '%s\n' "$NPM_WANT" >"$NPM_STAMP"
fi

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" && "$(venv_version)" == "$BASE_VERSION" ]]; then
    log "up to date: $VENV"
    printf '%s\n' "$PY"
    exit 0
fi

if [[ "$(venv_version)" != "$BASE_VERSION" ]]; then
    log "creating virtualenv at $VENV ($BASE_VERSION)"
    rm -rf "$VENV"
    /usr/bin/env python3 -m venv "$VENV" || die "python3 -m venv failed (on Debian/Ubuntu: apt-get install python3-venv)"
fi

log "installing pinned requirements from $REQS"
rm -f "$STAMP"
PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 \
    "$PY" -m pip install --quiet --requirement "$REQS" >&2

# Everything the tests use must be importable, and the time server must be
# runnable by absolute path (mcpsock clears its upstreams' PATH).
"$PY" -c 'import mcp, mcp_types, httpx, httpx2, pytest, mcp_server_time' >&2 \
    || die "installed packages do not import"
[[ -x "$VENV/bin/mcp-server-time" ]] || die "$VENV/bin/mcp-server-time is missing"

printf '%s\n' "$WANT" >"$STAMP"
log "installed into $VENV"
printf '%s\n' "$PY"
