#!/usr/bin/env bash
# Every test: set-up (idempotent), then the workspace's unit tests and the integration tests in
# tests/ and relay/tests/, which start their own throwaway PostgreSQL 15 cluster (and HTTP
# receivers, and the ae-relay binary); smoke runs of the benchmarks; the Debian packages and
# their test; then formatting and lints.
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
# The Debian packages (release builds): this version's and the previous release's extension
# package, then their test. It installs them into the system's PostgreSQL, setting aside the
# files setup.sh installed meanwhile: hence after every other test, never beside them.
./scripts/package.sh
./scripts/package.sh --previous --extension
cargo test --test packages -- --ignored
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
