#!/usr/bin/env bash
# The demo: set-up (idempotent), then a throwaway local cluster with the reference schema and
# the extension, a client that LISTENs, the seed's example inserted, and what arrives printed.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo build --quiet -p ae-relay
cargo run --quiet --example demo
