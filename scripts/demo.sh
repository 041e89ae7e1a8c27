#!/usr/bin/env bash
# The demo: set-up (idempotent), then a throwaway local cluster with the reference schema and
# the extension, a client that LISTENs, the seed's example inserted, and what arrives printed.
# PG_VERSION picks the PostgreSQL major (15 when unset; 18), as for scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
export PG_VERSION="${PG_VERSION:-15}"
./scripts/setup.sh
cargo build --quiet -p ae-relay
cargo run --quiet --no-default-features --features "pg$PG_VERSION" --example demo
