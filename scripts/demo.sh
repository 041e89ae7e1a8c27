#!/usr/bin/env bash
# The demo: set-up (idempotent), then a throwaway local cluster with the reference schema and
# the extension, a client that LISTENs, the seed's example inserted, and what arrives printed.
# PG_VERSION picks the PostgreSQL major (15 when unset; 18), as for scripts/test.sh.
# --console: at the end, start the operator console (docs/console.md) on 127.0.0.1:8088 with a
# throwaway role granted ae_events_operator (its password printed), until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
    --console) export AE_DEMO_CONSOLE=1 ;;
    "") ;;
    *) echo "usage: $0 [--console]" >&2; exit 2 ;;
esac
export PG_VERSION="${PG_VERSION:-15}"
./scripts/setup.sh
cargo build --quiet -p ae-relay
cargo run --quiet --no-default-features --features "pg$PG_VERSION" --example demo
