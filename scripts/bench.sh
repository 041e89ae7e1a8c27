#!/usr/bin/env bash
# The side-by-side benchmark (examples/bench): set-up with a release build of the extension,
# then one run on a throwaway cluster that prints the tables and ratios the README shows.
# Then the relay's benchmark (relay/examples/relay_bench.rs, `--only delivery`). Takes about 15
# minutes on 2 cores. `scripts/bench.sh --smoke` runs it at a tiny size;
# `--only bulk,single-row,...` runs some workloads (see examples/bench/main.rs).
set -euo pipefail
cd "$(dirname "$0")/.."
AE_EVENTS_RELEASE=1 ./scripts/setup.sh
# The extension's workloads (unless --only names none of them), then the relay's (unless --only
# is given without "delivery").
only=""
for ((i = 1; i <= $#; i++)); do
    [ "${!i}" = "--only" ] && { next=$((i + 1)); only="${!next:-}"; }
done
if [ -z "$only" ] || [ "$only" != "delivery" ]; then
    cargo run --quiet --release --example bench -- "$@"
fi
if [ -z "$only" ] || [[ ",$only," == *",delivery,"* ]]; then
    cargo build --quiet --release -p ae-relay --bins
    smoke=()
    for argument in "$@"; do [ "$argument" = "--smoke" ] && smoke=(--smoke); done
    cargo run --quiet --release -p ae-relay --example relay_bench -- "${smoke[@]}"
fi
