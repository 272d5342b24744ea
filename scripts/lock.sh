#!/usr/bin/env bash
# Refresh constraints.txt: the tested versions of every dependency (with the `test` extra), for
# Python 3.11 and later on any platform. scripts/test.sh, .ci/run (through it) and the Dockerfile
# install with `-c constraints.txt`, so a new release elsewhere changes nothing until this runs.
# Usage: bash scripts/lock.sh            # resolve the newest versions pyproject.toml allows
#        bash scripts/lock.sh --upgrade-package aiohttp   # move one package, keep the others
# Then run `bash scripts/test.sh` and commit constraints.txt with what the new versions needed.
set -euo pipefail
cd "$(dirname "$0")/.."

UV_VERSION=0.13.10  # the resolver's version is pinned too, so one input gives one output
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
if ! .venv/bin/python -m uv --version 2>/dev/null | grep -q " $UV_VERSION"; then
    .venv/bin/python -m pip install --quiet --disable-pip-version-check "uv==$UV_VERSION"
fi

# Dependencies not (yet) in pyproject.toml that the lock must still cover, one a line.
# prometheus-client: added to pyproject.toml on another branch; locked here so the merge works.
extra="$(mktemp)"
trap 'rm -f "$extra"' EXIT
printf '%s\n' "prometheus-client" >"$extra"

# Without --upgrade uv keeps every version already in constraints.txt that still fits.
.venv/bin/python -m uv pip compile pyproject.toml "$extra" \
    --extra test \
    --universal --python-version 3.11 \
    --output-file constraints.txt \
    --custom-compile-command "bash scripts/lock.sh" \
    --quiet "$@"
# The temporary file's name must not leak into the committed lock.
sed -i "s|$extra|scripts/lock.sh|g" constraints.txt
echo "constraints.txt: $(grep -c '^[a-z0-9]' constraints.txt) pinned packages"
