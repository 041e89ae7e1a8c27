#!/usr/bin/env bash
# Idempotent set-up on Debian: PostgreSQL 15 and its headers, clang, nats-server (the relay's NATS
# tests start their own), cargo-pgrx 0.18.0, pgrx's configuration, then builds ae_events and
# installs it into PostgreSQL 15. A second run only rebuilds what changed.
set -euo pipefail
cd "$(dirname "$0")/.."

# PG_CONFIG may point at another installation of PostgreSQL 15 (a private copy, say).
PG_CONFIG="${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

missing=()
for package in postgresql-15 postgresql-server-dev-15 libclang-dev clang sudo nats-server; do
    dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "setup: installing ${missing[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" </dev/null
fi

if ! cargo pgrx --version 2>/dev/null | grep -q "0\.18\.0"; then
    echo "setup: installing cargo-pgrx 0.18.0 (a few minutes)"
    cargo install cargo-pgrx --version 0.18.0 --locked
fi

if ! grep -q '^pg15' "${PGRX_HOME:-$HOME/.pgrx}/config.toml" 2>/dev/null; then
    cargo pgrx init --pg15 "$PG_CONFIG"
fi

# Build the extension and install it where PostgreSQL 15 looks for extensions.
profile_flag=()
[ "${AE_EVENTS_RELEASE:-0}" = "1" ] && profile_flag=(--release)
if [ -n "$SUDO" ]; then
    cargo pgrx install "${profile_flag[@]}" --sudo --pg-config "$PG_CONFIG"
else
    cargo pgrx install "${profile_flag[@]}" --pg-config "$PG_CONFIG"
fi

# The upgrade scripts (sql/upgrade/), and the install scripts of earlier releases
# (sql/released/), so that `ALTER EXTENSION ae_events UPDATE` and
# `CREATE EXTENSION ae_events VERSION '0.1.0'` (and the tested upgrades) work with this library.
extension_dir="$("$PG_CONFIG" --sharedir)/extension"
for script in sql/upgrade/ae_events--*.sql sql/released/ae_events--*.sql; do
    $SUDO install -m 644 "$script" "$extension_dir/"
done
