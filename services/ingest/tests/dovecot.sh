#!/usr/bin/env bash
# Makes sure Dovecot's IMAP server is installed (Debian `dovecot-imapd`) for the IMAP connector
# tests, which start their own instance (`dovecot -F -c <their config>`) on a free loopback
# port. Installs the package when /usr/sbin/dovecot is missing; never starts the system
# service. Prints the path of the dovecot binary. Safe to run repeatedly and concurrently.
set -euo pipefail

bin=/usr/sbin/dovecot
if [ -x "$bin" ]; then
  echo "$bin"
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "dovecot.sh: $bin is missing and apt-get is not available: install Dovecot (dovecot-imapd)" >&2
  exit 1
fi
if [ "$(id -u)" != 0 ]; then
  echo "dovecot.sh: $bin is missing: run 'apt-get install dovecot-imapd' as root" >&2
  exit 1
fi
# One installer at a time (tests run in parallel).
exec 9>/tmp/postvak-dovecot-install.lock
flock 9
if [ ! -x "$bin" ]; then
  echo "dovecot.sh: installing dovecot-imapd" >&2
  # Keep the package's own service from starting: the tests run their own instances.
  policy=/usr/sbin/policy-rc.d
  created_policy=""
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod +x "$policy"
    created_policy=1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null || true
  status=0
  apt-get install -y -qq dovecot-imapd >/dev/null || status=$?
  if [ -n "$created_policy" ]; then rm -f "$policy"; fi
  if [ "$status" != 0 ] || [ ! -x "$bin" ]; then
    echo "dovecot.sh: installing dovecot-imapd failed (apt-get exit $status)" >&2
    exit 1
  fi
fi
echo "$bin"
