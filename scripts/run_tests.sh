#!/usr/bin/env bash
# The test suite: lint, student editions up to date, then pytest (unit, kernels under the
# Triton interpreter, grader, notebooks, website, browser). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
start=$(date +%s)
echo ">> ruff"
ruff check lib grader tests benchmarks scripts book solutions
echo ">> student editions up to date"
course generate --check
echo ">> pytest"
status=0
python -m pytest "$@" || status=$?
echo ">> test suite finished in $(( $(date +%s) - start )) s (exit $status)"
exit $status
