#!/usr/bin/env bash
# One command from a fresh clone to a running service on MovieLens 100k with SQLite:
# venv + install, migrate, import ml-100k, train the default model, serve on :8000.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
if ! .venv/bin/python -c "import app, torch" 2>/dev/null || [ pyproject.toml -nt .venv/.installed ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e '.[dev]'
  touch .venv/.installed
fi
export PATH="$PWD/.venv/bin:$PATH"

DATA=${MOVIELENS_DIR:-}
if [ -z "$DATA" ]; then
  for candidate in ../shared/data/ml-100k var/data/ml-100k; do
    if [ -f "$candidate/u.data" ]; then DATA=$candidate; break; fi
  done
fi
if [ -z "$DATA" ]; then
  saerec download ml-100k --dest var/data
  DATA=var/data/ml-100k
fi

saerec migrate
saerec import-movielens "$DATA"
if saerec --help | grep -q ' train '; then
  saerec train --if-no-active-model
fi
exec saerec serve --host "${HOST:-127.0.0.1}" --port "${PORT:-8000}"
