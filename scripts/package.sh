#!/usr/bin/env bash
# Debian packages, release builds:
#   postgresql-<major>-ae-events_<version>_<arch>.deb  the extension for Debian's PostgreSQL <major>
#                                                     (`cargo pgrx package`, plus every upgrade
#                                                     script and earlier release's install script)
#   ae-relay_<version>_<arch>.deb                     /usr/bin/ae-relay, its systemd unit, the
#                                                     example config as a conffile
#
# Usage: scripts/package.sh [--extension | --relay] [--revision REV | --previous] [--out-dir DIR]
#   --extension, --relay  build only that package (default: both)
#   --revision REV        build from a git revision's source, checked out in a temporary worktree
#   --previous            the latest release in sql/released/, from its commit in sql/releases.tsv
#   --out-dir DIR         where the .deb files go (default: target/packages)
#   --force               rebuild a revision's package even if it is already there
# PG_VERSION (the major, default 15) and/or PG_CONFIG (default Debian's
# /usr/lib/postgresql/<major>/bin/pg_config) choose the server. The files are laid out for Debian's
# postgresql-<major> whatever PG_CONFIG's own paths are, so a private copy of the same major
# builds the same package. Running it again rebuilds only what changed.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"

build_extension=1
build_relay=1
revision=""
out_dir="$root/target/packages"
force=0
while [ $# -gt 0 ]; do
    case "$1" in
        --extension) build_relay=0 ;;
        --relay) build_extension=0 ;;
        --revision) revision="${2:?--revision needs a git revision}"; shift ;;
        --previous) revision="previous" ;;
        --out-dir) out_dir="${2:?--out-dir needs a directory}"; shift ;;
        --force) force=1 ;;
        -h | --help) sed -n '2,18p' "$0"; exit 0 ;;
        *) echo "package: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
mkdir -p "$out_dir"
out_dir="$(cd "$out_dir" && pwd)"

# The server: PG_CONFIG's major must be PG_VERSION's when both are given.
if [ -n "${PG_CONFIG:-}" ]; then
    major="$("$PG_CONFIG" --version | sed -E 's/^PostgreSQL ([0-9]+).*/\1/')"
    if [ -n "${PG_VERSION:-}" ] && [ "$PG_VERSION" != "$major" ]; then
        echo "package: PG_CONFIG ($PG_CONFIG) is PostgreSQL $major, PG_VERSION says $PG_VERSION" >&2
        exit 2
    fi
else
    major="${PG_VERSION:-15}"
    PG_CONFIG="/usr/lib/postgresql/$major/bin/pg_config"
    # Majors without a Debian server here (16-18): the pg_config scripts/setup.sh registered
    # with pgrx (PG_VERSION=$major scripts/setup.sh first).
    if [ ! -x "$PG_CONFIG" ]; then
        PG_CONFIG="$(sed -n "s/^pg$major = \"\(.*\)\"\$/\1/p" "${PGRX_HOME:-$HOME/.pgrx}/config.toml" 2>/dev/null)"
    fi
fi
[ -x "$PG_CONFIG" ] || { echo "package: no pg_config at $PG_CONFIG" >&2; exit 2; }

# dpkg-shlibdeps (dpkg-dev) computes the library dependencies.
if ! command -v dpkg-shlibdeps >/dev/null; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dpkg-dev </dev/null
fi

arch="$(dpkg --print-architecture)"
maintainer="${DEB_MAINTAINER:-ae_events maintainers <maintainers@ae-events.invalid>}"
staging="$root/target/package-staging"

# The [package] version (or another key) of a Cargo.toml read on stdin.
cargo_field() {
    awk -v key="$1" -F'"' '/^\[/ { section = $0 }
        section == "[package]" && $0 ~ "^" key " *=" { print $2; exit }'
}

# A control file's Description: the summary, then the extended text indented by one space.
description() {
    printf '%s\n' "$1"
    printf '%s\n' "$2" | fold -s -w 76 | sed -e 's/ *$//' -e 's/^$/./' -e 's/^/ /'
}

# The Depends of the shared libraries these ELF files need (libc6, libgcc-s1), as Debian's own
# packages compute them.
shlib_depends() {
    local dir
    dir="$(mktemp -d)"
    mkdir "$dir/debian"
    printf 'Source: ae-events\n\nPackage: ae-events\nArchitecture: any\n' >"$dir/debian/control"
    if ! (cd "$dir" && dpkg-shlibdeps -O "$@" >"$dir/out" 2>"$dir/err"); then
        cat "$dir/err" >&2
        rm -rf "$dir"
        return 1
    fi
    sed -n 's/^shlibs:Depends=//p' "$dir/out"
    rm -rf "$dir"
}

# DEBIAN/md5sums of a staged tree (conffiles excluded, as dpkg expects), then the .deb.
build_deb() {
    local stage="$1" deb="$2"
    rm -f "$deb.source" # its revision's stamp, if any
    (cd "$stage" && find . -path ./DEBIAN -prune -o -path ./etc -prune -o -type f -printf '%P\n' |
        LC_ALL=C sort | xargs -r -d '\n' md5sum) >"$stage/DEBIAN/md5sums"
    chmod 644 "$stage/DEBIAN/md5sums"
    dpkg-deb --root-owner-group -Zxz --build "$stage" "$deb" >/dev/null
    echo "package: $deb ($(du -h "$deb" | cut -f1))"
}

installed_size() {
    du -sk --exclude=DEBIAN "$1" | cut -f1
}

# README, license and Debian's copyright file in /usr/share/doc/<package>/.
install_docs() {
    local src="$1" doc="$2" license="$src/LICENSE"
    [ -f "$license" ] || license="$root/LICENSE" # releases before the LICENSE file: MIT as well
    install -d -m 755 "$doc"
    install -m 644 "$src/README.md" "$doc/README.md"
    install -m 644 "$license" "$doc/LICENSE"
    {
        printf 'ae_events and ae-relay\n\nCopyright: the ae_events authors\nLicense: MIT\n\n'
        cat "$license"
    } >"$doc/copyright"
    chmod 644 "$doc/copyright"
}

package_extension() {
    local src="$1" version package stage lib extension started
    started=$SECONDS
    version="$(cargo_field version <"$src/Cargo.toml")"
    package="postgresql-$major-ae-events"
    stage="$staging/$package"
    echo "package: building $package $version (release) with $PG_CONFIG"
    rm -rf "$staging/pgrx-$major"
    (cd "$src" && cargo pgrx package -p ae_events --no-default-features --features "pg$major" \
        --pg-config "$PG_CONFIG" --out-dir "$staging/pgrx-$major")
    # cargo pgrx package lays the files out under pg_config's own directories.
    lib="$staging/pgrx-$major$("$PG_CONFIG" --pkglibdir)/ae_events.so"
    extension="$staging/pgrx-$major$("$PG_CONFIG" --sharedir)/extension"

    rm -rf "$stage"
    install -d -m 755 "$stage/DEBIAN" "$stage/usr/lib/postgresql/$major/lib" \
        "$stage/usr/share/postgresql/$major/extension"
    install -m 644 "$lib" "$stage/usr/lib/postgresql/$major/lib/ae_events.so"
    strip --strip-unneeded --remove-section=.comment --remove-section=.note \
        "$stage/usr/lib/postgresql/$major/lib/ae_events.so"
    # As scripts/setup.sh installs them: the upgrade scripts, for ALTER EXTENSION ae_events
    # UPDATE, and the frozen install scripts of earlier releases.
    local script
    for script in "$src"/sql/upgrade/ae_events--*.sql "$src"/sql/released/ae_events--*.sql; do
        [ -e "$script" ] || continue
        install -m 644 "$script" "$stage/usr/share/postgresql/$major/extension/"
    done
    install -m 644 "$extension/ae_events.control" "$extension/ae_events--$version.sql" \
        "$stage/usr/share/postgresql/$major/extension/"
    install_docs "$src" "$stage/usr/share/doc/$package"

    {
        echo "Package: $package"
        echo "Version: $version"
        echo "Architecture: $arch"
        echo "Maintainer: $maintainer"
        echo "Installed-Size: $(installed_size "$stage")"
        echo "Depends: postgresql-$major, $(shlib_depends "$stage/usr/lib/postgresql/$major/lib/ae_events.so")"
        echo "Section: database"
        echo "Priority: optional"
        echo -n "Description: "
        description "ae_events: event emitter for PostgreSQL $major" \
            "$(cargo_field description <"$src/Cargo.toml").

Then CREATE EXTENSION ae_events in the application's database, or, after an upgrade of this package, ALTER EXTENSION ae_events UPDATE."
    } >"$stage/DEBIAN/control"
    build_deb "$stage" "$out_dir/${package}_${version}_${arch}.deb"
    echo "package: $package $version took $((SECONDS - started)) s"
}

package_relay() {
    local src="$1" version stage doc started target
    started=$SECONDS
    version="$(cargo_field version <"$src/relay/Cargo.toml")"
    stage="$staging/ae-relay"
    echo "package: building ae-relay $version (release)"
    (cd "$src" && cargo build --release --locked -p ae-relay --bin ae-relay)
    target="${CARGO_TARGET_DIR:-$src/target}"

    rm -rf "$stage"
    install -d -m 755 "$stage/DEBIAN" "$stage/usr/bin" "$stage/lib/systemd/system" \
        "$stage/etc/ae-relay"
    install -m 755 "$target/release/ae-relay" "$stage/usr/bin/ae-relay"
    strip --remove-section=.comment --remove-section=.note "$stage/usr/bin/ae-relay"
    # The unit names the binary installed by hand (/usr/local/bin); the package's is in /usr/bin.
    sed 's#^ExecStart=/usr/local/bin/ae-relay #ExecStart=/usr/bin/ae-relay #' "$src/relay/packaging/ae-relay.service" \
        >"$stage/lib/systemd/system/ae-relay.service"
    chmod 644 "$stage/lib/systemd/system/ae-relay.service"
    grep -q '^ExecStart=/usr/bin/ae-relay ' "$stage/lib/systemd/system/ae-relay.service" || {
        echo "package: ae-relay.service does not start /usr/bin/ae-relay" >&2
        exit 1
    }
    install -m 644 "$src/relay/packaging/ae-relay.toml" "$stage/etc/ae-relay/ae-relay.toml"
    doc="$stage/usr/share/doc/ae-relay"
    install_docs "$src" "$doc"
    # The database URL holds a password: the operator writes /etc/ae-relay/ae-relay.env (0600).
    install -d -m 755 "$doc/examples"
    install -m 644 "$src/relay/packaging/ae-relay.env.example" "$doc/examples/ae-relay.env.example"

    echo /etc/ae-relay/ae-relay.toml >"$stage/DEBIAN/conffiles"
    local script
    for script in postinst prerm postrm; do
        install -m 755 "$root/relay/packaging/debian/$script" "$stage/DEBIAN/$script"
    done
    {
        echo "Package: ae-relay"
        echo "Version: $version"
        echo "Architecture: $arch"
        echo "Maintainer: $maintainer"
        echo "Installed-Size: $(installed_size "$stage")"
        echo "Depends: $(shlib_depends "$stage/usr/bin/ae-relay")"
        echo "Section: net"
        echo "Priority: optional"
        echo -n "Description: "
        description "ae-relay: webhook and NATS delivery of the ae_events outbox" \
            "$(cargo_field description <"$src/relay/Cargo.toml").

Configure /etc/ae-relay/ae-relay.toml and write DATABASE_URL to /etc/ae-relay/ae-relay.env (mode 0600; an example is in /usr/share/doc/ae-relay/examples), then systemctl enable --now ae-relay."
    } >"$stage/DEBIAN/control"
    build_deb "$stage" "$out_dir/ae-relay_${version}_${arch}.deb"
    echo "package: ae-relay $version took $((SECONDS - started)) s"
}

if [ -z "$revision" ]; then
    [ "$build_extension" = 1 ] && package_extension "$root"
    [ "$build_relay" = 1 ] && package_relay "$root"
    exit 0
fi

if [ "$revision" = previous ]; then
    # The latest version with a frozen install script, and its commit.
    previous="$(ls "$root"/sql/released/ | sed -n 's/^ae_events--\(.*\)\.sql$/\1/p' | sort -V | tail -1)"
    revision="$(awk -v v="$previous" '$1 == v { print $2 }' "$root/sql/releases.tsv")"
    [ -n "$revision" ] || { echo "package: $previous is not in sql/releases.tsv" >&2; exit 2; }
    echo "package: previous release $previous is commit $revision"
fi
commit="$(git -C "$root" rev-parse --verify --quiet "$revision^{commit}")" ||
    { echo "package: $revision is not a commit here" >&2; exit 2; }

# A commit's package changes only with this script: keep it unless --force.
stamp() {
    echo "$commit $major $arch $(cat "$0" "$root"/relay/packaging/debian/* | sha256sum | cut -c1-16)"
}
up_to_date() {
    local deb="$1"
    [ "$force" = 0 ] && [ -f "$deb" ] && [ "$(cat "$deb.source" 2>/dev/null)" = "$(stamp)" ]
}
extension_deb="$out_dir/postgresql-$major-ae-events_$(git -C "$root" show "$commit:Cargo.toml" | cargo_field version)_$arch.deb"
relay_deb="$out_dir/ae-relay_$(git -C "$root" show "$commit:relay/Cargo.toml" 2>/dev/null | cargo_field version)_$arch.deb"
[ "$build_extension" = 1 ] && up_to_date "$extension_deb" && {
    echo "package: $extension_deb (from $commit) is up to date"
    build_extension=0
}
[ "$build_relay" = 1 ] && up_to_date "$relay_deb" && {
    echo "package: $relay_deb (from $commit) is up to date"
    build_relay=0
}
[ "$build_extension" = 1 ] || [ "$build_relay" = 1 ] || exit 0

worktree="$(mktemp -d /tmp/ae-events-package.XXXXXX)"
cleanup() {
    git -C "$root" worktree remove --force "$worktree/src" 2>/dev/null || true
    rm -rf "$worktree"
}
trap cleanup EXIT
git -C "$root" worktree add --quiet --detach "$worktree/src" "$commit"
# A target directory of its own: a cdylib's file has no hash in its name, so in a shared one the
# revision's libae_events.so would replace this checkout's while cargo still deems that fresh.
export CARGO_TARGET_DIR="$root/target/package-revisions"
if [ "$build_extension" = 1 ]; then
    rm -f "$extension_deb.source"
    package_extension "$worktree/src"
    stamp >"$extension_deb.source"
fi
if [ "$build_relay" = 1 ]; then
    rm -f "$relay_deb.source"
    package_relay "$worktree/src"
    stamp >"$relay_deb.source"
fi
