#!/usr/bin/env bash
# Fetches the real-mail corpora the ingest tests run over and prints the directory holding them:
#   cpython/      CPython's Lib/test/test_email/data (from the local Python installation)
#   mail-parser/  tests/mails of the mail-parser sdist (PyPI)
#   hyperkitty/   tests/testdata of the hyperkitty sdist (PyPI)
# Cached in $POSTVAK_CORPORA_DIR (default $HOME/.cache/postvak/corpora); fails loudly when a
# corpus can't be found or fetched, so a test never passes over nothing.
set -euo pipefail

MAIL_PARSER_VERSION=4.8.0
HYPERKITTY_VERSION=1.3.12
DIR="${POSTVAK_CORPORA_DIR:-$HOME/.cache/postvak/corpora}"
mkdir -p "$DIR"

if [ ! -d "$DIR/cpython" ]; then
    src=""
    for cand in \
        "$(python3 -c 'import os, test; print(os.path.join(os.path.dirname(test.__file__), "test_email", "data"))' 2>/dev/null || true)" \
        /root/.pyenv/versions/*/lib/python3*/test/test_email/data \
        /usr/lib/python3*/test/test_email/data; do
        if [ -n "$cand" ] && [ -d "$cand" ]; then src="$cand"; break; fi
    done
    if [ -z "$src" ]; then
        echo "corpora.sh: CPython's test/test_email/data was not found (install the python3 test package)" >&2
        exit 1
    fi
    rm -rf "$DIR/cpython.tmp" && cp -r "$src" "$DIR/cpython.tmp" && mv "$DIR/cpython.tmp" "$DIR/cpython"
fi

fetch_sdist() { # name version subdir target
    local name="$1" version="$2" subdir="$3" target="$4"
    [ -d "$DIR/$target" ] && return 0
    local tmp
    tmp="$(mktemp -d)"
    if ! pip download --quiet --no-deps --no-binary :all: "$name==$version" -d "$tmp" >&2; then
        echo "corpora.sh: pip download of $name==$version failed" >&2
        exit 1
    fi
    local archive
    archive="$(find "$tmp" -maxdepth 1 -type f \( -name '*.tar.gz' -o -name '*.zip' \) | head -1)"
    [ -n "$archive" ] || { echo "corpora.sh: no sdist for $name==$version" >&2; exit 1; }
    mkdir -p "$tmp/x"
    case "$archive" in
        *.zip) python3 -m zipfile -e "$archive" "$tmp/x" ;;
        *) tar -xzf "$archive" -C "$tmp/x" ;;
    esac
    local found
    found="$(find "$tmp/x" -type d -path "*/$subdir" | head -1 || true)"
    [ -n "$found" ] || { echo "corpora.sh: $subdir not in the $name sdist" >&2; exit 1; }
    rm -rf "$DIR/$target.tmp" && cp -r "$found" "$DIR/$target.tmp" && mv "$DIR/$target.tmp" "$DIR/$target"
    rm -rf "$tmp"
}

fetch_sdist mail-parser "$MAIL_PARSER_VERSION" tests/mails mail-parser
fetch_sdist hyperkitty "$HYPERKITTY_VERSION" hyperkitty/tests/testdata hyperkitty

echo "$DIR"
