#!/usr/bin/env bash
# The whole test suite: every crate's unit and integration tests against real PostgreSQL,
# SQLite and NATS, plus the committed OpenAPI document check. This is the README's test command
# and what CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/services.sh
# The IMAP connector's tests start their own Dovecot: install it (dovecot-imapd) when missing.
bash services/ingest/tests/dovecot.sh >/dev/null
# The SMTP tests drive swaks (Debian `swaks`) as a real client: install it when missing. If it
# cannot be installed here, those tests fail and say how to install it.
if ! command -v swaks >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "test.sh: installing swaks" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q swaks >/dev/null 2>&1 ||
    { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q swaks >/dev/null 2>&1; } ||
    echo "test.sh: could not install swaks; the SMTP tests that use it will fail" >&2
fi

# Test databases are per test; drop the ones earlier runs left behind.
psql -h 127.0.0.1 -U postgres -d postgres -Atc \
  "SELECT datname FROM pg_database WHERE datname LIKE 'pv_test_%'" 2>/dev/null |
  while read -r db; do
    psql -h 127.0.0.1 -U postgres -d postgres -qc "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null 2>&1 || true
  done

cargo build --locked --bin postvak
cargo run --locked --quiet --bin postvak -- openapi --check docs/openapi.json
# The OpenAPI document fuzzed against the real binary: no 5xx, every answer matches its schema.
bash scripts/schemathesis.sh
cargo test --locked --workspace --no-fail-fast "$@"
