#!/usr/bin/env bash
# Start (up) or stop (down) the servers the test suite needs, on ports of their own.
# `up` installs what is missing from Debian's packages and starts only what is not
# already answering; `down` stops only what `up` started (recorded in STATE_DIR).
set -euo pipefail

STATE_DIR=${STATE_DIR:-.test-services}
REDIS_PORT=${FLYWHEEL_TEST_REDIS_PORT:-6399}
PG_PORT=${FLYWHEEL_TEST_POSTGRES_PORT:-5499}

apt_install() {
    # apt-get update once per `up`, and only when something must be installed.
    if [ -z "${APT_UPDATED:-}" ]; then apt-get update -qq; APT_UPDATED=1; fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

redis_up() {
    if redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1; then
        echo "redis: already running on $REDIS_PORT"
        local databases
        databases=$(redis-cli -p "$REDIS_PORT" config get databases 2>/dev/null | tail -n 1) || true
        [ "${databases:-0}" -ge 64 ] || echo "redis: it has $databases databases, the suite's workers need 64" >&2
        return
    fi
    command -v redis-server >/dev/null || apt_install redis-server
    mkdir -p "$STATE_DIR/redis"
    # 64 databases: 16 for each of up to four pytest-xdist workers (tests/harness.py).
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --daemonize yes \
        --dir "$PWD/$STATE_DIR/redis" --pidfile "$PWD/$STATE_DIR/redis.pid" \
        --logfile "$PWD/$STATE_DIR/redis.log" --save "" --appendonly no --databases 64
    for _ in $(seq 50); do
        redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && { echo "redis: started on $REDIS_PORT"; return; }
        sleep 0.1
    done
    echo "redis: did not start, see $STATE_DIR/redis.log" >&2
    exit 1
}

redis_down() {
    if [ -f "$STATE_DIR/redis.pid" ]; then
        redis-cli -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1 || kill "$(cat "$STATE_DIR/redis.pid")" 2>/dev/null || true
        rm -f "$STATE_DIR/redis.pid"
        echo "redis: stopped"
    fi
}

# PostgreSQL: a throwaway cluster under $STATE_DIR/postgres, on 127.0.0.1:$PG_PORT only, with
# trust auth, a superuser `flywheel` and a database `flywheel`
# (postgresql://flywheel@127.0.0.1:$PG_PORT/flywheel). Its unix socket lies in $STATE_DIR too.
# initdb and postgres refuse to run as root: as root they run as the `postgres` user (made by
# Debian's postgresql package), which then owns the cluster's files.
pg_abs_state() {
    case "$STATE_DIR" in /*) echo "$STATE_DIR" ;; *) echo "$PWD/$STATE_DIR" ;; esac
}

pg_bindir() {
    # Prints the directory holding initdb and pg_ctl: Debian's /usr/lib/postgresql/<major>/bin,
    # the data directory's own major version first, then the highest one; else from PATH.
    local data=$1 dir major initdb
    if [ -f "$data/PG_VERSION" ]; then
        major=$(cat "$data/PG_VERSION")
        dir=/usr/lib/postgresql/$major/bin
        [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ] && { echo "$dir"; return; }
    fi
    for dir in $(printf '%s\n' /usr/lib/postgresql/*/bin | sort -t/ -k5,5 -rV); do
        [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ] && { echo "$dir"; return; }
    done
    initdb=$(command -v initdb) || return 1
    dir=$(dirname "$initdb")
    [ -x "$dir/pg_ctl" ] && { echo "$dir"; return; }
    command -v pg_ctl >/dev/null || return 1
    echo "$dir"
}

pg_as_owner() {
    # Runs a command as the user that owns the cluster: `postgres` when we are root.
    if [ "$(id -u)" = 0 ]; then
        (cd / && runuser -u postgres -- "$@")
    else
        "$@"
    fi
}

pg_answers() {
    # Whether something accepts connections on 127.0.0.1:$PG_PORT (pg_isready from $1, or PATH).
    local isready=pg_isready
    [ -n "${1:-}" ] && [ -x "$1/pg_isready" ] && isready=$1/pg_isready
    "$isready" -q -t 2 -h 127.0.0.1 -p "$PG_PORT" -U flywheel -d postgres >/dev/null 2>&1
}

postgres_up() {
    local state data sock log bin
    state=$(pg_abs_state)
    data=$state/postgres
    sock=$state/postgres-socket
    log=$state/postgres.log
    bin=$(pg_bindir "$data") || bin=
    if pg_answers "$bin"; then
        echo "postgres: already running on $PG_PORT"
        return
    fi
    if [ -z "$bin" ]; then
        apt_install postgresql
        bin=$(pg_bindir "$data") || { echo "postgres: initdb/pg_ctl not found after installing postgresql" >&2; exit 1; }
    fi
    if [ "$(id -u)" = 0 ] && ! id postgres >/dev/null 2>&1; then
        echo "postgres: running as root, but there is no 'postgres' user to run the server as" >&2
        exit 1
    fi
    mkdir -p "$data" "$sock"
    chmod 700 "$data"
    touch "$log"
    if [ "$(id -u)" = 0 ]; then chown -R postgres: "$data" "$sock" "$log"; fi
    # shellcheck disable=SC2016  # $1..$3 are expanded by that sh
    if ! pg_as_owner sh -c 'test -w "$1" && test -w "$2" && test -w "$3"' sh "$data" "$sock" "$log"; then
        echo "postgres: $(pg_as_owner id -un) cannot write to $data (check the permissions of its parent directories)" >&2
        exit 1
    fi
    if [ ${#sock} -gt 90 ]; then
        # A unix socket path has at most 107 bytes; past that, postgres refuses to start.
        echo "postgres: socket directory path too long ($sock)" >&2
        exit 1
    fi
    if [ ! -f "$data/PG_VERSION" ]; then
        if ! pg_as_owner "$bin/initdb" -D "$data" -U flywheel --auth=trust -E UTF8 --no-locale >>"$log" 2>&1; then
            echo "postgres: initdb failed, see $STATE_DIR/postgres.log" >&2
            exit 1
        fi
        # fsync stays on: the tests measure durability semantics.
        printf '%s\n' '' '# test-services.sh' "listen_addresses = '127.0.0.1'" 'max_connections = 200' \
            | pg_as_owner tee -a "$data/postgresql.conf" >/dev/null
    fi
    # Port, socket directory and address are given at each start: they follow the environment.
    if ! pg_as_owner "$bin/pg_ctl" start -W -D "$data" -l "$log" \
            -o "-p $PG_PORT -k '$sock' -c listen_addresses=127.0.0.1" >/dev/null; then
        echo "postgres: pg_ctl start failed, see $STATE_DIR/postgres.log" >&2
        exit 1
    fi
    echo "$PG_PORT" >"$STATE_DIR/postgres.started"
    local deadline=$((SECONDS + 10))
    while [ "$SECONDS" -lt "$deadline" ]; do
        if pg_answers "$bin"; then
            if [ -z "$("$bin/psql" -h 127.0.0.1 -p "$PG_PORT" -U flywheel -d postgres -XAtq \
                    -c "SELECT 1 FROM pg_database WHERE datname = 'flywheel'")" ]; then
                "$bin/psql" -h 127.0.0.1 -p "$PG_PORT" -U flywheel -d postgres -Xq \
                    -c 'CREATE DATABASE flywheel OWNER flywheel'
            fi
            echo "postgres: started on $PG_PORT"
            return
        fi
        sleep 0.1
    done
    echo "postgres: did not start, see $STATE_DIR/postgres.log" >&2
    exit 1
}

postgres_down() {
    local data bin
    data=$(pg_abs_state)/postgres
    if [ -f "$STATE_DIR/postgres.started" ]; then
        if [ -f "$data/postmaster.pid" ]; then
            if bin=$(pg_bindir "$data"); then
                pg_as_owner "$bin/pg_ctl" stop -D "$data" -m fast >/dev/null 2>&1 || true
            else
                kill -INT "$(head -n 1 "$data/postmaster.pid")" 2>/dev/null || true  # fast shutdown
            fi
        fi
        rm -f "$STATE_DIR/postgres.started"
        echo "postgres: stopped"
    fi
}

chromium_up() {
    # Headless Chromium for the chat page's browser tests (Playwright drives the system
    # browser; nothing is downloaded from Playwright's CDN). Fonts: a page without any renders
    # boxes in its screenshots.
    command -v chromium >/dev/null && return
    apt_install --no-install-recommends chromium fonts-dejavu-core
    echo "chromium: installed"
}

promtool_up() {
    # promtool checks and unit-tests the chart's alert rules. It comes with Debian's
    # prometheus package: without recommends (node-exporter), and with service starts
    # refused during the install (policy-rc.d), since only the binary is wanted.
    command -v promtool >/dev/null && return
    local policy=/usr/sbin/policy-rc.d own_policy=""
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && own_policy=1
    fi
    apt_install --no-install-recommends prometheus
    [ -n "$own_policy" ] && rm -f "$policy"
    echo "promtool: installed"
}

case "${1:-}" in
    up) redis_up; postgres_up; promtool_up; chromium_up ;;
    down) postgres_down; redis_down ;;
    *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
