#!/usr/bin/env bash
# The test command: installs into .venv if needed, then runs the suite on SQLite and,
# when a PostgreSQL server answers, on PostgreSQL too (TEST_DATABASE_URL overrides).
set -euo pipefail
cd "$(dirname "$0")/.."

# saerec with the dev extra (pytest, ruff, mypy, schemathesis, ...), torch's CPU build first
. scripts/venv.sh
ensure_venv dev app pytest torch

if [ -z "${TEST_DATABASE_URL:-}" ]; then
  if .venv/bin/python - <<'PY' 2>/dev/null
import psycopg
psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=postgres", connect_timeout=3).close()
PY
  then
    export TEST_DATABASE_URL="postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
  else
    echo "note: no PostgreSQL at 127.0.0.1:5432; running the SQLite half only" >&2
  fi
fi

export PATH="$PWD/.venv/bin:$PATH"
exec .venv/bin/python -m pytest "$@"
