#!/usr/bin/env bash
# Every test: set-up (idempotent), then the workspace's unit tests and the integration tests in
# tests/ and relay/tests/, which start their own throwaway PostgreSQL 15 cluster (and HTTP
# receivers, and the ae-relay binary); smoke runs of the benchmarks; then formatting and lints.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo test --workspace --no-fail-fast
# Small runs of the benchmarks, so that they cannot rot (the extension's checks payloads, the
# relay's, to webhooks and to NATS JetStream, counts lost and out-of-order deliveries; either
# fails the run).
cargo run --quiet --example bench -- --smoke
cargo build --quiet -p ae-relay --bins
cargo run --quiet -p ae-relay --example relay_bench -- --smoke
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
