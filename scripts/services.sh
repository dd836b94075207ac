#!/usr/bin/env bash
# Makes sure PostgreSQL (127.0.0.1:5432, trust auth for user postgres) and NATS with JetStream
# (127.0.0.1:4222) are running: starts them when they are down, installs them from Debian's
# packages when they are missing. Safe to run repeatedly.
set -euo pipefail

log() { printf 'services: %s\n' "$*" >&2; }

tcp_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_for() { # name port seconds
  local i
  for ((i = 0; i < $3 * 10; i++)); do
    if tcp_open "$2"; then return 0; fi
    sleep 0.1
  done
  log "$1 did not come up on 127.0.0.1:$2 within $3 s"
  return 1
}

apt_updated=""
apt_install() {
  if [ -z "$apt_updated" ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

ensure_postgres() {
  if tcp_open 5432; then return 0; fi
  if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
    log "installing PostgreSQL"
    apt_install postgresql postgresql-contrib
    local hba
    hba=$(ls /etc/postgresql/*/main/pg_hba.conf | head -n1)
    # Tests connect as postgres over loopback without a password, as on the CI machines.
    sed -i -E 's/^(local|host)(\s+all\s+all\s+.*)\s(peer|md5|scram-sha-256)$/\1\2 trust/' "$hba"
    sed -i -E 's/^(local|host)(\s+all\s+postgres\s+.*)\s(peer|md5|scram-sha-256)$/\1\2 trust/' "$hba"
    grep -q '^host all all 127.0.0.1/32 trust' "$hba" || echo 'host all all 127.0.0.1/32 trust' >>"$hba"
  fi
  log "starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
  wait_for PostgreSQL 5432 60
}

ensure_nats() {
  if tcp_open 4222; then return 0; fi
  if [ ! -x /usr/sbin/nats-server ]; then
    log "installing nats-server"
    apt_install nats-server
  fi
  mkdir -p /var/lib/nats-server
  log "starting nats-server with JetStream"
  start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- \
    -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log
  wait_for NATS 4222 30
}

ensure_postgres
ensure_nats
