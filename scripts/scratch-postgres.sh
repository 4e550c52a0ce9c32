#!/usr/bin/env bash
# Source me: start a throw-away PostgreSQL (when this machine has one) for the loader test and
# export FITSENSE_TEST_POSTGRES_URL; it is stopped and deleted when the sourcing shell exits.
# Without PostgreSQL binaries (Debian: apt-get install postgresql) nothing happens and the test is skipped.
_pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
if [ -n "$_pg_bin" ] && [ -x "$_pg_bin/initdb" ]; then
    _pg_dir=$(mktemp -d /tmp/fitsense-pg.XXXXXX)
    _pg_run=()
    if [ "$(id -u)" = 0 ]; then  # PostgreSQL refuses to run as root
        chown postgres "$_pg_dir" 2>/dev/null && _pg_run=(runuser -u postgres --)
    fi
    if "${_pg_run[@]}" "$_pg_bin/initdb" -D "$_pg_dir/data" -A trust -U fitsense >"$_pg_dir/initdb.log" 2>&1 \
        && "${_pg_run[@]}" "$_pg_bin/pg_ctl" -D "$_pg_dir/data" -l "$_pg_dir/server.log" -w \
            -o "-k $_pg_dir -c listen_addresses=''" start >/dev/null \
        && "${_pg_run[@]}" "$_pg_bin/createdb" -h "$_pg_dir" -U fitsense fitsense_test; then
        export FITSENSE_TEST_POSTGRES_URL="postgresql+psycopg://fitsense@/fitsense_test?host=$_pg_dir"
        trap '"${_pg_run[@]}" "$_pg_bin/pg_ctl" -D "$_pg_dir/data" -m fast stop >/dev/null 2>&1; rm -rf "$_pg_dir"' EXIT
        echo "scratch PostgreSQL ($_pg_bin) at $_pg_dir"
    else
        echo "PostgreSQL found but could not start (see $_pg_dir); its loader test will be skipped"
    fi
fi
