#!/usr/bin/env bash
# The side-by-side benchmark (examples/bench): set-up with a release build of the extension,
# then one run on a throwaway cluster that prints the tables and ratios the README shows.
# Takes about 12 minutes on 2 cores. `scripts/bench.sh --smoke` runs it at a tiny size;
# `--only bulk,single-row,...` runs some workloads (see examples/bench/main.rs).
set -euo pipefail
cd "$(dirname "$0")/.."
AE_EVENTS_RELEASE=1 ./scripts/setup.sh
cargo run --quiet --release --example bench -- "$@"
