#!/usr/bin/env bash
# The one test command: formatting, lints, crate boundaries, the Rust test
# suite (unit and integration, with real processes and sockets), then the
# Python suite with real third-party MCP clients and servers.
#
# Idempotent and self-installing: everything the tests need beyond the Rust
# toolchain, python3 and npm is installed by scripts/test-deps.sh and
# scripts/conformance.sh on first use.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n==> %s\n' "$*"; }

step "rustfmt"
cargo fmt --all --check

step "clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "crate boundaries"
bash scripts/check-boundaries.sh

step "build"
# The integration tests and the Python suite run the built binaries,
# including the demo server of another package, and the conformance run
# serves the library example, so build them all first.
cargo build --workspace --locked --bins --examples

step "rustdoc (warnings are errors) and doctests"
# The README's Rust example is one of the doctests.
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked
cargo test --doc --workspace --locked

step "deployment examples"
bash scripts/check-examples.sh target/debug/mcpsock

step "system tools the tests use"
# The admin API tests read it with curl, as monitoring scripts do.
if ! command -v curl >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1; then
        apt-get update -qq && apt-get install -y -qq curl
    else
        echo "curl is needed by the tests; install it" >&2
        exit 1
    fi
fi

step "Rust tests"
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --locked --no-fail-fast
else
    cargo test --workspace --locked --no-fail-fast
fi

step "Python tests (real MCP clients and servers)"
python="$(bash scripts/test-deps.sh | tail -n 1)"
# The Rust tests built the debug binaries the Python suite drives.
MCPSOCK_BIN="$PWD/target/debug/mcpsock" "$python" -m pytest tests/python -q -p no:cacheprovider

step "MCP conformance suite through the gateway and the library"
MCPSOCK_BIN="$PWD/target/debug/mcpsock" bash scripts/conformance.sh
