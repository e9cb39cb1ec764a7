#!/usr/bin/env bash
# Guards the crate boundaries ARCHITECTURE.md promises: an edge that must not
# exist fails the build.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

fail=0
forbid() { # forbid CRATE DEPENDENCY: CRATE must not depend on DEPENDENCY, even indirectly
    if cargo tree --locked -p "$1" -e normal --prefix none --format '{p}' 2>/dev/null | grep -q "^$2 "; then
        echo "boundary broken: $1 depends on $2" >&2
        fail=1
    fi
}
forbid_feature() { # forbid_feature CRATE DEPENDENCY FEATURE: CRATE must not enable FEATURE of DEPENDENCY
    if cargo tree --locked -p "$1" -e features -i "$2" 2>/dev/null | grep -q "$2 feature \"$3\""; then
        echo "boundary broken: $1 enables feature $3 of $2" >&2
        fail=1
    fi
}

# The client side stays light: no daemon, gateway or listener code.
forbid mcpsock-client mcpsock-daemon
forbid mcpsock-client mcpsock-gateway
forbid mcpsock-client mcpsock-transport
forbid mcpsock-client axum
# The gateway and the transport do not know each other; the daemon joins them.
forbid mcpsock-gateway mcpsock-transport
forbid mcpsock-transport mcpsock-gateway
forbid mcpsock-gateway axum
# The gateway serves no HTTP. It is an HTTP client of remote upstreams
# (hyper through rmcp's transports), but no server side may come with that.
forbid_feature mcpsock-gateway hyper server
forbid_feature mcpsock-gateway hyper-util server
forbid_feature mcpsock-gateway rmcp transport-streamable-http-server
forbid_feature mcpsock-gateway rmcp server-side-http
# TLS for remote upstreams is rustls; no OpenSSL anywhere.
forbid mcpsock-gateway openssl
forbid mcpsock-gateway openssl-sys
forbid mcpsock-gateway native-tls
# The store knows neither MCP nor the daemon; the gateway sees no store and
# the client side carries no SQLite.
forbid mcpsock-store rmcp
forbid mcpsock-store mcpsock-daemon
forbid mcpsock-gateway mcpsock-store
forbid mcpsock-client mcpsock-store
forbid mcpsock-client rusqlite
# The library facade without its default features is the client side only.
forbid_light() { # forbid_light DEPENDENCY: `mcpsock` without default features must not pull it in
    if cargo tree --locked -p mcpsock --no-default-features -e normal --prefix none --format '{p}' 2>/dev/null \
        | grep -q "^$1 "; then
        echo "boundary broken: mcpsock --no-default-features depends on $1" >&2
        fail=1
    fi
}
forbid_light mcpsock-daemon
forbid_light mcpsock-store
forbid_light rusqlite
forbid_light axum
forbid_light clap
# Wire types stay free of behaviour and IO.
forbid mcpsock-api tokio

exit "$fail"
