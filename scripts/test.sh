#!/usr/bin/env bash
# Every test: set-up (idempotent), then the Rust unit tests and the integration tests in tests/,
# which start their own throwaway PostgreSQL 15 cluster; a smoke run of the benchmark; then
# formatting and lints.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo test --no-fail-fast
# A small run of the benchmark, so that it cannot rot (its payload check fails the run).
cargo run --quiet --example bench -- --smoke
cargo fmt --all -- --check
cargo clippy --all-targets --quiet -- -D warnings
