#!/bin/sh
# pg_config for PostgreSQL 17's server headers, unpacked by scripts/setup.sh from Debian trixie's
# postgresql-server-dev-17 into .postgresql/17 (this script is installed there as pg_config).
# That package's own pg_config needs trixie's newer C library; this one answers what cargo-pgrx
# asks from the unpacked tree. There is no server: bindir holds no postgres.
root="$(cd "$(dirname "$0")" && pwd)"
server="$root/usr/include/postgresql/17/server"
[ "$#" -gt 0 ] || set -- --version
for flag in "$@"; do
    case "$flag" in
        --version) echo "PostgreSQL $(sed -n 's/^#define PG_VERSION "\(.*\)"$/\1/p' "$server/pg_config.h")" ;;
        --bindir) echo "$root/usr/lib/postgresql/17/bin" ;;
        --libdir) echo "$root/usr/lib/x86_64-linux-gnu" ;;
        --pkglibdir) echo "$root/usr/lib/postgresql/17/lib" ;;
        --includedir | --pkgincludedir) echo "$root/usr/include/postgresql" ;;
        --includedir-server) echo "$server" ;;
        --sharedir) echo "$root/usr/share/postgresql/17" ;;
        --pgxs) echo "$root/usr/lib/postgresql/17/lib/pgxs/src/makefiles/pgxs.mk" ;;
        --cppflags) echo "-D_GNU_SOURCE" ;;
        # What the headers say was built in (pg_config.h: USE_ICU, USE_LZ4, USE_OPENSSL).
        --configure) echo "'--with-icu' '--with-lz4' '--with-openssl'" ;;
        *)
            echo "pg_config (stand-in for PostgreSQL 17's headers): $flag is not answered" >&2
            exit 1
            ;;
    esac
done
