#!/usr/bin/env bash
# Create the project's virtual environment (.venv) and install the project with the given
# extras ("book" for the website, "dev" for the tests). Re-running is cheap: it reinstalls only
# when pyproject.toml changed.
#
#   scripts/bootstrap.sh dev
#
# PyTorch is installed first, on its own, so the resolver does not pick a build you did not
# ask for. Set TORCH_SPEC (default torch==2.13.0, falling back to any torch>=2.2) or
# TORCH_INDEX_URL (e.g. https://download.pytorch.org/whl/cpu for a small CPU-only build).
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-dev}"
python="${PYTHON:-python3}"

if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
  echo "error: Python 3.10 or newer is needed; found: $("$python" --version 2>&1). Set PYTHON=/path/to/python3.x" >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  echo ">> creating .venv with $("$python" --version)"
  "$python" -m venv .venv
fi
stamp=".venv/.installed-$extras"
want="$(cat pyproject.toml | sha256sum | cut -c1-16)"
if [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
  exit 0
fi
pip=(.venv/bin/python -m pip --disable-pip-version-check)
"${pip[@]}" install -q -U pip
if ! .venv/bin/python -c 'import torch' 2>/dev/null; then
  index=()
  [ -n "${TORCH_INDEX_URL:-}" ] && index=(--index-url "$TORCH_INDEX_URL")
  echo ">> installing PyTorch (${TORCH_SPEC:-torch==2.13.0})"
  "${pip[@]}" install -q "${index[@]}" "${TORCH_SPEC:-torch==2.13.0}" \
    || "${pip[@]}" install -q "${index[@]}" "torch>=2.2"
fi
echo ">> installing llmcourse[$extras]"
"${pip[@]}" install -q -e ".[$extras]" 2>&1 | grep -v "is ignored: it is neither a file nor a directory" || true
.venv/bin/python -c 'import llmcourse, coursegrader' >/dev/null
echo "$want" > "$stamp"
