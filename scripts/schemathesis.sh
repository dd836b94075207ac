#!/usr/bin/env bash
# Schemathesis against the real `postvak` binary on the embedded default: every documented
# operation of /openapi.json fuzzed (examples, coverage, fuzzing and stateful phases, links
# inferred from the responses), checking that no response is a 5xx and every response matches
# its schema. Bounded: --max-examples (default 10) and --max-time (default 180 s).
#
#   scripts/schemathesis.sh [extra schemathesis args…]
#   ST_MAX_EXAMPLES=25 ST_MAX_TIME=300 scripts/schemathesis.sh
#
# Not fuzzed: /v1/stream (SSE never ends) and the raw-MIME upload (schemathesis has no
# serializer for message/rfc822; the ingest tests cover it). The budget is split between
# examples+coverage and fuzzing+stateful; ST_PHASES=… runs only the phases named.
#
# Installs schemathesis into a venv under $HOME/.cache/postvak/ the first time (from the
# package index pip is configured for). Exit status: schemathesis's (non-zero on a finding).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${HOME}/.cache/postvak/schemathesis-venv"
ST_VERSION="${ST_VERSION:-4.32.5}"
MAX_EXAMPLES="${ST_MAX_EXAMPLES:-10}"
MAX_TIME="${ST_MAX_TIME:-180}"

if [ ! -x "${VENV}/bin/schemathesis" ]; then
  mkdir -p "$(dirname "${VENV}")"
  python3 -m venv "${VENV}"
  "${VENV}/bin/pip" install --quiet "schemathesis==${ST_VERSION}"
fi

cargo build --locked --quiet --bin postvak
BIN="${CARGO_TARGET_DIR:-$(pwd)/target}/debug/postvak"

WORK="$(mktemp -d)"
LOG="${WORK}/postvak.log"
PID=""
cleanup() {
  if [ -n "${PID}" ]; then
    kill -TERM "${PID}" 2>/dev/null || true
    wait "${PID}" 2>/dev/null || true
  fi
  rm -rf "${WORK}"
}
trap cleanup EXIT

# A clean environment: no inherited POSTVAK_* settings.
while IFS= read -r var; do unset "${var}"; done < <(env | sed -n 's/^\(POSTVAK_[A-Z0-9_]*\)=.*/\1/p')
(
  cd "${WORK}"
  POSTVAK_DATA_DIR="${WORK}/data" \
  POSTVAK_HTTP__ADDR=127.0.0.1:0 \
  POSTVAK_SMTP__ADDR=127.0.0.1:0 \
  POSTVAK_TELEMETRY__LOG_LEVEL=warn \
  exec "${BIN}"
) >"${LOG}" 2>&1 &
PID=$!

BASE=""
KEY=""
for _ in $(seq 1 600); do
  BASE="$(sed -n 's/^[[:space:]]*HTTP API:[[:space:]]*\([^[:space:]]*\).*/\1/p' "${LOG}" | head -n1)"
  KEY="$(sed -n 's/^[[:space:]]*admin API key:[[:space:]]*\([^[:space:]]*\).*/\1/p' "${LOG}" | head -n1)"
  if [ -n "${BASE}" ] && [ -n "${KEY}" ]; then break; fi
  if ! kill -0 "${PID}" 2>/dev/null; then
    echo "postvak exited before it was ready:" >&2
    cat "${LOG}" >&2
    exit 1
  fi
  sleep 0.1
done
if [ -z "${BASE}" ] || [ -z "${KEY}" ]; then
  echo "postvak did not print its address and API key in time:" >&2
  cat "${LOG}" >&2
  exit 1
fi
ORIGIN="${BASE%/v1}"
echo "schemathesis against ${ORIGIN} (max ${MAX_EXAMPLES} examples, ${MAX_TIME} s)"

# Two runs sharing the budget: the coverage phase alone would use all of it and leave
# fuzzing and the stateful phase (links between operations) untested.
run_phases() {
  "${VENV}/bin/schemathesis" run "${ORIGIN}/openapi.json" \
    --url "${ORIGIN}" \
    --header "Authorization: Bearer ${KEY}" \
    --checks not_a_server_error,response_schema_conformance \
    --phases "$1" \
    --max-examples "${MAX_EXAMPLES}" \
    --max-time "$2" \
    --request-timeout 10 \
    --exclude-path-regex '^/v1/(stream|inboxes/\{inbox_id\}/messages/raw)$' \
    --report junit --report-dir "${ST_REPORT_DIR:-target/schemathesis}" \
    "${@:3}"
}

status=0
if [ -n "${ST_PHASES:-}" ]; then
  run_phases "${ST_PHASES}" "${MAX_TIME}" "$@" || status=$?
else
  half=$(( MAX_TIME / 2 ))
  run_phases examples,coverage "${half}" "$@" || status=$?
  run_phases fuzzing,stateful "$(( MAX_TIME - half ))" "$@" || status=$?
fi

if grep -qiE 'panick|ERROR' "${LOG}"; then
  echo "--- postvak log (errors) ---"
  grep -iE 'panick|ERROR' "${LOG}" | head -n 50
fi
exit "${status}"
