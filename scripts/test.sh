#!/usr/bin/env bash
# The test command: lint, type-check and test the whole project in its own virtualenv.
# Usage: bash scripts/test.sh [extra pytest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
# constraints.txt holds the tested version of every dependency (refresh: bash scripts/lock.sh).
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]' -c constraints.txt

echo "== ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "== mypy --strict"
.venv/bin/mypy
echo "== pytest"
# -W error is also in pyproject's filterwarnings; stated here so nobody loses it by editing one place.
# pytest exits 5 when it collects no test: set -e turns that into a failure, as it should be.
.venv/bin/python -m pytest -W error "$@"
