# Sourced by scripts/quickstart.sh and scripts/test.sh: the one way a checkout gets its .venv.
#
# torch comes first, from PyTorch's CPU wheel index (as in the Dockerfile): pyproject.toml
# accepts a range of torch releases, and left to itself pip would meet it with a CUDA build
# of several GB. Then saerec itself, editable, with the extras asked for; that install also
# brings torch's own dependencies, from pip's usual indexes.
#
#   TORCH_INDEX_URL  where the CPU build of torch comes from (default PyTorch's CPU index),
#                    searched beside pip's own indexes: its 2.13.0+cpu ranks above PyPI's
#                    CUDA 2.13.0
#   TORCH_VERSION    the torch release installed (the one the project is tested with)
#   PYTHON           the interpreter the venv is made from (default python3)

TORCH_INDEX_URL=${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}

# ensure_venv EXTRA IMPORTS...: .venv holds saerec (with the extra, "" for none) and every
# module named; installs when one is missing or pyproject.toml changed since the last install
ensure_venv() {
  local extra=$1
  shift
  local imports
  imports=$(IFS=,; echo "$*")
  [ -x .venv/bin/python ] || "${PYTHON:-python3}" -m venv .venv
  if .venv/bin/python -c "import $imports" 2>/dev/null && [ ! pyproject.toml -nt .venv/.installed ]
  then
    return 0
  fi
  local target=.
  [ -n "$extra" ] && target=".[$extra]"
  .venv/bin/python -m pip install --quiet --upgrade pip
  if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    echo "installing torch $TORCH_VERSION (CPU build) from $TORCH_INDEX_URL" >&2
    .venv/bin/python -m pip install --quiet --no-deps --extra-index-url "$TORCH_INDEX_URL" \
      "torch==$TORCH_VERSION"
  fi
  .venv/bin/python -m pip install --quiet -e "$target"
  touch .venv/.installed
}
