#!/usr/bin/env bash
# Every test, on the PostgreSQL major in PG_VERSION (15 when unset; 16, 17, 18): set-up
# (idempotent), then the workspace's unit tests and the integration tests in tests/ and
# relay/tests/, which start their own throwaway cluster of that major (and HTTP receivers, and
# the ae-relay binary); smoke runs of the benchmarks; on 15, the Debian packages and their test;
# then formatting and lints (AE_EVENTS_SKIP_LINTS=1 skips them, for a second major in the same CI
# run: the lints of the extension's code for that major still run).
set -euo pipefail
cd "$(dirname "$0")/.."
export PG_VERSION="${PG_VERSION:-15}"
./scripts/setup.sh
# A CI run builds once: incremental state would only take disk.
if [ "${CI:-}" = "true" ]; then
    export CARGO_INCREMENTAL=0
fi
# The extension is built for exactly one major (pgrx's pgNN features exclude each other); the
# relay has no such features.
features=(--no-default-features --features "ae_events/pg$PG_VERSION")
cargo test --workspace "${features[@]}" --no-fail-fast
# Small runs of the benchmarks, so that they cannot rot (the extension's checks payloads, the
# relay's, to webhooks and to NATS JetStream, counts lost and out-of-order deliveries; either
# fails the run).
cargo run --quiet "${features[@]}" --example bench -- --smoke
cargo build --quiet -p ae-relay --bins
cargo run --quiet -p ae-relay --example relay_bench -- --smoke
# The Debian packages (release builds): this version's and the previous release's extension
# package, then their test. It installs them into the system's PostgreSQL (Debian's, so 15),
# setting aside the files setup.sh installed meanwhile: hence after every other test, never
# beside them.
if [ "$PG_VERSION" = "15" ]; then
    ./scripts/package.sh
    ./scripts/package.sh --previous --extension
    cargo test "${features[@]}" --test packages -- --ignored
fi
if [ "${AE_EVENTS_SKIP_LINTS:-0}" = "1" ]; then
    cargo clippy --quiet -p ae_events --lib --no-default-features --features "pg$PG_VERSION" -- -D warnings
else
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets --quiet "${features[@]}" -- -D warnings
fi
