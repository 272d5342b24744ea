"""The one rule for a missing service or tool: skip on a workstation, fail under CI.

Every fixture or helper that finds MariaDB, Mosquitto, a mosquitto client, Go or another outside
program missing calls :func:`missing`, so the rule lives in one place. CI counts as on when the
``CI`` variable holds any truthy value: CI systems spell it ``true``, ``True``, ``1`` or ``yes``,
and a run that means CI must never turn a missing service into a silent skip. Only an unset or
empty ``CI``, or one of the usual spellings of false (``0``, ``false``, ``no``, ``off``, in any
case), means a workstation.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import NoReturn

import pytest

__all__ = ["FALSE_VALUES", "missing", "under_ci"]

FALSE_VALUES = frozenset({"", "0", "false", "no", "off", "n", "f"})


def under_ci(environ: Mapping[str, str] | None = None) -> bool:
    """Whether ``CI`` (in ``environ``, by default the process's) holds a truthy value."""
    value = (os.environ if environ is None else environ).get("CI", "")
    return value.strip().lower() not in FALSE_VALUES


def missing(message: str, environ: Mapping[str, str] | None = None) -> NoReturn:
    """Skip the test saying ``message``; under CI fail it instead, as a missing service is a bug."""
    if under_ci(environ):
        pytest.fail(f"{message} (CI is set, so this fails instead of skipping)", pytrace=False)
    pytest.skip(message)
