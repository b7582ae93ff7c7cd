#!/usr/bin/env bash
# Start (up) or stop (down) the servers the test suite needs, on ports of their own.
# `up` installs what is missing from Debian's packages and starts only what is not
# already answering; `down` stops only what `up` started (recorded in STATE_DIR).
set -euo pipefail

STATE_DIR=${STATE_DIR:-.test-services}
REDIS_PORT=${FLYWHEEL_TEST_REDIS_PORT:-6399}

apt_install() {
    # apt-get update once per `up`, and only when something must be installed.
    if [ -z "${APT_UPDATED:-}" ]; then apt-get update -qq; APT_UPDATED=1; fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

redis_up() {
    if redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1; then
        echo "redis: already running on $REDIS_PORT"
        return
    fi
    command -v redis-server >/dev/null || apt_install redis-server
    mkdir -p "$STATE_DIR/redis"
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --daemonize yes \
        --dir "$PWD/$STATE_DIR/redis" --pidfile "$PWD/$STATE_DIR/redis.pid" \
        --logfile "$PWD/$STATE_DIR/redis.log" --save "" --appendonly no
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

case "${1:-}" in
    up) redis_up ;;
    down) redis_down ;;
    *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
