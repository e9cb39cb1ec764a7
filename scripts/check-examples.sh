#!/usr/bin/env bash
# Validates the deployment examples in examples/: the systemd user units
# (with `systemd-analyze --user verify` where it exists, any warning being a
# failure) and the Docker image and compose file (with `docker compose config`
# where a Docker daemon answers), plus structural checks that run everywhere:
# every command the examples run must be one the built mcpsock accepts.
#
#   bash scripts/check-examples.sh [path/to/mcpsock]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

mcpsock="${1:-target/debug/mcpsock}"
[[ -x "$mcpsock" ]] || { echo "check-examples: $mcpsock is missing; build first" >&2; exit 1; }
mcpsock="$(cd "$(dirname "$mcpsock")" && pwd)/$(basename "$mcpsock")"

fail=0
problem() { echo "check-examples: $*" >&2; fail=1; }
need() { # need FILE PATTERN WHY
    grep -Eq "$2" "$1" || problem "$1: $3"
}

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# --- systemd ---------------------------------------------------------------
for dir in examples/systemd/plain examples/systemd/socket-activated; do
    service="$dir/mcpsock.service"
    need "$service" '^Type=notify$' "must be Type=notify (mcpsock sends READY=1)"
    need "$service" '^ExecStart=.*mcpsock serve' "must run mcpsock serve"
    need "$service" '^ExecReload=/bin/kill -HUP \$MAINPID$' "must reload with SIGHUP"
    need "$service" '^WatchdogSec=' "should ask for the watchdog"
    # The flags the unit passes must be ones mcpsock accepts.
    args="$(sed -n 's/^ExecStart=[^ ]*mcpsock serve//p' "$service")"
    # shellcheck disable=SC2086
    "$mcpsock" serve $args --help >/dev/null || problem "$service: mcpsock rejects: serve$args"
    if command -v systemd-analyze >/dev/null 2>&1; then
        copy="$work/$(basename "$dir")"
        mkdir -p "$copy"
        cp "$dir"/* "$copy/"
        # verify checks that ExecStart names an executable: point it at the build.
        sed -i "s|^ExecStart=[^ ]*mcpsock|ExecStart=$mcpsock|" "$copy/mcpsock.service"
        if ! output="$(cd "$copy" && XDG_RUNTIME_DIR="$work" systemd-analyze --user verify "$copy"/* 2>&1)" || [[ -n "$output" ]]; then
            problem "$dir: systemd-analyze verify: $output"
        fi
    fi
done
need examples/systemd/socket-activated/mcpsock.socket '^ListenStream=%t/mcpsock/mcpsock.sock$' \
    "must listen where mcpsock looks by default"
need examples/systemd/socket-activated/mcpsock.socket '^SocketMode=0600$' "the socket must be private"
command -v systemd-analyze >/dev/null 2>&1 || echo "check-examples: systemd-analyze not found; structural checks only" >&2

# --- Docker ------------------------------------------------------------------
dockerfile=examples/docker/Dockerfile
compose=examples/docker/compose.yaml
need "$dockerfile" '^HEALTHCHECK .*' "needs a HEALTHCHECK"
need "$dockerfile" 'CMD mcpsock health' "the health check must run mcpsock health"
need "$dockerfile" '^USER ' "must not run as root"
need "$dockerfile" '^CMD \["mcpsock", "serve"\]$' "must run mcpsock serve"
need "$compose" 'test: \["CMD-SHELL", "mcpsock health' "the compose health check must run mcpsock health"
"$mcpsock" health --help >/dev/null || problem "mcpsock has no health command"
python3 -c 'import json, sys; json.load(open(sys.argv[1]))' examples/docker/config.json \
    || problem "examples/docker/config.json is not JSON"
if docker compose version >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
    docker compose -f "$compose" config -q || problem "$compose: docker compose config failed"
else
    echo "check-examples: no docker compose with a daemon; structural checks only" >&2
fi

exit "$fail"
