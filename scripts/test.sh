#!/usr/bin/env bash
# The test command: lint, type-check and test the whole project in its own virtualenv.
# Usage: bash scripts/test.sh [--fast] [extra pytest arguments]
#   --fast: the edit-test loop; skips the tests marked slow (faults, scale-out, deploy, the
#           end-to-end files, the walk-through and the slowest other files: tests/conftest.py
#           marks them by path), and the install once .venv has one (an edit does not change
#           the dependencies). CI runs everything (.ci/run calls this script without --fast).
set -euo pipefail
cd "$(dirname "$0")/.."

FAST=()
if [ "${1:-}" = "--fast" ]; then
    shift
    FAST=(-m "not slow")
fi

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
# constraints.txt holds the tested version of every dependency (refresh: bash scripts/lock.sh).
if [ ${#FAST[@]} -eq 0 ] || [ ! -x .venv/bin/pytest ]; then
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]' -c constraints.txt
fi

echo "== ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "== mypy --strict"
.venv/bin/mypy
echo "== pytest"
# -W error is also in pyproject's filterwarnings; stated here so nobody loses it by editing one place.
# pytest exits 5 when it collects no test: set -e turns that into a failure, as it should be.
.venv/bin/python -m pytest -W error "${FAST[@]}" "$@"
