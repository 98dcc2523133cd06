#!/usr/bin/env bash
# One command from a fresh clone to a running service on MovieLens 100k with SQLite:
# find the data, venv + install, migrate, import ml-100k, train the default model, serve.
#
#   scripts/quickstart.sh                                   # data found or downloaded
#   MOVIELENS_DIR=/path/to/ml-100k scripts/quickstart.sh    # a folder with u.data ...
#   MOVIELENS_DIR=/path/to/ml-100k.zip scripts/quickstart.sh  # ... or the zip itself
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
GROUPLENS=${MOVIELENS_URL:-https://files.grouplens.org/datasets/movielens/ml-100k.zip}

advice() {
  cat >&2 <<EOF

Give it MovieLens 100k (GroupLens's data set, never stored in this repository), either way:
  MOVIELENS_DIR=/path/to/ml-100k scripts/quickstart.sh       (the unpacked folder, with u.data)
  MOVIELENS_DIR=/path/to/ml-100k.zip scripts/quickstart.sh   (the zip as downloaded)
or put ml-100k.zip into var/data/ and run scripts/quickstart.sh again.
The zip is at $GROUPLENS
EOF
}

# The data first: a missing data set is found out in a second, not after the install.
find_data() {
  local candidate
  for candidate in ../shared/data/ml-100k var/data/ml-100k; do
    if [ -f "$candidate/u.data" ]; then echo "$candidate"; return; fi
  done
  for candidate in var/data/ml-100k.zip ../shared/data/ml-100k.zip var/data/*.zip; do
    if [ -f "$candidate" ]; then echo "$candidate"; return; fi
  done
}

DATA=${MOVIELENS_DIR:-}
if [ -n "$DATA" ]; then
  if [ ! -f "$DATA/u.data" ] && [[ ! ( -f "$DATA" && "$DATA" == *.zip ) ]]; then
    echo "error: MOVIELENS_DIR=$DATA is neither a folder holding u.data nor a .zip" >&2
    advice
    exit 1
  fi
else
  DATA=$(find_data)
fi
DOWNLOAD=false
if [ -n "$DATA" ]; then
  echo "using MovieLens 100k from $DATA" >&2
else
  if "$PYTHON" - "$GROUPLENS" <<'PY' 2>/dev/null; then
import sys, urllib.request
urllib.request.urlopen(urllib.request.Request(sys.argv[1], method="HEAD"), timeout=5).close()
PY
    DOWNLOAD=true
  else
    echo "error: no MovieLens 100k here (MOVIELENS_DIR, var/data/, ../shared/data/)," \
         "and GroupLens cannot be reached to download it" >&2
    advice
    exit 1
  fi
fi

# The runtime only: what serving and training need (no test or lint tools; scripts/test.sh
# adds those).
. scripts/venv.sh
if ! .venv/bin/python -c "import app, torch" 2>/dev/null || [ pyproject.toml -nt .venv/.installed ]
then
  echo "installing saerec and what it runs on into .venv (pip install -e .):" >&2
  echo "  torch (the autoencoder; the largest download, about a minute or more), numpy," \
       "scipy, FastAPI, SQLAlchemy, Alembic, Optuna" >&2
fi
ensure_venv "" app torch
export PATH="$PWD/.venv/bin:$PATH"

if $DOWNLOAD; then
  echo "downloading MovieLens 100k from GroupLens into var/data/" >&2
  saerec download ml-100k --dest var/data
  DATA=var/data/ml-100k
fi

saerec migrate
saerec import-movielens "$DATA"
saerec train --if-no-active-model
if [ -z "${ADMIN_TOKEN:-}" ]; then
  echo "note: ADMIN_TOKEN is not set, so the admin routes (retrain, models) answer 503;" \
       "run with ADMIN_TOKEN=\$(python3 -c 'import secrets; print(secrets.token_urlsafe(32))')" >&2
fi
exec saerec serve --host "${HOST:-127.0.0.1}" --port "${PORT:-8000}"
