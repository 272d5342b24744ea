"""External tools the tests drive: the mosquitto binaries, and the rule for when one is missing."""

from __future__ import annotations

import shutil

from tests.support.ci import missing

__all__ = ["require_tool"]


def require_tool(name: str) -> str:
    """The path of ``name``; under CI a missing tool fails the test instead of skipping it."""
    path = shutil.which(name)
    if path is None:
        missing(f"{name} is not installed; install it with 'apt-get install mosquitto-clients'.")
    return path
