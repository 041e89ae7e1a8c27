#!/usr/bin/env bash
# The side-by-side benchmark (examples/bench): set-up with a release build of the extension,
# then one run on a throwaway cluster that prints the tables and ratios the README shows.
# Then the relay's benchmark (relay/examples/relay_bench.rs: `--only delivery` for webhooks,
# `--only fleet` for several relays and failover, `--only nats` for NATS JetStream). Takes about 15 minutes on 2 cores. `scripts/bench.sh --smoke`
# runs it at a tiny size; `--only bulk,single-row,...` runs some workloads (see
# examples/bench/main.rs). PG_VERSION picks the PostgreSQL major (15 when unset; 18), as for
# scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
export PG_VERSION="${PG_VERSION:-15}"
features=(--no-default-features --features "pg$PG_VERSION")
AE_EVENTS_RELEASE=1 ./scripts/setup.sh
# --only splits into the extension's workloads and the relay's parts (delivery, fleet, nats); without
# --only, everything runs.
only=""
for ((i = 1; i <= $#; i++)); do
    [ "${!i}" = "--only" ] && { next=$((i + 1)); only="${!next:-}"; }
done
extension_parts=()
relay_parts=()
IFS=',' read -r -a wanted <<<"$only"
for part in "${wanted[@]}"; do
    case "$part" in
        delivery | fleet | nats) relay_parts+=("$part") ;;
        *) extension_parts+=("$part") ;;
    esac
done
smoke=()
for argument in "$@"; do [ "$argument" = "--smoke" ] && smoke=(--smoke); done
# The console workload also fetches pages from `ae-relay console` (AE_RELAY_BIN).
cargo build --quiet --release -p ae-relay --bins
export AE_RELAY_BIN="${CARGO_TARGET_DIR:-$PWD/target}/release/ae-relay"
if [ -z "$only" ]; then
    cargo run --quiet --release "${features[@]}" --example bench -- "$@"
elif [ "${#extension_parts[@]}" -gt 0 ]; then
    cargo run --quiet --release "${features[@]}" --example bench -- "${smoke[@]}" --only "$(IFS=','; echo "${extension_parts[*]}")"
fi
if [ -z "$only" ] || [ "${#relay_parts[@]}" -gt 0 ]; then
    relay_only=()
    [ -n "$only" ] && relay_only=(--only "$(IFS=','; echo "${relay_parts[*]}")")
    cargo build --quiet --release -p ae-relay --bins
    cargo run --quiet --release -p ae-relay --example relay_bench -- "${smoke[@]}" "${relay_only[@]}"
fi
